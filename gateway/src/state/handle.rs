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
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use futures_util::{
    future::{BoxFuture, Shared},
    FutureExt, StreamExt,
};
use tracing::{info, warn};

use super::{State, StateError, StateKeys, APPROVALS_CHANNEL, REVOCATIONS_CHANNEL};
use crate::tokens::{self, Rejection, TokenRecord};

/// How long an authenticated session keeps working on its last good check
/// while Redis is unreachable.
pub const OFFLINE_GRACE: Duration = Duration::from_secs(30);

/// After a failed connect, callers get its error without dialling again
/// for this long (one attempt per second, not one per caller).
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// One connect attempt, awaited by every caller that arrives during it.
type Attempt = Shared<BoxFuture<'static, Result<State, Arc<StateError>>>>;

/// The connection, or the attempt under way, or the last failure.
#[derive(Default)]
struct Slot {
    state: Option<State>,
    attempt: Option<Attempt>,
    failed: Option<(Instant, Arc<StateError>)>,
}

/// Lazily connected, shared [`State`].
pub struct StateHandle {
    url: zeroize::Zeroizing<String>,
    keys: std::sync::Arc<StateKeys>,
    /// Never held across an `.await`.
    slot: Mutex<Slot>,
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
            slot: Mutex::new(Slot::default()),
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

    /// The connected state, connecting first if needed. Concurrent callers
    /// share one connect attempt (each waits at most one
    /// [`super::CONNECT_TIMEOUT`]), and for [`RETRY_AFTER`] after a failed
    /// one they get its error at once.
    ///
    /// # Errors
    /// [`StateError`] when Redis cannot be reached.
    pub async fn get(&self) -> Result<State, StateError> {
        let attempt = {
            let mut slot = self.lock();
            if let Some(s) = &slot.state {
                return Ok(s.clone());
            }
            if let Some((at, e)) = &slot.failed {
                if at.elapsed() < RETRY_AFTER {
                    return Err(reissue(e));
                }
            }
            let url = zeroize::Zeroizing::new(self.url.to_string());
            let keys = self.keys.clone();
            slot.attempt
                .get_or_insert_with(|| {
                    async move {
                        State::connect(&url)
                            .await
                            .map(|s| s.with_keys(keys))
                            .map_err(Arc::new)
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        let result = attempt.clone().await;
        let mut slot = self.lock();
        if slot.attempt.as_ref().is_some_and(|a| a.ptr_eq(&attempt)) {
            slot.attempt = None;
            match &result {
                Ok(s) => (slot.state, slot.failed) = (Some(s.clone()), None),
                Err(e) => slot.failed = Some((Instant::now(), e.clone())),
            }
        }
        result.map_err(|e| reissue(&e))
    }

    fn lock(&self) -> MutexGuard<'_, Slot> {
        // Nothing panics while the lock is held.
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
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

/// A copy of a shared connect error for one more caller.
fn reissue(e: &StateError) -> StateError {
    match e {
        StateError::InvalidUrl(m) => StateError::InvalidUrl(m.clone()),
        StateError::Connect { addr, reason } => StateError::Connect {
            addr: addr.clone(),
            reason: reason.clone(),
        },
        other => StateError::Connect {
            addr: String::new(),
            reason: other.to_string(),
        },
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A "Redis" that accepts connections and never answers.
    fn silent_server() -> (std::net::TcpListener, String) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("redis://{}/0", l.local_addr().unwrap());
        (l, url)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_one_connect_and_its_failure() {
        let (listener, url) = silent_server();
        let keys = Arc::new(super::super::StateKeys::new(Some([1; 32]), Some([2; 32])));
        let handle = Arc::new(StateHandle::new(&url, keys));
        let started = Instant::now();
        let callers: Vec<_> = (0..6)
            .map(|_| {
                let h = handle.clone();
                tokio::spawn(async move { h.get().await.is_err() })
            })
            .collect();
        for c in callers {
            assert!(c.await.unwrap(), "a silent server is no Redis");
        }
        // Queued behind one another they would take 6 connect timeouts.
        assert!(
            started.elapsed() < 2 * crate::state::CONNECT_TIMEOUT,
            "took {:?}",
            started.elapsed()
        );
        // Right after the failure, callers get it without dialling again.
        let again = Instant::now();
        assert!(handle.get().await.is_err());
        assert!(again.elapsed() < Duration::from_millis(100));
        listener.set_nonblocking(true).unwrap();
        let dialled = std::iter::from_fn(|| listener.accept().ok()).count();
        assert_eq!(dialled, 1, "one connection for all callers");
    }
}
