//! Terminal recordings (DESIGN.md §4 "Session records"):
//! `log_dir/sessions/<id>.cast` beside the session's `.jsonl`, an asciicast
//! v2 stream (<https://docs.asciinema.org/manual/asciicast/v2/>) of what SSH
//! shells and exec commands and Kubernetes exec/attach streams printed.
//!
//! Format: one JSON header line, then one event a line:
//! - header `{"version": 2, "width": W, "height": H, "timestamp": T, "env":
//!   {"TERM": …}}`: the size and `TERM` of the first pty request (80×24
//!   when the output came without one or its size was 0×0, and then no
//!   `env` without a pty), `T` the session's start in Unix seconds;
//! - `[t, "o", data]` output (stdout and stderr alike, as a terminal shows
//!   them), `[t, "r", "COLSxROWS"]` a terminal resize, `[t, "m", label]` a
//!   marker (Sluice's own notes, e.g. where output was cut). `t` is seconds
//!   (µs precision) since the session's start, the `open` line, so
//!   `sluice sessions replay` lines output up with the session's records.
//!
//! Output bytes are decoded as UTF-8 per stream: a character split between
//! two reads is kept for the next one, invalid bytes become U+FFFD.
//!
//! Input (`"i"` events) is not recorded: what an agent types includes what
//! its terminal does not echo (a password at a prompt of the upstream host),
//! and what it echoes is in the output already.
//!
//! What never lands here: Sluice's upstream credential is spent in the SSH
//! user authentication of the upstream connection, or in the headers of the
//! upstream HTTP request (a bearer token, a client certificate in the TLS
//! handshake), never in the channel data or WebSocket frames recorded here;
//! Sluice's own refusals (which name no secret) are not recorded either.
//! What the upstream program prints is recorded as printed.
//!
//! Writing. Events are queued with the session's lines and written by the
//! recorder's writer thread ([`super::writer`]), one `write(2)` per file and
//! batch, never on a proxy thread. The file is created at the first output,
//! like the session file (0640, group `sluice-audit`, `O_APPEND`,
//! append-only flag while the session is open). Memory is bounded twice:
//! queued output waits for room in [`QUEUE_BYTES`] shared by all sessions
//! (the relay awaits it, so a slow disk slows the stream instead of
//! growing the queue), and a session records at most `cast_max_bytes` of
//! output (`[gateway]`, default [`DEFAULT_MAX_BYTES`]): the rest is counted,
//! not kept, and a marker says where the cut is.
//!
//! Tamper evidence: the session's `close` line carries `cast`
//! ([`CastSummary`]: bytes, SHA-256 of the whole file, bytes cut), and the
//! close line is itself on the session's hash chain ([`super::chain`]).
use std::{
    fs::File,
    io,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::OwnedSemaphorePermit;

use super::{append_only, open_append, write_line, SessionRecord};

/// Output bytes a session records at most, by default: 8 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 8 << 20;
/// Output bytes queued for writing, all sessions together, before relays
/// wait: 4 MiB.
pub const QUEUE_BYTES: usize = 4 << 20;
/// Size in the header when no pty was requested.
const DEFAULT_SIZE: (u32, u32) = (80, 24);

/// One terminal event of a session, queued for the writer thread.
#[derive(Debug)]
pub(super) struct Queued {
    /// Since the session's start.
    pub at: Duration,
    pub item: Item,
    /// Room in the writer's queue, released once written.
    pub _room: Option<OwnedSemaphorePermit>,
}

#[derive(Debug)]
pub(super) enum Item {
    /// A pty's size (and, from a pty request, its `TERM`).
    Size {
        cols: u32,
        rows: u32,
        term: Option<String>,
    },
    /// Output of stream `stream` (a channel id; a Kubernetes stream number).
    Output { stream: u32, data: Bytes },
    /// A note of Sluice's.
    Marker(String),
}

/// What the `close` line says of the session's `.cast` file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CastSummary {
    /// Bytes in the file.
    pub bytes: u64,
    /// Lowercase hex SHA-256 of the whole file (`sha256sum <id>.cast`).
    pub sha256: String,
    /// Output bytes not recorded, beyond `cast_max_bytes`.
    pub cut: u64,
}

