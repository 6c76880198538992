//! `sluice sessions list | show ID | tail [-f] | replay ID`: read the
//! session records written by [`crate::recorder`] (DESIGN.md §4 "Session
//! records"). Human output is a table or transcript; `--json` prints the
//! records' own JSON lines (or, for `list`, one object per session).
//!
//! Text that agents control (SQL, paths, reasons) is printed with control
//! characters escaped, so a record cannot drive the terminal.
use std::{
    collections::VecDeque,
    fs::{self, File},
    io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::Subcommand;
use serde_json::Value;

use super::CliError;
use crate::config::Config;

/// Every `event` name the recorder writes.
const EVENT_NAMES: [&str; 13] = [
    "open",
    "auth_ok",
    "auth_fail",
    "query",
    "request",
    "response",
    "denied",
    "approval_wait",
    "approved",
    "rejected",
    "masked",
    "error",
    "close",
];
/// How many events `tail` shows before following.
const TAIL_LINES: usize = 20;
/// How often `tail -f` checks the audit log for growth or rotation.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

#[derive(Subcommand, Debug)]
pub enum SessionsCmd {
    /// List sessions: id, agent, service, start, duration, requests or queries, denials
    List {
        /// Only sessions of this agent
        #[arg(long)]
        agent: Option<String>,
        /// Only sessions with this service
        #[arg(long)]
        service: Option<String>,
    },
    /// Print every event of one session
    Show {
        /// Session id (s-…), from `sluice sessions list`
        id: String,
    },
    /// Print the latest events of all sessions from the audit log
    Tail {
        /// Keep printing new events as they are recorded
        #[arg(short, long)]
        follow: bool,
        /// Only events of this service
        #[arg(long)]
        service: Option<String>,
        /// Only events of this agent
        #[arg(long)]
        agent: Option<String>,
        /// Only events of this kind
        #[arg(long, value_parser = EVENT_NAMES)]
        event: Option<String>,
    },
    /// Print a session as a transcript with time offsets
    Replay {
        /// Session id (s-…), from `sluice sessions list`
        id: String,
        /// Replay in real time divided by this factor (e.g. 1, 10); without it, print at once
        #[arg(long, value_parser = parse_speed)]
        speed: Option<f64>,
    },
}

fn parse_speed(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err("must be a number above 0, e.g. 1 or 10".into()),
    }
}

/// Runs a `sluice sessions` subcommand over `cfg.gateway.log_dir`.
///
/// # Errors
/// [`CliError::Usage`] for a malformed session id, [`CliError::Runtime`]
/// for an unknown session or an unreadable log.
pub async fn run(cfg: &Config, cmd: SessionsCmd, json: bool) -> Result<(), CliError> {
    let log_dir = &cfg.gateway.log_dir;
    match cmd {
        SessionsCmd::List { agent, service } => {
            let filter = Filter {
                agent,
                service,
                event: None,
            };
            list(&log_dir.join("sessions"), &filter, json)
        }
        SessionsCmd::Show { id } => show(&read_session(log_dir, &id)?, json),
        SessionsCmd::Tail {
            follow,
            service,
            agent,
            event,
        } => {
            tail(
                &log_dir.join("audit.jsonl"),
                &Filter {
                    agent,
                    service,
                    event,
                },
                follow,
                json,
            )
            .await
        }
        SessionsCmd::Replay { id, speed } => replay(&read_session(log_dir, &id)?, speed).await,
    }
}

/// Prints one line on stdout. A closed stdout (`| head`) ends the command
/// quietly with exit 0.
pub(super) fn print_line(line: &str) -> Result<(), CliError> {
    let mut out = io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(CliError::Exit(0)),
        Err(e) => Err(CliError::Runtime(format!("cannot write to stdout: {e}"))),
    }
}

/// Left-aligned columns separated by two spaces; the last column is not
/// padded.
pub(super) fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> Vec<String> {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let render = |cells: [&str; N]| {
        let mut line = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 < N {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            } else {
                line.push_str(cell);
            }
        }
        line
    };
    std::iter::once(render(header))
        .chain(
            rows.iter()
                .map(|r| render(r.each_ref().map(String::as_str))),
        )
        .collect()
}

/// `--agent`, `--service`, `--event` filters over record lines.
struct Filter {
    agent: Option<String>,
    service: Option<String>,
    event: Option<String>,
}

