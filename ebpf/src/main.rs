//! Sluice's cgroup v2 eBPF programs.
//!
//! Attached only to the agent cgroups named in the config, never to the
//! cgroup2 root:
//!
//! - `cgroup/connect4`, `cgroup/connect6` (kernel ≥ 4.17): a TCP `connect()`
//!   to a service (address, port) or to a port-wide TLS/HTTP port is rewritten
//!   to Sluice's listener, and the original destination plus the caller's
//!   identity (pid, uid, cgroup id, netns cookie) is stored under the socket
//!   cookie. Under `egress = "deny"` everything else that is not allow-listed
//!   gets `EPERM`. A connection made in a network namespace other than
//!   Sluice's (a container, whose `127.0.0.1` is its own; kernel ≥ 5.7 for
//!   `bpf_get_netns_cookie` and `bpf_get_current_ancestor_cgroup_id` here)
//!   goes to the `redirect` address of the agent whose cgroup is an ancestor
//!   of the caller's, and is refused when that agent has none.
//! - `cgroup/sendmsg4`, `cgroup/sendmsg6` (kernel ≥ 4.18): the same egress
//!   decision for unconnected UDP; UDP to a service is always refused since
//!   Sluice proxies only TCP.
//! - `sockops` (kernel ≥ 4.13, state callbacks ≥ 4.16): at
//!   `ACTIVE_ESTABLISHED` the cookie entry is copied to a map keyed by the
//!   full 4-tuple, which the proxy looks up for each accepted connection; at
//!   `TCP_CLOSE` both entries are deleted.
//! - `cgroup/getpeername4`, `cgroup/getpeername6` (kernel ≥ 5.8): the agent
//!   sees the peer it dialled, not the listener.
//! - `cgroup/sock_create` (kernel ≥ 4.10): an IPv4/IPv6 socket may be created
//!   only for TCP, MPTCP or UDP, the protocols whose `connect()`/`sendmsg()`
//!   run the hooks above. UDP-Lite, ICMP "ping" sockets, SCTP and raw IP
//!   sockets never reach `cgroup/connect*` or `cgroup/sendmsg*`, so under
//!   `egress = "deny"` they get `EPERM` at `socket()`.
//!
//! See bpf(2), `Documentation/bpf/prog_cgroup_sockopt.rst` and
//! `include/uapi/linux/bpf.h` (`struct bpf_sock_addr`, `struct bpf_sock_ops`).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_TCP_CLOSE,
    },
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{
            bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_netns_cookie,
            bpf_get_socket_cookie,
        },
    },
    macros::{cgroup_sock, cgroup_sock_addr, map, sock_ops},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap},
    programs::{SockAddrContext, SockContext, SockOpsContext},
    EbpfContext,
};
use aya_log_ebpf::debug;
use sluice_common::{
    is_v4_mapped, v4_mapped, EgressKey, FourTuple, GatewayConfig, OriginalDst, Redirect,
    ServiceKey, EGRESS_DENY, EGRESS_PORT_BITS, MAX_CGROUP_LEVEL, MAX_EGRESS_ENTRIES,
    MAX_REDIRECT_AGENTS, MAX_SERVICE_ENTRIES, MAX_TRACKED_CONNECTIONS,
};

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
const IPPROTO_MPTCP: u32 = 262;

#[map(name = "SLUICE_GATEWAY")]
static GATEWAY: Array<GatewayConfig> = Array::pinned(1, 0);

#[map(name = "SLUICE_SERVICES")]
static SERVICES: HashMap<ServiceKey, u32> = HashMap::pinned(MAX_SERVICE_ENTRIES, 0);

#[map(name = "SLUICE_PORT_RULES")]
static PORT_RULES: HashMap<u16, u8> = HashMap::pinned(1024, 0);

#[map(name = "SLUICE_EGRESS_ALLOW")]
static EGRESS_ALLOW: LpmTrie<EgressKey, u8> = LpmTrie::pinned(MAX_EGRESS_ENTRIES, 0);

#[map(name = "SLUICE_COOKIE_DST")]
static COOKIE_DST: LruHashMap<u64, OriginalDst> = LruHashMap::pinned(MAX_TRACKED_CONNECTIONS, 0);

#[map(name = "SLUICE_TUPLE_DST")]
static TUPLE_DST: LruHashMap<FourTuple, OriginalDst> =
    LruHashMap::pinned(MAX_TRACKED_CONNECTIONS, 0);

#[map(name = "SLUICE_AGENT_REDIRECT")]
static AGENT_REDIRECT: HashMap<u64, Redirect> = HashMap::pinned(MAX_REDIRECT_AGENTS, 0);

