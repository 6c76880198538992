//! The daemon's handle on Redis: connects lazily and again after a failed
//! attempt, so `sluice run` starts (and fails closed per request) while
//! Redis is down, and recovers by itself when it returns.
use tokio::sync::Mutex;

use super::{State, StateError};
use crate::tokens::TokenRecord;

/// Lazily connected, shared [`State`].
pub struct StateHandle {
    url: String,
    state: Mutex<Option<State>>,
}

impl StateHandle {
    /// A handle for `url`; nothing is dialled yet.
    pub fn new(url: &str) -> Self {
        Self { url: url.to_string(), state: Mutex::new(None) }
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
        let s = State::connect(&self.url).await?;
        *guard = Some(s.clone());
        Ok(s)
    }

    /// Looks up a token by its digest.
    ///
    /// # Errors
    /// [`StateError`] when Redis cannot be reached or answers an error.
    pub async fn lookup(&self, token: &str) -> Result<Option<TokenRecord>, StateError> {
        self.get().await?.lookup(token).await
    }
}
