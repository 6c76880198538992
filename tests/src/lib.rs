//! The end-to-end harness for Sluice, written once and shared by every test
//! in `tests/tests/` and by the demo (`src/bin/demo.rs`).
//!
//! A test builds a [`Stack`]: its own redis-server on a free port, a test CA,
//! one real HTTPS (or HTTP) upstream or PostgreSQL server (`initdb` in a
//! temp dir) per service on `127.0.0.x`, and `sluice run` with a temporary config whose single agent owns a fresh
//! cgroup v2 directory (`sluice-test/<unique>`) and whose pins live in a
//! fresh bpffs directory. The agent's commands run through `sluice exec`,
//! exactly as a user would run them.
//!
//! Safety, enforced here rather than in each test:
//! - eBPF programs are attached only to the cgroup this harness created,
//!   never to the cgroup2 root;
//! - traffic goes only to loopback (`127.0.0.0/8`, `::1`), with host names
//!   mapped by `curl --resolve`, the service's `resolve` key or a private
//!   `/etc/hosts` bind mount in the agent's own mount namespace; the
//!   container tests add a bridge and network namespaces of their own
//!   (`10.213.0.0/16`), removed on drop;
//! - teardown runs on drop, on failure too: `sluice uninstall`, processes
//!   killed by PID, cgroup removed, pin directory removed;
//! - waiting is polling against a deadline, never a bare sleep.
//!
//! Requires root, the `sluice` binary (`SLUICE_BIN`, else
//! `target/debug/sluice`), redis-server, curl, python3-requests, bpftool,
//! PostgreSQL 15 server binaries, psql and pgbench, mariadb-server and
//! mariadb-client, OpenSSH's sshd, ssh, scp, sftp and ssh-keygen with git
//! for the SSH tests ([`sshd`]), and for the container tests
//! ([`container`]) runc and iproute2's `ip`, and openssl for the test OIDC
//! issuer's RSA keys ([`oidc_issuer`]).

pub mod approvals;
pub mod browser;
pub mod ca;
pub mod cgroup;
pub mod console;
pub mod container;
pub mod echo_upstream;
pub mod kube_api;
pub mod mariadb;
pub mod mysql_gate;
pub mod oidc_issuer;
pub mod postgres;
pub mod process;
pub mod redis;
pub mod redteam;
pub mod rogue_postgres;
pub mod second_gateway;
pub mod sluice;
pub mod sshd;
pub mod stack;
pub mod upstream;

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

pub use ca::TestCa;
pub use postgres::{HbaMethod, Postgres, PsqlResult};
pub use redis::Redis;
pub use sluice::{Sluice, TeardownReport};
pub use stack::{Backend, Credential, CurlResult, Protocol, ServiceSpec, Stack};
pub use upstream::{RecordedRequest, Upstream};

/// The `sluice` binary under test: `SLUICE_BIN`, else `<workspace>/target/debug/sluice`.
pub fn sluice_bin() -> PathBuf {
    match std::env::var_os("SLUICE_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/sluice"),
    }
}

/// A name unique to this process and call, safe for paths and cgroup names:
/// `<label>-<pid>-<n>`.
pub fn unique_name(label: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let label: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(24)
        .collect();
    format!(
        "{label}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// `n` random bytes from the kernel, hex encoded (2n characters).
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    hex::encode(buf)
}

/// A fresh secret value: recognisable, long enough never to occur by chance.
pub fn random_secret() -> String {
    format!("sk_test_{}", random_hex(16))
}

/// Polls `check` every 20 ms until it returns `Some`, or fails after
/// `timeout` with `what` in the message.
pub fn poll<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts that `secret` occurs in none of `texts` (label, content). On a
/// hit it panics naming the source and the offset, never the secret.
pub fn assert_no_secret(secret: &str, texts: &[(String, String)]) {
    assert!(
        secret.len() >= 8,
        "secret too short to scan for meaningfully"
    );
    let hits: Vec<String> = texts
        .iter()
        .filter_map(|(label, text)| text.find(secret).map(|at| format!("{label} (byte {at})")))
        .collect();
    assert!(
        hits.is_empty(),
        "the secret leaked into: {}",
        hits.join(", ")
    );
}

/// The hex SHA-256 of `s`, for showing that two values match without
/// printing either.
pub fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}
