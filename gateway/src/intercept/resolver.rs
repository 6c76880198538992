//! Turns the configured services and egress rules into map entries:
//! (address, port) → service, port-wide TLS/HTTP ports, and the egress allow
//! list (including the host's DNS resolvers from `/etc/resolv.conf`).
//!
//! Host names are resolved with the system resolver; the daemon re-runs this
//! every [`REFRESH`] so the maps follow DNS changes.
use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use super::maps::EgressRule;
use crate::config::{split_host_port_any, Config, Service};

/// How often names are re-resolved.
pub const REFRESH: Duration = Duration::from_secs(30);

/// Everything the eBPF maps need from the config at one point in time.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// (address, port) → index into `Config::services`.
    pub services: HashMap<SocketAddr, u32>,
    /// Ports that get the port-wide rule (http/https services).
    pub ports: HashSet<u16>,
    /// Egress allow list, DNS resolvers included.
    pub egress: HashSet<EgressRule>,
    /// Names that did not resolve, with the error, for logging.
    pub failures: Vec<(String, String)>,
}

/// The addresses of a service: its `resolve` pins, an IP literal, or DNS.
///
/// # Errors
/// The resolver's error when the name does not resolve.
pub async fn service_addrs(service: &Service) -> std::io::Result<Vec<IpAddr>> {
    if !service.resolve.is_empty() {
        return Ok(service.resolve.clone());
    }
    host_addrs(&service.host).await
}

async fn host_addrs(host: &str) -> std::io::Result<Vec<IpAddr>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let mut out: Vec<IpAddr> = tokio::net::lookup_host((host, 0))
        .await?
        .map(|sa| sa.ip())
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// Resolves every service and egress entry of `cfg`.
pub async fn resolve(cfg: &Config) -> Resolved {
    let mut r = Resolved::default();
    for (idx, s) in cfg.services.iter().enumerate() {
        match service_addrs(s).await {
            Ok(addrs) => {
                for ip in addrs {
                    r.services.insert(SocketAddr::new(ip, s.port), idx as u32);
                }
            }
            Err(e) => r.failures.push((s.host.clone(), e.to_string())),
        }
        if s.protocol().is_http() {
            r.ports.insert(s.port);
        }
    }
    for entry in &cfg.gateway.egress_allow {
        let Some((host, port)) = split_host_port_any(entry) else {
            continue;
        };
        match parse_cidr(&host) {
            Some((addr, prefix)) => {
                r.egress.insert(EgressRule { addr, prefix, port });
            }
            None => match host_addrs(&host).await {
                Ok(addrs) => r.egress.extend(addrs.into_iter().map(|addr| EgressRule {
                    addr,
                    prefix: full_prefix(addr),
                    port,
                })),
                Err(e) => r.failures.push((host, e.to_string())),
            },
        }
    }
    for addr in
        resolv_conf_nameservers(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default())
    {
        r.egress.insert(EgressRule {
            addr,
            prefix: full_prefix(addr),
            port: Some(53),
        });
    }
    r
}

fn full_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

/// Parses `a.b.c.d`, `a.b.c.d/n`, `v6` or `v6/n`.
fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (ip, prefix) = match s.split_once('/') {
        Some((ip, p)) => (ip.parse::<IpAddr>().ok()?, p.parse::<u8>().ok()?),
        None => {
            let ip = s.parse::<IpAddr>().ok()?;
            (ip, full_prefix(ip))
        }
    };
    (prefix <= full_prefix(ip)).then_some((ip, prefix))
}

/// `nameserver` addresses from resolv.conf(5) text.
fn resolv_conf_nameservers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| {
            rest.split_whitespace()
                .next()?
                .split('%')
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse() {
        assert_eq!(
            parse_cidr("10.0.0.0/8"),
            Some(("10.0.0.0".parse().unwrap(), 8))
        );
        assert_eq!(
            parse_cidr("127.0.0.53"),
            Some(("127.0.0.53".parse().unwrap(), 32))
        );
        assert_eq!(parse_cidr("10.0.0.0/33"), None);
        assert_eq!(parse_cidr("mirror.example.org"), None);
    }

    #[test]
    fn nameservers_parse() {
        let t = "# x\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\noptions edns0\n";
        assert_eq!(resolv_conf_nameservers(t).len(), 2);
    }
}
