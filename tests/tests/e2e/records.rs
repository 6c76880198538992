//! Session records the security team can trust (issue 5): `sessions tail
//! -f` watches agents live, `replay` tells what a session did, and `verify`
//! proves a record was not edited, against records the daemon really wrote.
use std::{
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;
use sluice_tests::{process, ServiceSpec, Stack};

use crate::{assert_status, bearer, WAIT};

const SERVICE: &str = "payments-api";
const HOST: &str = "api.payments.test";

fn payments_stack(label: &str) -> Stack {
    Stack::builder(label)
        .agent("ci-bot")
        .service(
            ServiceSpec::https(SERVICE, HOST)
                .extra(r#"deny = [{ method = "DELETE", path = "/v1/customers/*" }]"#),
        )
        .start()
        .expect("start the stack")
}

/// `sluice sessions tail -f ARGS` as a child of the test, its stdout lines
/// stamped with the time they were read; killed by PID when dropped.
struct Tail {
    child: Child,
    lines: mpsc::Receiver<(SystemTime, String)>,
}

impl Tail {
    /// Starts the command and returns once it has `audit.jsonl` open.
    fn follow(stack: &Stack, args: &[&str]) -> Tail {
        let mut cmd = stack.sluice.command(&["sessions", "tail", "-f"]);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = process::die_with_parent(&mut cmd)
            .spawn()
            .expect("start sluice sessions tail -f");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send((SystemTime::now(), line)).is_err() {
                    break;
                }
            }
        });
        let audit = stack.sluice.log_dir.join("audit.jsonl");
        let fds = PathBuf::from(format!("/proc/{}/fd", child.id()));
        sluice_tests::poll("sessions tail -f to open audit.jsonl", WAIT, || {
            fs::read_dir(&fds)
                .ok()?
                .flatten()
                .any(|e| fs::read_link(e.path()).is_ok_and(|t| t == audit))
                .then_some(())
        })
        .unwrap();
        Tail { child, lines }
    }

    /// The next line and when it was printed, or a panic naming `what`.
    #[track_caller]
    fn next(&self, what: &str) -> (SystemTime, String) {
        self.lines
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("sessions tail -f printed no line for {what}"))
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        process::stop(&mut self.child, Duration::from_secs(2));
    }
}

/// A record's `ts` (`2026-11-29T08:50:00.123456Z`, UTC) as a time.
fn record_time(ts: &str) -> SystemTime {
    let num = |range: std::ops::Range<usize>| -> i64 {
        ts[range].parse().unwrap_or_else(|_| panic!("bad ts {ts}"))
    };
    let (y, m, d) = (num(0..4), num(5..7), num(8..10));
    // Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant).
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let secs = days * 86_400 + num(11..13) * 3600 + num(14..16) * 60 + num(17..19);
    let micros: u64 = ts[20..26].parse().unwrap_or_else(|_| panic!("bad ts {ts}"));
    UNIX_EPOCH + Duration::from_secs(secs as u64) + Duration::from_micros(micros)
}

