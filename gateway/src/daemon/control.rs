//! The control loop: the one task that owns the loaded eBPF object and the
//! configuration maps. It keeps them in step with the config and DNS:
//!
//! - every [`resolver::REFRESH`], service and egress names are re-resolved;
//! - on SIGHUP the config file is re-read. Services, policies, agents and
//!   egress change without dropping open sessions (they read the new
//!   snapshot on their next request or statement). A config that does not
//!   load, or that changes what needs a restart (`listen`, `bpf_dir`,
//!   `state_dir`, `log_dir`, `redis_url`, `[[notify]]`), is refused and the old one keeps
//!   running; the log says why.
use std::{net::IpAddr, path::PathBuf, sync::Arc};

use aya::Ebpf;
use sluice_common::{GatewayConfig, EGRESS_ALLOW_ALL, EGRESS_DENY};
use tracing::{info, warn};

use crate::{
    config::{Config, Egress},
    intercept::{
        cgroup,
        maps::InterceptMaps,
        programs::{self, InterceptError},
        resolver::{self, Resolved},
    },
    proxy::{http::upstream::UpstreamClients, AgentTable, Gateway, Snapshot},
    vault::VaultCache,
};

/// What the control loop owns.
pub struct Control {
    pub ebpf: Ebpf,
    pub maps: InterceptMaps,
    pub mount: PathBuf,
    /// Sluice's network namespace cookie ([`crate::intercept::netns`]).
    pub netns_cookie: u64,
    /// The vault upstream client certificates are read from, at each
    /// handshake.
    pub client_certs: Arc<VaultCache>,
}

/// The listener, egress policy and Sluice's network namespace cookie
/// (`netns_cookie`) as the eBPF programs read them.
pub fn gateway_map_value(cfg: &Config, netns_cookie: u64) -> GatewayConfig {
    let listen4 = match cfg.gateway.listen.ip() {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(_) => unreachable!("config validation requires an IPv4 listener"),
    };
    GatewayConfig {
        listen4,
        listen6: std::net::Ipv6Addr::LOCALHOST.octets(),
        listen_port: cfg.gateway.listen.port(),
        egress: if cfg.gateway.egress == Egress::Deny {
            EGRESS_DENY
        } else {
            EGRESS_ALLOW_ALL
        },
        _pad: 0,
        netns_cookie,
    }
}

/// Writes resolved services, ports and egress rules into the maps.
///
/// # Errors
/// Map update failures.
pub fn apply(maps: &mut InterceptMaps, r: &Resolved) -> Result<(), InterceptError> {
    for (host, err) in &r.failures {
        warn!(%host, error = %err, "cannot resolve; its connections are not intercepted by address");
    }
    maps.sync_services(&r.services)?;
    maps.sync_port_rules(&r.ports)?;
    maps.sync_egress(&r.egress)
}

/// Creates every agent's cgroup and attaches the programs (agents that
/// `previous` had with the same cgroup are already attached and skipped),
/// then detaches agents no longer configured.
///
/// # Errors
/// cgroup creation, attach or pin failures.
pub fn attach_agents(
    ctl: &mut Control,
    cfg: &Config,
    previous: Option<&Config>,
) -> Result<(), String> {
    for agent in &cfg.agents {
        if previous.is_some_and(|p| {
            p.agents
                .iter()
                .any(|a| a.name == agent.name && a.cgroup == agent.cgroup)
        }) {
            continue;
        }
        let dir = cgroup::agent_dir(&ctl.mount, &agent.cgroup);
        cgroup::ensure(&dir).map_err(|e| format!("creating cgroup {}: {e}", dir.display()))?;
        programs::attach_agent(&mut ctl.ebpf, &cfg.gateway.bpf_dir, &agent.name, &dir)
            .map_err(|e| e.to_string())?;
        info!(agent = %agent.name, cgroup = %dir.display(), "attached");
    }
    let keep: Vec<&str> = cfg.agents.iter().map(|a| a.name.as_str()).collect();
    for gone in programs::detach_others(&cfg.gateway.bpf_dir, &keep).map_err(|e| e.to_string())? {
        info!(agent = %gone, "detached agent no longer in the config");
    }
    sync_redirects(ctl, cfg)
}

