//! The approvals page: pending approvals, updated live over server-sent
//! events (HTML Living Standard §9.2), with approve and deny (with a
//! reason) for those who may decide them.
//!
//! The event stream sends the table body rendered for the signed-in
//! person (buttons only where they may act) whenever the pending set
//! changes: it re-reads Redis on every decision announced on the
//! approvals channel and every [`TICK`] (new holds are not announced).
//! Decisions go through the same Redis state as `sluice approve|deny`.
use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::{body::Frame, Response, StatusCode};

use super::{
    actions::Target,
    html::{self, escape, Body},
    roles::Roles,
    session::WebSession,
    Console,
};
use crate::state::{Approval, ApprovalStatus, Decided};

/// How often the event stream re-reads the pending approvals.
pub const TICK: Duration = Duration::from_millis(500);
/// A comment line keeps idle streams open through proxies.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// The `<tbody>` rows for `pending`, as `web`'s person may act on them.
fn rows(console: &Console, web: &WebSession, pending: &[Approval]) -> String {
    if pending.is_empty() {
        return "<tr><td colspan=\"6\" class=\"muted\">No pending approvals.</td></tr>".into();
    }
    let roles = Roles::new(&console.cfg, &web.person);
    pending
        .iter()
        .map(|a| {
            let id = escape(&a.id);
            let actions = if roles.may_decide(&a.service) {
                format!(
                    "<form method=\"post\" action=\"/approvals/{id}/approve\">{csrf}\
                     <button type=\"submit\" class=\"approve\">Approve</button></form>\
                     <form method=\"post\" action=\"/approvals/{id}/deny\" class=\"deny\">{csrf}\
                     <input name=\"reason\" placeholder=\"Reason\" aria-label=\"Reason\">\
                     <button type=\"submit\" class=\"deny\">Deny</button></form>",
                    csrf = html::csrf_field(web)
                )
            } else {
                "<span class=\"muted\">awaiting an approver of this service</span>".into()
            };
            format!(
                "<tr id=\"{id}\"><td><code>{id}</code></td><td>{}</td><td>{}</td>\
                 <td><code>{}</code></td><td>{}<br><span class=\"muted\">expires {}</span></td>\
                 <td class=\"actions\">{actions}</td></tr>",
                escape(&a.agent),
                escape(&a.service),
                escape(&a.summary),
                html::time(a.created),
                html::time(a.expires),
            )
        })
        .collect()
}

/// The pending approvals, or an error row (Redis down).
async fn pending_rows(console: &Console, web: &WebSession) -> String {
    let listed = match console.state.get().await {
        Ok(state) => state.approval_list(true).await,
        Err(e) => Err(e),
    };
    match listed {
        Ok(pending) => rows(console, web, &pending),
        Err(e) => format!(
            "<tr><td colspan=\"6\" class=\"error\">Approvals are unavailable: {}</td></tr>",
            escape(&e.to_string())
        ),
    }
}

/// A short digest of rendered rows: the page tells the event stream what
/// it shows, so the stream sends only what differs.
fn digest(rows: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(rows.as_bytes())[..12])
}

/// `GET /approvals`.
pub async fn page(console: &Console, web: &WebSession) -> Response<Body> {
    let rows = pending_rows(console, web).await;
    let body = format!(
        "<p class=\"muted\">Held operations wait here until someone who may decide them \
         approves or denies; this list updates by itself.</p>\
         <table class=\"approvals\"><thead><tr><th>Approval</th><th>Agent</th><th>Service</th>\
         <th>Operation</th><th>Held since</th><th></th></tr></thead>\
         <tbody id=\"pending\" data-live=\"/approvals/events?seen={}\">{rows}</tbody></table>",
        digest(&rows)
    );
    html::page("Pending approvals", web, &body)
}

