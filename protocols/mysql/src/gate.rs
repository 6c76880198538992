//! The decisions a MySQL handler asks of the gateway, as one trait
//! ([`Gate`]), so this crate knows nothing of tokens, vaults, policy or
//! records: the gateway implements it on its guard pipeline (session
//! `authenticate`, `recheck`, `authorize`, `record`). A refusal comes back
//! already in MySQL's own ERR packet form (DESIGN.md §6 "MySQL / MariaDB",
//! errors): the gateway renders its own refusals, so this crate has no
//! refusal vocabulary of its own.
use std::future::Future;

use crate::{
    auth::verifier::Proof,
    classify::{Classification, Escapes, Unparseable},
    response::ErrPacket,
};

/// A statement an agent sent (`COM_QUERY` text or `COM_STMT_PREPARE`).
pub struct Statement<'a> {
    /// The SQL text.
    pub sql: &'a str,
    /// Its kinds, or why it cannot be read.
    pub classification: &'a Result<Classification, Unparseable>,
    /// How the server reads its string literals now.
    pub escapes: Escapes,
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
    /// Columns were masked in a result: their names, and how many rows
    /// had values masked.
    Masked { columns: Vec<String>, rows: u64 },
    /// The upstream reported an error.
    Error { code: u16, message: String },
    /// The agent's connection ended.
    Close,
}

/// The gateway's side of one agent connection. Each refusal is the ERR
/// packet the agent gets: 1045/`28000` for a bad, expired or revoked
/// token, 1227/`42000` for policy and rejected approvals (with the
/// approval id), 1105/`HY000` otherwise.
pub trait Gate: Send {
    /// Checks a login proof against the verifiers of the agent's tokens.
    fn authenticate(&mut self, proof: &Proof)
        -> impl Future<Output = Result<(), ErrPacket>> + Send;

    /// Decides on a statement (deny, hold for approval, mask; a statement
    /// reading a masked column in a way masking cannot follow is refused,
    /// see [`crate::classify::check_exposure`]) and records it; also
    /// re-checks that the token is still valid.
    fn authorize(
        &mut self,
        statement: &Statement<'_>,
    ) -> impl Future<Output = Result<Allowed, ErrPacket>> + Send;

    /// Writes an event to the session record.
    fn record(&mut self, event: Event) -> impl Future<Output = Result<(), ErrPacket>> + Send;

    /// The upstream thread id behind `connection_id`, a connection id
    /// Sluice gave this same agent; `None` for any other id (`KILL` of it
    /// is refused).
    fn upstream_thread(&self, connection_id: u64) -> Option<u32>;
}
