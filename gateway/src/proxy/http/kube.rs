//! The Kubernetes layer on the HTTP handler (DESIGN.md §6 "Kubernetes
//! API"): each request of a `protocol = "kubernetes"` service is read as
//! the API server reads it ([`RequestInfo`]) and authorized as
//! [`Operation::Kube`]; an exec or attach records its command; requests
//! for Secrets of a service with `mask = ["secrets"]` ask upstream for
//! JSON only, so that [`super::kube_mask`] can mask what comes back.
use hyper::{
    header::{self, HeaderValue},
    http::request::Parts,
    Response, StatusCode,
};

use super::{
    operation,
    reply::{self, ProxyBody},
    request::{deny, refused, AMBIGUOUS_PATH},
    upgrade,
};
use crate::{
    config::KubeService,
    guard::{Allowed, Session},
    policy::{
        kube::{KubeError, RequestInfo, Target},
        Operation,
    },
    recorder::{Event, KubeFields},
};

/// A request of a Kubernetes service, as admitted.
#[derive(Debug, Clone)]
pub struct KubeRequest {
    pub info: RequestInfo,
    /// Its response holds Secrets to mask.
    pub masked: bool,
}

impl KubeRequest {
    /// The `request` line's Kubernetes fields.
    pub fn fields(&self) -> KubeFields {
        match &self.info.target {
            Target::NonResource { path } => KubeFields {
                verb: self.info.verb().to_string(),
                resource: path.clone(),
                namespace: None,
                name: None,
            },
            Target::Resource(r) => KubeFields {
                verb: self.info.verb().to_string(),
                resource: r.resource_path(),
                namespace: r.namespace.clone(),
                name: r.name.clone(),
            },
        }
    }

    /// An `exec`, `attach` or `port-forward`, whose upgrade may be SPDY.
    pub fn streams(&self) -> bool {
        self.info.resource().is_some_and(|r| {
            matches!(
                r.subresource.as_deref(),
                Some("exec" | "attach" | "portforward")
            )
        })
    }

    /// An `exec` or `attach`: its stream carries a command's output.
    pub fn runs_command(&self) -> bool {
        self.info.resource().is_some_and(|r| {
            r.resource == "pods" && matches!(r.subresource.as_deref(), Some("exec" | "attach"))
        })
    }

    /// Whether an upgrade to `value` is relayed for this request:
    /// WebSocket, or SPDY/3.1 for a stream ([`KubeRequest::streams`]).
    pub fn relays(request: Option<&KubeRequest>, value: &HeaderValue) -> bool {
        upgrade::is_websocket(value)
            || (upgrade::is_spdy(value) && request.is_some_and(KubeRequest::streams))
    }

    /// A streaming watch (`watch` verb): its events are masked line by
    /// line as they come, never buffered whole.
    pub fn is_watch(&self) -> bool {
        self.info.verb() == "watch"
    }
}

