//! The hash chain of a session file, and its verification
//! (`sluice sessions verify`).
//!
//! Definition. A session file is lines `L0, L1, …`, each one JSON object
//! followed by `\n`. For line `Li` (0-based):
//! - `seq` = `i`;
//! - `prev` = lowercase hex SHA-256 of the bytes of `L(i-1)` without its
//!   newline, and `""` for `L0`;
//! - the fields `session`, `agent`, `pid`, `uid` and `service` equal those
//!   of `L0`.
//!
//! The last line of a finished session is its only `close` line, which
//! carries the chain head:
//! - `lines` = the number of lines before it (so equal to its `seq`);
//! - `head` = lowercase hex SHA-256 of the file's bytes before the close
//!   line, newlines included, so `head -n LINES FILE | sha256sum` prints it.
//!
//! `head` commits to every earlier line; a copy of it kept elsewhere (the
//! close line is also in `audit.jsonl`, which can be shipped off the host)
//! detects even a rewrite that recomputes every `prev`. Within the file,
//! the chain detects an edited byte (the next line's `prev` no longer
//! matches, or the line no longer parses), a deleted or repeated line (a
//! gap in `seq`), a line moved in from another session, a forged head, and
//! anything after `close`. What it cannot see on its own: the tail of an
//! open session being cut off (compare with `audit.jsonl`), or the `ts` and
//! `duration_ms` of the close line itself, which no later line hashes.
//!
//! A last line without its newline in an open session is a write in
//! progress and is not counted.
use std::{fmt, io::BufRead};

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Fields every line of a session shares with its first line.
const SESSION_FIELDS: [&str; 5] = ["session", "agent", "pid", "uid", "service"];

/// The outcome of checking one session file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The chain is intact and ends with `close` after `lines` lines in all.
    Closed { lines: u64 },
    /// The chain is intact so far (`lines` lines) and has no `close` yet.
    Open { lines: u64 },
    /// The first broken line (1-based, as `sed -n Np` counts) and why.
    Tampered { line: u64, problem: Problem },
}

impl Verdict {
    /// Whether the chain is intact (closed or open).
    pub fn is_intact(&self) -> bool {
        !matches!(self, Verdict::Tampered { .. })
    }
}

/// What broke the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The line is not a JSON object, or lacks `seq` or `prev`.
    Unparseable,
    /// `seq` is ahead of the line's position: `missing` lines before it
    /// were deleted.
    Deleted { missing: u64 },
    /// `seq` is behind the line's position: a line repeated or moved.
    Repeated { seq: u64 },
    /// The line's bytes no longer hash to the next line's `prev`: this line
    /// was edited (or the next line's `prev` was).
    Edited,
    /// `prev` of the first line is not `""`.
    BadStart,
    /// A field that is fixed for the session differs from the first line.
    Foreign { field: &'static str },
    /// The close line's `lines` or `head` does not match the lines before.
    BadHead,
    /// Something follows the close line.
    AfterClose,
    /// The file is empty: a session file always starts with a line.
    Empty,
    /// `session` is not the file's session id.
    WrongSession { found: String },
    /// The session's `.cast` file is not what its close line's `cast`
    /// says (size and SHA-256), or exists though the close line lists none.
    CastChanged,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Unparseable => write!(f, "not a record line (unparseable, or no seq/prev)"),
            Problem::Deleted { missing: 1 } => write!(f, "seq gap: 1 line deleted before it"),
            Problem::Deleted { missing } => write!(f, "seq gap: {missing} lines deleted before it"),
            Problem::Repeated { seq } => {
                write!(f, "seq {seq} repeated: a line was duplicated or moved")
            }
            Problem::Edited => write!(
                f,
                "prev mismatch: this line was edited (the next line's prev does not match it)"
            ),
            Problem::BadStart => write!(
                f,
                "prev mismatch: the first line's prev is not empty (lines were cut from the start)"
            ),
            Problem::Foreign { field } => {
                write!(f, "{field} differs from the session's first line")
            }
            Problem::BadHead => write!(f, "close line's lines/head do not match the chain"),
            Problem::AfterClose => write!(f, "data after the close line"),
            Problem::Empty => write!(f, "empty session file"),
            Problem::WrongSession { found } => write!(f, "line belongs to session {found:?}"),
            Problem::CastChanged => write!(
                f,
                "the session's .cast file does not match the close line's cast (bytes, sha256)"
            ),
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Closed { lines } => write!(f, "{lines} lines"),
            Verdict::Open { lines } => write!(f, "{lines} lines, no close yet"),
            Verdict::Tampered { line, problem } => write!(f, "line {line}: {problem}"),
        }
    }
}

