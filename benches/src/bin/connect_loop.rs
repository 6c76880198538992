//! `connect_loop --cgroup DIR --addr IP:PORT --count N`: joins the cgroup v2
//! directory DIR, then does `socket()`+`connect()`+`close()` N times in a
//! tight loop, timing each, and prints one JSON line: `count`, `median_ns`,
//! `mean_ns`, `p99_ns` and `stalls` (iterations over 100 ms: a SYN dropped
//! by a full accept queue costs a 1 s retransmission).
//!
//! `SO_LINGER` 0 makes `close()` send a RST, so no TIME_WAIT socket holds an
//! ephemeral port: 100,000 connects within a second or two would otherwise
//! run the port range dry. One percent of N runs first, untimed, as warm-up.
//! Any failed connect fails the run (exit 1). `--max-seconds` bounds the
//! run: when it is spent the loop stops early and reports the connects done.
use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use socket2::{Domain, Socket, Type};

fn main() -> Result<()> {
    let mut cgroup: Option<PathBuf> = None;
    let mut addr: Option<SocketAddr> = None;
    let mut count: u64 = 100_000;
    let mut budget = Duration::from_secs(600);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--cgroup" => cgroup = Some(value()?.into()),
            "--addr" => addr = Some(value()?.parse().context("--addr IP:PORT")?),
            "--count" => count = value()?.parse().context("--count N")?,
            "--max-seconds" => budget = Duration::from_secs_f64(value()?.parse().context("--max-seconds S")?),
            other => bail!("unknown argument {other}; usage: connect_loop --cgroup DIR --addr IP:PORT --count N [--max-seconds S]"),
        }
    }
    let addr = addr.context("--addr IP:PORT is required")?;
    if count == 0 {
        bail!("--count must be at least 1");
    }
    if !addr.ip().is_loopback() {
        bail!("--addr must be a loopback address");
    }
    if let Some(dir) = cgroup {
        // Sockets take the cgroup of the process that creates them: join
        // before the first one.
        std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
            .with_context(|| format!("join cgroup {}", dir.display()))?;
    }
    one_pass(addr, (count / 100).max(1), budget)?;
    let mut times = one_pass(addr, count, budget)?;
    let done = times.len() as u64;
    if done == 0 {
        bail!("no connect finished within --max-seconds");
    }
    let total: u128 = times.iter().map(|&t| u128::from(t)).sum();
    let elapsed_s = total as f64 / 1e9;
    let stalls = times.iter().filter(|&&t| t > 100_000_000).count();
    times.sort_unstable();
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    println!(
        "{}",
        serde_json::json!({
            "count": done,
            "asked": count,
            "elapsed_s": elapsed_s,
            "addr": addr.to_string(),
            "median_ns": at(0.5),
            "p99_ns": at(0.99),
            "mean_ns": total as f64 / done as f64,
            "stalls": stalls,
        })
    );
    Ok(())
}

/// Up to `count` iterations, fewer if `budget` runs out; the duration of
/// each, ns.
fn one_pass(addr: SocketAddr, count: u64, budget: Duration) -> Result<Vec<u64>> {
    let target = addr.into();
    let mut times = Vec::with_capacity(count as usize);
    let deadline = Instant::now() + budget;
    for i in 0..count {
        if Instant::now() >= deadline {
            break;
        }
        let started = Instant::now();
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).context("socket()")?;
        socket.set_linger(Some(Duration::ZERO))?;
        if let Err(e) = socket.connect(&target) {
            bail!("connect #{i} to {addr} failed: {e}");
        }
        drop(socket);
        times.push(started.elapsed().as_nanos() as u64);
    }
    Ok(times)
}
