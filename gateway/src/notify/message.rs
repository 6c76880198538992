//! What a notification says: the record line's fields (`json`), or a
//! Slack incoming-webhook message (`slack`, `{"text": …}`).
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;

use super::Format;
use crate::recorder::Observed;

/// The header carrying `sha256=<hex HMAC-SHA256 of the raw body>` on signed
/// `json` messages.
pub const SIGNATURE_HEADER: &str = "x-sluice-signature";

/// One formatted notification.
#[derive(Debug, Clone)]
pub struct Message {
    pub format: Format,
    /// The JSON body, exactly as sent (and signed).
    pub body: Vec<u8>,
}

impl Message {
    /// Formats `line` for a target of `format`; Slack messages about a
    /// held operation link to `console` (its approvals page URL) when one
    /// is configured.
    pub fn new(format: Format, line: &Observed<'_>, console: Option<&str>) -> Message {
        let fields = fields(line);
        let body = match format {
            Format::Json => Value::Object(fields),
            Format::Slack => serde_json::json!({ "text": slack_text(&fields, console) }),
        };
        Message {
            format,
            body: serde_json::to_vec(&body).unwrap_or_default(),
        }
    }
}

/// The record line's fields: `ts`, `session`, `agent`, `pid`, `uid`,
/// `service`, `event` and the event's own fields.
fn fields(line: &Observed<'_>) -> Map<String, Value> {
    let ts = chrono::DateTime::<chrono::Utc>::from(line.at)
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let mut out = Map::new();
    out.insert("ts".into(), ts.into());
    out.insert("session".into(), line.session.into());
    out.insert("agent".into(), line.meta.agent.clone().into());
    out.insert("pid".into(), line.meta.pid.into());
    out.insert("uid".into(), line.meta.uid.into());
    out.insert("service".into(), line.meta.service.clone().into());
    if let Ok(Value::Object(event)) = serde_json::to_value(line.event) {
        out.extend(event);
    }
    out
}

fn text(fields: &Map<String, Value>, key: &str) -> String {
    match fields.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

/// One line for a chat channel: what happened, to whom, and for a held
/// operation the commands that release it.
fn slack_text(f: &Map<String, Value>, console: Option<&str>) -> String {
    let (agent, service, session) = (text(f, "agent"), text(f, "service"), text(f, "session"));
    let who = format!("agent *{agent}* on service *{service}* (session `{session}`)");
    match text(f, "event").as_str() {
        "approval_wait" => {
            let id = text(f, "approval");
            let console = console
                .map(|url| format!(" Or decide in the console: <{url}|{url}>"))
                .unwrap_or_default();
            format!(
                ":hourglass: Sluice approval `{id}` is waiting: {who} wants `{}`. Approve with `sluice approve {id}` or deny with `sluice deny {id} --reason …`.{console}",
                text(f, "summary")
            )
        }
        "denied" => format!(
            ":no_entry: Sluice denied {who}: {} (rule `{}`)",
            text(f, "reason"),
            text(f, "rule")
        ),
        "auth_fail" => format!(
            ":warning: Sluice refused a login by {who}: {}",
            text(f, "reason")
        ),
        event => {
            let mut rest: Vec<String> = f
                .iter()
                .filter(|(k, _)| {
                    !matches!(
                        k.as_str(),
                        "ts" | "session" | "agent" | "pid" | "uid" | "service" | "event"
                    )
                })
                .map(|(k, v)| {
                    format!(
                        "{k}: {}",
                        v.as_str().map_or_else(|| v.to_string(), str::to_string)
                    )
                })
                .collect();
            rest.sort();
            format!("Sluice {event}: {who}. {}", rest.join(", "))
        }
    }
}

/// `sha256=<hex>`: HMAC-SHA256 of `body` keyed by `secret` (RFC 2104).
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::recorder::{Event, SessionMeta};

    fn line(event: &Event, meta: &SessionMeta, console: Option<&str>) -> Message {
        Message::new(
            Format::Slack,
            &Observed {
                session: "s-1",
                meta,
                at: SystemTime::UNIX_EPOCH,
                event,
            },
            console,
        )
    }

    #[test]
    fn slack_names_the_approval_and_how_to_release_it() {
        let meta = SessionMeta {
            agent: "ci-bot".into(),
            pid: 7,
            uid: 1000,
            service: "billing-db".into(),
        };
        let wait = Event::ApprovalWait {
            approval: "apr_x".into(),
            summary: "DELETE FROM t WHERE id = 1".into(),
        };
        let body: Value = serde_json::from_slice(&line(&wait, &meta, None).body).unwrap();
        let text = body["text"].as_str().unwrap();
        assert!(text.contains("apr_x") && text.contains("ci-bot") && text.contains("billing-db"));
        assert!(text.contains("sluice approve apr_x") && text.contains("DELETE FROM t"));
        assert!(!text.contains("console"));
        let url = "https://127.0.0.1:9443/approvals";
        let linked: Value = serde_json::from_slice(&line(&wait, &meta, Some(url)).body).unwrap();
        assert!(linked["text"].as_str().unwrap().contains(url), "{linked}");
    }

    #[test]
    fn signature_is_hex_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