/// What a `connect()`/`sendmsg()` destination is to Sluice.
enum Decision {
    /// A service or port-wide rule: send it to the listener.
    Redirect,
    /// Already aimed at the listener, DNS, allow-listed, or egress allow.
    Pass,
    /// Refused with `EPERM`.
    Refuse,
}

#[inline(always)]
fn gateway() -> Option<&'static GatewayConfig> {
    GATEWAY.get(0)
}

#[inline(always)]
fn egress_allowed(addr: &[u8; 16], port: u16) -> bool {
    let full = EGRESS_PORT_BITS + 128;
    let exact = Key::new(
        full,
        EgressKey {
            port_be: port.to_be_bytes(),
            addr: *addr,
        },
    );
    if EGRESS_ALLOW.get(&exact).is_some() {
        return true;
    }
    let any_port = Key::new(
        full,
        EgressKey {
            port_be: [0, 0],
            addr: *addr,
        },
    );
    EGRESS_ALLOW.get(&any_port).is_some()
}

#[inline(always)]
fn decide(gw: &GatewayConfig, addr: &[u8; 16], port: u16, is_stream: bool) -> Decision {
    let at_listener =
        port == gw.listen_port && (*addr == v4_mapped(gw.listen4) || *addr == gw.listen6);
    if at_listener {
        return Decision::Pass;
    }
    let key = ServiceKey {
        addr: *addr,
        port,
        _pad: [0; 2],
    };
    let intercepted = unsafe { SERVICES.get(&key).is_some() || PORT_RULES.get(&port).is_some() };
    if intercepted {
        // Sluice proxies TCP only; a datagram to a service never leaves.
        return if is_stream {
            Decision::Redirect
        } else {
            Decision::Refuse
        };
    }
    // DNS resolvers are put in the allow list by userspace.
    if gw.egress != EGRESS_DENY || egress_allowed(addr, port) {
        Decision::Pass
    } else {
        Decision::Refuse
    }
}

#[inline(always)]
fn remember(ctx: &SockAddrContext, addr: [u8; 16], port: u16, netns_cookie: u64) -> bool {
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let uid = bpf_get_current_uid_gid() as u32;
    let dst = OriginalDst {
        addr,
        port,
        is_v4: is_v4_mapped(&addr) as u8,
        _pad: 0,
        pid,
        uid,
        _pad2: 0,
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        netns_cookie,
    };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    COOKIE_DST.insert(&cookie, &dst, 0).is_ok()
}

/// The `redirect` of the agent whose cgroup is the caller's or one of its
/// ancestors (the shallowest one that has an entry).
#[inline(always)]
fn agent_redirect() -> Option<&'static Redirect> {
    let mut level = 1;
    while level <= MAX_CGROUP_LEVEL {
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 {
            return None;
        }
        if let Some(r) = unsafe { AGENT_REDIRECT.get(&id) } {
            return Some(r);
        }
        level += 1;
    }
    None
}

/// Where a redirected connection lands, as (16-byte address, port), and
/// the cookie of the namespace it was made in. `v4` is true for IPv4 and
/// IPv4-mapped destinations. In Sluice's own network namespace: the
/// listener. In another one: the agent's `redirect` of the same family.
/// `None` (refuse) when there is no such target.
#[inline(always)]
fn landing(ctx: &SockAddrContext, gw: &GatewayConfig, v4: bool) -> Option<([u8; 16], u16, u64)> {
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // 0: the daemon could not read its cookie (kernel < 5.14), and every
    // connection goes to the listener as before containers were handled.
    if gw.netns_cookie == 0 || netns == gw.netns_cookie {
        if gw.listen_port == 0 {
            return None;
        }
        let addr = if v4 {
            v4_mapped(gw.listen4)
        } else {
            gw.listen6
        };
        return Some((addr, gw.listen_port, netns));
    }
    let r = agent_redirect()?;
    if r.port == 0 || is_v4_mapped(&r.addr) != v4 {
        return None;
    }
    Some((r.addr, r.port, netns))
}

#[inline(always)]
fn read_ip6(ctx: &SockAddrContext) -> [u8; 16] {
    let words = unsafe {
        let sa = &*ctx.sock_addr;
        [
            sa.user_ip6[0],
            sa.user_ip6[1],
            sa.user_ip6[2],
            sa.user_ip6[3],
        ]
    };
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = words[i].to_ne_bytes();
        out[i * 4] = b[0];
        out[i * 4 + 1] = b[1];
        out[i * 4 + 2] = b[2];
        out[i * 4 + 3] = b[3];
        i += 1;
    }
    out
}

