//! PostgreSQL login material in Redis: one SCRAM salt per (agent, service)
//! and one SCRAM-SHA-256 verifier per token (see
//! [`crate::proxy::postgres::scram`]). Like the token digest, a verifier
//! cannot be turned back into the token.
//!
//! Keys: `sluice:scram_salt:<agent>:<service>` → 16 bytes, hex;
//! `sluice:scram:<agent>:<service>` → hash of token digest →
//! `<StoredKey hex>:<ServerKey hex>:<expires unix s>:<mac>`, the MAC (see
//! [`super::mac`]) binding it to its agent, service and digest, so a
//! verifier planted for a password of someone's choosing is ignored.
use redis::AsyncCommands;

use super::{State, StateError};
use crate::proxy::postgres::scram::{self, Verifier};

fn salt_key(agent: &str, service: &str) -> String {
    format!("sluice:scram_salt:{agent}:{service}")
}

fn verifiers_key(agent: &str, service: &str) -> String {
    format!("sluice:scram:{agent}:{service}")
}

impl State {
    /// The SCRAM salt of (`agent`, `service`), created on first use.
    ///
    /// # Errors
    /// [`StateError::Command`] when Redis fails.
    pub async fn scram_salt(&self, agent: &str, service: &str) -> Result<Vec<u8>, StateError> {
        let key = salt_key(agent, service);
        let mut conn = self.conn();
        let fresh = hex::encode(scram::new_salt());
        let _: bool = conn
            .set_nx(&key, &fresh)
            .await
            .map_err(StateError::command("scram salt"))?;
        let stored: String = conn
            .get(&key)
            .await
            .map_err(StateError::command("scram salt"))?;
        hex::decode(&stored).map_err(|_| StateError::Malformed {
            key,
            what: "salt".into(),
        })
    }

    /// Stores the verifier of a token (by digest) until `expires` (unix s).
    ///
    /// # Errors
    /// [`StateError::Command`] when Redis fails.
    pub(crate) async fn add_scram_verifier(
        &self,
        agent: &str,
        service: &str,
        digest: &str,
        v: &Verifier,
        expires: i64,
    ) -> Result<(), StateError> {
        let entry = format!(
            "{}:{}:{expires}",
            hex::encode(v.stored_key),
            hex::encode(v.server_key)
        );
        let mac = self.keys.verifier_mac(agent, service, digest, &entry)?;
        let value = format!("{entry}:{mac}");
        let _: () = self
            .conn()
            .hset(verifiers_key(agent, service), digest, value)
            .await
            .map_err(StateError::command("scram verifier"))?;
        Ok(())
    }

    /// Verifiers of the unexpired tokens of (`agent`, `service`) with their
    /// digests; expired entries are pruned.
    ///
    /// # Errors
    /// [`StateError::Command`] when Redis fails, [`StateError::Keys`]
    /// without the token key.
    pub async fn scram_verifiers(
        &self,
        agent: &str,
        service: &str,
    ) -> Result<Vec<(String, Verifier)>, StateError> {
        let key = verifiers_key(agent, service);
        let mut conn = self.conn();
        let all: std::collections::HashMap<String, String> = conn
            .hgetall(&key)
            .await
            .map_err(StateError::command("scram verifiers"))?;
        let now = chrono::Utc::now().timestamp();
        let mut out = Vec::new();
        let mut stale = Vec::new();
        for (digest, value) in all {
            let Some((entry, mac)) = value.rsplit_once(':') else {
                stale.push(digest);
                continue;
            };
            let want = self.keys.verifier_mac(agent, service, &digest, entry)?;
            if !super::mac::matches(&want, Some(mac)) {
                tracing::warn!(
                    key,
                    field = digest,
                    "SCRAM verifier failed its integrity check; ignored"
                );
                stale.push(digest);
                continue;
            }
            match parse(entry) {
                Some((v, expires)) if expires > now => out.push((digest, v)),
                _ => stale.push(digest),
            }
        }
        if !stale.is_empty() {
            let _: Result<(), _> = conn.hdel(&key, stale).await;
        }
        Ok(out)
    }
}

fn parse(value: &str) -> Option<(Verifier, i64)> {
    let mut it = value.split(':');
    let stored = hex::decode(it.next()?).ok()?.try_into().ok()?;
    let server = hex::decode(it.next()?).ok()?.try_into().ok()?;
    let expires = it.next()?.parse().ok()?;
    Some((
        Verifier {
            stored_key: stored,
            server_key: server,
        },
        expires,
    ))
}
