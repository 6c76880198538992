//! A crashed daemon fails closed: agents get connection refused, never a
//! direct path to the upstream; a restart re-adopts the pins.
use sluice_tests::{ServiceSpec, Stack};

use crate::{assert_status, bearer, WAIT};

const SERVICE: &str = "payments-api";

#[test]
fn after_kill_9_agents_get_connection_refused_and_a_restart_restores_service() {
    let mut stack = Stack::builder("restart")
        .service(ServiceSpec::https(SERVICE, "api.payments.test"))
        .start()
        .unwrap();
    let token = stack.token(SERVICE).unwrap();
    let url = stack.url(SERVICE, "/v1/charges");
    let upstream_addr = stack.upstream(SERVICE).addr();
    assert_status(&stack.curl(&["-H", &bearer(&token), &url]).unwrap(), 200);
    assert_eq!(stack.upstream(SERVICE).wait_for(1, WAIT).unwrap().len(), 1);

    stack.sluice.kill9();
    let res = stack.curl(&["-H", &bearer(&token), &url]).unwrap();
    assert_eq!(
        (res.exit, res.status),
        (7, 0),
        "curl must fail to connect; stderr: {}",
        res.stderr
    );
    assert_eq!(
        stack.agent_tcp_connect(upstream_addr).unwrap(),
        Err("ECONNREFUSED".to_string())
    );
    assert_eq!(
        stack.upstream(SERVICE).count(),
        1,
        "nothing reached the upstream while sluice was down"
    );

    stack.sluice.start().unwrap();
    let res = stack.curl(&["-H", &bearer(&token), &url]).unwrap();
    assert_status(&res, 200);
    let reqs = stack.upstream(SERVICE).wait_for(2, WAIT).unwrap();
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        reqs[1].header("authorization"),
        Some(format!("Bearer {}", stack.secret(SERVICE)).as_str())
    );

    let second_run = stack.sluice.run_log(2);
    let errors: Vec<&str> = second_run.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(
        errors.is_empty(),
        "the restarted daemon logged errors:\n{}",
        errors.join("\n")
    );
    assert!(stack.sluice.is_running());
    stack.assert_no_secret_leaked();
}
