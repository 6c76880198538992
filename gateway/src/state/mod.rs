//! Shared state in Redis (DESIGN.md §5 "Scale out"): everything several
//! gateway hosts must agree on. Sluice keeps no other state apart from its
//! vault and logs.
//!
//! Key layout (all under `sluice:`):
//! - `sluice:token:<digest>`: hash `{id, agent, service, created, expires,
//!   revoked}` of one token, keyed by [`crate::tokens::digest`];
//! - `sluice:tokid:<id>`: that digest, so list and revoke work by id;
//! - `sluice:tokens`: sorted set of token ids scored by expiry;
//! - `sluice:revoked`: hash of token id → `<expires>:<mac>` of every
//!   revoked token;
//! - `sluice:jwt-revoked`: revoked OIDC subjects and JWT ids
//!   ([`jwt_revocations`]);
//! - channel `sluice:revocations`: the id of every revoked token (or JWT
//!   revocation).
//!
//! Records carry a `mac` field; see [`mac`] for what it binds and why.
//!
//! Token keys expire [`EXPIRED_GRACE`] after the token does, so for that
//! long a late use is reported as expired rather than unknown.
use std::{sync::Arc, time::Duration};

use redis::{
    aio::{ConnectionManager, ConnectionManagerConfig},
    AsyncConnectionConfig,
};

mod approvals;
mod handle;
mod jwt_revocations;
mod mac;
mod seen;
mod tokens;
mod verifiers;

pub use approvals::{Approval, ApprovalStatus, Decided, APPROVALS_CHANNEL};
pub use handle::{LiveToken, StateHandle, TokenCheckError};
pub use jwt_revocations::JwtRevocation;
pub use mac::{approval_key_path, write_approval_key, StateKeys};
pub use tokens::{EXPIRED_GRACE, REVOCATIONS_CHANNEL};

/// How long [`State::connect`] waits for Redis.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one Redis command may take.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A Redis failure. Messages name Redis and its host:port, never the
/// password in the URL.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("gateway.redis_url is not a valid Redis URL: {0}")]
    InvalidUrl(String),
    #[error(
        "cannot reach Redis at {addr}: {reason} (is redis-server running? check gateway.redis_url)"
    )]
    Connect { addr: String, reason: String },
    #[error("Redis {op} failed: {source}")]
    Command {
        op: &'static str,
        source: redis::RedisError,
    },
    #[error(
        "Redis key {key} holds a malformed token record ({what}); delete it with redis-cli DEL"
    )]
    Malformed { key: String, what: String },
    #[error("Redis key {key} failed its integrity check (not written by Sluice); refused")]
    Tampered { key: String },
    #[error("cannot sign or check shared state: {0}")]
    Keys(String),
}

impl StateError {
    fn command(op: &'static str) -> impl FnOnce(redis::RedisError) -> StateError {
        move |source| StateError::Command { op, source }
    }
}

/// A handle on the shared state; cheap to clone, reconnects by itself.
#[derive(Clone)]
pub struct State {
    conn: ConnectionManager,
    keys: Arc<StateKeys>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").finish_non_exhaustive()
    }
}

impl State {
    /// Connects to the Redis at `url` (`redis://[user:password@]host:port/db`),
    /// waiting at most [`CONNECT_TIMEOUT`].
    ///
    /// # Errors
    /// [`StateError::InvalidUrl`] for a malformed URL, [`StateError::Connect`]
    /// (naming host:port) when Redis cannot be reached or refuses the login.
    pub async fn connect(url: &str) -> Result<State, StateError> {
        let client = redis::Client::open(url).map_err(|e| StateError::InvalidUrl(e.to_string()))?;
        let addr = client.get_connection_info().addr().to_string();
        let connect = async {
            // One plain attempt first: the manager retries its first connect
            // with backoff, which would hide "connection refused" behind a
            // timeout.
            let probe = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT));
            drop(
                client
                    .get_multiplexed_async_connection_with_config(&probe)
                    .await?,
            );
            let config = ConnectionManagerConfig::new()
                // Fail fast while Redis is down: callers fail closed at once
                // and the manager reconnects in the background.
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500))
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT));
            ConnectionManager::new_with_config(client, config).await
        };
        let conn = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                return Err(StateError::Connect {
                    addr,
                    reason: e.to_string(),
                })
            }
            Err(_) => {
                return Err(StateError::Connect {
                    addr,
                    reason: format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
                })
            }
        };
        Ok(State {
            conn,
            keys: Arc::new(StateKeys::new(None, None)),
        })
    }

    /// This state signing and checking records with `keys` (without keys
    /// every record operation fails with [`StateError::Keys`]).
    pub fn with_keys(mut self, keys: Arc<StateKeys>) -> State {
        self.keys = keys;
        self
    }

    /// Connects to the gateway's Redis with its password, if configured
    /// (see [`crate::config::Gateway::redis_url_with_password`]).
    ///
    /// # Errors
    /// As [`State::connect`]; [`StateError::InvalidUrl`] when the password
    /// file cannot be read.
    pub async fn open(gw: &crate::config::Gateway) -> Result<State, StateError> {
        let url = gw
            .redis_url_with_password()
            .map_err(StateError::InvalidUrl)?;
        State::connect(&url).await
    }

    /// A connection for one operation (clones share the multiplexed
    /// connection).
    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }
}

/// A throwaway `redis-server` for tests: a free port, a temp dir, killed by
/// PID on drop.
#[cfg(test)]
pub(crate) mod test_redis {
    use std::{
        net::{TcpListener, TcpStream},
        process::{Child, Command, Stdio},
        time::{Duration, Instant},
    };

    pub(crate) struct RedisServer {
        child: Child,
        _dir: tempfile::TempDir,
        pub(crate) port: u16,
    }

    impl RedisServer {
        pub(crate) fn start() -> RedisServer {
            let dir = tempfile::tempdir().unwrap();
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .arg("--dir")
                .arg(dir.path())
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server is installed");
            let server = RedisServer {
                child,
                _dir: dir,
                port,
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "redis-server did not start on port {port}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            server
        }

        pub(crate) fn url(&self) -> String {
            format!("redis://127.0.0.1:{}/0", self.port)
        }
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
