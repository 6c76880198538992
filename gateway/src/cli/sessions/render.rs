//! How records read for people: one-line summaries (`tail`, `show`) and the
//! lines of `replay`'s timed transcript ([`super::replay`]).
//!
//! The transcript puts what the agent did on the left margin and what came
//! of it indented below, whatever the protocol:
//! ```text
//! session s-019a2b3c4d5e-1f2e3d4c agent ci-bot (pid 4242, uid 1000) service billing-db
//! +    0.000s  open       postgres+tls to 10.0.0.5:5432 from 10.0.0.9:41234
//! +    0.004s  auth_ok    token tok_1a2b
//! +    0.010s  SQL        SELECT name, ssn FROM customers
//! +    0.012s               -> masked ssn (3 values)
//! +    0.020s  SQL        DROP TABLE customers
//! +    0.020s               -> denied: DROP is denied (rule DROP)
//! +    0.031s  GET        /v1/charges?limit=1 -> 200
//! +    0.040s  COMMAND    git-upload-pack 'repo.git'
//! +    0.500s  close      after 0.500s
//!                           -> exit 0: git-upload-pack 'repo.git'
//! ```
use std::time::Duration;

use serde_json::Value;

use super::{clean, print_line, text, timestamp, CliError, Record};

/// Fields every line has; not repeated in event summaries.
const COMMON_FIELDS: [&str; 11] = [
    "ts", "session", "agent", "pid", "uid", "service", "event", "seq", "prev", "lines", "head",
];

/// `fields` joined: `ssn, card.number`.
fn list_of(v: &Value) -> String {
    v.as_array()
        .map(|a| a.iter().map(text).collect::<Vec<_>>().join(", "))
        .unwrap_or_else(|| text(v))
}

/// Every field but the common ones, as `key=value`.
fn other_fields(v: &Value) -> String {
    v.as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| !COMMON_FIELDS.contains(&k.as_str()))
                .map(|(k, v)| format!("{k}={}", text(v)))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// What happened, in a few words: `GET /v1/x 200`, the SQL, a reason.
pub(super) fn summary(v: &Value) -> String {
    let f = |k: &str| text(&v[k]);
    match v["event"].as_str().unwrap_or("") {
        "open" => format!(
            "{} to {} from {}",
            f("protocol"),
            f("original_dst"),
            f("peer")
        ),
        "auth_ok" => format!("token {}", f("token_id")),
        "auth_fail" => f("reason"),
        "query" => f("sql"),
        "request" => format!("{} {} {}", f("method"), f("path"), f("status")),
        "response" => format!("{} {} bytes", f("status"), f("bytes")),
        "command" => f("command"),
        "denied" => format!("{} (rule {})", f("reason"), f("rule")),
        "approval_wait" => format!("waiting for approval {}", f("approval")),
        "approved" => format!("approval {} by {}", f("approval"), f("by")),
        "rejected" => format!("approval {}: {}", f("approval"), f("reason")),
        "masked" => format!("{} ({} values)", list_of(&v["fields"]), f("count")),
        "error" => match v.get("sqlstate").or_else(|| v.get("code")) {
            Some(code) => format!("{} {}", text(code), f("message")),
            None => f("message"),
        },
        "close" => format!(
            "after {}",
            format_ms(v["duration_ms"].as_u64().unwrap_or(0))
        ),
        _ => other_fields(v),
    }
}

/// `1.234s`, `3m 4s`: a duration in milliseconds, for people.
pub(crate) fn format_ms(ms: u64) -> String {
    if ms < 60_000 {
        format!("{}.{:03}s", ms / 1000, ms % 1000)
    } else {
        humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
    }
}

/// `ts` shortened to milliseconds, e.g. `2026-11-29T08:50:00.123Z`.
fn short_ts(v: &Value) -> String {
    timestamp(v).map_or_else(
        || text(&v["ts"]),
        |t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
    )
}

