//! Why the pipeline refused a step. The event is already recorded; each
//! handler answers a [`Refusal`] in its protocol's own error form (DESIGN.md
//! §4 "Errors the agent sees").

/// What kind of refusal, for the protocol's error form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefusalKind {
    /// No, a malformed, an unknown, expired or revoked token, or one of
    /// another agent or service (HTTP 401 or 400, SQLSTATE `28P01`).
    Unauthenticated,
    /// A request the token cannot be read from, e.g. two different tokens
    /// (HTTP 400).
    Malformed,
    /// Too many failed token checks from this agent (HTTP 429).
    Throttled,
    /// Denied by the policy rule shown (HTTP 403, SQLSTATE `42501`).
    Denied { rule: String },
    /// The JIT approval was rejected or timed out (HTTP 403, `42501`).
    Rejected { approval: String },
    /// The token or approval store (Redis) is unreachable (HTTP 503,
    /// SQLSTATE `08006`).
    Unavailable,
    /// The session record cannot be written: nothing goes on unaudited
    /// (HTTP 503, SQLSTATE `53100`).
    Unrecorded,
    /// The service's secret is not in the vault (HTTP 502, `08006`).
    NoSecret,
    /// The vault cannot be read (HTTP 500, `08006`).
    Vault,
}

/// A refused step: its kind and the one-line message for the agent (never
/// a secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub kind: RefusalKind,
    pub message: String,
}

impl Refusal {
    pub(super) fn new(kind: RefusalKind, message: impl Into<String>) -> Self {
        Refusal {
            kind,
            message: message.into(),
        }
    }

    /// The refusal for a session record that cannot be written.
    pub fn unrecorded() -> Self {
        Refusal::new(
            RefusalKind::Unrecorded,
            "session record cannot be written; refusing unaudited access",
        )
    }
}
