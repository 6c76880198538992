//! One issuer's signing keys: the JWKS, fetched on first use, cached,
//! fetched again for an unknown `kid` or when older than [`MAX_AGE`] (at
//! most once per `jwks_refetch`, a minute by default), and kept when the
//! issuer cannot be reached.
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use tracing::{info, warn};

use super::{fetch, IdentityError};
use crate::config::oidc::Issuer;

/// Keys older than this are refreshed on the next use (the old ones stay
/// in use until the issuer answers).
pub const MAX_AGE: Duration = Duration::from_secs(15 * 60);
/// While no key was ever fetched, a failed fetch is retried after this
/// long at the soonest.
const RETRY_EMPTY: Duration = Duration::from_secs(2);

/// The cache of one `[[oidc]]` issuer.
pub struct IssuerKeys {
    /// The configuration these keys were fetched for.
    pub issuer: Issuer,
    cache: tokio::sync::Mutex<Cached>,
}

#[derive(Default)]
struct Cached {
    jwks_uri: Option<String>,
    keys: Option<(JwkSet, Instant)>,
    last_attempt: Option<(Instant, Option<fetch::FetchError>)>,
}

impl IssuerKeys {
    /// An empty cache for `issuer`.
    pub fn new(issuer: Issuer) -> Self {
        IssuerKeys {
            issuer,
            cache: Default::default(),
        }
    }

    /// The key named `kid` (or the only key, when the token names none).
    ///
    /// # Errors
    /// [`IdentityError::Invalid`] for a `kid` the issuer does not publish
    /// (after one refetch, when one is due), [`IdentityError::Unavailable`]
    /// when no key could ever be fetched.
    pub async fn key(&self, kid: Option<&str>) -> Result<Jwk, IdentityError> {
        let mut cache = self.cache.lock().await;
        let found = cache.find(kid);
        let stale = cache
            .keys
            .as_ref()
            .is_none_or(|(_, at)| at.elapsed() >= MAX_AGE);
        if (found.is_none() || stale) && cache.may_fetch(self.issuer.jwks_refetch) {
            self.refresh(&mut cache).await;
        }
        if let Some(jwk) = cache.find(kid) {
            return Ok(jwk);
        }
        match (&cache.keys, &cache.last_attempt) {
            (None, Some((_, Some(e)))) => Err(IdentityError::Unavailable(format!(
                "issuer {:?} unreachable and no keys cached: {e}",
                self.issuer.name
            ))),
            (None, _) => Err(IdentityError::Unavailable(format!(
                "no keys of issuer {:?} yet",
                self.issuer.name
            ))),
            (Some(_), _) => Err(IdentityError::Invalid(match kid {
                Some(kid) => format!("kid {kid:?} is not in the JWKS of {:?}", self.issuer.name),
                None => "the token names no kid and the JWKS has several keys".into(),
            })),
        }
    }

    /// Fetches discovery (when not known yet) and the JWKS; keeps the old
    /// keys on failure.
    async fn refresh(&self, cache: &mut Cached) {
        let fetched = async {
            let uri = match &cache.jwks_uri {
                Some(uri) => uri.clone(),
                None => fetch::discovery(&self.issuer).await?.jwks_uri,
            };
            let set = fetch::jwks(&self.issuer, &uri).await?;
            Ok::<_, fetch::FetchError>((uri, set))
        }
        .await;
        match fetched {
            Ok((uri, set)) => {
                info!(issuer = %self.issuer.name, keys = set.keys.len(), "fetched the issuer's JWKS");
                cache.jwks_uri = Some(uri);
                cache.keys = Some((set, Instant::now()));
                cache.last_attempt = Some((Instant::now(), None));
            }
            Err(e) => {
                warn!(issuer = %self.issuer.name, error = %e, "cannot fetch the issuer's keys; keeping the cached ones");
                // Discovery again next time: the JWKS may have moved.
                cache.jwks_uri = None;
                cache.last_attempt = Some((Instant::now(), Some(e)));
            }
        }
    }
}

impl Cached {
    fn find(&self, kid: Option<&str>) -> Option<Jwk> {
        let (set, _) = self.keys.as_ref()?;
        match kid {
            Some(kid) => set.find(kid).cloned(),
            None if set.keys.len() == 1 => set.keys.first().cloned(),
            None => None,
        }
    }

    fn may_fetch(&self, interval: Duration) -> bool {
        let interval = if self.keys.is_none() {
            interval.min(RETRY_EMPTY)
        } else {
            interval
        };
        self.last_attempt
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= interval)
    }
}
