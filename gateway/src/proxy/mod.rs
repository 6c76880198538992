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
    config::{Config, Service, ServiceKind},
    guard::{AgentIdentity, Guard, Intercepted},
    intercept::{cgroup, maps::TupleLookup, resolver::Resolved},
    state::{State, StateError},
    tokens::TokenRecord,
};

pub mod http;
pub mod mysql;
pub mod postgres;
pub mod ssh;

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

/// Everything a connection handler needs, shared by all connections: the
/// guard pipeline, the routing snapshot, and each protocol's own state.
pub struct Gateway {
    /// The pipeline every handler calls (identify, authenticate,
    /// authorize, credential, record).
    pub guard: Arc<Guard>,
    live: RwLock<Arc<Snapshot>>,
    pub lookup: TupleLookup,
    /// The PostgreSQL handler's state.
    pub postgres: Arc<postgres::Postgres>,
    /// The SSH handler's state (the host key).
    pub ssh: Arc<ssh::Ssh>,
    /// The MySQL handler's state (connection ids for `KILL QUERY`).
    pub mysql: Arc<mysql::Mysql>,
}

impl Gateway {
    /// Assembles a gateway; `guard` must enforce `snapshot.cfg`.
    pub fn new(
        guard: Arc<Guard>,
        lookup: TupleLookup,
        snapshot: Snapshot,
        postgres: Arc<postgres::Postgres>,
        ssh: Arc<ssh::Ssh>,
    ) -> Self {
        Gateway {
            guard,
            live: RwLock::new(Arc::new(snapshot)),
            lookup,
            postgres,
            ssh,
            mysql: Arc::default(),
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.live.read().unwrap().clone()
    }

    /// Replaces the snapshot and the guard's config together; connections
    /// pick them up on their next request or statement.
    pub fn replace(&self, snapshot: Snapshot) {
        let mut live = self.live.write().unwrap();
        self.guard.replace(snapshot.cfg.clone());
        *live = Arc::new(snapshot);
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
            self.guard.metrics.tuple_miss();
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
        // The handler registry: one arm per protocol. Each handler's future
        // is boxed, so a connection's task holds its own protocol's state
        // only, not room for the largest handler's; an HTTP connection keeps
        // the service's name, not a copy of the service.
        let idx = match Gateway::route(&snap, original_dst) {
            Some(Route::Service(idx)) => idx,
            Some(Route::PortWide) => {
                drop(snap);
                return Box::pin(http::serve(self, conn, stream, None)).await;
            }
            None => {
                return warn!(%original_dst, "no service for this destination any more; closing")
            }
        };
        let service = &snap.cfg.services[idx];
        match service.kind {
            ServiceKind::Http(_) | ServiceKind::Kubernetes(_) => {
                let name = service.name.clone();
                drop(snap);
                Box::pin(http::serve(self, conn, stream, Some(name))).await
            }
            ServiceKind::Postgres(_) => {
                let service = Arc::new(service.clone());
                drop(snap);
                Box::pin(postgres::serve(self, conn, stream, service)).await
            }
            ServiceKind::Ssh(_) => {
                let service = Arc::new(service.clone());
                drop(snap);
                Box::pin(ssh::serve(self, conn, stream, service)).await
            }
            ServiceKind::Mysql(_) => {
                let service = Arc::new(service.clone());
                drop(snap);
                Box::pin(mysql::serve(self, conn, stream, service)).await
            }
        }
    }
}

/// Prepares a token just issued for `service` for its protocol's login:
/// PostgreSQL stores the token's SCRAM verifier, MySQL its
/// `mysql_native_password` and `caching_sha2_password` verifiers, HTTP, Kubernetes and SSH
/// (the token as password) need nothing; a placeholder key is enrolled by
/// [`ssh::keys::enrol`]. With
/// [`Gateway::handle`]'s match, the one place a protocol is registered.
///
/// # Errors
/// [`StateError`] when Redis fails.
pub async fn enrol_token(
    state: &State,
    service: &Service,
    token: &str,
    record: &TokenRecord,
) -> Result<(), StateError> {
    match service.kind {
        ServiceKind::Http(_) | ServiceKind::Kubernetes(_) | ServiceKind::Ssh(_) => Ok(()),
        ServiceKind::Postgres(_) => postgres::auth::enrol(state, record, token).await,
        ServiceKind::Mysql(_) => mysql::login::enrol(state, record, token).await,
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
