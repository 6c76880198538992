//! Group commit of session lines, on a writer thread of its own.
//!
//! Sessions queue events ([`Writer::push`]) without touching the disk; each
//! gets a ticket. A handler that needs its lines written before it forwards
//! what they record awaits [`Writer::written`]: it raises the queue's
//! `wanted` ticket, wakes the writer thread if (and only if) it sleeps, and
//! awaits a [`tokio::sync::watch`] of the last written ticket. The writer
//! thread takes *everything* queued so far as one batch: for each session
//! in it, its lines serialised onto its hash chain ([`super::chain`];
//! timestamp taken at queue time) in one `write(2)` to the session file,
//! then all of them in one more to `audit.jsonl`; then it publishes the
//! batch's last ticket, which wakes every handler waiting on that batch at
//! once. Per batch that is at most one futex wake of the writer and one
//! watch notification, however many handlers wait; no runtime worker
//! thread ever blocks on the disk or on the write lock.
//!
//! A line is acknowledged once it is in the kernel (written, not fsynced):
//! handlers await their flush before they forward what they recorded, so
//! an acknowledged line survives `kill -9` of the daemon. Lines nobody
//! waits for (`response`, `close`) are written by the next batch, at most
//! [`SWEEP`] later.
//!
//! Terminal output for `.cast` files ([`super::cast`]) is queued the same
//! way, without a ticket: each batch appends a session's output to its
//! `.cast` file before its lines, so a `close` line sees the whole
//! recording it summarises. Queued output holds permits of
//! [`Writer::cast_room`], released once written.
//!
//! A failed write leaves the chain where it was: the session's next line
//! continues from its last written one, so the file stays verifiable, and
//! the error is reported to the session's next flush.
use std::{
    collections::HashMap,
    io,
    sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock},
    time::{Duration, SystemTime},
};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{watch, Semaphore};

use super::{
    append_only, audit::AuditLog, cast, cast::CastSummary, write_line, CommandExit, Event,
    Observer, SessionFile,
};

/// How long a line nobody flushes may wait in the queue.
pub const SWEEP: Duration = Duration::from_millis(20);

/// The queue, the writer thread's wake-up and the write lock of one
/// recorder.
#[derive(Debug)]
pub(super) struct Writer {
    queue: Mutex<Queue>,
    /// Wakes the writer thread; notified only while `Queue::idle`.
    wake: Condvar,
    /// Held while a batch is written, so batches go out in queue order.
    audit: Mutex<AuditLog>,
    /// Every ticket up to this one is written (or failed).
    written: watch::Sender<u64>,
    pub(super) observer: OnceLock<Observer>,
    /// Bytes of terminal output that may wait in the queue
    /// ([`cast::QUEUE_BYTES`]).
    pub(super) cast_room: Arc<Semaphore>,
}

/// A queued line, or terminal output for the session's `.cast` file.
#[derive(Debug)]
enum Entry {
    Line(SystemTime, Event),
    Cast(cast::Queued),
}

