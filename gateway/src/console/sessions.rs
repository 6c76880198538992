//! The sessions pages: the list with filters (agent, service, event,
//! start time), and one session's replay — the SQL and HTTP transcript
//! from its record (DESIGN.md §4 "Session records"), and terminal
//! playback of its asciicast v2 stream (`sessions/<id>.cast`) when it has
//! one. They read the same files as `sluice sessions list | replay`,
//! through the same code.
use std::collections::HashMap;

use hyper::{Response, StatusCode};

use super::{
    html::{self, escape, Body},
    session::WebSession,
    Console,
};
use crate::{
    cli::{
        sessions::{
            format_ms, parse_since, read_session, session_path, summaries, transcript_text, Filter,
        },
        CliError,
    },
    recorder::EVENT_NAMES,
};

/// A `<select>` named `name` offering `options`, `chosen` selected.
fn select<'a>(
    name: &str,
    label: &str,
    options: impl Iterator<Item = &'a str>,
    chosen: Option<&str>,
) -> String {
    let mut out = format!("<label>{label} <select name=\"{name}\"><option value=\"\">any</option>");
    for o in options {
        let selected = if chosen == Some(o) { " selected" } else { "" };
        out.push_str(&format!("<option{selected}>{}</option>", escape(o)));
    }
    out.push_str("</select></label>");
    out
}

fn cli_error(e: CliError) -> Response<Body> {
    match e {
        CliError::Usage(m) => html::error(StatusCode::BAD_REQUEST, &m),
        e => html::error(StatusCode::NOT_FOUND, &e.to_string()),
    }
}

/// `GET /sessions?agent=&service=&event=&since=`.
pub fn list(
    console: &Console,
    web: &WebSession,
    query: &HashMap<String, String>,
) -> Response<Body> {
    let given = |k: &str| query.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let since = match given("since").map(parse_since).transpose() {
        Ok(s) => s,
        Err(m) => return html::error(StatusCode::BAD_REQUEST, &format!("since: {m}")),
    };
    let filter = Filter {
        agent: given("agent").map(str::to_string),
        service: given("service").map(str::to_string),
        event: given("event").map(str::to_string),
    };
    let log_dir = &console.cfg.gateway.log_dir;
    let found = match summaries(&log_dir.join("sessions"), &filter, since) {
        Ok(found) => found,
        Err(e) => return html::error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let cfg = &console.cfg;
    let form = format!(
        "<form method=\"get\" action=\"/sessions\" class=\"filters\">{}{}{}\
         <label>since <input name=\"since\" placeholder=\"1h or 2026-12-01T00:00:00Z\" value=\"{}\"></label>\
         <button type=\"submit\">Filter</button></form>",
        select("agent", "agent", cfg.agents.iter().map(|a| a.name.as_str()), given("agent")),
        select("service", "service", cfg.services.iter().map(|s| s.name.as_str()), given("service")),
        select("event", "with event", EVENT_NAMES.iter().copied(), given("event")),
        escape(given("since").unwrap_or("")),
    );
    let rows: String = found
        .iter()
        .rev()
        .map(|s| {
            let text = |k: &str| escape(s.first[k].as_str().unwrap_or(""));
            format!(
                "<tr><td><a href=\"/sessions/{id}\"><code>{id}</code></a></td><td>{}</td><td>{}</td>\
                 <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                text("agent"),
                text("service"),
                text("ts"),
                s.duration_ms.map_or_else(|| "open".to_string(), format_ms),
                s.queries,
                s.requests,
                s.denials + s.rejections,
                s.approvals,
                id = escape(&s.id),
            )
        })
        .collect();
    let body = format!(
        "{form}<table class=\"sessions\"><thead><tr><th>Session</th><th>Agent</th><th>Service</th>\
         <th>Start</th><th>Duration</th><th>Queries</th><th>Requests</th><th>Denials</th>\
         <th>Approvals</th></tr></thead><tbody>{}</tbody></table>",
        if rows.is_empty() {
            "<tr><td colspan=\"9\" class=\"muted\">No sessions match.</td></tr>".to_string()
        } else {
            rows
        }
    );
    html::page("Sessions", web, &body)
}

/// `GET /sessions/{id}`: the transcript, and the terminal player when the
/// session has a `.cast` stream.
pub fn replay(console: &Console, web: &WebSession, id: &str) -> Response<Body> {
    let log_dir = &console.cfg.gateway.log_dir;
    let records = match read_session(log_dir, id) {
        Ok(r) => r,
        Err(e) => return cli_error(e),
    };
    let first = &records[0].value;
    let start = crate::cli::sessions::timestamp(first);
    let transcript: String = records
        .iter()
        .map(|r| {
            let offset = match (start, crate::cli::sessions::timestamp(&r.value)) {
                (Some(s), Some(t)) => (t - s).num_milliseconds() as f64 / 1000.0,
                _ => 0.0,
            };
            format!("+{offset:>9.3}s  {}\n", escape(&transcript_text(&r.value)))
        })
        .collect();
    let field = |k: &str| escape(&crate::cli::sessions::text(&first[k]));
    let terminal = if cast_path(console, id).is_some_and(|p| p.is_file()) {
        format!(
            "<h2>Terminal</h2><p><button type=\"button\" id=\"play\">Play</button> \
             <span class=\"muted\">the session's terminal output, at its recorded pace</span></p>\
             <pre id=\"terminal\" class=\"terminal\" data-cast=\"/sessions/{}/cast\"></pre>",
            escape(id)
        )
    } else {
        String::new()
    };
    let body = format!(
        "<p>Agent <strong>{}</strong> (pid {}, uid {}) on service <strong>{}</strong>, \
         started {}.</p>{terminal}<h2>Transcript</h2><pre class=\"transcript\" id=\"transcript\">{transcript}</pre>",
        field("agent"),
        field("pid"),
        field("uid"),
        field("service"),
        field("ts"),
    );
    html::page(&format!("Session {id}"), web, &body)
}

/// `log_dir/sessions/<id>.cast`, for a well-formed id.
fn cast_path(console: &Console, id: &str) -> Option<std::path::PathBuf> {
    session_path(&console.cfg.gateway.log_dir, id)
        .ok()
        .map(|p| p.with_extension("cast"))
}

/// `GET /sessions/{id}/cast`: the asciicast v2 stream, for the player.
pub fn cast(console: &Console, id: &str) -> Response<Body> {
    let Some(path) = cast_path(console, id) else {
        return html::error(StatusCode::BAD_REQUEST, "That is no session id.");
    };
    match std::fs::read(&path) {
        Ok(bytes) => html::response(StatusCode::OK, "application/x-asciicast", html::full(bytes)),
        Err(_) => html::error(
            StatusCode::NOT_FOUND,
            &format!("Session {id} has no terminal stream."),
        ),
    }
}
