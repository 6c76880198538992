use std::io::BufReader;

use bytes::Bytes;
use serde_json::Value;

use super::{chain::Verdict, *};

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

fn session_path(dir: &Path, s: &SessionRecord) -> PathBuf {
    dir.join("sessions").join(format!("{}.jsonl", s.id()))
}

fn verify_file(path: &Path) -> Verdict {
    let id = path.file_stem().unwrap().to_str().unwrap();
    chain::verify(BufReader::new(File::open(path).unwrap()), Some(id)).unwrap()
}

fn request(path: &str) -> Event {
    Event::Request {
        method: "GET".into(),
        path: path.into(),
        status: 200,
        kube: None,
    }
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
    assert_eq!(mode(&session_path(&log, &s)), 0o640);
}

#[tokio::test]
async fn every_line_carries_the_contract_fields() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::open(dir.path()).unwrap();
    let s = rec.start(meta("ci-bot")).unwrap();
    s.record(request("/v1/x")).unwrap();
    s.record(Event::Masked {
        fields: vec!["ssn".into()],
        count: 3,
    })
    .unwrap();
    s.flush().await.unwrap();
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
    let masked: Value = serde_json::from_str(&lines(&dir.path().join("audit.jsonl"))[1]).unwrap();
    assert_eq!(
        (masked["event"].as_str(), masked["count"].as_u64()),
        (Some("masked"), Some(3))
    );
}

#[tokio::test]
async fn session_file_is_hash_chained_and_the_close_line_carries_the_head() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::open(dir.path()).unwrap();
    let s = rec.start(meta("ci-bot")).unwrap();
    s.record(Event::Query {
        sql: "SELECT 1".into(),
    })
    .unwrap();
    s.record(Event::Close { duration_ms: 5 }).unwrap();
    s.flush().await.unwrap();
    let path = session_path(dir.path(), &s);
    let lines = lines(&path);
    let first: Value = serde_json::from_str(&lines[0]).unwrap();
    let close: Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(
        (first["seq"].as_u64(), first["prev"].as_str()),
        (Some(0), Some(""))
    );
    assert!(first.get("head").is_none() && first.get("lines").is_none());
    assert_eq!(close["seq"], 1);
    assert_eq!(
        close["prev"],
        hex::encode(Sha256::digest(lines[0].as_bytes()))
    );
    // `head -n 1 FILE | sha256sum`
    assert_eq!(close["lines"], 1);
    assert_eq!(
        close["head"],
        hex::encode(Sha256::digest(format!("{}\n", lines[0]).as_bytes()))
    );
    assert_eq!(verify_file(&path), Verdict::Closed { lines: 2 });
}

#[tokio::test]
async fn nothing_is_recorded_after_close_and_a_dropped_session_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::open(dir.path()).unwrap();
    let s = rec.start(meta("ci-bot")).unwrap();
    s.record(Event::Close { duration_ms: 1 }).unwrap();
    assert!(s.record(request("/late")).is_err());
    s.flush().await.unwrap();
    let closed = session_path(dir.path(), &s);
    assert_eq!(lines(&closed).len(), 1);

    let t = rec.start(meta("ci-bot")).unwrap();
    t.record(request("/v1/x")).unwrap();
    t.flush().await.unwrap();
    let dropped = session_path(dir.path(), &t);
    assert_eq!(verify_file(&dropped), Verdict::Open { lines: 1 });
    drop(t);
    rec.flush_all();
    assert_eq!(verify_file(&dropped), Verdict::Closed { lines: 2 });
    assert_eq!(lines(&dir.path().join("audit.jsonl")).len(), 3);
}

