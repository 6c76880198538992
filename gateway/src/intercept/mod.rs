//! Transparent interception: the cgroup v2 eBPF programs that redirect agent
//! connections to Sluice, and the maps that tell Sluice where each
//! connection was going and who opened it (DESIGN.md §1).
//!
//! - [`cgroup`]: finding the cgroup2 mount and the agents' cgroups.
//! - [`programs`]: loading the embedded object, attaching to agent cgroups,
//!   pinning links under the bpffs directory and re-adopting them.
//! - [`maps`]: typed access to the pinned maps (services, egress, 4-tuples).
//! - [`resolver`]: turning services and egress rules into map entries.
//! - [`netns`]: Sluice's network namespace cookie, which tells containers
//!   (other namespaces) apart.
//! - [`procs`]: processes of a uid outside an agent's cgroup.
//!
//! Kernel: ≥ 5.8 (bpf_link for cgroup programs ≥ 5.7, getpeername hooks
//! ≥ 5.8), with BTF and cgroup v2.
pub mod cgroup;
pub mod maps;
pub mod netns;
pub mod procs;
pub mod programs;
pub mod resolver;

/// The eBPF object built from `ebpf/` by `build.rs`, embedded in the binary.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice-ebpf.o"));
