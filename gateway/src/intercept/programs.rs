//! Loading the embedded eBPF object, attaching its programs to agent
//! cgroups, and pinning the links so agents stay redirected (fail closed)
//! while the daemon restarts.
//!
//! Layout under the bpffs directory (`/sys/fs/bpf/sluice` by default):
//! - `maps/<MAP NAME>`: maps pinned by name and re-used by the next load;
//! - `links/<agent>/<program>`: one pinned `bpf_link` per program and agent.
//!
//! Re-adoption after a restart attaches the new programs first and only then
//! releases the old pinned links, so there is no instant where an agent's
//! `connect()` is not intercepted. Kernel ≥ 5.7 (bpf_link for cgroups):
//! `bpf_link_create` takes no attach flags for cgroups and always allows
//! several links per hook, so [`CgroupAttachMode::Single`] (flags 0) is what
//! gets passed.
use std::{
    fs, io,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        CgroupAttachMode, CgroupSock, CgroupSockAddr, SockOps,
    },
    Ebpf, EbpfLoader,
};

use super::EBPF_OBJECT;

/// The programs in the object, by function name.
pub const SOCK_ADDR_PROGRAMS: [&str; 6] = [
    "sluice_connect4",
    "sluice_connect6",
    "sluice_sendmsg4",
    "sluice_sendmsg6",
    "sluice_getpeername4",
    "sluice_getpeername6",
];
/// The `sockops` program.
pub const SOCK_OPS_PROGRAM: &str = "sluice_sockops";
/// The `cgroup/sock_create` program: IPv4/IPv6 sockets other than TCP,
/// MPTCP and UDP (UDP-Lite, ICMP, SCTP, raw) get `EPERM` at `socket()`,
/// since the connect and sendmsg hooks never see them.
pub const SOCK_CREATE_PROGRAM: &str = "sluice_sock_create";