/// How much output a session may still record; shared by its handle,
/// which takes from it, and the writer, which reports the cut.
#[derive(Debug)]
pub(super) struct Budget {
    max: u64,
    taken: AtomicU64,
    cut: AtomicU64,
}

/// What [`Budget::take`] allows of a chunk of output.
pub(super) struct Taken {
    /// Bytes to record, from the start of the chunk.
    pub keep: usize,
    /// This chunk is the first one cut.
    pub first_cut: bool,
}

impl Budget {
    pub fn new(max: u64) -> Budget {
        Budget {
            max,
            taken: AtomicU64::new(0),
            cut: AtomicU64::new(0),
        }
    }

    /// Takes room for `len` bytes: all of them, part, or none (the rest
    /// counted as cut).
    pub fn take(&self, len: usize) -> Taken {
        let len = len as u64;
        let before = self.taken.fetch_add(len, Ordering::Relaxed);
        let keep = self.max.saturating_sub(before).min(len);
        let cut = len - keep;
        let first_cut = cut > 0 && self.cut.fetch_add(cut, Ordering::Relaxed) == 0;
        Taken {
            keep: usize::try_from(keep).unwrap_or(usize::MAX),
            first_cut,
        }
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// Output bytes not recorded so far.
    pub fn cut(&self) -> u64 {
        self.cut.load(Ordering::Relaxed)
    }
}

/// One session's `.cast` file, advanced by the writer thread only.
#[derive(Debug)]
pub(super) struct CastFile {
    path: PathBuf,
    group: Option<u32>,
    started: SystemTime,
    /// Open once the header is written.
    file: Option<File>,
    size: (u32, u32),
    term: Option<String>,
    /// Per stream, the start of a UTF-8 sequence that continues in the next
    /// output (at most 3 bytes).
    carry: Vec<(u32, Vec<u8>)>,
    head: Sha256,
    bytes: u64,
    append_only: bool,
}

impl CastFile {
    /// The recording of the session whose record is `jsonl`, started at
    /// `started`; nothing is created before the first output.
    pub fn new(jsonl: &Path, group: Option<u32>, started: SystemTime) -> CastFile {
        CastFile {
            path: jsonl.with_extension("cast"),
            group,
            started,
            file: None,
            size: DEFAULT_SIZE,
            term: None,
            carry: Vec::new(),
            head: Sha256::new(),
            bytes: 0,
            append_only: false,
        }
    }

    /// Appends `events` in one write, creating the file with its header
    /// first if needed; `closing` also writes out what is carried. The hash
    /// and size advance only when the write succeeds.
    ///
    /// # Errors
    /// I/O errors creating or appending to the file.
    pub fn write(&mut self, events: &[Queued], closing: Option<Duration>) -> io::Result<()> {
        // The header, when the file is new, goes first: with the size and
        // TERM known at the first event written.
        let mut bytes = Vec::new();
        for event in events {
            match &event.item {
                Item::Size { cols, rows, term } => {
                    let started = self.file.is_some() || !bytes.is_empty();
                    if !started {
                        if let Some(term) = term {
                            self.term = Some(term.clone());
                        }
                    }
                    // A pty of unknown size (0×0: the client's stdin is no
                    // terminal) keeps the size there is.
                    if *cols == 0 || *rows == 0 {
                        continue;
                    }
                    if started {
                        push_event(&mut bytes, event.at, "r", &format!("{cols}x{rows}"));
                    }
                    self.size = (*cols, *rows);
                }
                Item::Output { stream, data } => {
                    let text = self.decode(*stream, data);
                    if !text.is_empty() {
                        self.begin(&mut bytes)?;
                        push_event(&mut bytes, event.at, "o", &text);
                    }
                }
                Item::Marker(label) => {
                    self.begin(&mut bytes)?;
                    push_event(&mut bytes, event.at, "m", label);
                }
            }
        }
        if let Some(at) = closing {
            for (_, rest) in std::mem::take(&mut self.carry) {
                if !rest.is_empty() {
                    self.begin(&mut bytes)?;
                    push_event(&mut bytes, at, "o", &String::from_utf8_lossy(&rest));
                }
            }
        }
        if bytes.is_empty() {
            return Ok(());
        }
        let file = match &self.file {
            Some(file) => file,
            None => {
                let file = open_append(&self.path, self.group, true)?;
                self.append_only = append_only::set(&file, &self.path, true);
                self.file.insert(file)
            }
        };
        write_line(file, &self.path, &bytes)?;
        self.head.update(&bytes);
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    /// Puts the header in an empty `out` when the file has none yet.
    fn begin(&self, out: &mut Vec<u8>) -> io::Result<()> {
        if self.bytes == 0 && out.is_empty() {
            *out = self.header()?;
        }
        Ok(())
    }

    /// The `close` line's `cast`, once a file exists; clears its
    /// append-only flag (nothing is written after close).
    pub fn close(&mut self, cut: u64) -> Option<CastSummary> {
        let file = self.file.as_ref()?;
        if self.append_only {
            self.append_only = !append_only::set(file, &self.path, false);
        }
        Some(CastSummary {
            bytes: self.bytes,
            sha256: hex::encode(self.head.clone().finalize()),
            cut,
        })
    }

    fn header(&self) -> io::Result<Vec<u8>> {
        #[derive(serde::Serialize)]
        struct Env<'a> {
            #[serde(rename = "TERM")]
            term: &'a str,
        }
        #[derive(serde::Serialize)]
        struct Header<'a> {
            version: u8,
            width: u32,
            height: u32,
            timestamp: u64,
            #[serde(skip_serializing_if = "Option::is_none")]
            env: Option<Env<'a>>,
        }
        let header = Header {
            version: 2,
            width: self.size.0,
            height: self.size.1,
            timestamp: self
                .started
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            env: self.term.as_deref().map(|term| Env { term }),
        };
        let mut line = serde_json::to_vec(&header).map_err(io::Error::other)?;
        line.push(b'\n');
        Ok(line)
    }