#[derive(Debug, Default)]
struct Queue {
    /// The last ticket handed out (0: none yet).
    last: u64,
    lines: Vec<(Arc<SessionFile>, Entry)>,
    /// The highest ticket a handler awaits.
    wanted: u64,
    /// The writer thread sleeps on `wake` and no one has woken it yet.
    idle: bool,
    /// Set to end the writer thread.
    stop: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while these locks are held; the data stays whole.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Writer {
    pub(super) fn new(audit: AuditLog) -> Writer {
        Writer {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            audit: Mutex::new(audit),
            written: watch::Sender::new(0),
            observer: OnceLock::new(),
            cast_room: Arc::new(Semaphore::new(cast::QUEUE_BYTES)),
        }
    }

    /// Queues `event` of `session`, stamped `at`; returns its ticket.
    pub(super) fn push(&self, session: Arc<SessionFile>, at: SystemTime, event: Event) -> u64 {
        let mut q = lock(&self.queue);
        q.last += 1;
        q.lines.push((session, Entry::Line(at, event)));
        q.last
    }

    /// Queues terminal output (or a size, a marker) of `session`; written
    /// with the next batch, which nobody needs to await.
    pub(super) fn push_cast(&self, session: Arc<SessionFile>, queued: cast::Queued) {
        lock(&self.queue).lines.push((session, Entry::Cast(queued)));
    }

    /// Resolves once every line up to `ticket` is written (or failed) by
    /// the writer thread, waking it if it sleeps.
    pub(super) async fn written(&self, ticket: u64) {
        if *self.written.borrow() >= ticket {
            return;
        }
        {
            let mut q = lock(&self.queue);
            q.wanted = q.wanted.max(ticket);
            if q.idle {
                q.idle = false;
                self.wake.notify_one();
            }
        }
        // The sender lives as long as `self`; `wait_for` checks the
        // current value first, so a batch published meanwhile is seen.
        let _ = self.written.subscribe().wait_for(|w| *w >= ticket).await;
    }

    /// Writes everything queued so far on the calling thread (a clean
    /// stop; never a runtime worker).
    pub(super) fn write_all(&self) {
        let audit = lock(&self.audit);
        let (lines, last) = {
            let mut q = lock(&self.queue);
            (std::mem::take(&mut q.lines), q.last)
        };
        write_batch(lines, &audit, &self.observer);
        self.written.send_if_modified(|w| {
            let newer = last > *w;
            *w = (*w).max(last);
            newer
        });
    }

    /// The writer thread: writes a batch as soon as a handler waits for
    /// one, and what nobody waits for every [`SWEEP`], until
    /// [`Writer::stop`]; then writes the rest.
    pub(super) fn run(&self) {
        let mut q = lock(&self.queue);
        while !q.stop {
            if q.wanted <= *self.written.borrow() {
                q.idle = true;
                let (guard, waited) = self
                    .wake
                    .wait_timeout(q, SWEEP)
                    .unwrap_or_else(|p| p.into_inner());
                q = guard;
                q.idle = false;
                let asked = q.wanted > *self.written.borrow();
                if q.stop || !(asked || (waited.timed_out() && !q.lines.is_empty())) {
                    continue;
                }
            }
            drop(q);
            self.write_all();
            q = lock(&self.queue);
        }
        drop(q);
        self.write_all();
    }

    /// Ends [`Writer::run`] after a last batch.
    pub(super) fn stop(&self) {
        lock(&self.queue).stop = true;
        self.wake.notify_one();
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
    /// The caller a JWT named (DESIGN.md §7), once one authenticated.
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    groups: Option<&'a [String]>,
    #[serde(flatten)]
    event: &'a Event,
    #[serde(skip_serializing_if = "Option::is_none")]
    lines: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    head: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cast: Option<CastSummary>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    exits: Vec<CommandExit>,
    seq: u64,
    prev: &'a str,
}

/// An event and the wall-clock time it was queued.
type Stamped = (SystemTime, Event);

/// One session's share of a batch: its lines and its terminal output.
type Share = (Arc<SessionFile>, Vec<Stamped>, Vec<cast::Queued>);

fn write_batch(
    lines: Vec<(Arc<SessionFile>, Entry)>,
    audit: &AuditLog,
    observer: &OnceLock<Observer>,
) {
    if lines.is_empty() {
        return;
    }
    // Per session, in queue order.
    let mut order: Vec<Share> = Vec::new();
    let mut index: HashMap<*const SessionFile, usize> = HashMap::new();
    for (session, entry) in lines {
        let i = *index.entry(Arc::as_ptr(&session)).or_insert_with(|| {
            order.push((session, Vec::new(), Vec::new()));
            order.len() - 1
        });
        match entry {
            Entry::Line(at, event) => order[i].1.push((at, event)),
            Entry::Cast(queued) => order[i].2.push(queued),
        }
    }
    let mut audit_bytes = Vec::new();
    let mut written = Vec::new();
    for (session, events, output) in order {
        if let Err(e) = write_cast(&session, &events, &output) {
            tracing::warn!(session = %session.id, error = %e, "terminal recording write failed");
            session.fail(e);
        }
        // The output is written (or failed): its room in the queue is free.
        drop(output);
        if events.is_empty() {
            continue;
        }
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

/// Appends `output` to the session's `.cast` file; before the session's
/// `close` line (in `events`), what is carried too.
fn write_cast(
    session: &SessionFile,
    events: &[Stamped],
    output: &[cast::Queued],
) -> io::Result<()> {
    let closing = events.iter().find_map(|(_, e)| match e {
        Event::Close { duration_ms } => Some(std::time::Duration::from_millis(*duration_ms)),
        _ => None,
    });
    if output.is_empty() && closing.is_none() {
        return Ok(());
    }
    lock(&session.cast).write(output, closing)
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
            subject: session.caller.get().map(|(s, _)| s.as_str()),
            groups: session.caller.get().map(|(_, g)| g.as_slice()),
            event,
            lines: is_close.then_some(seq),
            head: is_close.then(|| hex::encode(head.clone().finalize())),
            cast: is_close
                .then(|| lock(&session.cast).close(session.budget.cut()))
                .flatten(),
            exits: if is_close {
                std::mem::take(&mut *lock(&session.exits))
            } else {
                Vec::new()
            },
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
