//! One HTTP request through the guard pipeline: route → session →
//! authenticate (token) → authorize (policy) → credential (swap) →
//! upstream → response, each step recorded.
//!
//! The token is checked on every request, so a revocation takes effect on
//! the next request of a kept-alive connection. Bodies stream in both
//! directions; nothing is buffered whole.
use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::{body::Incoming, header, Request, Response, StatusCode};
use tracing::warn;

use super::{
    counted::Counted,
    credential::{self, FoundToken},
    echo_guard::{self, EchoGuard},
    json_mask,
    kube::{self, KubeRequest},
    kube_mask, kube_stream, operation,
    reply::{self, ProxyBody},
    session::{ConnCtx, Routed},
    upgrade, upstream,
};
use crate::{
    config::{HttpService, Injection},
    guard::{Allowed, Refusal, RefusalKind, Session},
    policy::{http::HttpOperation, Operation},
    recorder::Event,
    vault::Secret,
};

/// The `rule` of a denial for a request whose reading is ambiguous
/// ([`operation::Ambiguity`]) or whose form body cannot be read.
pub const AMBIGUOUS_PATH: &str = "AMBIGUOUS_REQUEST";

/// Serves one request; never fails (errors become JSON responses). The
/// response goes out only once the lines recorded for it are written.
pub async fn handle(ctx: Arc<ConnCtx>, req: Request<Incoming>) -> Response<ProxyBody> {
    let response = respond(&ctx, req).await;
    if ctx.flush().await {
        response
    } else {
        refused(&Refusal::unrecorded(), None)
    }
}

/// The response for a refusal of the pipeline (DESIGN.md §4 "Errors the
/// agent sees").
pub(super) fn refused(refusal: &Refusal, session: Option<&str>) -> Response<ProxyBody> {
    let status = match refusal.kind {
        RefusalKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        RefusalKind::Malformed => StatusCode::BAD_REQUEST,
        RefusalKind::Throttled => StatusCode::TOO_MANY_REQUESTS,
        RefusalKind::Denied { .. } | RefusalKind::Rejected { .. } => StatusCode::FORBIDDEN,
        RefusalKind::Unavailable | RefusalKind::Unrecorded => StatusCode::SERVICE_UNAVAILABLE,
        RefusalKind::NoSecret => StatusCode::BAD_GATEWAY,
        RefusalKind::Vault => StatusCode::INTERNAL_SERVER_ERROR,
    };
    reply::error(status, &refusal.message, session)
}

/// Records `event` in `session` and answers `message` with `status`.
fn fail(session: &Session, status: StatusCode, event: Event, message: &str) -> Response<ProxyBody> {
    let _ = session.record(event);
    reply::error(status, message, Some(session.id()))
}

/// Records an error line and answers it with `status`.
fn error(session: &Session, status: StatusCode, message: &str) -> Response<ProxyBody> {
    let event = Event::Error {
        message: message.to_string(),
    };
    fail(session, status, event, message)
}

/// Refuses a request Sluice cannot read one way only (400, rule
/// [`AMBIGUOUS_PATH`]), or a feature the service's guarantees exclude.
pub(super) fn deny(
    session: &Session,
    status: StatusCode,
    rule: &str,
    reason: &str,
) -> Response<ProxyBody> {
    let refusal = session.deny(rule.to_string(), reason.to_string());
    reply::error(status, &refusal.message, Some(session.id()))
}

/// The agent's side of a protocol upgrade, and the `Upgrade` value to send
/// upstream.
type Upgrading = Option<(hyper::upgrade::OnUpgrade, header::HeaderValue)>;