/// `sluice sessions ARGS`, whatever its exit status.
fn sessions(stack: &Stack, args: &[&str]) -> Output {
    let mut all = vec!["sessions"];
    all.extend_from_slice(args);
    stack
        .sluice
        .cli_output(&all, None)
        .expect("run sluice sessions")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits for the `close` of the session that served `path`, returns its id.
fn closed_session_of(stack: &Stack, path: &str) -> String {
    let request = stack
        .sluice
        .wait_for_event(&format!("a request event for {path}"), WAIT, |e| {
            e["event"] == "request" && e["path"] == path
        })
        .unwrap();
    let id = request["session"].as_str().unwrap().to_string();
    stack
        .sluice
        .wait_for_event("the close line", WAIT, |e| {
            e["event"] == "close" && e["session"] == id.as_str()
        })
        .unwrap();
    id
}

#[test]
fn records_live_tail_shows_a_curl_session_in_order_within_a_second_of_each_event() {
    let stack = payments_stack("records-tail");
    let token = stack.token(SERVICE).unwrap();
    let json = Tail::follow(&stack, &["--json"]);
    let requests_only = Tail::follow(
        &stack,
        &[
            "--service",
            SERVICE,
            "--agent",
            "ci-bot",
            "--event",
            "request",
        ],
    );

    let res = stack
        .curl(&[
            "--http1.1",
            "-H",
            &bearer(&token),
            &stack.url(SERVICE, "/v1/charges?limit=1"),
        ])
        .unwrap();
    assert_status(&res, 200);

    let mut events = Vec::new();
    let mut session = None;
    while events.last().is_none_or(|e: &Value| e["event"] != "close") {
        let (printed, line) = json.next("the curl session");
        let e: Value = serde_json::from_str(&line)
            .unwrap_or_else(|_| panic!("--json prints record lines: {line}"));
        let id = session.get_or_insert_with(|| e["session"].as_str().unwrap().to_string());
        assert_eq!(e["session"], id.as_str(), "one session only");
        let lag = printed
            .duration_since(record_time(e["ts"].as_str().unwrap()))
            .unwrap_or_default();
        assert!(
            lag < Duration::from_secs(1),
            "{} printed {lag:?} after it was recorded",
            e["event"]
        );
        events.push(e);
    }
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["open", "auth_ok", "request", "response", "close"]);
    assert!(
        events.iter().enumerate().all(|(i, e)| e["seq"] == i),
        "seq 0, 1, 2, 3, 4: {events:?}"
    );
    assert_eq!(
        events[3]["status"].as_u64(),
        Some(200),
        "the response line carries the status and size"
    );
    assert!(
        events[3]["bytes"].as_u64().is_some_and(|b| b > 0),
        "{:?}",
        events[3]
    );
    assert_eq!(
        (events[2]["method"].as_str(), events[2]["status"].as_u64()),
        (Some("GET"), Some(200))
    );

    let (_, human) = requests_only.next("the filtered request");
    let id = session.unwrap();
    assert!(
        human.contains(&format!(
            " {id} ci-bot {SERVICE} request GET /v1/charges 200"
        )),
        "human tail line: {human}"
    );
    assert!(
        requests_only.lines.try_recv().is_err(),
        "--event request shows nothing else"
    );
    stack.assert_no_secret_leaked();
}

/// Whether `dir`'s filesystem takes the append-only inode flag.
fn supports_append_only(dir: &Path) -> bool {
    let probe = dir.join("append-only-probe");
    fs::write(&probe, "").unwrap();
    let set = Command::new("chattr")
        .arg("+a")
        .arg(&probe)
        .status()
        .is_ok_and(|s| s.success());
    let _ = Command::new("chattr").arg("-a").arg(&probe).status();
    let _ = fs::remove_file(&probe);
    set
}

