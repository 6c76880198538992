//! One HTTP request through Sluice: route → session → token → policy →
//! credential swap → upstream → response, each step recorded.
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
    credential,
    echo_guard::{self, EchoGuard},
    json_mask, operation,
    reply::{self, ProxyBody},
    session::ConnCtx,
    upgrade, upstream,
};
use crate::{
    approvals::{self, HoldRequest, Outcome},
    policy::{self, HttpOperation, Verdict},
    proxy::throttle,
    recorder::Event,
    state::TokenCheckError,
    tokens,
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
        reply::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "session record cannot be written; refusing unaudited access",
            None,
        )
    }
}

async fn respond(ctx: &Arc<ConnCtx>, mut req: Request<Incoming>) -> Response<ProxyBody> {
    // The agent's side of a protocol upgrade, taken before the request is
    // consumed; with it, the `Upgrade` value to send upstream.
    let upgrading = upgrade::requested(req.headers())
        .then(|| req.headers().get(header::UPGRADE).cloned())
        .flatten()
        .map(|value| (hyper::upgrade::on(&mut req), value));
    let (mut parts, body) = req.into_parts();
    let host = authority_host(&parts);
    let routed = match ctx.service_for(host.as_deref()) {
        Ok(r) => r,
        Err(e) => return reply::error(StatusCode::MISDIRECTED_REQUEST, &e.to_string(), None),
    };
    let service = routed.service();
    let Some(session) = ctx.session(&service.name) else {
        return reply::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "session record cannot be written; refusing unaudited access",
            None,
        );
    };
    let sid = session.id().to_string();
    let gw = ctx.gw.clone();
    let gateway_cfg = &routed.snap.cfg.gateway;
    let method = parts.method.as_str().to_string();
    let ruled = !service.deny.is_empty() || !service.approve.is_empty();
    let readings = operation::read_path(parts.uri.path(), ruled);
    let path = match &readings {
        Ok(r) => r.display.clone(),
        Err(_) => operation::lenient(parts.uri.path()),
    };
    let fail = |status: StatusCode, event: Event, message: &str| {
        ctx.record(event);
        reply::error(status, message, Some(&sid))
    };

    // The token: present, well-formed, known, for this agent and service.
    let found = match credential::find(&parts) {
        Ok(Some(found)) => found,
        Ok(None) => {
            let msg = "no sluice token (slt_…) in the request";
            return fail(
                StatusCode::UNAUTHORIZED,
                Event::AuthFail { reason: msg.into() },
                msg,
            );
        }
        Err(e) => {
            return fail(
                StatusCode::BAD_REQUEST,
                Event::AuthFail {
                    reason: e.to_string(),
                },
                &e.to_string(),
            )
        }
    };
    let agent = &ctx.conn.identity.agent;
    if let Err(wait) = gw.auth_throttle.check(agent) {
        let msg = format!(
            "too many failed token checks from this agent; retry in {} ms",
            wait.as_millis().max(1)
        );
        return fail(
            StatusCode::TOO_MANY_REQUESTS,
            Event::AuthFail {
                reason: msg.clone(),
            },
            &msg,
        );
    }
    match ctx
        .check_token(&tokens::digest(&found.token), &service.name)
        .await
    {
        Ok(()) => {}
        Err(TokenCheckError::Rejected(rejection)) => {
            let failures = gw.auth_throttle.failure(agent);
            let msg = format!("invalid sluice token: {rejection}");
            let reason = format!(
                "{rejection} (failure {failures} of this agent within {} s)",
                throttle::WINDOW.as_secs()
            );
            return fail(StatusCode::UNAUTHORIZED, Event::AuthFail { reason }, &msg);
        }
        Err(TokenCheckError::State(e)) => {
            warn!(error = %e, "token store unavailable");
            let msg = "token store (Redis) unavailable; try again later";
            return fail(
                StatusCode::SERVICE_UNAVAILABLE,
                Event::Error {
                    message: msg.into(),
                },
                msg,
            );
        }
    }

    // Policy, on every reading of the request a backend may act on.
    let readings = match readings {
        Ok(r) => r.readings,
        Err(why) => {
            let reason = format!(
                "ambiguous request path: it contains {why}; send the path in its plain form"
            );
            return fail(
                StatusCode::BAD_REQUEST,
                Event::Denied {
                    reason: reason.clone(),
                    rule: AMBIGUOUS_PATH.into(),
                },
                &reason,
            );
        }
    };
    let mut methods = operation::methods(&parts);
    let mut body = body.boxed();
    if let Some(kind) = ruled
        .then(|| operation::form_body(&parts.headers))
        .flatten()
    {
        let limit = gateway_cfg.json_mask_max_bytes;
        let read = match http_body_util::Limited::new(body, limit).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                let msg = format!("form body cannot be read for method overrides ({e}; limit {limit} bytes, gateway.json_mask_max_bytes)");
                return fail(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    Event::Error {
                        message: msg.clone(),
                    },
                    &msg,
                );
            }
        };
        if let Err(msg) = operation::form_methods(&kind, read.clone(), &mut methods).await {
            return fail(
                StatusCode::BAD_REQUEST,
                Event::Denied {
                    reason: msg.clone(),
                    rule: AMBIGUOUS_PATH.into(),
                },
                &msg,
            );
        }
        body = reply::full(read);
    }
    match policy::decide_http(
        &service.deny,
        &service.approve,
        HttpOperation {
            methods: &methods,
            paths: &readings,
        },
    ) {
        Verdict::Allow => {}
        Verdict::Deny { rule } => {
            let msg = format!("denied by policy: {rule}");
            return fail(
                StatusCode::FORBIDDEN,
                Event::Denied {
                    reason: msg.clone(),
                    rule,
                },
                &msg,
            );
        }
        Verdict::Approve { rule } => {
            let id = &ctx.conn.identity;
            let summary = format!("{} {path}", methods.join("|"));
            let req = HoldRequest {
                agent: id.agent.clone(),
                pid: id.pid,
                uid: id.uid,
                service: service.name.clone(),
                summary: summary.clone(),
            };
            let outcome = approvals::hold(
                &gw.state,
                &gw.instance,
                req,
                gateway_cfg.approval_timeout,
                |approval| {
                    ctx.record(Event::ApprovalWait {
                        approval: approval.to_string(),
                        summary,
                    });
                },
            )
            .await;
            match outcome {
                Outcome::Approved { id, by } => {
                    ctx.record(Event::Approved { approval: id, by });
                }
                Outcome::Unavailable(e) => {
                    warn!(error = %e, "approvals unavailable");
                    let msg = format!("{rule} needs a JIT approval, but the approval store (Redis) is unavailable");
                    return fail(
                        StatusCode::SERVICE_UNAVAILABLE,
                        Event::Error {
                            message: msg.clone(),
                        },
                        &msg,
                    );
                }
                other => {
                    let reason = other.refusal().unwrap_or_default();
                    let approval = match &other {
                        Outcome::Rejected { id, .. } | Outcome::TimedOut { id } => id.clone(),
                        _ => String::new(),
                    };
                    return fail(
                        StatusCode::FORBIDDEN,
                        Event::Rejected {
                            approval,
                            reason: reason.clone(),
                        },
                        &reason,
                    );
                }
            }
        }
    }

    if upgrading
        .as_ref()
        .is_some_and(|(_, value)| !upgrade::is_websocket(value))
    {
        let reason = "only WebSocket upgrades are relayed; other protocol upgrades (h2c, …) would carry requests past policy";
        return fail(
            StatusCode::BAD_REQUEST,
            Event::Denied {
                reason: reason.into(),
                rule: AMBIGUOUS_PATH.into(),
            },
            reason,
        );
    }
    if upgrading.is_some() && (!service.mask.is_empty() || service.echo_guard) {
        let reason = "protocol upgrades (WebSocket) are refused on a service with mask or echo_guard: Sluice cannot mask or scan their frames";
        return fail(
            StatusCode::FORBIDDEN,
            Event::Denied {
                reason: reason.into(),
                rule: "MASK".into(),
            },
            reason,
        );
    }
    if !service.mask.is_empty() && reply::is_grpc(&parts.headers) {
        // Protobuf bodies cannot be masked by field name.
        let reason =
            "gRPC is refused on a service with masked fields: Sluice cannot mask protobuf messages";
        ctx.record(Event::Denied {
            reason: reason.into(),
            rule: "MASK".into(),
        });
        return reply::grpc_error(reply::GRPC_PERMISSION_DENIED, reason);
    }

    // The swap.
    let secret = match gw.vault.get(&service.credential.secret) {
        Ok(Some(secret)) => secret,
        Ok(None) => {
            let msg = format!(
                "secret {:?} is not in the vault; run `sluice secret put {}`",
                service.credential.secret, service.credential.secret
            );
            return fail(
                StatusCode::BAD_GATEWAY,
                Event::Error {
                    message: msg.clone(),
                },
                &msg,
            );
        }
        Err(e) => {
            let msg = format!("vault unavailable: {e}");
            return fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                Event::Error {
                    message: msg.clone(),
                },
                &msg,
            );
        }
    };
    let swapped = credential::inject(&mut parts, &found, &service.credential, secret.expose());
    // Kept only when the response must be scanned for reflections of it.
    let guard = service.echo_guard.then(|| secret.clone());
    drop(secret);
    if let Err(e) = swapped {
        return fail(
            StatusCode::BAD_GATEWAY,
            Event::Error {
                message: e.to_string(),
            },
            &e.to_string(),
        );
    }
    if let Err(e) = upstream::retarget(&mut parts, service) {
        let msg = format!("cannot build the upstream request: {e}");
        return fail(
            StatusCode::BAD_GATEWAY,
            Event::Error {
                message: msg.clone(),
            },
            &msg,
        );
    }
    let (agent_upgrade, upgrade_value) = match upgrading {
        Some((on, value)) => (Some(on), Some(value)),
        None => (None, None),
    };
    if let Some(value) = upgrade_value {
        upgrade::restore_request_headers(&mut parts.headers, value);
    }
    let Some(client) = routed.snap.http.get(routed.idx, agent_upgrade.is_some()) else {
        return fail(
            StatusCode::BAD_GATEWAY,
            Event::Error {
                message: "no HTTP client".into(),
            },
            "no HTTP client for service",
        );
    };
    if !service.mask.is_empty() || service.echo_guard {
        // Masking and echo_guard read the body as sent: ask for no content coding.
        parts.headers.remove(header::ACCEPT_ENCODING);
    }
    if !ctx.opened().await {
        return reply::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "session record cannot be written; refusing unaudited access",
            Some(&sid),
        );
    }
    let sent = std::time::Instant::now();
    let timeout = gateway_cfg.upstream_timeout;
    let response =
        match tokio::time::timeout(timeout, client.request(Request::from_parts(parts, body))).await
        {
            Ok(r) => r,
            Err(_) => {
                let msg = format!(
                    "upstream {}:{} sent no response within {} s (gateway.upstream_timeout)",
                    service.host,
                    service.port,
                    timeout.as_secs()
                );
                ctx.record(Event::Request {
                    method,
                    path,
                    status: 504,
                });
                return fail(
                    StatusCode::GATEWAY_TIMEOUT,
                    Event::Error {
                        message: msg.clone(),
                    },
                    &msg,
                );
            }
        };
    gw.metrics.upstream_latency(&service.name, sent.elapsed());
    match response {
        Ok(mut resp) => {
            let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
            let upstream_upgrade = resp.headers().get(header::UPGRADE).cloned();
            let to_websocket = upstream_upgrade.as_ref().is_some_and(upgrade::is_websocket);
            match agent_upgrade {
                Some(agent) if switching && to_websocket => {
                    upgrade::relay(ctx.clone(), agent, &mut resp)
                }
                _ if switching => {
                    let msg = "upstream switched to a protocol the agent did not ask for";
                    return fail(
                        StatusCode::BAD_GATEWAY,
                        Event::Error {
                            message: msg.into(),
                        },
                        msg,
                    );
                }
                _ => {}
            }
            let (mut rparts, rbody) = resp.into_parts();
            upstream::strip_hop_by_hop(&mut rparts.headers);
            if switching {
                upgrade::restore_response_headers(&mut rparts.headers, upstream_upgrade);
            }
            let mut rbody = rbody.boxed();
            if let Some(secret) = &guard {
                let coding = rparts
                    .headers
                    .get(header::CONTENT_ENCODING)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("identity");
                if !coding.eq_ignore_ascii_case("identity") {
                    let msg = format!("upstream sent a {coding}-encoded body that echo_guard cannot scan; refused");
                    return fail(
                        StatusCode::BAD_GATEWAY,
                        Event::Error {
                            message: msg.clone(),
                        },
                        &msg,
                    );
                }
                let redactor = echo_guard::Redactor::new(secret.expose());
                echo_guard::redact_headers(&mut rparts.headers, &redactor);
                rbody = EchoGuard::wrap(rbody, redactor);
            }
            ctx.record(Event::Request {
                method,
                path,
                status: rparts.status.as_u16(),
            });
            if switching {
                // The relay records the `response` line when it ends.
                return Response::from_parts(rparts, rbody);
            }
            if service.mask.is_empty() {
                let status = rparts.status.as_u16();
                return Response::from_parts(rparts, Counted::wrap(rbody, ctx.clone(), status));
            }
            match mask_body(
                ctx,
                &service.mask,
                gateway_cfg.json_mask_max_bytes,
                &rparts.headers,
                rbody,
            )
            .await
            {
                Ok(body) => {
                    rparts.headers.remove(header::CONTENT_LENGTH);
                    let status = rparts.status.as_u16();
                    Response::from_parts(rparts, Counted::wrap(body, ctx.clone(), status))
                }
                Err(msg) => fail(
                    StatusCode::BAD_GATEWAY,
                    Event::Error {
                        message: msg.clone(),
                    },
                    &msg,
                ),
            }
        }
        Err(e) => {
            let msg = format!(
                "upstream {}:{} unreachable: {}",
                service.host,
                service.port,
                error_chain(&e)
            );
            warn!(service = %service.name, "{msg}");
            ctx.record(Event::Request {
                method,
                path,
                status: 502,
            });
            fail(
                StatusCode::BAD_GATEWAY,
                Event::Error {
                    message: msg.clone(),
                },
                &msg,
            )
        }
    }
}

/// Buffers a response of a service with `mask` (at most `limit` bytes),
/// masks it when it is JSON or NDJSON, whatever its `Content-Type`
/// ([`json_mask::mask_document`]), and records what was masked. A body
/// declared JSON that does not parse, an encoded body, an event stream and
/// a body over the limit are refused. Errors are messages for a 502: a body
/// that may hold JSON is never passed on unmasked.
async fn mask_body(
    ctx: &ConnCtx,
    masks: &[String],
    limit: usize,
    headers: &hyper::HeaderMap,
    body: ProxyBody,
) -> Result<ProxyBody, String> {
    let header = |name| {
        headers
            .get(name)
            .and_then(|v: &header::HeaderValue| v.to_str().ok())
    };
    let coding = header(header::CONTENT_ENCODING).unwrap_or("identity");
    if !coding.eq_ignore_ascii_case("identity") {
        return Err(format!(
            "upstream sent a {coding}-encoded body that Sluice cannot mask; refused"
        ));
    }
    let content_type = header(header::CONTENT_TYPE).unwrap_or("");
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
        && !ctx.record(Event::Masked {
            fields: report.fields,
            count: report.count,
        })
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

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}
