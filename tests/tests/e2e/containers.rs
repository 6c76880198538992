//! Agents in containers (DESIGN.md §8): real OCI containers (runc) in
//! network namespaces of their own on a test bridge, their cgroups created
//! below the agent cgroups after Sluice attached, like
//! `docker run --cgroup-parent`. Their connections go to the agent's
//! `redirect` address on the bridge; everything else is refused.
use std::{
    net::{SocketAddr, TcpListener, UdpSocket},
    process::Output,
    time::Duration,
};

use sluice_tests::{
    cgroup,
    container::{self, Bind, Bridge, Container},
    process,
    sluice::toml_str,
    stack::{AGENT, TCP_CONNECT_PROBE},
    ServiceSpec, Stack,
};

use crate::{assert_no_token, assert_status, bearer, events, sessions_of, WAIT};

const API: &str = "payments-api";
const API_HOST: &str = "api.payments.test";
const DB: &str = "billing-db";
const DB_HOST: &str = "db.billing.test";
/// The second agent, whose container shares the bridge.
const OTHER: &str = "other-agent";
/// Where the containers find Sluice's CA.
const CA_IN_CONTAINER: &str = "/sluice-ca.pem";

/// `python3 -c UDP_PROBE ADDR PORT`: one datagram, printing `sent` or the
/// errno name.
const UDP_PROBE: &str = r#"
import errno, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.sendto(b"probe", (sys.argv[1], int(sys.argv[2])))
    print("sent")
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e)))
"#;

/// `python3 -c PY_REQUESTS URL TOKEN`: a GET with a bearer token through
/// `requests`, printing the status.
const PY_REQUESTS: &str = "import requests, sys; r = requests.get(sys.argv[1], headers={'Authorization': 'Bearer ' + sys.argv[2]}, timeout=15); print(r.status_code)";

/// Fields drop in order: containers, then the stack (Sluice, its cgroups
/// and pins), then the bridge.
struct World {
    a: Container,
    b: Container,
    stack: Stack,
    bridge: Bridge,
    /// The agents' `redirect`: the bridge address, a port of its own.
    redirect: SocketAddr,
}

/// A bridge, Sluice with two agents whose `redirect` is on it (the
/// bridge's port 53 allowed as the containers' DNS), an HTTPS and a
/// PostgreSQL service, and a container below each agent cgroup.
fn world(label: &str) -> World {
    let bridge = Bridge::create().expect("test bridge");
    let port = process::free_port(bridge.addr.into()).unwrap();
    let redirect = SocketAddr::new(bridge.addr.into(), port);
    let stack = Stack::builder(label)
        .service(ServiceSpec::https(API, API_HOST))
        .service(ServiceSpec::postgres(DB, DB_HOST))
        .also_agent(OTHER)
        .agent_line(&format!("redirect = {}", toml_str(redirect.to_string())))
        .gateway(&format!(
            "egress_allow = [{}]",
            toml_str(format!("{}:53", bridge.addr))
        ))
        .start()
        .expect("start the stack");
    let ca = stack.sluice.ca_cert_path().unwrap();
    let binds = [
        Bind {
            source: &stack.hosts,
            target: "/etc/hosts",
        },
        Bind {
            source: &ca,
            target: CA_IN_CONTAINER,
        },
    ];
    let below = |agent: &str| stack.sluice.agent(agent).rel.clone();
    let a = Container::new("ctr-a", bridge.netns().unwrap(), &below(AGENT), &binds).unwrap();
    let b = Container::new("ctr-b", bridge.netns().unwrap(), &below(OTHER), &binds).unwrap();
    World {
        a,
        b,
        stack,
        bridge,
        redirect,
    }
}

const MARK: &str = "--container-curl--";

