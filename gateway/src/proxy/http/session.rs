//! Per-connection state for HTTP: which service the connection belongs to,
//! and its session record (opened on first use, closed with the connection).
use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use tracing::warn;

use crate::{
    config::{Protocol, Service},
    proxy::{Gateway, Intercepted, Snapshot},
    recorder::{Event, SessionMeta, SessionRecord},
    state::{LiveToken, TokenCheckError},
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
    session: OnceLock<Option<SessionRecord>>,
    /// The session's `open` line is written (`true`) or could not be.
    open_written: tokio::sync::OnceCell<bool>,
    /// Held (read) by each upgraded connection's relay; `close` waits for
    /// the write lock, so it comes after their `response` lines.
    relays: Arc<tokio::sync::RwLock<()>>,
    /// The last token that passed, re-checked cheaply on each request. The
    /// lock is never held across an `.await`, so the streams of an HTTP/2
    /// connection do not queue behind one Redis read.
    live: std::sync::Mutex<Option<LiveToken>>,
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
            open_written: tokio::sync::OnceCell::new(),
            relays: Arc::default(),
            live: std::sync::Mutex::new(None),
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
        let wanted = if self.tls {
            Protocol::Https
        } else {
            Protocol::Http
        };
        let fits = |s: &Service| s.protocol == wanted && s.port == port;
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

    /// The session record, opened (with an `open` event) on first use.
    /// `None` when the record cannot be written; the caller must then refuse
    /// the request rather than serve it unaudited.
    pub fn session(&self, service: &str) -> Option<&SessionRecord> {
        self.session
            .get_or_init(|| {
                let id = &self.conn.identity;
                let meta = SessionMeta {
                    agent: id.agent.clone(),
                    pid: id.pid,
                    uid: id.uid,
                    service: service.to_string(),
                };
                let rec = self
                    .gw
                    .recorder
                    .start(meta)
                    .map_err(|e| warn!(error = %e, "cannot open session record"))
                    .ok()?;
                let open = Event::Open {
                    protocol: if self.tls {
                        "https".into()
                    } else {
                        "http".into()
                    },
                    original_dst: self.conn.original_dst.to_string(),
                    peer: self.conn.peer.to_string(),
                    cgroup: id.cgroup.clone(),
                    netns_cookie: id.netns_cookie,
                };
                rec.record(open)
                    .map_err(|e| warn!(error = %e, "cannot queue the session record"))
                    .ok()?;
                Some(rec)
            })
            .as_ref()
    }

    /// Whether the session's first lines (`open`, …) are written; writes
    /// them the first time. `false`: refuse to forward anything.
    pub async fn opened(&self) -> bool {
        *self.open_written.get_or_init(|| self.flush()).await
    }

    /// Waits until every line this connection queued is written; `false`
    /// when one could not be (the caller refuses: nothing goes unaudited).
    /// `true` when no session was opened: nothing was queued.
    pub async fn flush(&self) -> bool {
        match self.session.get().and_then(Option::as_ref) {
            Some(rec) => rec
                .flush()
                .await
                .map_err(|e| warn!(error = %e, "session record write failed"))
                .is_ok(),
            None => true,
        }
    }

    /// Queues `event` in the open session ([`ConnCtx::flush`] waits for
    /// it); `false` when the session is closed or has no record.
    pub fn record(&self, event: Event) -> bool {
        match self.session.get().and_then(Option::as_ref) {
            Some(rec) => rec
                .record(event)
                .map_err(|e| warn!(error = %e, "session record write failed"))
                .is_ok(),
            None => false,
        }
    }

    /// Checks the token with `digest` for this connection's agent and
    /// `service`: a full check the first time (recording `auth_ok`), then
    /// cheap re-checks ([`LiveToken::recheck`]).
    ///
    /// # Errors
    /// [`TokenCheckError`] when the token is not (or no longer) valid or the
    /// token store is unreachable.
    pub async fn check_token(&self, digest: &str, service: &str) -> Result<(), TokenCheckError> {
        let known = {
            let live = self.live.lock().unwrap();
            match live
                .as_ref()
                .filter(|t| t.digest == digest && t.record.service == service)
            {
                Some(t) => match t.settled(&self.gw.state) {
                    Some(settled) => return settled,
                    None => Some(t.clone()),
                },
                None => None,
            }
        };
        let fresh = match known {
            Some(mut t) => t.recheck(&self.gw.state).await.map(|()| t)?,
            None => {
                let fresh =
                    LiveToken::check(&self.gw.state, digest, &self.conn.identity.agent, service)
                        .await?;
                self.record(Event::AuthOk {
                    token_id: fresh.record.id.clone(),
                });
                fresh
            }
        };
        *self.live.lock().unwrap() = Some(fresh);
        Ok(())
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
        self.record(Event::Close {
            duration_ms: elapsed.as_millis() as u64,
        });
    }
}
