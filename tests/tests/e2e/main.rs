//! End-to-end tests: real eBPF, real curl, Python, psql, pgbench,
//! tokio-postgres, redis-server, HTTPS upstreams and PostgreSQL servers,
//! `sluice run` as a daemon, agents via `sluice exec`.
//!
//! Run as root with `cargo xtask test` (which builds `sluice` and sets
//! `SLUICE_BIN`). Each test owns its ports, cgroup, pins and temp dir.

mod approvals;
mod attack_bypass;
mod attack_http_policy;
mod attack_http_review;
mod attack_http_review_mask;
mod attack_malformed;
mod attack_secrets;
mod attack_statements;
mod bad_tokens;
mod cleanup;
mod console;
mod console_roles;
mod containers;
mod egress;
mod faults;
mod harness;
mod http_clients;
mod https_swap;
mod install_package;
mod install_readiness;
mod install_units;
mod kube_client_cert;
mod kube_exec;
mod kubernetes;
mod load;
mod mysql;
mod mysql_faults;
mod mysql_rows;
mod notify;
mod oidc;
mod operate;
mod own_uid;
mod pg_clients;
mod pg_logins;
mod pg_statements;
mod pg_upstream_trust;
mod records;
mod redis_down;
mod redis_tamper;
mod replay;
mod restart;
mod run_in_agent;
mod ssh;
mod ssh_push;
mod ssh_refused;
mod token_placement;
mod tuple_map;
mod two_gateways;

use std::{
    io::{BufRead, BufReader},
    sync::mpsc,
    time::Duration,
};

use serde_json::Value;
use sluice_tests::{CurlResult, RecordedRequest, ServiceSpec, Stack};

/// How long to wait for anything asynchronous (a request at the upstream,
/// a session record line).
pub const WAIT: Duration = Duration::from_secs(10);

/// `Authorization: Bearer <token>`.
pub fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

/// Asserts curl completed with `status`, showing everything useful if not.
#[track_caller]
pub fn assert_status(res: &CurlResult, status: u16) {
    assert_eq!(
        (res.exit, res.status),
        (0, status),
        "curl exit {} status {} (want {status}); stderr: {}; body: {}",
        res.exit,
        res.status,
        res.stderr.trim(),
        res.body
    );
}

/// Asserts the body is Sluice's error contract:
/// `{"error": …, "sluice": {"session": …}}`.
#[track_caller]
pub fn assert_sluice_error_body(res: &CurlResult) {
    let body = res.json().expect("error body is JSON");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "no \"error\" in {body}"
    );
    assert!(
        body["sluice"]["session"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "no sluice.session in {body}"
    );
}

/// Asserts no trace of a placeholder token reached the upstream.
#[track_caller]
pub fn assert_no_token(req: &RecordedRequest) {
    assert!(
        !req.all_text().contains("slt_"),
        "a slt_ token reached the upstream: {:?}",
        req.headers
    );
}

/// Lines of a child's stdout, readable with a deadline.
pub struct Lines(mpsc::Receiver<String>);

impl Lines {
    pub fn new(stdout: impl std::io::Read + Send + 'static) -> Lines {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines(rx)
    }

    /// The next line, or a panic naming `what` after [`WAIT`].
    #[track_caller]
    pub fn next(&self, what: &str) -> String {
        self.0
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("no line from the agent: {what}"))
    }
}

/// The tokio-postgres agent (`src/bin/pg_client.rs`).
pub const PG_CLIENT: &str = env!("CARGO_BIN_EXE_pg_client");
/// The PostgreSQL service of the `pg_*` tests and the name agents dial.
pub const DB: &str = "billing-db";
pub const DB_HOST: &str = "db.internal";
/// The guardrails of the PostgreSQL service.
pub const DB_DENY: &str = r#"deny = ["DROP", "TRUNCATE", "ALTER", "GRANT", "DELETE_WITHOUT_WHERE", "UPDATE_WITHOUT_WHERE", "COPY_TO_PROGRAM", "DO"]"#;