/// `2026-11-29T08:50:00.123Z s-… ci-bot payments-api request GET /v1/x 200`.
pub(super) fn tail_line(v: &Value) -> String {
    let f = |k: &str| text(&v[k]);
    clean(&format!(
        "{} {} {} {} {} {}",
        short_ts(v),
        f("session"),
        f("agent"),
        f("service"),
        f("event"),
        summary(v)
    ))
}

/// `session s-… agent ci-bot (pid 4242, uid 1000) service payments-api`.
pub(super) fn session_header(v: &Value) -> String {
    let f = |k: &str| text(&v[k]);
    clean(&format!(
        "session {} agent {} (pid {}, uid {}) service {}",
        f("session"),
        f("agent"),
        f("pid"),
        f("uid"),
        f("service")
    ))
}

/// `sessions show`: a header, then one line per event.
pub(super) fn show(records: &[Record], json: bool) -> Result<(), CliError> {
    if json {
        return records.iter().try_for_each(|r| print_line(&r.raw));
    }
    print_line(&session_header(&records[0].value))?;
    records.iter().try_for_each(|r| {
        let v = &r.value;
        print_line(&clean(&format!(
            "{} {} {}",
            short_ts(v),
            text(&v["event"]),
            summary(v)
        )))
    })
}

/// The sizes an HTTP request line carries, if the handler recorded any:
/// ` (request 12 bytes, response 340 bytes)`.
fn sizes(v: &Value) -> String {
    let parts: Vec<String> = [
        ("request_bytes", "request"),
        ("response_bytes", "response"),
        ("bytes", "response"),
    ]
    .iter()
    .filter_map(|(key, label)| Some(format!("{label} {} bytes", v.get(*key)?.as_u64()?)))
    .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

/// The transcript text of one event, after the time offset: the label
/// column and what happened, outcomes indented under their statement.
pub(crate) fn transcript_text(v: &Value) -> String {
    let f = |k: &str| text(&v[k]);
    let outcome = |s: String| format!("{:<10}   -> {s}", "");
    let line = match v["event"].as_str().unwrap_or("") {
        "query" => format!("{:<10} {}", "SQL", f("sql")),
        "command" => {
            let label = match v["kind"].as_str() {
                Some("shell") => "SHELL",
                Some("subsystem") => "SUBSYSTEM",
                Some("attach") => "ATTACH",
                _ => "COMMAND",
            };
            format!("{label:<10} {}", f("command"))
        }
        // One line per command that ended, each escaped on its own.
        "close" => {
            return std::iter::once(format!("{:<10} {}", "close", summary(v)))
                .chain(v["exits"].as_array().into_iter().flatten().map(|e| {
                    let how = match (e.get("exit_status"), e.get("exit_signal")) {
                        (Some(status), _) => format!("exit {}", text(status)),
                        (None, Some(signal)) => format!("killed by SIG{}", text(signal)),
                        (None, None) => "closed without exit status".into(),
                    };
                    outcome(format!("{how}: {}", text(&e["command"])))
                }))
                .map(|line| clean(line.trim_end()))
                .collect::<Vec<_>>()
                .join("\n")
        }
        "request" => format!(
            "{:<10} {} -> {}{}",
            f("method"),
            f("path"),
            f("status"),
            sizes(v)
        ),
        "response" => outcome(format!("response {}, {} bytes", f("status"), f("bytes"))),
        "denied" => outcome(format!("denied: {} (rule {})", f("reason"), f("rule"))),
        "masked" => outcome(format!(
            "masked {} ({} values)",
            list_of(&v["fields"]),
            f("count")
        )),
        "error" => outcome(format!("error {}", summary(v))),
        "approval_wait" => outcome(format!("held for approval {}", f("approval"))),
        "approved" => outcome(format!("approved by {}", f("by"))),
        "rejected" => outcome(format!("rejected: {}", f("reason"))),
        event if v.get("rows").is_some() => outcome(format!("{event} {} rows", f("rows"))),
        event => format!("{event:<10} {}", summary(v)),
    };
    clean(line.trim_end())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn tail_line_has_the_documented_shape_and_escapes_control_characters() {
        let line = json!({"ts": "2026-11-29T08:50:00.123456Z", "session": "s-1", "agent": "ci-bot", "service": "payments-api",
                          "event": "request", "method": "GET", "path": "/v1/x", "status": 200});
        assert_eq!(
            tail_line(&line),
            "2026-11-29T08:50:00.123Z s-1 ci-bot payments-api request GET /v1/x 200"
        );
        let evil =
            json!({"ts": "2026-11-29T08:50:00Z", "event": "query", "sql": "SELECT 1;\n\u{1b}[2J"});
        assert!(!tail_line(&evil).chars().any(char::is_control));
    }

    #[test]
    fn summaries_name_the_event_fields_never_values() {
        assert_eq!(
            summary(&json!({"event": "masked", "fields": ["ssn", "card.number"], "count": 4})),
            "ssn, card.number (4 values)"
        );
        assert_eq!(
            summary(&json!({"event": "close", "duration_ms": 1234, "lines": 3, "head": "ab"})),
            "after 1.234s"
        );
        assert_eq!(
            summary(&json!({"event": "denied", "reason": "DROP is denied", "rule": "DROP"})),
            "DROP is denied (rule DROP)"
        );
        assert_eq!(
            summary(&json!({"event": "future", "ts": "x", "what": "y", "seq": 3})),
            "what=y"
        );
    }

    #[test]
    fn transcript_shows_statements_with_their_outcomes() {
        let t = |v: Value| transcript_text(&v);
        assert_eq!(
            t(json!({"event": "query", "sql": "SELECT ssn FROM customers"})),
            "SQL        SELECT ssn FROM customers"
        );
        assert_eq!(
            t(json!({"event": "masked", "fields": ["ssn"], "count": 3})),
            "             -> masked ssn (3 values)"
        );
        assert_eq!(
            t(json!({"event": "denied", "reason": "DROP is denied", "rule": "DROP"})),
            "             -> denied: DROP is denied (rule DROP)"
        );
        assert_eq!(
            t(json!({"event": "error", "message": "division by zero", "sqlstate": "22012"})),
            "             -> error 22012 division by zero"
        );
        assert_eq!(
            t(json!({"event": "result", "rows": 2})),
            "             -> result 2 rows"
        );
        assert_eq!(
            t(json!({"event": "request", "method": "POST", "path": "/v1/refunds", "status": 403})),
            "POST       /v1/refunds -> 403"
        );
        assert_eq!(
            t(
                json!({"event": "request", "method": "GET", "path": "/v1/x", "status": 200, "request_bytes": 0, "response_bytes": 512})
            ),
            "GET        /v1/x -> 200 (request 0 bytes, response 512 bytes)"
        );
        assert_eq!(
            t(json!({"event": "response", "status": 200, "bytes": 10})),
            "             -> response 200, 10 bytes"
        );
        assert_eq!(
            t(json!({"event": "close", "duration_ms": 20})),
            "close      after 0.020s"
        );
        assert_eq!(
            t(json!({"event": "command", "command": "shell", "kind": "shell"})),
            "SHELL      shell"
        );
        assert_eq!(
            t(
                json!({"event": "close", "duration_ms": 20, "exits": [{"channel": 0, "command": "echo hi\nrm x", "exit_status": 0}, {"channel": 1, "command": "sleep 9", "exit_signal": "TERM"}]})
            ),
            "close      after 0.020s\n             -> exit 0: echo hi\\nrm x\n             -> killed by SIGTERM: sleep 9"
        );
        assert!(!t(json!({"event": "query", "sql": "SELECT 1;\n\u{1b}[2J"}))
            .chars()
            .any(char::is_control));
    }
}
