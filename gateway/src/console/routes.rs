//! Which request goes where, and the checks in front of every route:
//!
//! 1. the static script and style, and sign-in, need no session;
//! 2. everything else needs a live web session: without one a `GET` is
//!    sent to `/signin`, anything else gets 403;
//! 3. the person must be in a group the console knows (403 otherwise);
//! 4. every `POST` carries the session's CSRF token in its form (403
//!    without it, before anything else is looked at).
use std::{collections::HashMap, sync::Arc};

use http_body_util::{BodyExt, Limited};
use hyper::{body::Incoming, header, Method, Request, Response, StatusCode};
use subtle::ConstantTimeEq;

use super::{
    approvals,
    html::{self, Body},
    roles::Roles,
    session, sessions, signin, tokens, Console,
};

/// Largest form body read (bytes).
const MAX_FORM: usize = 16 * 1024;

/// The console's one script: live approvals and the terminal player.
const SCRIPT: &str = include_str!("assets/console.js");
/// The console's one style sheet.
const STYLE: &str = include_str!("assets/console.css");

fn form_fields(bytes: &[u8]) -> HashMap<String, String> {
    form_urlencoded::parse(bytes).into_owned().collect()
}

/// Answers one request.
pub async fn handle(console: Arc<Console>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = form_fields(req.uri().query().unwrap_or("").as_bytes());
    let cookies = req
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join("; ");
    match (&method, path.as_str()) {
        (&Method::GET, "/static/console.js") => {
            return html::response(StatusCode::OK, "text/javascript; charset=utf-8", html::full(SCRIPT))
        }
        (&Method::GET, "/static/console.css") => {
            return html::response(StatusCode::OK, "text/css; charset=utf-8", html::full(STYLE))
        }
        (&Method::GET, "/signin") => return signin::begin(&console).await,
        (&Method::GET, "/callback") => return signin::callback(&console, &cookies, &query).await,
        _ => {}
    }
    let session_id = session::cookie(&cookies, session::COOKIE).unwrap_or("").to_string();
    let Some(web) = console.sessions.get(&session_id) else {
        return if method == Method::GET {
            html::redirect("/signin")
        } else {
            html::error(StatusCode::FORBIDDEN, "Sign in first.")
        };
    };
    if !Roles::new(&console.cfg, &web.person).may_view() {
        return html::error(
            StatusCode::FORBIDDEN,
            "You are signed in, but in none of the groups this console knows.",
        );
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    if method == Method::POST {
        let body = match Limited::new(req.into_body(), MAX_FORM).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return html::error(StatusCode::PAYLOAD_TOO_LARGE, "Form too large."),
        };
        let form = form_fields(&body);
        let csrf = form.get("csrf").map(String::as_str).unwrap_or("");
        if csrf.is_empty() || !bool::from(csrf.as_bytes().ct_eq(web.csrf.as_bytes())) {
            return html::error(StatusCode::FORBIDDEN, "Missing or wrong CSRF token; reload the page.");
        }
        let reason = form.get("reason").map(String::as_str).unwrap_or("").trim();
        return match segments.as_slice() {
            ["approvals", id, "approve"] => approvals::decide(&console, &web, id, true, "").await,
            ["approvals", id, "deny"] => approvals::decide(&console, &web, id, false, reason).await,
            ["tokens", id, "revoke"] => tokens::revoke(&console, &web, id).await,
            ["signout"] => signin::sign_out(&console, &web, &session_id),
            _ => html::error(StatusCode::NOT_FOUND, "No such action."),
        };
    }
    if method != Method::GET {
        return html::error(StatusCode::METHOD_NOT_ALLOWED, "Use GET or a form.");
    }
    match segments.as_slice() {
        [""] => html::redirect("/approvals"),
        ["approvals"] => approvals::page(&console, &web).await,
        ["approvals", "events"] => approvals::events(console.clone(), web),
        ["sessions"] => sessions::list(&console, &web, &query),
        ["sessions", id] => sessions::replay(&console, &web, id),
        ["sessions", id, "cast"] => sessions::cast(&console, id),
        ["tokens"] => tokens::page(&console, &web).await,
        _ => html::error(StatusCode::NOT_FOUND, "No such page."),
    }
}
