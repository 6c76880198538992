//! Session records (DESIGN.md §4 "Session records"): JSON Lines written to
//! `log_dir/sessions/<session_id>.jsonl` and, line for line, to
//! `log_dir/audit.jsonl`.
//!
//! Every line carries `ts` (RFC 3339 UTC, microseconds), `session`, `agent`,
//! `pid`, `uid`, `service`, `event` and the event's fields, plus the hash
//! chain of [`chain`]: `seq` (0, 1, 2… within the session) and `prev`, the
//! lowercase hex SHA-256 of the previous line of the session file without
//! its newline (`""` for the first line). The `close` line also carries the
//! chain head, `lines` and `head`; [`chain`] defines them and verifies
//! files (`sluice sessions verify`).
//!
//! Files:
//! - created 0640 (directories 0750), with the group `sluice-audit` when
//!   that group exists, and opened `O_APPEND`;
//! - lines are queued by the handlers and written in batches by group
//!   commit on a writer thread ([`writer`]): whole lines only, one
//!   `write(2)` per session file and one to `audit.jsonl` per batch. A
//!   handler awaits its session's flush before forwarding what it
//!   recorded, so an acknowledged line is in the kernel;
//! - a session file is never rewritten. While the session is open and the
//!   daemon runs as root it also carries the append-only inode flag
//!   ([`append_only`]), cleared when the session closes;
//! - `audit.jsonl` rotates by size ([`audit`]);
//! - terminal output (SSH shells and exec, Kubernetes exec/attach) goes to
//!   `sessions/<session_id>.cast`, an asciicast v2 stream written the same
//!   way, whose size and SHA-256 the `close` line carries ([`cast`]).
//!
//! A session ends with exactly one `close` line: the one its handler
//! records, or one written when the [`SessionRecord`] is dropped without it.
//! Nothing is written after `close`.
//!
//! Callers pass only metadata: never secret values, tokens or masked data.
use std::{
    fs::{self, DirBuilder, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use rand::{rngs::OsRng, RngCore};
use sha2::{Digest, Sha256};

pub mod append_only;
pub mod audit;
pub mod cast;
pub mod chain;
mod writer;

use writer::Writer;

pub use audit::{AuditLog, DEFAULT_ROTATE_BYTES};
pub use cast::CastSummary;

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
    /// `ip:port`; `cgroup` is the connecting process's cgroup below the
    /// cgroup2 mount (a container's, below the agent's) and `netns_cookie`
    /// its network namespace cookie (DESIGN.md §8).
    Open {
        protocol: String,
        original_dst: String,
        peer: String,
        cgroup: String,
        netns_cookie: u64,
    },
    /// The agent's token was accepted.
    AuthOk { token_id: String },
    /// The agent's token was refused; `reason` never contains the token.
    AuthFail { reason: String },
    /// A PostgreSQL statement.
    Query { sql: String },
    /// An HTTP request and the status returned to the agent; for a
    /// Kubernetes service also the request as the API server reads it.
    Request {
        method: String,
        path: String,
        status: u16,
        #[serde(flatten, skip_serializing_if = "Option::is_none")]
        kube: Option<KubeFields>,
    },
    /// An upstream response: status and body bytes. After a protocol
    /// upgrade (status 101), `bytes` went to the agent and `bytes_up` to
    /// the upstream.
    Response {
        status: u16,
        bytes: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        bytes_up: Option<u64>,
    },
    /// A command run in the session, before its decision (DESIGN.md §4
    /// "Session records"): an SSH exec command line, shell or subsystem
    /// (`command` is `shell` or the subsystem's name, e.g. `sftp`), or a
    /// Kubernetes exec or attach (the `command` query parameters,
    /// shell-quoted and joined). `kind` says which: `exec`, `shell`,
    /// `subsystem`, `attach`.
    Command {
        command: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        kind: Option<&'static str>,
    },
    /// Refused by policy `rule`.
    Denied { reason: String, rule: String },
    /// Held for a JIT approval of `summary` (the SQL, or `METHOD path`).
    ApprovalWait { approval: String, summary: String },
    /// Released by `by`.
    Approved { approval: String, by: String },
    /// Approval denied (by `by`, a Unix user or a console subject) or
    /// timed out (no `by`).
    Rejected {
        approval: String,
        reason: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    /// Columns or JSON fields masked, and how many values; never the values.
    Masked { fields: Vec<String>, count: u64 },
    /// A failure worth recording.
    Error { message: String },
    /// The session ended after `duration_ms` milliseconds. The recorder adds
    /// the chain head (`lines`, `head`) to this line.
    Close { duration_ms: u64 },
}

/// Every `event` name the recorder writes, in [`Event`] order.
pub const EVENT_NAMES: [&str; 14] = [
    "open",
    "auth_ok",
    "auth_fail",
    "query",
    "request",
    "response",
    "command",
    "denied",
    "approval_wait",
    "approved",
    "rejected",
    "masked",
    "error",
    "close",
];

impl Event {
    /// The `event` name this line is recorded under (one of
    /// [`EVENT_NAMES`]).
    pub fn name(&self) -> &'static str {
        match self {
            Event::Open { .. } => "open",
            Event::AuthOk { .. } => "auth_ok",
            Event::AuthFail { .. } => "auth_fail",
            Event::Query { .. } => "query",
            Event::Request { .. } => "request",
            Event::Response { .. } => "response",
            Event::Command { .. } => "command",
            Event::Denied { .. } => "denied",
            Event::ApprovalWait { .. } => "approval_wait",
            Event::Approved { .. } => "approved",
            Event::Rejected { .. } => "rejected",
            Event::Masked { .. } => "masked",
            Event::Error { .. } => "error",
            Event::Close { .. } => "close",
        }
    }
}

/// A Kubernetes request's `request` fields (DESIGN.md §6): `verb` and
/// `resource` (`pods/exec` with its subresource; the path for a
/// non-resource URL), `namespace` and `name` when it has them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KubeFields {
    pub verb: String,
    pub resource: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// How a command of the session ended: an SSH channel's `exit-status` or
/// `exit-signal` (RFC 4254 §6.10), or neither when the channel closed
/// without one. The `close` line lists them as `exits`, in the order the
/// channels closed, the first [`MAX_EXITS`] of a session.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CommandExit {
    /// The SSH channel (agent-side id).
    pub channel: u32,
    /// As in its `command` line.
    pub command: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<u32>,
    /// Signal name without `SIG`, e.g. `TERM`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_signal: Option<String>,
}