impl Filter {
    fn matches(&self, v: &Value) -> bool {
        [
            ("agent", &self.agent),
            ("service", &self.service),
            ("event", &self.event),
        ]
        .iter()
        .all(|(key, want)| want.as_deref().is_none_or(|w| v[*key].as_str() == Some(w)))
    }
}

/// One record line: the raw text and its parsed form.
struct Record {
    raw: String,
    value: Value,
}

/// The complete, parseable lines of a JSON Lines file; others are skipped.
fn read_records(path: &Path) -> io::Result<Vec<Record>> {
    let mut records = Vec::new();
    for line in BufReader::new(File::open(path)?).lines() {
        let raw = line?;
        if let Ok(value) = serde_json::from_str(&raw) {
            records.push(Record { raw, value });
        }
    }
    Ok(records)
}

/// The records of session `id`, checking the id is a plain file name.
fn read_session(log_dir: &Path, id: &str) -> Result<Vec<Record>, CliError> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(CliError::Usage(format!("invalid session id {id:?}: ids look like s-019a2b3c4d5e-1f2e3d4c; see `sluice sessions list`")));
    }
    let path = log_dir.join("sessions").join(format!("{id}.jsonl"));
    match read_records(&path) {
        Ok(records) if !records.is_empty() => Ok(records),
        Ok(_) => Err(CliError::Runtime(format!(
            "session {id} has no records yet ({})",
            path.display()
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(CliError::Runtime(format!(
            "no session {id} in {}; see `sluice sessions list`",
            path.parent().unwrap_or(&path).display()
        ))),
        Err(e) => Err(read_error(&path, e)),
    }
}

fn read_error(path: &Path, e: io::Error) -> CliError {
    let hint = if e.kind() == io::ErrorKind::PermissionDenied {
        " (run as root or as a member of the sluice-audit group)"
    } else {
        ""
    };
    CliError::Runtime(format!("cannot read {}: {e}{hint}", path.display()))
}

/// Control characters escaped, so agent-controlled text cannot drive the
/// terminal.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A JSON value as plain text (strings without quotes).
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        v => v.to_string(),
    }
}

/// Fields every line has; not repeated in event summaries.
const COMMON_FIELDS: [&str; 9] = [
    "ts", "session", "agent", "pid", "uid", "service", "event", "seq", "prev",
];

