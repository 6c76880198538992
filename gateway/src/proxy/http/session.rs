//! Per-connection state for HTTP: which service the connection belongs to,
//! and its guard session (opened on first use, closed with the connection).
use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use crate::{
    config::{Protocol, Service},
    guard::{Intercepted, Refusal, Session},
    proxy::{Gateway, Snapshot},
    recorder::Event,
};

/// Why a request could not be tied to a service.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("no service named by Host {0:?} on this port")]
    UnknownHost(String),
    #[error("this connection belongs to service {0}; open a new connection for another host")]
    Misdirected(String),
}

/// The service a request goes to, in the snapshot it was resolved in.
pub struct Routed {
    pub snap: Arc<Snapshot>,
    /// Index into `snap.cfg.services`.
    pub idx: usize,
}

impl Routed {
    /// The service's config.
    pub fn service(&self) -> &Service {
        &self.snap.cfg.services[self.idx]
    }
}

/// One agent connection, shared by its requests (HTTP/2 streams run
/// concurrently).
pub struct ConnCtx {
    pub gw: Arc<Gateway>,
    pub conn: Intercepted,
    /// Service matched by (address, port) or SNI.
    default: Option<String>,
    tls: bool,
    service: OnceLock<String>,
    /// `None` when the session record could not be opened.
    session: OnceLock<Option<Session>>,
    /// Held (read) by each upgraded connection's relay; `close` waits for
    /// the write lock, so it comes after their `response` lines.
    relays: Arc<tokio::sync::RwLock<()>>,
}

impl ConnCtx {
    /// A context for a connection; for TLS, `default` is the SNI's service.
    pub fn new(
        gw: Arc<Gateway>,
        conn: Intercepted,
        default: Option<String>,
        tls: bool,
    ) -> Arc<Self> {
        let ctx = ConnCtx {
            gw,
            conn,
            default: default.clone(),
            tls,
            service: OnceLock::new(),
            session: OnceLock::new(),
            relays: Arc::default(),
        };
        if let (true, Some(name)) = (tls, default) {
            let _ = ctx.service.set(name);
        }
        Arc::new(ctx)
    }

    /// The service for a request with authority `host` (from `Host` or the
    /// HTTP/2 `:authority`, port stripped), in the current snapshot. Fixed
    /// for the connection by the first request.
    ///
    /// # Errors
    /// [`RouteError`] when the host names no service on the dialled port
    /// (or the service was removed by a reload), or another service than the
    /// connection's.
    pub fn service_for(&self, host: Option<&str>) -> Result<Routed, RouteError> {
        let snap = self.gw.snapshot();
        let port = self.conn.original_dst.port();
        let fits = |s: &Service| s.protocol().http_tls() == Some(self.tls) && s.port == port;
        let by_host = host.and_then(|h| {
            snap.cfg
                .services
                .iter()
                .find(|s| fits(s) && s.host.eq_ignore_ascii_case(h))
        });
        let chosen = match (by_host, host) {
            (Some(s), _) => s.name.clone(),
            // An IP literal or no Host: the service matched by address.
            (None, h) if h.is_none_or(|h| h.parse::<std::net::IpAddr>().is_ok()) => self
                .default
                .clone()
                .ok_or_else(|| RouteError::UnknownHost(h.unwrap_or("").to_string()))?,
            (None, h) => return Err(RouteError::UnknownHost(h.unwrap_or("").to_string())),
        };
        let fixed = self.service.get_or_init(|| chosen.clone());
        if *fixed != chosen {
            return Err(RouteError::Misdirected(fixed.clone()));
        }
        let idx = snap
            .service(fixed)
            .filter(|(_, s)| fits(s))
            .map(|(i, _)| i)
            .ok_or_else(|| RouteError::UnknownHost(host.unwrap_or("").to_string()))?;
        Ok(Routed { snap, idx })
    }

    /// The connection's session with `service`, opened on first use.
    ///
    /// # Errors
    /// [`Refusal::unrecorded`] when the record cannot be written; the
    /// caller must then refuse the request rather than serve it unaudited.
    pub fn session(&self, service: &Service) -> Result<&Session, Refusal> {
        self.session
            .get_or_init(|| {
                let protocol = match service.protocol() {
                    Protocol::Kubernetes => "kubernetes",
                    _ if self.tls => "https",
                    _ => "http",
                };
                self.gw.guard.open(&self.conn, service, protocol).ok()
            })
            .as_ref()
            .ok_or_else(Refusal::unrecorded)
    }

    /// Waits until every line this connection queued is written; `false`
    /// when one could not be (the caller refuses: nothing goes unaudited).
    /// `true` when no session was opened: nothing was queued.
    pub async fn flush(&self) -> bool {
        match self.session.get().and_then(Option::as_ref) {
            Some(session) => session.flush().await.is_ok(),
            None => true,
        }
    }

    /// Queues `event` in the open session ([`ConnCtx::flush`] waits for
    /// it); `false` when the session is closed or has no record.
    pub fn record(&self, event: Event) -> bool {
        match self.session.get().and_then(Option::as_ref) {
            Some(session) => session.record(event).is_ok(),
            None => false,
        }
    }

    /// Queues terminal output of `stream` for the session's `.cast` file
    /// ([`crate::recorder::SessionRecord::terminal_output`]); nothing
    /// without a session.
    pub async fn terminal_output(&self, stream: u32, data: bytes::Bytes) {
        if let Some(session) = self.session.get().and_then(Option::as_ref) {
            session.recording().terminal_output(stream, data).await;
        }
    }

    /// A guard an upgraded connection's relay holds while it runs.
    pub fn relay_guard(&self) -> impl Send + 'static {
        self.relays.clone().try_read_owned().ok()
    }

    /// Waits until every upgraded connection's relay has ended.
    pub async fn relays_done(&self) {
        drop(self.relays.write().await);
    }

    /// Writes the `close` event if a session was opened.
    pub fn close(&self, elapsed: Duration) {
        if let Some(session) = self.session.get().and_then(Option::as_ref) {
            session.close(elapsed);
        }
    }
}