/// Why a Kubernetes request is refused before policy (HTTP 400).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("ambiguous request path: it contains {0}; send the path in its plain form")]
    Path(#[from] operation::Ambiguity),
    #[error("ambiguous request path: an encoded '/' inside a segment")]
    EncodedSlash,
    #[error("the API server would read this request otherwise: {0}")]
    Request(#[from] KubeError),
}

/// Reads the request as the API server does and authorizes it under the
/// service's rules (a held request waits for its JIT approval, its
/// summary showing an exec's command); records an exec's or attach's
/// command. The request is [`Allowed::Masked`] only
/// when its response may hold Secrets to mask; its `Accept` then asks
/// for JSON only.
///
/// # Errors
/// The response to send instead: 400 for a request read ambiguously, the
/// guard's refusal (401, 403, …), 406 for a request for Secrets that
/// accepts protobuf only.
pub async fn authorize(
    session: &Session,
    service: &KubeService,
    parts: &mut Parts,
    upgrade: bool,
) -> Result<(Allowed, KubeRequest), Response<ProxyBody>> {
    let info = read(parts, upgrade).map_err(|e| {
        deny(
            session,
            StatusCode::BAD_REQUEST,
            AMBIGUOUS_PATH,
            &e.to_string(),
        )
    })?;
    let command = command(&info, parts.uri.query());
    let summary = match &command {
        Some((command, _)) => format!("{}: {command}", info.summary()),
        None => info.summary(),
    };
    let allowed = session
        .authorize(Operation::Kube(&info), &summary)
        .await
        .map_err(|r| refused(&r, Some(session.id())))?;
    let masked = allowed == Allowed::Masked && service.mask_secrets && holds_secrets(&info);
    if masked && !accept_json_only(&mut parts.headers) {
        let reason = "protobuf responses for Secrets are refused on a service with mask = [\"secrets\"]: Sluice masks JSON only; accept application/json";
        return Err(deny(session, StatusCode::NOT_ACCEPTABLE, "MASK", reason));
    }
    if let Some(command) = command {
        let _ = session.record(Event::Command {
            command: command.0,
            kind: Some(command.1),
        });
    }
    let allowed = if masked {
        Allowed::Masked
    } else {
        Allowed::AsIs
    };
    Ok((allowed, KubeRequest { info, masked }))
}

/// Reads the request as the API server does. `upgrade`: it asks for a
/// protocol upgrade (exec, attach, port-forward streams).
///
/// # Errors
/// [`ReadError`] for a path or query Sluice could read otherwise than the
/// API server.
pub fn read(parts: &Parts, upgrade: bool) -> Result<RequestInfo, ReadError> {
    let readings = operation::read_path(parts.uri.path(), true)?;
    if readings.readings.len() > 1 {
        return Err(ReadError::EncodedSlash);
    }
    let info = RequestInfo::derive(
        parts.method.as_str(),
        &readings.display,
        parts.uri.query(),
        upgrade,
    )?;
    Ok(info)
}

/// Sluice's own error `response` in the form Kubernetes clients read: a
/// `Status` object (`kind`, `status: Failure`, `message`, `reason`,
/// `code`; Kubernetes API conventions, "Response Status Kind") that also
/// keeps Sluice's `error` and `sluice.session` keys. Upstream responses
/// pass unchanged.
pub fn status_form(response: Response<ProxyBody>) -> Response<ProxyBody> {
    let Some(generated) = response.extensions().get::<reply::Generated>().cloned() else {
        return response;
    };
    let code = response.status();
    let reason = match code {
        StatusCode::UNAUTHORIZED => "Unauthorized",
        StatusCode::FORBIDDEN => "Forbidden",
        StatusCode::BAD_REQUEST => "BadRequest",
        StatusCode::NOT_ACCEPTABLE => "NotAcceptable",
        StatusCode::TOO_MANY_REQUESTS => "TooManyRequests",
        StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailable",
        StatusCode::GATEWAY_TIMEOUT => "Timeout",
        _ => "InternalError",
    };
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": generated.message, "reason": reason, "code": code.as_u16(),
        "error": generated.message, "sluice": { "session": generated.session },
    });
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, reply::full(body.to_string().into()))
}

/// True when the response to `info` may hold Secret objects: requests for
/// the `secrets` resource (get, list, watch, create, update, patch,
/// delete all answer with the object).
pub fn holds_secrets(info: &RequestInfo) -> bool {
    info.resource().is_some_and(|r| r.resource == "secrets")
}

/// The command an exec or attach runs: its `command` query parameters,
/// each shell-quoted where needed, joined by spaces, and which it is
/// (`exec`, `attach`). `None` for other requests.
pub fn command(info: &RequestInfo, query: Option<&str>) -> Option<(String, &'static str)> {
    let r = info.resource()?;
    if r.resource != "pods" || !matches!(r.subresource.as_deref(), Some("exec" | "attach")) {
        return None;
    }
    let words: Vec<String> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| quote(&v))
        .collect();
    let kind = match r.subresource.as_deref() {
        Some("attach") => "attach",
        _ => "exec",
    };
    Some((words.join(" "), kind))
}

