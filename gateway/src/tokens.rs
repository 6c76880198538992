//! Agent tokens (DESIGN.md §4 "Tokens"): their format, how they are found in
//! request text, and the validity check. No I/O; Redis storage is in
//! [`crate::state`].
//!
//! A token is [`TOKEN_PREFIX`] followed by [`TOKEN_RANDOM_LEN`] characters
//! drawn uniformly from the 62 ASCII letters and digits by the OS RNG
//! (about 238 bits). Only its SHA-256 [`digest`] is ever stored. A token is
//! valid only when presented by its agent, for its service, before its
//! expiry and while not revoked ([`check`]).
use std::ops::Range;

use rand::{distributions::Alphanumeric, rngs::OsRng, Rng};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Every token starts with this.
pub const TOKEN_PREFIX: &str = "slt_";
/// The fewest base62 characters after [`TOKEN_PREFIX`] that [`find`] accepts.
pub const TOKEN_MIN_RANDOM: usize = 32;
/// How many base62 characters [`generate`] puts after the prefix.
pub const TOKEN_RANDOM_LEN: usize = 40;
/// Every token id starts with this.
pub const TOKEN_ID_PREFIX: &str = "tok_";

/// `n` random base62 characters from the OS RNG, appended to `out`.
fn push_base62(out: &mut String, n: usize) {
    out.extend(OsRng.sample_iter(&Alphanumeric).take(n).map(char::from));
}

/// A fresh token: `slt_` + 40 random base62 characters. The buffer is wiped
/// when dropped.
pub fn generate() -> Zeroizing<String> {
    // Sized up front so the buffer never reallocates and leaves a copy behind.
    let mut token = Zeroizing::new(String::with_capacity(TOKEN_PREFIX.len() + TOKEN_RANDOM_LEN));
    token.push_str(TOKEN_PREFIX);
    push_base62(&mut token, TOKEN_RANDOM_LEN);
    token
}

/// A fresh public token id, `tok_` + 12 random base62 characters. Ids name
/// tokens in `token list`, `token revoke` and session records; they grant
/// nothing.
pub fn generate_id() -> String {
    let mut id = String::from(TOKEN_ID_PREFIX);
    push_base62(&mut id, 12);
    id
}

/// Lowercase hex SHA-256 of `token` (64 characters): the only form stored.
pub fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The byte range of the first well-formed token in `s`: [`TOKEN_PREFIX`]
/// followed by at least [`TOKEN_MIN_RANDOM`] ASCII letters or digits. The
/// token ends at the first character that is not one. Used by the HTTP proxy
/// to find tokens in header values and query strings.
pub fn find(s: &str) -> Option<Range<usize>> {
    let mut from = 0;
    while let Some(offset) = s[from..].find(TOKEN_PREFIX) {
        let start = from + offset;
        let body = start + TOKEN_PREFIX.len();
        let len = s.as_bytes()[body..]
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric())
            .count();
        if len >= TOKEN_MIN_RANDOM {
            return Some(start..body + len);
        }
        from = body;
    }
    None
}

/// What is stored about a token (never the token itself). Times are unix
/// seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public id, `tok_` + 12 base62 characters.
    pub id: String,
    /// The agent (config `[[agent]] name`) that may present it.
    pub agent: String,
    /// The service (config `[[service]] name`) it may be presented for.
    pub service: String,
    /// Issue time, unix seconds.
    pub created: i64,
    /// Expiry, unix seconds; the token is invalid from this second on.
    pub expires: i64,
    /// Set by `sluice token revoke`.
    pub revoked: bool,
}

/// A token's standing at a given time, as `token list` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    Active,
    Expired,
    Revoked,
}

impl TokenState {
    /// `active`, `expired` or `revoked`.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenState::Active => "active",
            TokenState::Expired => "expired",
            TokenState::Revoked => "revoked",
        }
    }
}

impl TokenRecord {
    /// Revoked wins over expired; otherwise expired once `now_unix >= expires`.
    pub fn state(&self, now_unix: i64) -> TokenState {
        if self.revoked {
            TokenState::Revoked
        } else if now_unix >= self.expires {
            TokenState::Expired
        } else {
            TokenState::Active
        }
    }
}

/// Why a presented token was refused. Messages never contain the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("unknown token: not issued by this gateway, or expired long ago")]
    Unknown,
    #[error("token expired; issue a new one with `sluice token issue`")]
    Expired,
    #[error("token was revoked")]
    Revoked,
    #[error("token belongs to agent {expected:?} but was presented by agent {presented_by:?}")]
    WrongAgent {
        expected: String,
        presented_by: String,
    },
    #[error("token is for service {expected:?} but was presented for service {presented_for:?}")]
    WrongService {
        expected: String,
        presented_for: String,
    },
}

