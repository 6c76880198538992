//! JIT approvals in Redis, shared by every gateway host.
//!
//! Keys: `sluice:approval:<id>` → hash of [`Approval`] fields (expires one
//! day after the approval); `sluice:approvals` → sorted set of ids by
//! creation time. Every decision is PUBLISHed (the id) on
//! [`APPROVALS_CHANNEL`], so the gateway holding the operation wakes at
//! once wherever the decision was made; holders also poll as a fallback.
//!
//! Each approval hash carries a `mac` over all its fields (see
//! [`super::mac`]); an approval that fails it is refused ([`StateError::Tampered`])
//! and never decided.
use std::collections::HashMap;

use redis::AsyncCommands;
use serde::Serialize;

use super::{State, StateError};

/// Pub/sub channel carrying the id of each decided approval.
pub const APPROVALS_CHANNEL: &str = "sluice:approval-decisions";
const INDEX_KEY: &str = "sluice:approvals";
/// How long a decided approval stays listed.
const KEEP_SECS: i64 = 24 * 3600;

fn key(id: &str) -> String {
    format!("sluice:approval:{id}")
}

/// Where an approval stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalStatus {
    Pending,
    Approved,
    Denied,
    /// Nobody decided within `approval_timeout`.
    Expired,
    /// The holding gateway or connection went away first.
    Abandoned,
}

impl ApprovalStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalStatus::Pending => "pending",
            ApprovalStatus::Approved => "approved",
            ApprovalStatus::Denied => "denied",
            ApprovalStatus::Expired => "expired",
            ApprovalStatus::Abandoned => "abandoned",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => ApprovalStatus::Pending,
            "approved" => ApprovalStatus::Approved,
            "denied" => ApprovalStatus::Denied,
            "expired" => ApprovalStatus::Expired,
            "abandoned" => ApprovalStatus::Abandoned,
            _ => return None,
        })
    }
}

/// One held operation awaiting a human (times are unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Approval {
    pub id: String,
    pub agent: String,
    pub pid: u32,
    pub uid: u32,
    pub service: String,
    /// The SQL, or `METHOD path`; never bodies or bind values.
    pub summary: String,
    pub created: i64,
    pub expires: i64,
    pub status: ApprovalStatus,
    /// Unix user who decided.
    pub by: Option<String>,
    /// Reason given with a denial.
    pub reason: Option<String>,
    /// The gateway instance holding the operation.
    pub gateway: String,
    /// The caller's `sub` and groups, when a JWT authenticated it
    /// (DESIGN.md §7).
    pub subject: Option<String>,
    pub groups: Vec<String>,
}

impl Approval {
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            ("id", self.id.clone()),
            ("agent", self.agent.clone()),
            ("pid", self.pid.to_string()),
            ("uid", self.uid.to_string()),
            ("service", self.service.clone()),
            ("summary", self.summary.clone()),
            ("created", self.created.to_string()),
            ("expires", self.expires.to_string()),
            ("status", self.status.as_str().to_string()),
            ("gateway", self.gateway.clone()),
        ];
        if let Some(subject) = &self.subject {
            fields.push(("subject", subject.clone()));
            fields.push(("groups", self.groups.join("\n")));
        }
        fields
    }

    fn from_fields(
        key: &str,
        mut f: HashMap<String, String>,
    ) -> Result<Option<Approval>, StateError> {
        if f.is_empty() {
            return Ok(None);
        }
        let bad = |what: &str| StateError::Malformed {
            key: key.to_string(),
            what: what.to_string(),
        };
        let mut take = |name: &str| f.remove(name).ok_or_else(|| bad(name));
        Ok(Some(Approval {
            id: take("id")?,
            agent: take("agent")?,
            pid: take("pid")?.parse().map_err(|_| bad("pid"))?,
            uid: take("uid")?.parse().map_err(|_| bad("uid"))?,
            service: take("service")?,
            summary: take("summary")?,
            created: take("created")?.parse().map_err(|_| bad("created"))?,
            expires: take("expires")?.parse().map_err(|_| bad("expires"))?,
            status: ApprovalStatus::parse(&take("status")?).ok_or_else(|| bad("status"))?,
            gateway: take("gateway")?,
            by: f.remove("by"),
            reason: f.remove("reason"),
            groups: f
                .remove("groups")
                .map(|g| g.lines().map(String::from).collect())
                .unwrap_or_default(),
            subject: f.remove("subject"),
        }))
    }
}

/// Moves a pending approval to a final status, once, if its MAC is still
/// the one read. KEYS[1] = approval key; ARGV = status, by, reason,
/// channel, id, MAC read, new MAC. Returns the status it had, or `changed`.
const DECIDE_SCRIPT: &str = r"
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return '' end
if status ~= 'pending' then return status end
if redis.call('HGET', KEYS[1], 'mac') ~= ARGV[6] then return 'changed' end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'mac', ARGV[7])
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'by', ARGV[2]) end
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'reason', ARGV[3]) end
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 'pending'
";

