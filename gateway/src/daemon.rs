//! `sluice run`: brings the gateway up in a safe order and serves.
//!
//! 1. config, vault, local CA, recorder (fail early, before touching BPF);
//! 2. the listeners on `listen` and `[::1]:<port>`;
//! 3. eBPF: load (re-using pinned maps), write the listener and egress
//!    policy, resolve services into the maps, create the agent cgroups,
//!    attach and pin (replacing links of an earlier run), drop links of
//!    agents no longer configured;
//! 4. readiness (`READY=1` to `$NOTIFY_SOCKET`, sd_notify(3)), then serve.
//!
//! On SIGTERM/SIGINT the daemon stops accepting and exits; the pinned links
//! stay, so agents fail closed (connection refused) until it is back.
use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::{Arc, RwLock},
};

use sluice_common::{GatewayConfig, EGRESS_ALLOW_ALL, EGRESS_DENY};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::{
    config::{Config, Egress},
    intercept::{
        cgroup,
        maps::InterceptMaps,
        programs,
        resolver::{self, Resolved},
    },
    policy::sql::ClassifyCache,
    proxy::{self, http::upstream::UpstreamClients, AgentTable, Gateway},
    recorder::Recorder,
    state::StateHandle,
    tls::LocalCa,
    vault::{Vault, VaultCache},
};

/// Distinct SQL texts whose classification is cached.
const SQL_CACHE_ENTRIES: usize = 4096;

/// Errors that stop the daemon from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Intercept(#[from] programs::InterceptError),
}

fn setup<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> StartError + '_ {
    move |e| StartError::Setup(format!("{what}: {e}"))
}

/// Runs the daemon until SIGTERM/SIGINT.
///
/// # Errors
/// [`StartError`] when any start-up step fails; nothing is left half
/// attached except links pinned by a previous run, which keep agents
/// failing closed.
pub async fn run(cfg: Config) -> Result<(), StartError> {
    let cfg = Arc::new(cfg);
    let gwc = &cfg.gateway;
    let vault = VaultCache::new(Vault::open(gwc).map_err(setup("vault"))?);
    let ca = LocalCa::load_or_create(&gwc.state_dir).map_err(setup("local CA"))?;
    let recorder = Recorder::open(&gwc.log_dir).map_err(setup("log_dir"))?;
    let http = UpstreamClients::new(&cfg).map_err(setup("upstream TLS"))?;

    let v4 = TcpListener::bind(gwc.listen)
        .await
        .map_err(setup(&format!("binding gateway.listen {}", gwc.listen)))?;
    let v6_addr = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), gwc.listen.port());
    let v6 = match TcpListener::bind(v6_addr).await {
        Ok(l) => Some(l),
        Err(e) => {
            warn!(error = %e, "no IPv6 listener on {v6_addr}; native IPv6 agent connections will be refused");
            None
        }
    };

    let mut ebpf = programs::load(&gwc.bpf_dir)?;
    if let Err(e) = aya_log::EbpfLogger::init(&mut ebpf).map(spawn_bpf_logger) {
        warn!(error = %e, "eBPF log channel unavailable");
    }
    let (mut maps, lookup) = InterceptMaps::take(&mut ebpf)?;
    let listen4 = match gwc.listen.ip() {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(_) => unreachable!("config validation requires an IPv4 listener"),
    };
    maps.set_gateway(GatewayConfig {
        listen4,
        listen6: Ipv6Addr::LOCALHOST.octets(),
        listen_port: gwc.listen.port(),
        egress: if gwc.egress == Egress::Deny {
            EGRESS_DENY
        } else {
            EGRESS_ALLOW_ALL
        },
        _pad: 0,
    })?;
    let resolved = resolver::resolve(&cfg).await;
    apply(&mut maps, &resolved)?;

    let mount = cgroup::cgroup2_mount().map_err(setup("cgroup2"))?;
    for agent in &cfg.agents {
        let dir = cgroup::agent_dir(&mount, &agent.cgroup);
        cgroup::ensure(&dir).map_err(setup(&format!("creating cgroup {}", dir.display())))?;
        programs::attach_agent(&mut ebpf, &gwc.bpf_dir, &agent.name, &dir)?;
        info!(agent = %agent.name, cgroup = %dir.display(), "attached");
    }
    let keep: Vec<&str> = cfg.agents.iter().map(|a| a.name.as_str()).collect();
    for gone in programs::detach_others(&gwc.bpf_dir, &keep)? {
        info!(agent = %gone, "detached agent no longer in the config");
    }
    let agents = AgentTable::new(&cfg, &mount).map_err(setup("agent cgroups"))?;

    let redis_url = gwc.redis_url_with_password().map_err(StartError::Setup)?;
    let state = Arc::new(StateHandle::new(&redis_url));
    let instance = format!("{}:{}", nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default(), gwc.listen);
    abandon_stale_approvals(state.clone(), instance.clone());
    let gateway = Arc::new(Gateway {
        cfg: cfg.clone(),
        instance,
        agents,
        lookup,
        routes: RwLock::new(Arc::new(resolved)),
        ca,
        vault,
        state: state.clone(),
        recorder,
        http,
        sql: Arc::new(ClassifyCache::new(SQL_CACHE_ENTRIES)),
        pg_cancel: Default::default(),
    });
    tokio::spawn(async move { state.watch_revocations().await });
    tokio::spawn(proxy::serve(gateway.clone(), v4));
    if let Some(v6) = v6 {
        tokio::spawn(proxy::serve(gateway.clone(), v6));
    }
    tokio::spawn(refresh_routes(gateway.clone(), maps));
    notify_ready();
    info!(listen = %gwc.listen, agents = cfg.agents.len(), services = cfg.services.len(), "sluice ready");

    wait_for_shutdown().await;
    info!("shutting down; pinned links keep agents failing closed until the next start");
    // Keep `ebpf` alive until here: dropping it closes the program fds, but
    // the pinned links hold the programs in the kernel.
    drop(ebpf);
    Ok(())
}

