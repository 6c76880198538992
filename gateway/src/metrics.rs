//! Prometheus metrics (text exposition format 0.0.4 / OpenMetrics) on the
//! optional admin listener `[gateway] metrics = "127.0.0.1:9464"`.
//!
//! Counters are derived from the session events every handler already
//! records ([`Metrics::observe`]), so no protocol code counts by hand. The
//! eBPF connection-tracking map's occupancy is read at scrape time. Agents
//! cannot reach the listener: egress deny refuses every destination that is
//! not a service.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, header, service::service_fn, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::recorder::Event;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    service: String,
    outcome: String,
}

/// Every metric Sluice exports.
pub struct Metrics {
    registry: Registry,
    sessions: Family<ServiceLabels, Counter>,
    requests: Family<OutcomeLabels, Counter>,
    statements: Family<ServiceLabels, Counter>,
    auth_failures: Family<ServiceLabels, Counter>,
    denials: Family<ServiceLabels, Counter>,
    approvals: Family<OutcomeLabels, Counter>,
    masked: Family<ServiceLabels, Counter>,
    errors: Family<ServiceLabels, Counter>,
    upstream_seconds: Family<ServiceLabels, Histogram>,
    tracked_connections: Gauge,
    notifications_dropped: Family<TargetLabels, Counter>,
    tuple_misses: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    target: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `sluice` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let sessions = Family::<ServiceLabels, Counter>::default();
        let requests = Family::<OutcomeLabels, Counter>::default();
        let statements = Family::<ServiceLabels, Counter>::default();
        let auth_failures = Family::<ServiceLabels, Counter>::default();
        let denials = Family::<ServiceLabels, Counter>::default();
        let approvals = Family::<OutcomeLabels, Counter>::default();
        let masked = Family::<ServiceLabels, Counter>::default();
        let errors = Family::<ServiceLabels, Counter>::default();
        let upstream_seconds = Family::<ServiceLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ])
        });
        let tracked_connections = Gauge::default();
        let notifications_dropped = Family::<TargetLabels, Counter>::default();
        registry.register(
            "notifications_dropped",
            "Notifications dropped (queue full or every retry failed), by target host",
            notifications_dropped.clone(),
        );
        let tuple_misses = Counter::default();
        registry.register("sessions", "Agent sessions opened", sessions.clone());
        registry.register(
            "requests",
            "HTTP requests by response status class",
            requests.clone(),
        );
        registry.register("statements", "SQL statements received", statements.clone());
        registry.register("auth_failures", "Rejected tokens", auth_failures.clone());
        registry.register("denials", "Operations denied by policy", denials.clone());
        registry.register("approvals", "JIT approval outcomes", approvals.clone());
        registry.register(
            "masked_values",
            "Values masked in results and responses",
            masked.clone(),
        );
        registry.register("errors", "Errors reported to agents", errors.clone());
        registry.register(
            "upstream_latency_seconds",
            "Upstream HTTP response time",
            upstream_seconds.clone(),
        );
        registry.register(
            "ebpf_tracked_connections",
            "Entries in the eBPF 4-tuple map",
            tracked_connections.clone(),
        );
        registry.register(
            "ebpf_tuple_misses",
            "Accepted connections with no entry in the eBPF 4-tuple map (closed unserved)",
            tuple_misses.clone(),
        );
        Metrics {
            registry,
            sessions,
            requests,
            statements,
            auth_failures,
            denials,
            approvals,
            masked,
            errors,
            upstream_seconds,
            tracked_connections,
            notifications_dropped,
            tuple_misses,
        }
    }

    /// Counts a notification dropped for `target` (a host name).
    pub fn notification_dropped(&self, target: &str) {
        self.notifications_dropped
            .get_or_create(&TargetLabels {
                target: target.to_string(),
            })
            .inc();
    }

    /// Counts an accepted connection the 4-tuple map had no entry for.
    pub fn tuple_miss(&self) {
        self.tuple_misses.inc();
    }

    /// Counts one recorded session event of `service`.
    pub fn observe(&self, service: &str, event: &Event) {
        let svc = || ServiceLabels {
            service: service.to_string(),
        };
        let outcome = |o: &str| OutcomeLabels {
            service: service.to_string(),
            outcome: o.to_string(),
        };
        let (counter, by) = match event {
            Event::Open { .. } => (self.sessions.get_or_create(&svc()), 1),
            Event::Request { status, .. } => (
                self.requests
                    .get_or_create(&outcome(&format!("{}xx", status / 100))),
                1,
            ),
            Event::Query { .. } => (self.statements.get_or_create(&svc()), 1),
            Event::AuthFail { .. } => (self.auth_failures.get_or_create(&svc()), 1),
            Event::Denied { .. } => (self.denials.get_or_create(&svc()), 1),
            Event::Approved { .. } => (self.approvals.get_or_create(&outcome("approved")), 1),
            Event::Rejected { .. } => (self.approvals.get_or_create(&outcome("rejected")), 1),
            Event::Masked { count, .. } => (self.masked.get_or_create(&svc()), *count),
            Event::Error { .. } => (self.errors.get_or_create(&svc()), 1),
            _ => return,
        };
        counter.inc_by(by);
    }

    /// Records one upstream round trip.
    pub fn upstream_latency(&self, service: &str, elapsed: Duration) {
        self.upstream_seconds
            .get_or_create(&ServiceLabels {
                service: service.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// The exposition text, with the map occupancy read now.
    pub fn render(&self, tracked_connections: usize) -> String {
        self.tracked_connections.set(tracked_connections as i64);
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Serves `GET /metrics` on `addr` until the process ends.
///
/// # Errors
/// The bind failure.
pub async fn serve(
    addr: SocketAddr,
    render: Arc<dyn Fn() -> String + Send + Sync>,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    info!(%addr, "metrics listener up");
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let render = render.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let render = render.clone();
                    async move {
                        let resp = if req.uri().path() == "/metrics" {
                            let mut r = Response::new(Full::new(Bytes::from(render())));
                            r.headers_mut().insert(
                                header::CONTENT_TYPE,
                                header::HeaderValue::from_static(
                                    "text/plain; version=0.0.4; charset=utf-8",
                                ),
                            );
                            r
                        } else {
                            let mut r =
                                Response::new(Full::new(Bytes::from_static(b"see /metrics\n")));
                            *r.status_mut() = StatusCode::NOT_FOUND;
                            r
                        };
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_become_counters() {
        let m = Metrics::new();
        m.observe(
            "api",
            &Event::Open {
                protocol: "https".into(),
                original_dst: String::new(),
                peer: String::new(),
                cgroup: String::new(),
                netns_cookie: 0,
            },
        );
        m.observe(
            "api",
            &Event::Request {
                method: "GET".into(),
                path: "/".into(),
                status: 200,
                kube: None,
            },
        );
        m.observe(
            "api",
            &Event::Masked {
                fields: vec!["ssn".into()],
                count: 3,
            },
        );
        m.upstream_latency("api", Duration::from_millis(3));
        let text = m.render(7);
        assert!(
            text.contains(r#"sluice_sessions_total{service="api"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"sluice_requests_total{service="api",outcome="2xx"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"sluice_masked_values_total{service="api"} 3"#),
            "{text}"
        );
        assert!(text.contains("sluice_ebpf_tracked_connections 7"), "{text}");
        assert!(
            text.contains("sluice_upstream_latency_seconds_count"),
            "{text}"
        );
    }
}
