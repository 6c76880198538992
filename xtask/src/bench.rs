//! `cargo xtask bench [--quick]`: Sluice against direct connections,
//! pgbouncer and nginx, as ratios measured side by side in one run.
//!
//! - installs the peers from Debian's packages (pgbouncer, nginx, wrk,
//!   h2load from nghttp2-client) if missing;
//! - builds `sluice` and the bench drivers (`benches/`) with the release
//!   profile;
//! - runs `sluice-bench` as root, which prints the tables and targets and
//!   writes `bench/results/latest.json`.
//!
//! `--quick` is the CI smoke run (under three minutes once built): it fails
//! on crashes and broken answers, never on speed.
use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::{bail, Result};

use crate::{build, setup, sh};

/// What the bench runs besides what `setup` installs.
const PEER_PACKAGES: &[&str] = &["pgbouncer", "nginx", "wrk", "nghttp2-client", "sysbench"];

/// The JSON report, relative to the workspace.
const RESULTS: &str = "bench/results/latest.json";

pub fn run(quick: bool, extra: &[String]) -> Result<()> {
    if !sh::is_root() {
        bail!("the bench loads eBPF programs and creates cgroups: run `cargo xtask bench` as root");
    }
    setup::check()?;
    setup::apt_install(PEER_PACKAGES, false)?;
    let root = sh::workspace_root();
    // Two invocations, so `sluice` is built exactly as `cargo xtask build
    // --release` builds it (one invocation would unify its dependencies'
    // features with the drivers').
    let sluice = build::run(true)?;
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    // The same PATH as `build::run`, so build scripts that watch it do not
    // rerun on every switch between the two builds.
    cmd.current_dir(&root)
        .args(["build", "--release", "--package", "sluice-benches"])
        .env("PATH", sh::path_with_cargo_bin());
    println!("bench: building the bench drivers (release)");
    sh::run(&mut cmd)?;
    let release = build::target_dir().join("release");
    let out: PathBuf = root.join(RESULTS);
    let started = Instant::now();
    let mut bench = Command::new(release.join("sluice-bench"));
    if quick {
        bench.arg("--quick");
    }
    bench
        .arg("--out")
        .arg(&out)
        .args(extra)
        .env("SLUICE_BIN", &sluice)
        .current_dir(&root);
    let result = sh::run(&mut bench);
    println!(
        "bench: {} after {:.0}s",
        if result.is_ok() { "finished" } else { "failed" },
        started.elapsed().as_secs_f64()
    );
    result
}
