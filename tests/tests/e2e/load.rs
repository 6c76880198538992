//! Load (issue 8): many concurrent agent clients, each keeping an HTTPS
//! connection busy and logging in to PostgreSQL now and then, spread over
//! several configured agents. No error beyond those policy causes, and
//! afterwards no leaked descriptors in Sluice or entries in the eBPF
//! connection maps.
//!
//! The full run (1,000 clients for 60 s) is a soak test: `cargo xtask soak`.
//! The normal suite runs a small one.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::Value;
use sluice_tests::{
    poll, process,
    redteam::{self, assert_daemon_healthy, AgentUser, RedTeam},
    ServiceSpec, Stack,
};

use crate::{billing_db, DB, WAIT};

const SERVICE: &str = "payments-api";
const HOST: &str = "api.payments.test";
const LOAD_AGENT: &str = env!("CARGO_BIN_EXE_load_agent");

/// Pinned map files named `name` below `dir`.
fn pinned_maps(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == name) {
                found.push(p);
            }
        }
    }
    found
}

/// Entries in the pinned eBPF map `name` (`bpftool map dump`).
fn map_entries(stack: &Stack, name: &str) -> usize {
    pinned_maps(&stack.sluice.bpf_dir, name)
        .iter()
        .map(|p| {
            let out = process::output_with_timeout(
                std::process::Command::new("bpftool")
                    .args(["--json", "map", "dump", "pinned"])
                    .arg(p),
                None,
                Duration::from_secs(60),
            )
            .unwrap();
            let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Array(vec![]));
            v.as_array().map_or(0, Vec::len)
        })
        .sum()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Runs `clients` load clients for `secs` seconds, spread over `agents`
/// configured agents, and checks the outcome.
fn mixed_load(label: &str, agents: usize, clients: usize, secs: u64) {
    mixed_load_phases(label, agents, clients, &[secs]);
}

/// [`mixed_load`] in back-to-back phases of `phases` seconds each, on one
/// daemon; returns Sluice's RSS (KiB) after each phase.
fn mixed_load_phases(label: &str, agents: usize, clients: usize, phases: &[u64]) -> Vec<u64> {
    // A user of its own per agent: `sluice exec` refuses a uid that has
    // processes outside the agent's cgroup (in another agent's, say).
    let users: Vec<AgentUser> = (0..agents).map(|_| AgentUser::create().unwrap()).collect();
    let extra: Vec<String> = (1..agents).map(|i| format!("load-{i}")).collect();
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let stack = redteam::start_with_agents(
        Stack::builder(label)
            .service(ServiceSpec::https(SERVICE, HOST))
            .service(billing_db()),
        &extra,
    )
    .unwrap();
    let rts: Vec<RedTeam> = users
        .iter()
        .map(|u| RedTeam::new(&stack, u).unwrap())
        .collect();
    let pid = redteam::daemon_pid(&stack);
    let names: Vec<String> = stack.sluice.agents.iter().map(|a| a.name.clone()).collect();
    // Warm up, then take the baseline.
    let up = stack.upstream(SERVICE).addr();
    let fds_before = open_fds(pid);
    let tuples_before = map_entries(&stack, "SLUICE_TUPLE_DST");
    let cookies_before = map_entries(&stack, "SLUICE_COOKIE_DST");

    let mut rss = Vec::new();
    let mut summaries = Vec::new();
    for &secs in phases {
        let mut children = Vec::new();
        for (name, rt) in names.iter().zip(&rts) {
            let token = stack.sluice.token_issue(name, SERVICE, "1h").unwrap();
            let db_token = stack.sluice.token_issue(name, DB, "1h").unwrap();
            let conninfo = stack.pg_conninfo(DB, &db_token, "sslmode=disable");
            let per_agent = (clients / names.len()).to_string();
            let pg_slots = (16 / names.len()).max(1).to_string();
            let argv = [
                LOAD_AGENT,
                &per_agent,
                &secs.to_string(),
                rt.ca.to_str().unwrap(),
                &up.to_string(),
                HOST,
                &token,
                &conninfo,
                &pg_slots,
            ];
            children.push(rt.spawn(name, &argv).unwrap());
        }
        for mut child in children {
            let status =
                process::wait_timeout(&mut child, Duration::from_secs(secs + 120)).unwrap();
            assert!(status.is_some(), "a load agent hung");
            let mut out = String::new();
            std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
            summaries.push(
                serde_json::from_str::<Value>(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}")),
            );
        }
        rss.push(process::status_kib(pid, "VmRSS:"));
    }
    eprintln!("load {label}: {summaries:?}");
    for s in &summaries {
        assert_eq!(s["errors"], serde_json::json!({}), "errors under load: {s}");
        assert!(
            s["http_ok"].as_u64().unwrap() > 0 && s["pg_ok"].as_u64().unwrap() > 0,
            "{s}"
        );
    }
    // Everything is closed again: descriptors and map entries go back.
    poll(
        "sluice's descriptors back to the baseline",
        Duration::from_secs(60),
        || (open_fds(pid) <= fds_before + 4).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}: {} open, {fds_before} before", open_fds(pid)));
    poll(
        "the connection maps back to the baseline",
        Duration::from_secs(60),
        || {
            (map_entries(&stack, "SLUICE_TUPLE_DST") <= tuples_before + 4
                && map_entries(&stack, "SLUICE_COOKIE_DST") <= cookies_before + 4)
                .then_some(())
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}: tuple {} cookie {}",
            map_entries(&stack, "SLUICE_TUPLE_DST"),
            map_entries(&stack, "SLUICE_COOKIE_DST")
        )
    });
    assert_daemon_healthy(&stack);
    let _ = WAIT;
    stack.assert_no_secret_leaked();
    rss
}

#[test]
fn a_small_mixed_https_and_postgres_load_runs_without_errors_or_leaks() {
    mixed_load("load-small", 2, 40, 8);
}

/// Issue 7's memory soak: 10 minutes of the mixed load. Sluice's RSS after
/// the last 9 minutes is no more than after the first (allocator and
/// cache warm-up happen in the first minute; 10% or 8 MiB of slack for
/// what the allocator keeps).
#[test]
#[ignore = "soak: 200 clients for 10 min; run by cargo xtask soak"]
fn soak_ten_minutes_of_load_leave_no_rss_growth() {
    let rss = mixed_load_phases("load-rss", 4, 200, &[60, 540]);
    eprintln!(
        "sluice RSS after 1 min: {} KiB, after 10 min: {} KiB",
        rss[0], rss[1]
    );
    assert!(
        rss[1] <= rss[0] + (rss[0] / 10).max(8 * 1024),
        "RSS grew from {} KiB to {} KiB",
        rss[0],
        rss[1]
    );
}

#[test]
#[ignore = "soak: 1,000 clients for 60 s; run by cargo xtask soak"]
fn soak_a_thousand_concurrent_agents_mixing_psql_and_curl_for_60_s() {
    mixed_load("load-soak", 4, 1000, 60);
}