/// Writes each agent's `redirect` under its cgroup id, so connections
/// from containers below it go there; agents without one are removed
/// (their containers' connections are refused).
fn sync_redirects(ctl: &mut Control, cfg: &Config) -> Result<(), String> {
    let mut wanted = std::collections::HashMap::new();
    for agent in &cfg.agents {
        let Some(to) = agent.redirect else { continue };
        let dir = cgroup::agent_dir(&ctl.mount, &agent.cgroup);
        let id = cgroup::id(&dir).map_err(|e| format!("cgroup {}: {e}", dir.display()))?;
        wanted.insert(id, to);
    }
    ctl.maps.sync_redirects(&wanted).map_err(|e| e.to_string())
}

/// Builds a snapshot for `cfg` (agents must be attached already).
///
/// # Errors
/// A message when agent cgroups or upstream TLS settings are unusable.
pub fn snapshot(cfg: Arc<Config>, ctl: &Control, routes: Resolved) -> Result<Snapshot, String> {
    let agents = AgentTable::new(&cfg, &ctl.mount).map_err(|e| format!("agent cgroups: {e}"))?;
    let http =
        UpstreamClients::new(&cfg, &ctl.client_certs).map_err(|e| format!("upstream TLS: {e}"))?;
    Ok(Snapshot {
        cfg,
        agents: Arc::new(agents),
        routes: Arc::new(routes),
        http: Arc::new(http),
    })
}

/// Keys that only take effect on restart.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let (o, n) = (&old.gateway, &new.gateway);
    let mut out = Vec::new();
    if o.listen != n.listen {
        out.push("gateway.listen");
    }
    if o.bpf_dir != n.bpf_dir {
        out.push("gateway.bpf_dir");
    }
    if o.state_dir != n.state_dir {
        out.push("gateway.state_dir");
    }
    if o.log_dir != n.log_dir {
        out.push("gateway.log_dir");
    }
    if o.redis_url != n.redis_url || o.redis_password_file != n.redis_password_file {
        out.push("gateway.redis_url");
    }
    if old.notify != new.notify {
        out.push("notify");
    }
    if old.redirect_addrs() != new.redirect_addrs() {
        out.push("agent.redirect (the set of addresses listened on)");
    }
    out
}

/// Re-reads the config at `path` and applies it; on any error the old
/// config stays in force.
///
/// # Errors
/// One line saying what is wrong with the new config.
pub async fn reload(gw: &Gateway, ctl: &mut Control, path: &std::path::Path) -> Result<(), String> {
    let new = Config::load(path).map_err(|e| e.to_string())?;
    let old = gw.snapshot().cfg.clone();
    let blocked = restart_only_changes(&old, &new);
    if !blocked.is_empty() {
        return Err(format!(
            "{} changed; restart sluice to apply",
            blocked.join(", ")
        ));
    }
    // Build everything that can fail before touching the kernel.
    UpstreamClients::new(&new, &ctl.client_certs).map_err(|e| format!("upstream TLS: {e}"))?;
    attach_agents(ctl, &new, Some(&old))?;
    ctl.maps
        .set_gateway(gateway_map_value(&new, ctl.netns_cookie))
        .map_err(|e| e.to_string())?;
    let routes = resolver::resolve(&new).await;
    apply(&mut ctl.maps, &routes).map_err(|e| e.to_string())?;
    let new = Arc::new(new);
    let snap = snapshot(new.clone(), ctl, routes)?;
    gw.replace(snap);
    info!(
        agents = new.agents.len(),
        services = new.services.len(),
        "config reloaded"
    );
    Ok(())
}

/// Runs the control loop until the process ends; `hup` is the SIGHUP stream.
pub async fn run(
    gw: Arc<Gateway>,
    mut ctl: Control,
    path: PathBuf,
    mut hup: tokio::signal::unix::Signal,
) {
    let mut tick = tokio::time::interval(resolver::REFRESH);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                if let Err(e) = reload(&gw, &mut ctl, &path).await {
                    warn!(error = %e, "reload refused; the previous config keeps running");
                }
            }
            _ = tick.tick() => {
                let snap = gw.snapshot();
                let fresh = resolver::resolve(&snap.cfg).await;
                if *snap.routes == fresh {
                    continue;
                }
                match apply(&mut ctl.maps, &fresh) {
                    Ok(()) => gw.replace(Snapshot {
                        cfg: snap.cfg.clone(),
                        agents: snap.agents.clone(),
                        routes: Arc::new(fresh),
                        http: snap.http.clone(),
                    }),
                    Err(e) => warn!(error = %e, "updating service maps failed"),
                }
            }
        }
    }
}
