use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write as _},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::Instant,
};

use super::*;
use crate::{
    cli::sessions::text,
    recorder::{Event, Recorder, RecorderOptions, SessionMeta},
};

fn collect(follower: &mut AuditFollower) -> Vec<String> {
    let mut seen = Vec::new();
    follower
        .poll(&mut |r| {
            seen.push(text(&r.value["n"]));
            Ok(())
        })
        .unwrap();
    seen
}

fn append(path: &Path, text: &str) {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

#[test]
fn follower_reads_whole_lines_only_and_survives_renames_and_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(AUDIT_FILE);
    let mut f = AuditFollower::new(dir.path());
    assert!(collect(&mut f).is_empty(), "a missing file is waited for");
    append(&path, "{\"n\":1}\n{\"n\":");
    assert_eq!(collect(&mut f), ["1"]);
    append(&path, "2}\n");
    assert_eq!(collect(&mut f), ["2"]);
    append(&path, "{\"n\":3}\n");
    // A rename outside the recorder's naming scheme (logrotate).
    fs::rename(&path, dir.path().join("audit.jsonl.1")).unwrap();
    append(&path, "{\"n\":4}\n");
    assert_eq!(
        collect(&mut f),
        ["3", "4"],
        "rest of the old file, then the new one from the start"
    );
    fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    assert!(
        collect(&mut f).is_empty(),
        "truncated (copytruncate rotation)"
    );
    append(&path, "{\"n\":5}\n");
    assert_eq!(collect(&mut f), ["5"]);
}

#[test]
fn several_rotations_between_two_polls_are_walked_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(AUDIT_FILE);
    append(&path, "{\"n\":1}\n");
    let mut f = AuditFollower::new(dir.path());
    assert_eq!(collect(&mut f), ["1"]);
    append(&path, "{\"n\":2}\n");
    fs::rename(
        &path,
        dir.path().join("audit.jsonl.20261129T085000.000001Z"),
    )
    .unwrap();
    append(&path, "{\"n\":3}\n{\"n\":4}\n");
    fs::rename(
        &path,
        dir.path().join("audit.jsonl.20261129T085000.000002Z"),
    )
    .unwrap();
    append(&path, "{\"n\":5}\n");
    assert_eq!(collect(&mut f), ["2", "3", "4", "5"]);
    append(&path, "{\"n\":6}\n");
    assert_eq!(collect(&mut f), ["6"]);
}

