//! JIT approval holds: an operation that matches an `approve` rule waits
//! here, without blocking anything else, until a human approves or denies it
//! from any gateway host (`sluice approve|deny ID`), or `approval_timeout`
//! passes.
//!
//! The wait wakes on the decision's pub/sub announcement and also re-reads
//! the approval every [`POLL`] in case an announcement was missed. If the
//! waiting future is dropped (the agent went away), the approval is marked
//! `abandoned`. Each approval covers exactly one operation.
use std::{sync::Arc, time::Duration};

use rand::{distributions::Alphanumeric, Rng};
use tokio::time::Instant;

use crate::state::{Approval, ApprovalStatus, Decided, StateError, StateHandle};

/// Poll interval of the fallback re-read.
pub const POLL: Duration = Duration::from_secs(1);

/// The operation to hold, as policy describes it.
#[derive(Debug, Clone)]
pub struct HoldRequest {
    pub agent: String,
    pub pid: u32,
    pub uid: u32,
    pub service: String,
    /// The SQL, or `METHOD path` (no bodies, no bind values).
    pub summary: String,
    /// The caller's `sub` and groups, when a JWT authenticated it.
    pub subject: Option<String>,
    pub groups: Vec<String>,
}

/// How a hold ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Approved {
        id: String,
        by: String,
    },
    Rejected {
        id: String,
        reason: String,
        /// Who denied it (a Unix user, or a console subject); `None` when
        /// nobody did (abandoned, record gone or damaged).
        by: Option<String>,
    },
    TimedOut {
        id: String,
    },
    /// Redis unreachable: approvals fail closed.
    Unavailable(String),
}

impl Outcome {
    /// The reason to give the agent for anything but approval.
    pub fn refusal(&self) -> Option<String> {
        match self {
            Outcome::Approved { .. } => None,
            Outcome::Rejected { id, reason, .. } => {
                Some(format!("approval {id} was denied: {reason}"))
            }
            Outcome::TimedOut { id } => Some(format!("approval {id} timed out without a decision")),
            Outcome::Unavailable(e) => Some(format!("approvals are unavailable ({e}); refused")),
        }
    }
}

fn new_id() -> String {
    let suffix: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(10)
        .map(char::from)
        .collect();
    format!("apr_{suffix}")
}

/// Marks the approval abandoned if the hold is dropped before it ends.
struct AbandonOnDrop {
    handle: Arc<StateHandle>,
    id: Option<String>,
}

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        if let (Some(id), Ok(rt)) = (self.id.take(), tokio::runtime::Handle::try_current()) {
            let handle = self.handle.clone();
            rt.spawn(async move {
                if let Ok(state) = handle.get().await {
                    let _ = state
                        .approval_decide(&id, ApprovalStatus::Abandoned, "", "the agent went away")
                        .await;
                }
            });
        }
    }
}

/// Creates an approval for `req`, calls `on_wait` with its id (to record
/// `approval_wait`), and waits for the outcome.
pub async fn hold(
    handle: &Arc<StateHandle>,
    gateway: &str,
    req: HoldRequest,
    timeout: Duration,
    on_wait: impl FnOnce(&str),
) -> Outcome {
    let state = match handle.get().await {
        Ok(s) => s,
        Err(e) => return Outcome::Unavailable(e.to_string()),
    };
    let mut decisions = handle.approval_decisions();
    let now = chrono::Utc::now().timestamp();
    let approval = Approval {
        id: new_id(),
        agent: req.agent,
        pid: req.pid,
        uid: req.uid,
        service: req.service,
        summary: req.summary,
        created: now,
        expires: now + timeout.as_secs().max(1) as i64,
        status: ApprovalStatus::Pending,
        by: None,
        reason: None,
        gateway: gateway.to_string(),
        subject: req.subject,
        groups: req.groups,
    };
    if let Err(e) = state.approval_create(&approval).await {
        return Outcome::Unavailable(e.to_string());
    }
    let id = approval.id;
    on_wait(&id);
    let mut guard = AbandonOnDrop {
        handle: handle.clone(),
        id: Some(id.clone()),
    };
    let deadline = Instant::now() + timeout;
    let outcome = loop {
        tokio::select! {
            msg = decisions.recv() => {
                if matches!(&msg, Ok(m) if *m != id) {
                    continue;
                }
            }
            _ = tokio::time::sleep(POLL) => {}
            _ = tokio::time::sleep_until(deadline) => {
                match state.approval_decide(&id, ApprovalStatus::Expired, "", "timed out").await {
                    Ok(Decided::Done) => break Outcome::TimedOut { id: id.clone() },
                    Ok(_) => {}
                    Err(e) => break Outcome::Unavailable(e.to_string()),
                }
            }
        }
        match state.approval_get(&id).await {
            Ok(Some(a)) => match a.status {
                ApprovalStatus::Pending => {}
                ApprovalStatus::Approved => {
                    break Outcome::Approved {
                        id: id.clone(),
                        by: a.by.unwrap_or_default(),
                    }
                }
                ApprovalStatus::Denied => {
                    break Outcome::Rejected {
                        id: id.clone(),
                        reason: a.reason.unwrap_or_else(|| "no reason given".into()),
                        by: a.by,
                    }
                }
                ApprovalStatus::Expired => break Outcome::TimedOut { id: id.clone() },
                ApprovalStatus::Abandoned => {
                    break Outcome::Rejected {
                        id: id.clone(),
                        reason: "abandoned".into(),
                        by: None,
                    }
                }
            },
            Ok(None) => {
                break Outcome::Rejected {
                    id: id.clone(),
                    reason: "the approval record disappeared".into(),
                    by: None,
                }
            }
            // Logged by approval_get with the key.
            Err(StateError::Tampered { .. }) => {
                break Outcome::Rejected {
                    id: id.clone(),
                    reason: "the approval record failed its integrity check".into(),
                    by: None,
                }
            }
            // Redis blipped: keep waiting until the deadline.
            Err(_) if Instant::now() < deadline => {}
            Err(e) => break Outcome::Unavailable(e.to_string()),
        }
    };
    guard.id = None;
    outcome
}
