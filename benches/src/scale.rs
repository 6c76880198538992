//! Scenario 6: many idle agent connections through Sluice.
//!
//! One `idle_conns` agent (under `sluice exec`) opens N TLS connections
//! through Sluice, each answered once, and holds them. Each round:
//!
//! 1. a light request stream (`probe`) with nothing held;
//! 2. N connections opened, settle, Sluice's `VmRSS`: its growth since
//!    before the first round, over N, is the RSS per idle connection;
//! 3. the same light stream while the N are held;
//! 4. how many of the N are still open, then they are closed.
//!
//! Sluice's CPU time per request of each light stream is the cost-growth
//! figure for idle connections: it should stay flat from none to N held.
//!
//! The same N connections are then opened to nginx, the peer proxy, and
//! its master's and workers' RSS read the same way.
//!
//! Growth is counted from before the first round because freed memory
//! stays with the allocator: a later round's own difference would be near
//! zero.
use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, ChildStdout, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::{
    cpu,
    redirect::sibling,
    rig::{Rig, AGENT, API_HOST, PROXY_HOST},
    stats::{Better, Table},
    Mode,
};

/// The system name of the runs with the idle connections held.
pub const HELD: &str = "idle held";

/// How long the held connections settle before RSS is read (half in the
/// quick run).
const SETTLE: Duration = Duration::from_secs(2);

/// The `idle_conns` agent and its command pipe.
struct IdleAgent {
    /// `sluice exec`, whose child is `idle_conns`.
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl IdleAgent {
    /// Sends `command`; returns the answer's words after its first.
    fn ask(&mut self, command: &str, timeout: Duration) -> Result<Vec<String>> {
        let stdin = self.stdin.as_mut().context("idle_conns' stdin is closed")?;
        writeln!(stdin, "{command}")?;
        stdin.flush()?;
        let word = command.split_whitespace().next().unwrap_or("");
        let answer = self.read_line(timeout)?;
        let mut words = answer.split_whitespace().map(str::to_string);
        match words.next() {
            Some(w) if w == word || (word == "close" && w == "closed") => Ok(words.collect()),
            _ => bail!("idle_conns answered {command:?} with {answer:?}"),
        }
    }

    fn read_line(&mut self, timeout: Duration) -> Result<String> {
        // The answer comes within the timeout or the agent is killed (by
        // PID: idle_conns, then sluice exec), which ends the read.
        let pid = self.child.id();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            if rx.recv_timeout(timeout).is_err() {
                for child in crate::peers::children(pid) {
                    sluice_tests::process::signal(child, libc::SIGKILL);
                }
                sluice_tests::process::signal(pid, libc::SIGKILL);
            }
        });
        let mut line = String::new();
        let read = self.stdout.read_line(&mut line);
        let _ = tx.send(());
        let _ = watchdog.join();
        if read? == 0 {
            bail!("idle_conns exited (or was killed after {timeout:?})");
        }
        Ok(line.trim().to_string())
    }
}

