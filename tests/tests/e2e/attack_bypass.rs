//! Bypass attempts (issue 8): each runs from inside an agent cgroup as a
//! non-root user (`sluice exec --user`) and must fail. Either the traffic is
//! redirected to Sluice anyway (proved by the upstream receiving the swapped
//! key, or by a 200 from an address where nothing listens), or it is refused.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

use serde_json::Value;
use sluice_tests::{
    cgroup,
    echo_upstream::{common_port, EchoUpstream},
    postgres::ROLE,
    process,
    redteam::{self, AgentUser, RedTeam, PYTHON},
    stack::next_upstream_ip,
    ServiceSpec, Stack,
};

use crate::{billing_db, DB, WAIT};

const SERVICE: &str = "payments-api";
const HOST: &str = "api.payments.test";

/// A loopback address other than the upstream's `ip`, where nothing
/// listens: upstreams live on 127.0.0.x, this is 127.0.1.200.
fn other_loopback(ip: IpAddr) -> IpAddr {
    let elsewhere = IpAddr::V4(Ipv4Addr::new(127, 0, 1, 200));
    assert_ne!(ip, elsewhere);
    elsewhere
}

fn secret_header(stack: &Stack, service: &str) -> String {
    format!("Bearer {}", stack.secret(service))
}

#[test]
fn an_https_service_dialled_by_ip_mapped_form_other_loopback_ip_or_v6_is_still_redirected_and_an_unknown_sni_is_refused(
) {
    let user = AgentUser::create().unwrap();
    let stack = Stack::builder("bypass-addr")
        .service(ServiceSpec::https(SERVICE, HOST))
        .start()
        .unwrap();
    let rt = RedTeam::new(&stack, &user).unwrap();
    let token = stack.token(SERVICE).unwrap();
    let up = stack.upstream(SERVICE).addr();
    let other = other_loopback(up.ip());
    let script = r#"
ip, port, host, token, other = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
h = bearer(token)
out({
  'by_ip_no_sni': https(ip, port, None, '/v1/by-ip', h, host=ip).get('status'),
  'mapped': https('::ffff:' + ip, port, host, '/v1/mapped', h).get('status'),
  'other_ip': https(other, port, host, '/v1/other-ip', h).get('status'),
  'v6_loopback': https('::1', port, host, '/v1/v6', h).get('status'),
  'other_ip_unknown_sni': https(other, port, 'evil.test', '/v1/evil', h),
  'other_ip_no_sni': https(other, port, None, '/v1/none', h),
})
"#;
    let r = rt.probe(
        stack.agent(),
        script,
        &[
            &up.ip().to_string(),
            &up.port().to_string(),
            HOST,
            &token,
            &other.to_string(),
        ],
    );
    // Nothing listens on `other` or [::1] at that port: a 200 there can only
    // come through Sluice.
    for key in ["by_ip_no_sni", "mapped", "other_ip", "v6_loopback"] {
        assert_eq!(r[key], 200, "{key}: {r}");
    }
    for key in ["other_ip_unknown_sni", "other_ip_no_sni"] {
        assert!(r[key]["status"].is_null(), "{key} got an HTTP answer: {r}");
        assert!(r[key]["error"].is_string(), "{key}: {r}");
    }
    let reqs = stack.upstream(SERVICE).wait_for(4, WAIT).unwrap();
    let mut paths: Vec<&str> = reqs.iter().map(|q| q.path()).collect();
    paths.sort();
    assert_eq!(paths, ["/v1/by-ip", "/v1/mapped", "/v1/other-ip", "/v1/v6"]);
    for q in &reqs {
        assert_eq!(
            q.header("authorization"),
            Some(secret_header(&stack, SERVICE).as_str()),
            "{}",
            q.path()
        );
    }
    sluice_tests::poll("the refused SNI in the daemon log", WAIT, || {
        stack
            .sluice
            .daemon_log()
            .contains("SNI names no service")
            .then_some(())
    })
    .unwrap();
    stack.assert_no_secret_leaked();
}