/// One server-sent event named `event` carrying `data` (one `data:` line
/// per line of it).
fn sse(event: &str, data: &str) -> Bytes {
    let mut out = format!("event: {event}\n");
    for line in data.lines() {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// What the event stream keeps between frames.
struct Live {
    console: Arc<Console>,
    web: WebSession,
    decisions: tokio::sync::broadcast::Receiver<String>,
    /// The digest of the rows the browser shows.
    shown: String,
    first: bool,
    quiet_since: tokio::time::Instant,
}

/// `GET /approvals/events?seen=<digest>`: `approvals` events carrying the
/// table body, whenever it differs from what the browser shows (`seen`,
/// the digest the page was rendered with).
pub fn events(console: Arc<Console>, web: WebSession, seen: &str) -> Response<Body> {
    let live = Live {
        decisions: console.state.approval_decisions(),
        console,
        web,
        shown: seen.to_string(),
        first: true,
        quiet_since: tokio::time::Instant::now(),
    };
    let stream = futures_util::stream::unfold(live, |mut live| async move {
        loop {
            if !live.first {
                tokio::select! {
                    _ = live.decisions.recv() => {}
                    _ = tokio::time::sleep(TICK) => {}
                }
            }
            live.first = false;
            let rows = pending_rows(&live.console, &live.web).await;
            let now = digest(&rows);
            if now != live.shown {
                let frame = sse("approvals", &rows);
                live.shown = now;
                live.quiet_since = tokio::time::Instant::now();
                return Some((Ok::<_, Infallible>(Frame::data(frame)), live));
            }
            if live.quiet_since.elapsed() >= KEEPALIVE {
                live.quiet_since = tokio::time::Instant::now();
                return Some((
                    Ok(Frame::data(Bytes::from_static(b": keepalive\n\n"))),
                    live,
                ));
            }
        }
    });
    html::response(
        StatusCode::OK,
        "text/event-stream",
        StreamBody::new(stream).boxed_unsync(),
    )
}

/// `POST /approvals/{id}/approve` or `/deny` (`approve` says which), the
/// CSRF token already checked: 403 unless the person may decide the
/// approval's service, then the decision with `by` = their subject.
pub async fn decide(
    console: &Console,
    web: &WebSession,
    id: &str,
    approve: bool,
    reason: &str,
) -> Response<Body> {
    let action = if approve { "approve" } else { "deny" };
    let reason = (!approve).then_some(reason);
    let record = |outcome: &str| {
        console
            .actions
            .record(&web.person, action, Target::Approval(id), reason, outcome)
    };
    let state = match console.state.get().await {
        Ok(s) => s,
        Err(e) => {
            record(&e.to_string());
            return html::error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
        }
    };
    let approval = match state.approval_get(id).await {
        Ok(Some(a)) => a,
        Ok(None) => {
            record("unknown");
            return html::error(StatusCode::NOT_FOUND, &format!("No approval {id}."));
        }
        Err(e) => {
            record(&e.to_string());
            return html::error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
        }
    };
    if !Roles::new(&console.cfg, &web.person).may_decide(&approval.service) {
        record("forbidden");
        return html::error(
            StatusCode::FORBIDDEN,
            &format!(
                "You may not decide approvals of service {}: you are in none of its approvers' groups.",
                approval.service
            ),
        );
    }
    let status = if approve {
        ApprovalStatus::Approved
    } else {
        ApprovalStatus::Denied
    };
    let decided = state
        .approval_decide(id, status, &web.person.subject, reason.unwrap_or(""))
        .await;
    match decided {
        Ok(Decided::Done) => {
            record("done");
            html::redirect("/approvals")
        }
        Ok(Decided::Unknown) => {
            record("unknown");
            html::error(StatusCode::NOT_FOUND, &format!("No approval {id}."))
        }
        Ok(Decided::Already(s)) => {
            record(&format!("already {}", s.as_str()));
            html::error(
                StatusCode::CONFLICT,
                &format!("Approval {id} is already {}.", s.as_str()),
            )
        }
        Err(e) => {
            record(&e.to_string());
            html::error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_frames_split_lines_into_data_fields() {
        assert_eq!(
            sse("approvals", "<tr>\n</tr>"),
            Bytes::from("event: approvals\ndata: <tr>\ndata: </tr>\n\n")
        );
    }
}
