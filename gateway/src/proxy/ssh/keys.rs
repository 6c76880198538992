//! Placeholder keys in Redis: the public half of each key from `sluice
//! token issue --ssh-key`, stored as the login verifier (scheme [`SCHEME`],
//! see [`crate::state`]'s verifiers) of the token it was issued with. A
//! presented key that matches yields that token's digest, which the guard
//! checks like any token (agent, service, expiry, revocation).
use russh::keys::PublicKey;
use sluice_ssh::placeholder::AuthorizedKey;

use crate::{
    state::{State, StateError},
    tokens::{self, TokenRecord},
};

/// The verifier scheme of placeholder keys.
pub const SCHEME: &str = "ssh";

/// Stores `key` as the placeholder key of the token `token` (just issued
/// as `record`); the token itself is not kept by the caller.
///
/// # Errors
/// [`StateError`] when Redis fails.
pub async fn enrol(
    state: &State,
    record: &TokenRecord,
    token: &str,
    key: &AuthorizedKey,
) -> Result<(), StateError> {
    state
        .add_verifier(
            SCHEME,
            &record.agent,
            &record.service,
            &tokens::digest(token),
            &key.to_line(),
            record.expires,
        )
        .await
}

/// The token digest whose placeholder key is `presented`, among `stored`
/// (the session's verifiers of scheme [`SCHEME`], as (digest, key line));
/// `None` when it is none of them.
pub fn find(stored: Vec<(String, String)>, presented: &PublicKey) -> Option<String> {
    stored.into_iter().find_map(|(digest, line)| {
        AuthorizedKey::parse(&line)
            .ok()
            .filter(|k| k.matches(presented))
            .map(|_| digest)
    })
}
