//! The verifiers MySQL logins are checked against (DESIGN.md §6 "MySQL /
//! MariaDB"): stored when a token is issued ([`enrol`]), under the
//! `mysql` scheme of the login verifier store ([`crate::state`]), one
//! text per token holding both plugins' verifiers
//! (`sluice_mysql::auth::verifier::Verifier`): `mysql_native_password`'s
//! `SHA1(SHA1(token))` and `caching_sha2_password`'s fast-path
//! `SHA256(SHA256(token))`, hex, joined by `.`. Neither gives the token
//! back.
use sluice_mysql::auth::verifier::{Proof, Verifier};

use crate::{
    state::{State, StateError},
    tokens::{self, TokenRecord},
};

/// The scheme name in the verifier store.
pub const SCHEME: &str = "mysql";

/// Stores the verifiers of a newly issued `token` (of `record`'s agent
/// and service), so that the agent can log in with it as the password.
///
/// # Errors
/// [`StateError`] when Redis fails.
pub async fn enrol(state: &State, record: &TokenRecord, token: &str) -> Result<(), StateError> {
    let verifier = to_text(&Verifier::from_token(token.as_bytes()));
    state
        .add_verifier(
            SCHEME,
            &record.agent,
            &record.service,
            &tokens::digest(token),
            &verifier,
            record.expires,
        )
        .await
}

fn to_text(v: &Verifier) -> String {
    format!("{}.{}", hex::encode(v.native), hex::encode(v.caching_sha2))
}

fn from_text(text: &str) -> Option<Verifier> {
    let (native, sha2) = text.split_once('.')?;
    Some(Verifier {
        native: hex::decode(native).ok()?.try_into().ok()?,
        caching_sha2: hex::decode(sha2).ok()?.try_into().ok()?,
    })
}

/// The digest of the token whose stored verifier `proof` matches, among
/// `stored` (token digest, verifier text); `None` when none does.
pub fn find(stored: Vec<(String, String)>, proof: &Proof) -> Option<String> {
    stored.into_iter().find_map(|(digest, text)| {
        from_text(&text)
            .filter(|v| proof.matches(v))
            .map(|_| digest)
    })
}

#[cfg(test)]
mod tests {
    use sluice_mysql::auth::{new_nonce, scramble};

    use super::*;

    #[test]
    fn a_proof_finds_the_token_it_was_made_with() {
        let stored = vec![
            ("d1".to_string(), to_text(&Verifier::from_token(b"slt_one"))),
            ("d2".to_string(), to_text(&Verifier::from_token(b"slt_two"))),
            ("bad".to_string(), "not hex".to_string()),
        ];
        let nonce = new_nonce().to_vec();
        let proof = Proof::CachingSha2 {
            response: scramble::caching_sha2(b"slt_two", &nonce),
            nonce: nonce.clone(),
        };
        assert_eq!(find(stored.clone(), &proof), Some("d2".into()));
        let proof = Proof::Native {
            response: scramble::native_password(b"slt_one", &nonce),
            nonce,
        };
        assert_eq!(find(stored.clone(), &proof), Some("d1".into()));
        assert_eq!(find(stored, &Proof::Absent), None);
    }
}
