//! The load generators (pgbench, sysbench, wrk, h2load): command lines and the
//! figures parsed from their reports. A report with errors fails the run:
//! the bench fails on broken behaviour, never on speed.
use std::{ffi::OsString, path::Path, process::Output};

use anyhow::{bail, Context, Result};

/// `argv` run with `hosts` bind-mounted over `/etc/hosts` in a private
/// mount namespace (the host's file is not touched), so wrk and h2load
/// resolve the bench's service names to loopback addresses.
pub fn with_hosts(hosts: &Path, argv: &[String]) -> Vec<OsString> {
    let mut all: Vec<OsString> = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        r#"mount --bind "$0" /etc/hosts && exec "$@""#,
    ]
    .iter()
    .map(Into::into)
    .collect();
    all.push(hosts.into());
    all.extend(argv.iter().map(Into::into));
    all
}

/// stdout of a finished load generator, or an error with its stderr.
pub fn stdout_of(what: &str, out: &Output) -> Result<String> {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{what} failed with {}:\n{}\n{}",
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(stdout)
}

/// pgbench's `tps = N (without initial connection time)` and the
/// transactions it processed.
pub fn pgbench(report: &str) -> Result<(f64, f64)> {
    let tps = pgbench_tps(report)?;
    let done = report
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed:"))
        .and_then(|v| v.trim().split(['/', ' ']).next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no transaction count in pgbench's report:\n{report}"))?;
    Ok((tps, done))
}

/// pgbench's `tps = N (without initial connection time)`.
pub fn pgbench_tps(report: &str) -> Result<f64> {
    if let Some(line) = report
        .lines()
        .find(|l| l.starts_with("number of failed transactions"))
    {
        let failed: u64 = line
            .split(':')
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if failed > 0 {
            bail!("pgbench reported failed transactions: {line}\n{report}");
        }
    }
    report
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l["tps = ".len()..].split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no `tps = …` line in pgbench's report:\n{report}"))
}

/// sysbench's `transactions: N (R per sec.)`: (R, N). A run with ignored
/// errors (sysbench goes on past deadlocks and the like) fails.
pub fn sysbench(report: &str) -> Result<(f64, f64)> {
    let counted = |name: &str| -> Option<(f64, f64)> {
        let rest = report
            .lines()
            .find_map(|l| l.trim().strip_prefix(name))?
            .trim();
        let (count, rate) = rest.split_once('(')?;
        let rate = rate.split_whitespace().next()?;
        Some((rate.parse().ok()?, count.trim().parse().ok()?))
    };
    if let Some((_, ignored)) = counted("ignored errors:") {
        if ignored > 0.0 {
            bail!("sysbench ignored {ignored} errors:\n{report}");
        }
    }
    counted("transactions:").with_context(|| {
        format!("no `transactions: N (R per sec.)` in sysbench's report:\n{report}")
    })
}

/// What wrk reported.
#[derive(Debug, Clone, Copy)]
pub struct WrkReport {
    pub requests_per_sec: f64,
    /// Requests completed.
    pub requests: f64,
    /// 99th percentile latency, ms (needs `--latency`).
    pub p99_ms: Option<f64>,
}

/// Parses wrk's report; any non-2xx answer or socket error fails.
pub fn wrk(report: &str) -> Result<WrkReport> {
    if let Some(line) = report
        .lines()
        .find(|l| l.contains("Non-2xx or 3xx responses"))
    {
        bail!("wrk got error answers ({}):\n{report}", line.trim());
    }
    if let Some(line) = report
        .lines()
        .find(|l| l.trim_start().starts_with("Socket errors:"))
    {
        bail!("wrk saw socket errors ({}):\n{report}", line.trim());
    }
    let rps = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's report:\n{report}"))?;
    let p99 = report
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("99%").or_else(|| l.strip_prefix("99.000%")))
        .and_then(|v| duration_ms(v.trim()));
    let requests = report
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .with_context(|| format!("no `N requests in` line in wrk's report:\n{report}"))?;
    Ok(WrkReport {
        requests_per_sec: rps,
        requests,
        p99_ms: p99,
    })
}

