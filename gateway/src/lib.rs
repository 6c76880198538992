//! Sluice: a credential-injecting gateway for automation and AI agents.
//!
//! Agents hold only placeholder tokens (`slt_…`). eBPF programs in the
//! agents' cgroups redirect their connections to this process, which
//! terminates the protocol, checks the token, swaps in the real credential
//! from the sealed vault, applies policy and records the session.
//! See DESIGN.md for the architecture and the user-facing contract.
#![forbid(unsafe_op_in_unsafe_fn)]

pub mod approvals;
pub mod cli;
pub mod config;
pub mod console;
pub mod daemon;
pub mod guard;
pub mod identity;
pub mod intercept;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod proxy;
pub mod recorder;
pub mod state;
pub mod tls;
pub mod tokens;
pub mod vault;