/// Checks the session file read from `reader` against the chain
/// definition; `session` is the id the file is named after, when known.
///
/// # Errors
/// I/O errors reading; a broken chain is a [`Verdict::Tampered`], not an
/// error.
pub fn verify(mut reader: impl BufRead, session: Option<&str>) -> std::io::Result<Verdict> {
    let mut head = Sha256::new();
    // The previous line: its 1-based number and SHA-256.
    let mut prev: Option<(u64, String)> = None;
    let mut first: Option<Value> = None;
    let mut closed = false;
    let mut index: u64 = 0;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        let number = index + 1;
        let tampered = |line, problem| Ok(Verdict::Tampered { line, problem });
        if closed {
            return tampered(number, Problem::AfterClose);
        }
        let Some(line) = buf.strip_suffix(b"\n") else {
            // A write in progress: the recorder writes whole lines.
            break;
        };
        let Some((value, seq, line_prev)) = parse(line) else {
            return tampered(number, Problem::Unparseable);
        };
        if seq > index {
            return tampered(
                number,
                Problem::Deleted {
                    missing: seq - index,
                },
            );
        }
        if seq < index {
            return tampered(number, Problem::Repeated { seq });
        }
        match &prev {
            None if !line_prev.is_empty() => return tampered(number, Problem::BadStart),
            Some((n, hash)) if *hash != line_prev => return tampered(*n, Problem::Edited),
            _ => {}
        }
        if let (Some(want), Some(found)) = (session, value["session"].as_str()) {
            if want != found {
                return tampered(
                    number,
                    Problem::WrongSession {
                        found: found.into(),
                    },
                );
            }
        }
        match &first {
            None => first = Some(value.clone()),
            Some(first) => {
                if let Some(field) = SESSION_FIELDS.into_iter().find(|k| first[*k] != value[*k]) {
                    return tampered(number, Problem::Foreign { field });
                }
            }
        }
        if value["event"] == "close" {
            let want = hex::encode(head.clone().finalize());
            if value["lines"].as_u64() != Some(index) || value["head"].as_str() != Some(&want) {
                return tampered(number, Problem::BadHead);
            }
            closed = true;
        }
        head.update(&buf);
        prev = Some((number, hex::encode(Sha256::digest(line))));
        index += 1;
    }
    Ok(match (index, closed) {
        (0, _) => Verdict::Tampered {
            line: 1,
            problem: Problem::Empty,
        },
        (lines, true) => Verdict::Closed { lines },
        (lines, false) => Verdict::Open { lines },
    })
}