/// Checks a looked-up token record against who presented it (`agent`), for
/// what (`service`) and when (`now_unix`, unix seconds).
///
/// # Errors
/// The first failing condition, in this order: [`Rejection::Unknown`] (no
/// record), [`Rejection::Revoked`], [`Rejection::Expired`],
/// [`Rejection::WrongAgent`], [`Rejection::WrongService`].
pub fn check(
    record: Option<TokenRecord>,
    agent: &str,
    service: &str,
    now_unix: i64,
) -> Result<TokenRecord, Rejection> {
    let record = record.ok_or(Rejection::Unknown)?;
    match record.state(now_unix) {
        TokenState::Revoked => return Err(Rejection::Revoked),
        TokenState::Expired => return Err(Rejection::Expired),
        TokenState::Active => {}
    }
    if record.agent != agent {
        return Err(Rejection::WrongAgent {
            expected: record.agent,
            presented_by: agent.to_string(),
        });
    }
    if record.service != service {
        return Err(Rejection::WrongService {
            expected: record.service,
            presented_for: service.to_string(),
        });
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> TokenRecord {
        TokenRecord {
            id: "tok_abcdefghijkl".into(),
            agent: "ci-bot".into(),
            service: "billing-db".into(),
            created: 1_000,
            expires: 2_000,
            revoked: false,
        }
    }

    #[test]
    fn generated_tokens_are_prefixed_base62_and_distinct() {
        let a = generate();
        let b = generate();
        assert_ne!(*a, *b);
        assert_eq!(a.len(), TOKEN_PREFIX.len() + TOKEN_RANDOM_LEN);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert!(a[TOKEN_PREFIX.len()..]
            .bytes()
            .all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(find(&a), Some(0..a.len()));
    }

    #[test]
    fn ids_are_short_and_not_tokens() {
        let id = generate_id();
        assert!(id.starts_with(TOKEN_ID_PREFIX));
        assert_eq!(id.len(), 16);
        assert_eq!(find(&id), None);
    }

    #[test]
    fn digest_is_lowercase_hex_sha256() {
        assert_eq!(
            digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn find_locates_token_in_header_and_query() {
        let tok = format!("slt_{}", "a1B2".repeat(8));
        let header = format!("Bearer {tok}");
        assert_eq!(find(&header), Some(7..7 + tok.len()));
        let query = format!("/v1/x?api_key={tok}&page=2");
        let r = find(&query).unwrap();
        assert_eq!(&query[r], tok);
    }

    #[test]
    fn find_skips_short_candidates_and_returns_the_first_good_one() {
        let good = format!("slt_{}", "Z".repeat(40));
        let s = format!("slt_short slt_ {good} slt_{}", "y".repeat(33));
        assert_eq!(&s[find(&s).unwrap()], good);
        assert_eq!(find(&format!("slt_{}", "x".repeat(31))), None);
        assert_eq!(find(&format!("slt_{}", "x".repeat(32))), Some(0..36));
        assert_eq!(find(""), None);
    }

    #[test]
    fn find_stops_at_non_base62_including_multibyte() {
        let s = format!("slt_{}é-rest", "q".repeat(35));
        assert_eq!(find(&s), Some(0..39));
    }

    #[test]
    fn valid_token_passes() {
        assert_eq!(
            check(Some(record()), "ci-bot", "billing-db", 1_999),
            Ok(record())
        );
    }

    #[test]
    fn unknown_expired_and_revoked_are_refused() {
        assert_eq!(
            check(None, "ci-bot", "billing-db", 1_500),
            Err(Rejection::Unknown)
        );
        assert_eq!(
            check(Some(record()), "ci-bot", "billing-db", 2_000),
            Err(Rejection::Expired)
        );
        let revoked = TokenRecord {
            revoked: true,
            ..record()
        };
        assert_eq!(
            check(Some(revoked.clone()), "ci-bot", "billing-db", 1_500),
            Err(Rejection::Revoked)
        );
        assert_eq!(revoked.state(5_000), TokenState::Revoked);
    }

    #[test]
    fn token_of_another_agent_or_service_is_refused_with_both_names() {
        let e = check(Some(record()), "intruder", "billing-db", 1_500).unwrap_err();
        assert_eq!(
            e.to_string(),
            "token belongs to agent \"ci-bot\" but was presented by agent \"intruder\""
        );
        let e = check(Some(record()), "ci-bot", "payments-api", 1_500).unwrap_err();
        assert!(matches!(e, Rejection::WrongService { .. }));
        assert!(e.to_string().contains("payments-api"));
    }

    #[test]
    fn record_round_trips_through_json() {
        let json = serde_json::to_string(&record()).unwrap();
        assert_eq!(
            serde_json::from_str::<TokenRecord>(&json).unwrap(),
            record()
        );
    }
}
