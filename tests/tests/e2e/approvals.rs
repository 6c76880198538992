//! JIT approvals (issue #4): a `POST /v1/refunds` or a `DELETE` is held
//! until a human runs `sluice approve` or `sluice deny`, or until
//! `approval_timeout` passes. Redis requires a password in every test here,
//! read from `gateway.redis_password_file` by the daemon and the CLI alike.
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_tests::{
    approvals::{expected_approver, ThrowawayUser},
    process, ServiceSpec, Stack,
};

use crate::{assert_sluice_error_body, assert_status, bearer, billing_db, events, WAIT};

pub const API: &str = "payments-api";
pub const API_HOST: &str = "api.payments.test";
pub const REFUNDS_NEED_APPROVAL: &str = r#"approve = [{ method = "POST", path = "/v1/refunds*" }]"#;
pub const DELETES_NEED_APPROVAL: &str = r#"approve = ["DELETE"]"#;
pub const REFUND: &str = r#"{"charge":"ch_123","amount":500}"#;
/// The statement the PostgreSQL tests hold.
const DELETE_ID_3: &str = "DELETE FROM customers WHERE id = 3";

/// `payments-api` whose refunds need approval, `approval_timeout` as
/// given, Redis with a password.
pub fn refunds_stack(label: &str, approval_timeout: &str) -> Stack {
    Stack::builder(label)
        .redis_password()
        .gateway(&format!("approval_timeout = {approval_timeout:?}"))
        .service(ServiceSpec::https(API, API_HOST).extra(REFUNDS_NEED_APPROVAL))
        .start()
        .expect("start the stack")
}

/// `billing-db` whose DELETEs need approval (DELETE without WHERE is
/// denied outright), Redis with a password.
fn deletes_stack(label: &str, approval_timeout: &str) -> Stack {
    Stack::builder(label)
        .redis_password()
        .gateway(&format!("approval_timeout = {approval_timeout:?}"))
        .service(billing_db().extra(DELETES_NEED_APPROVAL))
        .start()
        .expect("start the stack")
}

/// curl arguments for the agent's refund (waits up to 40 s).
pub fn refund_args(stack: &Stack, token: &str) -> Vec<String> {
    let mut args = stack.resolve_args();
    args.extend(
        [
            "-X",
            "POST",
            "-H",
            &bearer(token),
            "-H",
            "Content-Type: application/json",
            "--data",
            REFUND,
            "--max-time",
            "40",
        ]
        .map(String::from),
    );
    args.push(stack.url(API, "/v1/refunds"));
    args
}

/// The refunds the upstream received.
pub fn refunds_received(stack: &Stack) -> usize {
    stack
        .upstream(API)
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path() == "/v1/refunds")
        .count()
}

/// The events of the session that waited for approval `id`.
pub fn session_of_approval(stack: &Stack, id: &str) -> Vec<Value> {
    let wait = stack
        .sluice
        .wait_for_event(&format!("approval_wait for {id}"), WAIT, |e| {
            e["event"] == "approval_wait" && e["approval"] == id
        })
        .unwrap();
    stack
        .sluice
        .session_events(wait["session"].as_str().unwrap())
        .unwrap()
}

/// The index of the first event named `event` in a session, for order checks.
#[track_caller]
pub fn position(session: &[Value], event: &str) -> usize {
    session
        .iter()
        .position(|e| e["event"] == event)
        .unwrap_or_else(|| panic!("no {event} event in {session:#?}"))
}

/// Asserts neither a service secret nor the Redis password appears in
/// anything Sluice or the agents printed or wrote.
#[track_caller]
pub fn assert_nothing_leaked(stack: &Stack) {
    stack.assert_no_secret_leaked();
    let password = stack
        .redis
        .password()
        .expect("the stack's Redis has a password");
    sluice_tests::assert_no_secret(password, &stack.sluice.all_output_text());
}

