//! Scenarios 1 and 2: `pgbench -S` (prepared, then simple protocol) direct,
//! through pgbouncer (session pooling), through Sluice, and through Sluice
//! masking `abalance`, the column `pgbench -S` reads.
//!
//! Direct and pgbouncer runs log in with the real password from outside any
//! agent cgroup. Sluice runs are agents: `sluice exec` puts pgbench in the
//! agent cgroup, the eBPF redirect sends it to Sluice, and the token is the
//! password.
use std::{process::Command, time::Duration};

use anyhow::{bail, Context, Result};
use sluice_tests::{postgres::conninfo_value, process, Sluice};

use crate::{
    cpu,
    rig::{Rig, AGENT, AGENT_MASKED, DB_HOST, ROLE},
    stats::{interleave, Better, Run, Table},
    tools, Mode,
};

pub const SYSTEMS: [&str; 4] = ["direct", "pgbouncer", "sluice", "sluice+mask"];

/// Runs `pgbench -S -M <protocol>` on every system, interleaved: the
/// transaction rate, and the proxy's CPU time per transaction.
pub fn run(rig: &mut Rig, mode: &Mode, protocol: &str) -> Result<Vec<Table>> {
    let secs = mode.pg_seconds.to_string();
    let args: Vec<String> = [
        "-n", "-S", "-M", protocol, "-c", "8", "-j", "2", "-T", &secs,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let command = format!("pgbench {} <conninfo>", args.join(" "));
    let mut tps = Table::new(
        &format!("pg-{protocol}.tps"),
        &format!(
            "PostgreSQL, pgbench -S -M {protocol} (scale {})",
            mode.pg_scale
        ),
        "tx/s",
        Better::Higher,
        &command,
        &SYSTEMS,
    );
    let mut cpu = Table::new(
        &format!("pg-{protocol}.cpu"),
        &format!("PostgreSQL, pgbench -S -M {protocol}: the proxy's CPU per transaction"),
        "µs/tx",
        Better::Lower,
        &command,
        &SYSTEMS[1..],
    );
    let timeout = Duration::from_secs(mode.pg_seconds + 60);
    let pg_addr = rig.pg.addr();
    let bouncer_addr = rig.pgbouncer.addr;
    let password = rig.pg.password().to_string();
    let direct_conninfo = |addr: std::net::SocketAddr| {
        format!(
            "host={} port={} user={ROLE} dbname={ROLE} sslmode=disable",
            addr.ip(),
            addr.port()
        )
    };
    let agent_conninfo = |token: &str| {
        format!(
            "host={DB_HOST} hostaddr={} port={} user=agent dbname={ROLE} password={} sslmode=disable connect_timeout=20",
            pg_addr.ip(),
            pg_addr.port(),
            conninfo_value(token)
        )
    };
    let direct = |conninfo: String| -> Result<(f64, f64)> {
        let mut cmd = Command::new("pgbench");
        cmd.args(&args).arg(conninfo).env("PGPASSWORD", &password);
        for var in sluice_tests::postgres::PG_ENV
            .iter()
            .filter(|v| **v != "PGPASSWORD")
        {
            cmd.env_remove(var);
        }
        let out = process::output_with_timeout(&mut cmd, None, timeout)?;
        tools::pgbench(&tools::stdout_of("pgbench", &out)?)
    };
    let through = |sluice: &Sluice, agent: &str, conninfo: String| -> Result<(f64, f64)> {
        let mut argv = vec!["pgbench".to_string()];
        argv.extend(args.iter().cloned());
        argv.push(conninfo);
        let out = sluice.exec_with_timeout(agent, &argv, timeout)?;
        tools::pgbench(&tools::stdout_of("pgbench (agent)", &out)?)
    };
    let (main_conninfo, masked_conninfo) = (
        agent_conninfo(&rig.db_token),
        agent_conninfo(&rig.db_token_masked),
    );
    check_masking(&rig.sluice, AGENT, &main_conninfo, false)?;
    check_masking(&rig.sluice_masked, AGENT_MASKED, &masked_conninfo, true)?;
    let bouncer_pid = rig.pgbouncer.pid().context("pgbouncer is not running")?;
    let sluice_pid = rig.sluice.pid().context("sluice run is not running")?;
    let masked_pid = rig
        .sluice_masked
        .pid()
        .context("sluice run (masking) is not running")?;
    {
        let (sluice, sluice_masked) = (&rig.sluice, &rig.sluice_masked);
        let both = |r: (f64, f64)| vec![r.0, r.1];
        let mut systems: Vec<(&str, Run<'_>)> = vec![
            (
                "direct",
                Box::new(|| Ok(vec![direct(direct_conninfo(pg_addr))?.0, f64::NAN])),
            ),
            (
                "pgbouncer",
                Box::new(|| {
                    Ok(both(cpu::per_request(&[bouncer_pid], || {
                        direct(direct_conninfo(bouncer_addr))
                    })?))
                }),
            ),
            (
                "sluice",
                Box::new(|| {
                    Ok(both(cpu::per_request(&[sluice_pid], || {
                        through(sluice, AGENT, main_conninfo.clone())
                    })?))
                }),
            ),
            (
                "sluice+mask",
                Box::new(|| {
                    Ok(both(cpu::per_request(&[masked_pid], || {
                        through(sluice_masked, AGENT_MASKED, masked_conninfo.clone())
                    })?))
                }),
            ),
        ];
        interleave(mode.rounds, &mut [&mut tps, &mut cpu], &mut systems)?;
    }
    rig.check_alive()?;
    Ok(vec![tps, cpu])
}

/// Reads one `abalance` through a gateway: `****` where it is masked, the
/// number where it is not. Anything else means the scenario would not
/// measure what it says.
fn check_masking(sluice: &Sluice, agent: &str, conninfo: &str, masked: bool) -> Result<()> {
    let sql = "SELECT abalance FROM pgbench_accounts WHERE aid = 1";
    let out = sluice.exec(
        agent,
        &["psql", "-X", "-w", "-At", "-d", conninfo, "-c", sql],
    )?;
    let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let ok = if masked {
        got == "****"
    } else {
        got.parse::<i64>().is_ok()
    };
    if !out.status.success() || !ok {
        bail!(
            "through {agent}'s gateway `{sql}` gave {got:?} (expected {}): {}",
            if masked { "****" } else { "a number" },
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