/// `sluice sessions tail -f --json` (the binary the suite built, from
/// `SLUICE_BIN`) on `log_dir`, killed by PID when dropped.
struct RealTail {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl RealTail {
    fn spawn(bin: &Path, log_dir: &Path) -> RealTail {
        let config = log_dir.join("sluice.toml");
        fs::write(
            &config,
            format!("[gateway]\nlog_dir = {:?}\n", log_dir.to_str().unwrap()),
        )
        .unwrap();
        let mut child = Command::new(bin)
            .args([
                "--config",
                config.to_str().unwrap(),
                "sessions",
                "tail",
                "-f",
                "--json",
            ])
            .env_remove("SLUICE_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sluice sessions tail -f");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Following once it has the audit log open.
        let audit = log_dir.join(AUDIT_FILE);
        let fd_dir = PathBuf::from(format!("/proc/{}/fd", child.id()));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !fs::read_dir(&fd_dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| fs::read_link(e.path()).is_ok_and(|t| t == audit))
        {
            assert!(
                Instant::now() < deadline,
                "sluice sessions tail -f never opened {}",
                audit.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        RealTail { child, lines }
    }
}

impl Drop for RealTail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Counts `(session, seq)` pairs; a repeat is an error.
#[derive(Default)]
struct Seen(HashMap<String, Vec<bool>>, usize);

impl Seen {
    fn add(&mut self, line: &str) {
        let v: serde_json::Value = serde_json::from_str(line).expect("whole JSON line");
        let seqs = self.0.entry(text(&v["session"])).or_default();
        let seq = v["seq"].as_u64().unwrap() as usize;
        if seqs.len() <= seq {
            seqs.resize(seq + 1, false);
        }
        assert!(!seqs[seq], "line seen twice: {line}");
        seqs[seq] = true;
        self.1 += 1;
    }

    fn assert_complete(&self, sessions: usize, per_session: usize, who: &str) {
        assert_eq!(self.0.len(), sessions, "{who}: sessions");
        for (id, seqs) in &self.0 {
            assert_eq!(seqs.len(), per_session, "{who}: lines of {id}");
            assert!(seqs.iter().all(|s| *s), "{who}: a line of {id} is missing");
        }
    }
}

const THREADS: usize = 4;
const SESSIONS_PER_THREAD: usize = 10;
/// Events per session, the close line included.
const EVENTS_PER_SESSION: usize = 5_000;
const TOTAL: usize = THREADS * SESSIONS_PER_THREAD * EVENTS_PER_SESSION;

#[test]
fn two_hundred_thousand_events_across_rotations_lose_no_line_and_tail_f_sees_them_all() {
    assert_eq!(TOTAL, 200_000);
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path();
    let rec = Recorder::open_with(
        log_dir,
        RecorderOptions {
            audit_rotate_bytes: 1 << 20,
            ..RecorderOptions::default()
        },
    )
    .unwrap();
    let real = std::env::var_os("SLUICE_BIN").map(|bin| RealTail::spawn(Path::new(&bin), log_dir));
    if real.is_none() {
        eprintln!("note: SLUICE_BIN unset (cargo xtask test sets it): the sluice binary's tail -f is not run");
    }

    // `tail -f`'s own follower, in process, polling as the command does.
    let done = Arc::new(AtomicBool::new(false));
    let follower = {
        let (done, log_dir) = (Arc::clone(&done), log_dir.to_path_buf());
        std::thread::spawn(move || {
            let mut f = AuditFollower::new(&log_dir);
            let mut seen = Seen::default();
            let deadline = Instant::now() + Duration::from_secs(300);
            while seen.1 < TOTAL && Instant::now() < deadline {
                let finished = done.load(Ordering::SeqCst);
                f.poll(&mut |r| {
                    seen.add(&r.raw);
                    Ok(())
                })
                .unwrap();
                if finished && seen.1 < TOTAL {
                    // Everything is written; one more pass must find the rest.
                    f.poll(&mut |r| {
                        seen.add(&r.raw);
                        Ok(())
                    })
                    .unwrap();
                    break;
                }
                std::thread::sleep(FOLLOW_POLL);
            }
            seen
        })
    };

    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let rec = &rec;
            scope.spawn(move || {
                for n in 0..SESSIONS_PER_THREAD {
                    let s = rec
                        .start(SessionMeta {
                            agent: format!("agent-{t}"),
                            pid: 1,
                            uid: 0,
                            service: "api".into(),
                        })
                        .unwrap();
                    for i in 0..EVENTS_PER_SESSION - 1 {
                        let path = format!("/v1/items/{t}/{n}/{i}");
                        s.record(Event::Request {
                            method: "GET".into(),
                            path,
                            status: 200,
                            kube: None,
                        })
                        .unwrap();
                    }
                    s.record(Event::Close { duration_ms: 1 }).unwrap();
                }
            });
        }
    });
    rec.flush_all();
    done.store(true, Ordering::SeqCst);

    // On disk: every line once, whole, in files no larger than the limit.
    let rotated = rotated_files(log_dir).unwrap();
    assert!(
        rotated.len() >= 2,
        "the test must cross rotations: {rotated:?}"
    );
    let mut on_disk = Seen::default();
    for file in rotated.iter().chain([&log_dir.join(AUDIT_FILE)]) {
        assert!(
            fs::metadata(file).unwrap().len() <= 1 << 20,
            "{} is over the limit",
            file.display()
        );
        for line in BufReader::new(File::open(file).unwrap()).lines() {
            on_disk.add(&line.unwrap());
        }
    }
    on_disk.assert_complete(
        THREADS * SESSIONS_PER_THREAD,
        EVENTS_PER_SESSION,
        "audit files",
    );

    let seen = follower.join().unwrap();
    seen.assert_complete(
        THREADS * SESSIONS_PER_THREAD,
        EVENTS_PER_SESSION,
        "in-process follower",
    );

    if let Some(real) = real {
        let mut seen = Seen::default();
        let deadline = Instant::now() + Duration::from_secs(120);
        while seen.1 < TOTAL {
            let left = deadline.saturating_duration_since(Instant::now());
            match real.lines.recv_timeout(left) {
                Ok(line) => seen.add(&line),
                Err(_) => panic!(
                    "sluice sessions tail -f printed {} of {TOTAL} lines",
                    seen.1
                ),
            }
        }
        seen.assert_complete(
            THREADS * SESSIONS_PER_THREAD,
            EVENTS_PER_SESSION,
            "sluice sessions tail -f",
        );
    }
}