async fn respond(ctx: &Arc<ConnCtx>, mut req: Request<Incoming>) -> Response<ProxyBody> {
    // Taken before the request is consumed.
    let upgrading: Upgrading = upgrade::requested(req.headers())
        .then(|| req.headers().get(header::UPGRADE).cloned())
        .flatten()
        .map(|value| (hyper::upgrade::on(&mut req), value));
    let (parts, body) = req.into_parts();
    let host = authority_host(&parts);
    let routed = match ctx.service_for(host.as_deref()) {
        Ok(r) => r,
        Err(e) => return reply::error(StatusCode::MISDIRECTED_REQUEST, &e.to_string(), None),
    };
    let service = routed.service();
    let Some(http) = service.http() else {
        let msg = format!("service {} is not an HTTP service", service.name);
        return reply::error(StatusCode::MISDIRECTED_REQUEST, &msg, None);
    };
    let session = match ctx.session(service) {
        Ok(s) => s,
        Err(r) => return refused(&r, None),
    };
    let request = Pending {
        parts,
        body: body.boxed(),
        upgrading,
        kube: None,
    };
    let response = match admit(session, &routed, http, request).await {
        Ok((request, found, allowed)) => {
            forward(ctx, session, &routed, http, request, found, allowed).await
        }
        Err(response) => response,
    };
    match service.kube() {
        Some(_) => kube::status_form(response),
        None => response,
    }
}

/// A request on its way through the pipeline.
struct Pending {
    parts: hyper::http::request::Parts,
    body: ProxyBody,
    upgrading: Upgrading,
    /// How a Kubernetes service reads the request.
    kube: Option<KubeRequest>,
}

/// Authenticate and authorize: the token, then policy (on every reading of
/// the request a backend may act on, or, for a Kubernetes service, on the
/// request as the API server reads it), then what the service's
/// guarantees exclude (upgrades other than WebSocket, or SPDY for
/// Kubernetes streams; upgrades and gRPC where responses are masked or
/// scanned).
async fn admit(
    session: &Session,
    routed: &Routed,
    http: &HttpService,
    mut request: Pending,
) -> Result<(Pending, FoundToken, Allowed), Response<ProxyBody>> {
    let sid = Some(session.id());
    let found = match credential::find(&request.parts) {
        Ok(Some(found)) => found,
        Ok(None) => {
            return Err(refused(
                &session.absent("no sluice token (slt_…) in the request"),
                sid,
            ))
        }
        Err(e) => return Err(refused(&session.malformed(&e.to_string()), sid)),
    };
    session
        .authenticate(crate::guard::Presented::Token(&found.token))
        .await
        .map_err(|r| refused(&r, sid))?;

    let allowed = match routed.service().kube() {
        Some(service) => {
            let upgrade = request.upgrading.is_some();
            let (allowed, read) =
                kube::authorize(session, service, &mut request.parts, upgrade).await?;
            request.kube = Some(read);
            allowed
        }
        None => authorize_http(session, routed, http, &mut request).await?,
    };
    if let Some((_, value)) = &request.upgrading {
        if !KubeRequest::relays(request.kube.as_ref(), value) {
            let reason = "only WebSocket upgrades (and SPDY/3.1 for Kubernetes exec, attach and port-forward) are relayed; other protocol upgrades (h2c, …) would carry requests past policy";
            return Err(deny(
                session,
                StatusCode::BAD_REQUEST,
                AMBIGUOUS_PATH,
                reason,
            ));
        }
        if allowed == Allowed::Masked || http.echo_guard {
            let reason = "protocol upgrades (WebSocket) are refused on a service with mask or echo_guard: Sluice cannot mask or scan their frames";
            return Err(deny(session, StatusCode::FORBIDDEN, "MASK", reason));
        }
    }
    if allowed == Allowed::Masked && reply::is_grpc(&request.parts.headers) {
        // Protobuf bodies cannot be masked by field name.
        let reason =
            "gRPC is refused on a service with masked fields: Sluice cannot mask protobuf messages";
        session.deny("MASK".into(), reason.into());
        return Err(reply::grpc_error(reply::GRPC_PERMISSION_DENIED, reason));
    }
    Ok((request, found, allowed))
}