#[inline(always)]
fn write_ip6(ctx: &SockAddrContext, addr: &[u8; 16]) {
    let sa = unsafe { &mut *ctx.sock_addr };
    sa.user_ip6[0] = u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]);
    sa.user_ip6[1] = u32::from_ne_bytes([addr[4], addr[5], addr[6], addr[7]]);
    sa.user_ip6[2] = u32::from_ne_bytes([addr[8], addr[9], addr[10], addr[11]]);
    sa.user_ip6[3] = u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]]);
}

#[inline(always)]
fn user_port(ctx: &SockAddrContext) -> u16 {
    // `user_port` holds a __be16 in the low 16 bits of a u32.
    u16::from_be(unsafe { (*ctx.sock_addr).user_port } as u16)
}

#[inline(always)]
fn set_user_port(ctx: &SockAddrContext, port: u16) {
    unsafe { (*ctx.sock_addr).user_port = port.to_be() as u32 };
}

#[inline(always)]
fn is_stream(ctx: &SockAddrContext) -> bool {
    unsafe { (*ctx.sock_addr).type_ == SOCK_STREAM }
}

/// connect4/sendmsg4: `redirect` is false for sendmsg, which never rewrites.
#[inline(always)]
fn handle4(ctx: &SockAddrContext, redirect: bool) -> i32 {
    let Some(gw) = gateway() else { return REFUSE };
    let ip = unsafe { (*ctx.sock_addr).user_ip4 }.to_ne_bytes();
    let addr = v4_mapped(ip);
    let port = user_port(ctx);
    match decide(gw, &addr, port, is_stream(ctx) && redirect) {
        Decision::Pass => ALLOW,
        Decision::Refuse => {
            debug!(
                ctx,
                "sluice: refused {}.{}.{}.{}:{}", ip[0], ip[1], ip[2], ip[3], port
            );
            REFUSE
        }
        Decision::Redirect => {
            let Some((to, to_port, netns)) = landing(ctx, gw, true) else {
                return REFUSE;
            };
            if !remember(ctx, addr, port, netns) {
                return REFUSE;
            }
            unsafe {
                (*ctx.sock_addr).user_ip4 = u32::from_ne_bytes([to[12], to[13], to[14], to[15]])
            };
            set_user_port(ctx, to_port);
            ALLOW
        }
    }
}

/// connect6/sendmsg6, IPv4-mapped destinations included.
#[inline(always)]
fn handle6(ctx: &SockAddrContext, redirect: bool) -> i32 {
    let Some(gw) = gateway() else { return REFUSE };
    let addr = read_ip6(ctx);
    let port = user_port(ctx);
    match decide(gw, &addr, port, is_stream(ctx) && redirect) {
        Decision::Pass => ALLOW,
        Decision::Refuse => {
            debug!(ctx, "sluice: refused v6 port {}", port);
            REFUSE
        }
        Decision::Redirect => {
            // A dual-stack socket dialling a v4 service goes to the v4
            // listener (or redirect) through its mapped form; native v6
            // goes to listen6 (or an IPv6 redirect).
            let Some((to, to_port, netns)) = landing(ctx, gw, is_v4_mapped(&addr)) else {
                return REFUSE;
            };
            if !remember(ctx, addr, port, netns) {
                return REFUSE;
            }
            write_ip6(ctx, &to);
            set_user_port(ctx, to_port);
            ALLOW
        }
    }
}

#[cgroup_sock_addr(connect4)]
pub fn sluice_connect4(ctx: SockAddrContext) -> i32 {
    handle4(&ctx, true)
}