    /// `data` of `stream` as text, with what an earlier output of the
    /// stream left unfinished; an unfinished sequence at its end is kept.
    fn decode(&mut self, stream: u32, data: &[u8]) -> String {
        let i = match self.carry.iter().position(|(s, _)| *s == stream) {
            Some(i) => i,
            None => {
                self.carry.push((stream, Vec::new()));
                self.carry.len() - 1
            }
        };
        let pending = &mut self.carry[i].1;
        pending.extend_from_slice(data);
        let whole = pending.len() - unfinished_tail(pending);
        let text = String::from_utf8_lossy(&pending[..whole]).into_owned();
        pending.drain(..whole);
        text
    }
}

/// What handlers add to a session's recording.
impl SessionRecord {
    /// Queues a terminal size for the session's `.cast` file: the header's
    /// size and `TERM` (from a pty request) before its first output, a
    /// resize event after. Ignored after `close`.
    pub fn terminal_size(&self, cols: u32, rows: u32, term: Option<&str>) {
        let term = term.map(str::to_string);
        self.push_cast(Item::Size { cols, rows, term }, None);
    }

    /// Queues terminal output of `stream` (an SSH channel id, a Kubernetes
    /// stream number) for the session's `.cast` file. Waits while the
    /// writer's queue is full ([`QUEUE_BYTES`]); output beyond the
    /// session's `cast_max_bytes` is counted as cut, once marked in the
    /// file. Ignored after `close`. The caller passes what the upstream
    /// program printed, never a secret of Sluice's.
    pub async fn terminal_output(&self, stream: u32, mut data: Bytes) {
        let taken = self.file.budget.take(data.len());
        data.truncate(taken.keep);
        if !data.is_empty() {
            let room = u32::try_from(data.len().min(QUEUE_BYTES)).unwrap_or(u32::MAX);
            let writer = &self.recorder.writer;
            let permit = writer.cast_room.clone().acquire_many_owned(room).await.ok();
            self.push_cast(Item::Output { stream, data }, permit);
        }
        if taken.first_cut {
            let max = self.file.budget.max();
            let note = format!("sluice: output beyond cast_max_bytes ({max} bytes) is not recorded; the close line counts it as cut");
            self.push_cast(Item::Marker(note), None);
        }
    }

    fn push_cast(&self, item: Item, permit: Option<tokio::sync::OwnedSemaphorePermit>) {
        let closed = self.closed.lock().unwrap_or_else(|p| p.into_inner());
        if !*closed {
            let at = self.started.elapsed();
            let queued = Queued {
                at,
                item,
                _room: permit,
            };
            self.recorder.writer.push_cast(self.file.clone(), queued);
        }
    }
}