/// Authorizes an HTTP request: policy on every reading of it a backend
/// may act on (path readings, method overrides, form bodies).
async fn authorize_http(
    session: &Session,
    routed: &Routed,
    http: &HttpService,
    request: &mut Pending,
) -> Result<Allowed, Response<ProxyBody>> {
    let ruled = !http.deny.is_empty() || !http.approve.is_empty();
    let uri_path = request.parts.uri.path().to_string();
    let readings = match operation::read_path(&uri_path, ruled) {
        Ok(r) => r,
        Err(why) => {
            let reason = format!(
                "ambiguous request path: it contains {why}; send the path in its plain form"
            );
            return Err(deny(
                session,
                StatusCode::BAD_REQUEST,
                AMBIGUOUS_PATH,
                &reason,
            ));
        }
    };
    let mut methods = operation::methods(&request.parts);
    if let Some(kind) = ruled
        .then(|| operation::form_body(&request.parts.headers))
        .flatten()
    {
        let limit = routed.snap.cfg.gateway.json_mask_max_bytes;
        let body = std::mem::replace(&mut request.body, reply::full(Default::default()));
        let read = match http_body_util::Limited::new(body, limit).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                let msg = format!("form body cannot be read for method overrides ({e}; limit {limit} bytes, gateway.json_mask_max_bytes)");
                return Err(error(session, StatusCode::PAYLOAD_TOO_LARGE, &msg));
            }
        };
        if let Err(msg) = operation::form_methods(&kind, read.clone(), &mut methods).await {
            return Err(deny(session, StatusCode::BAD_REQUEST, AMBIGUOUS_PATH, &msg));
        }
        request.body = reply::full(read);
    }
    let summary = format!("{} {}", methods.join("|"), readings.display);
    let groups = session.caller().map(|c| c.groups).unwrap_or_default();
    let op = Operation::Http(HttpOperation {
        methods: &methods,
        paths: &readings.readings,
        groups: &groups,
    });
    session
        .authorize(op, &summary)
        .await
        .map_err(|r| refused(&r, Some(session.id())))
}

/// Credential and upstream: swaps the token for the real secret, sends the
/// request to the service's verified upstream and relays the response.
async fn forward(
    ctx: &Arc<ConnCtx>,
    session: &Session,
    routed: &Routed,
    http: &HttpService,
    request: Pending,
    found: FoundToken,
    allowed: Allowed,
) -> Response<ProxyBody> {
    let Pending {
        mut parts,
        body,
        upgrading,
        kube,
    } = request;
    let method = parts.method.as_str().to_string();
    let path = operation::lenient(parts.uri.path());
    let echo = match swap(session, routed.service(), http, &mut parts, &found) {
        Ok(echo) => echo,
        Err(response) => return response,
    };
    let (agent_upgrade, upgrade_value) = match upgrading {
        Some((on, value)) => (Some(on), Some(value)),
        None => (None, None),
    };
    if let Some(value) = upgrade_value {
        upgrade::restore_request_headers(&mut parts.headers, value);
    }
    let masked = allowed == Allowed::Masked;
    if masked || echo.is_some() {
        // Masking and echo_guard read the body as sent: ask for no content coding.
        parts.headers.remove(header::ACCEPT_ENCODING);
    }
    let sent = Request::from_parts(parts, body);
    let answer = Answer {
        method,
        path,
        agent_upgrade,
        echo,
        masked,
        kube,
    };
    let resp = match send(ctx, session, routed, sent, &answer).await {
        Ok(resp) => resp,
        Err(response) => return response,
    };
    respond_upstream(ctx, session, routed, resp, answer).await
}

/// Credential: takes the secret from the vault and puts it where the
/// service says, then re-targets the request at the service's origin.
/// Returns the secret when echo_guard must scan the response for it.
fn swap(
    session: &Session,
    service: &crate::config::Service,
    http: &HttpService,
    parts: &mut hyper::http::request::Parts,
    found: &FoundToken,
) -> Result<Option<Secret>, Response<ProxyBody>> {
    let (swapped, echo) = if http.inject == Injection::ClientCertificate {
        // The credential goes in the upstream TLS handshake
        // (`tls::VaultClientCert`); here the token is only removed.
        (credential::inject(parts, found, &http.inject, b""), None)
    } else {
        let secret = session
            .credential()
            .map_err(|r| refused(&r, Some(session.id())))?;
        let swapped = credential::inject(parts, found, &http.inject, secret.expose());
        (swapped, http.echo_guard.then(|| secret.clone()))
    };
    if let Err(e) = swapped {
        return Err(error(session, StatusCode::BAD_GATEWAY, &e.to_string()));
    }
    if let Err(e) = upstream::retarget(parts, service) {
        let msg = format!("cannot build the upstream request: {e}");
        return Err(error(session, StatusCode::BAD_GATEWAY, &msg));
    }
    Ok(echo)
}