/// What happened, in a few words: `GET /v1/x 200`, the SQL, a reason.
fn summary(v: &Value) -> String {
    let f = |k: &str| text(&v[k]);
    match v["event"].as_str().unwrap_or("") {
        "open" => format!(
            "{} to {} from {}",
            f("protocol"),
            f("original_dst"),
            f("peer")
        ),
        "auth_ok" => format!("token {}", f("token_id")),
        "auth_fail" => f("reason"),
        "query" => f("sql"),
        "request" => format!("{} {} {}", f("method"), f("path"), f("status")),
        "response" => format!("{} {} bytes", f("status"), f("bytes")),
        "denied" => format!("{} (rule {})", f("reason"), f("rule")),
        "approval_wait" => format!("waiting for approval {}", f("approval")),
        "approved" => format!("approval {} by {}", f("approval"), f("by")),
        "rejected" => format!("approval {}: {}", f("approval"), f("reason")),
        "masked" => {
            let fields: Vec<String> = v["fields"]
                .as_array()
                .map(|a| a.iter().map(text).collect())
                .unwrap_or_default();
            format!("{} ({} values)", fields.join(", "), f("count"))
        }
        "error" => f("message"),
        "close" => format!(
            "after {}",
            format_ms(v["duration_ms"].as_u64().unwrap_or(0))
        ),
        _ => v
            .as_object()
            .map(|o| {
                o.iter()
                    .filter(|(k, _)| !COMMON_FIELDS.contains(&k.as_str()))
                    .map(|(k, v)| format!("{k}={}", text(v)))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default(),
    }
}

/// `1.234s`, `3m 4s`: a duration in milliseconds, for people.
fn format_ms(ms: u64) -> String {
    if ms < 60_000 {
        format!("{}.{:03}s", ms / 1000, ms % 1000)
    } else {
        humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
    }
}

/// The record's `ts`, parsed.
fn timestamp(v: &Value) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(v["ts"].as_str()?)
        .ok()
        .map(|t| t.to_utc())
}

/// `ts` shortened to milliseconds, e.g. `2026-11-29T08:50:00.123Z`.
fn short_ts(v: &Value) -> String {
    timestamp(v).map_or_else(
        || text(&v["ts"]),
        |t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
    )
}

/// `2026-11-29T08:50:00.123Z s-… ci-bot payments-api request GET /v1/x 200`.
fn tail_line(v: &Value) -> String {
    let f = |k: &str| text(&v[k]);
    clean(&format!(
        "{} {} {} {} {} {}",
        short_ts(v),
        f("session"),
        f("agent"),
        f("service"),
        f("event"),
        summary(v)
    ))
}

/// `session s-… agent ci-bot (pid 4242, uid 1000) service payments-api`.
fn session_header(v: &Value) -> String {
    let f = |k: &str| text(&v[k]);
    clean(&format!(
        "session {} agent {} (pid {}, uid {}) service {}",
        f("session"),
        f("agent"),
        f("pid"),
        f("uid"),
        f("service")
    ))
}

fn show(records: &[Record], json: bool) -> Result<(), CliError> {
    if json {
        return records.iter().try_for_each(|r| print_line(&r.raw));
    }
    print_line(&session_header(&records[0].value))?;
    records.iter().try_for_each(|r| {
        let v = &r.value;
        print_line(&clean(&format!(
            "{} {} {}",
            short_ts(v),
            text(&v["event"]),
            summary(v)
        )))
    })
}

async fn replay(records: &[Record], speed: Option<f64>) -> Result<(), CliError> {
    print_line(&session_header(&records[0].value))?;
    let start = timestamp(&records[0].value);
    let mut previous = Duration::ZERO;
    for r in records {
        let v = &r.value;
        let offset = match (start, timestamp(v)) {
            (Some(s), Some(t)) => (t - s).to_std().unwrap_or(previous),
            _ => previous,
        };
        if let Some(speed) = speed {
            tokio::time::sleep(offset.saturating_sub(previous).div_f64(speed)).await;
        }
        previous = offset;
        print_line(&clean(&format!(
            "+{:>9.3}s  {:<13} {}",
            offset.as_secs_f64(),
            text(&v["event"]),
            summary(v)
        )))?;
    }
    Ok(())
}

/// Per-session totals for `sessions list`.
struct SessionSummary {
    id: String,
    first: Value,
    duration_ms: Option<u64>,
    requests: u64,
    queries: u64,
    denials: u64,
}

impl SessionSummary {
    fn of(id: String, records: &[Record]) -> Option<SessionSummary> {
        let first = records.first()?.value.clone();
        let mut s = SessionSummary {
            id,
            first,
            duration_ms: None,
            requests: 0,
            queries: 0,
            denials: 0,
        };
        for r in records {
            match r.value["event"].as_str() {
                Some("request") => s.requests += 1,
                Some("query") => s.queries += 1,
                Some("denied" | "rejected") => s.denials += 1,
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
            "requests": self.requests,
            "queries": self.queries,
            "denials": self.denials,
        })
        .to_string()
    }

    fn row(&self) -> [String; 7] {
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
            (self.requests + self.queries).to_string(),
            self.denials.to_string(),
        ]
        .map(|c| clean(&c))
    }
}

fn list(sessions_dir: &Path, filter: &Filter, json: bool) -> Result<(), CliError> {
    let entries = match fs::read_dir(sessions_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(read_error(sessions_dir, e)),
    };
    let mut files: Vec<(String, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            Some((name.strip_suffix(".jsonl")?.to_string(), e.path()))
        })
        .collect();
    files.sort();
    let mut summaries = Vec::new();
    for (id, path) in files {
        let records = read_records(&path).map_err(|e| read_error(&path, e))?;
        if let Some(s) = SessionSummary::of(id, &records).filter(|s| filter.matches(&s.first)) {
            summaries.push(s);
        }
    }
    if json {
        return summaries.iter().try_for_each(|s| print_line(&s.json()));
    }
    let rows: Vec<[String; 7]> = summaries.iter().map(SessionSummary::row).collect();
    table(
        [
            "ID",
            "AGENT",
            "SERVICE",
            "START",
            "DURATION",
            "REQUESTS/QUERIES",
            "DENIALS",
        ],
        &rows,
    )
    .iter()
    .try_for_each(|l| print_line(l))
}