#[test]
fn a_postgres_service_on_another_loopback_ip_or_v6_is_refused_and_its_mapped_form_is_redirected() {
    let user = AgentUser::create().unwrap();
    let stack = Stack::builder("bypass-pg")
        .service(billing_db())
        .start()
        .unwrap();
    let rt = RedTeam::new(&stack, &user).unwrap();
    let pg = stack.postgres(DB).addr();
    let other = other_loopback(pg.ip());
    let r = rt.probe(
        stack.agent(),
        "p = int(sys.argv[2]); out({'other': connect_result(sys.argv[1], p), 'v6': connect_result('::1', p)})",
        &[&other.to_string(), &pg.port().to_string()],
    );
    assert_eq!(r, serde_json::json!({"other": "EPERM", "v6": "EPERM"}));

    let token = stack.token(DB).unwrap();
    let conninfo = stack.pg_conninfo(DB, &token, "sslmode=disable").replace(
        &format!("hostaddr={}", pg.ip()),
        &format!("hostaddr=::ffff:{}", pg.ip()),
    );
    let out = rt
        .psql(stack.agent(), &conninfo, "SELECT current_user", WAIT * 3)
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        ROLE,
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stack.assert_no_secret_leaked();
}

/// Per destination: `sendto` and `connect`+`send` of one datagram with
/// protocol `proto` (17 UDP, 136 UDP-Lite); each result is `sent` or an errno.
const DATAGRAMS: &str = r#"
proto = int(sys.argv[1])
res = {}
for a in sys.argv[2:]:
    ip, port = a.rsplit(':', 1)
    ip, port = ip.strip('[]'), int(port)
    try:
        s = socket.socket(family_of(ip), socket.SOCK_DGRAM, proto)
    except OSError as e:
        res[a] = 'socket:' + ename(e)
        continue
    try:
        s.sendto(b'sendto', (ip, port))
        res[a + ' sendto'] = 'sent'
    except OSError as e:
        res[a + ' sendto'] = ename(e)
    try:
        s.connect((ip, port))
        s.send(b'connected-send')
        res[a + ' connect'] = 'sent'
    except OSError as e:
        res[a + ' connect'] = ename(e)
out(res)
"#;

/// Datagram catchers (protocol `proto`) bound from outside the agent cgroup.
fn catchers(proto: libc::c_int, addrs: &[SocketAddr]) -> Vec<UdpSocket> {
    addrs
        .iter()
        .map(|a| {
            let family = if a.is_ipv4() {
                libc::AF_INET
            } else {
                libc::AF_INET6
            };
            // SAFETY: plain socket(2); ownership passes to the UdpSocket.
            let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, proto) };
            assert!(
                fd >= 0,
                "socket(proto {proto}): {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: fd is fresh and owned by nobody else.
            let s = unsafe { UdpSocket::from_raw_fd(fd) };
            let s2 = socket2_bind(s, *a);
            s2.set_nonblocking(true).unwrap();
            s2
        })
        .collect()
}

fn socket2_bind(s: UdpSocket, a: SocketAddr) -> UdpSocket {
    let (storage, len) = sockaddr(a);
    // SAFETY: bind(2) with a correctly sized sockaddr for the socket's family.
    let rc = unsafe {
        libc::bind(
            s.as_raw_fd(),
            &storage as *const _ as *const libc::sockaddr,
            len,
        )
    };
    assert_eq!(rc, 0, "bind {a}: {}", std::io::Error::last_os_error());
    s
}

fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match a {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as _;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
            (storage, std::mem::size_of::<libc::sockaddr_in>() as _)
        }
        SocketAddr::V6(v6) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as _;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_addr.s6_addr = v6.ip().octets();
            (storage, std::mem::size_of::<libc::sockaddr_in6>() as _)
        }
    }
}

/// Datagrams that reached `catchers`: (catcher address, payload).
fn caught(catchers: &[UdpSocket]) -> Vec<(String, String)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    for c in catchers {
        while let Ok((n, _)) = c.recv_from(&mut buf) {
            got.push((
                format!("{:?}", c.local_addr()),
                String::from_utf8_lossy(&buf[..n]).into_owned(),
            ));
        }
    }
    got
}

