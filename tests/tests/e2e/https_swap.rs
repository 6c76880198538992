//! The core story: an unmodified agent calls an HTTPS API with a
//! placeholder token; the upstream receives the real key; nobody else ever
//! sees it.
use sluice_tests::{ServiceSpec, Stack};

use crate::{assert_no_token, assert_status, bearer, WAIT};

const SERVICE: &str = "payments-api";
const HOST: &str = "api.payments.test";

fn payments_stack(label: &str) -> Stack {
    Stack::builder(label)
        .agent("ci-bot")
        .service(ServiceSpec::https(SERVICE, HOST))
        .start()
        .expect("start the stack")
}

/// curl with `flag` (--http1.1 / --http2): 200 for the agent, the real key
/// at the upstream, a session record, and the secret nowhere else.
fn curl_swap(label: &str, flag: &str, want_version: &str) {
    let stack = payments_stack(label);
    let token = stack.token(SERVICE).unwrap();
    let up = stack.upstream(SERVICE);

    let res = stack
        .curl(&[
            flag,
            "-H",
            &bearer(&token),
            &stack.url(SERVICE, "/v1/charges?limit=1"),
        ])
        .unwrap();
    assert_status(&res, 200);
    assert_eq!(res.http_version, want_version, "ALPN towards the agent");
    assert_eq!(res.json().unwrap()["upstream"], HOST);
    // getpeername: the agent sees the address it dialled, not the listener.
    assert_eq!(res.remote_ip, up.addr().ip().to_string());

    let reqs = up.wait_for(1, WAIT).unwrap();
    assert_eq!(reqs.len(), 1, "exactly one request reached the upstream");
    let got = &reqs[0];
    assert_eq!(
        (got.method.as_str(), got.target.as_str()),
        ("GET", "/v1/charges?limit=1")
    );
    assert_eq!(
        got.header("authorization"),
        Some(format!("Bearer {}", stack.secret(SERVICE)).as_str())
    );
    assert_no_token(got);

    // The session record: open, auth_ok, request (method, path, status), close.
    let request = stack
        .sluice
        .wait_for_event("a request event for payments-api", WAIT, |e| {
            e["event"] == "request" && e["service"] == SERVICE
        })
        .unwrap();
    for key in ["ts", "session", "agent", "pid", "uid", "service", "event"] {
        assert!(
            !request[key].is_null(),
            "session record line lacks {key:?}: {request}"
        );
    }
    assert_eq!(request["agent"], stack.agent());
    assert_eq!(request["method"], "GET");
    assert!(
        request["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/v1/charges")),
        "path in {request}"
    );
    assert_eq!(request["status"], 200);
    let session = request["session"].as_str().unwrap().to_string();
    let closed = stack
        .sluice
        .wait_for_event("the close event of the session", WAIT, |e| {
            e["event"] == "close" && e["session"] == session.as_str()
        })
        .unwrap();
    assert_eq!(closed["agent"], stack.agent());
    let events: Vec<String> = stack
        .sluice
        .session_events(&session)
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap_or("").to_string())
        .collect();
    for want in ["open", "auth_ok", "request", "close"] {
        assert!(
            events.iter().any(|e| e == want),
            "sessions/{session}.jsonl lacks {want:?}: {events:?}"
        );
    }

    stack.assert_no_secret_leaked();
}

#[test]
fn curl_http1_1_with_a_bearer_token_gets_200_and_the_upstream_gets_the_real_key() {
    curl_swap("curl-http1", "--http1.1", "1.1");
}

#[test]
fn curl_http2_with_a_bearer_token_gets_200_and_the_upstream_gets_the_real_key() {
    curl_swap("curl-http2", "--http2", "2");
}

#[test]
fn python_requests_with_requests_ca_bundle_works_unmodified() {
    let stack = payments_stack("python-requests");
    let token = stack.token(SERVICE).unwrap();
    let ca = stack.sluice.ca_cert_path().unwrap();
    const SCRIPT: &str = r#"
import sys, requests
r = requests.get(sys.argv[1], headers={"Authorization": "Bearer " + sys.argv[2]}, timeout=15)
print(r.status_code)
print(r.json()["upstream"])
"#;
    let out = stack
        .python(
            &[("REQUESTS_CA_BUNDLE", ca.to_str().unwrap())],
            SCRIPT,
            &[&stack.url(SERVICE, "/v1/charges"), &token],
        )
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().collect::<Vec<_>>(), ["200", HOST]);

    let got = &stack.upstream(SERVICE).wait_for(1, WAIT).unwrap()[0];
    assert!(
        got.header("user-agent")
            .is_some_and(|ua| ua.starts_with("python-requests/")),
        "{:?}",
        got.headers
    );
    assert_eq!(
        got.header("authorization"),
        Some(format!("Bearer {}", stack.secret(SERVICE)).as_str())
    );
    assert_no_token(got);
    stack.assert_no_secret_leaked();
}

#[test]
fn plain_http_service_swaps_the_token_too() {
    let stack = Stack::builder("plain-http")
        .service(ServiceSpec::http(
            "inventory-api",
            "inventory.internal.test",
        ))
        .start()
        .unwrap();
    let token = stack.token("inventory-api").unwrap();
    let res = stack
        .curl(&[
            "-H",
            &bearer(&token),
            &stack.url("inventory-api", "/v2/items"),
        ])
        .unwrap();
    assert_status(&res, 200);
    let got = &stack.upstream("inventory-api").wait_for(1, WAIT).unwrap()[0];
    assert_eq!(got.path(), "/v2/items");
    assert_eq!(
        got.header("authorization"),
        Some(format!("Bearer {}", stack.secret("inventory-api")).as_str())
    );
    assert_no_token(got);
    stack.assert_no_secret_leaked();
}

#[test]
fn dialling_the_upstream_as_ipv4_mapped_ipv6_is_intercepted_too() {
    let stack = payments_stack("v4-mapped");
    let token = stack.token(SERVICE).unwrap();
    let up = stack.upstream(SERVICE);
    let mapped = format!("::ffff:{}", up.addr().ip());
    // curl opens an AF_INET6 socket for the mapped address: cgroup/connect6.
    let resolve = format!("{HOST}:{}:[{mapped}]", up.addr().port());
    let res = stack
        .curl_raw(&[
            "--resolve",
            resolve.as_str(),
            "-H",
            &bearer(&token),
            &stack.url(SERVICE, "/v1/charges"),
        ])
        .unwrap();
    assert_status(&res, 200);
    // getpeername6 restores the mapped address the agent dialled.
    assert_eq!(res.remote_ip, mapped);
    let got = &up.wait_for(1, WAIT).unwrap()[0];
    assert_eq!(
        got.header("authorization"),
        Some(format!("Bearer {}", stack.secret(SERVICE)).as_str())
    );
    assert_no_token(got);
    stack.assert_no_secret_leaked();
}
