//! Tokens that must not work: each request gets 401 with Sluice's JSON
//! error, and the upstream receives nothing.
use std::{
    io::Write,
    time::{Duration, Instant},
};

use sluice_tests::{poll, process, ServiceSpec, Stack};

use crate::{assert_sluice_error_body, assert_status, bearer, Lines, WAIT};

const SERVICE: &str = "payments-api";

fn payments_stack(label: &str) -> Stack {
    Stack::builder(label)
        .service(ServiceSpec::https(SERVICE, "api.payments.test"))
        .start()
        .expect("start the stack")
}

/// Sends the request with `token` and asserts 401 + error body.
#[track_caller]
fn assert_rejected(stack: &Stack, service: &str, token: &str) {
    let res = stack
        .curl(&["-H", &bearer(token), &stack.url(service, "/v1/charges")])
        .unwrap();
    assert_status(&res, 401);
    assert_sluice_error_body(&res);
}

/// A good token still works afterwards, and the upstream then holds
/// exactly that one request: none of the rejected ones got through.
#[track_caller]
fn assert_only_the_good_request_arrives(stack: &Stack) {
    let token = stack.token(SERVICE).unwrap();
    let res = stack
        .curl(&["-H", &bearer(&token), &stack.url(SERVICE, "/v1/good")])
        .unwrap();
    assert_status(&res, 200);
    let reqs = stack.upstream(SERVICE).wait_for(1, WAIT).unwrap();
    assert_eq!(
        reqs.iter().map(|r| r.path()).collect::<Vec<_>>(),
        ["/v1/good"]
    );
}

#[test]
fn unknown_or_missing_token_gets_401_and_the_upstream_sees_nothing() {
    let stack = payments_stack("unknown-token");
    let unknown = format!("slt_{}", sluice_tests::random_hex(20));
    assert_rejected(&stack, SERVICE, &unknown);
    let res = stack.curl(&[&stack.url(SERVICE, "/v1/charges")]).unwrap();
    assert_status(&res, 401);
    assert_sluice_error_body(&res);
    assert_eq!(stack.upstream(SERVICE).count(), 0);
    stack
        .sluice
        .wait_for_event("an auth_fail event", WAIT, |e| {
            e["event"] == "auth_fail" && e["service"] == SERVICE
        })
        .unwrap();
    assert_only_the_good_request_arrives(&stack);
    stack.assert_no_secret_leaked();
}

#[test]
fn another_services_token_gets_401() {
    let stack = Stack::builder("other-service-token")
        .service(ServiceSpec::https(SERVICE, "api.payments.test"))
        .service(ServiceSpec::https("billing-api", "api.billing.test"))
        .start()
        .unwrap();
    let billing_token = stack.token("billing-api").unwrap();
    assert_rejected(&stack, SERVICE, &billing_token);
    assert_eq!(stack.upstream(SERVICE).count(), 0);
    assert_eq!(stack.upstream("billing-api").count(), 0);
    // The token itself is fine for its own service.
    let res = stack
        .curl(&[
            "-H",
            &bearer(&billing_token),
            &stack.url("billing-api", "/v1/invoices"),
        ])
        .unwrap();
    assert_status(&res, 200);
    assert_only_the_good_request_arrives(&stack);
    stack.assert_no_secret_leaked();
}

#[test]
fn expired_token_gets_401() {
    let stack = payments_stack("expired-token");
    let token = stack
        .sluice
        .token_issue(stack.agent(), SERVICE, "1s")
        .unwrap();
    let issued = Instant::now();
    // Wait for the clock, not for a process: the token's whole lifetime
    // plus a margin for second granularity.
    poll("the 1s token to expire", WAIT, || {
        (issued.elapsed() >= Duration::from_millis(2200)).then_some(())
    })
    .unwrap();
    assert_rejected(&stack, SERVICE, &token);
    assert_eq!(stack.upstream(SERVICE).count(), 0);
    assert_only_the_good_request_arrives(&stack);
    stack.assert_no_secret_leaked();
}

/// A keep-alive agent: sends request 0, waits for a line on stdin, sends
/// request 1 on the same connection. Prints `<status> <local port>` each.
const KEEP_ALIVE_AGENT: &str = r#"
import http.client, ssl, sys
host, port, token, cafile = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
conn = http.client.HTTPSConnection(host, port, context=ssl.create_default_context(cafile=cafile), timeout=15)
for i in range(2):
    if i == 1:
        sys.stdin.readline()
    conn.request("GET", "/v1/charges?n=%d" % i, headers={"Authorization": "Bearer " + token})
    local_port = conn.sock.getsockname()[1]
    resp = conn.getresponse()
    resp.read()
    print(resp.status, local_port, flush=True)
"#;

#[test]
fn revoked_token_mid_keep_alive_gets_401_on_the_next_request() {
    let stack = payments_stack("revoke-keepalive");
    let token = stack.token(SERVICE).unwrap();
    let up = stack.upstream(SERVICE);
    let ca = stack.sluice.ca_cert_path().unwrap();
    let port = up.addr().port().to_string();
    let mut agent = stack
        .spawn_agent_with_hosts(
            &[],
            &[
                "python3",
                "-c",
                KEEP_ALIVE_AGENT,
                up.host(),
                &port,
                &token,
                ca.to_str().unwrap(),
            ],
        )
        .unwrap();
    let mut stdin = agent.stdin.take().unwrap();
    let lines = Lines::new(agent.stdout.take().unwrap());

    let first = lines.next("the first response");
    let (status, local_port) = first.split_once(' ').unwrap();
    assert_eq!(status, "200", "first request, token valid");
    assert_eq!(up.wait_for(1, WAIT).unwrap().len(), 1);

    stack.sluice.token_revoke(&token).unwrap();
    stdin.write_all(b"go\n").unwrap();
    let second = lines.next("the second response");
    let (status, local_port_2) = second.split_once(' ').unwrap();
    assert_eq!(
        local_port_2, local_port,
        "both requests on one kept-alive connection"
    );
    assert_eq!(status, "401", "the request right after revocation");
    assert_eq!(
        process::wait_timeout(&mut agent, WAIT)
            .unwrap()
            .map(|s| s.success()),
        Some(true)
    );
    stack
        .sluice
        .capture_text("keep-alive agent stdout", &format!("{first}\n{second}"));

    let reqs = up.requests();
    assert_eq!(
        reqs.len(),
        1,
        "the upstream received only the request before revocation"
    );
    assert_eq!(reqs[0].target, "/v1/charges?n=0");
    stack.assert_no_secret_leaked();
}
