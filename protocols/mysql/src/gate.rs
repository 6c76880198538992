//! The decisions a MySQL handler asks of the gateway, as one trait
//! ([`Gate`]), so this crate knows nothing of tokens, vaults, policy or
//! records: the gateway implements it on its guard pipeline (session
//! `authenticate`, `credential`, `authorize`, `record`). Each refusal is
//! rendered in MySQL's own ERR packet by [`Refusal::err_packet`]
//! (DESIGN.md §6 "MySQL / MariaDB", errors).
use std::{future::Future, net::SocketAddr, sync::Arc};

use zeroize::Zeroizing;

use crate::{
    auth::verifier::Proof,
    classify::{Classification, Unparseable},
    response::ErrPacket,
    upstream::UpstreamTls,
};

/// Why the gateway said no.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefusalKind {
    /// A bad, expired or revoked token, or none.
    Unauthenticated,
    /// The request could not be read.
    Malformed,
    /// Too many attempts.
    Throttled,
    /// A `deny` rule matched (or the text is unparseable while `deny` is set).
    Denied { rule: String },
    /// A human rejected the approval, or it expired.
    Rejected { approval: String },
    /// The upstream cannot be reached.
    Unavailable,
    /// The session record cannot be written.
    Unrecorded,
    /// The service has no secret in the vault.
    NoSecret,
    /// The vault failed.
    Vault,
}

/// A refusal and its message (which never holds a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Why.
    pub kind: RefusalKind,
    /// For the agent.
    pub message: String,
}

impl Refusal {
    /// The ERR packet the agent gets: 1045/`28000` for authentication,
    /// 1227/`42000` for policy and rejected approvals (with the approval
    /// id), 1105/`HY000` for everything else (an unreachable upstream
    /// named in the message).
    pub fn err_packet(&self) -> ErrPacket {
        match &self.kind {
            RefusalKind::Unauthenticated => ErrPacket::access_denied(&self.message),
            RefusalKind::Denied { rule } => {
                ErrPacket::policy_denied(format!("{} (sluice rule {rule})", self.message))
            }
            RefusalKind::Rejected { approval } => {
                ErrPacket::policy_denied(format!("{} (approval {approval})", self.message))
            }
            _ => ErrPacket::unknown(&self.message),
        }
    }
}

/// Where and as whom Sluice logs in upstream.
pub struct UpstreamTarget {
    /// The server's address.
    pub addr: SocketAddr,
    /// The name its certificate must carry.
    pub host: String,
    /// `credential.user`.
    pub user: String,
    /// The vault secret.
    pub password: Zeroizing<Vec<u8>>,
    /// `upstream_tls`.
    pub tls: UpstreamTls,
    /// The TLS client configuration (roots or `upstream_ca`).
    pub tls_config: Option<Arc<rustls::ClientConfig>>,
}

/// A statement an agent sent (`COM_QUERY` text or `COM_STMT_PREPARE`).
pub struct Statement<'a> {
    /// The SQL text.
    pub sql: &'a str,
    /// Its kinds, or why it cannot be read.
    pub classification: &'a Result<Classification, Unparseable>,
}

/// What the gateway allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    /// Relay as it is.
    AsIs,
    /// Relay, masking the values of these columns (by name) in results.
    Masked(Vec<String>),
}

/// Something for the session record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A statement was relayed.
    Query {
        sql: String,
        kinds: Vec<&'static str>,
    },
    /// Columns were masked in a result.
    Masked { columns: Vec<String> },
    /// The upstream reported an error.
    Error { code: u16, message: String },
    /// The agent's connection ended.
    Close,
}

/// The gateway's side of one agent connection.
pub trait Gate: Send {
    /// Checks a login proof against the verifiers of the agent's tokens.
    fn authenticate(&mut self, proof: &Proof) -> impl Future<Output = Result<(), Refusal>> + Send;

    /// The upstream and its credential, once authenticated.
    fn upstream(&mut self) -> impl Future<Output = Result<UpstreamTarget, Refusal>> + Send;

    /// Decides on a statement (deny, hold for approval, mask); also
    /// re-checks that the token is still valid.
    fn authorize(
        &mut self,
        statement: &Statement<'_>,
    ) -> impl Future<Output = Result<Allowed, Refusal>> + Send;

    /// Writes an event to the session record.
    fn record(&mut self, event: Event) -> impl Future<Output = Result<(), Refusal>> + Send;

    /// The upstream thread id behind `connection_id`, a connection id
    /// Sluice gave this same agent; `None` for any other id (`KILL` of it
    /// is refused).
    fn upstream_thread(&self, connection_id: u64) -> Option<u32>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(kind: RefusalKind) -> ErrPacket {
        Refusal {
            kind,
            message: "no".into(),
        }
        .err_packet()
    }

    #[test]
    fn refusals_render_as_mysql_errors() {
        let e = refusal(RefusalKind::Unauthenticated);
        assert_eq!((e.code, e.sql_state), (1045, Some(*b"28000")));
        let e = refusal(RefusalKind::Denied {
            rule: "DROP".into(),
        });
        assert_eq!((e.code, e.sql_state), (1227, Some(*b"42000")));
        assert!(e.message.contains("DROP"));
        let e = refusal(RefusalKind::Rejected {
            approval: "apr_123".into(),
        });
        assert_eq!(e.code, 1227);
        assert!(e.message.contains("apr_123"));
        let e = refusal(RefusalKind::Unavailable);
        assert_eq!((e.code, e.sql_state), (1105, Some(*b"HY000")));
    }
}
