//! Responses Sluice itself generates for the agent: a status and a JSON
//! body `{"error": "...", "sluice": {"session": "..."}}` (DESIGN.md §4).
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::{header, Response, StatusCode};

/// The body type of every response to the agent: the upstream's streamed
/// body or a small generated one.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// A JSON error response. `session` is the session id, when one is open.
/// `message` must never contain a secret or a token. The response carries
/// its [`Generated`] error as an extension, for protocols that answer
/// errors in a form of their own ([`super::kube::status_form`]).
pub fn error(status: StatusCode, message: &str, session: Option<&str>) -> Response<ProxyBody> {
    let body = serde_json::json!({ "error": message, "sluice": { "session": session } });
    let mut resp = Response::new(full(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp.extensions_mut().insert(Generated {
        message: message.to_string(),
        session: session.map(str::to_string),
    });
    resp
}

/// Refuses an upstream body Sluice must read (mask or scan) that carries a
/// content coding other than `identity` (RFC 9110 §8.4); `reader` names
/// who cannot read it, e.g. `"Sluice cannot mask"`.
///
/// # Errors
/// The message for a 502.
pub fn unencoded(headers: &header::HeaderMap, reader: &str) -> Result<(), String> {
    let coding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity");
    if coding.eq_ignore_ascii_case("identity") {
        Ok(())
    } else {
        Err(format!(
            "upstream sent a {coding}-encoded body that {reader}; refused"
        ))
    }
}

/// The error of a response Sluice generated with [`error`].
#[derive(Debug, Clone)]
pub struct Generated {
    pub message: String,
    pub session: Option<String>,
}

/// A fixed body as a [`ProxyBody`].
pub fn full(bytes: Bytes) -> ProxyBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// gRPC status `PERMISSION_DENIED` (gRPC "Status codes and their use").
pub const GRPC_PERMISSION_DENIED: u8 = 7;

/// True when the request is a gRPC or gRPC-Web call (`Content-Type:
/// application/grpc…`, any suffix).
pub fn is_grpc(headers: &header::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let ct = ct.trim().to_ascii_lowercase();
            // gRPC and gRPC-Web (`application/grpc-web[-text][+proto]`).
            ct.starts_with("application/grpc")
        })
}

/// A gRPC "Trailers-Only" error response (gRPC over HTTP/2, "Responses"):
/// HTTP 200 with `grpc-status` and the percent-encoded `grpc-message` in
/// the headers, so gRPC clients show the status and message.
pub fn grpc_error(code: u8, message: &str) -> Response<ProxyBody> {
    const RESERVED: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');
    let encoded = percent_encoding::utf8_percent_encode(message, RESERVED).to_string();
    let mut resp = Response::new(full(Bytes::new()));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", header::HeaderValue::from(u16::from(code)));
    if let Ok(v) = header::HeaderValue::from_str(&encoded) {
        h.insert("grpc-message", v);
    }
    resp
}
