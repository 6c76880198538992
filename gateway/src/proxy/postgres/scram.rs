//! The server side of SCRAM-SHA-256 (RFC 5802 §3 and §5, RFC 7677),
//! authenticating an agent whose password is its Sluice token.
//!
//! PostgreSQL's SASL exchange (protocol §55.3.1) carries the messages.
//! Sluice never stores tokens, only per-token SCRAM verifiers
//! (`StoredKey`, `ServerKey`) under a salt shared by one agent and service.
//! Because the salt is shared, one server-first-message serves every token
//! of that pair, and the client proof is checked against each verifier —
//! a few HMACs each, no key stretching on the server.
//!
//! Channel binding is not offered (`SCRAM-SHA-256` only, no `-PLUS`).
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// PBKDF2 iteration count clients run (PostgreSQL's default).
pub const ITERATIONS: u32 = 4096;

/// The login-verifier scheme (see [`crate::state`]'s verifier store) under
/// which SCRAM salts and verifiers are kept.
pub const SCHEME: &str = "scram";

/// A token's SCRAM verifier (RFC 5802 §3): `StoredKey = H(ClientKey)`,
/// `ServerKey = HMAC(SaltedPassword, "Server Key")`, 32 bytes each.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl Verifier {
    /// The stored form: `<StoredKey hex>:<ServerKey hex>`.
    pub fn to_text(&self) -> String {
        format!(
            "{}:{}",
            hex::encode(self.stored_key),
            hex::encode(self.server_key)
        )
    }

    /// Reads [`Verifier::to_text`]'s form; `None` when damaged.
    pub fn from_text(text: &str) -> Option<Self> {
        let (stored, server) = text.split_once(':')?;
        Some(Verifier {
            stored_key: hex::decode(stored).ok()?.try_into().ok()?,
            server_key: hex::decode(server).ok()?.try_into().ok()?,
        })
    }
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier([redacted])")
    }
}

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

/// Derives the verifier of `password` under `salt` (`Hi()` is PBKDF2 with
/// HMAC-SHA-256, RFC 5802 §2.2).
pub fn verifier(password: &[u8], salt: &[u8]) -> Verifier {
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, ITERATIONS, &mut salted);
    let client_key = hmac(&salted, b"Client Key");
    let v = Verifier {
        stored_key: Sha256::digest(client_key).into(),
        server_key: hmac(&salted, b"Server Key"),
    };
    zeroize::Zeroize::zeroize(&mut salted);
    v
}

/// SCRAM exchange errors (all end in SQLSTATE 28P01 or 08P01).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("channel binding is not supported; use sslmode without channel_binding=require")]
    ChannelBinding,
    #[error("SCRAM nonce mismatch")]
    Nonce,
}

/// The server's state between its first message and the client's final one.
pub struct ServerFirst {
    client_first_bare: String,
    server_first: String,
    nonce: String,
    gs2_header: String,
}

