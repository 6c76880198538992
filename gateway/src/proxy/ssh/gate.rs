//! [`sluice_ssh::Gate`] on a guard [`Session`]: the SSH handler's login,
//! upstream and channel decisions, made by the shared pipeline, and what
//! the session records of its channels: a `command` line for each exec,
//! shell and subsystem request; pty sizes and the output of execs and
//! shells for the `.cast` file; how each command ended for the `close`
//! line's `exits`.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use sluice_ssh::{
    placeholder::fingerprint, Decision as SshDecision, Gate, Operation, Presented as SshPresented,
    Refusal as SshRefusal, SshEvent, Stream, UpstreamCredential, UpstreamTarget,
};
use zeroize::Zeroizing;

use super::keys;
use crate::{
    guard::{Presented, Refusal, Session},
    intercept::resolver,
    policy::{self, ssh::SshOperation},
    recorder::{CommandExit, Event},
};

/// The gate of one agent connection.
pub struct GuardGate {
    session: Arc<Session>,
    /// Channels whose exec, shell or subsystem started, until they close.
    running: Mutex<HashMap<u32, CommandExit>>,
}

impl GuardGate {
    /// The gate deciding for `session`.
    pub fn new(session: Arc<Session>) -> Self {
        GuardGate {
            session,
            running: Mutex::new(HashMap::new()),
        }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<u32, CommandExit>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The refusal as the agent sees it; its line is written first.
    async fn refuse(&self, refusal: Refusal) -> SshRefusal {
        let _ = self.session.flush().await;
        SshRefusal::new(refusal.message)
    }

    /// Authenticates a placeholder key: the digest of its token, or an
    /// unknown key (recorded with its fingerprint; not a guess, since a
    /// key cannot be guessed without its private half).
    async fn public_key(&self, key: &russh::keys::PublicKey) -> Result<(), String> {
        let s = &self.session;
        let stored = s.verifiers(keys::SCHEME).await.map_err(|r| r.message)?;
        match keys::find(stored, key) {
            Some(digest) => s
                .authenticate(Presented::Digest(&digest))
                .await
                .map_err(|r| r.message),
            None => Err(s
                .absent(&format!(
                    "public key {} is no placeholder key of this agent and service",
                    fingerprint(key)
                ))
                .message),
        }
    }

    /// Where and as whom to log in upstream.
    async fn target(&self) -> Result<UpstreamTarget, String> {
        let service = self.session.service();
        let ssh = service
            .ssh()
            .ok_or_else(|| format!("service {} is not an ssh service", service.name))?;
        let addrs = resolver::service_addrs(service)
            .await
            .map_err(|e| format!("cannot resolve {}: {e}", service.host))?;
        let ip = addrs
            .first()
            .ok_or_else(|| format!("{} has no address", service.host))?;
        let secret = self.session.credential().map_err(|r| r.message)?;
        let text = std::str::from_utf8(secret.expose())
            .map_err(|_| format!("secret {:?} is not text", service.secret))?;
        let credential = if text.trim_start().starts_with("-----BEGIN") {
            let key = sluice_ssh::upstream::parse_private_key(text).map_err(|_| {
                format!(
                    "secret {:?} is not a usable private key (OpenSSH or PEM, unencrypted)",
                    service.secret
                )
            })?;
            UpstreamCredential::Key(Arc::new(key))
        } else {
            UpstreamCredential::Password(Zeroizing::new(text.to_string()))
        };
        Ok(UpstreamTarget {
            addr: SocketAddr::new(*ip, service.port),
            user: ssh.user.clone(),
            credential,
            host_keys: ssh.host_keys.clone(),
        })
    }
}

/// The `command` line of an exec, shell or subsystem request: its
/// `command` and `kind`.
fn command_of(op: &Operation) -> Option<(String, &'static str)> {
    match op {
        Operation::Exec { command } => Some((command.clone(), "exec")),
        Operation::Shell => Some(("shell".into(), "shell")),
        Operation::Subsystem { name } => Some((name.clone(), "subsystem")),
        Operation::Session | Operation::Forward { .. } => None,
    }
}

/// The policy view of an SSH operation, and how approvals name it.
fn policy_op(op: &Operation) -> (SshOperation<'_>, String) {
    match op {
        Operation::Session => (SshOperation::Session, "ssh session".into()),
        Operation::Exec { command } => (SshOperation::Exec { command }, command.clone()),
        Operation::Shell => (SshOperation::Shell, "ssh shell".into()),
        Operation::Subsystem { name } => (
            SshOperation::Subsystem { name },
            format!("ssh subsystem {name}"),
        ),
        Operation::Forward { host, port } => (
            SshOperation::Forward { host, port: *port },
            format!("ssh forward to {host}:{port}"),
        ),
    }
}

impl Gate for GuardGate {
    type Login = ();