/// curl in `c` with `token`: (exit code, HTTP status, remote_ip).
fn curl_in(w: &World, c: &Container, token: &str) -> (i32, u16, String) {
    let url = w.stack.url(API, "/v1/charges");
    let out = c
        .run(
            &w.stack.sluice,
            &[],
            &[
                "curl",
                "-sS",
                "--max-time",
                "15",
                "--cacert",
                CA_IN_CONTAINER,
                "-H",
                &bearer(token),
                "-o",
                "/dev/null",
                "-w",
                &format!("{MARK} %{{http_code}} %{{remote_ip}}"),
                &url,
            ],
        )
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut f = stdout
        .rsplit_once(MARK)
        .map(|(_, r)| r.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter();
    let status = f.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    (
        out.status.code().unwrap_or(-1),
        status,
        f.next().unwrap_or_default(),
    )
}

/// What `argv` printed in `c` (trimmed); `what` names it if it fails.
fn stdout_of(w: &World, c: &Container, env: &[(&str, &str)], argv: &[&str], what: &str) -> String {
    let out: Output = c.run(&w.stack.sluice, env, argv).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && !text.is_empty(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The one line a probe script printed in `c`.
fn probe(w: &World, c: &Container, script: &str, to: SocketAddr) -> String {
    let (ip, port) = (to.ip().to_string(), to.port().to_string());
    let what = format!("probe to {to}");
    stdout_of(w, c, &[], &["python3", "-c", script, &ip, &port], &what)
}

#[test]
fn agents_in_containers_reach_their_services_by_name_and_nothing_else() {
    let w = world("containers");
    let stack = &w.stack;
    let up = stack.upstream(API);
    let token = stack.token(API).unwrap();

    // curl by host name: 200, the real key upstream, and getpeername shows
    // the service's address, not the bridge.
    let (exit, status, remote_ip) = curl_in(&w, &w.a, &token);
    assert_eq!((exit, status), (0, 200), "curl in the container");
    assert_eq!(
        remote_ip,
        up.addr().ip().to_string(),
        "getpeername in the container"
    );
    let got = up.wait_for(1, WAIT).unwrap().pop().unwrap();
    assert_eq!(
        got.header("authorization"),
        Some(format!("Bearer {}", stack.secret(API)).as_str())
    );
    assert_no_token(&got);

    // Python requests.
    let url = stack.url(API, "/v1/charges");
    let status = stdout_of(
        &w,
        &w.a,
        &[("REQUESTS_CA_BUNDLE", CA_IN_CONTAINER)],
        &["python3", "-c", PY_REQUESTS, &url, &token],
        "python requests in the container",
    );
    assert_eq!(status, "200");
    let got = up.wait_for(2, WAIT).unwrap().pop().unwrap();
    assert_eq!(
        got.header("authorization"),
        Some(format!("Bearer {}", stack.secret(API)).as_str())
    );

    // psql by host name with a token.
    let pg = stack.postgres(DB).addr();
    let db_token = stack.token(DB).unwrap();
    let conninfo = format!(
        "host={DB_HOST} port={} user=agent dbname=billing password={db_token} sslmode=disable connect_timeout=20",
        pg.port()
    );
    let argv = [
        "psql",
        "-X",
        "-w",
        "-At",
        "-d",
        &conninfo,
        "-c",
        "select 40 + 2",
    ];
    let answer = stdout_of(&w, &w.a, &[], &argv, "psql in the container");
    assert_eq!(answer, "42");

    // The records name the container's cgroup and network namespace.
    let sessions = sessions_of(stack, API);
    let open = events(&sessions[0], "open")[0].clone();
    assert_eq!(open["agent"], AGENT);
    assert_eq!(open["cgroup"], w.a.cgroup(), "container cgroup in {open}");
    let container_netns = open["netns_cookie"].as_u64().expect("netns_cookie");
    let db_open = events(&sessions_of(stack, DB)[0], "open")[0].clone();
    assert_eq!(db_open["cgroup"], w.a.cgroup());
    assert_eq!(db_open["netns_cookie"].as_u64(), Some(container_netns));

    // A host process of the same agent still goes through `listen`, and
    // its record shows the agent cgroup and another namespace.
    let res = stack
        .curl(&["-H", &bearer(&token), &stack.url(API, "/v1/charges")])
        .unwrap();
    assert_status(&res, 200);
    let host_open = sessions_of(stack, API)
        .into_iter()
        .map(|s| events(&s, "open")[0].clone())
        .find(|o| o["cgroup"] == format!("/{}", stack.sluice.agent(AGENT).rel))
        .expect("an open event from the host process");
    assert_ne!(host_open["netns_cookie"].as_u64(), Some(container_netns));

    // Egress deny in the container: a non-service port on the host's
    // bridge address, the other container's address, Redis.
    let bridge_port = TcpListener::bind((w.bridge.addr, 0)).unwrap();
    bridge_port.set_nonblocking(true).unwrap();
    let other_ctr = SocketAddr::new(w.b.netns.addr.into(), 8080);
    for (what, to) in [
        (
            "a non-service port on the bridge address",
            bridge_port.local_addr().unwrap(),
        ),
        ("the other container", other_ctr),
        ("the Redis server", stack.redis.addr()),
        ("the redirect address, dialled directly", w.redirect),
    ] {
        let got = probe(&w, &w.a, TCP_CONNECT_PROBE, to);
        assert_eq!(got, "EPERM", "container connect to {what} ({to})");
    }
    assert!(
        bridge_port.accept().is_err(),
        "the bridge port saw the container"
    );

    // The container's DNS server, allowed through egress_allow; any other
    // UDP port is refused.
    let dns = UdpSocket::bind((w.bridge.addr, 53)).expect("bind the bridge's port 53");
    dns.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let to = dns.local_addr().unwrap();
    assert_eq!(probe(&w, &w.a, UDP_PROBE, to), "sent");
    let mut buf = [0u8; 16];
    let (n, from) = dns.recv_from(&mut buf).expect("the datagram arrives");
    assert_eq!(
        (&buf[..n], from.ip()),
        (&b"probe"[..], w.a.netns.addr.into())
    );
    let no_dns = SocketAddr::new(w.bridge.addr.into(), 54);
    assert_eq!(probe(&w, &w.a, UDP_PROBE, no_dns), "EPERM");

    // The other agent's container cannot use this agent's token; with its
    // own it gets through.
    let before = up.count();
    let (exit, status, _) = curl_in(&w, &w.b, &token);
    assert_eq!(exit, 0, "curl in the other container");
    assert!(
        status == 401 || status == 403,
        "another agent's token: status {status}"
    );
    assert_eq!(up.count(), before, "nothing reached the upstream");
    let own = stack.sluice.token_issue(OTHER, API, "1h").unwrap();
    assert_eq!(curl_in(&w, &w.b, &own).1, 200);
    let other_open = sessions_of(stack, API)
        .into_iter()
        .map(|s| events(&s, "open")[0].clone())
        .find(|o| o["agent"] == OTHER)
        .expect("an open event of the other agent");
    assert_eq!(other_open["cgroup"], w.b.cgroup());

    stack.assert_no_secret_leaked();
}

#[test]
fn with_sluice_killed_containers_are_refused_and_nothing_is_left_behind() {
    let mut w = world("containers-down");
    let token = w.stack.token(API).unwrap();
    assert_eq!(curl_in(&w, &w.a, &token).1, 200, "served while Sluice runs");
    let served = w.stack.upstream(API).count();

    w.stack.sluice.kill9();
    // The pinned programs still redirect to the (now closed) redirect
    // address: refused (curl exit 7), never sent upstream directly.
    let (exit, status, _) = curl_in(&w, &w.a, &token);
    assert_eq!(
        (exit, status),
        (7, 0),
        "curl in the container with Sluice down"
    );
    assert_eq!(
        probe(&w, &w.a, TCP_CONNECT_PROBE, w.stack.postgres(DB).addr()),
        "ECONNREFUSED",
        "PostgreSQL with Sluice down"
    );
    assert_eq!(
        w.stack.upstream(API).count(),
        served,
        "nothing reached the upstream"
    );

    let names = [
        w.a.netns.name.clone(),
        w.a.netns.host_veth.clone(),
        w.b.netns.name.clone(),
        w.b.netns.host_veth.clone(),
        w.bridge.name.clone(),
    ];
    let agent_cgroups: Vec<String> = [AGENT, OTHER]
        .iter()
        .map(|a| w.stack.sluice.agent(a).rel.clone())
        .collect();
    let cgroup_ids: Vec<u64> = [AGENT, OTHER]
        .iter()
        .map(|a| cgroup::id(&w.stack.sluice.agent(a).path).expect("agent cgroup"))
        .collect();
    let bpf_dir = w.stack.sluice.bpf_dir.clone();
    drop(w);

    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    for rel in &agent_cgroups {
        let left = container::leftovers(&names, rel);
        assert!(left.is_empty(), "left behind: {left:?}");
    }
    assert!(!bpf_dir.exists(), "pins left in {}", bpf_dir.display());
    for id in cgroup_ids {
        let links = cgroup::links_for_cgroup_id(id).unwrap();
        assert!(links.is_empty(), "BPF links left on cgroup {id}: {links:?}");
    }
}

#[test]
fn an_agent_without_redirect_is_refused_from_another_network_namespace() {
    let stack = Stack::builder("netns-no-redirect")
        .service(ServiceSpec::https(API, API_HOST))
        .start()
        .expect("start the stack");
    let service = stack.upstream(API).addr();
    let (ip, port) = (service.ip().to_string(), service.port().to_string());
    // A process of the agent in a network namespace of its own: with no
    // `redirect` its service connection fails closed at connect().
    let out = stack
        .sluice
        .exec(
            AGENT,
            &[
                "unshare",
                "--net",
                "python3",
                "-c",
                TCP_CONNECT_PROBE,
                &ip,
                &port,
            ],
        )
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "EPERM",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stack.upstream(API).count(), 0);
    // The same process in Sluice's namespace is served as before.
    assert_eq!(
        stack.agent_tcp_connect(service).unwrap(),
        Ok(()),
        "the agent on the host"
    );
}
