//! `sluice-bench [--quick] [--only A,B] [--out FILE] [--compare OLD.json]`: Sluice against direct
//! connections, pgbouncer and nginx, measured side by side in one run.
//!
//! `cargo xtask bench` builds this (release, with `sluice` itself) and runs
//! it as root. It starts the [`rig`], runs each scenario with every system
//! interleaved round by round, prints a table per metric (median, min, max,
//! ratio to the baseline) and the targets, and writes it all as
//! JSON. A scenario that breaks (an error answer, a crash, a missing
//! masked value) fails the run; a slow one never does.
//!
//! Scenarios: `pg-prepared`, `pg-simple`, `mysql-point-select` (sysbench
//! `oltp_point_select`, direct and through Sluice), `scp` (OpenSSH `scp` of
//! one file, 256 MiB or 32 MiB with `--quick`, direct and through Sluice),
//! `https`, `h2`, `handshakes`, `redirect`, `scale`.
use std::{path::PathBuf, time::Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

mod compare;
mod cpu;
mod http;
mod mysql;
mod peers;
mod pg;
mod redirect;
mod rig;
mod scale;
mod scp;
mod stats;
mod targets;
mod tools;

use stats::Table;
use targets::TARGETS;

/// Sizes and durations of one run.
#[derive(Debug, Clone)]
pub struct Mode {
    pub quick: bool,
    pub rounds: usize,
    pub pg_scale: u32,
    pub pg_seconds: u64,
    /// One sysbench run (`--time`).
    pub mysql_seconds: u64,
    /// The size of the file `scp` copies, in MiB.
    pub scp_mib: u64,
    pub http_seconds: u64,
    pub handshake_seconds: u64,
    pub connects: u64,
    /// Upper bound on one `connect_loop` run (stalls can make it crawl).
    pub connect_budget_seconds: u64,
    pub idle_conns: usize,
    pub probe_requests: usize,
    pub probe_rate: f64,
}

impl Mode {
    fn full() -> Mode {
        Mode {
            quick: false,
            rounds: 5,
            pg_scale: 10,
            pg_seconds: 10,
            mysql_seconds: 10,
            scp_mib: 256,
            http_seconds: 10,
            handshake_seconds: 10,
            connects: 100_000,
            connect_budget_seconds: 30,
            idle_conns: 10_000,
            probe_requests: 500,
            probe_rate: 100.0,
        }
    }

    /// The CI smoke run: under three minutes, crashes only.
    fn quick() -> Mode {
        Mode {
            quick: true,
            rounds: 2,
            pg_scale: 1,
            pg_seconds: 3,
            mysql_seconds: 3,
            scp_mib: 32,
            http_seconds: 2,
            handshake_seconds: 2,
            connects: 5_000,
            connect_budget_seconds: 3,
            idle_conns: 1_000,
            probe_requests: 100,
            probe_rate: 100.0,
        }
    }
}

const SCENARIOS: [&str; 9] = [
    "pg-prepared",
    "pg-simple",
    "mysql-point-select",
    "scp",
    "https",
    "h2",
    "handshakes",
    "redirect",
    "scale",
];

struct Args {
    /// Start the rig, print where everything is, and wait for a line on
    /// stdin before running (for profiling by hand).
    hold: bool,
    mode: Mode,
    only: Vec<String>,
    out: Option<PathBuf>,
    /// An earlier run's JSON report to print the change against.
    compare: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut quick = false;
    let mut only = Vec::new();
    let mut out = None;
    let mut rounds = None;
    let mut connects = None;
    let mut hold = false;
    let mut compare = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--hold" => hold = true,
            "--only" => only.extend(
                args.next()
                    .context("--only needs a list")?
                    .split(',')
                    .map(str::to_string),
            ),
            "--out" => out = Some(PathBuf::from(args.next().context("--out needs a path")?)),
            "--compare" => {
                compare = Some(PathBuf::from(
                    args.next()
                        .context("--compare needs an earlier report's path")?,
                ))
            }
            "--rounds" => rounds = Some(args.next().context("--rounds needs a number")?.parse()?),
            "--connects" => {
                connects = Some(args.next().context("--connects needs a number")?.parse()?)
            }
            "-h" | "--help" => {
                println!(
                    "usage: sluice-bench [--quick] [--rounds N] [--only {}] [--out FILE] [--compare OLD.json]",
                    SCENARIOS.join(",")
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}; try --help"),
        }
    }
    if let Some(bad) = only.iter().find(|s| !SCENARIOS.contains(&s.as_str())) {
        bail!(
            "--only: unknown scenario {bad:?}; scenarios: {}",
            SCENARIOS.join(", ")
        );
    }
    let mut mode = if quick { Mode::quick() } else { Mode::full() };
    if let Some(r) = rounds {
        mode.rounds = r;
    }
    if let Some(c) = connects {
        mode.connects = c;
    }
    Ok(Args {
        mode,
        only,
        out,
        hold,
        compare,
    })
}

fn main() {
    match run() {
        Ok(()) => {}
        Err(e) => {
            eprintln!("sluice-bench: error: {e:#}");
            std::process::exit(1);
        }
    }
}