#[test]
fn held_refund_waits_for_sluice_approve_then_reaches_the_upstream_exactly_once() {
    let stack = refunds_stack("approve-refund", "60s");
    let token = stack.token(API).unwrap();
    let approval = std::thread::scope(|s| {
        let agent = s.spawn(|| stack.curl_raw(&refund_args(&stack, &token)).unwrap());
        let pending = stack
            .sluice
            .wait_for_pending("POST /v1/refunds", WAIT)
            .unwrap();
        assert_eq!(pending["agent"], stack.agent());
        assert_eq!(pending["service"], API);
        assert_eq!(
            pending["summary"], "POST /v1/refunds",
            "method and path, never the body"
        );
        assert!(
            pending["id"]
                .as_str()
                .is_some_and(|id| id.starts_with("apr_")),
            "{pending}"
        );
        let (created, expires) = (
            pending["created"].as_str().unwrap(),
            pending["expires"].as_str().unwrap(),
        );
        assert!(
            !created.is_empty() && expires > created,
            "created {created}, expires {expires}"
        );

        // The hold blocks nothing else: a GET goes through meanwhile.
        assert_status(
            &stack
                .curl(&["-H", &bearer(&token), &stack.url(API, "/v1/charges")])
                .unwrap(),
            200,
        );
        assert_eq!(
            stack.upstream(API).count(),
            1,
            "only the GET has reached the upstream"
        );
        assert!(!agent.is_finished(), "the refund is still held");

        let id = pending["id"].as_str().unwrap();
        let said = stack.sluice.approve(id).unwrap();
        assert_eq!(
            said.trim(),
            format!("{id} approved by {}", expected_approver())
        );
        let approved_at = Instant::now();
        let res = agent.join().unwrap();
        eprintln!("approve → refund answered in {:?}", approved_at.elapsed());
        assert_status(&res, 200);
        pending
    });
    let id = approval["id"].as_str().unwrap();

    assert_eq!(
        refunds_received(&stack),
        1,
        "the approved refund reached the upstream exactly once"
    );
    let refund = stack
        .upstream(API)
        .requests()
        .into_iter()
        .find(|r| r.method == "POST")
        .unwrap();
    assert_eq!(
        refund.body_len,
        REFUND.len(),
        "the held body was forwarded whole"
    );
    assert_eq!(
        refund.header("authorization"),
        Some(format!("Bearer {}", stack.secret(API)).as_str())
    );

    let session = session_of_approval(&stack, id);
    let approved = events(&session, "approved");
    assert_eq!(approved.len(), 1, "{session:#?}");
    assert_eq!(approved[0]["approval"], id);
    assert_eq!(approved[0]["by"], expected_approver());
    let request = session
        .iter()
        .position(|e| e["event"] == "request" && e["method"] == "POST")
        .expect("request event");
    assert!(position(&session, "approval_wait") < position(&session, "approved"));
    assert!(
        position(&session, "approved") < request,
        "recorded: approval_wait, approved, then the request"
    );
    assert_eq!(session[request]["status"], 200);

    let decided = stack
        .sluice
        .approval(id)
        .unwrap()
        .expect("listed with --all");
    assert_eq!(
        (decided["status"].as_str(), decided["by"].as_str()),
        (Some("approved"), Some(expected_approver().as_str()))
    );
    assert!(
        stack.sluice.approvals(false).unwrap().is_empty(),
        "nothing is pending any more"
    );
    assert_nothing_leaked(&stack);
}

