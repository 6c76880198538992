//! Authenticate: the agent's token, checked for this agent and service
//! (digest, expiry, revocation), behind the token-guessing throttle.
use super::{throttle, Refusal, RefusalKind, Session};
use crate::{
    identity,
    recorder::Event,
    state::{LiveToken, TokenCheckError},
    tokens::{self, Rejection},
};

/// What the agent presented.
#[derive(Debug, Clone, Copy)]
pub enum Presented<'a> {
    /// A token as the agent sent it: `slt_…`, or a JWT of the agent's
    /// OIDC issuer (HTTP, a cleartext password).
    Token(&'a str),
    /// The [`tokens::digest`] of the token a challenge-response (SCRAM)
    /// proved the agent holds.
    Digest(&'a str),
    /// A proof that matched no live token of this agent and service: a
    /// failed guess.
    Unmatched,
}

impl Session {
    /// Checks what the agent presented: a full check the first time a token
    /// is seen (recording `auth_ok`), then cheap re-checks
    /// ([`LiveToken::recheck`]). Every failure is recorded (`auth_fail`).
    ///
    /// # Errors
    /// [`RefusalKind::Unauthenticated`], [`RefusalKind::Malformed`],
    /// [`RefusalKind::Throttled`], or [`RefusalKind::Unavailable`] when the
    /// token store is unreachable.
    pub async fn authenticate(&self, presented: Presented<'_>) -> Result<(), Refusal> {
        let jwt = match presented {
            Presented::Token(token) if identity::looks_like_jwt(token) => Some(token),
            _ => None,
        };
        let digest = match presented {
            Presented::Token(token) => Some(tokens::digest(token)),
            Presented::Digest(digest) => Some(digest.to_string()),
            Presented::Unmatched => None,
        };
        let agent = &self.identity.agent;
        if let Err(wait) = self.guard().throttle.check(agent) {
            let msg = format!(
                "too many failed token checks from this agent; retry in {} ms",
                wait.as_millis().max(1)
            );
            return Err(self.auth_fail(RefusalKind::Throttled, &msg, &msg));
        }
        if let Some(jwt) = jwt {
            return self.authenticate_jwt(jwt).await;
        }
        let checked = match digest {
            Some(digest) => self.check(&digest).await,
            None => Err(Rejection::Unknown.into()),
        };
        checked.map_err(|e| self.token_refusal(e))
    }

    /// Records that no token was presented where one belongs (`reason`, not
    /// counted as a guess) and makes the refusal.
    pub fn absent(&self, reason: &str) -> Refusal {
        self.auth_fail(RefusalKind::Unauthenticated, reason, reason)
    }

    /// Records that the token cannot be read from what the agent sent, e.g.
    /// two different tokens or a broken handshake (`reason`, not counted as
    /// a guess), and makes the refusal.
    pub fn malformed(&self, reason: &str) -> Refusal {
        self.auth_fail(RefusalKind::Malformed, reason, reason)
    }

    /// Re-checks the token that passed before an operation: no Redis read
    /// unless a revocation happened since the last check.
    ///
    /// # Errors
    /// As [`Session::authenticate`]; `Unauthenticated` too when no token
    /// passed yet.
    pub async fn recheck(&self) -> Result<(), Refusal> {
        let known = self.live.lock().unwrap().clone();
        if known.is_none() && self.jwt.lock().unwrap().is_some() {
            return self.recheck_jwt().await;
        }
        let Some(mut token) = known else {
            return Err(self.token_refusal(Rejection::Unknown.into()));
        };
        if let Some(settled) = token.settled(&self.guard().state) {
            return settled.map_err(|e| self.token_refusal(e));
        }
        token
            .recheck(&self.guard().state)
            .await
            .map_err(|e| self.token_refusal(e))?;
        *self.live.lock().unwrap() = Some(token);
        Ok(())
    }

    /// The full check of `digest`, or a re-check when it is the token that
    /// passed last; records `auth_ok` for a new token.
    async fn check(&self, digest: &str) -> Result<(), TokenCheckError> {
        let service = &self.service().name;
        let known = {
            let live = self.live.lock().unwrap();
            match live
                .as_ref()
                .filter(|t| t.digest == digest && &t.record.service == service)
            {
                Some(t) => match t.settled(&self.guard().state) {
                    Some(settled) => return settled,
                    None => Some(t.clone()),
                },
                None => None,
            }
        };
        let fresh = match known {
            Some(mut t) => t.recheck(&self.guard().state).await.map(|()| t)?,
            None => {
                let state = &self.guard().state;
                let fresh = LiveToken::check(state, digest, &self.identity.agent, service).await?;
                let _ = self.record(Event::AuthOk {
                    token_id: fresh.record.id.clone(),
                });
                fresh
            }
        };
        *self.live.lock().unwrap() = Some(fresh);
        Ok(())
    }

    /// Records a failed token check and makes its refusal; a rejected
    /// token counts as a failed guess.
    fn token_refusal(&self, e: TokenCheckError) -> Refusal {
        match e {
            TokenCheckError::Rejected(rejection) => {
                self.failed_guess(&rejection, &format!("invalid sluice token: {rejection}"))
            }
            TokenCheckError::State(e) => self.unavailable(e),
        }
    }

    /// Counts a refused token or JWT (`why`) as a failed guess of this
    /// agent, records it and makes the refusal with `message`.
    pub(super) fn failed_guess(&self, why: &dyn std::fmt::Display, message: &str) -> Refusal {
        let failures = self.guard().throttle.failure(&self.identity.agent);
        let reason = format!(
            "{why} (failure {failures} of this agent within {} s)",
            throttle::WINDOW.as_secs()
        );
        self.auth_fail(RefusalKind::Unauthenticated, &reason, message)
    }

    /// The login salt of `scheme` for this session's agent and service
    /// (challenge–response logins; see [`crate::state`]'s verifiers).
    ///
    /// # Errors
    /// [`RefusalKind::Unavailable`] when the token store is unreachable
    /// (recorded).
    pub async fn login_salt(&self, scheme: &str) -> Result<Vec<u8>, Refusal> {
        self.token_store()
            .await?
            .login_salt(scheme, &self.identity.agent, &self.service().name)
            .await
            .map_err(|e| self.unavailable(e))
    }

    /// The `scheme` login verifiers of this session's agent and service,
    /// as (token digest, verifier text): what a challenge–response proof
    /// is matched against before [`Session::authenticate`] checks the
    /// matching token as [`Presented::Digest`].
    ///
    /// # Errors
    /// As [`Session::login_salt`].
    pub async fn verifiers(&self, scheme: &str) -> Result<Vec<(String, String)>, Refusal> {
        self.token_store()
            .await?
            .verifiers(scheme, &self.identity.agent, &self.service().name)
            .await
            .map_err(|e| self.unavailable(e))
    }

    /// The token store, or the recorded refusal when it is unreachable.
    async fn token_store(&self) -> Result<crate::state::State, Refusal> {
        self.guard()
            .state
            .get()
            .await
            .map_err(|e| self.unavailable(e))
    }

    /// Records that the token store is unreachable and makes the refusal.
    pub(super) fn unavailable(&self, e: impl std::fmt::Display) -> Refusal {
        tracing::warn!(error = %e, "token store unavailable");
        let message = "token store (Redis) unavailable; try again later";
        self.error(message);
        Refusal::new(RefusalKind::Unavailable, message)
    }

    pub(super) fn auth_fail(&self, kind: RefusalKind, reason: &str, message: &str) -> Refusal {
        let _ = self.record(Event::AuthFail {
            reason: reason.to_string(),
        });
        Refusal::new(kind, message)
    }
}