fn run() -> Result<()> {
    let args = parse_args()?;
    let mode = args.mode.clone();
    // Read before the run, so a wrong path fails at once.
    let earlier = args
        .compare
        .as_deref()
        .map(compare::Earlier::load)
        .transpose()?;
    let wanted = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);
    if !is_root() {
        bail!(
            "the bench loads eBPF programs and creates cgroups: run it as root (cargo xtask bench)"
        );
    }
    peers::require(&[
        "pgbench",
        "psql",
        "sysbench",
        "mariadb",
        "scp",
        "nginx",
        "pgbouncer",
        "wrk",
        "h2load",
        "curl",
        "unshare",
        "redis-server",
    ])?;
    raise_nofile(65_536);
    let started = Instant::now();
    let started_at = chrono::Utc::now();
    println!(
        "sluice-bench: {} run, {} rounds per scenario, sluice = {}",
        if mode.quick { "quick" } else { "full" },
        mode.rounds,
        sluice_tests::sluice_bin().display()
    );
    let mut rig = rig::Rig::start(mode.pg_scale)?;
    println!("  ready after {:.0}s", started.elapsed().as_secs_f64());
    if args.hold {
        println!("{:#}", rig.hold_info());
        println!("  holding: press Enter to run the scenarios");
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
    }

    let mut tables: Vec<Table> = Vec::new();
    let mut failure: Option<anyhow::Error> = None;
    for scenario in SCENARIOS.iter().copied().filter(|s| wanted(s)) {
        let t0 = Instant::now();
        println!("\n== {scenario}");
        let produced = (|| -> Result<Vec<Table>> {
            Ok(match scenario {
                "pg-prepared" => pg::run(&mut rig, &mode, "prepared")?,
                "pg-simple" => pg::run(&mut rig, &mode, "simple")?,
                "mysql-point-select" => mysql::run(&mut rig, &mode)?,
                "scp" => scp::run(&mut rig, &mode)?,
                "https" => http::keepalive(&mut rig, &mode)?,
                "h2" => http::h2(&mut rig, &mode)?,
                "handshakes" => http::handshakes(&mut rig, &mode)?,
                "redirect" => redirect::run(&mut rig, &mode)?,
                "scale" => scale::run(&mut rig, &mode)?,
                _ => unreachable!("checked in parse_args"),
            })
        })();
        // A broken scenario ends the run, but what was measured is kept.
        let produced = match produced {
            Ok(p) => p,
            Err(e) => {
                failure = Some(e.context(format!("scenario {scenario}")));
                break;
            }
        };
        for t in &produced {
            print!("{}", t.render());
        }
        println!("  ({scenario}: {:.0}s)", t0.elapsed().as_secs_f64());
        tables.extend(produced);
    }
    let rig_json = rig.describe();
    let daemon_log_bytes =
        std::fs::metadata(rig.sluice.dir.join("daemon").join("run-1.stderr.log"))
            .map(|m| m.len())
            .ok();
    drop(rig);

    let elapsed = started.elapsed();
    println!("\n==== sluice-bench results ({}, {} rounds, ratios are medians of per-round ratios) ====\n", if mode.quick { "quick" } else { "full" }, mode.rounds);
    for t in &tables {
        println!("{}", t.render());
    }
    let verdicts: Vec<stats::Verdict> = TARGETS.iter().filter_map(|t| t.judge(&tables)).collect();
    println!(
        "targets{}:",
        if mode.quick {
            " (quick run: short and small, indicative only)"
        } else {
            ""
        }
    );
    for v in &verdicts {
        println!(
            "  [{}] {} — measured {}",
            if v.met { "met " } else { "MISS" },
            v.text,
            v.measured
        );
    }
    if let Some(earlier) = &earlier {
        print!("{}", earlier.render(&tables));
    }
    println!("\nsluice-bench: done in {:.0}s", elapsed.as_secs_f64());

    let report = json!({
        "schema": 1,
        "quick": mode.quick,
        "started": started_at.to_rfc3339(),
        "duration_s": elapsed.as_secs_f64(),
        "rounds": mode.rounds,
        "mode": format!("{mode:?}"),
        "host": {
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        },
        "sluice_bin": sluice_tests::sluice_bin().display().to_string(),
        "sluice_daemon_log_bytes": daemon_log_bytes,
        "rig": rig_json,
        "tables": tables.iter().map(Table::to_json).collect::<Vec<_>>(),
        "targets": verdicts.iter().map(|v| json!({"target": v.text, "measured": v.measured, "met": v.met})).collect::<Vec<_>>(),
        "error": failure.as_ref().map(|e| format!("{e:#}")),
    });
    if let Some(out) = &args.out {
        write_atomically(out, &serde_json::to_string_pretty(&report)?)?;
        println!("sluice-bench: wrote {}", out.display());
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Writes `<path>.tmp`, then renames it over `path`.
fn write_atomically(path: &std::path::Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, format!("{text}\n"))
        .with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Raises the open-files limit (soft and hard) to at least `n`, for the
/// many-connections scenario; children inherit it.
fn raise_nofile(n: u64) {
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < n {
            lim.rlim_cur = n;
            lim.rlim_max = lim.rlim_max.max(n);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
