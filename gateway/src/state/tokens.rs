//! Token records in Redis: issue, look up, list and revoke.
//!
//! Only [`crate::tokens::digest`] of a token is stored; see the key layout
//! in [`crate::state`].
use std::{collections::HashMap, time::Duration};

use redis::AsyncCommands;
use zeroize::Zeroizing;

use super::{State, StateError};
use crate::tokens::{self, TokenRecord, TOKEN_PREFIX};

/// How long a token record outlives its expiry in Redis.
pub const EXPIRED_GRACE: Duration = Duration::from_secs(24 * 3600);
/// Pub/sub channel carrying the id of each revoked token.
pub const REVOCATIONS_CHANNEL: &str = "sluice:revocations";
const INDEX_KEY: &str = "sluice:tokens";
/// Hash of token id → `<expires>:<mac>` of each revoked token.
const REVOKED_KEY: &str = "sluice:revoked";

fn token_key(digest: &str) -> String {
    format!("sluice:token:{digest}")
}

fn id_key(id: &str) -> String {
    format!("sluice:tokid:{id}")
}

fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Marks a live token record revoked (with its new MAC), adds its
/// revocation entry and announces its id, in one step so a record that just
/// expired is not recreated. KEYS[1] = token key, KEYS[2] = revocation hash;
/// ARGV = channel, id, MAC read, new MAC, revocation entry. Returns 1 if
/// revoked, 0 if there is no such record, -1 if it changed meanwhile.
const REVOKE_SCRIPT: &str = r"
local mac = redis.call('HGET', KEYS[1], 'mac')
if not mac then return 0 end
if mac ~= ARGV[3] then return -1 end
redis.call('HSET', KEYS[1], 'revoked', '1', 'mac', ARGV[4])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[5])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
";