/// Approvals this instance held before a restart can never be released:
/// mark them abandoned (best effort; Redis may still be down).
fn abandon_stale_approvals(state: Arc<StateHandle>, instance: String) {
    tokio::spawn(async move {
        match state.get().await {
            Ok(s) => match s.approvals_abandon(&instance).await {
                Ok(0) => {}
                Ok(n) => info!(count = n, "marked approvals held before the restart as abandoned"),
                Err(e) => warn!(error = %e, "cannot clean up stale approvals"),
            },
            Err(e) => warn!(error = %e, "Redis unreachable at start; tokens and approvals fail closed until it is back"),
        }
    });
}

fn apply(maps: &mut InterceptMaps, r: &Resolved) -> Result<(), programs::InterceptError> {
    for (host, err) in &r.failures {
        warn!(%host, error = %err, "cannot resolve; its connections are not intercepted by address");
    }
    maps.sync_services(&r.services)?;
    maps.sync_port_rules(&r.ports)?;
    maps.sync_egress(&r.egress)
}

/// Re-resolves service and egress names every [`resolver::REFRESH`].
async fn refresh_routes(gw: Arc<Gateway>, mut maps: InterceptMaps) {
    let mut tick = tokio::time::interval(resolver::REFRESH);
    tick.tick().await;
    loop {
        tick.tick().await;
        let fresh = resolver::resolve(&gw.cfg).await;
        if **gw.routes.read().unwrap() == fresh {
            continue;
        }
        match apply(&mut maps, &fresh) {
            Ok(()) => *gw.routes.write().unwrap() = Arc::new(fresh),
            Err(e) => warn!(error = %e, "updating service maps failed"),
        }
    }
}

fn spawn_bpf_logger(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    tokio::spawn(async move {
        // SAFETY: the AsyncFd owns the logger, so the ring buffer fd stays
        // open for as long as it is registered.
        let registered = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
        };
        let Ok(mut fd) = registered else { return };
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}

/// Sends `READY=1` to `$NOTIFY_SOCKET` (sd_notify(3)) when set.
fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => return warn!(error = %e, "sd_notify socket"),
    };
    let bytes = path.as_encoded_bytes();
    let result = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .and_then(|addr| sock.send_to_addr(b"READY=1\n", &addr))
    } else {
        sock.send_to(b"READY=1\n", std::path::Path::new(&path))
    };
    if let Err(e) = result {
        warn!(error = %e, "sd_notify READY=1 failed");
    }
}

async fn wait_for_shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
