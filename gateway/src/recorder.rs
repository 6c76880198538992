//! Session records (DESIGN.md §4 "Session records"): JSON Lines written to
//! `log_dir/sessions/<session_id>.jsonl` and, line for line, to
//! `log_dir/audit.jsonl`.
//!
//! Every line carries `ts` (RFC 3339 UTC, microseconds), `session`, `agent`,
//! `pid`, `uid`, `service`, `event` and the event's fields, plus a hash
//! chain: `seq` (0, 1, 2… within the session) and `prev`, the lowercase hex
//! SHA-256 of the previous line of the session file without its newline
//! (`""` for the first line).
//!
//! Files are opened `O_APPEND`, created 0640 (directories 0750) and given
//! the group `sluice-audit` when that group exists. Each line goes out in a
//! single `write(2)`, unbuffered, so concurrent sessions interleave whole
//! lines in `audit.jsonl` and an acknowledged line is in the kernel. If
//! `audit.jsonl` is rotated away it is reopened.
//!
//! Callers pass only metadata: never secret values, tokens or masked data.
use std::{
    fs::{self, DirBuilder, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use rand::{rngs::OsRng, RngCore};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The group that may read session records.
pub const AUDIT_GROUP: &str = "sluice-audit";
const FILE_MODE: u32 = 0o640;
const DIR_MODE: u32 = 0o750;

/// One thing that happened in a session; serialised as `"event": "<name>"`
/// plus the variant's fields.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A redirected connection was accepted. `original_dst` and `peer` are
    /// `ip:port`.
    Open {
        protocol: String,
        original_dst: String,
        peer: String,
    },
    /// The agent's token was accepted.
    AuthOk { token_id: String },
    /// The agent's token was refused; `reason` never contains the token.
    AuthFail { reason: String },
    /// A PostgreSQL statement.
    Query { sql: String },
    /// An HTTP request and the status returned to the agent.
    Request {
        method: String,
        path: String,
        status: u16,
    },
    /// An upstream response: status and body bytes.
    Response { status: u16, bytes: u64 },
    /// Refused by policy `rule`.
    Denied { reason: String, rule: String },
    /// Held for a JIT approval.
    ApprovalWait { approval: String },
    /// Released by `by`.
    Approved { approval: String, by: String },
    /// Approval denied or timed out.
    Rejected { approval: String, reason: String },
    /// Columns or JSON fields masked, and how many values; never the values.
    Masked { fields: Vec<String>, count: u64 },
    /// A failure worth recording.
    Error { message: String },
    /// The session ended after `duration_ms` milliseconds.
    Close { duration_ms: u64 },
}

/// Who a session belongs to: the agent identity from interception and the
/// service it reached.
#[derive(Debug, Clone)]
pub struct SessionMeta {
    pub agent: String,
    pub pid: u32,
    pub uid: u32,
    pub service: String,
}

/// The daemon's record writer; one per daemon, shared by all sessions.
#[derive(Debug)]
pub struct Recorder {
    sessions_dir: PathBuf,
    audit_path: PathBuf,
    audit: Mutex<File>,
    group: Option<u32>,
}

impl Recorder {
    /// Creates `log_dir` and `log_dir/sessions` (0750) if needed and opens
    /// `log_dir/audit.jsonl` for appending.
    ///
    /// # Errors
    /// I/O errors creating the directories or opening the audit log.
    pub fn open(log_dir: &Path) -> io::Result<Arc<Recorder>> {
        let group = nix::unistd::Group::from_name(AUDIT_GROUP)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw());
        let sessions_dir = log_dir.join("sessions");
        for dir in [log_dir, &sessions_dir] {
            if !dir.is_dir() {
                DirBuilder::new()
                    .recursive(true)
                    .mode(DIR_MODE)
                    .create(dir)
                    .map_err(|e| annotate(e, "create", dir))?;
                fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
                    .map_err(|e| annotate(e, "chmod", dir))?;
                set_group(&File::open(dir)?, dir, group);
            }
        }
        let audit_path = log_dir.join("audit.jsonl");
        let audit = open_append(&audit_path, group, false)?;
        Ok(Arc::new(Recorder {
            sessions_dir,
            audit_path,
            audit: Mutex::new(audit),
            group,
        }))
    }

    /// Starts a session: creates `sessions/<id>.jsonl` with a fresh id.
    ///
    /// # Errors
    /// I/O errors creating the session file.
    pub fn start(self: &Arc<Self>, meta: SessionMeta) -> io::Result<SessionRecord> {
        let id = new_session_id();
        let path = self.sessions_dir.join(format!("{id}.jsonl"));
        let file = open_append(&path, self.group, true)?;
        Ok(SessionRecord {
            recorder: Arc::clone(self),
            id,
            meta,
            chain: Mutex::new(Chain {
                file,
                path,
                seq: 0,
                prev: String::new(),
            }),
        })
    }

    /// Appends `line` (with its newline) to `audit.jsonl`, reopening it if
    /// it was rotated away.
    fn append_audit(&self, line: &[u8]) -> io::Result<()> {
        let mut audit = self.audit.lock().unwrap_or_else(|p| p.into_inner());
        let rotated = match fs::metadata(&self.audit_path) {
            Ok(on_disk) => {
                let open = audit.metadata()?;
                (on_disk.dev(), on_disk.ino()) != (open.dev(), open.ino())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => true,
            Err(e) => return Err(e),
        };
        if rotated {
            *audit = open_append(&self.audit_path, self.group, false)?;
        }
        write_line(&audit, &self.audit_path, line)
    }
}

/// `s-` + 12 hex digits of unix milliseconds + `-` + 8 random hex digits:
/// unique, and sorts by start time.
fn new_session_id() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("s-{ms:012x}-{:08x}", OsRng.next_u32())
}

