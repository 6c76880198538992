//! Statement policy for a relayed session: what a `Query`, a `Parse` or a
//! `Bind` of a prepared statement gets, with the session's prepared
//! statements ([`PreparedStatements`]) so that an `EXECUTE` is judged as
//! what it executes, every time it runs.

use std::sync::Arc;

use bytes::Bytes;

use super::session::{error_bytes, Session};
use super::sql::{PreparedStatements, SessionVerdict};
use super::tracker::Statement;
use crate::policy::{statement::SqlPolicy, Decision};

/// What policy says about one statement.
pub(super) enum Judgement {
    Allow,
    /// Refused: the ErrorResponse to send (the denial is recorded).
    Deny(Bytes),
    /// Held until a JIT approval decides, under this rule.
    Hold(String),
}

/// A judged text.
pub(super) struct Judged {
    pub judgement: Judgement,
    /// The text to record and to show in an approval: the SQL, then what
    /// each of its `EXECUTE`s runs.
    pub text: String,
}

/// Judges `sql` (a Query; or a Parse, then `name` is its statement name),
/// recording a denial after `record` (the statement itself) ran.
pub(super) fn judge(
    s: &Session,
    sql: &str,
    name: Option<&str>,
    prepared: &mut PreparedStatements,
    record: impl FnOnce(&str),
) -> Judged {
    let SessionVerdict { verdict, executed } = with_policy(s, |policy| {
        s.pg.sql.decide_in_session(sql, name, policy, prepared)
    });
    let mut text = sql.to_string();
    for (name, prepared) in &executed {
        text.push_str(&format!("\n-- {name} was prepared as: {}", prepared.text));
    }
    record(&text);
    Judged {
        judgement: judgement(s, verdict),
        text,
    }
}

/// The statement a `Bind` of `name` runs: a Parse's own for the unnamed
/// statement, else every text the name may run, judged now. Refused
/// (`Err`, the ErrorResponse) when policy denies it or the name is unknown.
pub(super) fn bound(
    s: &Session,
    name: &str,
    parsed: Option<&Arc<Statement>>,
    prepared: &PreparedStatements,
) -> Result<Arc<Statement>, Bytes> {
    if name.is_empty() {
        return Ok(parsed.cloned().unwrap_or_default());
    }
    let texts = prepared.get(name).unwrap_or_default();
    if let (Some(st), [one]) = (parsed, texts) {
        if one.text == st.sql {
            // Judged when parsed, and its only text.
            return Ok(st.clone());
        }
    }
    let decision = with_policy(s, |policy| s.pg.sql.decide_prepared(name, policy, prepared));
    let hold = match judgement(s, decision) {
        Judgement::Deny(err) => return Err(err),
        Judgement::Hold(rule) => Some(rule),
        Judgement::Allow => None,
    };
    let sql = texts
        .iter()
        .map(|t| t.text.as_str())
        .collect::<Vec<_>>()
        .join("\n-- or, re-prepared:\n");
    // Columns described for one text may not be those of another.
    Ok(Arc::new(Statement {
        sql,
        hold,
        ..Default::default()
    }))
}

/// Runs `f` with the service's SQL rules now (a reload's new rules apply
/// to the next statement) and the session's masks.
fn with_policy<T>(s: &Session, f: impl FnOnce(SqlPolicy<'_>) -> T) -> T {
    let fixed = s.guard.service();
    let mask = &fixed.mask;
    s.guard.with_current(|now| {
        // The guard keeps the session's own copy when a reload changed the
        // service's protocol, so the first is always there.
        match now.sql().or(fixed.sql()) {
            Some(rules) => f(rules.policy(mask)),
            None => f(SqlPolicy {
                deny: &[],
                approve: &[],
                mask,
            }),
        }
    })
}

/// The judgement for `decision`, recording a denial.
fn judgement(s: &Session, decision: Decision) -> Judgement {
    match decision {
        Decision::Allow | Decision::Mask => Judgement::Allow,
        Decision::Hold { rule } => Judgement::Hold(rule),
        Decision::Deny { rule, reason } => {
            let refused = s.guard.deny(rule, reason);
            Judgement::Deny(error_bytes(
                "42501",
                &format!(
                    "permission denied by Sluice policy for service {}: {}",
                    s.guard.service().name,
                    refused.message
                ),
            ))
        }
    }
}