#[test]
fn an_approval_covers_one_refund_only_the_next_is_held_again_and_deny_gets_403_with_the_id_and_reason(
) {
    let stack = refunds_stack("deny-refund", "60s");
    let token = stack.token(API).unwrap();
    let reason = "duplicate refund, ask finance";
    let (first, second, res) = std::thread::scope(|s| {
        let agent = s.spawn(|| stack.curl_raw(&refund_args(&stack, &token)).unwrap());
        let first = stack
            .sluice
            .wait_for_pending("POST /v1/refunds", WAIT)
            .unwrap();
        stack.sluice.approve(first["id"].as_str().unwrap()).unwrap();
        assert_status(&agent.join().unwrap(), 200);

        // The same request again needs a new approval.
        let agent = s.spawn(|| stack.curl_raw(&refund_args(&stack, &token)).unwrap());
        let second = stack
            .sluice
            .wait_for_pending("POST /v1/refunds", WAIT)
            .unwrap();
        stack
            .sluice
            .deny(second["id"].as_str().unwrap(), reason)
            .unwrap();
        (first, second, agent.join().unwrap())
    });
    let (first, second) = (
        first["id"].as_str().unwrap(),
        second["id"].as_str().unwrap(),
    );
    assert_ne!(first, second, "each refund gets its own approval");

    assert_status(&res, 403);
    assert_sluice_error_body(&res);
    let error = res.json().unwrap()["error"].as_str().unwrap().to_string();
    assert!(
        error.contains(second) && error.contains(reason),
        "the 403 names the approval and the reason: {error}"
    );
    assert_eq!(
        refunds_received(&stack),
        1,
        "the denied refund never reached the upstream"
    );

    let session = session_of_approval(&stack, second);
    let rejected = events(&session, "rejected");
    assert_eq!(rejected.len(), 1, "{session:#?}");
    assert_eq!(rejected[0]["approval"], second);
    assert!(
        rejected[0]["reason"].as_str().unwrap().contains(reason),
        "{}",
        rejected[0]
    );
    assert!(events(&session, "approved").is_empty(), "{session:#?}");

    let denied = stack
        .sluice
        .approval(second)
        .unwrap()
        .expect("listed with --all");
    assert_eq!(
        (denied["status"].as_str(), denied["reason"].as_str()),
        (Some("denied"), Some(reason))
    );
    assert_eq!(
        stack.sluice.approval(first).unwrap().unwrap()["status"],
        "approved"
    );
    assert_nothing_leaked(&stack);
}

#[test]
fn held_delete_waits_for_sluice_approve_then_the_row_is_gone() {
    let stack = deletes_stack("approve-delete", "60s");
    let token = stack.token(crate::DB).unwrap();
    let conninfo = stack.pg_conninfo(crate::DB, &token, "sslmode=disable");
    let approval = std::thread::scope(|s| {
        let agent = s.spawn(|| stack.psql(&conninfo, &["-c", DELETE_ID_3]).unwrap());
        let pending = stack
            .sluice
            .wait_for_pending("DELETE FROM customers", WAIT)
            .unwrap();
        assert_eq!(pending["summary"], DELETE_ID_3);
        assert_eq!(
            (pending["agent"].as_str(), pending["service"].as_str()),
            (Some(stack.agent()), Some(crate::DB))
        );
        assert_eq!(
            stack.postgres(crate::DB).customers_count().unwrap(),
            Some(3),
            "nothing deleted while held"
        );
        assert!(!agent.is_finished(), "psql waits");
        stack
            .sluice
            .approve(pending["id"].as_str().unwrap())
            .unwrap();
        let res = agent.join().unwrap();
        res.assert_ok();
        assert_eq!(res.stdout.trim(), "DELETE 1");
        pending
    });
    let id = approval["id"].as_str().unwrap();
    let db = stack.postgres(crate::DB);
    assert_eq!(
        db.superuser_psql("billing", "SELECT id FROM customers ORDER BY id")
            .unwrap(),
        "1\n2\n",
        "row 3 is gone"
    );

    let session = session_of_approval(&stack, id);
    assert!(position(&session, "approval_wait") < position(&session, "approved"));
    assert_eq!(events(&session, "approved")[0]["by"], expected_approver());
    assert_eq!(
        stack.sluice.approval(id).unwrap().unwrap()["status"],
        "approved"
    );
    assert_nothing_leaked(&stack);
}

