//! Scenario `mysql-point-select`: `sysbench oltp_point_select` (one
//! primary-key `SELECT` per transaction, a server-side prepared statement)
//! against MariaDB directly and through Sluice, interleaved.
//!
//! Direct runs log in as the real user with the real password from outside
//! any agent cgroup. Sluice runs are the agent: `sluice exec` puts sysbench
//! in the agent cgroup, it dials `mysql.bench.test` (the rig's hosts file),
//! the eBPF redirect sends it to Sluice, and the token is the password;
//! MariaDB would refuse the token, so a run that succeeds went through
//! Sluice. Both sides run without TLS (`--mysql-ssl=off`), as the pgbench
//! scenarios do: the service's upstream is `upstream_tls = "disable"`, and
//! sysbench 1.0 can only turn TLS on with client certificate files in its
//! working directory.
use std::{process::Command, time::Duration};

use anyhow::{bail, Result};
use sluice_tests::{
    mariadb::{DATABASE, NATIVE_USER},
    process,
};

use crate::{
    cpu,
    rig::{Rig, AGENT, MYSQL_HOST},
    stats::{interleave, Better, Run, Table},
    tools, Mode,
};

pub const SYSTEMS: [&str; 2] = ["direct", "sluice"];

/// The table set, created once per run (`prepare`) and read by every run.
const TABLES: &[&str] = &["--tables=1", "--table-size=10000"];

/// Runs `sysbench oltp_point_select` (8 threads, `mode.mysql_seconds`
/// each) on both systems, interleaved: the transaction rate, and Sluice's
/// CPU time per transaction.
pub fn run(rig: &mut Rig, mode: &Mode) -> Result<Vec<Table>> {
    let timeout = Duration::from_secs(mode.mysql_seconds + 60);
    let addr = rig.mariadb.addr();
    let password = rig.mariadb.password().to_string();
    // sysbench's options for one side: where it dials and who it is.
    let login = |host: &str, user: &str, password: &str| -> Vec<String> {
        let mut args: Vec<String> = ["oltp_point_select", "--db-driver=mysql", "--mysql-ssl=off"]
            .map(String::from)
            .to_vec();
        args.extend(TABLES.iter().map(|s| s.to_string()));
        args.extend([
            format!("--mysql-host={host}"),
            format!("--mysql-port={}", addr.port()),
            format!("--mysql-db={DATABASE}"),
            format!("--mysql-user={user}"),
            format!("--mysql-password={password}"),
        ]);
        args
    };
    let direct_login = login(&addr.ip().to_string(), NATIVE_USER, &password);
    let agent_login = login(MYSQL_HOST, "agent", &rig.mysql_token);
    let load = [
        "--threads=8".to_string(),
        format!("--time={}", mode.mysql_seconds),
        "run".to_string(),
    ];
    prepare(&direct_login)?;

    let command = format!(
        "sysbench oltp_point_select --db-driver=mysql --mysql-ssl=off {} --mysql-host=<host> --mysql-user=<user> --mysql-password=<password or token> {}",
        TABLES.join(" "),
        load.join(" ")
    );
    let mut tps = Table::new(
        "mysql-point-select.tps",
        "MariaDB, sysbench oltp_point_select (1 table of 10,000 rows, 8 threads)",
        "tx/s",
        Better::Higher,
        &command,
        &SYSTEMS,
    );
    let mut cpu = Table::new(
        "mysql-point-select.cpu",
        "MariaDB, sysbench oltp_point_select: Sluice's CPU per transaction",
        "µs/tx",
        Better::Lower,
        &command,
        &SYSTEMS[1..],
    );
    let direct_argv: Vec<String> = direct_login.iter().chain(&load).cloned().collect();
    let mut agent_argv = vec!["sysbench".to_string()];
    agent_argv.extend(agent_login.iter().chain(&load).cloned());
    let agent_argv = tools::with_hosts(&rig.hosts, &agent_argv);
    let sluice_pid = rig.sluice_pid()?;
    {
        let sluice = &rig.sluice;
        let mut systems: Vec<(&str, Run<'_>)> = vec![
            (
                "direct",
                Box::new(|| {
                    let mut cmd = Command::new("sysbench");
                    cmd.args(&direct_argv);
                    let out = process::output_with_timeout(&mut cmd, None, timeout)?;
                    let (rate, _) = tools::sysbench(&tools::stdout_of("sysbench", &out)?)?;
                    Ok(vec![rate, f64::NAN])
                }),
            ),
            (
                "sluice",
                Box::new(|| {
                    let (rate, cpu) = cpu::per_request(&[sluice_pid], || {
                        let out = sluice.exec_with_timeout(AGENT, &agent_argv, timeout)?;
                        tools::sysbench(&tools::stdout_of("sysbench (agent)", &out)?)
                    })?;
                    Ok(vec![rate, cpu])
                }),
            ),
        ];
        interleave(mode.rounds, &mut [&mut tps, &mut cpu], &mut systems)?;
    }
    rig.check_alive()?;
    Ok(vec![tps, cpu])
}

/// `sysbench … prepare`, directly as the real user: the table set every
/// run reads, in the rig's fresh server.
fn prepare(login: &[String]) -> Result<()> {
    let mut cmd = Command::new("sysbench");
    cmd.args(login).arg("prepare");
    let out = process::output_with_timeout(&mut cmd, None, Duration::from_secs(300))?;
    if !out.status.success() {
        bail!(
            "sysbench prepare failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
