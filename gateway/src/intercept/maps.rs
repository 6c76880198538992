//! Typed handles on the pinned maps shared with the eBPF programs.
//!
//! Keys and values are the `#[repr(C)]` types of `sluice-common`. All
//! addresses are 16 bytes (IPv4 as IPv4-mapped), network byte order; ports
//! are host byte order except [`EgressKey::port_be`].
use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    sync::Mutex,
};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData},
    Ebpf,
};
use sluice_common::{
    map_names, v4_mapped, EgressKey, FourTuple, GatewayConfig, OriginalDst, Redirect, ServiceKey,
    EGRESS_PORT_BITS, PORT_RULE_REDIRECT,
};

use super::programs::InterceptError;

/// An address in the 16-byte form the maps use.
pub fn addr16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Converts a 16-byte map address back, unmapping IPv4-mapped addresses.
pub fn ip_of(addr: [u8; 16]) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(addr);
    v6.to_ipv4_mapped()
        .map(IpAddr::V4)
        .unwrap_or(IpAddr::V6(v6))
}

/// One egress allow-list entry: a CIDR and a port (`None` = any port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EgressRule {
    pub addr: IpAddr,
    /// Prefix length in bits of `addr` (32 max for IPv4, 128 for IPv6).
    pub prefix: u8,
    pub port: Option<u16>,
}

impl EgressRule {
    fn key(&self) -> Key<EgressKey> {
        let addr_bits = match self.addr {
            IpAddr::V4(_) => 96 + u32::from(self.prefix.min(32)),
            IpAddr::V6(_) => u32::from(self.prefix.min(128)),
        };
        Key::new(
            EGRESS_PORT_BITS + addr_bits,
            EgressKey {
                port_be: self.port.unwrap_or(0).to_be_bytes(),
                addr: addr16(self.addr),
            },
        )
    }
}

/// The maps Sluice writes (configuration) and reads (original destinations).
pub struct InterceptMaps {
    gateway: Array<MapData, GatewayConfig>,
    services: HashMap<MapData, ServiceKey, u32>,
    port_rules: HashMap<MapData, u16, u8>,
    egress: LpmTrie<MapData, EgressKey, u8>,
    redirects: HashMap<MapData, u64, Redirect>,
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, InterceptError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(InterceptError::MissingMap(name))?;
    T::try_from(map).map_err(|source| InterceptError::Map { name, source })
}

impl InterceptMaps {
    /// Takes the maps out of a loaded object: the configuration maps, written
    /// when services, DNS or config change, and the 4-tuple lookup used on
    /// the accept path.
    ///
    /// # Errors
    /// A map missing from the object or of an unexpected type.
    pub fn take(ebpf: &mut Ebpf) -> Result<(Self, TupleLookup), InterceptError> {
        let maps = Self {
            gateway: take(ebpf, map_names::GATEWAY)?,
            services: take(ebpf, map_names::SERVICES)?,
            port_rules: take(ebpf, map_names::PORT_RULES)?,
            egress: take(ebpf, map_names::EGRESS_ALLOW)?,
            redirects: take(ebpf, map_names::AGENT_REDIRECT)?,
        };
        Ok((
            maps,
            TupleLookup {
                tuples: Mutex::new(take(ebpf, map_names::TUPLE_DST)?),
            },
        ))
    }

    /// Writes the listener and egress policy.
    ///
    /// # Errors
    /// The map update failure.
    pub fn set_gateway(&mut self, cfg: GatewayConfig) -> Result<(), InterceptError> {
        self.gateway
            .set(0, cfg, 0)
            .map_err(|source| InterceptError::Map {
                name: map_names::GATEWAY,
                source,
            })
    }

