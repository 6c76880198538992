//! `sluice run`: brings the gateway up in a safe order and serves.
//!
//! 1. config, vault, local CA, recorder (fail early, before touching BPF);
//! 2. the listeners on `listen`, `[::1]:<port>` and every agent's
//!    `redirect` address (for its containers, DESIGN.md §8);
//! 3. eBPF: load (re-using pinned maps), write the listener and egress
//!    policy, resolve services into the maps, create the agent cgroups,
//!    attach and pin (replacing links of an earlier run), drop links of
//!    agents no longer configured;
//! 4. readiness (`READY=1` to `$NOTIFY_SOCKET`, sd_notify(3)), then serve;
//!    SIGHUP reloads the config ([`control`]).
//!
//! On SIGTERM/SIGINT the daemon stops accepting and exits; the pinned links
//! stay, so agents fail closed (connection refused) until it is back.
use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::{
    config::Config,
    guard::{Guard, Parts},
    intercept::{cgroup, maps::InterceptMaps, netns, programs, resolver},
    metrics::{self, Metrics},
    notify::Notifier,
    proxy::{self, Gateway},
    recorder::{Observer, Recorder},
    state::{StateHandle, StateKeys},
    tls::LocalCa,
    vault::{Vault, VaultCache},
};

pub mod control;
pub mod notify;

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

/// Runs the daemon until SIGTERM/SIGINT. Returns the recorder: the caller
/// shuts the runtime down (which ends every session, queueing its `close`
/// line) and then flushes it, so no record line is lost on a clean stop.
///
/// # Errors
/// [`StartError`] when any start-up step fails; nothing is left half
/// attached except links pinned by a previous run, which keep agents
/// failing closed.
pub async fn run(cfg: Config) -> Result<Arc<Recorder>, StartError> {
    let cfg = Arc::new(cfg);
    let gwc = &cfg.gateway;
    let vault = VaultCache::new(Vault::open(gwc).map_err(setup("vault"))?);
    let ca = LocalCa::load_or_create(&gwc.state_dir).map_err(setup("local CA"))?;
    // Before listening: once the daemon accepts, its host key is on disk.
    let ssh = proxy::ssh::Ssh::load(&gwc.state_dir).map_err(setup("ssh host key"))?;
    let recorder =
        Recorder::open_with(&gwc.log_dir, gwc.recorder_options()).map_err(setup("log_dir"))?;
    let redis_url = gwc.redis_url_with_password().map_err(StartError::Setup)?;

    let v4 =
        listen(gwc.listen).map_err(setup(&format!("binding gateway.listen {}", gwc.listen)))?;
    let v6_addr = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), gwc.listen.port());
    let v6 = match listen(v6_addr) {
        Ok(l) => Some(l),
        Err(e) => {
            warn!(error = %e, "no IPv6 listener on {v6_addr}; native IPv6 agent connections will be refused");
            None
        }
    };

    let mut redirects = Vec::new();
    for addr in cfg.redirect_addrs() {
        let listener = listen(addr).map_err(setup(&format!("binding agent redirect {addr}")))?;
        redirects.push(listener);
    }
    let netns_cookie = match netns::cookie_of(&v4) {
        Ok(cookie) => cookie,
        Err(e) if redirects.is_empty() => {
            warn!(error = %e, "no network namespace cookie (kernel < 5.14); containers below agent cgroups are refused");
            0
        }
        Err(e) => {
            return Err(setup(
                "agent redirect needs SO_NETNS_COOKIE (kernel ≥ 5.14)",
            )(e))
        }
    };

    let mut ebpf = programs::load(&gwc.bpf_dir)?;
    if let Err(e) = aya_log::EbpfLogger::init(&mut ebpf).map(spawn_bpf_logger) {
        warn!(error = %e, "eBPF log channel unavailable");
    }
    let (mut maps, lookup) = InterceptMaps::take(&mut ebpf)?;
    maps.set_gateway(control::gateway_map_value(&cfg, netns_cookie))?;
    let routes = resolver::resolve(&cfg).await;
    control::apply(&mut maps, &routes)?;
    let mount = cgroup::cgroup2_mount().map_err(setup("cgroup2"))?;
    let mut ctl = control::Control {
        ebpf,
        maps,
        mount,
        netns_cookie,
        client_certs: Arc::new(VaultCache::new(Vault::open(gwc).map_err(setup("vault"))?)),
    };
    control::attach_agents(&mut ctl, &cfg, None).map_err(StartError::Setup)?;
    let snapshot = control::snapshot(cfg.clone(), &ctl, routes).map_err(StartError::Setup)?;

    let keys = StateKeys::load(gwc)
        .and_then(|k| k.keep_revocations_in(&gwc.state_dir.join("revoked")))
        .map_err(|e| StartError::Setup(e.to_string()))?;
    let state = Arc::new(StateHandle::new(&redis_url, Arc::new(keys)));
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let instance = format!("{host}:{}", gwc.listen);
    abandon_stale_approvals(state.clone(), instance.clone());
    let metrics = Arc::new(Metrics::new());
    let observer = metrics.clone();
    // The notifier reads signing secrets through its own view of the vault.
    let notify_vault = VaultCache::new(Vault::open(gwc).map_err(setup("vault"))?);
    let console_url = cfg.console.as_ref().map(|c| c.link("/approvals"));
    let notifier = Notifier::start(&cfg.notify, notify_vault, metrics.clone(), console_url);
    recorder.observe_with(Observer(Box::new(move |line| {
        observer.observe(&line.meta.service, line.event);
        notifier.offer(line);
    })));
    let guard = Arc::new(Guard::new(
        Parts {
            instance,
            ca,
            vault,
            state: state.clone(),
            recorder: recorder.clone(),
            metrics,
        },
        cfg.clone(),
    ));
    let postgres = proxy::postgres::Postgres::new(SQL_CACHE_ENTRIES);
    let gateway = Arc::new(Gateway::new(guard, lookup, snapshot, postgres, ssh));
    if let Some(addr) = gwc.metrics {
        let gw = gateway.clone();
        let render = Arc::new(move || gw.guard.metrics.render(gw.lookup.len()));
        metrics::serve(addr, render)
            .await
            .map_err(setup(&format!("binding gateway.metrics {addr}")))?;
    }
    if let Some(console) = console_issuer(&cfg)? {
        crate::console::start(cfg.clone(), state.clone(), console)
            .await
            .map_err(setup("console"))?;
    }
    tokio::spawn(async move { state.watch_revocations().await });
    tokio::spawn(proxy::serve(gateway.clone(), v4));
    for listener in v6.into_iter().chain(redirects) {
        tokio::spawn(proxy::serve(gateway.clone(), listener));
    }
    // Signal handlers exist before readiness, so an early reload or stop
    // never meets a default action.
    use tokio::signal::unix::{signal, SignalKind};
    let handler = |kind| signal(kind).map_err(setup("signal handler"));
    let (mut term, mut int, hup) = (
        handler(SignalKind::terminate())?,
        handler(SignalKind::interrupt())?,
        handler(SignalKind::hangup())?,
    );
    tokio::spawn(control::run(gateway.clone(), ctl, cfg.path.clone(), hup));
    notify::ready();
    info!(listen = %gwc.listen, agents = cfg.agents.len(), services = cfg.services.len(), "sluice ready");

    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    info!("shutting down; pinned links keep agents failing closed until the next start");
    Ok(recorder)
}