#[test]
fn denied_delete_gets_42501_with_the_id_and_reason_the_row_stays_and_the_session_goes_on() {
    let stack = deletes_stack("deny-delete", "60s");
    let token = stack.token(crate::DB).unwrap();
    let conninfo = stack.pg_conninfo(crate::DB, &token, "sslmode=disable");
    let reason = "customer 2 has open invoices";
    let delete = "DELETE FROM customers WHERE id = 2";
    let (pending, res) = std::thread::scope(|s| {
        let agent = s.spawn(|| {
            // Two statements on one session; VERBOSITY shows the SQLSTATE.
            let args = [
                "-At",
                "-v",
                "VERBOSITY=verbose",
                "-c",
                delete,
                "-c",
                "SELECT name FROM customers WHERE id = 2",
            ];
            stack.psql(&conninfo, &args).unwrap()
        });
        let pending = stack.sluice.wait_for_pending(delete, WAIT).unwrap();
        stack
            .sluice
            .deny(pending["id"].as_str().unwrap(), reason)
            .unwrap();
        (pending, agent.join().unwrap())
    });
    let id = pending["id"].as_str().unwrap();
    res.assert_ok();
    let error = res
        .stderr
        .lines()
        .find(|l| l.starts_with("ERROR:"))
        .unwrap_or_else(|| panic!("no ERROR: {}", res.stderr));
    assert!(error.contains("42501"), "SQLSTATE 42501: {error}");
    assert!(
        error.contains(id) && error.contains(reason),
        "the error names the approval and the reason: {error}"
    );
    assert_eq!(
        res.stdout.trim(),
        "Grace Hopper",
        "the session goes on and the row is still there"
    );
    assert_eq!(
        stack.postgres(crate::DB).customers_count().unwrap(),
        Some(3)
    );

    let session = session_of_approval(&stack, id);
    let rejected = events(&session, "rejected");
    assert_eq!(rejected.len(), 1, "{session:#?}");
    assert!(rejected[0]["reason"].as_str().unwrap().contains(reason));
    assert_eq!(
        stack.sluice.approval(id).unwrap().unwrap()["status"],
        "denied"
    );
    assert_nothing_leaked(&stack);
}

