//! Redis down means fail closed for whatever needs Redis (issue #4): new
//! logins and approvals get a clear error naming Redis, sessions already
//! authenticated go on, and when redis-server returns Sluice reconnects by
//! itself, without a restart.
use std::{
    io::Write,
    time::{Duration, Instant},
};

use serde_json::Value;
use sluice_tests::{poll, process, HbaMethod, ServiceSpec, Stack};

use crate::{
    approvals::{
        assert_nothing_leaked, API, API_HOST, DELETES_NEED_APPROVAL, REFUNDS_NEED_APPROVAL,
    },
    assert_sluice_error_body, assert_status, bearer, billing_db,
    two_gateways::{next_line, KeepAliveAgent},
    Lines, DB, PG_CLIENT, WAIT,
};

/// How long Sluice may take to notice Redis is back.
const RECOVERY: Duration = Duration::from_secs(15);
/// How long one agent step may take while Redis is down.
const OUTAGE_STEP: Duration = Duration::from_secs(40);

/// `payments-api` (refunds need approval) and `billing-db` (DELETEs need
/// approval); Redis with a password.
fn stack(label: &str) -> Stack {
    Stack::builder(label)
        .redis_password()
        .service(ServiceSpec::https(API, API_HOST).extra(REFUNDS_NEED_APPROVAL))
        .service(billing_db().extra(DELETES_NEED_APPROVAL))
        .start()
        .expect("start the stack")
}

/// Runs [`crate::PG_CLIENT`] as the agent: `SELECT count(*)`; its JSON lines.
fn pg_count(stack: &Stack, token: &str) -> Vec<Value> {
    let conninfo = stack.pg_conninfo(DB, token, "sslmode=disable");
    crate::pg_client(stack, &conninfo, &["query:SELECT count(*) FROM customers"])
}

#[test]
fn with_redis_killed_new_logins_fail_closed_naming_redis_and_work_again_after_restart_without_restarting_sluice(
) {
    let mut stack = stack("redis-down-logins");
    let daemon = stack.sluice.pid();
    let charges = stack.url(API, "/v1/charges");
    // Tokens issued while Redis is up, never presented yet.
    let token = stack.token(API).unwrap();
    let db_token = stack.token(DB).unwrap();

    stack.redis.stop();

    // HTTP: 503 naming Redis.
    let started = Instant::now();
    let res = stack
        .curl(&["-H", &bearer(&token), "--max-time", "40", &charges])
        .unwrap();
    eprintln!("HTTP login refused after {:?}", started.elapsed());
    assert_status(&res, 503);
    assert_sluice_error_body(&res);
    let error = res.json().unwrap()["error"].as_str().unwrap().to_string();
    assert!(error.contains("Redis"), "the 503 names Redis: {error}");

    // PostgreSQL: FATAL 08006 naming Redis, for tokio-postgres and psql.
    let started = Instant::now();
    let out = pg_count(&stack, &db_token);
    eprintln!("PostgreSQL login refused after {:?}", started.elapsed());
    assert_eq!(out[0]["connect_error"]["code"], "08006", "{out:?}");
    assert!(
        out[0]["connect_error"]["message"]
            .as_str()
            .unwrap()
            .contains("Redis"),
        "{out:?}"
    );
    let conninfo = stack.pg_conninfo(DB, &db_token, "sslmode=disable");
    let res = stack.psql(&conninfo, &["-c", "SELECT 1"]).unwrap();
    assert_eq!(res.exit, 2, "psql cannot log in: {}", res.stderr);
    assert!(
        res.stderr.contains("FATAL") && res.stderr.contains("Redis"),
        "{}",
        res.stderr
    );

    // The CLI says so too.
    let out = stack
        .sluice
        .cli_output(&["approvals", "list"], None)
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Redis"),
        "{out:?}"
    );
    assert_eq!(stack.upstream(API).count(), 0, "no request got through");
    assert_eq!(
        stack.postgres(DB).logins_by(HbaMethod::ScramSha256),
        0,
        "no upstream login was made"
    );

    // Same port, same password. Its data is gone (no persistence), hence
    // new tokens. Sluice is not restarted.
    stack.redis.restart().unwrap();
    let restarted = Instant::now();
    let token = stack.token(API).unwrap();
    let db_token = stack.token(DB).unwrap();
    poll("an HTTP login after Redis returned", RECOVERY, || {
        let res = stack.curl(&["-H", &bearer(&token), &charges]).unwrap();
        (res.status == 200).then_some(())
    })
    .unwrap();
    eprintln!(
        "HTTP logins work again {:?} after redis-server restarted",
        restarted.elapsed()
    );
    let out = poll("a PostgreSQL login after Redis returned", RECOVERY, || {
        let out = pg_count(&stack, &db_token);
        out[0].get("rows").is_some().then_some(out)
    })
    .unwrap();
    assert_eq!(out[0]["rows"], serde_json::json!([[3]]));
    eprintln!(
        "PostgreSQL logins work again {:?} after redis-server restarted",
        restarted.elapsed()
    );
    assert_eq!(stack.sluice.pid(), daemon, "the same sluice run");
    assert!(stack.sluice.is_running());

    // Revocation works again too.
    stack.sluice.token_revoke(&token).unwrap();
    assert_status(
        &stack.curl(&["-H", &bearer(&token), &charges]).unwrap(),
        401,
    );
    assert_nothing_leaked(&stack);
}

