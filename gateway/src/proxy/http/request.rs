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
    json_mask,
    reply::{self, ProxyBody},
    session::ConnCtx,
    upstream,
};
use crate::{
    approvals::{self, HoldRequest, Outcome},
    policy::{self, HttpOperation, Verdict},
    proxy::throttle,
    recorder::Event,
    state::TokenCheckError,
    tokens,
};

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

async fn respond(ctx: &Arc<ConnCtx>, req: Request<Incoming>) -> Response<ProxyBody> {
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
    let path = normalize_path(parts.uri.path());
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

    // Policy, on the normalised path.
    match policy::decide_http(
        &service.deny,
        &service.approve,
        HttpOperation {
            method: &method,
            path: &path,
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
            let req = HoldRequest {
                agent: id.agent.clone(),
                pid: id.pid,
                uid: id.uid,
                service: service.name.clone(),
                summary: format!("{method} {path}"),
            };
            let outcome = approvals::hold(
                &gw.state,
                &gw.instance,
                req,
                gateway_cfg.approval_timeout,
                |approval| {
                    ctx.record(Event::ApprovalWait {
                        approval: approval.to_string(),
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
    let Some(client) = routed.snap.http.get(routed.idx) else {
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
        Ok(resp) => {
            let (mut rparts, rbody) = resp.into_parts();
            upstream::strip_hop_by_hop(&mut rparts.headers);
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
            let masked = !service.mask.is_empty()
                && rparts
                    .headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(json_mask::is_json);
            if !masked {
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

/// Buffers a JSON response (at most `limit` bytes), masks it and records
/// what was masked. Errors are messages for a 502: the body is never passed
/// on unmasked.
async fn mask_body(
    ctx: &ConnCtx,
    masks: &[String],
    limit: usize,
    headers: &hyper::HeaderMap,
    body: ProxyBody,
) -> Result<ProxyBody, String> {
    let coding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity");
    if !coding.eq_ignore_ascii_case("identity") {
        return Err(format!(
            "upstream sent a {coding}-encoded JSON body that Sluice cannot mask; refused"
        ));
    }
    let bytes = http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| format!("JSON response cannot be masked ({e}; limit {limit} bytes, gateway.json_mask_max_bytes); refused"))?
        .to_bytes();
    let (masked, report) = json_mask::mask_json(&bytes, masks)
        .map_err(|e| format!("upstream sent invalid JSON ({e}); refusing to pass it unmasked"))?;
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

/// The path as policy and records see it: percent-decoded, with `.`/`..`
/// segments resolved and empty segments dropped (RFC 3986 §5.2.4), so
/// `/v1/%63ustomers//./42` matches a rule on `/v1/customers/*`.
pub fn normalize_path(raw: &str) -> String {
    let decoded = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len() + 1);
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || (decoded.ends_with('/') && !segments.is_empty()) {
        out.push('/');
    }
    out
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

#[cfg(test)]
mod tests {
    use super::normalize_path;

    #[test]
    fn paths_normalise_before_policy() {
        assert_eq!(normalize_path("/v1/%63ustomers//./42"), "/v1/customers/42");
        assert_eq!(normalize_path("/v1/x/../customers/1"), "/v1/customers/1");
        assert_eq!(normalize_path("/"), "/");
        assert_eq!(normalize_path("/a/"), "/a/");
        assert_eq!(normalize_path("/../.."), "/");
    }
}
