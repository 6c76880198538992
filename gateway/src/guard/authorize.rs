//! Authorize: an operation under the service's current rules, and the
//! decision carried out: a denial recorded, a hold waiting for a JIT
//! approval (DESIGN.md §4 "Approvals").
use super::{Refusal, RefusalKind, Session};
use crate::{
    approvals::{self, HoldRequest, Outcome},
    policy::{self, Decision, Operation},
    recorder::Event,
};

/// How an authorized operation goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    /// As it is.
    AsIs,
    /// With what comes back masked (the service has `mask`).
    Masked,
}

impl Session {
    /// The decision on `op` under the service's current rules.
    fn decide(&self, op: Operation<'_>) -> Decision {
        self.with_current(|service| policy::decide(service, op))
    }

    /// Decides `op` and carries the decision out ([`Session::enforce`]).
    ///
    /// # Errors
    /// As [`Session::enforce`].
    pub async fn authorize(&self, op: Operation<'_>, summary: &str) -> Result<Allowed, Refusal> {
        self.enforce(self.decide(op), summary).await
    }

    /// Carries out `decision` on the operation `summary` describes (the
    /// SQL, or `METHOD path`; no bodies, no bind values).
    ///
    /// # Errors
    /// [`RefusalKind::Denied`] (recorded `denied`), or as
    /// [`Session::hold`].
    async fn enforce(&self, decision: Decision, summary: &str) -> Result<Allowed, Refusal> {
        match decision {
            Decision::Allow => Ok(self.allowed()),
            Decision::Mask => Ok(Allowed::Masked),
            Decision::Deny { rule, reason } => Err(self.deny(rule, reason)),
            Decision::Hold { rule } => self.hold(&rule, summary).await.map(|()| self.allowed()),
        }
    }

    fn allowed(&self) -> Allowed {
        if self.service().mask.is_empty() {
            Allowed::AsIs
        } else {
            Allowed::Masked
        }
    }

    /// Records a denial by `rule` and makes its refusal.
    pub fn deny(&self, rule: String, reason: String) -> Refusal {
        let _ = self.record(Event::Denied {
            reason: reason.clone(),
            rule: rule.clone(),
        });
        Refusal::new(RefusalKind::Denied { rule }, reason)
    }

    /// Holds the operation `summary` describes for a JIT approval under
    /// `rule`, recording `approval_wait` and then `approved` or `rejected`.
    /// Dropping the future abandons the approval.
    ///
    /// # Errors
    /// [`RefusalKind::Rejected`] when the approval is denied or times out,
    /// [`RefusalKind::Unavailable`] when the approval store is unreachable.
    pub async fn hold(&self, rule: &str, summary: &str) -> Result<(), Refusal> {
        let id = &self.identity;
        let caller = self.caller();
        let req = HoldRequest {
            agent: id.agent.clone(),
            pid: id.pid,
            uid: id.uid,
            service: self.service().name.clone(),
            summary: summary.to_string(),
            subject: caller.as_ref().map(|c| c.subject.clone()),
            groups: caller.map(|c| c.groups).unwrap_or_default(),
        };
        let guard = self.guard();
        let timeout = guard.config().gateway.approval_timeout;
        let outcome = approvals::hold(&guard.state, &guard.instance, req, timeout, |approval| {
            let _ = self.record(Event::ApprovalWait {
                approval: approval.to_string(),
                summary: summary.to_string(),
            });
        })
        .await;
        match outcome {
            Outcome::Approved { id, by } => {
                let _ = self.record(Event::Approved { approval: id, by });
                Ok(())
            }
            Outcome::Unavailable(e) => {
                tracing::warn!(error = %e, "approvals unavailable");
                let message = format!(
                    "{rule} needs a JIT approval, but the approval store (Redis) is unavailable"
                );
                self.error(message.clone());
                Err(Refusal::new(RefusalKind::Unavailable, message))
            }
            Outcome::Rejected { ref id, .. } | Outcome::TimedOut { ref id } => {
                let reason = outcome.refusal().unwrap_or_default();
                let by = match &outcome {
                    Outcome::Rejected { by, .. } => by.clone(),
                    _ => None,
                };
                let _ = self.record(Event::Rejected {
                    approval: id.clone(),
                    reason: reason.clone(),
                    by,
                });
                Err(Refusal::new(
                    RefusalKind::Rejected {
                        approval: id.clone(),
                    },
                    reason,
                ))
            }
        }
    }
}
