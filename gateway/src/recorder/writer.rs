//! Group commit of session lines.
//!
//! Sessions queue events ([`Writer::push`]) without touching the disk; each
//! gets a ticket. Whoever needs lines written ([`Writer::write_through`]: a
//! handler about to forward what it recorded, the sweeper thread every
//! [`SWEEP`], a clean stop) takes the write lock and writes *everything*
//! queued so far as one batch: for each session in it, its lines
//! serialised onto its hash chain ([`super::chain`]; timestamp taken at
//! queue time) in one `write(2)` to the session file, then all of them in
//! one more to `audit.jsonl`. Concurrent handlers find their lines already
//! written by the one before them, so under load the cost per line falls to
//! a fraction of a system call, with no thread hand-off on the way.
//!
//! A line is acknowledged once it is in the kernel (written, not fsynced):
//! handlers flush before they forward what they recorded, so an
//! acknowledged line survives `kill -9` of the daemon. Lines nobody waits
//! for (`response`, `close`) are written by the next batch, at most
//! [`SWEEP`] later.
//!
//! A failed write leaves the chain where it was: the session's next line
//! continues from its last written one, so the file stays verifiable, and
//! the error is reported to the session's next flush.
use std::{
    collections::HashMap,
    io,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Condvar, Mutex, MutexGuard, OnceLock,
    },
    time::{Duration, SystemTime},
};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{append_only, audit::AuditLog, write_line, Event, Observer, SessionFile};

/// How long a line nobody flushes may wait in the queue.
pub const SWEEP: Duration = Duration::from_millis(20);

/// The queue and the write lock of one recorder.
#[derive(Debug)]
pub(super) struct Writer {
    queue: Mutex<Queue>,
    /// Held while a batch is written, so batches go out in queue order.
    audit: Mutex<AuditLog>,
    /// Every ticket up to this one is written (or failed).
    written: AtomicU64,
    pub(super) observer: OnceLock<Observer>,
    /// Set to stop the sweeper.
    stop: (Mutex<bool>, Condvar),
}

#[derive(Debug, Default)]
struct Queue {
    /// The last ticket handed out (0: none yet).
    last: u64,
    lines: Vec<(Arc<SessionFile>, SystemTime, Event)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while these locks are held; the data stays whole.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Writer {
    pub(super) fn new(audit: AuditLog) -> Writer {
        Writer {
            queue: Mutex::new(Queue::default()),
            audit: Mutex::new(audit),
            written: AtomicU64::new(0),
            observer: OnceLock::new(),
            stop: (Mutex::new(false), Condvar::new()),
        }
    }

    /// Queues `event` of `session`, stamped `at`; returns its ticket.
    pub(super) fn push(&self, session: Arc<SessionFile>, at: SystemTime, event: Event) -> u64 {
        let mut q = lock(&self.queue);
        q.last += 1;
        q.lines.push((session, at, event));
        q.last
    }

    /// Returns once every line up to `ticket` is written (or failed),
    /// writing the queue itself unless another caller already did.
    pub(super) fn write_through(&self, ticket: u64) {
        if self.written.load(Ordering::Acquire) >= ticket {
            return;
        }
        let audit = lock(&self.audit);
        if self.written.load(Ordering::Acquire) >= ticket {
            return;
        }
        let (lines, last) = {
            let mut q = lock(&self.queue);
            (std::mem::take(&mut q.lines), q.last)
        };
        write_batch(lines, &audit, &self.observer);
        self.written.store(last, Ordering::Release);
    }

    /// Writes everything queued so far.
    pub(super) fn write_all(&self) {
        let last = lock(&self.queue).last;
        self.write_through(last);
    }

    /// The sweeper: writes what nobody flushed, every [`SWEEP`], until
    /// [`Writer::stop`]; then writes the rest.
    pub(super) fn sweep(&self) {
        let (stopped, wake) = &self.stop;
        let mut stop = lock(stopped);
        while !*stop {
            stop = wake
                .wait_timeout(stop, SWEEP)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            drop(stop);
            self.write_all();
            stop = lock(stopped);
        }
    }

    /// Ends [`Writer::sweep`] after a last batch.
    pub(super) fn stop(&self) {
        *lock(&self.stop.0) = true;
        self.stop.1.notify_all();
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

/// An event and the wall-clock time it was queued.
type Stamped = (SystemTime, Event);

fn write_batch(
    lines: Vec<(Arc<SessionFile>, SystemTime, Event)>,
    audit: &AuditLog,
    observer: &OnceLock<Observer>,
) {
    if lines.is_empty() {
        return;
    }
    // Per session, in queue order.
    let mut order: Vec<(Arc<SessionFile>, Vec<Stamped>)> = Vec::new();
    let mut index: HashMap<*const SessionFile, usize> = HashMap::new();
    for (session, at, event) in lines {
        let i = *index.entry(Arc::as_ptr(&session)).or_insert_with(|| {
            order.push((session, Vec::new()));
            order.len() - 1
        });
        order[i].1.push((at, event));
    }
    let mut audit_bytes = Vec::new();
    let mut written = Vec::new();
    for (session, events) in order {
        match write_session(&session, &events) {
            Ok(bytes) => {
                audit_bytes.extend_from_slice(&bytes);
                written.push((session, events));
            }
            Err(e) => {
                tracing::warn!(session = %session.id, error = %e, "session record write failed");
                session.fail(e);
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
            for (at, event) in events {
                (observe.0)(&super::Observed {
                    session: &session.id,
                    meta: &session.meta,
                    at: *at,
                    event,
                });
            }
        }
    }
}

/// Serialises `events` onto the session's chain and appends them in one
/// write. The chain advances only when the write succeeds.
fn write_session(session: &SessionFile, events: &[Stamped]) -> io::Result<Vec<u8>> {
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
