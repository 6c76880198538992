//! The record writer thread: group commit of session lines.
//!
//! Sessions queue events ([`Job::Line`]) without touching the disk. One
//! thread per [`super::Recorder`] takes everything queued so far as a batch
//! and, for each session in the batch, serialises its lines (timestamp
//! taken at queue time, hash chain of [`super::chain`]) and appends them to
//! the session file in one `write(2)`; then it appends every line it wrote
//! to `audit.jsonl` in one more. Under load a batch holds many requests'
//! lines, so the cost per line falls to a fraction of a system call.
//!
//! A [`Job::Flush`] is answered once every line queued before it is in the
//! kernel (written, not fsynced), or with the error that kept one of that
//! session's lines out. Handlers flush before they forward what they
//! recorded, so an acknowledged line survives `kill -9` of the daemon.
//!
//! A failed write leaves the chain where it was: the session's next line
//! continues from its last written one, so the file stays verifiable.
//! The thread ends, after writing everything queued, when the
//! [`super::Recorder`] is dropped.
use std::{
    collections::HashMap,
    io,
    sync::{mpsc, Arc},
    time::SystemTime,
};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{append_only, audit::AuditLog, write_line, Event, Observer, SessionFile};

/// Most jobs taken into one batch.
const MAX_BATCH: usize = 4096;

/// Work for the writer thread.
pub(super) enum Job {
    /// One event of `session`, at `at` (wall clock when queued).
    Line {
        session: Arc<SessionFile>,
        at: SystemTime,
        event: Event,
    },
    /// Answer `done` once every earlier job is written: with the first
    /// error `session` met since its last flush (with `None`, `Ok`).
    Flush {
        session: Option<Arc<SessionFile>>,
        done: Done,
    },
}

/// Where a flush is answered.
pub(super) enum Done {
    Async(tokio::sync::oneshot::Sender<io::Result<()>>),
    Blocking(mpsc::Sender<io::Result<()>>),
}

impl Done {
    fn send(self, result: io::Result<()>) {
        // A waiter that went away no longer needs the answer.
        let _ = match self {
            Done::Async(tx) => tx.send(result).map_err(drop),
            Done::Blocking(tx) => tx.send(result).map_err(drop),
        };
    }
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
    #[serde(skip_serializing_if = "Option::is_none")]
    lines: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    head: Option<String>,
    seq: u64,
    prev: &'a str,
}

/// Runs the writer until every sender of `jobs` is gone and the queue is
/// empty.
pub(super) fn run(jobs: mpsc::Receiver<Job>, audit: Arc<AuditLog>, observer: Arc<ObserverSlot>) {
    let mut batch = Vec::new();
    while let Ok(first) = jobs.recv() {
        batch.push(first);
        batch.extend(jobs.try_iter().take(MAX_BATCH - 1));
        write_batch(&mut batch, &audit, &observer);
    }
}

/// The metrics hook, set once after the writer started.
pub(super) type ObserverSlot = std::sync::OnceLock<Observer>;

/// Lines of one session in a batch, in queue order.
struct Pending {
    session: Arc<SessionFile>,
    events: Vec<(SystemTime, Event)>,
}

fn write_batch(batch: &mut Vec<Job>, audit: &AuditLog, observer: &ObserverSlot) {
    let mut order: Vec<Pending> = Vec::new();
    let mut index: HashMap<*const SessionFile, usize> = HashMap::new();
    let mut flushes = Vec::new();
    for job in batch.drain(..) {
        match job {
            Job::Line { session, at, event } => {
                let i = *index.entry(Arc::as_ptr(&session)).or_insert_with(|| {
                    order.push(Pending {
                        session: session.clone(),
                        events: Vec::new(),
                    });
                    order.len() - 1
                });
                order[i].events.push((at, event));
            }
            Job::Flush { session, done } => flushes.push((session, done)),
        }
    }
    let mut audit_bytes = Vec::new();
    let mut written: Vec<(Arc<SessionFile>, Vec<Event>)> = Vec::new();
    for p in order {
        match write_session(&p.session, &p.events) {
            Ok(bytes) => {
                audit_bytes.extend_from_slice(&bytes);
                written.push((p.session, p.events.into_iter().map(|(_, e)| e).collect()));
            }
            Err(e) => {
                tracing::warn!(session = %p.session.id, error = %e, "session record write failed");
                p.session.fail(e);
            }
        }
    }
    if !audit_bytes.is_empty() {
        if let Err(e) = audit.append(&audit_bytes) {
            tracing::warn!(error = %e, "audit log write failed");
            for (session, _) in &written {
                session.fail(io::Error::new(e.kind(), e.to_string()));
            }
        }
    }
    if let Some(observe) = observer.get() {
        for (session, events) in &written {
            for event in events {
                (observe.0)(&session.meta.service, event);
            }
        }
    }
    for (session, done) in flushes {
        done.send(session.map_or(Ok(()), |s| s.take_error()));
    }
}

/// Serialises `events` onto the session's chain and appends them in one
/// write. The chain advances only when the write succeeds.
fn write_session(session: &SessionFile, events: &[(SystemTime, Event)]) -> io::Result<Vec<u8>> {
    let mut chain = session.chain.lock().unwrap_or_else(|p| p.into_inner());
    let (mut seq, mut prev, mut head) = (chain.seq, chain.prev.clone(), chain.head.clone());
    let mut bytes = Vec::with_capacity(256 * events.len());
    let mut closed = false;
    for (at, event) in events {
        let is_close = matches!(event, Event::Close { .. });
        let line = Line {
            ts: DateTime::<Utc>::from(*at).to_rfc3339_opts(SecondsFormat::Micros, true),
            session: &session.id,
            agent: &session.meta.agent,
            pid: session.meta.pid,
            uid: session.meta.uid,
            service: &session.meta.service,
            event,
            lines: is_close.then_some(seq),
            head: is_close.then(|| hex::encode(head.clone().finalize())),
            seq,
            prev: &prev,
        };
        let start = bytes.len();
        serde_json::to_writer(&mut bytes, &line).map_err(io::Error::other)?;
        prev = hex::encode(Sha256::digest(&bytes[start..]));
        bytes.push(b'\n');
        head.update(&bytes[start..]);
        seq += 1;
        closed |= is_close;
    }
    write_line(&session.file, &session.path, &bytes)?;
    (chain.seq, chain.prev, chain.head) = (seq, prev, head);
    if closed && chain.append_only {
        chain.append_only = !append_only::set(&session.file, &session.path, false);
    }
    Ok(bytes)
}