async fn tail(audit: &Path, filter: &Filter, follow: bool, json: bool) -> Result<(), CliError> {
    let render = |r: &Record| {
        if json {
            r.raw.clone()
        } else {
            tail_line(&r.value)
        }
    };
    let mut reader = AuditFollower::new(audit.to_path_buf());
    let mut last = VecDeque::with_capacity(TAIL_LINES);
    reader.poll(&mut |r| {
        if filter.matches(&r.value) {
            if last.len() == TAIL_LINES {
                last.pop_front();
            }
            last.push_back(render(&r));
        }
        Ok(())
    })?;
    last.iter().try_for_each(|l| print_line(l))?;
    if !follow {
        return Ok(());
    }
    loop {
        tokio::time::sleep(FOLLOW_POLL).await;
        reader.poll(&mut |r| {
            if filter.matches(&r.value) {
                print_line(&render(&r))
            } else {
                Ok(())
            }
        })?;
    }
}

/// Reads complete new lines of a growing file, surviving rotation: when the
/// path names a new inode (after the rest of the old file is read) or the
/// file shrank, it starts over from the beginning.
struct AuditFollower {
    path: PathBuf,
    file: Option<(File, u64)>,
    pos: u64,
    partial: Vec<u8>,
}

impl AuditFollower {
    fn new(path: PathBuf) -> Self {
        AuditFollower {
            path,
            file: None,
            pos: 0,
            partial: Vec::new(),
        }
    }

