//! One agent session as the pipeline sees it: who, which service, its
//! record, and the token that passed.
use std::{io, sync::Arc, time::Duration};

use tracing::warn;

use super::{AgentIdentity, Guard, Refusal, RefusalKind};
use crate::{
    config::Service,
    recorder::{Event, SessionRecord},
    state::LiveToken,
    vault::Secret,
};

/// An open session. `Send + Sync`: the streams of an HTTP/2 connection
/// share one.
pub struct Session {
    guard: Arc<Guard>,
    pub identity: AgentIdentity,
    /// The service as configured when the session opened: its upstream
    /// and masks stay fixed for the session ([`Session::with_current`] has the
    /// rules now).
    service: Arc<Service>,
    pub(super) record: SessionRecord,
    /// Whether the `open` line is written (set once, by [`Session::opened`]).
    open_written: tokio::sync::OnceCell<bool>,
    /// The last token that passed, re-checked cheaply before each
    /// operation. The lock is never held across an `.await`.
    pub(super) live: std::sync::Mutex<Option<LiveToken>>,
    /// The last JWT that passed (DESIGN.md §7), re-checked likewise.
    pub(super) jwt: std::sync::Mutex<Option<super::jwt::LiveJwt>>,
}

impl Session {
    pub(super) fn new(
        guard: Arc<Guard>,
        identity: AgentIdentity,
        service: &Service,
        record: SessionRecord,
    ) -> Self {
        Session {
            guard,
            identity,
            service: Arc::new(service.clone()),
            record,
            open_written: tokio::sync::OnceCell::new(),
            live: std::sync::Mutex::new(None),
            jwt: std::sync::Mutex::new(None),
        }
    }

    /// The session id, e.g. `s-019a2b3c4d5e-1f2e3d4c`.
    pub fn id(&self) -> &str {
        self.record.id()
    }

    /// The shared parts (CA, metrics, config).
    pub fn guard(&self) -> &Arc<Guard> {
        &self.guard
    }

    /// The service as it was when the session opened.
    pub fn service(&self) -> &Arc<Service> {
        &self.service
    }

    /// Runs `f` on the service as configured now: a reload's new rules
    /// apply to the next operation of open sessions. The session's own
    /// copy if a reload removed the service or changed its protocol.
    pub fn with_current<T>(&self, f: impl FnOnce(&Service) -> T) -> T {
        let config = self.guard.config();
        let now = config
            .service(&self.service.name)
            .filter(|s| s.protocol() == self.service.protocol());
        f(now.unwrap_or(&self.service))
    }

    /// Queues `event`; [`Session::flush`] waits until it is written.
    ///
    /// # Errors
    /// The session is closed (logged).
    pub fn record(&self, event: Event) -> io::Result<()> {
        self.record
            .record(event)
            .inspect_err(|e| warn!(error = %e, "session record write failed"))
    }

    /// The session's record, for what handlers add besides lines: terminal
    /// output for its `.cast` file, how commands ended.
    pub fn recording(&self) -> &SessionRecord {
        &self.record
    }

    /// Waits until every line this session queued is written.
    ///
    /// # Errors
    /// [`RefusalKind::Unrecorded`] when one could not be: the caller
    /// refuses, nothing goes on unaudited.
    pub async fn flush(&self) -> Result<(), Refusal> {
        self.record.flush().await.map_err(|e| {
            warn!(error = %e, "session record write failed");
            Refusal::unrecorded()
        })
    }

    /// Waits until the `open` line is written (once per session).
    ///
    /// # Errors
    /// As [`Session::flush`].
    pub async fn opened(&self) -> Result<(), Refusal> {
        let written = *self
            .open_written
            .get_or_init(|| async { self.flush().await.is_ok() })
            .await;
        written.then_some(()).ok_or_else(Refusal::unrecorded)
    }

    /// Records `message` as an `error` line.
    pub fn error(&self, message: impl Into<String>) {
        let _ = self.record(Event::Error {
            message: message.into(),
        });
    }

    /// Credential: the service's real secret from the vault.
    ///
    /// # Errors
    /// [`RefusalKind::NoSecret`] when the vault has no such secret,
    /// [`RefusalKind::Vault`] when it cannot be read; both recorded.
    pub fn credential(&self) -> Result<Secret, Refusal> {
        let name = &self.service.secret;
        let refusal = match self.guard.vault.get(name) {
            Ok(Some(secret)) => return Ok(secret),
            Ok(None) => Refusal::new(
                RefusalKind::NoSecret,
                format!("secret {name:?} is not in the vault; run `sluice secret put {name}`"),
            ),
            Err(e) => Refusal::new(RefusalKind::Vault, format!("vault unavailable: {e}")),
        };
        self.error(refusal.message.clone());
        Err(refusal)
    }

    /// Records the `close` line.
    pub fn close(&self, elapsed: Duration) {
        let _ = self.record(Event::Close {
            duration_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        });
    }
}