#[test]
fn udp_to_a_service_port_or_anywhere_else_gets_eperm() {
    let user = AgentUser::create().unwrap();
    let stack = Stack::builder("bypass-udp")
        .service(ServiceSpec::https(SERVICE, HOST))
        .service(billing_db())
        .start()
        .unwrap();
    let rt = RedTeam::new(&stack, &user).unwrap();
    let https = stack.upstream(SERVICE).addr();
    let pg = stack.postgres(DB).addr();
    let elsewhere = SocketAddr::new(other_loopback(https.ip()), https.port());
    let six = SocketAddr::new(Ipv6Addr::LOCALHOST.into(), https.port());
    let nets = catchers(libc::IPPROTO_UDP, &[https, pg, elsewhere, six]);
    let targets = [
        https.to_string(),
        pg.to_string(),
        format!("[::ffff:{}]:{}", https.ip(), https.port()),
        elsewhere.to_string(),
        six.to_string(),
    ];
    let mut args = vec!["17"];
    args.extend(targets.iter().map(String::as_str));
    let r = rt.probe(stack.agent(), DATAGRAMS, &args);
    let map = r.as_object().unwrap();
    assert_eq!(map.len(), 10, "{r}");
    for (k, v) in map {
        assert_eq!(v, "EPERM", "{k}: {r}");
    }
    assert_eq!(
        caught(&nets),
        Vec::<(String, String)>::new(),
        "datagrams got through"
    );
}

#[test]
fn udp_lite_to_a_service_port_or_anywhere_else_gets_eperm() {
    let user = AgentUser::create().unwrap();
    let stack = Stack::builder("bypass-udplite")
        .service(ServiceSpec::https(SERVICE, HOST))
        .start()
        .unwrap();
    let rt = RedTeam::new(&stack, &user).unwrap();
    let https = stack.upstream(SERVICE).addr();
    let elsewhere = SocketAddr::new(other_loopback(https.ip()), https.port());
    let six = SocketAddr::new(Ipv6Addr::LOCALHOST.into(), https.port());
    let nets = catchers(libc::IPPROTO_UDPLITE, &[https, elsewhere, six]);
    let targets = [
        https.to_string(),
        elsewhere.to_string(),
        six.to_string(),
        format!("[::ffff:{}]:{}", elsewhere.ip(), elsewhere.port()),
    ];
    let mut args = vec!["136"];
    args.extend(targets.iter().map(String::as_str));
    let r = rt.probe(stack.agent(), DATAGRAMS, &args);
    let got = caught(&nets);
    let map = r.as_object().unwrap();
    for (k, v) in map {
        assert!(
            v == "EPERM" || v.as_str().is_some_and(|v| v.starts_with("socket:")),
            "{k}: {r}; caught by loopback listeners outside the cgroup: {got:?}"
        );
    }
    assert!(got.is_empty(), "UDP-Lite datagrams got through: {got:?}");
}

/// The refusal above is egress policy: with `egress = "allow"` an agent's
/// UDP-Lite (or ping) socket works like any other non-service traffic.
#[test]
fn under_egress_allow_udp_lite_to_a_non_service_address_is_left_alone() {
    let user = AgentUser::create().unwrap();
    let stack = Stack::builder("bypass-udplite-allow")
        .service(ServiceSpec::https(SERVICE, HOST))
        .egress("allow")
        .start()
        .unwrap();
    let rt = RedTeam::new(&stack, &user).unwrap();
    let https = stack.upstream(SERVICE).addr();
    // A port of its own: the service's port is fenced on every address.
    let nets = catchers(
        libc::IPPROTO_UDPLITE,
        &[SocketAddr::new(other_loopback(https.ip()), 0)],
    );
    let target = nets[0].local_addr().unwrap().to_string();
    let r = rt.probe(stack.agent(), DATAGRAMS, &["136", &target]);
    let mut payloads: Vec<String> = caught(&nets).into_iter().map(|(_, p)| p).collect();
    payloads.sort();
    assert_eq!(payloads, ["connected-send", "sendto"], "probe said {r}");
}

