//! The one pipeline every protocol handler calls (DESIGN.md §6): identify
//! → authenticate → authorize → credential → record.
//!
//! A handler terminates its protocol, turns bytes into typed operations
//! and asks its [`Session`] at each step:
//!
//! 1. **identify**: [`Guard::open`] ties the connection (agent, pid, uid,
//!    cgroup from the eBPF 4-tuple entry) to a service and opens the
//!    session record;
//! 2. **authenticate**: [`Session::authenticate`] checks what the agent
//!    presented (a token, or the digest of the token a challenge-response
//!    matched), with the token-guessing throttle, and re-checks it
//!    ([`Session::recheck`]) before each operation;
//! 3. **authorize**: [`Session::authorize`] decides an operation under the
//!    service's current rules and carries the decision out: a denial is
//!    recorded, a hold waits for a JIT approval;
//! 4. **credential**: [`Session::credential`] takes the real secret from
//!    the vault;
//! 5. **record**: every step records its event; [`Session::flush`] waits
//!    until the lines are written, before anything goes on.
//!
//! Every refusal is a [`Refusal`], already recorded; the handler answers
//! it in its protocol's own error form.
use std::{
    net::SocketAddr,
    sync::{Arc, RwLock},
};

use crate::{
    config::{Config, Service},
    metrics::Metrics,
    recorder::{Event, Recorder, SessionMeta},
    state::StateHandle,
    tls::LocalCa,
    vault::VaultCache,
};

mod authenticate;
mod authorize;
mod jwt;
mod refusal;
mod session;
pub mod throttle;

pub use authenticate::Presented;
pub use authorize::Allowed;
pub use refusal::{Refusal, RefusalKind};
pub use session::Session;

/// Who is on the other end of an intercepted connection, as recorded by
/// `connect4`/`connect6` at `connect()` time.
#[derive(Debug, Clone)]
pub struct AgentIdentity {
    /// The `[[agent]]` name whose cgroup the process is in.
    pub agent: String,
    /// Thread-group id (process id) that called `connect()`.
    pub pid: u32,
    /// Its real uid.
    pub uid: u32,
    /// Its cgroup v2 id.
    pub cgroup_id: u64,
    /// That cgroup's path below the cgroup2 mount (`/sluice/ci/ctr-1`): the
    /// agent cgroup or a container's cgroup below it (DESIGN.md §8).
    pub cgroup: String,
    /// Cookie of the network namespace the connection was made in; not
    /// Sluice's own for a container.
    pub netns_cookie: u64,
}

/// An accepted, intercepted connection before any protocol is spoken.
#[derive(Debug, Clone)]
pub struct Intercepted {
    pub identity: AgentIdentity,
    /// The address and port the agent dialled.
    pub original_dst: SocketAddr,
    /// The agent's end of the connection.
    pub peer: SocketAddr,
}

/// What every handler shares: the current config, the vault, the token and
/// approval store, the recorder, the local CA and metrics.
pub struct Guard {
    /// This gateway instance (`host:listen`), recorded on approvals it holds.
    pub instance: String,
    config: RwLock<Arc<Config>>,
    /// Mints certificates towards agents (TLS by SNI).
    pub ca: LocalCa,
    pub vault: VaultCache,
    pub state: Arc<StateHandle>,
    pub recorder: Arc<Recorder>,
    pub metrics: Arc<Metrics>,
    /// Failed token checks per agent.
    throttle: throttle::AuthThrottle,
    /// The `[[oidc]]` issuers' key caches.
    pub identity: crate::identity::Identity,
}

/// The parts a [`Guard`] is made of.
pub struct Parts {
    pub instance: String,
    pub ca: LocalCa,
    pub vault: VaultCache,
    pub state: Arc<StateHandle>,
    pub recorder: Arc<Recorder>,
    pub metrics: Arc<Metrics>,
}

impl Guard {
    /// A guard over `parts`, enforcing `config` until [`Guard::replace`].
    pub fn new(parts: Parts, config: Arc<Config>) -> Self {
        let Parts {
            instance,
            ca,
            vault,
            state,
            recorder,
            metrics,
        } = parts;
        Guard {
            instance,
            config: RwLock::new(config),
            ca,
            vault,
            state,
            recorder,
            metrics,
            throttle: Default::default(),
            identity: Default::default(),
        }
    }

    /// The current config.
    pub fn config(&self) -> Arc<Config> {
        self.config.read().unwrap().clone()
    }

    /// Replaces the config; open sessions apply the new rules to their next
    /// operation.
    pub fn replace(&self, config: Arc<Config>) {
        *self.config.write().unwrap() = config;
    }

    /// Identifies: opens the session of `conn` with `service`, queueing its
    /// `open` line (`protocol` as recorded, e.g. `"postgres+tls"`);
    /// [`Session::opened`] waits until it is written.
    ///
    /// # Errors
    /// [`RefusalKind::Unrecorded`] when the session record cannot be
    /// created: nothing may go on unaudited.
    pub fn open(
        self: &Arc<Self>,
        conn: &Intercepted,
        service: &Service,
        protocol: &str,
    ) -> Result<Session, Refusal> {
        let id = &conn.identity;
        let meta = SessionMeta {
            agent: id.agent.clone(),
            pid: id.pid,
            uid: id.uid,
            service: service.name.clone(),
        };
        let record = self
            .recorder
            .start(meta)
            .and_then(|r| {
                r.record(Event::Open {
                    protocol: protocol.to_string(),
                    original_dst: conn.original_dst.to_string(),
                    peer: conn.peer.to_string(),
                    cgroup: id.cgroup.clone(),
                    netns_cookie: id.netns_cookie,
                })
                .map(|()| r)
            })
            .map_err(|e| {
                tracing::warn!(error = %e, "cannot open the session record");
                Refusal::unrecorded()
            })?;
        Ok(Session::new(
            self.clone(),
            conn.identity.clone(),
            service,
            record,
        ))
    }
}
