//! Responses Sluice itself generates for the agent: a status and a JSON
//! body `{"error": "...", "sluice": {"session": "..."}}` (DESIGN.md §4).
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::{header, Response, StatusCode};

/// The body type of every response to the agent: the upstream's streamed
/// body or a small generated one.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// A JSON error response. `session` is the session id, when one is open.
/// `message` must never contain a secret or a token.
pub fn error(status: StatusCode, message: &str, session: Option<&str>) -> Response<ProxyBody> {
    let body = serde_json::json!({ "error": message, "sluice": { "session": session } });
    let mut resp = Response::new(full(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// A fixed body as a [`ProxyBody`].
pub fn full(bytes: Bytes) -> ProxyBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}