#[test]
fn during_a_redis_outage_authenticated_sessions_go_on_but_what_needs_an_approval_is_refused_naming_redis(
) {
    let mut stack = stack("redis-down-sessions");
    // An HTTP keep-alive session and a PostgreSQL session, both
    // authenticated while Redis is up.
    let token = stack.token(API).unwrap();
    let mut http = KeepAliveAgent::start(&stack, API, &token);
    assert_eq!(http.get("/v1/charges?before").0, 200);
    let db_token = stack.token(DB).unwrap();
    let conninfo = stack.pg_conninfo(DB, &db_token, "sslmode=disable");
    let steps = [
        PG_CLIENT,
        &conninfo,
        "query:SELECT 1",
        "wait",
        "query:DELETE FROM customers WHERE id = 3",
        "closed",
    ];
    let mut pg = stack.sluice.exec_spawn(stack.agent(), &steps).unwrap();
    let mut pg_stdin = pg.stdin.take().unwrap();
    let pg_lines = Lines::new(pg.stdout.take().unwrap());
    assert!(pg_lines
        .next("the first statement")
        .contains(r#""rows":[[1]]"#));
    assert!(pg_lines.next("waiting").contains("waiting"));

    stack.redis.stop();
    let stopped = Instant::now();

    // Both sessions at once: each step needs Redis, and the cached validity
    // of a session lasts 30 s from its last check.
    let (delete, closed) = std::thread::scope(|s| {
        let pg = s.spawn(move || {
            pg_stdin.write_all(b"go\n").unwrap();
            let delete: Value =
                serde_json::from_str(&next_line(&pg_lines, "the DELETE", OUTAGE_STEP)).unwrap();
            eprintln!("DELETE refused {:?} into the outage", stopped.elapsed());
            let closed: Value =
                serde_json::from_str(&pg_lines.next("whether the session is still open")).unwrap();
            (delete, closed)
        });
        let (status, _) = http.get("/v1/charges?during");
        eprintln!("GET answered {:?} into the outage", stopped.elapsed());
        assert_eq!(status, 200, "the authenticated HTTP session goes on");
        let (status, _, body) = http.request("POST", "/v1/refunds");
        eprintln!("refund refused {:?} into the outage", stopped.elapsed());
        assert_eq!(status, 503, "no approval without Redis: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert!(body["error"].as_str().unwrap().contains("Redis"), "{body}");
        pg.join().unwrap()
    });
    assert_eq!(delete["error"]["code"], "42501", "{delete}");
    assert_eq!(
        delete["error"]["severity"], "ERROR",
        "an error for the statement, not the session: {delete}"
    );
    assert!(
        delete["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Redis"),
        "{delete}"
    );
    assert_eq!(
        closed["closed"], false,
        "the PostgreSQL session stays open: {closed}"
    );
    assert_eq!(
        process::wait_timeout(&mut pg, WAIT)
            .unwrap()
            .map(|s| s.success()),
        Some(true)
    );

    let paths: Vec<String> = stack
        .upstream(API)
        .requests()
        .iter()
        .map(|r| r.target.clone())
        .collect();
    assert_eq!(
        paths,
        ["/v1/charges?before", "/v1/charges?during"],
        "the refund did not get through"
    );
    assert_eq!(
        stack.postgres(DB).customers_count().unwrap(),
        Some(3),
        "nothing was deleted"
    );
    let transcript = http.finish();
    stack.sluice.capture_text(
        "agents",
        &format!("{}\n{delete}\n{closed}", transcript.join("\n")),
    );
    assert_nothing_leaked(&stack);
}