/// `[t, "code", "data"]` and a newline; `t` in seconds to the
/// microsecond, without trailing zeros (`0.25`, `3.0`).
fn push_event(out: &mut Vec<u8>, at: Duration, code: &str, data: &str) {
    let data = serde_json::to_string(data).unwrap_or_else(|_| "\"\"".into());
    let t = format!("{}.{:06}", at.as_secs(), at.subsec_micros());
    let t = t.trim_end_matches('0');
    let t = if t.ends_with('.') {
        format!("{t}0")
    } else {
        t.to_string()
    };
    out.extend_from_slice(format!("[{t}, \"{code}\", {data}]\n").as_bytes());
}

/// How many bytes at the end of `b` start a UTF-8 sequence that is not
/// complete yet (0 to 3).
fn unfinished_tail(b: &[u8]) -> usize {
    for back in 1..=b.len().min(3) {
        let byte = b[b.len() - back];
        if byte & 0xC0 != 0x80 {
            let needs = match byte {
                0xC2..=0xDF => 2,
                0xE0..=0xEF => 3,
                0xF0..=0xF4 => 4,
                _ => 1,
            };
            return if needs > back { back } else { 0 };
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(at_ms: u64, stream: u32, data: &[u8]) -> Queued {
        Queued {
            at: Duration::from_millis(at_ms),
            item: Item::Output {
                stream,
                data: Bytes::copy_from_slice(data),
            },
            _room: None,
        }
    }

    #[test]
    fn a_character_split_between_reads_is_whole_in_one_event() {
        let dir = tempfile::tempdir().unwrap();
        let mut cast = CastFile::new(&dir.path().join("s-1.jsonl"), None, UNIX_EPOCH);
        let size = Queued {
            at: Duration::ZERO,
            item: Item::Size {
                cols: 100,
                rows: 30,
                term: Some("xterm".into()),
            },
            _room: None,
        };
        let e = "é".as_bytes();
        cast.write(&[size, output(1, 0, &[b'a', e[0]])], None)
            .unwrap();
        cast.write(
            &[output(2, 0, &[e[1], b'\n'])],
            Some(Duration::from_millis(3)),
        )
        .unwrap();
        let text = std::fs::read_to_string(dir.path().join("s-1.cast")).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines[0],
            serde_json::json!({"version": 2, "width": 100, "height": 30, "timestamp": 0, "env": {"TERM": "xterm"}})
        );
        assert_eq!(lines[1], serde_json::json!([0.001, "o", "a"]));
        assert_eq!(lines[2], serde_json::json!([0.002, "o", "é\n"]));
        let summary = cast.close(0).unwrap();
        assert_eq!(summary.bytes, text.len() as u64);
        assert_eq!(summary.sha256, hex::encode(Sha256::digest(text.as_bytes())));
    }

    #[test]
    fn no_output_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut cast = CastFile::new(&dir.path().join("s-2.jsonl"), None, UNIX_EPOCH);
        cast.write(&[], Some(Duration::ZERO)).unwrap();
        assert!(cast.close(0).is_none());
        assert!(!dir.path().join("s-2.cast").exists());
    }

    #[test]
    fn the_budget_keeps_the_first_bytes_and_counts_the_rest() {
        let budget = Budget::new(10);
        let first = budget.take(8);
        assert_eq!((first.keep, first.first_cut), (8, false));
        let second = budget.take(5);
        assert_eq!((second.keep, second.first_cut), (2, true));
        let third = budget.take(4);
        assert_eq!((third.keep, third.first_cut), (0, false));
        assert_eq!(budget.cut.load(Ordering::Relaxed), 7);
    }

    #[test]
    fn unfinished_tails_are_found() {
        assert_eq!(unfinished_tail(b"abc"), 0);
        assert_eq!(unfinished_tail("é".as_bytes()), 0);
        assert_eq!(unfinished_tail(&"€".as_bytes()[..2]), 2);
        assert_eq!(unfinished_tail(&[b'a', 0xF0, 0x9F]), 2);
        assert_eq!(unfinished_tail(&[0xFF]), 0);
    }
}
