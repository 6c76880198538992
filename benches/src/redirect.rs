//! Scenario 5: what the eBPF programs add to `connect()`.
//!
//! `connect_loop` does `socket()`+`connect()`+`close()` (with `SO_LINGER`
//! 0, so no TIME_WAIT runs the ephemeral ports dry) in a tight loop, after
//! moving itself into a cgroup. Four ways, interleaved:
//!
//! | system               | cgroup           | dials                                   |
//! |----------------------|------------------|-----------------------------------------|
//! | `plain`              | ours, no program | a plain listener (baseline)             |
//! | `agent, allowed`     | the agent's      | the same listener, in `egress_allow`: the programs run and leave it alone |
//! | `plain→sluice`       | ours, no program | Sluice's listener directly              |
//! | `agent, redirected`  | the agent's      | the database service: rewritten to Sluice's listener |
//!
//! The redirect's cost is `agent, redirected` − `plain→sluice`: both end
//! at the same listener, so only the programs and the rewrite differ. Each
//! connect is timed: the median is the cost of the path, the mean adds the
//! stalls (a SYN dropped by a full accept queue waits 1 s to be resent).
use std::{
    net::{IpAddr, SocketAddr, TcpListener},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use sluice_tests::{cgroup, process};

use crate::{
    rig::{Rig, AGENT},
    stats::{interleave, Better, Run, Table},
    Mode,
};

pub const PLAIN: &str = "plain";
pub const ALLOWED: &str = "agent, allowed";
pub const TO_SLUICE: &str = "plain→sluice";
pub const REDIRECTED: &str = "agent, redirected";

/// A listener on `ip`:<free port> with a deep backlog and a thread that
/// accepts and drops connections for as long as the bench runs.
pub fn spawn_listener(ip: IpAddr) -> Result<SocketAddr> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::new(ip, 0).into())?;
    socket.listen(4096)?;
    let listener: TcpListener = socket.into();
    let addr = listener.local_addr()?;
    std::thread::Builder::new()
        .name("plain-listener".into())
        .spawn(move || {
            for conn in listener.incoming() {
                drop(conn);
            }
        })?;
    Ok(addr)
}

/// A cgroup of our own with no program attached, removed on drop.
struct PlainCgroup(PathBuf);

impl PlainCgroup {
    fn create() -> Result<PlainCgroup> {
        let rel = format!("sluice-bench/{}", sluice_tests::unique_name("plain"));
        Ok(PlainCgroup(cgroup::create(&rel)?))
    }
}

impl Drop for PlainCgroup {
    fn drop(&mut self) {
        if let Err(e) = cgroup::remove(&self.0, true) {
            eprintln!("sluice-bench: removing {}: {e:#}", self.0.display());
        }
    }
}

/// Runs the redirect microbenchmark.
pub fn run(rig: &mut Rig, mode: &Mode) -> Result<Vec<Table>> {
    let bin = sibling("connect_loop")?;
    let plain = PlainCgroup::create()?;
    let agent_cgroup = rig.sluice.agent(AGENT).path.clone();
    let count = mode.connects;
    let budget = Duration::from_secs(mode.connect_budget_seconds);
    let systems = [PLAIN, ALLOWED, TO_SLUICE, REDIRECTED];
    let command =
        format!("connect_loop --count {count} (socket+connect+close, SO_LINGER 0, one thread)");
    let mut median = Table::new(
        "redirect.us",
        "connect()+close(), median of each run",
        "µs/connect",
        Better::Lower,
        &command,
        &systems,
    )
    .with_delta();
    let mut mean = Table::new(
        "redirect.mean_us",
        "connect()+close(), mean of each run (1 s SYN retransmissions included)",
        "µs/connect",
        Better::Lower,
        &command,
        &systems,
    )
    .with_delta();
    let mut stalls = Table::new(
        "redirect.stalls",
        "connects that took over 100 ms, per run",
        "stalls",
        Better::Lower,
        &command,
        &systems,
    );
    let mut done = Table::new(
        "redirect.count",
        "connects done per run (the time budget stops a stalling run early)",
        "connects",
        Better::Higher,
        &command,
        &systems,
    );
    let (listener, sluice_listen, service) = (rig.plain_listener, rig.sluice.listen, rig.pg.addr());
    {
        let run = |cgroup: PathBuf, addr: SocketAddr| -> Run<'_> {
            let bin = bin.clone();
            Box::new(move || connect_loop(&bin, &cgroup, addr, count, budget))
        };
        let mut systems: Vec<(&str, Run<'_>)> = vec![
            (PLAIN, run(plain.0.clone(), listener)),
            (ALLOWED, run(agent_cgroup.clone(), listener)),
            (TO_SLUICE, run(plain.0.clone(), sluice_listen)),
            (REDIRECTED, run(agent_cgroup.clone(), service)),
        ];
        interleave(
            mode.rounds,
            &mut [&mut median, &mut mean, &mut stalls, &mut done],
            &mut systems,
        )?;
    }
    rig.check_alive()?;
    Ok(vec![median, mean, stalls, done])
}

/// One `connect_loop` run in `cgroup`: median and mean µs per connect, and
/// the number of stalls.
fn connect_loop(
    bin: &Path,
    cgroup: &Path,
    addr: SocketAddr,
    count: u64,
    budget: Duration,
) -> Result<Vec<f64>> {
    let mut cmd = std::process::Command::new(bin);
    cmd.arg("--cgroup").arg(cgroup).args([
        "--addr",
        &addr.to_string(),
        "--count",
        &count.to_string(),
        "--max-seconds",
        &budget.as_secs().to_string(),
    ]);
    let out = process::output_with_timeout(&mut cmd, None, budget * 2 + Duration::from_secs(30))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "connect_loop failed with {}: {}{}",
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let report: serde_json::Value =
        serde_json::from_str(stdout.trim()).context("connect_loop's report")?;
    let field = |k: &str| {
        report[k]
            .as_f64()
            .with_context(|| format!("{k} in connect_loop's report"))
    };
    if field("count")? < field("asked")? {
        println!(
            "    note: the time budget ran out after {} of {count} connects",
            field("count")?
        );
    }
    Ok(vec![
        field("median_ns")? / 1000.0,
        field("mean_ns")? / 1000.0,
        field("stalls")?,
        field("count")?,
    ])
}

/// A binary built next to this one (`target/release/<name>`).
pub fn sibling(name: &str) -> Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name(name);
    if !path.is_file() {
        bail!(
            "{} not found; `cargo xtask bench` builds it",
            path.display()
        );
    }
    Ok(path)
}