/// `word` as a POSIX shell reads it back: unchanged when it holds only
/// safe characters, otherwise in single quotes.
fn quote(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Protobuf, which Sluice cannot mask (Kubernetes API "Alternate
/// representations of resources").
const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

/// Keeps only the non-protobuf media ranges of `Accept`, so the upstream
/// answers JSON that can be masked; no `Accept` asks for JSON. `false`
/// when every range asks for protobuf (the caller answers 406).
pub fn accept_json_only(headers: &mut header::HeaderMap) -> bool {
    let ranges: Vec<String> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty())
        .collect();
    let kept: Vec<&str> = ranges
        .iter()
        .map(String::as_str)
        .filter(|r| !r.to_ascii_lowercase().starts_with(PROTOBUF))
        .collect();
    if !ranges.is_empty() && kept.is_empty() {
        return false;
    }
    let value = if kept.is_empty() {
        "application/json".to_string()
    } else {
        kept.join(",")
    };
    match HeaderValue::from_str(&value) {
        Ok(value) => {
            headers.insert(header::ACCEPT, value);
            true
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: &str, uri: &str) -> Parts {
        hyper::Request::builder()
            .method(method)
            .uri(uri)
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    #[test]
    fn reads_decoded_paths_and_refuses_ambiguous_ones() {
        let info = read(&parts("GET", "/api/v1/namespaces/prod/pods/web%2D1"), false).unwrap();
        assert_eq!(info.resource().unwrap().name.as_deref(), Some("web-1"));
        for bad in [
            "/api/v1/namespaces/prod/pods/a%2Fb",
            "/api/v1/namespaces/prod/../kube-system/secrets",
            "/api/v1//pods",
            "/api/v1/watch",
        ] {
            assert!(read(&parts("GET", bad), false).is_err(), "{bad}");
        }
    }

    #[test]
    fn exec_commands_are_quoted() {
        let uri = "/api/v1/namespaces/prod/pods/web-1/exec?command=sh&command=-c&command=echo%20it%27s&stdout=true";
        let p = parts("GET", uri);
        let info = read(&p, true).unwrap();
        assert_eq!(
            command(&info, p.uri.query()).unwrap(),
            (r"sh -c 'echo it'\''s'".to_string(), "exec")
        );
        let logs = parts("GET", "/api/v1/namespaces/prod/pods/web-1/log?command=x");
        assert_eq!(
            command(&read(&logs, false).unwrap(), logs.uri.query()),
            None
        );
    }

    #[test]
    fn request_lines_carry_verb_resource_namespace_and_name() {
        let p = parts("DELETE", "/api/v1/namespaces/prod/pods/web-1");
        let read = KubeRequest {
            info: read(&p, false).unwrap(),
            masked: false,
        };
        let event = Event::Request {
            method: "DELETE".into(),
            path: p.uri.path().into(),
            status: 200,
            kube: Some(read.fields()),
        };
        let line = serde_json::to_value(&event).unwrap();
        assert_eq!(
            line,
            serde_json::json!({"event": "request", "method": "DELETE", "path": p.uri.path(),
                "status": 200, "verb": "delete", "resource": "pods", "namespace": "prod", "name": "web-1"})
        );
        let http = Event::Request {
            method: "GET".into(),
            path: "/v1".into(),
            status: 200,
            kube: None,
        };
        assert_eq!(
            serde_json::to_value(&http).unwrap(),
            serde_json::json!({"event": "request", "method": "GET", "path": "/v1", "status": 200})
        );
    }

    #[test]
    fn sluice_errors_become_status_objects() {
        let generated = reply::error(
            StatusCode::FORBIDDEN,
            "denied by policy: delete namespaces",
            Some("s-1"),
        );
        let response = status_form(generated);
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let body = body_json(response);
        assert_eq!(body["kind"], "Status");
        assert_eq!(body["reason"], "Forbidden");
        assert_eq!(body["code"], 403);
        assert_eq!(body["message"], "denied by policy: delete namespaces");
        assert_eq!(body["sluice"]["session"], "s-1");
    }

    fn body_json(response: Response<ProxyBody>) -> serde_json::Value {
        use http_body_util::BodyExt;
        let bytes = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(response.into_body().collect())
            .unwrap()
            .to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn protobuf_is_taken_out_of_accept() {
        let mut h = header::HeaderMap::new();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/vnd.kubernetes.protobuf, application/json"),
        );
        assert!(accept_json_only(&mut h));
        assert_eq!(h[header::ACCEPT], "application/json");
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/vnd.kubernetes.protobuf;as=Table"),
        );
        assert!(!accept_json_only(&mut h));
        h.remove(header::ACCEPT);
        assert!(accept_json_only(&mut h));
        assert_eq!(h[header::ACCEPT], "application/json");
    }
}