    /// Feeds every new complete, parseable line to `each`.
    fn poll(
        &mut self,
        each: &mut dyn FnMut(Record) -> Result<(), CliError>,
    ) -> Result<(), CliError> {
        let err = |e| read_error(&self.path, e);
        if let Some((file, _)) = &self.file {
            if file.metadata().map_err(err)?.len() < self.pos {
                self.restart();
            }
        }
        self.drain(each)?;
        let on_disk = match fs::metadata(&self.path) {
            Ok(m) => m.ino(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(read_error(&self.path, e)),
        };
        if self.file.as_ref().map(|(_, ino)| *ino) != Some(on_disk) {
            let file = File::open(&self.path).map_err(|e| read_error(&self.path, e))?;
            let ino = file
                .metadata()
                .map_err(|e| read_error(&self.path, e))?
                .ino();
            self.file = Some((file, ino));
            self.restart();
            self.drain(each)?;
        }
        Ok(())
    }

    fn restart(&mut self) {
        self.pos = 0;
        self.partial.clear();
    }

    /// Reads from `pos` to the end of the open file in chunks.
    fn drain(
        &mut self,
        each: &mut dyn FnMut(Record) -> Result<(), CliError>,
    ) -> Result<(), CliError> {
        let Some((file, _)) = &mut self.file else {
            return Ok(());
        };
        let err = |e| read_error(&self.path, e);
        file.seek(SeekFrom::Start(self.pos)).map_err(err)?;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut chunk).map_err(err)?;
            if n == 0 {
                return Ok(());
            }
            self.pos += n as u64;
            self.partial.extend_from_slice(&chunk[..n]);
            let complete = self
                .partial
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            let rest = self.partial.split_off(complete);
            let lines = std::mem::replace(&mut self.partial, rest);
            for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                let Ok(raw) = String::from_utf8(line.to_vec()) else {
                    continue;
                };
                if let Ok(value) = serde_json::from_str(&raw) {
                    each(Record { raw, value })?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{io::Write as _, sync::Arc};

    use serde_json::json;

    use super::*;
    use crate::recorder::{Event, Recorder, SessionMeta};

    fn collect(follower: &mut AuditFollower) -> Vec<String> {
        let mut seen = Vec::new();
        follower
            .poll(&mut |r| {
                seen.push(text(&r.value["n"]));
                Ok(())
            })
            .unwrap();
        seen
    }

    fn append(path: &Path, text: &str) {
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }

    #[test]
    fn follower_reads_whole_lines_only_and_survives_rotation_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut f = AuditFollower::new(path.clone());
        assert!(collect(&mut f).is_empty(), "a missing file is waited for");
        append(&path, "{\"n\":1}\n{\"n\":");
        assert_eq!(collect(&mut f), ["1"]);
        append(&path, "2}\n");
        assert_eq!(collect(&mut f), ["2"]);
        append(&path, "{\"n\":3}\n");
        fs::rename(&path, dir.path().join("audit.jsonl.1")).unwrap();
        append(&path, "{\"n\":4}\n");
        assert_eq!(
            collect(&mut f),
            ["3", "4"],
            "rest of the old file, then the new one from the start"
        );
        fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        assert!(
            collect(&mut f).is_empty(),
            "truncated (copytruncate rotation)"
        );
        append(&path, "{\"n\":5}\n");
        assert_eq!(collect(&mut f), ["5"]);
    }

    #[test]
    fn filter_matches_every_given_field() {
        let line = json!({"agent": "ci-bot", "service": "payments-api", "event": "request"});
        let f = |agent: Option<&str>, event: Option<&str>| Filter {
            agent: agent.map(String::from),
            service: None,
            event: event.map(String::from),
        };
        assert!(f(None, None).matches(&line));
        assert!(f(Some("ci-bot"), Some("request")).matches(&line));
        assert!(!f(Some("ci-bot"), Some("query")).matches(&line));
        assert!(!f(Some("other"), None).matches(&line));
    }

    #[test]
    fn tail_line_has_the_documented_shape_and_escapes_control_characters() {
        let line = json!({"ts": "2026-11-29T08:50:00.123456Z", "session": "s-1", "agent": "ci-bot", "service": "payments-api",
                          "event": "request", "method": "GET", "path": "/v1/x", "status": 200});
        assert_eq!(
            tail_line(&line),
            "2026-11-29T08:50:00.123Z s-1 ci-bot payments-api request GET /v1/x 200"
        );
        let evil =
            json!({"ts": "2026-11-29T08:50:00Z", "event": "query", "sql": "SELECT 1;\n\u{1b}[2J"});
        assert!(!tail_line(&evil).chars().any(char::is_control));
    }

    #[test]
    fn summaries_name_the_event_fields_never_values() {
        assert_eq!(
            summary(&json!({"event": "masked", "fields": ["ssn", "card.number"], "count": 4})),
            "ssn, card.number (4 values)"
        );
        assert_eq!(
            summary(&json!({"event": "close", "duration_ms": 1234})),
            "after 1.234s"
        );
        assert_eq!(
            summary(&json!({"event": "denied", "reason": "DROP is denied", "rule": "DROP"})),
            "DROP is denied (rule DROP)"
        );
        assert_eq!(
            summary(&json!({"event": "future", "ts": "x", "what": "y"})),
            "what=y"
        );
    }

    #[test]
    fn table_aligns_columns() {
        let rows = [
            ["s-1".to_string(), "a".to_string()],
            ["s-22".to_string(), "bb".to_string()],
        ];
        assert_eq!(
            table(["ID", "AGENT"], &rows),
            ["ID    AGENT", "s-1   a", "s-22  bb"]
        );
    }

    #[test]
    fn session_summary_counts_operations_and_denials_from_real_records() {
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
        s.record(Event::Query {
            sql: "SELECT 1".into(),
        })
        .unwrap();
        s.record(Event::Query {
            sql: "DROP TABLE t".into(),
        })
        .unwrap();
        s.record(Event::Denied {
            reason: "DROP is denied".into(),
            rule: "DROP".into(),
        })
        .unwrap();
        s.record(Event::Close {
            duration_ms: 61_000,
        })
        .unwrap();
        let records = read_session(dir.path(), s.id()).unwrap();
        let summary = SessionSummary::of(s.id().to_string(), &records).unwrap();
        let row = summary.row();
        assert_eq!(
            (
                row[1].as_str(),
                row[2].as_str(),
                row[4].as_str(),
                row[5].as_str(),
                row[6].as_str()
            ),
            ("ci-bot", "billing-db", "1m 1s", "2", "1")
        );
        assert!(matches!(
            read_session(dir.path(), "../etc/passwd"),
            Err(CliError::Usage(_))
        ));
        assert!(matches!(
            read_session(dir.path(), "s-0-0"),
            Err(CliError::Runtime(_))
        ));
    }
}
