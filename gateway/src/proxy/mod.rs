//! The userspace proxy: accepts redirected connections, finds each one's
//! original destination and agent from the eBPF 4-tuple map, and routes it
//! to a protocol handler.
use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::Duration,
};

use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

use crate::{
    config::{Config, Protocol, Service},
    intercept::{cgroup, maps::TupleLookup, resolver::Resolved},
    recorder::Recorder,
    state::StateHandle,
    tls::LocalCa,
    vault::VaultCache,
};

pub mod http;
pub mod postgres;
pub mod throttle;

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

/// Configured agents and their cgroup directories.
pub struct AgentTable {
    names: Vec<String>,
    dirs: Vec<PathBuf>,
    ids: Vec<u64>,
    /// The cgroup2 mount, which cgroup paths are given relative to.
    mount: PathBuf,
    /// Descendant cgroup → agent, for this table's agents only.
    owners: cgroup::OwnerCache,
}

impl AgentTable {
    /// Builds the table; every agent's cgroup must already exist.
    ///
    /// # Errors
    /// The cgroup directory cannot be stat'ed.
    pub fn new(cfg: &Config, mount: &std::path::Path) -> std::io::Result<Self> {
        let dirs: Vec<PathBuf> = cfg
            .agents
            .iter()
            .map(|a| cgroup::agent_dir(mount, &a.cgroup))
            .collect();
        let ids = dirs
            .iter()
            .map(|d| cgroup::id(d))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            names: cfg.agents.iter().map(|a| a.name.clone()).collect(),
            dirs,
            ids,
            mount: mount.to_path_buf(),
            owners: cgroup::OwnerCache::default(),
        })
    }

    /// The agent whose cgroup is `cgroup_id` or an ancestor of it, and the
    /// path of cgroup `cgroup_id` below the cgroup2 mount.
    pub fn by_cgroup(&self, cgroup_id: u64) -> Option<(&str, String)> {
        let (agent, dir) = match self.ids.iter().position(|id| *id == cgroup_id) {
            Some(i) => (i, self.dirs[i].clone()),
            None => {
                let owner = self.owners.owner_of(&self.dirs, cgroup_id)?;
                (owner.root, owner.dir)
            }
        };
        let rel = dir.strip_prefix(&self.mount).unwrap_or(&dir);
        Some((&self.names[agent], format!("/{}", rel.display())))
    }
}

/// The reloadable part of the gateway: the config and what is derived
/// from it. Swapped whole on SIGHUP and when DNS answers change; each
/// request or statement reads the current one.
pub struct Snapshot {
    pub cfg: Arc<Config>,
    pub agents: Arc<AgentTable>,
    /// Current name resolution of services.
    pub routes: Arc<Resolved>,
    pub http: Arc<http::upstream::UpstreamClients>,
}

impl Snapshot {
    /// The service named `name` and its index.
    pub fn service(&self, name: &str) -> Option<(usize, &Service)> {
        self.cfg
            .services
            .iter()
            .enumerate()
            .find(|(_, s)| s.name == name)
    }
}

/// Everything a connection handler needs, shared by all connections.
pub struct Gateway {
    /// This gateway instance (`host:listen`), recorded on approvals it holds.
    pub instance: String,
    live: RwLock<Arc<Snapshot>>,
    pub lookup: TupleLookup,
    pub ca: LocalCa,
    pub vault: VaultCache,
    pub state: Arc<StateHandle>,
    pub recorder: Arc<Recorder>,
    /// Statement classification cache (keyed by SQL text).
    pub sql: Arc<crate::policy::sql::ClassifyCache>,
    /// Sluice BackendKeyData → upstream backend, for CancelRequest.
    pub pg_cancel: postgres::cancel::CancelRegistry,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Failed token checks per agent.
    pub auth_throttle: throttle::AuthThrottle,
}