#[test]
fn records_verify_passes_a_daemon_session_and_names_an_edited_or_deleted_line() {
    let stack = payments_stack("records-verify");
    let token = stack.token(SERVICE).unwrap();
    let ca = stack.sluice.ca_cert_path().unwrap();
    // An agent that keeps its keep-alive connection (its session) open
    // until told to go on.
    const SCRIPT: &str = r#"
import sys, requests
s = requests.Session()
h = {"Authorization": "Bearer " + sys.argv[2]}
print(s.get(sys.argv[1] + "/v1/charges/first", headers=h, timeout=15).status_code, flush=True)
sys.stdin.readline()
print(s.get(sys.argv[1] + "/v1/charges/second", headers=h, timeout=15).status_code, flush=True)
"#;
    let base = stack.url(SERVICE, "");
    let mut agent = stack
        .spawn_agent_with_hosts(
            &[("REQUESTS_CA_BUNDLE", ca.to_str().unwrap())],
            &["python3", "-c", SCRIPT, &base, &token],
        )
        .unwrap();
    let agent_out = crate::Lines::new(agent.stdout.take().unwrap());
    assert_eq!(agent_out.next("the first status"), "200");

    // Open: the chain so far verifies, and the file refuses rewrites.
    let request = stack
        .sluice
        .wait_for_event("the first request", WAIT, |e| {
            e["event"] == "request" && e["path"] == "/v1/charges/first"
        })
        .unwrap();
    let id = request["session"].as_str().unwrap().to_string();
    stack
        .sluice
        .wait_for_event("the first response", WAIT, |e| {
            e["event"] == "response" && e["session"] == id.as_str()
        })
        .unwrap();
    let file = stack
        .sluice
        .log_dir
        .join("sessions")
        .join(format!("{id}.jsonl"));
    let out = sessions(&stack, &["verify", &id]);
    assert!(out.status.success(), "verify of an open session: {out:?}");
    assert_eq!(stdout(&out), format!("open {id} 4 lines, no close yet\n"));
    if supports_append_only(&stack.sluice.log_dir) {
        let rewrite = fs::OpenOptions::new().write(true).open(&file);
        assert_eq!(
            rewrite.map(drop).unwrap_err().raw_os_error(),
            Some(libc::EPERM),
            "open session file is append-only"
        );
        assert!(
            fs::remove_file(&file).is_err(),
            "open session file cannot be deleted"
        );
    } else {
        eprintln!(
            "note: {} takes no inode flags; append-only not checked",
            stack.sluice.log_dir.display()
        );
    }

    let mut stdin = agent.stdin.take().unwrap();
    writeln!(stdin).unwrap();
    drop(stdin);
    assert_eq!(agent_out.next("the second status"), "200");
    assert!(
        process::wait_timeout(&mut agent, WAIT)
            .unwrap()
            .is_some_and(|s| s.success()),
        "agent exits 0"
    );
    stack
        .sluice
        .wait_for_event("the close line", WAIT, |e| {
            e["event"] == "close" && e["session"] == id.as_str()
        })
        .unwrap();

    // Closed and untouched: ok, for one id and for --all.
    let out = sessions(&stack, &["verify", &id]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), format!("ok {id} 7 lines\n"));
    assert!(sessions(&stack, &["verify", "--all"]).status.success());
    let original = fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    assert_eq!(
        lines.len(),
        7,
        "open, auth_ok, request, response, request, response, close"
    );

    // One byte of line 3 (the first request's path).
    let edited = original.replacen("/v1/charges/first", "/v1/charges/firsT", 1);
    assert_eq!(edited.len(), original.len());
    fs::write(&file, &edited).unwrap();
    let out = sessions(&stack, &["verify", &id]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stdout(&out).starts_with(&format!("TAMPERED {id} line 3: prev mismatch")),
        "{}",
        stdout(&out)
    );
    let all = sessions(&stack, &["verify", "--all", "--json"]);
    assert_eq!(all.status.code(), Some(1));
    let verdict: Value =
        serde_json::from_str(stdout(&all).lines().find(|l| l.contains(&id)).unwrap()).unwrap();
    assert_eq!(
        (verdict["status"].as_str(), verdict["line"].as_u64()),
        (Some("tampered"), Some(3))
    );

    // Line 4 deleted.
    let without: String = lines
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3)
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    fs::write(&file, without).unwrap();
    let out = sessions(&stack, &["verify", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stdout(&out),
        format!("TAMPERED {id} line 4: seq gap: 1 line deleted before it\n")
    );

    // A line appended after close.
    fs::write(&file, format!("{original}{}\n", lines[2])).unwrap();
    let out = sessions(&stack, &["verify", &id]);
    assert_eq!(
        (out.status.code(), stdout(&out)),
        (
            Some(1),
            format!("TAMPERED {id} line 8: data after the close line\n")
        )
    );

    fs::write(&file, &original).unwrap();
    assert!(
        sessions(&stack, &["verify", &id]).status.success(),
        "restored file verifies again"
    );
    stack.assert_no_secret_leaked();
}