/// Errors from loading, attaching and pinning.
#[derive(Debug, thiserror::Error)]
pub enum InterceptError {
    #[error("bpffs is not mounted at {0}; run `mount -t bpf bpf /sys/fs/bpf`")]
    NoBpffs(PathBuf),
    #[error("loading the eBPF object failed: {0} (does the kernel have BTF and cgroup BPF? try `sluice doctor`; after an upgrade, `sluice uninstall` clears incompatible pinned maps)")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("pinning {path}: {reason}")]
    Pin { path: PathBuf, reason: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> InterceptError + 'a {
    move |source| InterceptError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The layout of the pinned maps (their names, key and value shapes in
/// `sluice-common`). Bump it with any change to them: a daemon never reuses
/// maps pinned under another layout.
pub const MAP_LAYOUT: u32 = 3;

/// Directory of pinned maps: `bpf_dir/maps/v<MAP_LAYOUT>`.
pub fn maps_dir(bpf_dir: &Path) -> PathBuf {
    bpf_dir.join("maps").join(format!("v{MAP_LAYOUT}"))
}

/// Unpins every map under `bpf_dir/maps` that is not of [`MAP_LAYOUT`]:
/// maps pinned directly in it (layout 1) and other `v<N>` directories.
/// Programs still using them keep them alive until their links are
/// replaced. Returns what was removed.
///
/// # Errors
/// Filesystem failures while unpinning.
pub fn retire_old_layouts(bpf_dir: &Path) -> Result<Vec<PathBuf>, InterceptError> {
    let root = bpf_dir.join("maps");
    let current = maps_dir(bpf_dir);
    let Ok(entries) = fs::read_dir(&root) else {
        return Ok(Vec::new());
    };
    let mut removed = Vec::new();
    for path in entries.filter_map(Result::ok).map(|e| e.path()) {
        if path != current {
            remove_pins(&path)?;
            removed.push(path);
        }
    }
    Ok(removed)
}

/// Unpins `path`: a pinned object, or a directory of them (recursively).
fn remove_pins(path: &Path) -> Result<(), InterceptError> {
    if !path.is_dir() {
        return fs::remove_file(path).map_err(io_err("unpinning", path));
    }
    for e in fs::read_dir(path)
        .map_err(io_err("reading", path))?
        .filter_map(Result::ok)
    {
        remove_pins(&e.path())?;
    }
    fs::remove_dir(path).map_err(io_err("removing", path))
}

/// Directory of one agent's pinned links.
pub fn links_dir(bpf_dir: &Path, agent: &str) -> PathBuf {
    bpf_dir.join("links").join(agent)
}

/// True when `path` is on a bpffs mount (checked via statfs magic).
pub fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
        .unwrap_or(false)
}

/// Loads the embedded object with its maps pinned (or re-used) under
/// [`maps_dir`], after unpinning maps of older layouts
/// ([`retire_old_layouts`], logged), and loads every program into the
/// kernel.
///
/// # Errors
/// [`InterceptError::NoBpffs`] when `bpf_dir`'s parent is not bpffs;
/// [`InterceptError::Load`] / [`InterceptError::Program`] from the kernel.
pub fn load(bpf_dir: &Path) -> Result<Ebpf, InterceptError> {
    let parent = bpf_dir.parent().unwrap_or(Path::new("/"));
    if !is_bpffs(parent) && !is_bpffs(bpf_dir) {
        return Err(InterceptError::NoBpffs(parent.to_path_buf()));
    }
    for old in retire_old_layouts(bpf_dir)? {
        tracing::warn!(path = %old.display(), layout = MAP_LAYOUT, "unpinned maps of an older layout; pinning new ones");
    }
    let maps = maps_dir(bpf_dir);
    fs::create_dir_all(&maps).map_err(io_err("creating", &maps))?;
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&maps)
        .load(EBPF_OBJECT)?;
    for name in SOCK_ADDR_PROGRAMS {
        let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?;
        prog.load()
            .map_err(|source| InterceptError::Program { name, source })?;
    }
    let prog: &mut SockOps = program(&mut ebpf, SOCK_OPS_PROGRAM)?;
    prog.load().map_err(|source| InterceptError::Program {
        name: SOCK_OPS_PROGRAM,
        source,
    })?;
    let prog: &mut CgroupSock = program(&mut ebpf, SOCK_CREATE_PROGRAM)?;
    prog.load().map_err(|source| InterceptError::Program {
        name: SOCK_CREATE_PROGRAM,
        source,
    })?;
    Ok(ebpf)
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, InterceptError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf.program_mut(name).ok_or(InterceptError::Program {
        name,
        source: aya::programs::ProgramError::UnexpectedProgramType,
    })?;
    prog.try_into()
        .map_err(|source| InterceptError::Program { name, source })
}

/// Attaches every program to the agent cgroup `cgroup_dir` and pins the
/// links at `links/<agent>/<program>`, replacing links pinned by an earlier
/// daemon only after the new ones are attached.
///
/// # Errors
/// Attach or pin failures; the cgroup must exist.
pub fn attach_agent(
    ebpf: &mut Ebpf,
    bpf_dir: &Path,
    agent: &str,
    cgroup_dir: &Path,
) -> Result<(), InterceptError> {
    let links = links_dir(bpf_dir, agent);
    fs::create_dir_all(&links).map_err(io_err("creating", &links))?;
    let cgroup = fs::File::open(cgroup_dir).map_err(io_err("opening cgroup", cgroup_dir))?;
    for name in SOCK_ADDR_PROGRAMS {
        let prog: &mut CgroupSockAddr = program(ebpf, name)?;
        let attached = prog
            .attach(cgroup.as_fd(), CgroupAttachMode::Single)
            .and_then(|id| prog.take_link(id));
        pin_link(name, attached.map(FdLink::try_from), &links)?;
    }
    let prog: &mut SockOps = program(ebpf, SOCK_OPS_PROGRAM)?;
    let attached = prog
        .attach(cgroup.as_fd(), CgroupAttachMode::Single)
        .and_then(|id| prog.take_link(id));
    pin_link(SOCK_OPS_PROGRAM, attached.map(FdLink::try_from), &links)?;
    let prog: &mut CgroupSock = program(ebpf, SOCK_CREATE_PROGRAM)?;
    let attached = prog
        .attach(cgroup.as_fd(), CgroupAttachMode::Single)
        .and_then(|id| prog.take_link(id));
    pin_link(SOCK_CREATE_PROGRAM, attached.map(FdLink::try_from), &links)
}

/// Pins the link of a just-attached program `name` under `links/`.
fn pin_link<E: std::fmt::Display>(
    name: &'static str,
    attached: Result<Result<FdLink, E>, aya::programs::ProgramError>,
    links: &Path,
) -> Result<(), InterceptError> {
    let fd_link = attached
        .map_err(|source| InterceptError::Program { name, source })?
        .map_err(|e| InterceptError::Pin {
            path: links.join(name),
            reason: e.to_string(),
        })?;
    replace_pin(fd_link, &links.join(name))
}

/// Pins `new` at `path`; an older link pinned there is released (detached)
/// only after `new` is attached.
fn replace_pin(new: FdLink, path: &Path) -> Result<(), InterceptError> {
    if path.exists() {
        match PinnedLink::from_pin(path) {
            Ok(old) => {
                // Unpinning removes the file; dropping the returned FdLink
                // closes the last reference and detaches the old program.
                let _ = old.unpin();
            }
            Err(_) => {
                fs::remove_file(path).map_err(io_err("removing stale pin", path))?;
            }
        }
    }
    new.pin(path).map(drop).map_err(|e| InterceptError::Pin {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Detaches and unpins the links of every agent under `bpf_dir/links` whose
/// name is not in `keep`. Returns the agents removed.
///
/// # Errors
/// Directory read failures.
pub fn detach_others(bpf_dir: &Path, keep: &[&str]) -> Result<Vec<String>, InterceptError> {
    let root = bpf_dir.join("links");
    let Ok(entries) = fs::read_dir(&root) else {
        return Ok(Vec::new());
    };
    let mut removed = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !keep.contains(&name.as_str()) {
            detach_agent_dir(&entry.path())?;
            removed.push(name);
        }
    }
    Ok(removed)
}

fn detach_agent_dir(dir: &Path) -> Result<(), InterceptError> {
    for entry in fs::read_dir(dir)
        .map_err(io_err("reading", dir))?
        .filter_map(Result::ok)
    {
        let path = entry.path();
        match PinnedLink::from_pin(&path) {
            Ok(link) => drop(link.unpin()),
            Err(_) => fs::remove_file(&path).map_err(io_err("removing", &path))?,
        }
    }
    fs::remove_dir(dir).map_err(io_err("removing", dir))
}

/// Removes Sluice's pins under `bpf_dir`: every link (which detaches the
/// programs from the agent cgroups) and, unless `keep_maps`, every map and
/// the directory itself.
///
/// # Errors
/// Filesystem failures while unpinning.
pub fn uninstall(bpf_dir: &Path, keep_maps: bool) -> Result<(), InterceptError> {
    detach_others(bpf_dir, &[])?;
    let links = bpf_dir.join("links");
    if links.exists() {
        fs::remove_dir(&links).map_err(io_err("removing", &links))?;
    }
    if keep_maps {
        return Ok(());
    }
    let maps = bpf_dir.join("maps");
    if maps.exists() {
        remove_pins(&maps)?;
    }
    if bpf_dir.exists() {
        fs::remove_dir(bpf_dir).map_err(io_err("removing", bpf_dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_of_older_layouts_are_unpinned_and_the_current_ones_kept() {
        // Regular files stand in for pins: unpinning is unlink(2) either way.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("maps");
        let current = maps_dir(dir.path());
        for d in [&root.join("v1"), &current] {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(root.join("SLUICE_TUPLE_DST"), "").unwrap(); // layout 1
        fs::write(root.join("v1").join("SLUICE_SERVICES"), "").unwrap();
        fs::write(current.join("SLUICE_SERVICES"), "").unwrap();

        let mut removed = retire_old_layouts(dir.path()).unwrap();
        removed.sort();
        assert_eq!(
            removed,
            vec![root.join("SLUICE_TUPLE_DST"), root.join("v1")]
        );
        let left: Vec<_> = fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(left, vec![current.clone()]);
        assert!(
            current.join("SLUICE_SERVICES").exists(),
            "current maps reused"
        );
        assert!(retire_old_layouts(dir.path()).unwrap().is_empty());
    }
}
