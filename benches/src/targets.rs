//! The performance issue's targets (#18), the MySQL issue's (#12) and the
//! SSH issue's (#13), each checked against one table of the run. A target
//! whose table was not measured (a scenario left out with `--only`) is not
//! judged.
//!
//! Cost growth is judged for rules (the keep-alive scenario's gateway with
//! 1,000 rules against the main one's two) and idle connections (`scale`:
//! a light stream's CPU per request with the idle connections held or not).
//! Not judged, because no scenario measures it: growth with the number of
//! tokens in Redis. A token is read from Redis once per connection, by its
//! digest (`HGETALL` of its own key, then `HGET` in the revocation hash),
//! and re-checked without Redis while no revocation happens, so its cost
//! does not depend on how many tokens there are.
use crate::{
    http::SLUICE_RULES,
    redirect,
    scale::HELD,
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
        text: "cost growth: CPU per HTTPS request with 1,000 rules ≤ 1.1× with 2",
        table: "https-h1.cpu",
        check: Check::RatioAtMost {
            system: SLUICE_RULES,
            other: "sluice",
            max: 1.1,
        },
    },
    Target {
        text: "cost growth: CPU per request with the idle connections held ≤ 1.1× with none",
        table: "scale.cpu",
        check: Check::RatioAtMost {
            system: HELD,
            other: "none held",
            max: 1.1,
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