#[test]
fn unanswered_refund_and_delete_are_rejected_after_the_2s_approval_timeout_and_nothing_reaches_the_upstream(
) {
    let stack = Stack::builder("approval-timeout")
        .redis_password()
        .gateway(r#"approval_timeout = "2s""#)
        .service(ServiceSpec::https(API, API_HOST).extra(REFUNDS_NEED_APPROVAL))
        .service(billing_db().extra(DELETES_NEED_APPROVAL))
        .start()
        .unwrap();
    let timeout = Duration::from_secs(2);

    // HTTP: 403 with a JSON body naming the approval.
    let token = stack.token(API).unwrap();
    let started = Instant::now();
    let res = stack.curl_raw(&refund_args(&stack, &token)).unwrap();
    let waited = started.elapsed();
    eprintln!("refund rejected after {waited:?}");
    assert_status(&res, 403);
    assert_sluice_error_body(&res);
    let error = res.json().unwrap()["error"].as_str().unwrap().to_string();
    assert!(
        error.contains("apr_") && error.contains("timed out"),
        "{error}"
    );
    assert!(
        waited >= timeout && waited < timeout + Duration::from_secs(5),
        "held for {waited:?}, approval_timeout 2s"
    );
    assert_eq!(
        stack.upstream(API).count(),
        0,
        "nothing reached the upstream"
    );
    let id = error
        .split_whitespace()
        .find(|w| w.starts_with("apr_"))
        .unwrap();
    assert_eq!(
        stack.sluice.approval(id).unwrap().unwrap()["status"],
        "expired"
    );
    assert_eq!(
        events(&session_of_approval(&stack, id), "rejected").len(),
        1
    );

    // PostgreSQL: 42501 naming the approval; the session stays usable.
    let token = stack.token(crate::DB).unwrap();
    let conninfo = stack.pg_conninfo(crate::DB, &token, "sslmode=disable");
    let started = Instant::now();
    let res = stack
        .psql(
            &conninfo,
            &[
                "-At",
                "-v",
                "VERBOSITY=verbose",
                "-c",
                DELETE_ID_3,
                "-c",
                "SELECT count(*) FROM customers",
            ],
        )
        .unwrap();
    let waited = started.elapsed();
    eprintln!("delete rejected after {waited:?}");
    res.assert_ok();
    let error = res
        .stderr
        .lines()
        .find(|l| l.starts_with("ERROR:"))
        .unwrap_or_else(|| panic!("no ERROR: {}", res.stderr));
    assert!(
        error.contains("42501") && error.contains("apr_") && error.contains("timed out"),
        "{error}"
    );
    assert_eq!(
        res.stdout.trim(),
        "3",
        "the session is still usable and no row was deleted"
    );
    assert!(waited >= timeout, "held for {waited:?}");
    assert_eq!(
        stack.postgres(crate::DB).customers_count().unwrap(),
        Some(3)
    );
    assert!(
        stack.sluice.approvals(false).unwrap().is_empty(),
        "no hold is left pending"
    );
    assert_nothing_leaked(&stack);
}

#[test]
fn a_user_outside_sluice_admin_cannot_approve_or_deny_and_the_hold_stays_pending() {
    let stack = refunds_stack("non-admin", "60s");
    let token = stack.token(API).unwrap();
    let user = ThrowawayUser::create().unwrap();
    // The user may read the config (not the Redis password): the refusal
    // must come from the permission check, not from a file it cannot read.
    let config = user.readable_copy(&stack.sluice.config_path).unwrap();
    let res = std::thread::scope(|s| {
        let agent = s.spawn(|| stack.curl_raw(&refund_args(&stack, &token)).unwrap());
        let pending = stack
            .sluice
            .wait_for_pending("POST /v1/refunds", WAIT)
            .unwrap();
        let id = pending["id"].as_str().unwrap();
        for args in [
            vec!["approve", id],
            vec!["deny", id, "--reason", "not mine to deny"],
        ] {
            let out = user.sluice(&config, &args).unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{args:?} as {}: {stderr}",
                user.name
            );
            assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
            assert!(
                stderr.contains(&user.name)
                    && stderr.contains("sluice-admin")
                    && stderr.contains("may not approve"),
                "{stderr}"
            );
            assert!(out.stdout.is_empty());
        }
        let still = stack.sluice.approval(id).unwrap().unwrap();
        assert_eq!(
            (still["status"].as_str(), still["by"].as_str()),
            (Some("pending"), None)
        );
        assert!(!agent.is_finished(), "the refund is still held");
        stack.sluice.deny(id, "refused by root").unwrap();
        agent.join().unwrap()
    });
    assert_status(&res, 403);
    assert_eq!(stack.upstream(API).count(), 0);
    assert_nothing_leaked(&stack);
}

#[test]
fn kill_9_while_a_refund_is_held_fails_the_agent_and_after_restart_the_approval_shows_abandoned() {
    let mut stack = refunds_stack("abandoned", "60s");
    let token = stack.token(API).unwrap();
    let (id, res) = std::thread::scope(|s| {
        let agent = s.spawn(|| stack.curl_raw(&refund_args(&stack, &token)).unwrap());
        let pending = stack
            .sluice
            .wait_for_pending("POST /v1/refunds", WAIT)
            .unwrap();
        // A crash: SIGKILL to the daemon the harness started, by PID.
        process::signal(stack.sluice.pid().expect("running"), libc::SIGKILL);
        (
            pending["id"].as_str().unwrap().to_string(),
            agent.join().unwrap(),
        )
    });
    assert_ne!(
        res.exit, 0,
        "the agent sees a failure, not a response: {res:?}"
    );
    assert_eq!(res.status, 0, "no HTTP status: {res:?}");
    stack.sluice.kill9(); // reap

    stack.sluice.start().unwrap();
    let abandoned = stack
        .sluice
        .wait_for_approval_status(&id, "abandoned", WAIT)
        .unwrap();
    assert!(
        stack.sluice.approvals(false).unwrap().is_empty(),
        "no stale hold: {abandoned}"
    );
    let late = stack.sluice.cli_output(&["approve", &id], None).unwrap();
    assert_eq!(
        late.status.code(),
        Some(1),
        "an abandoned approval cannot be approved any more"
    );
    assert!(
        String::from_utf8_lossy(&late.stderr).contains("already abandoned"),
        "{late:?}"
    );
    assert_eq!(
        stack.upstream(API).count(),
        0,
        "nothing reached the upstream"
    );
    assert_nothing_leaked(&stack);
}

