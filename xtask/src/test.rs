//! `cargo xtask test`: setup, build, then every test of the workspace.
//!
//! The end-to-end tests in `tests/` run as root against the binary built
//! here (`SLUICE_BIN`). Each one owns its ports, cgroup, bpffs directory and
//! temp dir, so two run in parallel (`--test-threads=2`, one per core).
//!
//! The package test installs a `.deb` of that same binary (`SLUICE_DEB`,
//! made here by `cargo xtask dist --dev`'s packaging step in seconds).
use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};

use crate::{build, dist, setup, sh};

/// Test threads per test binary.
const TEST_THREADS: &str = "2";

/// Counts from the `test result:` lines of every test binary.
#[derive(Default)]
struct Summary {
    passed: u64,
    failed: u64,
    ignored: u64,
    binaries: u64,
    failures: Vec<String>,
}

impl Summary {
    fn absorb(&mut self, line: &str) {
        if let Some(rest) = line.strip_prefix("test result: ") {
            self.binaries += 1;
            for part in rest.split(';') {
                let mut words = part.split_whitespace().rev();
                let (Some(what), Some(n)) = (words.next(), words.next()) else {
                    continue;
                };
                let Ok(n) = n.parse::<u64>() else { continue };
                match what {
                    "passed" => self.passed += n,
                    "failed" => self.failed += n,
                    "ignored" => self.ignored += n,
                    _ => {}
                }
            }
        } else if let Some(name) = line
            .strip_prefix("test ")
            .and_then(|l| l.strip_suffix(" ... FAILED"))
        {
            self.failures.push(name.to_string());
        }
    }
}

pub fn run(extra: &[String]) -> Result<()> {
    if !sh::is_root() {
        bail!("the end-to-end tests load eBPF programs and create cgroups: run `cargo xtask test` as root");
    }
    setup::check()?;
    let bin = build::run(false)?;
    let deb = dist::package(true)?;
    let started = Instant::now();
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(sh::workspace_root())
        .args([
            "test",
            "--workspace",
            "--no-fail-fast",
            "--",
            "--test-threads",
            TEST_THREADS,
        ])
        .args(extra)
        .env("SLUICE_BIN", &bin)
        .env("SLUICE_DEB", &deb)
        .env("PATH", sh::path_with_cargo_bin())
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    println!("test: SLUICE_BIN={}", bin.display());
    println!("test: SLUICE_DEB={}", deb.display());
    println!("  $ {}", sh::display(&cmd));
    let mut child = cmd.spawn().context("cannot start cargo test")?;
    let mut summary = Summary::default();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        summary.absorb(&line);
    }
    let status = child.wait()?;
    let secs = started.elapsed().as_secs_f64();
    println!();
    println!("==== cargo xtask test summary ====");
    println!(
        "{} passed, {} failed, {} ignored, in {} test binaries, {:.0}s",
        summary.passed, summary.failed, summary.ignored, summary.binaries, secs
    );
    for name in &summary.failures {
        println!("FAILED: {name}");
    }
    if summary.ignored > 0 {
        println!("note: {} test(s) were ignored", summary.ignored);
    }
    if !status.success() || summary.failed > 0 {
        bail!("tests failed ({status})");
    }
    println!("all tests passed");
    Ok(())
}