#[test]
fn records_replay_and_list_show_what_an_http_session_did() {
    let stack = payments_stack("records-replay");
    let token = stack.token(SERVICE).unwrap();
    let (charges, customer) = (
        stack.url(SERVICE, "/v1/charges?limit=1"),
        stack.url(SERVICE, "/v1/customers/42"),
    );
    // Two requests on one connection: one session.
    let res = stack
        .curl(&["--http1.1", "-H", &bearer(&token), &charges, &customer])
        .unwrap();
    assert_eq!(res.exit, 0, "{}", res.stderr);
    let read = closed_session_of(&stack, "/v1/customers/42");
    let res = stack
        .curl(&[
            "--http1.1",
            "-X",
            "DELETE",
            "-H",
            &bearer(&token),
            &customer,
        ])
        .unwrap();
    assert_status(&res, 403);
    let denied = stack
        .sluice
        .wait_for_event("the denial", WAIT, |e| e["event"] == "denied")
        .unwrap()["session"]
        .as_str()
        .unwrap()
        .to_string();
    stack
        .sluice
        .wait_for_event("its close", WAIT, |e| {
            e["event"] == "close" && e["session"] == denied.as_str()
        })
        .unwrap();

    let replay = stdout(&sessions(&stack, &["replay", &read]));
    let lines: Vec<&str> = replay.lines().collect();
    assert!(
        lines[0].starts_with(&format!("session {read} agent ci-bot (pid ")),
        "{replay}"
    );
    assert!(
        lines[0].ends_with(&format!("service {SERVICE}")),
        "{replay}"
    );
    let body: Vec<String> = lines[1..]
        .iter()
        .map(|l| l.split_once("s  ").expect("+offset column").1.to_string())
        .collect();
    assert!(lines[1..].iter().all(|l| l.starts_with('+')), "{replay}");
    assert!(body[0].starts_with("open       https to "), "{replay}");
    assert!(body[1].starts_with("auth_ok    token "), "{replay}");
    // The path as policy saw it: the query string is not recorded.
    assert_eq!(body[2], "GET        /v1/charges -> 200");
    assert!(
        body[3].starts_with("             -> response 200, ") && body[3].ends_with(" bytes"),
        "{replay}"
    );
    assert_eq!(body[4], "GET        /v1/customers/42 -> 200");
    assert!(
        body[5].starts_with("             -> response 200, "),
        "{replay}"
    );
    assert!(body[6].starts_with("close      after "), "{replay}");
    assert_eq!(body.len(), 7, "{replay}");
    let paced = stdout(&sessions(&stack, &["replay", &read, "--speed", "1000"]));
    assert_eq!(
        paced, replay,
        "--speed changes the pace, not the transcript"
    );

    let replay = stdout(&sessions(&stack, &["replay", &denied]));
    assert!(
        replay
            .lines()
            .any(|l| l.contains("   -> denied: ") && l.contains("/v1/customers/")),
        "{replay}"
    );

    let list = stdout(&sessions(
        &stack,
        &["list", "--since", "1h", "--agent", "ci-bot", "--json"],
    ));
    let rows: Vec<Value> = list
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let row = |id: &str| {
        rows.iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("{id} not listed: {list}"))
            .clone()
    };
    let (r, d) = (row(&read), row(&denied));
    assert_eq!(
        (
            r["requests"].as_u64(),
            r["denials"].as_u64(),
            r["service"].as_str()
        ),
        (Some(2), Some(0), Some(SERVICE))
    );
    assert_eq!(
        (d["requests"].as_u64(), d["denials"].as_u64()),
        (Some(0), Some(1))
    );
    assert!(r["duration_ms"].is_u64() && r["start"].is_string());
    let table = stdout(&sessions(&stack, &["list", "--since", "1h"]));
    assert!(table.starts_with("ID "), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&read) && l.contains(" ci-bot ")),
        "{table}"
    );
    assert!(
        stdout(&sessions(&stack, &["list", "--agent", "someone-else"]))
            .lines()
            .count()
            == 1,
        "header only"
    );
    assert!(stdout(&sessions(
        &stack,
        &["list", "--since", "2999-01-01T00:00:00Z", "--json"]
    ))
    .is_empty());
    stack.assert_no_secret_leaked();
}