#[cgroup_sock_addr(connect6)]
pub fn sluice_connect6(ctx: SockAddrContext) -> i32 {
    handle6(&ctx, true)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sluice_sendmsg4(ctx: SockAddrContext) -> i32 {
    handle4(&ctx, false)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sluice_sendmsg6(ctx: SockAddrContext) -> i32 {
    handle6(&ctx, false)
}

#[inline(always)]
fn original_for_socket(ctx: &SockAddrContext) -> Option<&'static OriginalDst> {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    unsafe { COOKIE_DST.get(&cookie) }
}

#[cgroup_sock_addr(getpeername4)]
pub fn sluice_getpeername4(ctx: SockAddrContext) -> i32 {
    if let Some(dst) = original_for_socket(&ctx) {
        if dst.is_v4 == 1 {
            let a = &dst.addr;
            unsafe { (*ctx.sock_addr).user_ip4 = u32::from_ne_bytes([a[12], a[13], a[14], a[15]]) };
            set_user_port(&ctx, dst.port);
        }
    }
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn sluice_getpeername6(ctx: SockAddrContext) -> i32 {
    if let Some(dst) = original_for_socket(&ctx) {
        let addr = dst.addr;
        let port = dst.port;
        write_ip6(&ctx, &addr);
        set_user_port(&ctx, port);
    }
    ALLOW
}

/// `socket(AF_INET | AF_INET6, …)` in an agent cgroup: allowed only for the
/// protocols the connect/sendmsg hooks see. The kernel runs this hook from
/// `inet_create`/`inet6_create` after resolving protocol 0 to the type's
/// default (`SOCK_STREAM` → TCP, `SOCK_DGRAM` → UDP), so `protocol` is
/// never 0 here for a socket that could send anything. Sockets the kernel
/// creates for itself (MPTCP subflows) do not run it. Other families
/// (`AF_UNIX`, `AF_NETLINK`, `AF_PACKET` which needs `CAP_NET_RAW`) pass.
#[cgroup_sock(sock_create)]
pub fn sluice_sock_create(ctx: SockContext) -> i32 {
    let (family, kind, protocol) = unsafe {
        (
            core::ptr::read_volatile(core::ptr::addr_of!((*ctx.sock).family)),
            core::ptr::read_volatile(core::ptr::addr_of!((*ctx.sock).type_)),
            core::ptr::read_volatile(core::ptr::addr_of!((*ctx.sock).protocol)),
        )
    };
    if family != AF_INET && family != AF_INET6 {
        return ALLOW;
    }
    match (kind, protocol) {
        (SOCK_STREAM, IPPROTO_TCP | IPPROTO_MPTCP) | (SOCK_DGRAM, IPPROTO_UDP) => ALLOW,
        // With `egress = "allow"` nothing but services is fenced, and no
        // service speaks these protocols. Without the config: fail closed.
        _ if gateway().is_some_and(|gw| gw.egress != EGRESS_DENY) => ALLOW,
        _ => REFUSE,
    }
}

/// Reads one `u32` field of `struct bpf_sock_ops` with a single load at a
/// constant offset: the verifier rejects loads through a modified context
/// pointer, which the optimiser would otherwise produce when branches share
/// a field read.
macro_rules! ops_field {
    ($ctx:expr, $($field:tt)+) => {
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*$ctx.ops).$($field)+)) }
    };
}

#[inline(always)]
fn tuple_of(ctx: &SockOpsContext) -> FourTuple {
    let family = ops_field!(ctx, family);
    let local4 = ops_field!(ctx, local_ip4);
    let remote4 = ops_field!(ctx, remote_ip4);
    let local6 = [
        ops_field!(ctx, local_ip6[0]),
        ops_field!(ctx, local_ip6[1]),
        ops_field!(ctx, local_ip6[2]),
        ops_field!(ctx, local_ip6[3]),
    ];
    let remote6 = [
        ops_field!(ctx, remote_ip6[0]),
        ops_field!(ctx, remote_ip6[1]),
        ops_field!(ctx, remote_ip6[2]),
        ops_field!(ctx, remote_ip6[3]),
    ];
    // local_port is host byte order; remote_port is a __be16 shifted into
    // the high half of a u32 on little-endian hosts (see bpf_sock_ops docs).
    let src_port = ops_field!(ctx, local_port) as u16;
    let raw_remote = ops_field!(ctx, remote_port);
    let dst_port = if raw_remote > 0xffff {
        u16::from_be((raw_remote >> 16) as u16)
    } else {
        u16::from_be(raw_remote as u16)
    };
    let (src_addr, dst_addr) = if family == 2 {
        (
            v4_mapped(local4.to_ne_bytes()),
            v4_mapped(remote4.to_ne_bytes()),
        )
    } else {
        (words_to_bytes(local6), words_to_bytes(remote6))
    };
    FourTuple {
        src_addr,
        dst_addr,
        src_port,
        dst_port,
    }
}

#[inline(always)]
fn words_to_bytes(w: [u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = w[i].to_ne_bytes();
        out[i * 4] = b[0];
        out[i * 4 + 1] = b[1];
        out[i * 4 + 2] = b[2];
        out[i * 4 + 3] = b[3];
        i += 1;
    }
    out
}

#[sock_ops]
pub fn sluice_sockops(ctx: SockOpsContext) -> u32 {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            if let Some(dst) = unsafe { COOKIE_DST.get(&cookie) } {
                let dst = *dst;
                let _ = TUPLE_DST.insert(&tuple_of(&ctx), &dst, 0);
                let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
            }
        }
        BPF_SOCK_OPS_STATE_CB => {
            if ctx.arg(1) == BPF_TCP_CLOSE {
                let _ = TUPLE_DST.remove(&tuple_of(&ctx));
                let _ = COOKIE_DST.remove(&cookie);
            }
        }
        _ => {}
    }
    1
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