#[tokio::test]
async fn verify_passes_recorder_output_and_names_an_edited_or_deleted_line() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::open(dir.path()).unwrap();
    let s = rec.start(meta("ci-bot")).unwrap();
    for path in ["/v1/a", "/v1/b", "/v1/c", "/v1/d"] {
        s.record(request(path)).unwrap();
    }
    s.record(Event::Close { duration_ms: 9 }).unwrap();
    s.flush().await.unwrap();
    let path = session_path(dir.path(), &s);
    assert_eq!(verify_file(&path), Verdict::Closed { lines: 5 });
    let original = fs::read(&path).unwrap();

    // One byte of line 2 ("/v1/b" becomes "/v1/B").
    let mut edited = original.clone();
    let at = edited.windows(5).position(|w| w == b"/v1/b").unwrap() + 4;
    edited[at] = b'B';
    fs::write(&path, &edited).unwrap();
    assert_eq!(
        verify_file(&path),
        Verdict::Tampered {
            line: 2,
            problem: chain::Problem::Edited
        }
    );

    // Line 3 deleted.
    let text = String::from_utf8(original.clone()).unwrap();
    let without: String = text
        .lines()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    fs::write(&path, without).unwrap();
    assert_eq!(
        verify_file(&path),
        Verdict::Tampered {
            line: 3,
            problem: chain::Problem::Deleted { missing: 1 }
        }
    );
    fs::write(&path, &original).unwrap();
    assert_eq!(verify_file(&path), Verdict::Closed { lines: 5 });
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
                // Dropped here: the close line is line 201.
            });
        }
    });
    rec.flush_all();
    let audit = lines(&dir.path().join("audit.jsonl"));
    assert_eq!(audit.len(), 804);
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

#[tokio::test]
async fn audit_log_rotates_at_the_configured_size() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::open_with(
        dir.path(),
        RecorderOptions {
            audit_rotate_bytes: 4096,
            ..RecorderOptions::default()
        },
    )
    .unwrap();
    let s = rec.start(meta("ci-bot")).unwrap();
    for i in 0..100 {
        s.record(request(&format!("/v1/items/{i}"))).unwrap();
    }
    s.flush().await.unwrap();
    let rotated = audit::rotated_files(dir.path()).unwrap();
    assert!(rotated.len() >= 3, "{rotated:?}");
    let mut all = Vec::new();
    for f in rotated.iter().chain([&dir.path().join("audit.jsonl")]) {
        assert!(fs::metadata(f).unwrap().len() <= 4096);
        all.extend(lines(f));
    }
    assert_eq!(all.len(), 100);
    assert_eq!(
        all,
        lines(&session_path(dir.path(), &s)),
        "audit holds the same lines, in order"
    );
}

/// As root on a filesystem with inode flags (ext4, XFS, Btrfs): the open
/// session's file refuses rewrites and deletion, and accepts both once the
/// session is closed. Elsewhere the recorder must still work.
#[tokio::test]
async fn session_file_is_append_only_while_the_session_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::open(dir.path()).unwrap();
    let s = rec.start(meta("ci-bot")).unwrap();
    s.record(request("/v1/x")).unwrap();
    s.flush().await.unwrap();
    let path = session_path(dir.path(), &s);
    let flagged = append_only::is_set(&path);
    if nix::unistd::geteuid().is_root() && !flagged {
        eprintln!(
            "note: {} does not support the append-only flag; not checked",
            dir.path().display()
        );
    }
    if flagged {
        let rewrite = OpenOptions::new().write(true).open(&path);
        assert_eq!(rewrite.unwrap_err().raw_os_error(), Some(libc::EPERM));
        assert_eq!(
            fs::remove_file(&path).unwrap_err().raw_os_error(),
            Some(libc::EPERM)
        );
        assert!(fs::rename(&path, dir.path().join("moved")).is_err());
    }
    s.record(Event::Close { duration_ms: 3 }).unwrap();
    s.flush().await.unwrap();
    assert!(!append_only::is_set(&path), "cleared at close");
    assert_eq!(verify_file(&path), Verdict::Closed { lines: 2 });
    fs::remove_file(&path).unwrap();
}

#[tokio::test]
async fn a_restarted_recorder_clears_flags_left_by_a_crashed_one() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::open(dir.path()).unwrap();
    let s = rec.start(meta("ci-bot")).unwrap();
    s.record(request("/v1/x")).unwrap();
    s.flush().await.unwrap();
    let path = session_path(dir.path(), &s);
    // A crash: the record is never dropped, so no close line is written.
    std::mem::forget(s);
    let _restarted = Recorder::open(dir.path()).unwrap();
    assert!(!append_only::is_set(&path));
    assert_eq!(verify_file(&path), Verdict::Open { lines: 1 });
}