/// The hash-chain state of one session file.
#[derive(Debug)]
struct Chain {
    file: File,
    path: PathBuf,
    seq: u64,
    prev: String,
}

/// One session's record. `Send + Sync`; lines are serialised by a mutex.
#[derive(Debug)]
pub struct SessionRecord {
    recorder: Arc<Recorder>,
    id: String,
    meta: SessionMeta,
    chain: Mutex<Chain>,
}

#[derive(Serialize)]
struct Line<'a> {
    ts: String,
    session: &'a str,
    agent: &'a str,
    pid: u32,
    uid: u32,
    service: &'a str,
    #[serde(flatten)]
    event: &'a Event,
    seq: u64,
    prev: &'a str,
}

impl SessionRecord {
    /// The session id, e.g. `s-019a2b3c4d5e-1f2e3d4c`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Appends `event` to the session file, then to `audit.jsonl`.
    ///
    /// # Errors
    /// I/O errors, including a short write; the chain does not advance when
    /// the session file write fails.
    pub fn record(&self, event: Event) -> io::Result<()> {
        let mut chain = self.chain.lock().unwrap_or_else(|p| p.into_inner());
        let line = Line {
            ts: chrono::Utc::now()
                .format("%Y-%m-%dT%H:%M:%S%.6fZ")
                .to_string(),
            session: &self.id,
            agent: &self.meta.agent,
            pid: self.meta.pid,
            uid: self.meta.uid,
            service: &self.meta.service,
            event: &event,
            seq: chain.seq,
            prev: &chain.prev,
        };
        let mut bytes = serde_json::to_vec(&line).map_err(io::Error::other)?;
        let hash = hex::encode(Sha256::digest(&bytes));
        bytes.push(b'\n');
        write_line(&chain.file, &chain.path, &bytes)?;
        chain.seq += 1;
        chain.prev = hash;
        drop(chain);
        self.recorder.append_audit(&bytes)
    }
}

/// Opens `path` for appending, creating it 0640 with the audit group.
fn open_append(path: &Path, group: Option<u32>, create_new: bool) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.append(true).mode(FILE_MODE);
    if create_new {
        opts.create_new(true);
    } else {
        opts.create(true);
    }
    let file = opts.open(path).map_err(|e| annotate(e, "open", path))?;
    if file.metadata()?.len() == 0 {
        // New file: fix the mode against the umask and set the group.
        file.set_permissions(fs::Permissions::from_mode(FILE_MODE))
            .map_err(|e| annotate(e, "chmod", path))?;
        set_group(&file, path, group);
    }
    Ok(file)
}

/// Gives `file` the audit group; without the privilege to do so the file
/// keeps the creator's group and a warning is logged.
fn set_group(file: &File, path: &Path, group: Option<u32>) {
    if let Some(gid) = group {
        if let Err(e) = std::os::unix::fs::fchown(file, None, Some(gid)) {
            tracing::warn!(path = %path.display(), error = %e, "cannot give the file the {AUDIT_GROUP} group");
        }
    }
}

/// One `write(2)` of the whole line; a short write is an error.
fn write_line(mut file: &File, path: &Path, line: &[u8]) -> io::Result<()> {
    let n = file
        .write(line)
        .map_err(|e| annotate(e, "append to", path))?;
    if n != line.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!(
                "short write to {} ({n} of {} bytes); is the disk full?",
                path.display(),
                line.len()
            ),
        ));
    }
    Ok(())
}