#[test]
fn sockets_of_a_thread_a_forked_child_and_a_grandchild_after_setsid_are_all_redirected() {
    let user = AgentUser::create().unwrap();
    let stack = Stack::builder("bypass-procs")
        .service(ServiceSpec::https(SERVICE, HOST))
        .start()
        .unwrap();
    let rt = RedTeam::new(&stack, &user).unwrap();
    let token = stack.token(SERVICE).unwrap();
    let up = stack.upstream(SERVICE).addr();
    let script = r#"
ip, port, host, token = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def req(tag):
    return https(ip, port, host, '/v1/%s/%d' % (tag, os.getpid()), bearer(token)).get('status', 'error')
res = {'main_pid': os.getpid(), 'main_sid': os.getsid(0)}
box = {}
t = threading.Thread(target=lambda: box.__setitem__('s', req('thread')))
t.start(); t.join()
res['thread'] = box['s']
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.write(w, ('%s %d' % (req('child'), os.getpid())).encode()); os._exit(0)
os.waitpid(pid, 0)
res['child'] = os.read(r, 100).decode()
r2, w2 = os.pipe()
pid = os.fork()
if pid == 0:
    os.setsid()
    gpid = os.fork()
    if gpid == 0:
        os.write(w2, ('%s %d %d %d' % (req('grandchild'), os.getpid(), os.getsid(0), os.getsid(os.getppid()))).encode()); os._exit(0)
    os.waitpid(gpid, 0); os._exit(0)
os.waitpid(pid, 0)
res['grandchild'] = os.read(r2, 100).decode()
out(res)
"#;
    let r = rt.probe(
        stack.agent(),
        script,
        &[&up.ip().to_string(), &up.port().to_string(), HOST, &token],
    );
    let main_pid = r["main_pid"].as_u64().unwrap();
    assert_eq!(r["thread"], 200, "{r}");
    let child: Vec<&str> = r["child"].as_str().unwrap().split(' ').collect();
    let grand: Vec<&str> = r["grandchild"].as_str().unwrap().split(' ').collect();
    assert_eq!((child[0], grand[0]), ("200", "200"), "{r}");
    assert_ne!(
        grand[2],
        r["main_sid"].to_string(),
        "the grandchild is in the new session (setsid): {r}"
    );
    let reqs = stack.upstream(SERVICE).wait_for(3, WAIT).unwrap();
    assert_eq!(reqs.len(), 3);
    for q in &reqs {
        assert_eq!(
            q.header("authorization"),
            Some(secret_header(&stack, SERVICE).as_str()),
            "{}",
            q.path()
        );
    }
    // The records name the process that connected, each time.
    let wanted = [
        ("thread", main_pid.to_string()),
        ("child", child[1].to_string()),
        ("grandchild", grand[1].to_string()),
    ];
    for (tag, pid) in wanted {
        let path = format!("/v1/{tag}/{pid}");
        let ev = stack
            .sluice
            .wait_for_event(&format!("the request event for {path}"), WAIT, |e| {
                e["event"] == "request" && e["path"] == path.as_str()
            })
            .unwrap();
        assert_eq!(ev["pid"].to_string(), pid, "{ev}");
        assert_eq!(ev["uid"], user.uid(), "{ev}");
    }
    stack.assert_no_secret_leaked();
}