/// How many [`CommandExit`]s a `close` line lists at most.
pub const MAX_EXITS: usize = 256;

/// Who a session belongs to: the agent identity from interception and the
/// service it reached.
#[derive(Debug, Clone)]
pub struct SessionMeta {
    pub agent: String,
    pub pid: u32,
    pub uid: u32,
    pub service: String,
}

/// How the recorder writes; [`RecorderOptions::default`] is what a config
/// without the keys gets.
#[derive(Debug, Clone, Copy)]
pub struct RecorderOptions {
    /// `audit.jsonl` is rotated before a line would take it past this many
    /// bytes (`[gateway] audit_rotate_bytes`).
    pub audit_rotate_bytes: u64,
    /// Terminal output a session's `.cast` file records at most; the rest
    /// is counted as cut (`[gateway] cast_max_bytes`).
    pub cast_max_bytes: u64,
}

impl Default for RecorderOptions {
    fn default() -> Self {
        RecorderOptions {
            audit_rotate_bytes: DEFAULT_ROTATE_BYTES,
            cast_max_bytes: cast::DEFAULT_MAX_BYTES,
        }
    }
}

/// The daemon's record writer; one per daemon, shared by all sessions.
/// Lines are written by group commit on a writer thread ([`writer`]);
/// dropping the last handle writes everything still queued and ends the
/// thread.
#[derive(Debug)]
pub struct Recorder {
    sessions_dir: PathBuf,
    group: Option<u32>,
    cast_max_bytes: u64,
    writer: Arc<Writer>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Called with (service, event) after each line is written (metrics).
pub struct Observer(pub Box<dyn Fn(&Observed<'_>) + Send + Sync>);

/// A line as written, handed to the [`Observer`] (metrics, notifications).
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// The session id.
    pub session: &'a str,
    pub meta: &'a SessionMeta,
    /// When the line was stamped.
    pub at: SystemTime,
    pub event: &'a Event,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

impl Recorder {
    /// [`Recorder::open_with`] with the default options (100 MiB rotation).
    ///
    /// # Errors
    /// As [`Recorder::open_with`].
    pub fn open(log_dir: &Path) -> io::Result<Arc<Recorder>> {
        Self::open_with(log_dir, RecorderOptions::default())
    }

    /// Sets the function told about every written event (once; later
    /// calls are ignored).
    pub fn observe_with(&self, observer: Observer) {
        let _ = self.writer.observer.set(observer);
    }

    /// Creates `log_dir` and `log_dir/sessions` (0750) if needed, opens
    /// `log_dir/audit.jsonl` for appending, as root clears the append-only
    /// flag that a previous, crashed daemon left on the files of sessions
    /// it never closed, and starts the writer thread.
    ///
    /// # Errors
    /// I/O errors creating the directories, opening the audit log or
    /// starting the thread.
    pub fn open_with(log_dir: &Path, options: RecorderOptions) -> io::Result<Arc<Recorder>> {
        let group = nix::unistd::Group::from_name(AUDIT_GROUP)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw());
        let sessions_dir = log_dir.join("sessions");
        // With the audit group, directories are setgid so files created in
        // them inherit the group without CAP_CHOWN.
        let mode = if group.is_some() {
            DIR_MODE | 0o2000
        } else {
            DIR_MODE
        };
        for dir in [log_dir, &sessions_dir] {
            if !dir.is_dir() {
                DirBuilder::new()
                    .recursive(true)
                    .mode(mode)
                    .create(dir)
                    .map_err(|e| annotate(e, "create", dir))?;
                fs::set_permissions(dir, fs::Permissions::from_mode(mode))
                    .map_err(|e| annotate(e, "chmod", dir))?;
                set_group(&File::open(dir)?, dir, group);
            }
        }
        append_only::clear_stale(&sessions_dir);
        let audit = AuditLog::open(log_dir, options.audit_rotate_bytes, group)?;
        let writer = Arc::new(Writer::new(audit));
        let thread = {
            let writer = writer.clone();
            std::thread::Builder::new()
                .name("sluice-recorder".into())
                .spawn(move || writer.run())?
        };
        Ok(Arc::new(Recorder {
            sessions_dir,
            group,
            cast_max_bytes: options.cast_max_bytes,
            writer,
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// Starts a session: creates `sessions/<id>.jsonl` with a fresh id and
    /// marks it append-only (as root, where the filesystem supports it).
    /// Nothing is written until the first [`SessionRecord::record`].
    ///
    /// # Errors
    /// I/O errors creating the session file.
    pub fn start(self: &Arc<Self>, meta: SessionMeta) -> io::Result<SessionRecord> {
        let id = new_session_id();
        let path = self.sessions_dir.join(format!("{id}.jsonl"));
        let file = open_append(&path, self.group, true)?;
        let append_only = append_only::set(&file, &path, true);
        let cast = cast::CastFile::new(&path, self.group, SystemTime::now());
        Ok(SessionRecord {
            recorder: Arc::clone(self),
            file: Arc::new(SessionFile {
                id,
                meta,
                caller: OnceLock::new(),
                file,
                cast: Mutex::new(cast),
                budget: cast::Budget::new(self.cast_max_bytes),
                exits: Mutex::new(Vec::new()),
                path,
                chain: Mutex::new(Chain {
                    seq: 0,
                    prev: String::new(),
                    head: Sha256::new(),
                    append_only,
                }),
                error: Mutex::new(None),
            }),
            started: Instant::now(),
            closed: Mutex::new(false),
            ticket: AtomicU64::new(0),
        })
    }

    /// Writes every line queued so far, by any session, on the calling
    /// thread (blocking: for a clean stop, not for runtime workers).
    pub fn flush_all(&self) {
        self.writer.write_all();
    }
}

impl Drop for Recorder {
    /// Stops the writer thread, which writes everything still queued.
    fn drop(&mut self) {
        self.writer.stop();
        let thread = self
            .thread
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if thread.is_some_and(|t| t.join().is_err()) {
            tracing::error!("the record writer thread panicked");
        }
        self.writer.write_all();
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

/// The hash-chain state of one session file, advanced by the writer.
#[derive(Debug)]
struct Chain {
    /// `seq` of the next line.
    seq: u64,
    /// `prev` of the next line.
    prev: String,
    /// SHA-256 over every byte written so far, newlines included.
    head: Sha256,
    /// The append-only inode flag is set and must be cleared at close.
    append_only: bool,
}

/// One session's file, shared by its handle and the writer.
#[derive(Debug)]
struct SessionFile {
    id: String,
    meta: SessionMeta,
    /// `(subject, groups)` of the JWT that authenticated the session.
    caller: OnceLock<(String, Vec<String>)>,
    file: File,
    /// The terminal recording, written by the writer thread.
    cast: Mutex<cast::CastFile>,
    /// What the recording may still take.
    budget: cast::Budget,
    /// Commands that ended, for the `close` line.
    exits: Mutex<Vec<CommandExit>>,
    path: PathBuf,
    chain: Mutex<Chain>,
    /// The first write error since the last flush.
    error: Mutex<Option<io::Error>>,
}

impl SessionFile {
    fn fail(&self, e: io::Error) {
        self.error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(e);
    }

    fn take_error(&self) -> io::Result<()> {
        match self.error.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// One session's record. `Send + Sync`.
#[derive(Debug)]
pub struct SessionRecord {
    recorder: Arc<Recorder>,
    file: Arc<SessionFile>,
    started: Instant,
    /// `close` was queued; nothing more is.
    closed: Mutex<bool>,
    /// The ticket of the session's last queued line.
    ticket: AtomicU64,
}

impl SessionRecord {
    /// The session id, e.g. `s-019a2b3c4d5e-1f2e3d4c`.
    pub fn id(&self) -> &str {
        &self.file.id
    }

    /// Names the caller a JWT authenticated (DESIGN.md §7): every line
    /// from now on carries `subject` and `groups` next to `agent`. Set once;
    /// a later caller of the same session is in its own `auth_ok` line.
    pub fn set_caller(&self, subject: &str, groups: &[String]) {
        let _ = self.file.caller.set((subject.to_string(), groups.to_vec()));
    }

    /// Queues `event` for the session file and `audit.jsonl`, stamped with
    /// the current time; [`SessionRecord::flush`] writes it. A
    /// [`Event::Close`] line gets the chain head and ends the record: the
    /// append-only flag is cleared and later events are refused.
    ///
    /// # Errors
    /// [`io::ErrorKind::Other`] for an event after `close`.
    pub fn record(&self, event: Event) -> io::Result<()> {
        let is_close = matches!(event, Event::Close { .. });
        // Held while queueing, so nothing is queued after `close`.
        let mut closed = self.closed.lock().unwrap_or_else(|p| p.into_inner());
        if *closed {
            tracing::warn!(session = %self.file.id, "event after close not recorded");
            return Err(io::Error::other(format!(
                "session {} is closed; nothing is recorded after close",
                self.file.id
            )));
        }
        *closed = is_close;
        let ticket = self
            .recorder
            .writer
            .push(self.file.clone(), SystemTime::now(), event);
        self.ticket.store(ticket, Ordering::Release);
        Ok(())
    }

    /// Notes how a command ended, for the `exits` of the `close` line
    /// (the first [`MAX_EXITS`]).
    pub fn command_exit(&self, exit: CommandExit) {
        let mut exits = self.file.exits.lock().unwrap_or_else(|p| p.into_inner());
        if exits.len() < MAX_EXITS {
            exits.push(exit);
        }
    }

    /// Resolves once every line this session queued is written to its
    /// file and `audit.jsonl` (in the kernel, not fsynced) by the writer
    /// thread; never blocks the calling thread.
    ///
    /// # Errors
    /// The first write error since the last flush: the lines it concerns
    /// are not in the file, and the chain continues without them.
    pub async fn flush(&self) -> io::Result<()> {
        self.recorder
            .writer
            .written(self.ticket.load(Ordering::Acquire))
            .await;
        self.file.take_error()
    }
}

impl Drop for SessionRecord {
    /// Ends a record its handler did not close (a cancelled task, a daemon
    /// shutting down) with a `close` line, so the file is complete and loses
    /// its append-only flag.
    fn drop(&mut self) {
        let closed = *self.closed.lock().unwrap_or_else(|p| p.into_inner());
        if !closed {
            let duration_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
            if let Err(e) = self.record(Event::Close { duration_ms }) {
                tracing::warn!(session = %self.file.id, error = %e, "cannot queue the close line");
            }
        }
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
mod tests;