#[test]
fn recorder_types_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Recorder>();
    assert_send_sync::<SessionRecord>();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_are_written_by_the_writer_thread_not_the_flushing_one() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::open(dir.path()).unwrap();
    let writers = Arc::new(Mutex::new(Vec::new()));
    let seen = writers.clone();
    rec.observe_with(Observer(Box::new(move |line| {
        if !matches!(line.event, Event::Request { .. }) {
            return;
        }
        let name = std::thread::current().name().map(str::to_string);
        seen.lock().unwrap().push(name);
    })));
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let s = rec.start(meta("ci-bot")).unwrap();
            tokio::spawn(async move {
                s.record(request(&format!("/v1/{i}"))).unwrap();
                // A flushed line is in the file when flush resolves.
                s.flush().await.unwrap();
                let path = s.recorder.sessions_dir.join(format!("{}.jsonl", s.id()));
                assert_eq!(lines(&path).len(), 1);
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let names = writers.lock().unwrap().clone();
    assert_eq!(names.len(), 50);
    assert!(
        names
            .iter()
            .all(|n| n.as_deref() == Some("sluice-recorder")),
        "written on {names:?}"
    );
}

#[tokio::test]
async fn terminal_output_goes_to_a_cast_file_the_close_line_summarises() {
    let dir = tempfile::tempdir().unwrap();
    let options = RecorderOptions {
        cast_max_bytes: 12,
        ..RecorderOptions::default()
    };
    let rec = Recorder::open_with(dir.path(), options).unwrap();
    let s = rec.start(meta("ci-bot")).unwrap();
    s.terminal_size(120, 40, Some("xterm-256color"));
    s.terminal_output(0, Bytes::from_static(b"$ echo hi\r\n"))
        .await;
    s.terminal_output(0, Bytes::from_static(b"hi\r\n$ ")).await;
    s.record(Event::Close { duration_ms: 5 }).unwrap();
    s.flush().await.unwrap();
    rec.flush_all();
    let cast_path = session_path(dir.path(), &s).with_extension("cast");
    let cast = fs::read(&cast_path).unwrap();
    let mode = fs::metadata(&cast_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
    let events: Vec<Value> = cast
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(events[0]["version"], 2);
    assert_eq!(
        (events[0]["width"].as_u64(), events[0]["height"].as_u64()),
        (Some(120), Some(40))
    );
    assert_eq!(events[0]["env"]["TERM"], "xterm-256color");
    let output: String = events[1..]
        .iter()
        .filter(|e| e[1] == "o")
        .map(|e| e[2].as_str().unwrap())
        .collect();
    assert_eq!(output, "$ echo hi\r\nh", "the first 12 bytes only");
    assert!(events
        .iter()
        .any(|e| e[1] == "m" && e[2].as_str().unwrap().contains("cast_max_bytes")));
    let close: Value =
        serde_json::from_str(lines(&session_path(dir.path(), &s)).last().unwrap()).unwrap();
    assert_eq!(close["cast"]["bytes"], cast.len() as u64);
    assert_eq!(close["cast"]["sha256"], hex::encode(Sha256::digest(&cast)));
    assert_eq!(close["cast"]["cut"], 5);
    assert!(matches!(
        verify_file(&session_path(dir.path(), &s)),
        Verdict::Closed { .. }
    ));
}

#[tokio::test]
async fn a_session_without_terminal_output_has_no_cast_file() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::open(dir.path()).unwrap();
    let s = rec.start(meta("ci-bot")).unwrap();
    s.terminal_size(80, 24, None);
    s.record(Event::Close { duration_ms: 1 }).unwrap();
    s.flush().await.unwrap();
    rec.flush_all();
    assert!(!session_path(dir.path(), &s).with_extension("cast").exists());
    let close = lines(&session_path(dir.path(), &s)).pop().unwrap();
    assert!(!close.contains("\"cast\""), "{close}");
}
