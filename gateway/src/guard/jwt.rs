//! Authenticate with an OIDC workload token (DESIGN.md §7): a JWT presented
//! where a Sluice token goes. Valid only when [`crate::identity`] accepts
//! it for the issuer of the presenting agent's `oidc` binding, its `sub`
//! matches the binding's glob, the service's `groups` (when set) intersect
//! the caller's, and neither its subject nor its `jti` is revoked. Before
//! each later operation it is re-checked: expiry locally, revocation when
//! one was announced since ([`crate::state::JwtRevocation`]).
use super::{Refusal, RefusalKind, Session};
use crate::{
    identity::{Caller, IdentityError},
    policy::glob,
    recorder::Event,
    state::StateError,
    tokens,
};

/// A JWT that passed, as the session keeps it.
#[derive(Debug, Clone)]
pub(super) struct LiveJwt {
    /// [`tokens::digest`] of the JWT (never the JWT).
    digest: String,
    pub caller: Caller,
    /// Allowed clock skew past `exp` (seconds).
    leeway: i64,
    /// The revocation epoch when revocation was last checked.
    epoch: Option<u64>,
}

impl Session {
    /// Checks `token` as a JWT (see the module doc); records `auth_ok`
    /// with the caller, or `auth_fail`.
    pub(super) async fn authenticate_jwt(&self, token: &str) -> Result<(), Refusal> {
        let digest = tokens::digest(token);
        let known = self
            .jwt
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|j| j.digest == digest);
        if known {
            return self.recheck_jwt().await;
        }
        let config = self.guard().config();
        let binding = config
            .agent(&self.identity.agent)
            .and_then(|a| a.oidc.clone());
        let Some(binding) = binding else {
            return Err(self.jwt_refusal(IdentityError::Invalid(format!(
                "agent {:?} has no oidc binding; it accepts no JWT",
                self.identity.agent
            ))));
        };
        let issuer = config
            .issuer(&binding.issuer)
            .ok_or_else(|| self.jwt_refusal(IdentityError::Invalid("unknown issuer".into())))?;
        let caller = self
            .guard()
            .identity
            .verify(issuer, token)
            .await
            .map_err(|e| self.jwt_refusal(e))?;
        if !glob::matches(&binding.subject, &caller.subject) {
            return Err(self.jwt_refusal(IdentityError::Invalid(format!(
                "subject {:?} does not match agent {:?}'s binding",
                caller.subject, self.identity.agent
            ))));
        }
        let wanted = self.with_current(|s| s.groups.clone());
        if !wanted.is_empty() && !caller.groups.iter().any(|g| wanted.contains(g)) {
            return Err(self.jwt_refusal(IdentityError::Invalid(format!(
                "subject {:?} is in none of the service's groups {wanted:?}",
                caller.subject
            ))));
        }
        let epoch = self.guard().state.revocation_epoch();
        self.check_revoked(&caller).await?;
        self.record.set_caller(&caller.subject, &caller.groups);
        let _ = self.record(Event::AuthOk {
            token_id: format!(
                "jwt:{}:{}",
                caller.issuer,
                caller.jti.as_deref().unwrap_or(&caller.subject)
            ),
        });
        let leeway = i64::try_from(issuer.leeway.as_secs()).unwrap_or(0);
        *self.jwt.lock().unwrap() = Some(LiveJwt {
            digest,
            caller,
            leeway,
            epoch,
        });
        Ok(())
    }

    /// Re-checks the JWT that passed: expiry, and revocation when one was
    /// announced since the last check.
    pub(super) async fn recheck_jwt(&self) -> Result<(), Refusal> {
        let Some(live) = self.jwt.lock().unwrap().clone() else {
            return Err(self.jwt_refusal(IdentityError::Invalid("no JWT passed".into())));
        };
        if chrono::Utc::now().timestamp() > live.caller.expires + live.leeway {
            return Err(self.jwt_refusal(IdentityError::Invalid("JWT expired".into())));
        }
        let epoch = self.guard().state.revocation_epoch();
        if epoch.is_some() && epoch == live.epoch {
            return Ok(());
        }
        self.check_revoked(&live.caller).await?;
        if let Some(j) = self.jwt.lock().unwrap().as_mut() {
            j.epoch = epoch;
        }
        Ok(())
    }

    /// Whether this session's agent is bound to an OIDC issuer (DESIGN.md
    /// §6): a JWT cannot be checked by a challenge–response login, so a
    /// database handler must then ask for a cleartext password, over TLS
    /// only, and pass it as [`super::Presented::Token`].
    pub fn wants_cleartext_password(&self) -> bool {
        self.guard()
            .config()
            .agent(&self.identity.agent)
            .is_some_and(|a| a.oidc.is_some())
    }

    /// The caller a JWT authenticated in this session, if any.
    pub fn caller(&self) -> Option<Caller> {
        self.jwt.lock().unwrap().as_ref().map(|j| j.caller.clone())
    }

    async fn check_revoked(&self, caller: &Caller) -> Result<(), Refusal> {
        let revoked = async {
            let state = self.guard().state.get().await?;
            state
                .jwt_revoked(&caller.subject, caller.jti.as_deref(), caller.issued_at)
                .await
        }
        .await
        .map_err(|e: StateError| self.unavailable(e))?;
        if revoked {
            return Err(self.jwt_refusal(IdentityError::Invalid(format!(
                "JWT of subject {:?} is revoked",
                caller.subject
            ))));
        }
        Ok(())
    }

    /// Records a refused JWT and makes its refusal: an invalid one counts
    /// as a failed guess; unreachable keys fail closed as unavailable.
    fn jwt_refusal(&self, e: IdentityError) -> Refusal {
        match e {
            IdentityError::Invalid(why) => self.failed_guess(&why, &format!("invalid JWT: {why}")),
            IdentityError::Unavailable(why) => {
                tracing::warn!(error = %why, "OIDC keys unavailable");
                self.error(why.clone());
                Refusal::new(
                    RefusalKind::Unavailable,
                    format!("identity provider unavailable: {why}"),
                )
            }
        }
    }
}
