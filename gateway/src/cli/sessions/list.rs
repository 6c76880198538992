//! `sluice sessions list [--since 1h] [--agent A] [--service S]`: one row
//! per session file, oldest first.
//!
//! Columns: `ID AGENT SERVICE START DURATION QUERIES REQUESTS DENIALS
//! APPROVALS`. `DURATION` is `open` until the `close` line; `DENIALS`
//! counts `denied` and `rejected` events, `APPROVALS` the `approved` ones.
//! With `--json`, one object per session: `id`, `agent`, `service`,
//! `start` (RFC 3339), `duration_ms` (null while open), `queries`,
//! `requests`, `denials`, `approval_waits`, `approvals`, `rejections`.
use std::{fs, io, path::Path};

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{
    print_line, read_error, read_records, render::format_ms, table, text, timestamp, CliError,
    Filter, Record,
};

/// `--since`: a period back from now (`30m`, `1h`, `2d`) or an RFC 3339
/// time.
pub(crate) fn parse_since(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.to_utc());
    }
    let period = humantime::parse_duration(s).map_err(|_| {
        format!("expected a period like 30m, 1h or 2d, or an RFC 3339 time; got {s:?}")
    })?;
    chrono::Duration::from_std(period)
        .ok()
        .and_then(|p| Utc::now().checked_sub_signed(p))
        .ok_or_else(|| format!("{s:?} reaches back too far"))
}

/// The start time a session id encodes (`s-<12 hex digits of unix ms>-…`).
fn id_start(id: &str) -> Option<DateTime<Utc>> {
    let hex = id.strip_prefix("s-")?.split('-').next()?;
    let ms = i64::from_str_radix(hex, 16).ok()?;
    DateTime::from_timestamp_millis(ms)
}

/// Per-session totals.
pub(crate) struct SessionSummary {
    pub(crate) id: String,
    /// The session's first line (`ts`, `agent`, `service`, …).
    pub(crate) first: Value,
    /// `None` while the session is open.
    pub(crate) duration_ms: Option<u64>,
    pub(crate) queries: u64,
    pub(crate) requests: u64,
    pub(crate) denials: u64,
    pub(crate) approval_waits: u64,
    pub(crate) approvals: u64,
    pub(crate) rejections: u64,
}

impl SessionSummary {
    pub(super) fn of(id: String, records: &[Record]) -> Option<SessionSummary> {
        let first = records.first()?.value.clone();
        let mut s = SessionSummary {
            id,
            first,
            duration_ms: None,
            queries: 0,
            requests: 0,
            denials: 0,
            approval_waits: 0,
            approvals: 0,
            rejections: 0,
        };
        for r in records {
            match r.value["event"].as_str() {
                Some("query") => s.queries += 1,
                Some("request") => s.requests += 1,
                Some("denied") => s.denials += 1,
                Some("approval_wait") => s.approval_waits += 1,
                Some("approved") => s.approvals += 1,
                Some("rejected") => s.rejections += 1,
                Some("close") => s.duration_ms = r.value["duration_ms"].as_u64(),
                _ => {}
            }
        }
        Some(s)
    }

    fn json(&self) -> String {
        serde_json::json!({
            "id": self.id,
            "agent": self.first["agent"],
            "service": self.first["service"],
            "start": self.first["ts"],
            "duration_ms": self.duration_ms,
            "queries": self.queries,
            "requests": self.requests,
            "denials": self.denials + self.rejections,
            "approval_waits": self.approval_waits,
            "approvals": self.approvals,
            "rejections": self.rejections,
        })
        .to_string()
    }

    pub(super) fn row(&self) -> [String; 9] {
        [
            self.id.clone(),
            text(&self.first["agent"]),
            text(&self.first["service"]),
            timestamp(&self.first).map_or_else(
                || text(&self.first["ts"]),
                |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            ),
            self.duration_ms
                .map_or_else(|| "open".to_string(), format_ms),
            self.queries.to_string(),
            self.requests.to_string(),
            (self.denials + self.rejections).to_string(),
            self.approvals.to_string(),
        ]
        .map(|c| super::clean(&c))
    }
}

