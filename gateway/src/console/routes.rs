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
            return html::response(
                StatusCode::OK,
                "text/javascript; charset=utf-8",
                html::full(SCRIPT),
            )
        }
        (&Method::GET, "/static/console.css") => {
            return html::response(StatusCode::OK, "text/css; charset=utf-8", html::full(STYLE))
        }
        (&Method::GET, "/signin") => return signin::begin(&console).await,
        (&Method::GET, "/callback") => return signin::callback(&console, &cookies, &query).await,
        _ => {}
    }
    let session_id = session::cookie(&cookies, session::COOKIE)
        .unwrap_or("")
        .to_string();
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
    let route = Route::of(&method, &path);
    if method == Method::POST {
        let body = match Limited::new(req.into_body(), MAX_FORM).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return html::error(StatusCode::PAYLOAD_TOO_LARGE, "Form too large."),
        };
        let form = form_fields(&body);
        let csrf = form.get("csrf").map(String::as_str).unwrap_or("");
        if csrf.is_empty() || !bool::from(csrf.as_bytes().ct_eq(web.csrf.as_bytes())) {
            return html::error(
                StatusCode::FORBIDDEN,
                "Missing or wrong CSRF token; reload the page.",
            );
        }
        let reason = form
            .get("reason")
            .map(String::as_str)
            .unwrap_or("")
            .trim()
            .to_string();
        return match route {
            Route::Decide { id, approve } => {
                approvals::decide(&console, &web, &id, approve, &reason).await
            }
            Route::Revoke(id) => tokens::revoke(&console, &web, &id).await,
            Route::SignOut => signin::sign_out(&console, &web, &session_id),
            _ => html::error(StatusCode::NOT_FOUND, "No such action."),
        };
    }
    match route {
        Route::Home => html::redirect("/approvals"),
        Route::Approvals => approvals::page(&console, &web).await,
        Route::ApprovalEvents => approvals::events(
            console.clone(),
            web,
            query.get("seen").map_or("", String::as_str),
        ),
        Route::Sessions => sessions::list(&console, &web, &query),
        Route::Session(id) => sessions::replay(&console, &web, &id),
        Route::Cast(id) => sessions::cast(&console, &id),
        Route::Tokens => tokens::page(&console, &web).await,
        Route::NotAllowed => html::error(StatusCode::METHOD_NOT_ALLOWED, "Use GET or a form."),
        _ => html::error(StatusCode::NOT_FOUND, "No such page."),
    }
}

/// A route behind the session check, by method and path.
enum Route {
    Home,
    Approvals,
    ApprovalEvents,
    Sessions,
    Session(String),
    Cast(String),
    Tokens,
    Decide { id: String, approve: bool },
    Revoke(String),
    SignOut,
    NotAllowed,
    Unknown,
}

impl Route {
    fn of(method: &Method, path: &str) -> Route {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let owned = |s: &str| s.to_string();
        if *method == Method::POST {
            return match segments.as_slice() {
                ["approvals", id, "approve"] => Route::Decide {
                    id: owned(id),
                    approve: true,
                },
                ["approvals", id, "deny"] => Route::Decide {
                    id: owned(id),
                    approve: false,
                },
                ["tokens", id, "revoke"] => Route::Revoke(owned(id)),
                ["signout"] => Route::SignOut,
                _ => Route::Unknown,
            };
        }
        if *method != Method::GET {
            return Route::NotAllowed;
        }
        match segments.as_slice() {
            [""] => Route::Home,
            ["approvals"] => Route::Approvals,
            ["approvals", "events"] => Route::ApprovalEvents,
            ["sessions"] => Route::Sessions,
            ["sessions", id] => Route::Session(owned(id)),
            ["sessions", id, "cast"] => Route::Cast(owned(id)),
            ["tokens"] => Route::Tokens,
            _ => Route::Unknown,
        }
    }
}