#[test]
fn tcp_fast_open_and_mptcp_sockets_are_redirected_or_refused_like_plain_tcp() {
    let user = AgentUser::create().unwrap();
    let stack = Stack::builder("bypass-tfo")
        .service(ServiceSpec::http("plain-api", "api.plain.test"))
        .start()
        .unwrap();
    let rt = RedTeam::new(&stack, &user).unwrap();
    let token = stack.token("plain-api").unwrap();
    let up = stack.upstream("plain-api").addr();
    let catcher = TcpListener::bind((next_upstream_ip(), 0)).unwrap();
    catcher.set_nonblocking(true).unwrap();
    let elsewhere = catcher.local_addr().unwrap();
    let script = r#"
ip, port, token, eip, eport = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
req = request_bytes('GET', '/v1/%s', 'api.plain.test', bearer(token))
def tfo(addr, tag):
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.sendto(req.replace(b'%s', tag.encode()), socket.MSG_FASTOPEN, addr)
        s.settimeout(5)
        return parse_http(recv_all(s)).get('status', 'no response')
    except OSError as e:
        return ename(e)
def mptcp(addr, tag):
    try:
        s = tcp(addr[0], addr[1], 5, 262)
    except OSError as e:
        return ename(e)
    s.sendall(req.replace(b'%s', tag.encode()))
    return parse_http(recv_all(s)).get('status', 'no response')
out({'tfo_service': tfo((ip, port), 'tfo'), 'tfo_elsewhere': tfo((eip, eport), 'x'),
     'mptcp_service': mptcp((ip, port), 'mptcp'), 'mptcp_elsewhere': mptcp((eip, eport), 'y')})
"#;
    let r = rt.probe(
        stack.agent(),
        script,
        &[
            &up.ip().to_string(),
            &up.port().to_string(),
            &token,
            &elsewhere.ip().to_string(),
            &elsewhere.port().to_string(),
        ],
    );
    assert_eq!(r["tfo_elsewhere"], "EPERM", "{r}");
    assert!(
        r["mptcp_elsewhere"] == "EPERM" || r["mptcp_elsewhere"] == "EPROTONOSUPPORT",
        "{r}"
    );
    assert!(
        catcher.accept().is_err(),
        "the non-service listener saw a connection"
    );
    assert_eq!(r["tfo_service"], 200, "{r}");
    assert!(
        r["mptcp_service"] == 200 || r["mptcp_service"] == "EPROTONOSUPPORT",
        "{r}"
    );
    for q in stack.upstream("plain-api").requests() {
        assert_eq!(
            q.header("authorization"),
            Some(secret_header(&stack, "plain-api").as_str()),
            "{}",
            q.path()
        );
    }
    stack.assert_no_secret_leaked();
}

#[test]
fn redis_the_metrics_listener_and_other_loopback_services_get_eperm_and_the_listener_itself_serves_nobody(
) {
    let user = AgentUser::create().unwrap();
    let metrics = process::free_port(Ipv4Addr::LOCALHOST.into()).unwrap();
    let stack = Stack::builder("bypass-admin")
        .gateway(&format!("metrics = \"127.0.0.1:{metrics}\""))
        .service(ServiceSpec::https(SERVICE, HOST))
        .start()
        .unwrap();
    let rt = RedTeam::new(&stack, &user).unwrap();
    let token = stack.token(SERVICE).unwrap();
    assert!(
        process::tcp_accepts(SocketAddr::from((Ipv4Addr::LOCALHOST, metrics))),
        "the metrics listener is up"
    );
    let other = TcpListener::bind((next_upstream_ip(), 0)).unwrap();
    let other6 = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).unwrap();
    other.set_nonblocking(true).unwrap();
    other6.set_nonblocking(true).unwrap();
    let listen = stack.sluice.listen;
    let script = r#"
def c(a): return connect_result(a.rsplit(':', 1)[0].strip('[]'), int(a.rsplit(':', 1)[1]))
redis, metrics, other, other6, listen, token = sys.argv[1:7]
lip, lport = listen.rsplit(':', 1)
out({'redis': c(redis), 'metrics': c(metrics), 'other': c(other), 'other6': c(other6),
     'listener_tls': https(lip, int(lport), 'api.payments.test', '/v1/direct', bearer(token)),
     'listener_plain': https(lip, int(lport), None, '/v1/direct-plain', bearer(token), host='api.payments.test', plain=True),
     'listener_v6': https('::1', int(lport), 'api.payments.test', '/v1/direct6', bearer(token))})
"#;
    let args = [
        stack.redis.addr().to_string(),
        format!("127.0.0.1:{metrics}"),
        other.local_addr().unwrap().to_string(),
        other6.local_addr().unwrap().to_string(),
        listen.to_string(),
        token.clone(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = rt.probe(stack.agent(), script, &args);
    for key in ["redis", "metrics", "other", "other6"] {
        assert_eq!(r[key], "EPERM", "{key}: {r}");
    }
    for key in ["listener_tls", "listener_plain", "listener_v6"] {
        assert!(
            r[key]["status"].is_null(),
            "the listener dialled directly answered {key}: {r}"
        );
    }
    assert!(other.accept().is_err() && other6.accept().is_err());

    // The host (outside every agent cgroup) with a valid token: no eBPF
    // record, so no service.
    let ca = stack.sluice.ca_cert_path().unwrap();
    let resolve = format!("{HOST}:{}:127.0.0.1", listen.port());
    let url = format!("https://{HOST}:{}/v1/from-host", listen.port());
    let out = process::output_with_timeout(
        std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "--noproxy", "*", "--cacert"])
            .arg(&ca)
            .args([
                "--resolve",
                &resolve,
                "-H",
                &format!("Authorization: Bearer {token}"),
                "-w",
                "%{http_code}",
                &url,
            ]),
        None,
        Duration::from_secs(20),
    )
    .unwrap();
    assert_ne!(
        out.status.code(),
        Some(0),
        "curl from the host got through: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        stack.upstream(SERVICE).count(),
        0,
        "nothing reached the upstream"
    );
    stack.assert_no_secret_leaked();
}

