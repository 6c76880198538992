//! Two `sluice run` daemons share one Redis (DESIGN.md §5), each with its
//! own listener, pins, vault, CA and agent cgroup: an approval given
//! through either releases the hold wherever it waits, and a revocation
//! through either is seen by both at once.
use std::{
    io::Write,
    process::{Child, ChildStdin},
    time::{Duration, Instant},
};

use serde_json::Value;
use sluice_tests::{process, ServiceSpec, Sluice, Stack};

use crate::{
    approvals::{
        refund_args, refunds_received, API, API_HOST, DELETES_NEED_APPROVAL, REFUNDS_NEED_APPROVAL,
    },
    assert_status, bearer, billing_db, Lines, DB, PG_CLIENT, WAIT,
};

/// The second gateway's agent.
const AGENT_B: &str = "agent-b";
/// How soon a revocation made anywhere must bite.
const REVOCATION_BOUND: Duration = Duration::from_secs(1);

/// `payments-api` (refunds need approval) and `billing-db` (DELETEs need
/// approval) behind a first gateway, plus a second gateway for [`AGENT_B`].
fn two_gateways(label: &str) -> (Stack, Sluice) {
    let stack = Stack::builder(label)
        .redis_password()
        .gateway(r#"approval_timeout = "60s""#)
        .service(ServiceSpec::https(API, API_HOST).extra(REFUNDS_NEED_APPROVAL))
        .service(billing_db().extra(DELETES_NEED_APPROVAL))
        .start()
        .expect("start the first gateway");
    let second = stack
        .second_gateway(AGENT_B)
        .expect("start the second gateway");
    assert_ne!(second.listen, stack.sluice.listen);
    assert_ne!(second.bpf_dir, stack.sluice.bpf_dir);
    (stack, second)
}

/// A Python agent on one kept-alive HTTPS connection: each line on its
/// stdin is `METHOD PATH`; it prints `<status> <local port> <body on one
/// line>` per request.
pub const KEEP_ALIVE_AGENT: &str = r#"
import http.client, ssl, sys
host, port, token, cafile = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
conn = http.client.HTTPSConnection(host, port, context=ssl.create_default_context(cafile=cafile), timeout=60)
for line in sys.stdin:
    method, path = line.split()
    conn.request(method, path, headers={"Authorization": "Bearer " + token})
    local_port = conn.sock.getsockname()[1]
    resp = conn.getresponse()
    body = resp.read().decode("utf-8", "replace").replace("\n", " ")
    print(resp.status, local_port, body, flush=True)
"#;

/// How long a kept-alive request may take: with Redis down, each Redis
/// round trip of the gateway takes about 9.4 s before it fails.
const AGENT_PATIENCE: Duration = Duration::from_secs(40);

/// The next line from `lines` within `timeout` (longer than [`WAIT`]).
#[track_caller]
pub fn next_line(lines: &Lines, what: &str, timeout: Duration) -> String {
    lines
        .0
        .recv_timeout(timeout)
        .unwrap_or_else(|_| panic!("no line from the agent within {timeout:?}: {what}"))
}

/// [`KEEP_ALIVE_AGENT`] running as the stack's agent.
pub struct KeepAliveAgent {
    child: Child,
    stdin: ChildStdin,
    lines: Lines,
    /// Every line it printed, for the secret scans.
    pub transcript: Vec<String>,
}

impl KeepAliveAgent {
    pub fn start(stack: &Stack, service: &str, token: &str) -> KeepAliveAgent {
        let up = stack.upstream(service);
        let ca = stack.sluice.ca_cert_path().unwrap();
        let port = up.addr().port().to_string();
        let mut child = stack
            .spawn_agent_with_hosts(
                &[],
                &[
                    "python3",
                    "-c",
                    KEEP_ALIVE_AGENT,
                    up.host(),
                    &port,
                    token,
                    ca.to_str().unwrap(),
                ],
            )
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let lines = Lines::new(child.stdout.take().unwrap());
        KeepAliveAgent {
            child,
            stdin,
            lines,
            transcript: Vec::new(),
        }
    }

    /// GETs `path`; (status, local port).
    pub fn get(&mut self, path: &str) -> (u16, u16) {
        let (status, port, _) = self.request("GET", path);
        (status, port)
    }

    /// Sends `METHOD path` (no body); (status, local port, response body).
    pub fn request(&mut self, method: &str, path: &str) -> (u16, u16, String) {
        self.stdin
            .write_all(format!("{method} {path}\n").as_bytes())
            .unwrap();
        let line = next_line(
            &self.lines,
            &format!("the response to {method} {path}"),
            AGENT_PATIENCE,
        );
        self.transcript.push(line.clone());
        let mut fields = line.splitn(3, ' ');
        let mut next = || {
            fields
                .next()
                .unwrap_or_else(|| panic!("agent printed {line:?}"))
                .to_string()
        };
        let (status, port, body) = (next(), next(), next());
        (status.parse().unwrap(), port.parse().unwrap(), body)
    }

    /// Closes its stdin and waits for it to exit 0.
    pub fn finish(self) -> Vec<String> {
        let KeepAliveAgent {
            mut child,
            stdin,
            transcript,
            ..
        } = self;
        drop(stdin);
        assert_eq!(
            process::wait_timeout(&mut child, WAIT)
                .unwrap()
                .map(|s| s.success()),
            Some(true)
        );
        transcript
    }
}

#[test]
fn an_approval_given_through_the_second_gateway_releases_a_refund_and_a_delete_held_on_the_first() {
    let (stack, second) = two_gateways("two-gw-approve");

    // The second gateway serves its own agent, with the shared token store.
    let token_b = second.token_issue(AGENT_B, API, "1h").unwrap();
    let mut args = stack.resolve_args();
    args.extend([
        "-H".to_string(),
        bearer(&token_b),
        stack.url(API, "/v1/charges"),
    ]);
    assert_status(&stack.curl_via(&second, AGENT_B, &args).unwrap(), 200);
    assert_eq!(stack.upstream(API).wait_for(1, WAIT).unwrap().len(), 1);

    let token = stack.token(API).unwrap();
    let db_token = stack.token(DB).unwrap();
    let conninfo = stack.pg_conninfo(DB, &db_token, "sslmode=disable");
    std::thread::scope(|s| {
        // A refund held on the first gateway, approved through the second.
        let agent = s.spawn(|| stack.curl_raw(&refund_args(&stack, &token)).unwrap());
        let pending = second.wait_for_pending("POST /v1/refunds", WAIT).unwrap();
        assert_eq!(
            pending["agent"],
            stack.agent(),
            "the second gateway lists the first one's hold"
        );
        let approved_at = Instant::now();
        second.approve(pending["id"].as_str().unwrap()).unwrap();
        let res = agent.join().unwrap();
        eprintln!(
            "approval via the second gateway released the refund on the first in {:?}",
            approved_at.elapsed()
        );
        assert_status(&res, 200);

        // A DELETE held on the first gateway, approved through the second.
        let agent = s.spawn(|| {
            stack
                .psql(&conninfo, &["-c", "DELETE FROM customers WHERE id = 1"])
                .unwrap()
        });
        let pending = second
            .wait_for_pending("DELETE FROM customers", WAIT)
            .unwrap();
        let approved_at = Instant::now();
        second.approve(pending["id"].as_str().unwrap()).unwrap();
        let res = agent.join().unwrap();
        eprintln!(
            "approval via the second gateway released the DELETE on the first in {:?}",
            approved_at.elapsed()
        );
        res.assert_ok();
        assert_eq!(res.stdout.trim(), "DELETE 1");
    });
    assert_eq!(
        refunds_received(&stack),
        1,
        "the refund reached the upstream once"
    );
    assert_eq!(
        stack.postgres(DB).customers_count().unwrap(),
        Some(2),
        "the row is gone"
    );

    // Both decisions are recorded on the first gateway, where they waited.
    let approved: Vec<Value> = stack
        .sluice
        .audit_events()
        .unwrap()
        .into_iter()
        .filter(|e| e["event"] == "approved")
        .collect();
    assert_eq!(approved.len(), 2, "{approved:#?}");
    assert!(second
        .audit_events()
        .unwrap()
        .iter()
        .all(|e| e["event"] != "approval_wait"));
    stack.assert_no_secret_leaked();
    for s in &stack.services {
        sluice_tests::assert_no_secret(&s.secret, &second.all_output_text());
    }
}

#[test]
fn a_token_revoked_through_the_second_gateway_is_refused_by_the_first_within_1_s() {
    let (stack, second) = two_gateways("two-gw-revoke");

    // HTTP: a kept-alive connection through the first gateway.
    let token = stack.token(API).unwrap();
    let mut agent = KeepAliveAgent::start(&stack, API, &token);
    let (status, port) = agent.get("/v1/charges?n=0");
    assert_eq!(status, 200);
    second.token_revoke(&token).unwrap();
    let revoked = Instant::now();
    let mut n = 1;
    let (status, port_after) = loop {
        let (status, p) = agent.get(&format!("/v1/charges?n={n}"));
        if status != 200 || revoked.elapsed() > REVOCATION_BOUND {
            break (status, p);
        }
        n += 1;
    };
    let took = revoked.elapsed();
    eprintln!(
        "HTTP: refused {took:?} after the revocation through the second gateway ({n} request(s))"
    );
    assert_eq!(status, 401, "refused by the first gateway");
    assert!(took <= REVOCATION_BOUND, "refused after {took:?}");
    assert_eq!(port_after, port, "on the same kept-alive connection");
    let transcript = agent.finish();
    stack
        .sluice
        .capture_text("keep-alive agent", &transcript.join("\n"));

    // PostgreSQL: an open session through the first gateway.
    let db_token = stack.token(DB).unwrap();
    let conninfo = stack.pg_conninfo(DB, &db_token, "sslmode=disable");
    let argv = [
        PG_CLIENT,
        &conninfo,
        "query:SELECT 1",
        "wait",
        "query:SELECT count(*) FROM customers",
        "closed",
    ];
    let mut pg = stack.sluice.exec_spawn(stack.agent(), &argv).unwrap();
    let mut stdin = pg.stdin.take().unwrap();
    let lines = Lines::new(pg.stdout.take().unwrap());
    let first = lines.next("the first statement");
    assert!(first.contains(r#""rows":[[1]]"#), "{first}");
    assert!(lines.next("waiting").contains("waiting"));
    second.token_revoke(&db_token).unwrap();
    let revoked = Instant::now();
    stdin.write_all(b"go\n").unwrap();
    let next: Value = serde_json::from_str(&lines.next("the next statement")).unwrap();
    let took = revoked.elapsed();
    eprintln!("PostgreSQL: next statement refused {took:?} after the revocation through the second gateway");
    assert_eq!(next["error"]["code"], "28P01", "{next}");
    assert!(took <= REVOCATION_BOUND, "refused after {took:?}");
    let closed: Value = serde_json::from_str(&lines.next("whether the connection closed")).unwrap();
    assert_eq!(
        closed["closed"], true,
        "the first gateway closed the session"
    );
    assert_eq!(
        process::wait_timeout(&mut pg, WAIT)
            .unwrap()
            .map(|s| s.success()),
        Some(true)
    );
    stack
        .sluice
        .capture_text("pg_client", &format!("{first}\n{next}\n{closed}"));

    let reached: Vec<String> = stack
        .upstream(API)
        .requests()
        .iter()
        .map(|r| r.target.clone())
        .collect();
    let before: Vec<String> = (0..n).map(|i| format!("/v1/charges?n={i}")).collect();
    assert_eq!(
        reached, before,
        "every request before the refusal reached the upstream, none after"
    );
    stack.assert_no_secret_leaked();
}