/// The issuer the console signs people in with, when `[console]` is set
/// (config validation made sure its `[[oidc]]` entry has a client).
fn console_issuer(cfg: &Config) -> Result<Option<crate::console::Issuer>, StartError> {
    let Some(console) = &cfg.console else {
        return Ok(None);
    };
    let (Some(issuer), Some(client)) = (
        cfg.issuer(&console.oidc),
        cfg.issuer(&console.oidc).and_then(|i| i.client.as_ref()),
    ) else {
        return Err(StartError::Setup(format!(
            "console.oidc: no [[oidc]] entry {:?} with client_id",
            console.oidc
        )));
    };
    // The console reads its client secret through its own view of the vault.
    let vault = VaultCache::new(Vault::open(&cfg.gateway).map_err(setup("vault"))?);
    crate::console::Issuer::new(issuer, client, vault, console.link("/callback"))
        .map(Some)
        .map_err(setup("console.oidc"))
}

/// Approvals this instance held before a restart can never be released:
/// mark them abandoned (best effort; Redis may still be down).
fn abandon_stale_approvals(state: Arc<StateHandle>, instance: String) {
    tokio::spawn(async move {
        match state.get().await {
            Ok(s) => match s.approvals_abandon(&instance).await {
                Ok(0) => {}
                Ok(n) => info!(
                    count = n,
                    "marked approvals held before the restart as abandoned"
                ),
                Err(e) => warn!(error = %e, "cannot clean up stale approvals"),
            },
            Err(e) => {
                warn!(error = %e, "Redis unreachable at start; tokens and approvals fail closed until it is back")
            }
        }
    });
}

/// Forwards aya-log records from the eBPF programs to the log.
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

/// The accept queue asked for (listen(2) `backlog`; the kernel caps it at
/// `net.core.somaxconn`, 4096 by default since Linux 5.4). A burst of
/// agent connects that outruns the accept loop waits here instead of having
/// its SYNs dropped and retransmitted a second later.
const LISTEN_BACKLOG: u32 = 4096;

/// A listener on `addr` with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as
/// `TcpListener::bind` sets it).
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}
