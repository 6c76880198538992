//! End-to-end tests for issue #2: real eBPF, real curl, Python, redis-server
//! and HTTPS upstreams, `sluice run` as a daemon, agents via `sluice exec`.
//!
//! Run as root with `cargo xtask test` (which builds `sluice` and sets
//! `SLUICE_BIN`). Each test owns its ports, cgroup, pins and temp dir.

mod bad_tokens;
mod cleanup;
mod egress;
mod harness;
mod https_swap;
mod restart;
mod token_placement;

use std::{
    io::{BufRead, BufReader},
    sync::mpsc,
    time::Duration,
};

use sluice_tests::{CurlResult, RecordedRequest};

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
    assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "no \"error\" in {body}");
    assert!(body["sluice"]["session"].as_str().is_some_and(|s| !s.is_empty()), "no sluice.session in {body}");
}

/// Asserts no trace of a placeholder token reached the upstream.
#[track_caller]
pub fn assert_no_token(req: &RecordedRequest) {
    assert!(!req.all_text().contains("slt_"), "a slt_ token reached the upstream: {:?}", req.headers);
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
        self.0.recv_timeout(WAIT).unwrap_or_else(|_| panic!("no line from the agent: {what}"))
    }
}