#[test]
fn an_agent_that_gives_up_while_held_leaves_its_approval_abandoned_and_a_late_approve_forwards_nothing(
) {
    let stack = refunds_stack("gives-up", "60s");
    let token = stack.token(API).unwrap();
    let mut args = refund_args(&stack, &token);
    // The agent's own patience: curl gives up after 3 s.
    let at = args.iter().position(|a| a == "40").unwrap();
    args[at] = "3".into();
    let res = std::thread::scope(|s| {
        let agent = s.spawn(|| stack.curl_raw(&args).unwrap());
        stack
            .sluice
            .wait_for_pending("POST /v1/refunds", WAIT)
            .unwrap();
        agent.join().unwrap()
    });
    assert_eq!(res.exit, 28, "curl gave up: {res:?}");
    let id = stack.sluice.approvals(true).unwrap()[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let abandoned = stack
        .sluice
        .wait_for_approval_status(&id, "abandoned", WAIT)
        .unwrap();
    assert_eq!(abandoned["reason"], "the agent went away");
    let late = stack.sluice.cli_output(&["approve", &id], None).unwrap();
    assert_eq!(late.status.code(), Some(1), "{late:?}");
    assert!(
        String::from_utf8_lossy(&late.stderr).contains("already abandoned"),
        "{late:?}"
    );
    assert_eq!(
        stack.upstream(API).count(),
        0,
        "nothing reached the upstream"
    );
    assert_nothing_leaked(&stack);
}

#[test]
fn a_psql_that_gives_up_while_held_leaves_its_approval_abandoned_and_a_late_approve_deletes_nothing(
) {
    let stack = deletes_stack("pg-gives-up", "60s");
    let token = stack.token(crate::DB).unwrap();
    let conninfo = stack.pg_conninfo(crate::DB, &token, "sslmode=disable");
    // The agent's own patience: timeout(1) ends psql after 3 s.
    let argv = [
        "timeout",
        "3",
        "psql",
        "-X",
        "-w",
        "-d",
        &conninfo,
        "-c",
        DELETE_ID_3,
    ];
    let res = std::thread::scope(|s| {
        let agent = s.spawn(|| stack.sluice.exec(stack.agent(), &argv).unwrap());
        stack
            .sluice
            .wait_for_pending("DELETE FROM customers", WAIT)
            .unwrap();
        agent.join().unwrap()
    });
    assert_eq!(res.status.code(), Some(124), "psql gave up: {res:?}");
    let id = stack.sluice.approvals(true).unwrap()[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let abandoned = stack
        .sluice
        .wait_for_approval_status(&id, "abandoned", WAIT);
    let late = stack.sluice.cli_output(&["approve", &id], None).unwrap();
    let count = stack.postgres(crate::DB).customers_count().unwrap();
    assert!(
        abandoned.is_ok(),
        "the approval is still {:?}",
        stack
            .sluice
            .approval(&id)
            .unwrap()
            .map(|a| a["status"].clone())
    );
    assert_eq!(
        late.status.code(),
        Some(1),
        "a late approve must fail: {late:?}"
    );
    assert_eq!(
        count,
        Some(3),
        "no row may be deleted for an agent that has gone"
    );
}
