//! Identity from OIDC workload tokens (DESIGN.md §7): a JWT presented
//! where a Sluice token goes is checked against its issuer's keys and
//! claims, and becomes a [`Caller`] (subject and groups) for the guard.
//!
//! Checks, in order: the header's `alg` is RS256, ES256 or EdDSA (never
//! `none` or an HMAC, so a public key can never be used as an HMAC secret;
//! RFC 8725 §2.1, §3.1); the `kid` is in the issuer's JWKS ([`keys`]); the
//! signature verifies with that key (jsonwebtoken, on ring), whose type and
//! `alg` must fit the header's; `iss` and `aud` are the configured ones,
//! `exp` and `nbf` hold within the issuer's `leeway`, and `sub` is present
//! (RFC 7519 §4.1). Which agent may present which subject, the service's
//! `groups` and revocation are the guard's part
//! ([`crate::guard::Session::authenticate`]).
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde_json::Value;

use crate::config::oidc::Issuer;

pub mod fetch;
mod keys;

pub use keys::IssuerKeys;

/// The signature algorithms accepted.
pub const ALGORITHMS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

/// Why a JWT was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The token is not valid (bad signature, algorithm, claims, unknown
    /// key…): HTTP 401, SQLSTATE `28P01`.
    #[error("{0}")]
    Invalid(String),
    /// The issuer's keys cannot be had (never fetched, issuer unreachable):
    /// fail closed, HTTP 503, SQLSTATE `08006`.
    #[error("{0}")]
    Unavailable(String),
}

/// Who a valid JWT says the caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The `[[oidc]]` entry's name.
    pub issuer: String,
    /// `sub`.
    pub subject: String,
    /// The issuer's `groups_claim` (a string array, or one string).
    pub groups: Vec<String>,
    /// `jti`, when the token has one.
    pub jti: Option<String>,
    /// `iat` (Unix seconds), when the token has one.
    pub issued_at: Option<i64>,
    /// `exp` (Unix seconds).
    pub expires: i64,
}

/// Whether `token` has the shape of a JWS compact serialization (three
/// base64url parts; RFC 7515 §7.1) rather than of a Sluice token.
pub fn looks_like_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3
        && parts[..2].iter().all(|p| !p.is_empty())
        && parts.iter().all(|p| {
            p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The byte range of the first JWT in `s`, a header value, Basic auth's
/// `user:password` or a query value: a word (between spaces, commas or
/// colons) that starts like a JSON header (`eyJ`) and [`looks_like_jwt`].
pub fn find_jwt(s: &str) -> Option<std::ops::Range<usize>> {
    let mut start = 0;
    for word in s.split([' ', ':', ',']) {
        if word.starts_with("eyJ") && looks_like_jwt(word) {
            return Some(start..start + word.len());
        }
        start += word.len() + 1;
    }
    None
}

/// The key caches of every configured issuer, kept across config reloads
/// while an issuer's entry is unchanged.
#[derive(Default)]
pub struct Identity {
    issuers: Mutex<HashMap<String, Arc<IssuerKeys>>>,
}

impl Identity {
    /// Checks `token` as a JWT of `issuer`.
    ///
    /// # Errors
    /// [`IdentityError`]; messages name what failed, never the token.
    pub async fn verify(&self, issuer: &Issuer, token: &str) -> Result<Caller, IdentityError> {
        let invalid =
            |what: &str, e: &dyn std::fmt::Display| IdentityError::Invalid(format!("{what}: {e}"));
        let header = decode_header(token).map_err(|e| invalid("unreadable JWT header", &e))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(IdentityError::Invalid(format!(
                "alg {:?} is not accepted (RS256, ES256 or EdDSA only)",
                header.alg
            )));
        }
        let jwk = self.keys(issuer).key(header.kid.as_deref()).await?;
        if jwk
            .common
            .key_algorithm
            .is_some_and(|a| a.to_string() != format!("{:?}", header.alg))
        {
            return Err(IdentityError::Invalid(
                "the key's alg is not the token's".into(),
            ));
        }
        let key = DecodingKey::from_jwk(&jwk).map_err(|e| invalid("unusable JWK", &e))?;
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.leeway = issuer.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[issuer.issuer.as_str()]);
        validation.set_audience(&[issuer.audience.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let claims = decode::<Value>(token, &key, &validation)
            .map_err(|e| invalid("JWT refused", &e))?
            .claims;
        caller(issuer, &claims)
    }

    /// The cache for `issuer`, new when its entry changed.
    pub fn keys(&self, issuer: &Issuer) -> Arc<IssuerKeys> {
        let mut issuers = self.issuers.lock().unwrap();
        match issuers.get(&issuer.name) {
            Some(k) if k.issuer == *issuer => k.clone(),
            _ => {
                let k = Arc::new(IssuerKeys::new(issuer.clone()));
                issuers.insert(issuer.name.clone(), k.clone());
                k
            }
        }
    }
}

fn caller(issuer: &Issuer, claims: &Value) -> Result<Caller, IdentityError> {
    let subject = claims["sub"]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| IdentityError::Invalid("sub is not a string".into()))?;
    let groups = match &claims[issuer.groups_claim.as_str()] {
        Value::Array(items) => items
            .iter()
            .filter_map(|g| g.as_str())
            .map(String::from)
            .collect(),
        Value::String(g) => vec![g.clone()],
        _ => Vec::new(),
    };
    Ok(Caller {
        issuer: issuer.name.clone(),
        subject: subject.to_string(),
        groups,
        jti: claims["jti"].as_str().map(String::from),
        issued_at: claims["iat"].as_i64(),
        expires: claims["exp"].as_i64().unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_shape_is_told_from_sluice_tokens() {
        assert!(looks_like_jwt("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln"));
        assert!(looks_like_jwt("eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0."));
        assert!(!looks_like_jwt("slt_0123456789abcdefghijABCDEFGHIJ0123"));
        assert!(!looks_like_jwt("a.b.c.d"));
        assert!(!looks_like_jwt("a b.c.d"));
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln";
        for text in [
            format!("Bearer {jwt}"),
            format!("ci:{jwt}"),
            jwt.to_string(),
        ] {
            assert_eq!(&text[find_jwt(&text).unwrap()], jwt);
        }
        assert_eq!(find_jwt("Bearer abc.def.ghi"), None);
    }
}
