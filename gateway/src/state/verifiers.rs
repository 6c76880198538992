//! Login verifiers in Redis, for protocols whose clients prove they hold a
//! token by challenge–response instead of sending it (PostgreSQL's
//! SCRAM-SHA-256 today). Each `scheme` has one salt per (agent, service)
//! and one verifier per token; like the token digest, a verifier cannot be
//! turned back into the token. The handler of the scheme computes and
//! reads its verifiers; this module only stores them.
//!
//! Keys: `sluice:<scheme>_salt:<agent>:<service>` → 16 bytes, hex;
//! `sluice:<scheme>:<agent>:<service>` → hash of token digest →
//! `<verifier>:<expires unix s>:<mac>`, the verifier being the scheme's
//! text and the MAC (see [`super::mac`]) binding it to its scheme, agent,
//! service and digest, so a verifier planted for a password of someone's
//! choosing is ignored.
use rand::RngCore;
use redis::AsyncCommands;

use super::{State, StateError};

fn salt_key(scheme: &str, agent: &str, service: &str) -> String {
    format!("sluice:{scheme}_salt:{agent}:{service}")
}

fn verifiers_key(scheme: &str, agent: &str, service: &str) -> String {
    format!("sluice:{scheme}:{agent}:{service}")
}

impl State {
    /// The `scheme` salt of (`agent`, `service`), 16 random bytes created on
    /// first use.
    ///
    /// # Errors
    /// [`StateError::Command`] when Redis fails, [`StateError::Malformed`]
    /// when the stored salt is not hex.
    pub async fn login_salt(
        &self,
        scheme: &str,
        agent: &str,
        service: &str,
    ) -> Result<Vec<u8>, StateError> {
        let key = salt_key(scheme, agent, service);
        let mut conn = self.conn();
        let mut fresh = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut fresh);
        let _: bool = conn
            .set_nx(&key, hex::encode(fresh))
            .await
            .map_err(StateError::command("login salt"))?;
        let stored: String = conn
            .get(&key)
            .await
            .map_err(StateError::command("login salt"))?;
        hex::decode(&stored).map_err(|_| StateError::Malformed {
            key,
            what: "salt".into(),
        })
    }

    /// Stores the `scheme` verifier (the scheme's text) of the token with
    /// `digest` until `expires` (unix s).
    ///
    /// # Errors
    /// [`StateError::Command`] when Redis fails, [`StateError::Keys`]
    /// without the token key.
    pub async fn add_verifier(
        &self,
        scheme: &str,
        agent: &str,
        service: &str,
        digest: &str,
        verifier: &str,
        expires: i64,
    ) -> Result<(), StateError> {
        let entry = format!("{verifier}:{expires}");
        let mac = self
            .keys
            .verifier_mac(scheme, agent, service, digest, &entry)?;
        let _: () = self
            .conn()
            .hset(
                verifiers_key(scheme, agent, service),
                digest,
                format!("{entry}:{mac}"),
            )
            .await
            .map_err(StateError::command("login verifier"))?;
        Ok(())
    }

    /// The `scheme` verifiers of the unexpired tokens of (`agent`,
    /// `service`), as (token digest, verifier text); expired entries and
    /// entries failing their MAC are pruned.
    ///
    /// # Errors
    /// [`StateError::Command`] when Redis fails, [`StateError::Keys`]
    /// without the token key.
    pub async fn verifiers(
        &self,
        scheme: &str,
        agent: &str,
        service: &str,
    ) -> Result<Vec<(String, String)>, StateError> {
        let key = verifiers_key(scheme, agent, service);
        let mut conn = self.conn();
        let all: std::collections::HashMap<String, String> = conn
            .hgetall(&key)
            .await
            .map_err(StateError::command("login verifiers"))?;
        let now = chrono::Utc::now().timestamp();
        let mut out = Vec::new();
        let mut stale = Vec::new();
        for (digest, value) in all {
            let Some((entry, mac)) = value.rsplit_once(':') else {
                stale.push(digest);
                continue;
            };
            let want = self
                .keys
                .verifier_mac(scheme, agent, service, &digest, entry)?;
            if !super::mac::matches(&want, Some(mac)) {
                tracing::warn!(
                    key,
                    field = digest,
                    "login verifier failed its integrity check; ignored"
                );
                stale.push(digest);
                continue;
            }
            let live = entry
                .rsplit_once(':')
                .and_then(|(v, expires)| Some((v, expires.parse::<i64>().ok()?)))
                .filter(|(_, expires)| *expires > now);
            match live {
                Some((verifier, _)) => out.push((digest, verifier.to_string())),
                None => stale.push(digest),
            }
        }
        if !stale.is_empty() {
            let _: Result<(), _> = conn.hdel(&key, stale).await;
        }
        Ok(out)
    }
}
