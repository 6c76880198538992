//! Map keys and values shared by Sluice's eBPF programs (`ebpf/`) and the
//! `sluice` daemon (`gateway/`).
//!
//! Every type is `#[repr(C)]`, `Copy`, and free of implicit padding, so the
//! kernel and userspace agree on its bytes. Addresses are always 16 bytes:
//! IPv4 addresses are stored in their IPv4-mapped IPv6 form
//! (`::ffff:a.b.c.d`, RFC 4291 §2.5.5.2), so one map serves `connect4`,
//! `connect6` and dual-stack sockets alike. Address bytes are in network byte
//! order; ports are in host byte order unless a field says otherwise.
#![no_std]

/// Names of the maps, as pinned under the bpffs directory
/// (`/sys/fs/bpf/sluice/` by default).
pub mod map_names {
    /// [`crate::GatewayConfig`] at index 0.
    pub const GATEWAY: &str = "SLUICE_GATEWAY";
    /// [`crate::ServiceKey`] → service index (`u32`).
    pub const SERVICES: &str = "SLUICE_SERVICES";
    /// Destination port (`u16`, host byte order) → [`crate::PORT_RULE_REDIRECT`].
    pub const PORT_RULES: &str = "SLUICE_PORT_RULES";
    /// LPM trie of [`crate::EgressKey`] → `u8` (1 = allowed).
    pub const EGRESS_ALLOW: &str = "SLUICE_EGRESS_ALLOW";
    /// Socket cookie (`u64`) → [`crate::OriginalDst`], written by connect4/6.
    pub const COOKIE_DST: &str = "SLUICE_COOKIE_DST";
    /// [`crate::FourTuple`] → [`crate::OriginalDst`], written by sock_ops.
    pub const TUPLE_DST: &str = "SLUICE_TUPLE_DST";
    /// Agent cgroup id (`u64`) → [`crate::Redirect`]: where connections
    /// made in another network namespace (a container) below that agent
    /// cgroup go. Only agents with `redirect` have an entry.
    pub const AGENT_REDIRECT: &str = "SLUICE_AGENT_REDIRECT";
}

/// Value stored in the port-rule map: every TCP connection to this port is
/// redirected and routed by SNI or `Host`.
pub const PORT_RULE_REDIRECT: u8 = 1;

/// Maximum entries of the connection-tracking LRU maps.
pub const MAX_TRACKED_CONNECTIONS: u32 = 65_536;
/// Maximum (address, port) service entries.
pub const MAX_SERVICE_ENTRIES: u32 = 4_096;
/// Maximum egress allow-list entries.
pub const MAX_EGRESS_ENTRIES: u32 = 1_024;
/// Maximum agents with a `redirect` address.
pub const MAX_REDIRECT_AGENTS: u32 = 1_024;
/// cgroup v2 levels below the root searched for an agent cgroup with a
/// `redirect` (level 1 is a child of the root). A container's cgroup may
/// sit anywhere up to this depth below it.
pub const MAX_CGROUP_LEVEL: i32 = 32;

/// Egress policy carried in [`GatewayConfig::egress`].
pub const EGRESS_ALLOW_ALL: u8 = 0;
/// Egress policy: everything that is not a service, DNS or allow-listed gets
/// `EPERM`.
pub const EGRESS_DENY: u8 = 1;

/// Where redirected connections land and what to do with unmatched traffic.
/// Stored at index 0 of the one-element array map [`map_names::GATEWAY`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GatewayConfig {
    /// The IPv4 listener, network byte order (e.g. `127.0.0.1`).
    pub listen4: [u8; 4],
    /// The IPv6 listener, network byte order (e.g. `::1`).
    pub listen6: [u8; 16],
    /// The listener port, host byte order. 0 means "not configured": the
    /// programs then refuse every intercepted connection (fail closed).
    pub listen_port: u16,
    /// [`EGRESS_DENY`] or [`EGRESS_ALLOW_ALL`].
    pub egress: u8,
    pub _pad: u8,
    /// The cookie of Sluice's network namespace (`SO_NETNS_COOKIE`, the
    /// value `bpf_get_netns_cookie()` returns there). A connection made in
    /// any other namespace is sent to its agent's [`Redirect`], or refused
    /// when the agent has none. 0 when unknown (kernel < 5.14, and no agent
    /// has a `redirect`): every connection then goes to the listener, which
    /// a container does not reach (its own loopback), so it fails closed.
    pub netns_cookie: u64,
}