/// Sends `request` upstream once the session's first lines are written,
/// within `gateway.upstream_timeout`; a failure is recorded as the
/// request's `request` line (502/504) and an error.
async fn send(
    ctx: &ConnCtx,
    session: &Session,
    routed: &Routed,
    request: Request<ProxyBody>,
    answer: &Answer,
) -> Result<Response<hyper::body::Incoming>, Response<ProxyBody>> {
    let service = routed.service();
    let upgrade = answer.agent_upgrade.is_some();
    let Some(client) = routed.snap.http.get(routed.idx, upgrade) else {
        return Err(error(
            session,
            StatusCode::BAD_GATEWAY,
            "no HTTP client for service",
        ));
    };
    session
        .opened()
        .await
        .map_err(|r| refused(&r, Some(session.id())))?;
    let failed = |status: StatusCode, msg: &str| {
        let _ = session.record(answer.request_event(status.as_u16()));
        error(session, status, msg)
    };
    let sent = std::time::Instant::now();
    let timeout = routed.snap.cfg.gateway.upstream_timeout;
    let response = match tokio::time::timeout(timeout, client.request(request)).await {
        Ok(r) => r,
        Err(_) => {
            let msg = format!(
                "upstream {}:{} sent no response within {} s (gateway.upstream_timeout)",
                service.host,
                service.port,
                timeout.as_secs()
            );
            return Err(failed(StatusCode::GATEWAY_TIMEOUT, &msg));
        }
    };
    ctx.gw
        .guard
        .metrics
        .upstream_latency(&service.name, sent.elapsed());
    response.map_err(|e| {
        let msg = format!(
            "upstream {}:{} unreachable: {}",
            service.host,
            service.port,
            error_chain(&e)
        );
        warn!(service = %service.name, "{msg}");
        failed(StatusCode::BAD_GATEWAY, &msg)
    })
}

/// What the response relay needs to know of its request.
struct Answer {
    method: String,
    path: String,
    agent_upgrade: Option<hyper::upgrade::OnUpgrade>,
    /// The secret, when echo_guard scans the response for it.
    echo: Option<Secret>,
    masked: bool,
    kube: Option<KubeRequest>,
}

impl Answer {
    /// The request's `request` line, with `status`.
    fn request_event(&self, status: u16) -> Event {
        Event::Request {
            method: self.method.clone(),
            path: self.path.clone(),
            status,
            kube: self.kube.as_ref().map(KubeRequest::fields),
        }
    }
}

