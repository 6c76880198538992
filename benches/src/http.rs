//! Scenarios 3 and 4: HTTPS with TLS on both legs, direct to the nginx
//! upstream, through nginx as the peer proxy, and through Sluice (token
//! check, credential swap, masking of `card.number`, records).
//!
//! - keep-alive HTTP/1.1: `wrk -c 64 -t 2 --latency` (requests/s and p99);
//! - HTTP/2: `h2load -c 16 -m 10 -t 2`;
//! - new connections: `wrk -c 16 -t 2 -H "Connection: close"`, so every
//!   request is a full TLS handshake (wrk resumes no sessions); Sluice's
//!   minted certificate is cached after the first.
//!
//! The load generators resolve the bench's host names through a private
//! `/etc/hosts` bind mount. As an agent, the load generator runs under
//! `sluice exec` and sends its token; the upstream answers 401 unless it
//! gets the real key, which wrk and h2load count as errors.
use std::{process::Command, time::Duration};

use anyhow::{bail, Context, Result};
use sluice_tests::process;

use crate::{
    cpu,
    peers::UPSTREAM_BODY,
    rig::{Rig, AGENT, AGENT_RULES, API_HOST, PROXY_HOST, RULES},
    stats::{interleave, Better, Run, Table},
    tools, Mode,
};

pub const SYSTEMS: [&str; 3] = ["direct", "nginx", "sluice"];
/// Sluice with [`RULES`] rules on the service instead of two: the
/// keep-alive scenario's cost-growth run (its own gateway and agent).
pub const SLUICE_RULES: &str = "sluice, 1000 rules";
/// The keep-alive scenario's systems.
const KEEPALIVE_SYSTEMS: [&str; 4] = ["direct", "nginx", "sluice", SLUICE_RULES];
const PATH: &str = "/v1/charges/ch_1";

/// Which client runs and where it points.
struct Targets {
    direct: String,
    nginx: String,
    sluice: String,
    key: String,
    token: String,
    /// The token of the gateway with [`RULES`] rules.
    token_rules: String,
}

impl Targets {
    /// HTTP/1.1 targets, or with `h2` the listeners that offer HTTP/2.
    /// Sluice's service port is the upstream's HTTP/1.1 one either way:
    /// the agent's HTTP/2 ends at Sluice, which, like nginx, talks HTTP/1.1
    /// upstream.
    fn new(rig: &Rig, h2: bool) -> Result<Targets> {
        let pick = |n: &crate::peers::Nginx| {
            if h2 {
                n.h2_addr.context("no HTTP/2 listener")
            } else {
                Ok(n.addr)
            }
        };
        Ok(Targets {
            direct: format!("https://{API_HOST}:{}{PATH}", pick(&rig.upstream)?.port()),
            nginx: format!("https://{PROXY_HOST}:{}{PATH}", pick(&rig.proxy)?.port()),
            sluice: format!("https://{API_HOST}:{}{PATH}", rig.upstream.addr.port()),
            key: rig.api_key.clone(),
            token: rig.api_token.clone(),
            token_rules: rig.api_token_rules.clone(),
        })
    }
}

/// Runs `argv_for(url, authorization)` as `system` and returns its stdout.
fn client(
    rig: &Rig,
    t: &Targets,
    system: &str,
    timeout: Duration,
    argv_for: &dyn Fn(&str, &str) -> Vec<String>,
) -> Result<String> {
    let (url, auth) = match system {
        "direct" => (&t.direct, format!("Bearer {}", t.key)),
        // nginx replaces the header with the real key, as Sluice does.
        "nginx" => (&t.nginx, format!("Bearer {}", t.token)),
        "sluice" => (&t.sluice, format!("Bearer {}", t.token)),
        SLUICE_RULES => (&t.sluice, format!("Bearer {}", t.token_rules)),
        other => bail!("unknown system {other}"),
    };
    let argv = tools::with_hosts(&rig.hosts, &argv_for(url, &auth));
    let what = argv_for("", "").first().cloned().unwrap_or_default();
    let out = match system {
        "sluice" => rig.sluice.exec_with_timeout(AGENT, &argv, timeout)?,
        SLUICE_RULES => rig
            .sluice_rules
            .exec_with_timeout(AGENT_RULES, &argv, timeout)?,
        _ => process::output_with_timeout(Command::new(&argv[0]).args(&argv[1..]), None, timeout)?,
    };
    tools::stdout_of(&format!("{what} ({system})"), &out)
}

