//! The decisions the SSH handler asks of its host (the gateway's guard
//! pipeline): who the agent is, where and as whom to log in upstream, which
//! channel requests to allow, and what to record.
//!
//! The handler knows SSH and nothing of tokens, vaults or policy; the gateway
//! knows policy and nothing of SSH. [`Gate`] is the seam between the two, one
//! value per agent connection.
use std::{fmt, future::Future, net::SocketAddr, sync::Arc};

use russh::keys::{PrivateKey, PublicKey};
use zeroize::Zeroizing;

/// What the agent presented in an SSH user authentication request
/// (RFC 4252 §7 `publickey`, §8 `password`).
pub enum Presented {
    /// A public key whose possession the agent proved with a signature
    /// (already verified by the SSH library). A placeholder key from
    /// `sluice token issue --ssh-key` is matched with
    /// [`AuthorizedKey`](crate::placeholder::AuthorizedKey).
    PublicKey(PublicKey),
    /// A password: an `slt_` token (or a JWT), never a real secret.
    Password(Zeroizing<String>),
}

impl fmt::Debug for Presented {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Presented::PublicKey(key) => write!(
                f,
                "PublicKey({})",
                key.fingerprint(russh::keys::HashAlg::Sha256)
            ),
            Presented::Password(_) => f.write_str("Password(…)"),
        }
    }
}

/// Why the gate refused: the message is shown to the agent (on stderr of a
/// refused channel, or in the log of a refused login) and must not carry a
/// secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// Human-readable reason, e.g. "token revoked".
    pub message: String,
}

impl Refusal {
    /// A refusal with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Refusal {
            message: message.into(),
        }
    }
}

/// The real host to log in to for an authenticated agent.
pub struct UpstreamTarget {
    /// Address of the real SSH server.
    pub addr: SocketAddr,
    /// User name to log in as upstream (`credential.user`).
    pub user: String,
    /// The vault secret to log in with.
    pub credential: UpstreamCredential,
    /// The host keys the real server may present (`upstream_host_key`, as in
    /// known_hosts). Any other key ends the connection before the credential
    /// is offered.
    pub host_keys: Vec<PublicKey>,
}

/// The secret Sluice logs in upstream with.
pub enum UpstreamCredential {
    /// An OpenSSH private key (ed25519, ECDSA or RSA); see
    /// [`parse_private_key`](crate::upstream::parse_private_key).
    Key(Arc<PrivateKey>),
    /// A password.
    Password(Zeroizing<String>),
}

impl fmt::Debug for UpstreamCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamCredential::Key(key) => write!(f, "Key({})", key.algorithm()),
            UpstreamCredential::Password(_) => f.write_str("Password(…)"),
        }
    }
}

/// What an agent asks to do on its connection, checked on every channel and
/// channel request (RFC 4254 §6, §7), so that a token revoked mid-session
/// ends new channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// Open a `session` channel (RFC 4254 §6.1).
    Session,
    /// Run a command (`exec`, RFC 4254 §6.5): the command line as sent,
    /// decoded lossily as UTF-8.
    Exec {
        /// The command line, e.g. `git-upload-pack 'repo.git'`.
        command: String,
    },
    /// Start the user's login shell (`shell`, RFC 4254 §6.5).
    Shell,
    /// Start a subsystem such as `sftp` (RFC 4254 §6.5).
    Subsystem {
        /// The subsystem name.
        name: String,
    },
    /// Open a `direct-tcpip` channel (`ssh -L`, `ssh -W`; RFC 4254 §7.2)
    /// from the upstream host to `host:port`.
    Forward {
        /// Host to connect to, as the agent named it.
        host: String,
        /// Port to connect to.
        port: u32,
    },
}

/// The gate's answer to an [`Operation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Relay the request to the upstream host.
    Allow,
    /// Refuse it; `message` goes to the agent's stderr (exec, shell,
    /// subsystem: with exit status [`DENIED_EXIT_STATUS`](crate::DENIED_EXIT_STATUS))
    /// or into the channel open failure.
    Deny {
        /// Why, for the agent.
        message: String,
    },
}