impl State {
    /// Issues a token for `agent` to use with `service`, valid for `ttl`
    /// (whole seconds, at least 1). Returns the token, which is stored
    /// nowhere, and its record.
    ///
    /// # Errors
    /// [`StateError::Command`] when Redis fails.
    pub async fn issue(
        &self,
        agent: &str,
        service: &str,
        ttl: Duration,
    ) -> Result<(Zeroizing<String>, TokenRecord), StateError> {
        let token = tokens::generate();
        let digest = tokens::digest(&token);
        let created = now_unix();
        let ttl_secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2).max(1);
        let record = TokenRecord {
            id: tokens::generate_id(),
            agent: agent.to_string(),
            service: service.to_string(),
            created,
            expires: created.saturating_add(ttl_secs),
            revoked: false,
        };
        let key_expiry = record
            .expires
            .saturating_add(EXPIRED_GRACE.as_secs() as i64);
        let key = token_key(&digest);
        let mac = self.keys.token_mac(&digest, &record)?;
        redis::pipe()
            .atomic()
            .hset_multiple(
                &key,
                &[
                    ("id", record.id.clone()),
                    ("agent", record.agent.clone()),
                    ("service", record.service.clone()),
                    ("created", record.created.to_string()),
                    ("expires", record.expires.to_string()),
                    ("revoked", "0".to_string()),
                    ("mac", mac),
                ],
            )
            .ignore()
            .cmd("EXPIREAT")
            .arg(&key)
            .arg(key_expiry)
            .ignore()
            .cmd("SET")
            .arg(id_key(&record.id))
            .arg(&digest)
            .arg("EXAT")
            .arg(key_expiry)
            .ignore()
            .zadd(INDEX_KEY, &record.id, record.expires)
            .ignore()
            .exec_async(&mut self.conn())
            .await
            .map_err(StateError::command("token issue"))?;
        Ok((token, record))
    }

    /// The record of `token`, found by its digest; `None` if unknown or
    /// expired more than [`EXPIRED_GRACE`] ago.
    ///
    /// # Errors
    /// [`StateError::Command`] when Redis fails, [`StateError::Malformed`]
    /// when the stored record is damaged.
    pub async fn lookup(&self, token: &str) -> Result<Option<TokenRecord>, StateError> {
        self.lookup_digest(&tokens::digest(token)).await
    }

    /// The record of the token whose [`tokens::digest`] is `digest`,
    /// revoked when a valid revocation entry exists or one was seen. A
    /// record failing its MAC is logged and treated as unknown (`None`).
    ///
    /// # Errors
    /// As [`State::lookup`].
    pub async fn lookup_digest(&self, digest: &str) -> Result<Option<TokenRecord>, StateError> {
        let key = token_key(digest);
        let fields: HashMap<String, String> = self
            .conn()
            .hgetall(&key)
            .await
            .map_err(StateError::command("token lookup"))?;
        let Some(mut record) = self.verified(&key, digest, fields)? else {
            return Ok(None);
        };
        if !record.revoked {
            let entry: Option<String> = self
                .conn()
                .hget(REVOKED_KEY, &record.id)
                .await
                .map_err(StateError::command("token lookup"))?;
            record.revoked = entry.is_some_and(|e| self.revocation_valid(&record.id, &e));
        }
        if record.revoked {
            self.keys.remember_revoked(&record.id, record.expires);
        }
        record.revoked |= self.keys.seen_revoked(&record.id);
        Ok(Some(record))
    }

    /// The record in `fields` (stored under `digest`) if its MAC holds;
    /// `None` when absent or (logged) when the MAC fails.
    fn verified(
        &self,
        key: &str,
        digest: &str,
        mut fields: HashMap<String, String>,
    ) -> Result<Option<TokenRecord>, StateError> {
        let stored = fields.remove("mac");
        let Some(record) = parse_record(key, fields)? else {
            return Ok(None);
        };
        if super::mac::matches(&self.keys.token_mac(digest, &record)?, stored.as_deref()) {
            return Ok(Some(record));
        }
        tracing::warn!(key, "token record failed its integrity check; refused");
        Ok(None)
    }

    /// Whether `entry` (`<expires>:<mac>`) is a valid revocation of `id`.
    fn revocation_valid(&self, id: &str, entry: &str) -> bool {
        let valid = entry.split_once(':').is_some_and(|(expires, mac)| {
            expires.parse().ok().is_some_and(|expires| {
                self.keys
                    .revocation_mac(id, expires)
                    .is_ok_and(|want| super::mac::matches(&want, Some(mac)))
            })
        });
        if !valid {
            tracing::warn!(
                key = REVOKED_KEY,
                field = id,
                "revocation entry failed its integrity check; ignored"
            );
        }
        valid
    }

    /// Reads every revocation entry and remembers the valid ones, so a
    /// later rewrite of the record cannot lift them here; prunes entries of
    /// tokens forgotten [`EXPIRED_GRACE`] after expiry.
    ///
    /// # Errors
    /// [`StateError::Command`] when Redis fails.
    pub async fn remember_revocations(&self) -> Result<(), StateError> {
        let mut conn = self.conn();
        let all: HashMap<String, String> = conn
            .hgetall(REVOKED_KEY)
            .await
            .map_err(StateError::command("revocations"))?;
        let forgotten_before = now_unix().saturating_sub(EXPIRED_GRACE.as_secs() as i64);
        let mut stale = Vec::new();
        for (id, entry) in all {
            let expires = entry
                .split_once(':')
                .and_then(|(e, _)| e.parse::<i64>().ok());
            match expires {
                Some(e) if e < forgotten_before => stale.push(id),
                Some(e) if self.revocation_valid(&id, &entry) => self.keys.remember_revoked(&id, e),
                _ => {}
            }
        }
        if !stale.is_empty() {
            let _: Result<(), _> = conn.hdel(REVOKED_KEY, stale).await;
        }
        Ok(())
    }

    /// All tokens still known (active, revoked, or expired less than
    /// [`EXPIRED_GRACE`] ago), soonest expiry first. Prunes forgotten ids
    /// from the index.
    ///
    /// # Errors
    /// [`StateError::Command`] when Redis fails, [`StateError::Malformed`]
    /// when a stored record is damaged.
    pub async fn list(&self) -> Result<Vec<TokenRecord>, StateError> {
        let mut conn = self.conn();
        let forgotten_before = now_unix().saturating_sub(EXPIRED_GRACE.as_secs() as i64);
        let _: () = conn
            .zrembyscore(INDEX_KEY, "-inf", format!("({forgotten_before}"))
            .await
            .map_err(StateError::command("token list"))?;
        let ids: Vec<String> = conn
            .zrange(INDEX_KEY, 0, -1)
            .await
            .map_err(StateError::command("token list"))?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let id_keys: Vec<String> = ids.iter().map(|id| id_key(id)).collect();
        let digests: Vec<Option<String>> = conn
            .mget(&id_keys)
            .await
            .map_err(StateError::command("token list"))?;
        let mut pipe = redis::pipe();
        let digests: Vec<String> = digests.into_iter().flatten().collect();
        let keys: Vec<String> = digests.iter().map(|d| token_key(d)).collect();
        for key in &keys {
            pipe.hgetall(key);
        }
        let all: Vec<HashMap<String, String>> = pipe
            .query_async(&mut conn)
            .await
            .map_err(StateError::command("token list"))?;
        let mut records = Vec::with_capacity(all.len());
        for ((key, digest), fields) in keys.iter().zip(&digests).zip(all) {
            if let Some(mut r) = self.verified(key, digest, fields)? {
                r.revoked |= self.keys.seen_revoked(&r.id);
                records.push(r);
            }
        }
        Ok(records)
    }

    /// Revokes a token given as the full token or its id, and publishes the
    /// id on [`REVOCATIONS_CHANNEL`]. `Ok(false)` when no such token is
    /// known.
    ///
    /// # Errors
    /// [`StateError::Command`] when Redis fails, [`StateError::Tampered`]
    /// when the record fails its MAC (it is refused anyway) or changed
    /// while being revoked.
    pub async fn revoke(&self, token_or_id: &str) -> Result<bool, StateError> {
        let mut conn = self.conn();
        let is_token = token_or_id.starts_with(TOKEN_PREFIX)
            && tokens::find(token_or_id) == Some(0..token_or_id.len());
        let digest = if is_token {
            tokens::digest(token_or_id)
        } else {
            match conn
                .get::<_, Option<String>>(id_key(token_or_id))
                .await
                .map_err(StateError::command("token revoke"))?
            {
                Some(digest) => digest,
                None => return Ok(false),
            }
        };
        let key = token_key(&digest);
        let fields: HashMap<String, String> = conn
            .hgetall(&key)
            .await
            .map_err(StateError::command("token revoke"))?;
        if fields.is_empty() {
            return Ok(false);
        }
        let read_mac = fields.get("mac").cloned().unwrap_or_default();
        let Some(mut record) = self.verified(&key, &digest, fields)? else {
            return Err(StateError::Tampered { key });
        };
        // `sluice:tokid:<id>` is not signed: it must lead to that id's record.
        if !is_token && record.id != token_or_id {
            return Err(StateError::Tampered {
                key: id_key(token_or_id),
            });
        }
        record.revoked = true;
        let entry = format!(
            "{}:{}",
            record.expires,
            self.keys.revocation_mac(&record.id, record.expires)?
        );
        let revoked: i64 = redis::Script::new(REVOKE_SCRIPT)
            .key(&key)
            .key(REVOKED_KEY)
            .arg(REVOCATIONS_CHANNEL)
            .arg(&record.id)
            .arg(read_mac)
            .arg(self.keys.token_mac(&digest, &record)?)
            .arg(entry)
            .invoke_async(&mut conn)
            .await
            .map_err(StateError::command("token revoke"))?;
        match revoked {
            1 => {
                self.keys.remember_revoked(&record.id, record.expires);
                Ok(true)
            }
            0 => Ok(false),
            _ => Err(StateError::Tampered { key }),
        }
    }
}

