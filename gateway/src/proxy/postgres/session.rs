//! What the two relay tasks of a PostgreSQL session share, and the
//! ErrorResponses Sluice writes into it.
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::{codec::backend, tracker::Tracker, Postgres};
use crate::guard::{self, Refusal};

/// What both relay tasks share.
pub struct Session {
    /// The handler's state (statement cache).
    pub pg: Arc<Postgres>,
    /// The guard's session: identity, record, token, rules.
    pub guard: Arc<guard::Session>,
    pub tracker: Tracker,
}

impl Session {
    /// The masked columns, fixed for the session.
    pub(super) fn mask(&self) -> &[String] {
        &self.guard.service().mask
    }

    /// Whether the service has deny rules now, or masked columns: then
    /// what bypasses classification (FunctionCall) is refused.
    pub(super) fn guarded(&self) -> bool {
        let denies = self
            .guard
            .with_current(|now| now.sql().is_some_and(|q| !q.deny.is_empty()));
        denies || !self.mask().is_empty()
    }
}

/// An ErrorResponse (severity ERROR) with `sqlstate` and `message`.
pub(super) fn error_bytes(sqlstate: &str, message: &str) -> Bytes {
    let mut out = BytesMut::new();
    backend::error_response(sqlstate, message, &mut out);
    out.freeze()
}

/// The ErrorResponse for a refused statement: `42501` whatever the
/// reason (the message names it, e.g. an approval store that is down),
/// since the session goes on.
pub(super) fn refusal_bytes(refused: &Refusal) -> Bytes {
    error_bytes("42501", &format!("Sluice: {}", refused.message))
}