impl Drop for IdleAgent {
    fn drop(&mut self) {
        // End of input ends idle_conns, and with it sluice exec.
        drop(self.stdin.take());
        if !matches!(
            sluice_tests::process::wait_timeout(&mut self.child, Duration::from_secs(20)),
            Ok(Some(_))
        ) {
            for child in crate::peers::children(self.child.id()) {
                sluice_tests::process::signal(child, libc::SIGKILL);
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `VmRSS` of `pid`, KiB.
pub fn rss_kib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .context("VmRSS in /proc/PID/status")
}

/// An `idle_conns` process: as Sluice's agent, or plain towards nginx.
fn spawn_idle(rig: &Rig, through_sluice: bool) -> Result<IdleAgent> {
    let bin = sibling("idle_conns")?;
    let (addr, sni, ca) = if through_sluice {
        (rig.upstream.addr, API_HOST, rig.sluice.ca_cert_path()?)
    } else {
        (rig.proxy.addr, PROXY_HOST, rig.upstream_ca.clone())
    };
    let argv = [
        bin.display().to_string(),
        "--addr".into(),
        addr.to_string(),
        "--sni".into(),
        sni.into(),
        "--ca".into(),
        ca.display().to_string(),
        "--token".into(),
        rig.api_token.clone(),
        "--path".into(),
        "/v1/charges/ch_1".into(),
    ];
    let mut child = if through_sluice {
        rig.sluice.exec_spawn(AGENT, &argv)?
    } else {
        let mut cmd = std::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        sluice_tests::process::die_with_parent(&mut cmd).spawn()?
    };
    let stdin = child.stdin.take().context("piped stdin")?;
    let stdout = BufReader::new(child.stdout.take().context("piped stdout")?);
    let mut agent = IdleAgent {
        child,
        stdin: Some(stdin),
        stdout,
    };
    let first = agent.read_line(Duration::from_secs(30))?;
    if first != "ready" {
        bail!("idle_conns said {first:?} instead of ready");
    }
    Ok(agent)
}

/// Summed `VmRSS` of `pids`, KiB.
fn total_rss_kib(pids: &[u32]) -> Result<f64> {
    pids.iter().map(|&p| rss_kib(p)).sum()
}

/// The connections the open-files limit allows: Sluice spends two
/// descriptors on each idle HTTPS connection (the socket and its session
/// record), and this process's hard limit is the daemon's too (raising it
/// needs CAP_SYS_RESOURCE, which containers often lack).
fn affordable(wanted: usize) -> usize {
    let limit = crate::peers::nofile_limit() as usize;
    let fit = limit.saturating_sub(1000) / 2 / 1000 * 1000;
    if fit < wanted {
        println!(
            "    note: the open-files limit ({limit}) caps the idle connections at {fit} instead of {wanted}: \
             Sluice keeps 2 descriptors per idle connection (socket and session record)"
        );
        fit.max(100)
    } else {
        wanted
    }
}

pub fn run(rig: &mut Rig, mode: &Mode) -> Result<Vec<Table>> {
    match measure(rig, mode) {
        Ok(tables) => Ok(tables),
        Err(e) => Err(e.context(format!("idle_conns (agent) stderr:\n{}", exec_logs(rig)))),
    }
}

/// The tails of the `sluice exec` stderr logs the harness kept.
fn exec_logs(rig: &Rig) -> String {
    let dir = rig.sluice.dir.join("daemon");
    let mut out = String::new();
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("exec-") {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            out.push_str(&format!(
                "--- {name}\n{}\n",
                sluice_tests::sluice::tail(&text, 15)
            ));
        }
    }
    out
}

fn measure(rig: &mut Rig, mode: &Mode) -> Result<Vec<Table>> {
    let n = affordable(mode.idle_conns);
    let settle = if mode.quick { SETTLE / 2 } else { SETTLE };
    let held = HELD;
    let probe = format!("probe {} {}", mode.probe_requests, mode.probe_rate);
    let command = format!("idle_conns: open {n} TLS keep-alive connections (one request each); {probe} (requests, per second)");
    let mut rss = Table::new(
        "scale.rss",
        &format!("RSS per idle TLS connection ({n} held; nginx: master and workers)"),
        "KiB/conn",
        Better::Lower,
        &command,
        &["sluice", "nginx"],
    );
    let mut p99 = Table::new(
        "scale.p99",
        "Light request stream through Sluice, p99 latency",
        "ms",
        Better::Lower,
        &command,
        &["none held", held],
    );
    let mut p50 = Table::new(
        "scale.p50",
        "Light request stream through Sluice, median latency",
        "ms",
        Better::Lower,
        &command,
        &["none held", held],
    );
    let mut cpu_per_req = Table::new(
        "scale.cpu",
        &format!(
            "Light request stream through Sluice, Sluice's CPU per request ({n} idle held or none)"
        ),
        "µs/req",
        Better::Lower,
        &command,
        &["none held", held],
    );

    let mut agent = spawn_idle(rig, true)?;
    let mut peer = spawn_idle(rig, false)?;
    let pid = rig.sluice_pid()?;
    let probe_timeout =
        Duration::from_secs_f64(mode.probe_requests as f64 / mode.probe_rate + 60.0);
    let ms = |w: &[String], i: usize| -> Result<f64> {
        Ok(w.get(i).context("probe answer")?.parse::<f64>()? / 1000.0)
    };
    // RSS per connection is measured against the daemons' RSS before the
    // first round: freed memory stays with the allocator, so a later
    // round's own before/after difference would understate it.
    let sluice_start = rss_kib(pid)?;
    let nginx_start = total_rss_kib(&rig.proxy.pids())?;
    for round in 0..mode.rounds {
        let (idle, idle_cpu) = probe_cpu(&mut agent, &probe, probe_timeout, pid, mode)?;
        let before = rss_kib(pid)?;
        let opened = agent.ask(&format!("open {n}"), Duration::from_secs(300))?;
        std::thread::sleep(settle);
        let after = rss_kib(pid)?;
        let (busy, busy_cpu) = probe_cpu(&mut agent, &probe, probe_timeout, pid, mode)?;
        let alive: usize = agent
            .ask("alive", Duration::from_secs(60))?
            .first()
            .context("alive N")?
            .parse()?;
        agent.ask("close", Duration::from_secs(60))?;
        let per_conn = (after - sluice_start) / n as f64;
        println!(
            "    round {}/{} sluice: opened {n} in {}s; RSS {before:.0} → {after:.0} KiB ({per_conn:.1} KiB/conn); p99 {:.2} → {:.2} ms; CPU {idle_cpu:.0} → {busy_cpu:.0} µs/req; {alive}/{n} still open",
            round + 1,
            mode.rounds,
            opened.get(1).map(String::as_str).unwrap_or("?"),
            ms(&idle, 1)?,
            ms(&busy, 1)?,
        );
        if alive < n {
            println!(
                "    note: Sluice closed {} of the {n} idle connections",
                n - alive
            );
        }
        rss.push("sluice", per_conn);
        p99.push("none held", ms(&idle, 1)?);
        p99.push(held, ms(&busy, 1)?);
        p50.push("none held", ms(&idle, 0)?);
        p50.push(held, ms(&busy, 0)?);
        cpu_per_req.push("none held", idle_cpu);
        cpu_per_req.push(held, busy_cpu);
        std::thread::sleep(settle);

        let pids = rig.proxy.pids();
        let before = total_rss_kib(&pids)?;
        peer.ask(&format!("open {n}"), Duration::from_secs(300))?;
        std::thread::sleep(settle);
        let after = total_rss_kib(&pids)?;
        peer.ask("close", Duration::from_secs(60))?;
        let per_conn = (after - nginx_start) / n as f64;
        println!(
            "    round {}/{} nginx:  RSS {before:.0} → {after:.0} KiB ({per_conn:.1} KiB/conn)",
            round + 1,
            mode.rounds
        );
        rss.push("nginx", per_conn);
        std::thread::sleep(settle);
    }
    drop(agent);
    drop(peer);
    rig.check_alive()?;
    Ok(vec![rss, p99, p50, cpu_per_req])
}

/// Runs one light request stream (`probe`) and returns its answer and
/// Sluice's CPU time per request of it, µs.
fn probe_cpu(
    agent: &mut IdleAgent,
    probe: &str,
    timeout: Duration,
    pid: u32,
    mode: &Mode,
) -> Result<(Vec<String>, f64)> {
    let mut answer = Vec::new();
    let (_, per_request) = cpu::per_request(&[pid], || {
        answer = agent.ask(probe, timeout)?;
        Ok((0.0, mode.probe_requests as f64))
    })?;
    Ok((answer, per_request))
}