/// The parts of a [`Gateway`] that never change while it runs.
pub struct Fixed {
    pub instance: String,
    pub lookup: TupleLookup,
    pub ca: LocalCa,
    pub vault: VaultCache,
    pub state: Arc<StateHandle>,
    pub recorder: Arc<Recorder>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Gateway {
    /// Assembles a gateway from its fixed parts and a first snapshot.
    pub fn new(fixed: Fixed, snapshot: Snapshot, sql_cache_entries: usize) -> Self {
        let Fixed {
            instance,
            lookup,
            ca,
            vault,
            state,
            recorder,
            metrics,
        } = fixed;
        Gateway {
            instance,
            live: RwLock::new(Arc::new(snapshot)),
            lookup,
            ca,
            vault,
            state,
            recorder,
            sql: Arc::new(crate::policy::sql::ClassifyCache::new(sql_cache_entries)),
            pg_cancel: Default::default(),
            metrics,
            auth_throttle: Default::default(),
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.live.read().unwrap().clone()
    }

    /// Replaces the snapshot; connections pick it up on their next request
    /// or statement.
    pub fn replace(&self, snapshot: Snapshot) {
        *self.live.write().unwrap() = Arc::new(snapshot);
    }
}

/// Where an intercepted connection goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// The (address, port) of this service (index into `cfg.services`).
    Service(usize),
    /// A port-wide TLS/HTTP port: routed by SNI or `Host`.
    PortWide,
}

impl Gateway {
    fn route(snap: &Snapshot, dst: SocketAddr) -> Option<Route> {
        let routes = &snap.routes;
        if let Some(idx) = routes.services.get(&dst) {
            return Some(Route::Service(*idx as usize));
        }
        routes
            .ports
            .contains(&dst.port())
            .then_some(Route::PortWide)
    }

    /// Identifies and routes one accepted connection.
    async fn handle(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let Ok(local) = stream.local_addr() else {
            return;
        };
        let Some(odst) = self.lookup.take_original_dst(peer, local) else {
            self.metrics.tuple_miss();
            warn!(%peer, %local, "connection without an eBPF 4-tuple entry (not redirected from an agent cgroup, or the map was full); closing");
            return;
        };
        let snap = self.snapshot();
        let Some((agent, cgroup)) = snap.agents.by_cgroup(odst.cgroup_id) else {
            warn!(%peer, cgroup_id = odst.cgroup_id, "connection from a cgroup that is no configured agent; closing");
            return;
        };
        let original_dst = SocketAddr::new(crate::intercept::maps::ip_of(odst.addr), odst.port);
        let conn = Intercepted {
            identity: AgentIdentity {
                agent: agent.to_string(),
                pid: odst.pid,
                uid: odst.uid,
                cgroup_id: odst.cgroup_id,
                cgroup,
                netns_cookie: odst.netns_cookie,
            },
            original_dst,
            peer,
        };
        match Gateway::route(&snap, original_dst) {
            Some(Route::Service(idx)) if snap.cfg.services[idx].protocol == Protocol::Postgres => {
                let service = Arc::new(snap.cfg.services[idx].clone());
                postgres::serve(self, conn, stream, service).await
            }
            Some(Route::Service(idx)) => {
                let name = snap.cfg.services[idx].name.clone();
                http::serve(self, conn, stream, Some(name)).await
            }
            Some(Route::PortWide) => http::serve(self, conn, stream, None).await,
            None => warn!(%original_dst, "no service for this destination any more; closing"),
        }
    }
}

/// Accepts connections forever. Accept errors (e.g. `EMFILE`) are logged
/// and backed off rather than spun on.
pub async fn serve(gw: Arc<Gateway>, listener: TcpListener) {
    let mut backoff = Duration::from_millis(10);
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(10);
                let _ = stream.set_nodelay(true);
                tokio::spawn(gw.clone().handle(stream, peer));
            }
            Err(e) => {
                warn!(error = %e, "accept failed; backing off {:?}", backoff);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}
