//! `cargo xtask soak`: the long runs issue 8 keeps out of `cargo xtask test`.
//!
//! 1. Every cargo-fuzz target in `fuzz/` for `--fuzz-secs` each (default
//!    900 s, the 15 minutes), one after another, seeded from the
//!    committed `fuzz/corpus/<target>/` and growing `fuzz/runs/<target>/`
//!    (not committed). The exec count of each run is printed; a crash leaves
//!    its input in `fuzz/artifacts/<target>/` and fails the soak: copy it to
//!    `fuzz/corpus/<target>/regress-<what>` once fixed, so the normal suite
//!    replays it (`tests/tests/fuzz_corpus.rs`).
//! 2. The load tests (`soak_*` tests of the e2e suite, as root, one at a
//!    time): 1,000 concurrent agent clients mixing PostgreSQL and HTTPS for
//!    60 s, then 200 for 10 minutes with Sluice's RSS compared after the
//!    first minute and at the end (issue 7's memory soak).
use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};

use crate::{build, setup, sh};

/// The cargo-fuzz targets (`fuzz/fuzz_targets/<name>.rs`).
pub const TARGETS: &[&str] = &[
    "pg_frontend",
    "pg_backend_mask",
    "http_token",
    "json_mask",
    "sql_classify",
    "scram",
];

/// What to run.
pub struct Options {
    pub fuzz_secs: u64,
    pub skip_fuzz: bool,
    pub skip_load: bool,
    /// Only these fuzz targets (all when empty).
    pub only: Vec<String>,
}

pub fn run(opts: &Options) -> Result<()> {
    let started = Instant::now();
    let mut report = Vec::new();
    let mut failed = false;
    if !opts.skip_fuzz {
        for target in TARGETS
            .iter()
            .filter(|t| opts.only.is_empty() || opts.only.iter().any(|o| o == *t))
        {
            match fuzz(target, opts.fuzz_secs) {
                Ok(execs) => report.push(format!(
                    "fuzz {target}: {execs} execs in {} s, no crash",
                    opts.fuzz_secs
                )),
                Err(e) => {
                    failed = true;
                    report.push(format!("fuzz {target}: FAILED: {e:#}"));
                }
            }
        }
    }
    if !opts.skip_load {
        match load() {
            Ok(()) => report
                .push("load: 1,000 agents x 60 s, and 10 min without RSS growth, passed".into()),
            Err(e) => {
                failed = true;
                report.push(format!("load: FAILED: {e:#}"));
            }
        }
    }
    println!(
        "\n==== cargo xtask soak summary ({:.0} s) ====",
        started.elapsed().as_secs_f64()
    );
    for line in &report {
        println!("{line}");
    }
    if failed {
        bail!("soak failed");
    }
    Ok(())
}

/// Runs one fuzz target for `secs`; returns libFuzzer's exec count.
fn fuzz(target: &str, secs: u64) -> Result<u64> {
    let dir = sh::workspace_root().join("fuzz");
    let runs = dir.join("runs").join(target);
    std::fs::create_dir_all(&runs)?;
    let mut cmd = Command::new("rustup");
    cmd.current_dir(&dir)
        .args(["run", "nightly", "cargo", "fuzz", "run", target])
        .arg(&runs)
        .arg(Path::new("corpus").join(target))
        .args([
            "--",
            &format!("-max_total_time={secs}"),
            "-print_final_stats=1",
            "-timeout=20",
            "-rss_limit_mb=4096",
        ])
        .env("PATH", sh::path_with_cargo_bin())
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped());
    println!("  $ {}", sh::display(&cmd));
    let mut child = cmd
        .spawn()
        .context("cannot start cargo fuzz (cargo install cargo-fuzz)")?;
    let mut execs = None;
    let mut crash = None;
    for line in BufReader::new(child.stderr.take().expect("piped")).lines() {
        let line = line?;
        if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
            execs = n.trim().parse().ok();
        }
        if line.contains("Test unit written to") || line.starts_with("==") && line.contains("ERROR")
        {
            crash = Some(line.clone());
        }
        if line.starts_with("#") && line.contains("DONE")
            || line.starts_with("stat::")
            || crash.is_some()
        {
            eprintln!("{line}");
        }
    }
    let status = child.wait()?;
    if let Some(c) = crash {
        bail!("crash: {c}");
    }
    if !status.success() {
        bail!("cargo fuzz run {target} exited with {status}");
    }
    execs.context("libFuzzer printed no exec count")
}

fn load() -> Result<()> {
    if !sh::is_root() {
        bail!("the load test loads eBPF programs: run `cargo xtask soak` as root (or --skip-load)");
    }
    setup::check()?;
    let bin = build::run(false)?;
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(sh::workspace_root())
        .args([
            "test",
            "-p",
            "sluice-tests",
            "--test",
            "e2e",
            "--",
            "--ignored",
            "--exact",
            "load::soak_a_thousand_concurrent_agents_mixing_psql_and_curl_for_60_s",
            "load::soak_ten_minutes_of_load_leave_no_rss_growth",
            "--test-threads",
            "1",
            "--nocapture",
        ])
        .env("SLUICE_BIN", &bin)
        .env("PATH", sh::path_with_cargo_bin());
    sh::run(&mut cmd)
}
