//! `egress = "deny"`: an agent reaches its services and nothing else on the
//! host; processes outside the agent cgroup are unaffected.
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};

use sluice_tests::{redis, stack::next_upstream_ip, ServiceSpec, Stack};

use crate::{assert_status, bearer};

#[test]
fn agent_cannot_reach_redis_or_other_loopback_ports_but_outside_processes_can() {
    let stack = Stack::builder("egress-deny")
        .service(ServiceSpec::https("payments-api", "api.payments.test"))
        .start()
        .unwrap();
    let other = TcpListener::bind((next_upstream_ip(), 0)).unwrap();
    let other6 =
        TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).expect("an IPv6 loopback listener ([::1])");
    other.set_nonblocking(true).unwrap();
    other6.set_nonblocking(true).unwrap();
    let targets: [(&str, SocketAddr); 3] = [
        ("the test redis-server", stack.redis.addr()),
        (
            "a loopback port that is no service",
            other.local_addr().unwrap(),
        ),
        (
            "an IPv6 loopback port that is no service",
            other6.local_addr().unwrap(),
        ),
    ];

    for (what, addr) in targets {
        let result = stack.agent_tcp_connect(addr).unwrap();
        assert_eq!(
            result,
            Err("EPERM".to_string()),
            "agent connect to {what} ({addr})"
        );
    }
    for l in [&other, &other6] {
        assert!(
            l.accept().is_err(),
            "the listener must not have seen the agent"
        );
    }

    // From outside the agent cgroup the same addresses work.
    assert!(
        redis::ping(stack.redis.addr()),
        "redis answers processes outside the agent cgroup"
    );
    for l in [&other, &other6] {
        TcpStream::connect(l.local_addr().unwrap()).expect("outside connect");
    }

    // And the agent still reaches its service.
    let token = stack.token("payments-api").unwrap();
    let res = stack
        .curl(&[
            "-H",
            &bearer(&token),
            &stack.url("payments-api", "/v1/charges"),
        ])
        .unwrap();
    assert_status(&res, 200);
}
