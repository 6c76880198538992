//! Revoked OIDC subjects and JWT ids (DESIGN.md §7): `sluice token revoke
//! --subject SUB | --jti JTI` writes here and announces it on
//! [`REVOCATIONS_CHANNEL`], so every gateway re-checks its live JWTs before
//! the next request or statement (the same epoch as token revocation).
//!
//! Key: `sluice:jwt-revoked`, a hash of `sub:<subject>` or `jti:<jti>` →
//! the revocation time (Unix seconds). A subject's revocation refuses every
//! JWT for it issued (`iat`) at or before that time, and every JWT without
//! `iat`; tokens the issuer mints afterwards work again. A `jti`'s
//! revocation refuses that token for good.
use redis::AsyncCommands;

use super::{State, StateError, REVOCATIONS_CHANNEL};

const KEY: &str = "sluice:jwt-revoked";

/// What to revoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtRevocation {
    /// Every JWT with this `sub` issued until now.
    Subject(String),
    /// The JWT with this `jti`.
    Jti(String),
}

impl JwtRevocation {
    fn field(&self) -> String {
        match self {
            JwtRevocation::Subject(s) => format!("sub:{s}"),
            JwtRevocation::Jti(j) => format!("jti:{j}"),
        }
    }
}

impl State {
    /// Records `what` as revoked now and announces it to every gateway.
    ///
    /// # Errors
    /// [`StateError::Command`] when Redis fails.
    pub async fn revoke_jwt(&self, what: &JwtRevocation) -> Result<(), StateError> {
        let now = chrono::Utc::now().timestamp();
        redis::pipe()
            .atomic()
            .hset(KEY, what.field(), now)
            .ignore()
            .publish(REVOCATIONS_CHANNEL, what.field())
            .ignore()
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(StateError::command("jwt revoke"))
    }

    /// Whether a JWT for `subject` with id `jti`, issued at `issued_at`
    /// (Unix seconds), is revoked.
    ///
    /// # Errors
    /// [`StateError::Command`] when Redis fails.
    pub async fn jwt_revoked(
        &self,
        subject: &str,
        jti: Option<&str>,
        issued_at: Option<i64>,
    ) -> Result<bool, StateError> {
        let by_subject = JwtRevocation::Subject(subject.to_string()).field();
        let by_id = jti.map(|j| JwtRevocation::Jti(j.to_string()).field());
        let at: Vec<Option<i64>> = self
            .conn()
            .hmget(KEY, &[by_subject, by_id.unwrap_or_default()])
            .await
            .map_err(StateError::command("jwt revocation check"))?;
        let (subject_at, id_at) = (at.first().copied().flatten(), at.get(1).copied().flatten());
        let subject_revoked = subject_at.is_some_and(|at| issued_at.is_none_or(|iat| iat <= at));
        Ok(subject_revoked || (jti.is_some() && id_at.is_some()))
    }
}