    async fn authenticate(&self, _user: &str, presented: SshPresented) -> Result<(), SshRefusal> {
        let checked = match presented {
            SshPresented::Password(token) => self
                .session
                .authenticate(Presented::Token(token.trim()))
                .await
                .map_err(|r| r.message),
            SshPresented::PublicKey(key) => self.public_key(&key).await,
        };
        // The agent learns the outcome once its line is written.
        let flushed = self.session.flush().await.map_err(|r| r.message);
        checked.and(flushed).map_err(SshRefusal::new)
    }

    async fn upstream(&self, _login: &()) -> Result<UpstreamTarget, SshRefusal> {
        self.target().await.map_err(|message| {
            self.session.error(message.clone());
            SshRefusal::new(message)
        })
    }

    async fn authorize(&self, _login: &(), operation: &Operation) -> SshDecision {
        let s = &self.session;
        if let Err(refusal) = s.recheck().await {
            let message = self.refuse(refusal).await.message;
            return SshDecision::Deny { message };
        }
        let (op, summary) = policy_op(operation);
        if let Some((command, kind)) = command_of(operation) {
            let kind = Some(kind);
            let _ = s.record(Event::Command { command, kind });
        }
        let authorized = s.authorize(policy::Operation::Ssh(op), &summary).await;
        // Nothing runs before its lines are written.
        match authorized.and(s.flush().await) {
            Ok(_) => SshDecision::Allow,
            Err(refusal) => SshDecision::Deny {
                message: self.refuse(refusal).await.message,
            },
        }
    }

    fn record(&self, _login: &(), event: SshEvent) {
        let recording = self.session.recording();
        match event {
            SshEvent::UpstreamFailed { message } => self
                .session
                .error(format!("upstream login failed: {message}")),
            SshEvent::Pty {
                term, cols, rows, ..
            } => recording.terminal_size(cols, rows, Some(&term)),
            SshEvent::WindowChange { cols, rows, .. } => recording.terminal_size(cols, rows, None),
            SshEvent::Started { channel, operation } => {
                if let Some((command, _)) = command_of(&operation) {
                    let exit = CommandExit {
                        channel,
                        command,
                        exit_status: None,
                        exit_signal: None,
                    };
                    self.running().insert(channel, exit);
                }
            }
            SshEvent::ExitStatus { channel, status } => {
                if let Some(exit) = self.running().get_mut(&channel) {
                    exit.exit_status = Some(status);
                }
            }
            SshEvent::ExitSignal { channel, signal } => {
                if let Some(exit) = self.running().get_mut(&channel) {
                    exit.exit_signal = Some(signal);
                }
            }
            SshEvent::ChannelClose { channel } => {
                let exit = self.running().remove(&channel);
                if let Some(exit) = exit {
                    recording.command_exit(exit);
                }
            }
            SshEvent::ChannelOpen { .. } | SshEvent::Denied { .. } => {}
        }
    }

    /// Exec and shell output, as the agent receives it: what the upstream
    /// program printed (Sluice's credential went into the upstream login,
    /// never into channel data).
    async fn output(&self, _login: &(), channel: u32, _stream: Stream, data: bytes::Bytes) {
        self.session
            .recording()
            .terminal_output(channel, data)
            .await;
    }
}
