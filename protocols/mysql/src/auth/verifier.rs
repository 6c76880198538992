//! What Sluice stores of a token for MySQL logins, and how an agent's
//! answer is checked against it. Only verifiers are kept, never the token:
//!
//! - `mysql_native_password`: `SHA1(SHA1(token))`, what MySQL stores in
//!   `mysql.user` (MySQL Internals, "Native Authentication");
//! - `caching_sha2_password`: `SHA256(SHA256(token))`, the fast-path cache
//!   entry of MySQL's server (MySQL Internals, "Caching_sha2
//!   authentication").
//!
//! A challenge-response answer is undone with the verifier: the mask is
//! recomputed from the verifier and the nonce, XOR gives back
//! `SHA1(token)` (or `SHA256(token)`), whose hash must equal the verifier.
use sha1::{Digest, Sha1};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::scramble::xor;

/// The stored verifiers of one token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    /// `SHA1(SHA1(token))`.
    pub native: [u8; 20],
    /// `SHA256(SHA256(token))`.
    pub caching_sha2: [u8; 32],
}

impl Verifier {
    /// The verifiers of `token` (computed once, when the token is issued).
    pub fn from_token(token: &[u8]) -> Verifier {
        Verifier {
            native: Sha1::digest(Sha1::digest(token)).into(),
            caching_sha2: Sha256::digest(Sha256::digest(token)).into(),
        }
    }
}

/// What an agent presented, ready to be checked against verifiers. Its
/// `Debug` form never shows a cleartext token.
#[derive(Clone, PartialEq, Eq)]
pub enum Proof {
    /// A `mysql_native_password` answer to `nonce`.
    Native { nonce: Vec<u8>, response: Vec<u8> },
    /// A `caching_sha2_password` fast-path answer to `nonce`.
    CachingSha2 { nonce: Vec<u8>, response: Vec<u8> },
    /// The token itself (`caching_sha2_password` full authentication, only
    /// ever accepted over TLS).
    Cleartext(Zeroizing<Vec<u8>>),
    /// No password at all.
    Absent,
}

impl Proof {
    /// Whether the proof was made with the token `verifier` belongs to,
    /// in constant time for equal lengths.
    pub fn matches(&self, verifier: &Verifier) -> bool {
        match self {
            Proof::Native { nonce, response } => {
                let mask = Sha1::new()
                    .chain_update(nonce)
                    .chain_update(verifier.native)
                    .finalize();
                let stage1 = Zeroizing::new(xor(response, &mask));
                response.len() == 20 && bool::from(Sha1::digest(&*stage1).ct_eq(&verifier.native))
            }
            Proof::CachingSha2 { nonce, response } => {
                let mask = Sha256::new()
                    .chain_update(verifier.caching_sha2)
                    .chain_update(nonce)
                    .finalize();
                let stage1 = Zeroizing::new(xor(response, &mask));
                response.len() == 32
                    && bool::from(Sha256::digest(&*stage1).ct_eq(&verifier.caching_sha2))
            }
            Proof::Cleartext(token) => bool::from(
                Verifier::from_token(token)
                    .caching_sha2
                    .ct_eq(&verifier.caching_sha2),
            ),
            Proof::Absent => false,
        }
    }
}

impl std::fmt::Debug for Proof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Proof::Native { .. } => f.write_str("Proof::Native"),
            Proof::CachingSha2 { .. } => f.write_str("Proof::CachingSha2"),
            Proof::Cleartext(_) => f.write_str("Proof::Cleartext(<redacted>)"),
            Proof::Absent => f.write_str("Proof::Absent"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{new_nonce, scramble};

    #[test]
    fn native_verifier_is_mysql_password_hash() {
        // MySQL's PASSWORD('secret') is '*' + hex(SHA1(SHA1('secret'))).
        let v = Verifier::from_token(b"secret");
        let hex: String = v.native.iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(hex, "14E65567ABDB5135D0CFD9A70B3032C179A49EE7");
    }

    #[test]
    fn client_answers_match_their_token_only() {
        let v = Verifier::from_token(b"sluice_tok_1");
        let other = Verifier::from_token(b"sluice_tok_2");
        let nonce = new_nonce().to_vec();
        let native = Proof::Native {
            nonce: nonce.clone(),
            response: scramble::native_password(b"sluice_tok_1", &nonce),
        };
        let sha2 = Proof::CachingSha2 {
            nonce: nonce.clone(),
            response: scramble::caching_sha2(b"sluice_tok_1", &nonce),
        };
        let clear = Proof::Cleartext(Zeroizing::new(b"sluice_tok_1".to_vec()));
        for p in [&native, &sha2, &clear] {
            assert!(p.matches(&v), "{p:?}");
            assert!(!p.matches(&other), "{p:?}");
        }
        let stale = Proof::Native {
            nonce: new_nonce().to_vec(),
            response: scramble::native_password(b"sluice_tok_1", &nonce),
        };
        assert!(!stale.matches(&v));
        assert!(!Proof::Absent.matches(&v));
        let short = Proof::CachingSha2 {
            nonce,
            response: vec![1, 2, 3],
        };
        assert!(!short.matches(&v));
    }
}
