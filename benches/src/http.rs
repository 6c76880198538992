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
    peers::UPSTREAM_BODY,
    rig::{Rig, AGENT, API_HOST, PROXY_HOST},
    stats::{interleave, Better, Run, Table},
    tools, Mode,
};

pub const SYSTEMS: [&str; 3] = ["direct", "nginx", "sluice"];
const PATH: &str = "/v1/charges/ch_1";

/// Which client runs and where it points.
struct Targets {
    direct: String,
    nginx: String,
    sluice: String,
    key: String,
    token: String,
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
        other => bail!("unknown system {other}"),
    };
    let argv = tools::with_hosts(&rig.hosts, &argv_for(url, &auth));
    let what = argv_for("", "").first().cloned().unwrap_or_default();
    let out = if system == "sluice" {
        rig.sluice.exec_with_timeout(AGENT, &argv, timeout)?
    } else {
        process::output_with_timeout(Command::new(&argv[0]).args(&argv[1..]), None, timeout)?
    };
    tools::stdout_of(&format!("{what} ({system})"), &out)
}

/// HTTP/1.1 keep-alive: requests/s and p99 latency.
pub fn keepalive(rig: &mut Rig, mode: &Mode) -> Result<Vec<Table>> {
    let t = Targets::new(rig, false)?;
    check_swap_and_mask(rig, &t)?;
    let secs = mode.http_seconds;
    let argv = move |url: &str, auth: &str| -> Vec<String> {
        let mut v: Vec<String> = [
            "wrk",
            "-c",
            "64",
            "-t",
            "2",
            "-d",
            &format!("{secs}s"),
            "--latency",
            "-H",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.push(format!("Authorization: {auth}"));
        v.push(url.to_string());
        v
    };
    let command =
        format!("wrk -c 64 -t 2 -d {secs}s --latency -H 'Authorization: Bearer …' https://…{PATH}");
    let mut rps = Table::new(
        "https-h1.rps",
        "HTTPS keep-alive, HTTP/1.1",
        "req/s",
        Better::Higher,
        &command,
        &SYSTEMS,
    );
    let mut p99 = Table::new(
        "https-h1.p99",
        "HTTPS keep-alive, HTTP/1.1, p99 latency",
        "ms",
        Better::Lower,
        &command,
        &SYSTEMS,
    );
    let timeout = Duration::from_secs(secs + 60);
    {
        let rig = &*rig;
        let run = |system: &'static str| -> Run<'_> {
            let t = &t;
            Box::new(move || {
                let r = tools::wrk(&client(rig, t, system, timeout, &argv)?)?;
                Ok(vec![
                    r.requests_per_sec,
                    r.p99_ms
                        .ok_or_else(|| anyhow::anyhow!("wrk printed no p99"))?,
                ])
            })
        };
        let mut systems: Vec<(&str, Run<'_>)> = SYSTEMS.iter().map(|&s| (s, run(s))).collect();
        interleave(mode.rounds, &mut [&mut rps, &mut p99], &mut systems)?;
    }
    rig.check_alive()?;
    Ok(vec![rps, p99])
}

/// HTTP/2 with `h2load`: requests/s.
pub fn h2(rig: &mut Rig, mode: &Mode) -> Result<Table> {
    let t = Targets::new(rig, true)?;
    let secs = mode.http_seconds;
    let argv = move |url: &str, auth: &str| -> Vec<String> {
        let mut v: Vec<String> = [
            "h2load",
            "-c",
            "16",
            "-m",
            "10",
            "-t",
            "2",
            "-D",
            &secs.to_string(),
            "-H",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.push(format!("authorization: {auth}"));
        v.push(url.to_string());
        v
    };
    let command =
        format!("h2load -c 16 -m 10 -t 2 -D {secs} -H 'authorization: Bearer …' https://…{PATH}");
    let mut rps = Table::new(
        "https-h2.rps",
        "HTTPS, HTTP/2",
        "req/s",
        Better::Higher,
        &command,
        &SYSTEMS,
    );
    let timeout = Duration::from_secs(secs + 60);
    {
        let rig = &*rig;
        let run = |system: &'static str| -> Run<'_> {
            let t = &t;
            Box::new(move || {
                Ok(vec![tools::h2load_rps(&client(
                    rig, t, system, timeout, &argv,
                )?)?])
            })
        };
        let mut systems: Vec<(&str, Run<'_>)> = SYSTEMS.iter().map(|&s| (s, run(s))).collect();
        interleave(mode.rounds, &mut [&mut rps], &mut systems)?;
    }
    rig.check_alive()?;
    Ok(rps)
}

/// New connections: full TLS handshakes per second.
pub fn handshakes(rig: &mut Rig, mode: &Mode) -> Result<Table> {
    let t = Targets::new(rig, false)?;
    let secs = mode.handshake_seconds;
    let argv = move |url: &str, auth: &str| -> Vec<String> {
        let mut v: Vec<String> = [
            "wrk",
            "-c",
            "16",
            "-t",
            "2",
            "-d",
            &format!("{secs}s"),
            "-H",
            "Connection: close",
            "-H",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.push(format!("Authorization: {auth}"));
        v.push(url.to_string());
        v
    };
    let command = format!("wrk -c 16 -t 2 -d {secs}s -H 'Connection: close' -H 'Authorization: Bearer …' https://…{PATH}");
    let mut hs = Table::new(
        "tls-handshakes.rate",
        "New TLS connections (one request each)",
        "conn/s",
        Better::Higher,
        &command,
        &SYSTEMS,
    );
    let timeout = Duration::from_secs(secs + 60);
    {
        let rig = &*rig;
        let run = |system: &'static str| -> Run<'_> {
            let t = &t;
            Box::new(move || {
                Ok(vec![
                    tools::wrk(&client(rig, t, system, timeout, &argv)?)?.requests_per_sec,
                ])
            })
        };
        let mut systems: Vec<(&str, Run<'_>)> = SYSTEMS.iter().map(|&s| (s, run(s))).collect();
        interleave(mode.rounds, &mut [&mut hs], &mut systems)?;
    }
    rig.check_alive()?;
    Ok(hs)
}

/// One curl per system first: each answers 200 with the upstream's JSON,
/// and Sluice's answer has `card.number` masked.
fn check_swap_and_mask(rig: &Rig, t: &Targets) -> Result<()> {
    let card = "4242424242424242";
    assert!(UPSTREAM_BODY.contains(card));
    let ca = rig.sluice.ca_cert_path()?;
    let upstream_ca = rig.upstream_ca.clone();
    for system in SYSTEMS {
        let cacert = if system == "sluice" {
            ca.clone()
        } else {
            upstream_ca.clone()
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
        if !body.contains("\"ch_1\"") || masked != (system == "sluice") {
            bail!(
                "{system}: unexpected answer (card number {}masked): {body}",
                if masked { "" } else { "not " }
            );
        }
    }
    Ok(())
}
