//! Signing in and out: `GET /signin` sends the browser to the issuer,
//! `GET /callback` checks the `state` against the sign-in this browser
//! started, then the code and ID token ([`super::oidc`]), and starts a
//! web session; `POST /signout` ends it.
//!
//! The callback answers with a page that moves on to the console by a
//! `<meta http-equiv="refresh">` rather than a redirect: the issuer's
//! redirect back is a cross-site navigation, during which a browser does
//! not send the new `SameSite=Strict` session cookie; the refresh is a
//! same-site navigation, which does.
use std::collections::HashMap;

use hyper::{header, Response, StatusCode};
use subtle::ConstantTimeEq;

use super::{
    actions::Target,
    html::{self, Body},
    session::{self, WebSession},
    Console,
};

/// `GET /signin`.
pub async fn begin(console: &Console) -> Response<Body> {
    match console.issuer.begin().await {
        Ok((url, pending)) => {
            let id = console.sessions.begin_login(pending);
            let mut r = html::redirect(&url);
            if let Ok(v) = header::HeaderValue::from_str(&session::login_cookie(
                &id,
                session::LOGIN_TTL.as_secs(),
            )) {
                r.headers_mut().append(header::SET_COOKIE, v);
            }
            r
        }
        Err(e) => {
            tracing::warn!(error = %e, "console sign-in cannot start");
            html::error(
                StatusCode::BAD_GATEWAY,
                &format!("Sign-in is unavailable: {e}"),
            )
        }
    }
}

/// `GET /callback?code=…&state=…` with the sign-in cookie.
pub async fn callback(
    console: &Console,
    cookies: &str,
    query: &HashMap<String, String>,
) -> Response<Body> {
    let refused = |why: &str| {
        tracing::warn!(reason = why, "console sign-in refused");
        html::error(
            StatusCode::FORBIDDEN,
            &format!("Sign-in refused: {why}. Start again at /signin."),
        )
    };
    if let Some(error) = query.get("error") {
        return refused(&format!("the issuer answered {error}"));
    }
    let Some(pending) = session::cookie(cookies, session::LOGIN_COOKIE)
        .and_then(|id| console.sessions.take_login(id))
    else {
        return refused("no sign-in in progress in this browser");
    };
    let state = query.get("state").map(String::as_str).unwrap_or("");
    if !bool::from(state.as_bytes().ct_eq(pending.state.secret().as_bytes())) {
        return refused("the state does not match this browser's sign-in");
    }
    let Some(code) = query.get("code") else {
        return refused("no authorization code");
    };
    let person = match console.issuer.finish(code.clone(), pending).await {
        Ok(p) => p,
        Err(e) => return refused(&e.to_string()),
    };
    console
        .actions
        .record(&person, "sign_in", Target::None, None, "done");
    tracing::info!(subject = %person.subject, groups = ?person.groups, "console sign-in");
    let id = console.sessions.start(person);
    let mut r = html::response(
        StatusCode::OK,
        "text/html; charset=utf-8",
        html::full(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta http-equiv=\"refresh\" content=\"0;url=/approvals\"><title>Signed in</title></head>\
             <body><p>Signed in. <a href=\"/approvals\">Continue to the console</a>.</p></body></html>",
        ),
    );
    for cookie in [session::session_cookie(&id), session::login_cookie("", 0)] {
        if let Ok(v) = header::HeaderValue::from_str(&cookie) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    r
}

/// `POST /signout`, the CSRF token already checked.
pub fn sign_out(console: &Console, web: &WebSession, id: &str) -> Response<Body> {
    console.sessions.end(id);
    console
        .actions
        .record(&web.person, "sign_out", Target::None, None, "done");
    let mut r = html::response(
        StatusCode::OK,
        "text/html; charset=utf-8",
        html::full(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Signed out</title>\
             <link rel=\"stylesheet\" href=\"/static/console.css\"></head><body><main>\
             <p>Signed out. <a href=\"/signin\">Sign in again</a>.</p></main></body></html>",
        ),
    );
    if let Ok(v) = header::HeaderValue::from_str(&session::cleared_session_cookie()) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}
