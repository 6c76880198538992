//! `sluice sessions verify ID | --all`: checks session files against the
//! hash chain of [`crate::recorder::chain`] and, for a closed session, its
//! `.cast` file against the close line's `cast` (size and SHA-256), one
//! line per session:
//! ```text
//! ok s-019a2b3c4d5e-1f2e3d4c 12 lines
//! open s-019a2b3c4d60-0a0b0c0d 5 lines, no close yet
//! TAMPERED s-019a2b3c4d61-99aa88bb line 5: prev mismatch: this line was edited (…)
//! ```
//! With `--json`: `{"session", "status": "ok"|"open"|"tampered"|"error",
//! "lines"}` plus `line` and `problem` when tampered, `error` when the file
//! cannot be read. Exit 0 when every chain is intact (open sessions
//! included), 1 when any is broken or unreadable.
use std::{
    fs::{self, File},
    io::{self, BufReader},
    path::{Path, PathBuf},
};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{print_line, read_error, session_error, CliError};
use crate::recorder::chain::{self, Problem, Verdict};

/// Checks one session file; exit 1 when tampered.
pub(super) fn one(path: &Path, json: bool) -> Result<(), CliError> {
    let id = session_id(path);
    let verdict = check(path).map_err(|e| session_error(&id, path, e))?;
    report(&id, &Ok(verdict.clone()), json)?;
    if verdict.is_intact() {
        Ok(())
    } else {
        Err(CliError::Exit(1))
    }
}

/// Checks every `*.jsonl` in `sessions_dir`, oldest first; a summary goes
/// to stderr. Exit 1 when any is tampered with or unreadable.
pub(super) fn all(sessions_dir: &Path, json: bool) -> Result<(), CliError> {
    let mut files: Vec<PathBuf> = match fs::read_dir(sessions_dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(read_error(sessions_dir, e)),
    };
    files.sort();
    let (mut intact, mut open, mut broken) = (0usize, 0usize, 0usize);
    for path in &files {
        let outcome = check(path);
        match &outcome {
            Ok(Verdict::Closed { .. }) => intact += 1,
            Ok(Verdict::Open { .. }) => open += 1,
            // Deleted by retention since the directory was read.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            _ => broken += 1,
        }
        report(&session_id(path), &outcome, json)?;
    }
    eprintln!(
        "{} sessions: {intact} closed and intact, {open} open and intact so far, {broken} tampered or unreadable",
        intact + open + broken
    );
    if broken == 0 {
        Ok(())
    } else {
        Err(CliError::Exit(1))
    }
}

fn session_id(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn check(path: &Path) -> io::Result<Verdict> {
    let id = session_id(path);
    let verdict = chain::verify(BufReader::new(File::open(path)?), Some(&id))?;
    match verdict {
        Verdict::Closed { lines } if !cast_matches(path)? => Ok(Verdict::Tampered {
            line: lines,
            problem: Problem::CastChanged,
        }),
        verdict => Ok(verdict),
    }
}

/// Whether the `.cast` beside the closed session file `path` is what its
/// close line (the last line) says: absent when it lists no `cast`.
fn cast_matches(path: &Path) -> io::Result<bool> {
    let text = fs::read_to_string(path)?;
    let close: Value = text
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_default();
    let cast = match fs::read(path.with_extension("cast")) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    Ok(match (cast, close.get("cast")) {
        (None, None) => true,
        (Some(bytes), Some(summary)) => {
            summary["bytes"].as_u64() == Some(bytes.len() as u64)
                && summary["sha256"].as_str() == Some(&hex::encode(Sha256::digest(&bytes)))
        }
        _ => false,
    })
}

fn report(id: &str, outcome: &io::Result<Verdict>, json: bool) -> Result<(), CliError> {
    let id = super::clean(id);
    let (word, line) = match outcome {
        Ok(v @ Verdict::Closed { lines }) => (
            "ok",
            json!({"session": id, "status": "ok", "lines": lines, "text": v.to_string()}),
        ),
        Ok(v @ Verdict::Open { lines }) => (
            "open",
            json!({"session": id, "status": "open", "lines": lines, "text": v.to_string()}),
        ),
        Ok(v @ Verdict::Tampered { line, problem }) => (
            "TAMPERED",
            json!({"session": id, "status": "tampered", "line": line, "problem": problem.to_string(), "text": v.to_string()}),
        ),
        Err(e) => (
            "ERROR",
            json!({"session": id, "status": "error", "error": e.to_string(), "text": format!("cannot read: {e}")}),
        ),
    };
    if json {
        print_line(&line.to_string())
    } else {
        print_line(&format!(
            "{word} {id} {}",
            line["text"].as_str().unwrap_or("")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::{Event, Recorder, SessionMeta};

    fn meta() -> SessionMeta {
        SessionMeta {
            agent: "ci-bot".into(),
            pid: 1,
            uid: 0,
            service: "api".into(),
        }
    }

    #[test]
    fn all_finds_the_one_tampered_file_among_intact_ones() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Recorder::open(dir.path()).unwrap();
        let mut paths = Vec::new();
        let mut still_open = Vec::new();
        for n in 0..3 {
            let s = rec.start(meta()).unwrap();
            s.record(Event::Query {
                sql: format!("SELECT {n}"),
            })
            .unwrap();
            s.record(Event::Query {
                sql: "SELECT 2".into(),
            })
            .unwrap();
            paths.push(
                dir.path()
                    .join("sessions")
                    .join(format!("{}.jsonl", s.id())),
            );
            if n == 2 {
                still_open.push(s);
            } else {
                s.record(Event::Close { duration_ms: 1 }).unwrap();
            }
        }
        rec.flush_all();
        let sessions = dir.path().join("sessions");
        assert!(all(&sessions, false).is_ok());
        assert_eq!(check(&paths[2]).unwrap(), Verdict::Open { lines: 2 });
        let text = fs::read_to_string(&paths[1])
            .unwrap()
            .replacen("SELECT 1", "SELECT 9", 1);
        fs::write(&paths[1], text).unwrap();
        assert!(matches!(all(&sessions, false), Err(CliError::Exit(1))));
        assert!(matches!(one(&paths[1], false), Err(CliError::Exit(1))));
        assert!(one(&paths[0], false).is_ok());
        assert!(matches!(
            one(&sessions.join("s-0-0.jsonl"), false),
            Err(CliError::Runtime(_))
        ));
    }

    #[tokio::test]
    async fn an_edited_recording_is_tampered() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Recorder::open(dir.path()).unwrap();
        let s = rec.start(meta()).unwrap();
        s.terminal_output(0, bytes::Bytes::from_static(b"rm -rf build\r\n"))
            .await;
        s.record(Event::Close { duration_ms: 1 }).unwrap();
        rec.flush_all();
        let path = dir
            .path()
            .join("sessions")
            .join(format!("{}.jsonl", s.id()));
        assert!(matches!(check(&path).unwrap(), Verdict::Closed { .. }));
        let cast = path.with_extension("cast");
        let edited = fs::read_to_string(&cast)
            .unwrap()
            .replace("rm -rf", "ls -l ");
        fs::write(&cast, edited).unwrap();
        assert!(matches!(
            check(&path).unwrap(),
            Verdict::Tampered {
                problem: Problem::CastChanged,
                ..
            }
        ));
    }
}
