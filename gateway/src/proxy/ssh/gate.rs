//! [`sluice_ssh::Gate`] on a guard [`Session`]: the SSH handler's login,
//! upstream and channel decisions, made by the shared pipeline.
use std::{net::SocketAddr, sync::Arc};

use sluice_ssh::{
    placeholder::fingerprint, Decision as SshDecision, Gate, Operation, Presented as SshPresented,
    Refusal as SshRefusal, SshEvent, UpstreamCredential, UpstreamTarget,
};
use zeroize::Zeroizing;

use super::keys;
use crate::{
    guard::{Presented, Refusal, Session},
    intercept::resolver,
    policy::{self, ssh::SshOperation},
    recorder::Event,
};

/// The gate of one agent connection.
pub struct GuardGate {
    session: Arc<Session>,
}

impl GuardGate {
    /// The gate deciding for `session`.
    pub fn new(session: Arc<Session>) -> Self {
        GuardGate { session }
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
        if let Operation::Exec { command } = operation {
            let _ = s.record(Event::Command {
                command: command.clone(),
            });
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
        if let SshEvent::UpstreamFailed { message } = event {
            self.session
                .error(format!("upstream login failed: {message}"));
        }
    }
}