/// The line as a JSON object with its `seq` and `prev`.
fn parse(line: &[u8]) -> Option<(Value, u64, String)> {
    let value: Value = serde_json::from_slice(line).ok()?;
    let seq = value.get("seq")?.as_u64()?;
    let prev = value.get("prev")?.as_str()?.to_string();
    value.is_object().then_some((value, seq, prev))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Verdict {
        verify(text.as_bytes(), None).unwrap()
    }

    /// A valid chain of `n` lines, the last one `close` when `close`.
    fn chain(n: u64, close: bool) -> Vec<String> {
        let mut lines: Vec<String> = Vec::new();
        let mut head = Sha256::new();
        for seq in 0..n {
            let prev = lines
                .last()
                .map_or(String::new(), |l| hex::encode(Sha256::digest(l.as_bytes())));
            let line = if close && seq + 1 == n {
                let h = hex::encode(head.clone().finalize());
                format!(
                    r#"{{"session":"s-1","agent":"a","pid":1,"uid":0,"service":"x","event":"close","duration_ms":5,"lines":{seq},"head":"{h}","seq":{seq},"prev":"{prev}"}}"#
                )
            } else {
                format!(
                    r#"{{"session":"s-1","agent":"a","pid":1,"uid":0,"service":"x","event":"query","sql":"SELECT {seq}","seq":{seq},"prev":"{prev}"}}"#
                )
            };
            head.update(format!("{line}\n").as_bytes());
            lines.push(line);
        }
        lines
    }

    fn text(lines: &[String]) -> String {
        lines.iter().map(|l| format!("{l}\n")).collect()
    }

    #[test]
    fn intact_chains_pass_closed_or_open() {
        assert_eq!(check(&text(&chain(4, true))), Verdict::Closed { lines: 4 });
        assert_eq!(check(&text(&chain(3, false))), Verdict::Open { lines: 3 });
        let mut partial = text(&chain(3, false));
        partial.push_str(r#"{"session":"s-1","ev"#);
        assert_eq!(
            check(&partial),
            Verdict::Open { lines: 3 },
            "a write in progress is not counted"
        );
        assert_eq!(
            check(""),
            Verdict::Tampered {
                line: 1,
                problem: Problem::Empty
            }
        );
    }

    #[test]
    fn an_edited_line_is_named_by_the_next_lines_prev() {
        let mut lines = chain(5, true);
        lines[2] = lines[2].replace("SELECT 2", "SELECT 7");
        assert_eq!(
            check(&text(&lines)),
            Verdict::Tampered {
                line: 3,
                problem: Problem::Edited
            }
        );
        let mut lines = chain(5, true);
        lines[1] = lines[1].replacen('{', "[", 1);
        assert_eq!(
            check(&text(&lines)),
            Verdict::Tampered {
                line: 2,
                problem: Problem::Unparseable
            }
        );
    }

    #[test]
    fn deleted_repeated_and_foreign_lines_are_found() {
        let mut lines = chain(5, true);
        lines.remove(2);
        assert_eq!(
            check(&text(&lines)),
            Verdict::Tampered {
                line: 3,
                problem: Problem::Deleted { missing: 1 }
            }
        );
        let mut lines = chain(5, true);
        lines.remove(0);
        assert_eq!(
            check(&text(&lines)),
            Verdict::Tampered {
                line: 1,
                problem: Problem::Deleted { missing: 1 }
            }
        );
        let mut lines = chain(5, true);
        lines.insert(2, lines[1].clone());
        assert_eq!(
            check(&text(&lines)),
            Verdict::Tampered {
                line: 3,
                problem: Problem::Repeated { seq: 1 }
            }
        );
        let mut lines = chain(2, false);
        lines[1] = lines[1].replace(r#""agent":"a""#, r#""agent":"b""#);
        assert_eq!(
            check(&text(&lines)),
            Verdict::Tampered {
                line: 2,
                problem: Problem::Foreign { field: "agent" }
            }
        );
        assert_eq!(
            verify(text(&chain(2, true)).as_bytes(), Some("s-2")).unwrap(),
            Verdict::Tampered {
                line: 1,
                problem: Problem::WrongSession {
                    found: "s-1".into()
                }
            }
        );
    }

    #[test]
    fn the_close_line_seals_the_file() {
        let mut after = text(&chain(3, true));
        after.push_str("{}\n");
        assert_eq!(
            check(&after),
            Verdict::Tampered {
                line: 4,
                problem: Problem::AfterClose
            }
        );
        let mut lines = chain(3, true);
        lines[2] = lines[2].replace(r#""lines":2"#, r#""lines":1"#);
        assert_eq!(
            check(&text(&lines)),
            Verdict::Tampered {
                line: 3,
                problem: Problem::BadHead
            }
        );
        let mut lines = chain(3, true);
        lines[2] = lines[2].replace(r#""head":""#, r#""head":"0"#);
        assert_eq!(
            check(&text(&lines)),
            Verdict::Tampered {
                line: 3,
                problem: Problem::BadHead
            }
        );
    }

    #[test]
    fn verdicts_read_as_one_line_each() {
        assert_eq!(Verdict::Closed { lines: 12 }.to_string(), "12 lines");
        assert_eq!(
            Verdict::Tampered {
                line: 5,
                problem: Problem::Edited
            }
            .to_string(),
            "line 5: prev mismatch: this line was edited (the next line's prev does not match it)"
        );
    }
}