/// A token record from its Redis hash; `None` for an empty (absent) hash.
fn parse_record(
    key: &str,
    mut fields: HashMap<String, String>,
) -> Result<Option<TokenRecord>, StateError> {
    if fields.is_empty() {
        return Ok(None);
    }
    let mut take = |name: &str| {
        fields.remove(name).ok_or_else(|| StateError::Malformed {
            key: key.to_string(),
            what: format!("no field {name}"),
        })
    };
    let mut time = |name: &str| {
        take(name)?
            .parse::<i64>()
            .map_err(|_| StateError::Malformed {
                key: key.to_string(),
                what: format!("{name} is not unix seconds"),
            })
    };
    let created = time("created")?;
    let expires = time("expires")?;
    Ok(Some(TokenRecord {
        id: take("id")?,
        agent: take("agent")?,
        service: take("service")?,
        created,
        expires,
        revoked: take("revoked")? == "1",
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{test_redis::RedisServer, StateKeys};

    async fn state() -> (RedisServer, State) {
        let server = RedisServer::start();
        let keys = StateKeys::new(Some([7; 32]), Some([8; 32]));
        let state = State::connect(&server.url())
            .await
            .unwrap()
            .with_keys(std::sync::Arc::new(keys));
        (server, state)
    }

    #[tokio::test]
    async fn issued_token_is_found_by_value_but_stored_only_as_digest() {
        let (_server, state) = state().await;
        let (token, record) = state
            .issue("ci-bot", "billing-db", Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!(record.expires - record.created, 3600);
        assert_eq!(state.lookup(&token).await.unwrap(), Some(record.clone()));
        assert_eq!(state.lookup("slt_not-a-real-token").await.unwrap(), None);

        let mut conn = state.conn();
        let keys: Vec<String> = conn.keys("sluice:*").await.unwrap();
        for key in &keys {
            assert!(!key.contains(token.as_str()));
        }
        let stored: HashMap<String, String> = conn
            .hgetall(token_key(&tokens::digest(&token)))
            .await
            .unwrap();
        assert!(stored.values().all(|v| !v.contains(token.as_str())));
        let ttl: i64 = conn.ttl(token_key(&tokens::digest(&token))).await.unwrap();
        assert!(ttl > 3600 + EXPIRED_GRACE.as_secs() as i64 - 10, "{ttl}");
    }

    #[tokio::test]
    async fn revoke_by_id_or_token_marks_the_record_and_publishes_the_id() {
        let (server, state) = state().await;
        let (t1, r1) = state
            .issue("ci-bot", "billing-db", Duration::from_secs(60))
            .await
            .unwrap();
        let (t2, r2) = state
            .issue("ci-bot", "payments-api", Duration::from_secs(60))
            .await
            .unwrap();

        let mut subscriber = redis::Client::open(server.url())
            .unwrap()
            .get_connection()
            .unwrap();
        let mut pubsub = subscriber.as_pubsub();
        pubsub.subscribe(REVOCATIONS_CHANNEL).unwrap();
        pubsub
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();

        assert!(state.revoke(&r1.id).await.unwrap());
        assert!(state.revoke(&t2).await.unwrap());
        assert!(!state.revoke("tok_doesnotexist").await.unwrap());
        assert!(!state
            .revoke(&format!("slt_{}", "x".repeat(40)))
            .await
            .unwrap());

        assert!(state.lookup(&t1).await.unwrap().unwrap().revoked);
        assert!(state.lookup(&t2).await.unwrap().unwrap().revoked);
        // An id pointed at another token's record revokes nothing.
        let (t3, r3) = state
            .issue("ci-bot", "billing-db", Duration::from_secs(60))
            .await
            .unwrap();
        let mut conn = state.conn();
        let _: () = conn.set(id_key(&r3.id), tokens::digest(&t1)).await.unwrap();
        assert!(matches!(
            state.revoke(&r3.id).await,
            Err(StateError::Tampered { .. })
        ));
        assert!(!state.lookup(&t3).await.unwrap().unwrap().revoked);
        let published: Vec<String> = (0..2)
            .map(|_| pubsub.get_message().unwrap().get_payload().unwrap())
            .collect();
        assert_eq!(published, [r1.id, r2.id]);
    }

    #[tokio::test]
    async fn list_shows_known_tokens_soonest_expiry_first_and_prunes_forgotten_ones() {
        let (_server, state) = state().await;
        let (_, later) = state
            .issue("ci-bot", "billing-db", Duration::from_secs(7200))
            .await
            .unwrap();
        let (_, sooner) = state
            .issue("ci-bot", "billing-db", Duration::from_secs(60))
            .await
            .unwrap();
        let mut conn = state.conn();
        let _: () = conn.zadd(INDEX_KEY, "tok_forgotten", 1).await.unwrap();
        let ids: Vec<String> = state
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, [sooner.id, later.id]);
        let members: Vec<String> = conn.zrange(INDEX_KEY, 0, -1).await.unwrap();
        assert!(!members.contains(&"tok_forgotten".to_string()));
    }

    #[tokio::test]
    async fn a_forged_record_is_unknown_and_a_replayed_unrevoked_record_stays_revoked() {
        let (_server, state) = state().await;
        let (token, record) = state
            .issue("ci-bot", "billing-db", Duration::from_secs(600))
            .await
            .unwrap();
        let key = token_key(&tokens::digest(&token));
        let mut conn = state.conn();
        let before: HashMap<String, String> = conn.hgetall(&key).await.unwrap();

        // Another agent's service, or an unsigned record: unknown.
        let _: () = conn.hset(&key, "service", "payments-api").await.unwrap();
        assert_eq!(state.lookup(&token).await.unwrap(), None);
        let forged = tokens::generate();
        let mut fields = before.clone();
        fields.remove("mac");
        let fields: Vec<(String, String)> = fields.into_iter().collect();
        let _: () = conn
            .hset_multiple(token_key(&tokens::digest(&forged)), &fields)
            .await
            .unwrap();
        assert_eq!(state.lookup(&forged).await.unwrap(), None);

        // Revoke, then put the signed revoked=0 record back and delete the
        // revocation entry: still revoked.
        let before: Vec<(String, String)> = before.into_iter().collect();
        let _: () = conn.hset_multiple(&key, &before).await.unwrap();
        assert!(state.revoke(&record.id).await.unwrap());
        let _: () = conn.hset_multiple(&key, &before).await.unwrap();
        let fresh = state.clone().with_keys(std::sync::Arc::new(StateKeys::new(
            Some([7; 32]),
            Some([8; 32]),
        )));
        assert!(fresh.lookup(&token).await.unwrap().unwrap().revoked);
        let _: () = conn.del(REVOKED_KEY).await.unwrap();
        assert!(state.lookup(&token).await.unwrap().unwrap().revoked);
    }

    #[tokio::test]
    async fn a_login_verifier_planted_for_an_issued_token_is_ignored() {
        let (_server, state) = state().await;
        let (token, record) = state
            .issue("ci-bot", "billing-db", Duration::from_secs(600))
            .await
            .unwrap();
        let digest = tokens::digest(&token);
        state
            .add_verifier(
                "scram",
                "ci-bot",
                "billing-db",
                &digest,
                "aa:bb",
                record.expires,
            )
            .await
            .unwrap();
        let listed = state
            .verifiers("scram", "ci-bot", "billing-db")
            .await
            .unwrap();
        assert_eq!(listed, vec![(digest.clone(), "aa:bb".to_string())]);
        // Not valid for another scheme, and a planted entry (the attacker's
        // password's verifier under the issued token's digest) is ignored.
        assert!(state
            .verifiers("other", "ci-bot", "billing-db")
            .await
            .unwrap()
            .is_empty());
        let key = "sluice:scram:ci-bot:billing-db";
        let planted = format!("cc:dd:{}:{}", record.expires, "0".repeat(64));
        let mut conn = state.conn();
        let _: () = conn.hset(key, &digest, planted).await.unwrap();
        assert!(state
            .verifiers("scram", "ci-bot", "billing-db")
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn unreachable_redis_error_names_host_port_but_not_password() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = State::connect(&format!("redis://:hunter2@127.0.0.1:{port}/0"))
            .await
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("cannot reach Redis at 127.0.0.1:{port}: ")),
            "{msg}"
        );
        assert!(!msg.contains("hunter2"), "{msg}");
        assert!(matches!(
            State::connect("http://nope").await,
            Err(StateError::InvalidUrl(_))
        ));
    }
}