/// Which stream of a channel output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Channel data (stdout, or the terminal of a pty).
    Stdout,
    /// Extended data type 1 (stderr).
    Stderr,
}

/// Something that happened on an authenticated connection, for the session
/// record. Channel ids are the agent-side ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshEvent {
    /// Sluice could not log in upstream (unreachable, host key mismatch,
    /// credential refused); the agent's channel open failed with `message`.
    UpstreamFailed {
        /// Why, as the agent was told; never the credential.
        message: String,
    },
    /// A channel was opened upstream and confirmed to the agent.
    ChannelOpen {
        /// Agent-side channel id.
        channel: u32,
        /// What was opened.
        kind: Operation,
    },
    /// A pty was requested (and passed upstream).
    Pty {
        /// Agent-side channel id.
        channel: u32,
        /// `TERM`, e.g. `xterm-256color`.
        term: String,
        /// Width in characters.
        cols: u32,
        /// Height in rows.
        rows: u32,
    },
    /// The terminal was resized.
    WindowChange {
        /// Agent-side channel id.
        channel: u32,
        /// Width in characters.
        cols: u32,
        /// Height in rows.
        rows: u32,
    },
    /// An exec, shell or subsystem request went upstream.
    Started {
        /// Agent-side channel id.
        channel: u32,
        /// The request.
        operation: Operation,
    },
    /// A request was refused by [`Gate::authorize`].
    Denied {
        /// Agent-side channel id (for a refused channel open: the id the
        /// agent proposed).
        channel: u32,
        /// The request.
        operation: Operation,
        /// The refusal message.
        message: String,
    },
    /// The upstream program exited (`exit-status`, RFC 4254 §6.10).
    ExitStatus {
        /// Agent-side channel id.
        channel: u32,
        /// The exit status.
        status: u32,
    },
    /// The upstream program was killed by a signal (`exit-signal`).
    ExitSignal {
        /// Agent-side channel id.
        channel: u32,
        /// Signal name without `SIG`, e.g. `TERM`.
        signal: String,
    },
    /// The channel was closed.
    ChannelClose {
        /// Agent-side channel id.
        channel: u32,
    },
}

/// The gateway's side of one agent connection. All methods may await (a
/// Redis lookup, a human approval); the SSH connection keeps serving other
/// channels meanwhile, except during [`Gate::authenticate`].
pub trait Gate: Send + Sync + 'static {
    /// What a successful authentication yields (the gateway's session:
    /// agent, service, token id), passed back to every later call.
    type Login: Send + Sync + 'static;

    /// Checks an authentication attempt for `user` (the name the agent
    /// dialled with; Sluice logs in upstream as the configured user
    /// whatever it is). Each refused attempt is one `auth_fail`.
    fn authenticate(
        &self,
        user: &str,
        presented: Presented,
    ) -> impl Future<Output = Result<Self::Login, Refusal>> + Send;

    /// The real host and the vault credential for this login. Called once,
    /// when the agent opens its first channel.
    fn upstream(
        &self,
        login: &Self::Login,
    ) -> impl Future<Output = Result<UpstreamTarget, Refusal>> + Send;

    /// Decides one channel open or channel request. It may wait (a JIT
    /// approval hold); the agent then just waits. Other channels are served
    /// meanwhile, until the held channel's input queue in russh (100
    /// messages) is full: input sent before the program starts (`cmd <
    /// file`) then stalls the whole connection until the decision.
    fn authorize(
        &self,
        login: &Self::Login,
        operation: &Operation,
    ) -> impl Future<Output = Decision> + Send;

    /// Records an event; must not block for long (queue it).
    fn record(&self, login: &Self::Login, event: SshEvent);

    /// Records output of an exec or shell (not a subsystem, not a forward)
    /// on its way to the agent, for the session's terminal recording. The
    /// relay awaits it before passing `data` on: it may wait for room in a
    /// bounded queue, never for the disk.
    fn output(
        &self,
        login: &Self::Login,
        channel: u32,
        stream: Stream,
        data: bytes::Bytes,
    ) -> impl Future<Output = ()> + Send;
}