#[test]
fn a_non_root_agent_cannot_leave_its_cgroup_or_enter_another_agents() {
    let user = AgentUser::create().unwrap();
    let stack = redteam::start_with_agents(
        Stack::builder("bypass-cgroup").service(ServiceSpec::https(SERVICE, HOST)),
        &["other"],
    )
    .unwrap();
    let rt = RedTeam::new(&stack, &user).unwrap();
    let mount = cgroup::cgroup2_mount().unwrap();
    let own = stack.sluice.agent(stack.agent()).path.clone();
    let other = stack.sluice.agent("other").path.clone();
    let script = r#"
res = {}
before = open('/proc/self/cgroup').read()
for name, path in (('parent', sys.argv[1]), ('root', sys.argv[2]), ('other_agent', sys.argv[3]), ('own', sys.argv[4])):
    try:
        with open(path + '/cgroup.procs', 'w') as f:
            f.write(str(os.getpid()))
        res[name] = 'moved'
    except OSError as e:
        res[name] = ename(e)
try:
    os.mkdir(sys.argv[4] + '/escape')
    res['mkdir'] = 'created'
except OSError as e:
    res['mkdir'] = ename(e)
res['unchanged'] = open('/proc/self/cgroup').read() == before
out(res)
"#;
    let parent = own.parent().unwrap().to_str().unwrap().to_string();
    let r = rt.probe(
        stack.agent(),
        script,
        &[
            &parent,
            mount.to_str().unwrap(),
            other.to_str().unwrap(),
            own.to_str().unwrap(),
        ],
    );
    for key in ["parent", "root", "other_agent", "own", "mkdir"] {
        assert!(r[key] == "EACCES" || r[key] == "EPERM", "{key}: {r}");
    }
    assert_eq!(r["unchanged"], true, "{r}");
    // Nor can it use `sluice exec` to enter another agent's cgroup.
    let bin = sluice_tests::sluice_bin();
    let cfg = stack.sluice.config_path.to_str().unwrap().to_string();
    let out = rt
        .run(
            stack.agent(),
            &[
                bin.to_str().unwrap(),
                "--config",
                &cfg,
                "exec",
                "--agent",
                "other",
                "--",
                "true",
            ],
            WAIT,
        )
        .unwrap();
    assert!(
        !out.status.success(),
        "a non-root agent ran sluice exec into another agent"
    );
    assert!(
        cgroup::procs(&other).is_empty(),
        "nothing runs in the other agent's cgroup"
    );
}

/// Runs `python_script` as the agent with an inherited, unconnected TCP
/// socket created here, outside every agent cgroup, as fd 3 onwards.
fn with_outside_socket(rt: &RedTeam, family: libc::c_int, script: &str, args: &[&str]) -> Value {
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM, 0) };
    assert!(fd >= 0);
    // SAFETY: fd was just created and is owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let full = format!(
        "{}\nCA = {:?}\nFD = {}\n{script}",
        redteam::PROBES,
        rt.ca.display().to_string(),
        owned.as_raw_fd()
    );
    let mut argv = vec![PYTHON, "-c", &full];
    argv.extend_from_slice(args);
    // The fd is not close-on-exec: it reaches sluice exec and, unless sluice
    // exec closes it, the agent.
    let out =
        process::output_with_timeout(&mut rt.command(rt.stack.agent(), &argv), None, WAIT * 3)
            .unwrap();
    drop(owned);
    RedTeam::json_lines(&out).pop().unwrap()
}