impl ServerFirst {
    /// Parses the client-first-message and builds the server-first-message
    /// (`r=…,s=…,i=…`) for `salt`.
    ///
    /// # Errors
    /// [`ScramError`] for a malformed message or a channel-binding request.
    pub fn new(client_first: &[u8], salt: &[u8]) -> Result<Self, ScramError> {
        let text =
            std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        // gs2-header: cbind-flag "," [authzid] ","
        let mut parts = text.splitn(3, ',');
        let flag = parts.next().ok_or(ScramError::Malformed("gs2 header"))?;
        let authzid = parts.next().ok_or(ScramError::Malformed("gs2 header"))?;
        let bare = parts
            .next()
            .ok_or(ScramError::Malformed("client-first-bare"))?;
        match flag {
            "n" | "y" => {}
            f if f.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed("cbind flag")),
        }
        let client_nonce = bare
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b','))
            .ok_or(ScramError::Malformed("client nonce"))?;
        let mut server_part = [0u8; 18];
        rand::rngs::OsRng.fill_bytes(&mut server_part);
        let nonce = format!("{client_nonce}{}", B64.encode(server_part));
        let server_first = format!("r={nonce},s={},i={ITERATIONS}", B64.encode(salt));
        Ok(Self {
            client_first_bare: bare.to_string(),
            server_first,
            nonce,
            gs2_header: format!("{flag},{authzid},"),
        })
    }

    /// The server-first-message to send in `AuthenticationSASLContinue`.
    pub fn message(&self) -> &[u8] {
        self.server_first.as_bytes()
    }

    /// Checks the client-final-message against `candidates`. Returns the
    /// index of the verifier whose proof matched and the server-final-message
    /// (`v=…`), or `None` when no candidate matched.
    ///
    /// # Errors
    /// [`ScramError`] for a malformed message or a wrong nonce or binding.
    pub fn verify(
        &self,
        client_final: &[u8],
        candidates: &[Verifier],
    ) -> Result<Option<(usize, String)>, ScramError> {
        let text =
            std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof_b64) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("proof"))?;
        let mut binding = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            if let Some(c) = attr.strip_prefix("c=") {
                binding = Some(c);
            } else if let Some(r) = attr.strip_prefix("r=") {
                nonce = Some(r);
            }
        }
        let binding = B64
            .decode(binding.ok_or(ScramError::Malformed("channel binding"))?)
            .map_err(|_| ScramError::Malformed("channel binding"))?;
        if binding != self.gs2_header.as_bytes() {
            return Err(ScramError::ChannelBinding);
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err(ScramError::Nonce);
        }
        let proof = B64
            .decode(proof_b64)
            .map_err(|_| ScramError::Malformed("proof"))?;
        if proof.len() != 32 {
            return Err(ScramError::Malformed("proof length"));
        }
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        for (i, v) in candidates.iter().enumerate() {
            let signature = hmac(&v.stored_key, auth_message.as_bytes());
            let mut client_key = [0u8; 32];
            for (k, (p, s)) in client_key
                .iter_mut()
                .zip(proof.iter().zip(signature.iter()))
            {
                *k = p ^ s;
            }
            let stored: [u8; 32] = Sha256::digest(client_key).into();
            if bool::from(stored.ct_eq(&v.stored_key)) {
                let server_signature = hmac(&v.server_key, auth_message.as_bytes());
                return Ok(Some((i, format!("v={}", B64.encode(server_signature)))));
            }
        }
        Ok(None)
    }
}

/// A fresh random salt for an (agent, service) pair.
pub fn new_salt() -> [u8; 16] {
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    salt
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    /// Runs postgres-protocol's client against our server.
    fn exchange(client_password: &[u8], verifiers: &[Verifier], salt: &[u8]) -> Option<usize> {
        let mut client = ScramSha256::new(client_password, ChannelBinding::unsupported());
        let first = ServerFirst::new(client.message(), salt).unwrap();
        client.update(first.message()).unwrap();
        let result = first.verify(client.message(), verifiers).unwrap();
        if let Some((_, server_final)) = &result {
            client
                .finish(server_final.as_bytes())
                .expect("client accepts the server signature");
        }
        result.map(|(i, _)| i)
    }

    #[test]
    fn the_right_token_among_several_is_found() {
        let salt = new_salt();
        let vs = [verifier(b"slt_one", &salt), verifier(b"slt_two", &salt)];
        assert_eq!(exchange(b"slt_two", &vs, &salt), Some(1));
        assert_eq!(exchange(b"slt_one", &vs, &salt), Some(0));
        assert_eq!(exchange(b"slt_three", &vs, &salt), None);
        assert_eq!(exchange(b"slt_one", &[], &salt), None);
    }

    #[test]
    fn channel_binding_requests_are_refused() {
        assert_eq!(
            ServerFirst::new(b"p=tls-server-end-point,,n=,r=abc", b"salt").err(),
            Some(ScramError::ChannelBinding)
        );
    }
}