fn annotate(e: io::Error, action: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("cannot {action} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn meta(agent: &str) -> SessionMeta {
        SessionMeta {
            agent: agent.into(),
            pid: 4242,
            uid: 1000,
            service: "payments-api".into(),
        }
    }

    fn lines(path: &Path) -> Vec<String> {
        fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }

    #[test]
    fn files_and_directories_get_restricted_modes() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let rec = Recorder::open(&log).unwrap();
        let s = rec.start(meta("ci-bot")).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&log), 0o750);
        assert_eq!(mode(&log.join("sessions")), 0o750);
        assert_eq!(mode(&log.join("audit.jsonl")), 0o640);
        assert_eq!(
            mode(&log.join("sessions").join(format!("{}.jsonl", s.id()))),
            0o640
        );
    }

    #[test]
    fn every_line_carries_the_contract_fields() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Recorder::open(dir.path()).unwrap();
        let s = rec.start(meta("ci-bot")).unwrap();
        s.record(Event::Request {
            method: "GET".into(),
            path: "/v1/x".into(),
            status: 200,
        })
        .unwrap();
        s.record(Event::Masked {
            fields: vec!["ssn".into()],
            count: 3,
        })
        .unwrap();
        let line: Value = serde_json::from_str(&lines(&dir.path().join("audit.jsonl"))[0]).unwrap();
        assert_eq!(line["session"], s.id());
        assert_eq!(line["agent"], "ci-bot");
        assert_eq!(line["pid"], 4242);
        assert_eq!(line["uid"], 1000);
        assert_eq!(line["service"], "payments-api");
        assert_eq!(line["event"], "request");
        assert_eq!(
            (
                line["method"].as_str(),
                line["path"].as_str(),
                line["status"].as_u64()
            ),
            (Some("GET"), Some("/v1/x"), Some(200))
        );
        let ts = line["ts"].as_str().unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok());
        assert_eq!(ts.len(), "2026-11-29T08:50:00.123456Z".len(), "{ts}");
        let masked: Value =
            serde_json::from_str(&lines(&dir.path().join("audit.jsonl"))[1]).unwrap();
        assert_eq!(
            (masked["event"].as_str(), masked["count"].as_u64()),
            (Some("masked"), Some(3))
        );
    }

    #[test]
    fn session_file_is_hash_chained() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Recorder::open(dir.path()).unwrap();
        let s = rec.start(meta("ci-bot")).unwrap();
        s.record(Event::Query {
            sql: "SELECT 1".into(),
        })
        .unwrap();
        s.record(Event::Close { duration_ms: 5 }).unwrap();
        let lines = lines(
            &dir.path()
                .join("sessions")
                .join(format!("{}.jsonl", s.id())),
        );
        let first: Value = serde_json::from_str(&lines[0]).unwrap();
        let second: Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(
            (first["seq"].as_u64(), first["prev"].as_str()),
            (Some(0), Some(""))
        );
        assert_eq!(second["seq"], 1);
        assert_eq!(
            second["prev"],
            hex::encode(Sha256::digest(lines[0].as_bytes()))
        );
    }

    #[test]
    fn session_ids_sort_by_start_and_are_unique() {
        let a = new_session_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_session_id();
        assert!(a < b, "{a} {b}");
        assert_eq!(a.len(), "s-".len() + 12 + 1 + 8);
    }

    #[test]
    fn concurrent_sessions_interleave_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Recorder::open(dir.path()).unwrap();
        std::thread::scope(|scope| {
            for t in 0..4 {
                let rec = &rec;
                scope.spawn(move || {
                    let s = rec.start(meta(&format!("agent-{t}"))).unwrap();
                    for i in 0..200 {
                        s.record(Event::Query {
                            sql: format!("SELECT {i} /* {} */", "x".repeat(300)),
                        })
                        .unwrap();
                    }
                });
            }
        });
        let audit = lines(&dir.path().join("audit.jsonl"));
        assert_eq!(audit.len(), 800);
        let mut per_session = std::collections::HashMap::<String, u64>::new();
        for line in &audit {
            let v: Value = serde_json::from_str(line).expect("whole JSON line");
            let next = per_session
                .entry(v["session"].as_str().unwrap().to_string())
                .or_default();
            assert_eq!(v["seq"], *next, "per-session order is kept");
            *next += 1;
        }
        assert_eq!(per_session.len(), 4);
    }

    #[test]
    fn rotated_audit_log_is_recreated() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Recorder::open(dir.path()).unwrap();
        let s = rec.start(meta("ci-bot")).unwrap();
        s.record(Event::Error {
            message: "one".into(),
        })
        .unwrap();
        fs::rename(
            dir.path().join("audit.jsonl"),
            dir.path().join("audit.jsonl.1"),
        )
        .unwrap();
        s.record(Event::Error {
            message: "two".into(),
        })
        .unwrap();
        assert_eq!(lines(&dir.path().join("audit.jsonl")).len(), 1);
        assert_eq!(lines(&dir.path().join("audit.jsonl.1")).len(), 1);
    }

    #[test]
    fn recorder_types_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Recorder>();
        assert_send_sync::<SessionRecord>();
    }
}