#[test]
fn a_socket_created_before_joining_the_cgroup_does_not_reach_the_agent() {
    let user = AgentUser::create().unwrap();
    let stack = Stack::builder("bypass-early-socket")
        .service(ServiceSpec::https(SERVICE, HOST))
        .start()
        .unwrap();
    let rt = RedTeam::new(&stack, &user).unwrap();
    let token = stack.token(SERVICE).unwrap();
    let up = stack.upstream(SERVICE).addr();
    let catcher = TcpListener::bind((next_upstream_ip(), 0)).unwrap();
    catcher.set_nonblocking(true).unwrap();
    let elsewhere = catcher.local_addr().unwrap();
    let script = r#"
ip, port, token, eip, eport = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
res = {}
try:
    s = socket.socket(fileno=FD)
    s.settimeout(5)
    s.connect((eip, eport))
    res['elsewhere'] = 'connected'
except OSError as e:
    res['elsewhere'] = ename(e)
out(res)
"#;
    let r = with_outside_socket(
        &rt,
        libc::AF_INET,
        script,
        &[
            &up.ip().to_string(),
            &up.port().to_string(),
            &token,
            &elsewhere.ip().to_string(),
            &elsewhere.port().to_string(),
        ],
    );
    assert_ne!(r["elsewhere"], "connected", "an agent used a socket from outside its cgroup to reach a non-service port under egress deny: {r}");
    assert!(catcher.accept().is_err(), "the listener saw the agent");
    assert_eq!(stack.upstream(SERVICE).count(), 0);
}

#[test]
fn a_token_presented_from_another_agents_cgroup_gets_401_and_28p01() {
    let user = AgentUser::create().unwrap();
    let stack = redteam::start_with_agents(
        Stack::builder("bypass-agent")
            .service(ServiceSpec::https(SERVICE, HOST))
            .service(billing_db()),
        &["other"],
    )
    .unwrap();
    let rt = RedTeam::new(&stack, &user).unwrap();
    let http_token = stack.token(SERVICE).unwrap();
    let pg_token = stack.token(DB).unwrap();
    let up = stack.upstream(SERVICE).addr();
    let script =
        "out(https(sys.argv[1], int(sys.argv[2]), sys.argv[3], '/v1/stolen', bearer(sys.argv[4])))";
    let args = [
        up.ip().to_string(),
        up.port().to_string(),
        HOST.to_string(),
        http_token.clone(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let stolen = rt.probe("other", script, &args);
    assert_eq!(stolen["status"], 401, "{stolen}");
    let conninfo = stack.pg_conninfo(DB, &pg_token, "sslmode=disable");
    let out = rt
        .psql("other", &conninfo, "SELECT current_user", WAIT * 3)
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("password authentication failed"),
        "psql from the other agent: {stderr}"
    );
    assert_eq!(
        stack.upstream(SERVICE).count(),
        0,
        "nothing reached the upstream"
    );
    // Both refusals are recorded against the agent that presented the token.
    for service in [DB, SERVICE] {
        stack
            .sluice
            .wait_for_event(&format!("auth_fail of other on {service}"), WAIT, |e| {
                e["event"] == "auth_fail" && e["agent"] == "other" && e["service"] == service
            })
            .unwrap();
    }

    // The same tokens work from their own agent's cgroup.
    let own = rt.probe(stack.agent(), script, &args);
    assert_eq!(own["status"], 200, "{own}");
    let out = rt
        .psql(stack.agent(), &conninfo, "SELECT current_user", WAIT * 3)
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), ROLE);
    stack.assert_no_secret_leaked();
}

