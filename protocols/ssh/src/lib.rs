//! Sluice's SSH handler (DESIGN.md §6 "SSH").
//!
//! Sluice is the SSH server agents connect to with a placeholder key or a
//! token as password, and the SSH client that logs in to the real host with
//! the vault credential. Between the two it relays `session` channels
//! (exec, shell with pty, subsystem sftp) and, when allowed, `direct-tcpip`
//! channels, asking a [`Gate`] about every login, channel and request.
//!
//! - [`gate`]: the decisions the gateway provides ([`Gate`]);
//! - [`host_key`]: the gateway's host key and its known_hosts line;
//! - [`placeholder`]: placeholder keys and their matching;
//! - [`upstream`]: the login to the real host, host key checked first;
//! - [`server`]: the agent-facing server ([`server::serve`]);
//! - `relay`: one channel relayed both ways.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod gate;
pub mod host_key;
pub mod placeholder;
mod relay;
pub mod server;
pub mod upstream;

pub use gate::{
    Decision, Gate, Operation, Presented, Refusal, SshEvent, Stream, UpstreamCredential,
    UpstreamTarget,
};

/// Exit status of a channel whose exec, shell or subsystem request was
/// refused (as a shell reports a command it cannot execute).
pub const DENIED_EXIT_STATUS: u32 = 126;