/// `billing-db` on `db.internal`: deny [`DB_DENY`], mask `ssn`.
pub fn billing_db() -> ServiceSpec {
    ServiceSpec::postgres(DB, DB_HOST)
        .extra(DB_DENY)
        .extra(r#"mask = ["ssn"]"#)
}

/// A stack with [`billing_db`] alone.
pub fn billing_stack(label: &str) -> Stack {
    Stack::builder(label)
        .service(billing_db())
        .start()
        .expect("start the stack")
}

/// Runs [`PG_CLIENT`] as the agent with `steps`; its JSON lines.
pub fn pg_client(stack: &Stack, conninfo: &str, steps: &[&str]) -> Vec<Value> {
    let mut argv = vec![PG_CLIENT, conninfo];
    argv.extend_from_slice(steps);
    let out = stack.sluice.exec(stack.agent(), &argv).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| {
                panic!(
                    "pg_client printed {l:?}: {e}; stderr: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
        })
        .collect()
}

/// The events of every session whose `open` the audit log holds, for
/// `service`, in order: one `Vec` per session.
pub fn sessions_of(stack: &Stack, service: &str) -> Vec<Vec<Value>> {
    let audit = stack.sluice.audit_events().unwrap();
    audit
        .iter()
        .filter(|e| e["event"] == "open" && e["service"] == service)
        .map(|e| {
            stack
                .sluice
                .session_events(e["session"].as_str().unwrap())
                .unwrap()
        })
        .collect()
}

/// The asciicast v2 recording of `session` (its events, in order): the
/// `.cast` file, checked against the size and SHA-256 its `close` line
/// carries, with event times that never go back. Returns the header and
/// the text of the output (`"o"`) events.
pub fn recording(stack: &Stack, session: &[Value]) -> (Value, String) {
    use sha2::Digest;
    let id = session[0]["session"].as_str().unwrap();
    let path = stack.sluice.log_dir.join(format!("sessions/{id}.cast"));
    let cast = std::fs::read(&path).expect("the session's .cast file");
    let close = events(session, "close")[0];
    assert_eq!(close["cast"]["bytes"], cast.len() as u64, "{close}");
    assert_eq!(
        close["cast"]["sha256"],
        hex::encode(sha2::Sha256::digest(&cast)),
        "{close}"
    );
    let mode = std::fs::metadata(&path).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o640
    );
    let text = String::from_utf8(cast).unwrap();
    let mut lines = text.lines();
    let header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["version"], 2, "{header}");
    let mut output = String::new();
    let mut last = 0.0;
    for line in lines {
        let event: Vec<Value> = serde_json::from_str(line).unwrap();
        let t = event[0].as_f64().unwrap();
        assert!(t >= last, "event times never go back: {line}");
        last = t;
        if event[1] == "o" {
            output.push_str(event[2].as_str().unwrap());
        }
    }
    (header, output)
}

/// The events named `event` among `events`.
pub fn events<'a>(events: &'a [Value], event: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == event).collect()
}

/// A process's memory while something ran ([`with_rss_sampled`]), in KiB.
#[derive(Debug, Clone, Copy)]
pub struct RssSample {
    /// `VmRSS` before.
    pub idle: u64,
    /// The highest `VmRSS` sampled (every 20 ms) while it ran.
    pub peak: u64,
    /// `VmHWM` after.
    pub hwm: u64,
}

impl RssSample {
    /// Asserts what streamed was not held: growth over idle under 16 MiB.
    /// The idle RSS of the debug binary the suite runs grows with the code
    /// linked in, which says nothing about buffering, so the absolute cap
    /// (128 MiB) only guards against a runaway.
    #[track_caller]
    pub fn assert_streamed(&self) {
        let RssSample { idle, peak, hwm } = *self;
        let growth = peak.saturating_sub(idle);
        assert!(
            growth < 16 * 1024,
            "sluice RSS grew by {growth} KiB while streaming (idle {idle} KiB): rows are being held"
        );
        assert!(
            peak < 128 * 1024,
            "sluice RSS reached {peak} KiB while streaming"
        );
        assert!(
            hwm.saturating_sub(idle) < 16 * 1024 && hwm < 128 * 1024,
            "sluice VmHWM {hwm} KiB (idle {idle} KiB)"
        );
    }
}

/// `VmRSS` and `VmHWM` of `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Runs `f` while sampling the memory of process `pid`.
pub fn with_rss_sampled<T>(pid: u32, f: impl FnOnce() -> T) -> (T, RssSample) {
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    };
    let (idle, _) = rss_kib(pid).expect("the process's memory");
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid).map_or(0, |r| r.0));
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    let out = f();
    done.store(true, Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    let (_, hwm) = rss_kib(pid).expect("the process's memory");
    (out, RssSample { idle, peak, hwm })
}
