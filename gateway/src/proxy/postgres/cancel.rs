//! Query cancellation (protocol §55.2.8 "Canceling Requests in Progress").
//!
//! Each agent session gets Sluice's own `BackendKeyData` (random process id
//! and secret key), mapped here to the upstream backend's. A CancelRequest
//! arriving on a new intercepted connection is looked up and forwarded to
//! that backend; unknown keys are dropped silently, as PostgreSQL does.
use std::{collections::HashMap, net::SocketAddr, sync::Mutex};

use bytes::BytesMut;
use rand::Rng;
use tokio::{io::AsyncWriteExt, net::TcpStream};

/// Where a cancel for one session must go.
#[derive(Debug, Clone, Copy)]
pub struct CancelTarget {
    pub upstream: SocketAddr,
    pub pid: i32,
    pub key: i32,
}

/// Sluice key → upstream backend, for sessions of this gateway.
#[derive(Default)]
pub struct CancelRegistry {
    map: Mutex<HashMap<(i32, i32), CancelTarget>>,
}

impl CancelRegistry {
    /// Registers a session; returns the (process id, secret key) to give the agent.
    pub fn register(&self, target: CancelTarget) -> (i32, i32) {
        let mut rng = rand::thread_rng();
        let mut map = self.map.lock().unwrap();
        loop {
            let key = (rng.gen_range(1..i32::MAX), rng.gen::<i32>());
            if let std::collections::hash_map::Entry::Vacant(e) = map.entry(key) {
                e.insert(target);
                return key;
            }
        }
    }

    /// Forgets a session's key when it ends.
    pub fn unregister(&self, key: (i32, i32)) {
        self.map.lock().unwrap().remove(&key);
    }

    /// Forwards a CancelRequest for `key` to its backend, if known.
    ///
    /// # Errors
    /// The connect/write failure towards the upstream.
    pub async fn cancel(&self, key: (i32, i32)) -> std::io::Result<bool> {
        let Some(target) = self.map.lock().unwrap().get(&key).copied() else {
            return Ok(false);
        };
        let mut buf = BytesMut::new();
        postgres_protocol::message::frontend::cancel_request(target.pid, target.key, &mut buf);
        let mut s = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            TcpStream::connect(target.upstream),
        )
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
        s.write_all(&buf).await?;
        s.shutdown().await?;
        Ok(true)
    }
}