/// What a decision attempt found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decided {
    /// The approval was pending and now has the new status.
    Done,
    /// No such approval.
    Unknown,
    /// Already decided (the status it has).
    Already(ApprovalStatus),
}

impl State {
    /// Stores a new pending approval.
    ///
    /// # Errors
    /// [`StateError::Command`] when Redis fails.
    pub async fn approval_create(&self, a: &Approval) -> Result<(), StateError> {
        let k = key(&a.id);
        let mut fields = a.fields();
        fields.push(("mac", self.keys.approval_mac(a)?));
        redis::pipe()
            .atomic()
            .hset_multiple(&k, &fields)
            .ignore()
            .cmd("EXPIREAT")
            .arg(&k)
            .arg(a.expires + KEEP_SECS)
            .ignore()
            .zadd(INDEX_KEY, &a.id, a.created)
            .ignore()
            .exec_async(&mut self.conn())
            .await
            .map_err(StateError::command("approval create"))
    }

    /// The approval `id`, if known.
    ///
    /// # Errors
    /// [`StateError`] when Redis fails or the record is damaged;
    /// [`StateError::Tampered`] (also logged) when it fails its MAC.
    pub async fn approval_get(&self, id: &str) -> Result<Option<Approval>, StateError> {
        Ok(self.approval_read(id).await?.map(|(a, _)| a))
    }

    /// The approval `id` with its stored MAC, checked.
    async fn approval_read(&self, id: &str) -> Result<Option<(Approval, String)>, StateError> {
        let k = key(id);
        let mut f: HashMap<String, String> = self
            .conn()
            .hgetall(&k)
            .await
            .map_err(StateError::command("approval get"))?;
        let stored = f.remove("mac");
        let Some(a) = Approval::from_fields(&k, f)? else {
            return Ok(None);
        };
        if !super::mac::matches(&self.keys.approval_mac(&a)?, stored.as_deref()) {
            tracing::warn!(key = k, "approval failed its integrity check; refused");
            return Err(StateError::Tampered { key: k });
        }
        Ok(stored.map(|mac| (a, mac)))
    }

    /// Approvals still known, oldest first; `pending_only` filters.
    ///
    /// # Errors
    /// [`StateError`] when Redis fails.
    pub async fn approval_list(&self, pending_only: bool) -> Result<Vec<Approval>, StateError> {
        let ids: Vec<String> = self
            .conn()
            .zrange(INDEX_KEY, 0, -1)
            .await
            .map_err(StateError::command("approval list"))?;
        let mut out = Vec::new();
        for id in ids {
            let approval = match self.approval_get(&id).await {
                // Logged; not listed, so nobody decides it.
                Err(StateError::Tampered { .. }) => continue,
                other => other?,
            };
            match approval {
                Some(a) if !pending_only || a.status == ApprovalStatus::Pending => out.push(a),
                Some(_) => {}
                None => {
                    let _: Result<(), _> = self.conn().zrem(INDEX_KEY, &id).await;
                }
            }
        }
        Ok(out)
    }

    /// Decides a pending approval and announces it on [`APPROVALS_CHANNEL`],
    /// signing the decided record.
    ///
    /// # Errors
    /// [`StateError`] when Redis fails; [`StateError::Tampered`] when the
    /// approval fails its MAC or changed while being decided.
    pub async fn approval_decide(
        &self,
        id: &str,
        status: ApprovalStatus,
        by: &str,
        reason: &str,
    ) -> Result<Decided, StateError> {
        let Some((mut decided, read_mac)) = self.approval_read(id).await? else {
            return Ok(Decided::Unknown);
        };
        if decided.status != ApprovalStatus::Pending {
            return Ok(Decided::Already(decided.status));
        }
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        decided.status = status;
        decided.by = non_empty(by);
        decided.reason = non_empty(reason);
        let had: String = redis::Script::new(DECIDE_SCRIPT)
            .key(key(id))
            .arg(status.as_str())
            .arg(by)
            .arg(reason)
            .arg(APPROVALS_CHANNEL)
            .arg(id)
            .arg(read_mac)
            .arg(self.keys.approval_mac(&decided)?)
            .invoke_async(&mut self.conn())
            .await
            .map_err(StateError::command("approval decide"))?;
        Ok(match had.as_str() {
            "" => Decided::Unknown,
            "pending" => Decided::Done,
            "changed" => return Err(StateError::Tampered { key: key(id) }),
            other => {
                Decided::Already(ApprovalStatus::parse(other).unwrap_or(ApprovalStatus::Abandoned))
            }
        })
    }

    /// Marks every pending approval held by `gateway` abandoned (after a
    /// restart nothing can still be waiting on them). Returns how many.
    ///
    /// # Errors
    /// [`StateError`] when Redis fails.
    pub async fn approvals_abandon(&self, gateway: &str) -> Result<usize, StateError> {
        let mut n = 0;
        for a in self.approval_list(true).await? {
            if a.gateway == gateway
                && self
                    .approval_decide(&a.id, ApprovalStatus::Abandoned, "", "gateway restarted")
                    .await?
                    == Decided::Done
            {
                n += 1;
            }
        }
        Ok(n)
    }
}
