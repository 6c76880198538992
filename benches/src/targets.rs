//! The performance issue's targets (#18), the MySQL issue's (#12) and the
//! SSH issue's (#13), each checked against one table of the run. A target
//! whose table was not measured (a scenario left out with `--only`) is not
//! judged.
//!
//! Not judged here, because no scenario measures them yet: per-request CPU
//! growth from 10 to 10,000 tokens, 1 to 1,000 rules and 1 to 10,000 idle
//! connections.
use crate::{
    redirect,
    stats::{Check, Target},
};

/// The targets, in the order the issue lists them.
pub const TARGETS: &[Target] = &[
    Target {
        text: "HTTPS keep-alive: sluice ≥ 1.0× nginx req/s",
        table: "https-h1.rps",
        check: Check::RatioAtLeast {
            system: "sluice",
            other: "nginx",
            min: 1.0,
        },
    },
    Target {
        text: "HTTPS keep-alive: sluice p99 ≤ nginx p99",
        table: "https-h1.p99",
        check: Check::RatioAtMost {
            system: "sluice",
            other: "nginx",
            max: 1.0,
        },
    },
    Target {
        text: "HTTPS keep-alive: sluice CPU per request ≤ 1.2× nginx",
        table: "https-h1.cpu",
        check: Check::RatioAtMost {
            system: "sluice",
            other: "nginx",
            max: 1.2,
        },
    },
    Target {
        text: "HTTP/2: sluice ≥ 1.0× nginx req/s",
        table: "https-h2.rps",
        check: Check::RatioAtLeast {
            system: "sluice",
            other: "nginx",
            min: 1.0,
        },
    },
    Target {
        text: "new TLS connections: sluice ≥ 0.9× nginx conn/s",
        table: "tls-handshakes.rate",
        check: Check::RatioAtLeast {
            system: "sluice",
            other: "nginx",
            min: 0.9,
        },
    },
    Target {
        text: "pgbench prepared: sluice ≥ 1.0× pgbouncer",
        table: "pg-prepared.tps",
        check: Check::RatioAtLeast {
            system: "sluice",
            other: "pgbouncer",
            min: 1.0,
        },
    },
    Target {
        text: "pgbench prepared: sluice ≥ 0.85× direct",
        table: "pg-prepared.tps",
        check: Check::RatioAtLeast {
            system: "sluice",
            other: "direct",
            min: 0.85,
        },
    },
    Target {
        text: "pgbench simple: sluice ≥ 1.0× pgbouncer",
        table: "pg-simple.tps",
        check: Check::RatioAtLeast {
            system: "sluice",
            other: "pgbouncer",
            min: 1.0,
        },
    },
    Target {
        text: "sysbench point select: sluice ≥ 0.8× direct",
        table: "mysql-point-select.tps",
        check: Check::RatioAtLeast {
            system: "sluice",
            other: "direct",
            min: 0.8,
        },
    },
    Target {
        text: "scp: sluice ≥ 0.7× direct MiB/s",
        table: "scp.rate",
        check: Check::RatioAtLeast {
            system: "sluice",
            other: "direct",
            min: 0.7,
        },
    },
    Target {
        text: "memory: ≤ 24 KiB RSS per idle TLS connection",
        table: "scale.rss",
        check: Check::MedianAtMost {
            system: "sluice",
            max: 24.0,
        },
    },
    Target {
        text: "connection burst through the redirect: no connect over 100 ms",
        table: "redirect.stalls",
        check: Check::MedianAtMost {
            system: redirect::REDIRECTED,
            max: 0.0,
        },
    },
    Target {
        text: "redirect: ≤ 2 µs added per connect",
        table: "redirect.us",
        check: Check::DeltaAtMost {
            system: redirect::REDIRECTED,
            other: redirect::TO_SLUICE,
            max: 2.0,
        },
    },
];