    /// Makes the (address, port) service map equal to `wanted` (value = service index).
    ///
    /// # Errors
    /// Map update failures.
    pub fn sync_services(
        &mut self,
        wanted: &std::collections::HashMap<SocketAddr, u32>,
    ) -> Result<(), InterceptError> {
        let err = |source| InterceptError::Map {
            name: map_names::SERVICES,
            source,
        };
        let wanted: std::collections::HashMap<ServiceKey, u32> = wanted
            .iter()
            .map(|(sa, idx)| {
                (
                    ServiceKey {
                        addr: addr16(sa.ip()),
                        port: sa.port(),
                        _pad: [0; 2],
                    },
                    *idx,
                )
            })
            .collect();
        let stale: Vec<ServiceKey> = self
            .services
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.contains_key(k))
            .collect();
        for (k, v) in &wanted {
            self.services.insert(k, v, 0).map_err(err)?;
        }
        for k in stale {
            self.services.remove(&k).map_err(err)?;
        }
        Ok(())
    }

    /// Makes the port-wide rule map equal to `ports`.
    ///
    /// # Errors
    /// Map update failures.
    pub fn sync_port_rules(&mut self, ports: &HashSet<u16>) -> Result<(), InterceptError> {
        let err = |source| InterceptError::Map {
            name: map_names::PORT_RULES,
            source,
        };
        let stale: Vec<u16> = self
            .port_rules
            .keys()
            .filter_map(Result::ok)
            .filter(|p| !ports.contains(p))
            .collect();
        for p in ports {
            self.port_rules
                .insert(p, PORT_RULE_REDIRECT, 0)
                .map_err(err)?;
        }
        for p in stale {
            self.port_rules.remove(&p).map_err(err)?;
        }
        Ok(())
    }

    /// Makes the egress allow list equal to `rules`.
    ///
    /// # Errors
    /// Map update failures.
    pub fn sync_egress(&mut self, rules: &HashSet<EgressRule>) -> Result<(), InterceptError> {
        let err = |source| InterceptError::Map {
            name: map_names::EGRESS_ALLOW,
            source,
        };
        let wanted: Vec<Key<EgressKey>> = rules.iter().map(EgressRule::key).collect();
        let same = |a: &Key<EgressKey>, b: &Key<EgressKey>| {
            a.prefix_len() == b.prefix_len() && a.data() == b.data()
        };
        let stale: Vec<Key<EgressKey>> = self
            .egress
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.iter().any(|w| same(w, k)))
            .collect();
        for k in &wanted {
            self.egress.insert(k, 1, 0).map_err(err)?;
        }
        for k in stale {
            self.egress.remove(&k).map_err(err)?;
        }
        Ok(())
    }
}

impl InterceptMaps {
    /// Makes the agent redirect map equal to `wanted`: agent cgroup id →
    /// the `redirect` address its containers' connections go to.
    ///
    /// # Errors
    /// Map update failures.
    pub fn sync_redirects(
        &mut self,
        wanted: &std::collections::HashMap<u64, SocketAddr>,
    ) -> Result<(), InterceptError> {
        let err = |source| InterceptError::Map {
            name: map_names::AGENT_REDIRECT,
            source,
        };
        let stale: Vec<u64> = self
            .redirects
            .keys()
            .filter_map(Result::ok)
            .filter(|id| !wanted.contains_key(id))
            .collect();
        for (id, to) in wanted {
            let value = Redirect {
                addr: addr16(to.ip()),
                port: to.port(),
                _pad: [0; 2],
            };
            self.redirects.insert(id, value, 0).map_err(err)?;
        }
        for id in stale {
            self.redirects.remove(&id).map_err(err)?;
        }
        Ok(())
    }
}

/// Looks up accepted connections' original destinations.
pub struct TupleLookup {
    /// Locked for one lookup and delete (two map syscalls), never across
    /// an `.await`.
    tuples: Mutex<HashMap<MapData, FourTuple, OriginalDst>>,
}

impl TupleLookup {
    /// The original destination and agent identity of the connection whose
    /// agent-side end is `peer` and which arrived at `local`, removing its
    /// entry: each connection is read once, and the map (an LRU the eBPF
    /// side also prunes at close) does not fill with connections Sluice
    /// already holds. (`getpeername` in the agent uses the socket-cookie
    /// map, not this one.)
    pub fn take_original_dst(&self, peer: SocketAddr, local: SocketAddr) -> Option<OriginalDst> {
        let key = FourTuple {
            src_addr: addr16(peer.ip()),
            dst_addr: addr16(local.ip()),
            src_port: peer.port(),
            dst_port: local.port(),
        };
        let mut tuples = self.tuples.lock().unwrap_or_else(|p| p.into_inner());
        let found = tuples.get(&key, 0).ok()?;
        let _ = tuples.remove(&key);
        Some(found)
    }

    /// Number of tracked connections (for diagnostics).
    pub fn len(&self) -> usize {
        self.tuples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .count()
    }

    /// True when no connection is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