/// The sessions in `sessions_dir` whose first line matches `filter`'s
/// agent and service, that recorded an event of `filter`'s kind (when
/// given), and that started at or after `since`; oldest first.
///
/// # Errors
/// [`CliError::Runtime`] for an unreadable directory or file.
pub(crate) fn summaries(
    sessions_dir: &Path,
    filter: &Filter,
    since: Option<DateTime<Utc>>,
) -> Result<Vec<SessionSummary>, CliError> {
    let entries = match fs::read_dir(sessions_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(read_error(sessions_dir, e)),
    };
    let mut files: Vec<(String, std::path::PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            Some((name.strip_suffix(".jsonl")?.to_string(), e.path()))
        })
        // The id tells the start: older sessions are not even read.
        .filter(|(id, _)| since.is_none_or(|s| id_start(id).is_none_or(|t| t >= s)))
        .collect();
    files.sort();
    let mut summaries = Vec::new();
    for (id, path) in files {
        let records = match read_records(&path) {
            Ok(r) => r,
            // Deleted by retention since the directory was read.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(read_error(&path, e)),
        };
        let has_event = filter.event.as_deref().is_none_or(|want| {
            records
                .iter()
                .any(|r| r.value["event"].as_str() == Some(want))
        });
        let Some(s) = SessionSummary::of(id, &records) else {
            continue;
        };
        let started_in = since.is_none_or(|since| timestamp(&s.first).is_none_or(|t| t >= since));
        if filter.matches_owner(&s.first) && has_event && started_in {
            summaries.push(s);
        }
    }
    Ok(summaries)
}

/// Prints the sessions in `sessions_dir` that match `filter` and started at
/// or after `since`.
pub(super) fn list(
    sessions_dir: &Path,
    filter: &Filter,
    since: Option<DateTime<Utc>>,
    json: bool,
) -> Result<(), CliError> {
    let summaries = summaries(sessions_dir, filter, since)?;
    if json {
        return summaries.iter().try_for_each(|s| print_line(&s.json()));
    }
    let rows: Vec<[String; 9]> = summaries.iter().map(SessionSummary::row).collect();
    table(
        [
            "ID",
            "AGENT",
            "SERVICE",
            "START",
            "DURATION",
            "QUERIES",
            "REQUESTS",
            "DENIALS",
            "APPROVALS",
        ],
        &rows,
    )
    .iter()
    .try_for_each(|l| print_line(l))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::recorder::{Event, Recorder, SessionMeta};

    #[test]
    fn since_takes_a_period_or_a_time() {
        let hour_ago = parse_since("1h").unwrap();
        let expected = Utc::now() - chrono::Duration::hours(1);
        assert!((hour_ago - expected).num_seconds().abs() <= 1);
        assert_eq!(
            parse_since("2026-11-29T08:50:00Z").unwrap().to_rfc3339(),
            "2026-11-29T08:50:00+00:00"
        );
        assert!(parse_since("soon").is_err());
        assert_eq!(
            id_start("s-019a2b3c4d5e-1f2e3d4c")
                .unwrap()
                .timestamp_millis(),
            0x019a_2b3c_4d5e
        );
    }

    #[tokio::test]
    async fn session_summary_counts_operations_denials_and_approvals_from_real_records() {
        let dir = tempfile::tempdir().unwrap();
        let rec: Arc<Recorder> = Recorder::open(dir.path()).unwrap();
        let s = rec
            .start(SessionMeta {
                agent: "ci-bot".into(),
                pid: 1,
                uid: 2,
                service: "billing-db".into(),
            })
            .unwrap();
        for event in [
            Event::Query {
                sql: "SELECT 1".into(),
            },
            Event::Query {
                sql: "DROP TABLE t".into(),
            },
            Event::Denied {
                reason: "DROP is denied".into(),
                rule: "DROP".into(),
            },
            Event::Query {
                sql: "DELETE FROM t WHERE id = 1".into(),
            },
            Event::ApprovalWait {
                approval: "ap-1".into(),
                summary: "DELETE FROM t WHERE id = 1".into(),
            },
            Event::Approved {
                approval: "ap-1".into(),
                by: "root".into(),
            },
            Event::Close {
                duration_ms: 61_000,
            },
        ] {
            s.record(event).unwrap();
        }
        s.flush().await.unwrap();
        let records = super::super::read_session(dir.path(), s.id()).unwrap();
        let row = SessionSummary::of(s.id().to_string(), &records)
            .unwrap()
            .row();
        assert_eq!(
            row[1..].iter().map(String::as_str).collect::<Vec<_>>(),
            ["ci-bot", "billing-db", &row[3], "1m 1s", "3", "0", "1", "1"]
        );
    }
}
