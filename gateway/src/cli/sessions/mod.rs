//! `sluice sessions list | show ID | tail [-f] | replay ID | verify ID|--all`:
//! read the session records written by [`crate::recorder`] (DESIGN.md §4
//! "Session records"). Human output is a table or transcript; `--json`
//! prints the records' own JSON lines (for `list` and `verify`, one object
//! per session).
//!
//! Text that agents control (SQL, paths, reasons) is printed with control
//! characters escaped, so a record cannot drive the terminal.
use std::{
    fs::File,
    io::{self, BufRead, BufReader, Write},
    path::{Path, PathBuf},
};

use clap::Subcommand;
use serde_json::Value;

use super::CliError;
use crate::{config::Config, recorder::EVENT_NAMES};

mod follow;
mod list;
mod render;
mod replay;
mod verify;

pub(crate) use list::{parse_since, summaries};
pub(crate) use render::{format_ms, transcript_text};

#[derive(Subcommand, Debug)]
pub enum SessionsCmd {
    /// List sessions: id, agent, service, start, duration, queries, requests, denials, approvals
    List {
        /// Only sessions of this agent
        #[arg(long)]
        agent: Option<String>,
        /// Only sessions with this service
        #[arg(long)]
        service: Option<String>,
        /// Only sessions started in this last period (e.g. 30m, 1h, 2d) or since an RFC 3339 time
        #[arg(long, value_parser = list::parse_since)]
        since: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// Print every event of one session
    Show {
        /// Session id (s-…), from `sluice sessions list`
        id: String,
    },
    /// Print the latest events of all sessions from the audit log; with -f, follow it (across rotations)
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
    /// Replay a session in real time: statements, requests and commands with their outcomes, and terminal output (its .cast file)
    Replay {
        /// Session id (s-…), from `sluice sessions list`
        id: String,
        /// Replay this many times faster than real time (e.g. 10)
        #[arg(long, value_parser = parse_speed, default_value_t = 1.0, conflicts_with = "no_wait")]
        speed: f64,
        /// Print everything at once, without waiting (for scripts)
        #[arg(long)]
        no_wait: bool,
        /// Write terminal output as recorded, escape sequences included (only for recordings you trust)
        #[arg(long)]
        raw: bool,
    },
    /// Check session files' hash chains; exit 1 if any was tampered with
    Verify {
        /// Session id (s-…) to check
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Check every session file
        #[arg(long)]
        all: bool,
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
/// [`CliError::Usage`] for a malformed session id; [`CliError::Runtime`]
/// for an unknown session or an unreadable log; `verify` ends with
/// [`CliError::Exit`]`(1)` when a chain is broken.
pub async fn run(cfg: &Config, cmd: SessionsCmd, json: bool) -> Result<(), CliError> {
    let log_dir = &cfg.gateway.log_dir;
    match cmd {
        SessionsCmd::List {
            agent,
            service,
            since,
        } => {
            let filter = Filter {
                agent,
                service,
                event: None,
            };
            list::list(&log_dir.join("sessions"), &filter, since, json)
        }
        SessionsCmd::Show { id } => render::show(&read_session(log_dir, &id)?, json),
        SessionsCmd::Tail {
            follow,
            service,
            agent,
            event,
        } => {
            let filter = Filter {
                agent,
                service,
                event,
            };
            follow::tail(log_dir, &filter, follow, json).await
        }
        SessionsCmd::Replay {
            id,
            speed,
            no_wait,
            raw,
        } => {
            let records = read_session(log_dir, &id)?;
            let cast = session_path(log_dir, &id)?.with_extension("cast");
            let pace = if no_wait {
                replay::Pace::NoWait
            } else {
                replay::Pace::Speed(speed)
            };
            let output = if raw {
                replay::Output::Raw
            } else {
                replay::Output::Escaped
            };
            replay::replay(&records, &cast, pace, output).await
        }
        SessionsCmd::Verify { id, all } => {
            let sessions_dir = log_dir.join("sessions");
            match id {
                Some(id) if !all => verify::one(&session_path(log_dir, &id)?, json),
                _ => verify::all(&sessions_dir, json),
            }
        }
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
#[derive(Debug, Default)]
pub(crate) struct Filter {
    pub(crate) agent: Option<String>,
    pub(crate) service: Option<String>,
    pub(crate) event: Option<String>,
}

impl Filter {
    /// The line's agent and service match (the event is not looked at).
    fn matches_owner(&self, v: &Value) -> bool {
        [("agent", &self.agent), ("service", &self.service)]
            .iter()
            .all(|(key, want)| want.as_deref().is_none_or(|w| v[*key].as_str() == Some(w)))
    }

    fn matches(&self, v: &Value) -> bool {
        self.matches_owner(v)
            && self
                .event
                .as_deref()
                .is_none_or(|w| v["event"].as_str() == Some(w))
    }
}

/// One record line: the raw text and its parsed form.
pub(crate) struct Record {
    raw: String,
    pub(crate) value: Value,
}

/// The complete, parseable lines of a JSON Lines file; others are skipped
/// (`verify` reports them).
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

/// `log_dir/sessions/<id>.jsonl`, checking the id is a plain file name.
pub(crate) fn session_path(log_dir: &Path, id: &str) -> Result<PathBuf, CliError> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(CliError::Usage(format!("invalid session id {id:?}: ids look like s-019a2b3c4d5e-1f2e3d4c; see `sluice sessions list`")));
    }
    Ok(log_dir.join("sessions").join(format!("{id}.jsonl")))
}

/// The records of session `id`.
pub(crate) fn read_session(log_dir: &Path, id: &str) -> Result<Vec<Record>, CliError> {
    let path = session_path(log_dir, id)?;
    match read_records(&path) {
        Ok(records) if !records.is_empty() => Ok(records),
        Ok(_) => Err(CliError::Runtime(format!(
            "session {id} has no records yet ({})",
            path.display()
        ))),
        Err(e) => Err(session_error(id, &path, e)),
    }
}

/// A missing session names the command that lists them; other errors as
/// [`read_error`].
fn session_error(id: &str, path: &Path, e: io::Error) -> CliError {
    if e.kind() == io::ErrorKind::NotFound {
        CliError::Runtime(format!(
            "no session {id} in {}; see `sluice sessions list`",
            path.parent().unwrap_or(path).display()
        ))
    } else {
        read_error(path, e)
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
pub(crate) fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        v => v.to_string(),
    }
}

/// The record's `ts`, parsed.
pub(crate) fn timestamp(v: &Value) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(v["ts"].as_str()?)
        .ok()
        .map(|t| t.to_utc())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

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
    fn session_ids_must_be_plain_names() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            read_session(dir.path(), "../etc/passwd"),
            Err(CliError::Usage(_))
        ));
        assert!(matches!(
            read_session(dir.path(), "s-0-0"),
            Err(CliError::Runtime(_))
        ));
    }

    #[test]
    fn verify_needs_an_id_or_all() {
        use clap::Parser;
        let parse = |args: &[&str]| crate::cli::Cli::try_parse_from(args);
        assert!(parse(&["sluice", "sessions", "verify"]).is_err());
        assert!(parse(&["sluice", "sessions", "verify", "s-1", "--all"]).is_err());
        assert!(parse(&["sluice", "sessions", "verify", "--all"]).is_ok());
        assert!(parse(&["sluice", "sessions", "list", "--since", "1h"]).is_ok());
        assert!(parse(&["sluice", "sessions", "list", "--since", "yesterday"]).is_err());
        assert!(parse(&["sluice", "sessions", "replay", "s-1", "--speed", "10"]).is_ok());
        assert!(parse(&["sluice", "sessions", "replay", "s-1", "--no-wait"]).is_ok());
        assert!(parse(&["sluice", "sessions", "replay", "s-1", "--speed", "0"]).is_err());
        assert!(parse(&[
            "sluice",
            "sessions",
            "replay",
            "s-1",
            "--speed",
            "2",
            "--no-wait"
        ])
        .is_err());
    }
}