/// What one load generator run reported.
struct Report {
    rate: f64,
    requests: f64,
    p99_ms: Option<f64>,
}

fn wrk_report(text: &str) -> Result<Report> {
    let r = tools::wrk(text)?;
    Ok(Report {
        rate: r.requests_per_sec,
        requests: r.requests,
        p99_ms: r.p99_ms,
    })
}

fn h2load_report(text: &str) -> Result<Report> {
    let (rate, requests) = tools::h2load(text)?;
    Ok(Report {
        rate,
        requests,
        p99_ms: None,
    })
}

/// A load generator's argv for (URL, `Authorization` value).
type Argv<'a> = dyn Fn(&str, &str) -> Vec<String> + 'a;

/// Runs `argv` on every one of `systems`, interleaved. Tables: the rate,
/// the proxy's CPU per request (nginx: master and workers; not for direct),
/// and with `p99` the p99 latency.
#[allow(clippy::too_many_arguments)]
fn measure(
    rig: &Rig,
    mode: &Mode,
    systems: &[&'static str],
    t: &Targets,
    secs: u64,
    argv: &Argv<'_>,
    parse: fn(&str) -> Result<Report>,
    mut tables: Vec<Table>,
) -> Result<Vec<Table>> {
    let timeout = Duration::from_secs(secs + 60);
    let with_p99 = tables.len() > 2;
    let sluice_pid = rig.sluice.pid().context("sluice run is not running")?;
    let rules_pid = rig
        .sluice_rules
        .pid()
        .context("sluice run (rules) is not running")?;
    let run = |system: &'static str| -> Run<'_> {
        Box::new(move || {
            let pids = match system {
                "nginx" => rig.proxy.pids(),
                "sluice" => vec![sluice_pid],
                SLUICE_RULES => vec![rules_pid],
                _ => Vec::new(),
            };
            let mut p99 = None;
            let (rate, cpu) = cpu::per_request(&pids, || {
                let r = parse(&client(rig, t, system, timeout, argv)?)?;
                p99 = r.p99_ms;
                Ok((r.rate, r.requests))
            })?;
            let mut values = vec![rate, if pids.is_empty() { f64::NAN } else { cpu }];
            if with_p99 {
                values.push(p99.context("the load generator printed no p99")?);
            }
            Ok(values)
        })
    };
    {
        let mut systems: Vec<(&str, Run<'_>)> = systems.iter().map(|&s| (s, run(s))).collect();
        let mut refs: Vec<&mut Table> = tables.iter_mut().collect();
        interleave(mode.rounds, &mut refs, &mut systems)?;
    }
    Ok(tables)
}

/// The CPU table that goes with a rate table of `systems` (all but
/// direct).
fn cpu_table(id: &str, title: &str, command: &str, systems: &[&str]) -> Table {
    Table::new(
        id,
        &format!("{title}: the proxy's CPU per request"),
        "µs/req",
        Better::Lower,
        command,
        &systems[1..],
    )
}

fn args(fixed: &[&str], auth: &str, url: &str) -> Vec<String> {
    let mut v: Vec<String> = fixed.iter().map(|s| s.to_string()).collect();
    v.push(format!("Authorization: {auth}"));
    v.push(url.to_string());
    v
}

/// HTTP/1.1 keep-alive: requests/s, CPU per request and p99 latency.
pub fn keepalive(rig: &mut Rig, mode: &Mode) -> Result<Vec<Table>> {
    let t = Targets::new(rig, false)?;
    check_swap_and_mask(rig, &t)?;
    let secs = mode.http_seconds;
    let duration = format!("{secs}s");
    let argv = |url: &str, auth: &str| {
        args(
            &[
                "wrk",
                "-c",
                "64",
                "-t",
                "2",
                "-d",
                &duration,
                "--latency",
                "-H",
            ],
            auth,
            url,
        )
    };
    let command =
        format!("wrk -c 64 -t 2 -d {secs}s --latency -H 'Authorization: Bearer …' https://…{PATH}");
    let title = "HTTPS keep-alive, HTTP/1.1";
    let systems = KEEPALIVE_SYSTEMS;
    let tables = vec![
        Table::new(
            "https-h1.rps",
            title,
            "req/s",
            Better::Higher,
            &command,
            &systems,
        ),
        cpu_table("https-h1.cpu", title, &command, &systems),
        Table::new(
            "https-h1.p99",
            &format!("{title}, p99 latency"),
            "ms",
            Better::Lower,
            &command,
            &systems,
        ),
    ];
    println!("    ({SLUICE_RULES}: a gateway of its own whose service has {RULES} deny rules, none matching)");
    let tables = measure(rig, mode, &systems, &t, secs, &argv, wrk_report, tables)?;
    rig.check_alive()?;
    Ok(tables)
}

/// HTTP/2 with `h2load`: requests/s and CPU per request.
pub fn h2(rig: &mut Rig, mode: &Mode) -> Result<Vec<Table>> {
    let t = Targets::new(rig, true)?;
    let secs = mode.http_seconds;
    let duration = secs.to_string();
    let argv = |url: &str, auth: &str| {
        args(
            &[
                "h2load", "-c", "16", "-m", "10", "-t", "2", "-D", &duration, "-H",
            ],
            auth,
            url,
        )
    };
    let command =
        format!("h2load -c 16 -m 10 -t 2 -D {secs} -H 'Authorization: Bearer …' https://…{PATH}");
    let title = "HTTPS, HTTP/2";
    let tables = vec![
        Table::new(
            "https-h2.rps",
            title,
            "req/s",
            Better::Higher,
            &command,
            &SYSTEMS,
        ),
        cpu_table("https-h2.cpu", title, &command, &SYSTEMS),
    ];
    let tables = measure(rig, mode, &SYSTEMS, &t, secs, &argv, h2load_report, tables)?;
    rig.check_alive()?;
    Ok(tables)
}

/// New connections: full TLS handshakes per second and CPU per connection.
pub fn handshakes(rig: &mut Rig, mode: &Mode) -> Result<Vec<Table>> {
    let t = Targets::new(rig, false)?;
    let secs = mode.handshake_seconds;
    let duration = format!("{secs}s");
    let argv = |url: &str, auth: &str| {
        args(
            &[
                "wrk",
                "-c",
                "16",
                "-t",
                "2",
                "-d",
                &duration,
                "-H",
                "Connection: close",
                "-H",
            ],
            auth,
            url,
        )
    };
    let command = format!("wrk -c 16 -t 2 -d {secs}s -H 'Connection: close' -H 'Authorization: Bearer …' https://…{PATH}");
    let title = "New TLS connections (one request each)";
    let tables = vec![
        Table::new(
            "tls-handshakes.rate",
            title,
            "conn/s",
            Better::Higher,
            &command,
            &SYSTEMS,
        ),
        cpu_table("tls-handshakes.cpu", title, &command, &SYSTEMS),
    ];
    let tables = measure(rig, mode, &SYSTEMS, &t, secs, &argv, wrk_report, tables)?;
    rig.check_alive()?;
    Ok(tables)
}

/// One curl per system first: each answers 200 with the upstream's JSON,
/// and Sluice's answer has `card.number` masked.
fn check_swap_and_mask(rig: &Rig, t: &Targets) -> Result<()> {
    let card = "4242424242424242";
    assert!(UPSTREAM_BODY.contains(card));
    let ca = rig.sluice.ca_cert_path()?;
    let upstream_ca = rig.upstream_ca.clone();
    let rules_ca = rig.sluice_rules.ca_cert_path()?;
    for system in KEEPALIVE_SYSTEMS {
        let cacert = match system {
            "sluice" => ca.clone(),
            SLUICE_RULES => rules_ca.clone(),
            _ => upstream_ca.clone(),
        };
        let body = client(
            rig,
            t,
            system,
            Duration::from_secs(30),
            &|url: &str, auth: &str| {
                [
                    "curl",
                    "-sS",
                    "--fail",
                    "--max-time",
                    "10",
                    "--noproxy",
                    "*",
                    "--cacert",
                    &cacert.display().to_string(),
                    "-H",
                    &format!("Authorization: {auth}"),
                    url,
                ]
                .iter()
                .map(|s| s.to_string())
                .collect()
            },
        )?;
        let masked = !body.contains(card);
        if !body.contains("\"ch_1\"") || masked != system.starts_with("sluice") {
            bail!(
                "{system}: unexpected answer (card number {}masked): {body}",
                if masked { "" } else { "not " }
            );
        }
    }
    Ok(())
}