/// `850.00us`, `1.23ms`, `2.00s`, `1.5m` as milliseconds.
pub fn duration_ms(s: &str) -> Option<f64> {
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit.trim() {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

/// h2load's `finished in …, N req/s, …` and the requests that succeeded;
/// failed, errored or non-2xx requests fail.
pub fn h2load(report: &str) -> Result<(f64, f64)> {
    let requests = report
        .lines()
        .find(|l| l.starts_with("requests:"))
        .with_context(|| format!("no `requests:` line in h2load's report:\n{report}"))?;
    for what in ["failed", "errored", "timeout"] {
        if count_before(requests, what).unwrap_or(0) > 0 {
            bail!("h2load: {requests}\n{report}");
        }
    }
    if let Some(codes) = report.lines().find(|l| l.starts_with("status codes:")) {
        let bad: u64 = ["3xx", "4xx", "5xx"]
            .iter()
            .filter_map(|c| count_before(codes, c))
            .sum();
        if bad > 0 || count_before(codes, "2xx") == Some(0) {
            bail!("h2load: {codes}\n{report}");
        }
    }
    let rps = report
        .lines()
        .find(|l| l.starts_with("finished in"))
        .and_then(|l| l.split(',').nth(1))
        .and_then(|p| p.trim().strip_suffix("req/s"))
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("no req/s in h2load's report:\n{report}"))?;
    let done =
        count_before(requests, "succeeded").context("succeeded requests in h2load's report")?;
    Ok((rps, done as f64))
}

/// In `…, 12 failed, …`, the number before `word`.
fn count_before(line: &str, word: &str) -> Option<u64> {
    let words: Vec<&str> = line
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .collect();
    words
        .windows(2)
        .find(|w| w[1] == word)
        .and_then(|w| w[0].parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_latency_distribution() {
        let report = "Running 10s test @ https://a:1/\n  2 threads and 64 connections\n  Latency Distribution\n     50%  850.00us\n     75%    1.20ms\n     90%    2.00ms\n     99%    4.56ms\n  100 requests in 10.00s, 1.00MB read\nRequests/sec:  12345.67\nTransfer/sec:      1.00MB\n";
        let r = wrk(report).unwrap();
        assert_eq!(r.requests_per_sec, 12345.67);
        assert_eq!(r.requests, 100.0);
        assert_eq!(r.p99_ms, Some(4.56));
        assert!(wrk(&format!("{report}  Non-2xx or 3xx responses: 3\n")).is_err());
    }

    #[test]
    fn reads_h2load_totals() {
        let report = "finished in 10.00s, 45678.90 req/s, 2.34MB/s\nrequests: 456789 total, 456789 started, 456789 done, 456789 succeeded, 0 failed, 0 errored, 0 timeout\nstatus codes: 456789 2xx, 0 3xx, 0 4xx, 0 5xx\n";
        assert_eq!(h2load(report).unwrap(), (45678.90, 456789.0));
        assert!(h2load(&report.replace("0 4xx", "7 4xx")).is_err());
        assert!(h2load(&report.replace("0 failed", "2 failed")).is_err());
    }

    #[test]
    fn reads_pgbench_tps() {
        let report = "number of transactions actually processed: 154321\nnumber of failed transactions: 0 (0.000%)\nlatency average = 0.5 ms\ntps = 15432.123456 (without initial connection time)\n";
        assert_eq!(pgbench(report).unwrap(), (15432.123456, 154321.0));
        assert!(
            pgbench_tps(&report.replace("failed transactions: 0", "failed transactions: 4"))
                .is_err()
        );
    }

    #[test]
    fn reads_sysbench_transactions() {
        let report = |ignored: u32| {
            format!("SQL statistics:\n    queries performed:\n        read:                            61234\n    transactions:                        61234  (6122.81 per sec.)\n    queries:                             61234  (6122.81 per sec.)\n    ignored errors:                      {ignored}      (0.00 per sec.)\n    reconnects:                          0      (0.00 per sec.)\n")
        };
        assert_eq!(sysbench(&report(0)).unwrap(), (6122.81, 61234.0));
        assert!(sysbench(&report(3)).is_err());
        assert!(sysbench("FATAL: error 1045").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(duration_ms("850.00us"), Some(0.85));
        assert_eq!(duration_ms("2.00s"), Some(2000.0));
    }
}