#[test]
fn a_token_sent_to_another_https_host_on_the_same_port_is_never_swapped_and_that_upstream_gets_no_secret(
) {
    let user = AgentUser::create().unwrap();
    let mut stack = Stack::builder("bypass-portwide")
        .service(ServiceSpec::https(SERVICE, HOST))
        .prepare()
        .unwrap();
    let (ip_a, ip_b) = (next_upstream_ip(), next_upstream_ip());
    let port = common_port(ip_a, ip_b).unwrap();
    let a = EchoUpstream::https(&stack.ca, "api.a.test", SocketAddr::new(ip_a, port)).unwrap();
    let b = EchoUpstream::https(&stack.ca, "api.b.test", SocketAddr::new(ip_b, port)).unwrap();
    let (secret_a, secret_b) = (sluice_tests::random_secret(), sluice_tests::random_secret());
    let ca = stack.ca.pem_path().to_path_buf();
    for (name, up, secret) in [("svc-a", &a, &secret_a), ("svc-b", &b, &secret_b)] {
        let toml = redteam::https_service_toml(
            name,
            up.host(),
            up.addr(),
            &ca,
            &format!("{name}-key"),
            r#"header = "Authorization", format = "Bearer {}""#,
            "",
        );
        redteam::append_config(&stack, &toml).unwrap();
        stack
            .sluice
            .secret_put(&format!("{name}-key"), secret)
            .unwrap();
    }
    for s in &stack.services {
        stack
            .sluice
            .secret_put(&s.spec.secret_name(), &s.secret)
            .unwrap();
    }
    stack.sluice.start().unwrap();
    let rt = RedTeam::new(&stack, &user).unwrap();
    let token_a = stack
        .sluice
        .token_issue(stack.agent(), "svc-a", "1h")
        .unwrap();
    let script = r#"
ip_a, ip_b, port, token = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
h = bearer(token)
out({'sni_b': https(ip_b, port, 'api.b.test', '/b', h),
     'sni_a_host_b': https(ip_a, port, 'api.a.test', '/a-host-b', h, host='api.b.test'),
     'sni_b_via_a_ip': https(ip_a, port, 'api.b.test', '/b-via-a', h),
     'unknown_sni': https(ip_b, port, 'api.evil.test', '/evil', h),
     'own': https(ip_a, port, 'api.a.test', '/a', h)})
"#;
    let r = rt.probe(
        stack.agent(),
        script,
        &[
            &ip_a.to_string(),
            &ip_b.to_string(),
            &port.to_string(),
            &token_a,
        ],
    );
    assert_eq!(r["sni_b"]["status"], 401, "{r}");
    assert_eq!(r["sni_b_via_a_ip"]["status"], 401, "{r}");
    assert_eq!(r["sni_a_host_b"]["status"], 421, "{r}");
    assert!(r["unknown_sni"]["status"].is_null(), "{r}");
    assert_eq!(r["own"]["status"], 200, "{r}");
    assert_eq!(
        b.count(),
        0,
        "service b's upstream received {:?}",
        b.requests()
    );
    let got = a.wait_for(1, WAIT).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].header("authorization"),
        Some(format!("Bearer {secret_a}").as_str())
    );
    let texts = stack.sluice.all_output_text();
    sluice_tests::assert_no_secret(&secret_a, &texts);
    sluice_tests::assert_no_secret(&secret_b, &texts);
    // `a` and `b` drop after the stack: the daemon never dials a dead port.
    drop(stack);
}

#[test]
fn a_denied_drop_cannot_be_run_through_a_function_the_agent_creates() {
    let user = AgentUser::create().unwrap();
    let stack = Stack::builder("bypass-function")
        .service(billing_db())
        .start()
        .unwrap();
    let rt = RedTeam::new(&stack, &user).unwrap();
    let token = stack.token(DB).unwrap();
    let conninfo = stack.pg_conninfo(DB, &token, "sslmode=disable");
    let bodies = [
        "CREATE FUNCTION f1() RETURNS void LANGUAGE plpgsql AS $$ BEGIN DROP TABLE customers; END $$",
        "CREATE FUNCTION f2() RETURNS void LANGUAGE sql AS 'DROP TABLE customers'",
    ];
    for (i, create) in bodies.iter().enumerate() {
        let call = format!("SELECT f{}()", i + 1);
        let out = rt
            .run(
                stack.agent(),
                &[
                    "psql", "-X", "-w", "-At", "-d", &conninfo, "-c", create, "-c", &call,
                ],
                WAIT * 3,
            )
            .unwrap();
        stack
            .sluice
            .capture_text("psql", &String::from_utf8_lossy(&out.stderr));
        assert_eq!(
            stack.postgres(DB).customers_count().unwrap(),
            Some(3),
            "DROP is denied, yet {create:?} then {call} dropped the table: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