/// Relays the upstream's response: a WebSocket switch, hop-by-hop headers
/// stripped, echo_guard's scan, the `request` line, masking.
async fn respond_upstream(
    ctx: &Arc<ConnCtx>,
    session: &Session,
    routed: &Routed,
    mut resp: Response<hyper::body::Incoming>,
    mut answer: Answer,
) -> Response<ProxyBody> {
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    let upstream_upgrade = resp.headers().get(header::UPGRADE).cloned();
    let relayed = upstream_upgrade
        .as_ref()
        .is_some_and(|v| KubeRequest::relays(answer.kube.as_ref(), v));
    match answer.agent_upgrade.take() {
        Some(agent) if switching && relayed => {
            let protocol = resp.headers().get(header::SEC_WEBSOCKET_PROTOCOL);
            let record_output = answer.kube.as_ref().is_some_and(KubeRequest::runs_command)
                && kube_stream::readable(protocol.and_then(|v| v.to_str().ok()));
            upgrade::relay(ctx.clone(), agent, &mut resp, record_output)
        }
        _ if switching => {
            let msg = "upstream switched to a protocol the agent did not ask for";
            return error(session, StatusCode::BAD_GATEWAY, msg);
        }
        _ => {}
    }
    let (mut rparts, rbody) = resp.into_parts();
    upstream::strip_hop_by_hop(&mut rparts.headers);
    if switching {
        upgrade::restore_response_headers(&mut rparts.headers, upstream_upgrade);
    }
    let mut rbody = rbody.boxed();
    if let Some(secret) = &answer.echo {
        if let Err(msg) = reply::unencoded(&rparts.headers, "echo_guard cannot scan") {
            return error(session, StatusCode::BAD_GATEWAY, &msg);
        }
        let redactor = echo_guard::Redactor::new(secret.expose());
        echo_guard::redact_headers(&mut rparts.headers, &redactor);
        rbody = EchoGuard::wrap(rbody, redactor);
    }
    let status = rparts.status.as_u16();
    let _ = session.record(answer.request_event(status));
    if switching {
        // The relay records the `response` line when it ends.
        return Response::from_parts(rparts, rbody);
    }
    if !answer.masked {
        return Response::from_parts(rparts, Counted::wrap(rbody, ctx.clone(), status));
    }
    let limit = routed.snap.cfg.gateway.json_mask_max_bytes;
    let mask = &routed.service().mask;
    let masking = match &answer.kube {
        Some(k) => kube_mask::mask_response(ctx, session, k, limit, &rparts.headers, rbody).await,
        None => mask_body(session, mask, limit, &rparts.headers, rbody).await,
    };
    match masking {
        Ok(body) => {
            rparts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(rparts, Counted::wrap(body, ctx.clone(), status))
        }
        Err(msg) => error(session, StatusCode::BAD_GATEWAY, &msg),
    }
}

/// Buffers a response of a service with `mask` (at most `limit` bytes),
/// masks it when it is JSON or NDJSON, whatever its `Content-Type`
/// ([`json_mask::mask_document`]), and records what was masked. A body
/// declared JSON that does not parse, an encoded body, an event stream and
/// a body over the limit are refused. Errors are messages for a 502: a body
/// that may hold JSON is never passed on unmasked.
async fn mask_body(
    session: &Session,
    masks: &[String],
    limit: usize,
    headers: &hyper::HeaderMap,
    body: ProxyBody,
) -> Result<ProxyBody, String> {
    reply::unencoded(headers, "Sluice cannot mask")?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if json_mask::is_event_stream(content_type) {
        return Err("upstream sent an event stream on a service with masked fields, which Sluice cannot mask event by event; refused".into());
    }
    let bytes = http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| format!("response cannot be masked ({e}; limit {limit} bytes, gateway.json_mask_max_bytes); refused"))?
        .to_bytes();
    if bytes.is_empty() {
        // HEAD, 204, 304: nothing to mask.
        return Ok(reply::full(bytes));
    }
    let masked = json_mask::mask_document(&bytes, masks)?;
    let Some((masked, report)) = masked else {
        if json_mask::is_json(content_type) {
            return Err("upstream sent invalid JSON; refusing to pass it unmasked".into());
        }
        return Ok(reply::full(bytes));
    };
    if report.count > 0
        && session
            .record(Event::Masked {
                fields: report.fields,
                count: report.count,
            })
            .is_err()
    {
        return Err("session record cannot be written".into());
    }
    Ok(reply::full(bytes::Bytes::from(masked)))
}

/// The request's host without port: `:authority` (HTTP/2) or `Host`.
fn authority_host(parts: &hyper::http::request::Parts) -> Option<String> {
    let raw = match parts.uri.authority() {
        Some(a) => a.host().to_string(),
        None => {
            let h = parts.headers.get(header::HOST)?.to_str().ok()?;
            h.parse::<hyper::http::uri::Authority>()
                .ok()?
                .host()
                .to_string()
        }
    };
    Some(
        raw.trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase(),
    )
}

/// An error with its sources, on one line (`outer: inner: …`).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}