/// Where an agent's connections from another network namespace (its
/// containers) are sent: an address of this host they can reach, on which
/// Sluice also listens. Value of [`map_names::AGENT_REDIRECT`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Redirect {
    /// IPv6 or IPv4-mapped address, network byte order. An IPv4 address
    /// serves IPv4 (and IPv4-mapped) connections only, an IPv6 one native
    /// IPv6 only; the other family is refused.
    pub addr: [u8; 16],
    /// Port, host byte order.
    pub port: u16,
    pub _pad: [u8; 2],
}

/// Key of the (address, port) service map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// IPv6 or IPv4-mapped address, network byte order.
    pub addr: [u8; 16],
    /// Destination port, host byte order.
    pub port: u16,
    pub _pad: [u8; 2],
}

/// Data part of an egress LPM-trie key. The prefix length counts bits from
/// the start of this struct: 16 bits of port, then up to 128 bits of address.
/// A port of 0 stands for "any port".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EgressKey {
    /// Destination port, **network** byte order (so it sorts as a prefix).
    pub port_be: [u8; 2],
    /// IPv6 or IPv4-mapped address, network byte order.
    pub addr: [u8; 16],
}

/// Bits of an [`EgressKey`] covered by its port.
pub const EGRESS_PORT_BITS: u32 = 16;

/// The destination an agent dialled and who dialled it, recorded by
/// `connect4`/`connect6` at `connect()` time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OriginalDst {
    /// IPv6 or IPv4-mapped address the agent dialled, network byte order.
    pub addr: [u8; 16],
    /// Port the agent dialled, host byte order.
    pub port: u16,
    /// 1 when the agent dialled an IPv4 (or IPv4-mapped) address.
    pub is_v4: u8,
    pub _pad: u8,
    /// Thread-group id (the process id) that called `connect()`.
    pub pid: u32,
    /// Real uid of that process.
    pub uid: u32,
    /// Padding to align `cgroup_id`.
    pub _pad2: u32,
    /// cgroup v2 id (the inode number of the cgroup directory) of the
    /// process: the agent cgroup or a container's cgroup below it.
    pub cgroup_id: u64,
    /// Cookie of the network namespace the socket was made in
    /// (`bpf_get_netns_cookie`); differs from
    /// [`GatewayConfig::netns_cookie`] for a container.
    pub netns_cookie: u64,
}

/// A TCP connection's 4-tuple as the agent's socket sees it: `src` is the
/// agent's local end, `dst` is Sluice's listener. Addresses are IPv6 or
/// IPv4-mapped, network byte order; ports are host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FourTuple {
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
}

/// Returns the IPv4-mapped IPv6 form (`::ffff:a.b.c.d`) of an IPv4 address
/// given in network byte order.
pub const fn v4_mapped(v4: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

/// True when `addr` is an IPv4-mapped IPv6 address.
pub const fn is_v4_mapped(addr: &[u8; 16]) -> bool {
    addr[0] == 0
        && addr[1] == 0
        && addr[2] == 0
        && addr[3] == 0
        && addr[4] == 0
        && addr[5] == 0
        && addr[6] == 0
        && addr[7] == 0
        && addr[8] == 0
        && addr[9] == 0
        && addr[10] == 0xff
        && addr[11] == 0xff
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], Copy, contain only integers and
    // byte arrays, and have no implicit padding (explicit `_pad` fields).
    unsafe impl aya::Pod for super::GatewayConfig {}
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::EgressKey {}
    unsafe impl aya::Pod for super::OriginalDst {}
    unsafe impl aya::Pod for super::FourTuple {}
    unsafe impl aya::Pod for super::Redirect {}
}
