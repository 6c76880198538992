//! The console's responses: HTML pages in one layout, escaped text,
//! redirects and errors, each with the security headers every response
//! carries (a strict Content-Security-Policy: scripts, styles and
//! connections from the console itself only, no inline script, no
//! framing).
use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::{header, Response, StatusCode};

use super::session::WebSession;

/// The response body type of every route (pages, files, event streams).
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// `Content-Security-Policy` of every response.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// A whole body at once.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

/// A response with the security headers set.
pub fn response(status: StatusCode, content_type: &'static str, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        h.insert(name, header::HeaderValue::from_static(value));
    }
    r
}

/// `303 See Other` to `location` (a path of the console or the issuer's
/// authorization URL).
pub fn redirect(location: &str) -> Response<Body> {
    let mut r = response(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", full(""));
    if let Ok(v) = header::HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// A short page saying what went wrong, with `status`.
pub fn error(status: StatusCode, message: &str) -> Response<Body> {
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Sluice console</title>\
         <link rel=\"stylesheet\" href=\"/static/console.css\"></head><body><main>\
         <h1>{}</h1><p>{}</p><p><a href=\"/approvals\">Back to the console</a></p></main></body></html>",
        status.as_u16(),
        escape(message)
    );
    response(status, "text/html; charset=utf-8", full(body))
}

/// Text made safe for HTML element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A page in the console's layout: navigation, who is signed in, the
/// sign-out form (with the CSRF token), then `body` (already HTML).
pub fn page(title: &str, web: &WebSession, body: &str) -> Response<Body> {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>{title} · Sluice console</title>\
         <link rel=\"stylesheet\" href=\"/static/console.css\">\
         <script src=\"/static/console.js\" defer></script></head><body>\
         <header><strong>Sluice</strong><nav><a href=\"/approvals\">Approvals</a>\
         <a href=\"/sessions\">Sessions</a><a href=\"/tokens\">Tokens</a></nav>\
         <form method=\"post\" action=\"/signout\" class=\"who\">{}<span>{}</span>\
         <button type=\"submit\">Sign out</button></form></header><main><h1>{title}</h1>{body}</main></body></html>",
        csrf_field(web),
        escape(&web.person.name),
        title = escape(title),
    );
    response(StatusCode::OK, "text/html; charset=utf-8", full(html))
}

/// The hidden CSRF field every form carries.
pub fn csrf_field(web: &WebSession) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        escape(&web.csrf)
    )
}

/// Unix seconds as `2026-12-02 02:30:00Z`.
pub fn time(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(
            escape(r#"<script>alert('x')</script>&"#),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;"
        );
        assert_eq!(escape("a\"b"), "a&quot;b");
    }

    #[test]
    fn every_response_carries_the_security_headers() {
        let r = error(StatusCode::FORBIDDEN, "no");
        let h = r.headers();
        assert_eq!(h[header::CONTENT_SECURITY_POLICY], CSP);
        assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert!(!CSP.contains("unsafe-inline"));
    }
}
