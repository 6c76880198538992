//! The daemon's handle on Redis: connects lazily and again after a failed
//! attempt, so `sluice run` starts (and fails closed per request) while
//! Redis is down, and recovers by itself when it returns.
//!
//! It also follows the revocation channel (Redis pub/sub): every revocation
//! from any gateway bumps a local epoch, and [`LiveToken::recheck`] re-reads
//! a token from Redis only when the epoch moved (or the channel is down).
//! Revocation thus takes effect on the next request or statement at the
//! cost of one atomic load per request.
use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use tokio::sync::Mutex;
use tracing::{info, warn};

use super::{State, StateError, StateKeys, APPROVALS_CHANNEL, REVOCATIONS_CHANNEL};
use crate::tokens::{self, Rejection, TokenRecord};

/// How long an authenticated session keeps working on its last good check
/// while Redis is unreachable.
pub const OFFLINE_GRACE: Duration = Duration::from_secs(30);

/// Lazily connected, shared [`State`].
pub struct StateHandle {
    url: zeroize::Zeroizing<String>,
    keys: std::sync::Arc<StateKeys>,
    state: Mutex<Option<State>>,
    epoch: AtomicU64,
    watching: AtomicBool,
    decisions: tokio::sync::broadcast::Sender<String>,
}

impl StateHandle {
    /// A handle for `url`, signing and checking records with `keys`;
    /// nothing is dialled yet.
    pub fn new(url: &str, keys: std::sync::Arc<StateKeys>) -> Self {
        Self {
            url: zeroize::Zeroizing::new(url.to_string()),
            keys,
            state: Mutex::new(None),
            epoch: AtomicU64::new(0),
            watching: AtomicBool::new(false),
            decisions: tokio::sync::broadcast::channel(1024).0,
        }
    }

    /// Ids of approvals decided anywhere, as announced on
    /// [`APPROVALS_CHANNEL`] (subscribe before creating an approval).
    pub fn approval_decisions(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.decisions.subscribe()
    }

    /// The connected state, connecting first if needed.
    ///
    /// # Errors
    /// [`StateError`] when Redis cannot be reached.
    pub async fn get(&self) -> Result<State, StateError> {
        let mut guard = self.state.lock().await;
        if let Some(s) = guard.as_ref() {
            return Ok(s.clone());
        }
        let s = State::connect(&self.url)
            .await?
            .with_keys(self.keys.clone());
        *guard = Some(s.clone());
        Ok(s)
    }

    /// The revocation epoch, or `None` while the channel is not followed
    /// (callers then re-check every time).
    pub fn revocation_epoch(&self) -> Option<u64> {
        self.watching
            .load(Ordering::Acquire)
            .then(|| self.epoch.load(Ordering::Acquire))
    }

    /// Follows [`REVOCATIONS_CHANNEL`] and [`APPROVALS_CHANNEL`] forever,
    /// reconnecting after failures.
    pub async fn watch_revocations(&self) {
        loop {
            match self.subscribe().await {
                Ok(mut pubsub) => {
                    // Anything revoked while we were not listening counts.
                    self.epoch.fetch_add(1, Ordering::AcqRel);
                    self.remember_revocations().await;
                    self.watching.store(true, Ordering::Release);
                    info!("following token revocations");
                    let mut messages = pubsub.on_message();
                    while let Some(msg) = messages.next().await {
                        if msg.get_channel_name() == APPROVALS_CHANNEL {
                            let _ = self
                                .decisions
                                .send(msg.get_payload::<String>().unwrap_or_default());
                        } else {
                            self.remember_revocations().await;
                            self.epoch.fetch_add(1, Ordering::AcqRel);
                        }
                    }
                    warn!("revocation channel closed; re-checking every token until it is back");
                }
                Err(e) => {
                    warn!(error = %e, "cannot follow token revocations; re-checking every token")
                }
            }
            self.watching.store(false, Ordering::Release);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Remembers every valid revocation entry (see
    /// [`State::remember_revocations`]); a failure is logged.
    async fn remember_revocations(&self) {
        let remembered = match self.get().await {
            Ok(state) => state.remember_revocations().await,
            Err(e) => Err(e),
        };
        if let Err(e) = remembered {
            warn!(error = %e, "cannot read the revocation list");
        }
    }

    async fn subscribe(&self) -> Result<redis::aio::PubSub, redis::RedisError> {
        let client = redis::Client::open(self.url.as_str())?;
        let mut pubsub = tokio::time::timeout(super::CONNECT_TIMEOUT, client.get_async_pubsub())
            .await
            .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "connect timed out")))??;
        pubsub
            .subscribe(&[REVOCATIONS_CHANNEL, APPROVALS_CHANNEL])
            .await?;
        Ok(pubsub)
    }
}

/// Why a live token stopped being valid.
#[derive(Debug, thiserror::Error)]
pub enum TokenCheckError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error(transparent)]
    State(#[from] StateError),
}

/// A token that passed, re-checked cheaply before each request or statement.
#[derive(Debug, Clone)]
pub struct LiveToken {
    /// The token's digest (never the token).
    pub digest: String,
    pub record: TokenRecord,
    epoch: Option<u64>,
    checked: Instant,
}

impl LiveToken {
    /// A token checked just now, when the revocation epoch was `epoch`.
    pub fn new(digest: String, record: TokenRecord, epoch: Option<u64>) -> Self {
        LiveToken {
            digest,
            record,
            epoch,
            checked: Instant::now(),
        }
    }

    /// Looks the token up by `digest` and checks it for `agent`/`service`.
    ///
    /// # Errors
    /// [`TokenCheckError`].
    pub async fn check(
        handle: &StateHandle,
        digest: &str,
        agent: &str,
        service: &str,
    ) -> Result<LiveToken, TokenCheckError> {
        let epoch = handle.revocation_epoch();
        let record = handle.get().await?.lookup_digest(digest).await?;
        let record = tokens::check(record, agent, service, now())?;
        Ok(LiveToken {
            digest: digest.to_string(),
            record,
            epoch,
            checked: Instant::now(),
        })
    }

    /// The re-check that needs no Redis read: `Some(Ok)` when the token
    /// has not expired and no revocation happened since it was checked,
    /// `Some(Err)` when it expired, `None` when Redis must be asked
    /// ([`LiveToken::recheck`]).
    pub fn settled(&self, handle: &StateHandle) -> Option<Result<(), TokenCheckError>> {
        if now() >= self.record.expires {
            return Some(Err(Rejection::Expired.into()));
        }
        let epoch = handle.revocation_epoch();
        (epoch.is_some() && epoch == self.epoch).then_some(Ok(()))
    }

    /// Re-checks expiry locally and revocation via the epoch; reads Redis
    /// only when a revocation happened since the last check. While Redis is
    /// unreachable the token stays good for [`OFFLINE_GRACE`] after its last
    /// successful check.
    ///
    /// # Errors
    /// [`TokenCheckError`].
    pub async fn recheck(&mut self, handle: &StateHandle) -> Result<(), TokenCheckError> {
        if let Some(settled) = self.settled(handle) {
            return settled;
        }
        let (agent, service) = (self.record.agent.clone(), self.record.service.clone());
        match LiveToken::check(handle, &self.digest, &agent, &service).await {
            Ok(fresh) => {
                *self = fresh;
                Ok(())
            }
            Err(TokenCheckError::State(_)) if self.checked.elapsed() < OFFLINE_GRACE => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}
