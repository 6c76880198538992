//! PostgreSQL logins: unmodified psql and tokio-postgres log in to
//! `db.internal` with a Sluice token as the password; Sluice logs in
//! upstream as `billing` with the real password, however the server asks
//! for it. Bad tokens, revoked tokens and a stopped server get the SQLSTATEs
//! of DESIGN.md §4.
use std::io::Write;

use sluice_tests::{poll, postgres::ROLE, process, HbaMethod, Stack};

use crate::{
    billing_db, billing_stack, events, pg_client, sessions_of, Lines, DB, DB_HOST, PG_CLIENT, WAIT,
};

#[test]
fn psql_logs_in_with_the_token_over_sslmode_disable_prefer_and_verify_full_and_the_password_leaks_nowhere(
) {
    // Upstream over verified TLS too, so every hop is exercised.
    let stack = Stack::builder("pg-psql-logins")
        .service(billing_db().upstream_tls("verify-full"))
        .start()
        .unwrap();
    let token = stack.token(DB).unwrap();
    let ca = stack.sluice.ca_cert_path().unwrap();
    let modes = [
        ("sslmode=disable".to_string(), false),
        ("sslmode=prefer".to_string(), true),
        (
            format!("sslmode=verify-full sslrootcert={}", ca.display()),
            true,
        ),
    ];
    for (params, agent_tls) in &modes {
        let conninfo = stack.pg_conninfo(DB, &token, params);
        let res = stack
            .psql(
                &conninfo,
                &[
                    "-At",
                    "-c",
                    r"\conninfo",
                    "-c",
                    "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                ],
            )
            .unwrap();
        res.assert_ok();
        let lines = res.lines();
        assert!(
            lines[0].contains(&format!("on host \"{DB_HOST}\"")),
            "{params}: {}",
            res.stdout
        );
        assert_eq!(
            lines.iter().any(|l| l.starts_with("SSL connection")),
            *agent_tls,
            "{params}: TLS between psql and Sluice; psql said: {}",
            res.stdout
        );
        assert_eq!(
            lines.last().copied(),
            Some(format!("{ROLE}|t").as_str()),
            "{params}: upstream role and upstream TLS"
        );
    }

    let sessions = sessions_of(&stack, DB);
    assert_eq!(sessions.len(), 3, "one session per psql");
    for (session, (params, agent_tls)) in sessions.iter().zip(&modes) {
        let open = events(session, "open")[0];
        let want = if *agent_tls {
            "postgres+tls"
        } else {
            "postgres"
        };
        assert_eq!(open["protocol"], want, "{params}: {open}");
        assert_eq!(events(session, "auth_ok").len(), 1, "{params}: {session:?}");
        assert!(
            events(session, "query")
                .iter()
                .any(|q| q["sql"].as_str().unwrap_or("").contains("pg_stat_ssl")),
            "{params}: query recorded: {session:?}"
        );
        assert_eq!(open["agent"], stack.agent());
    }
    // Sluice's logs and records name the token by its id, never itself.
    let sluice_texts: Vec<(String, String)> = stack
        .sluice
        .all_output_text()
        .into_iter()
        .filter(|(label, _)| !label.starts_with("sluice token issue"))
        .collect();
    sluice_tests::assert_no_secret(&token, &sluice_texts);
    stack.assert_no_secret_leaked();
}

#[test]
fn upstream_pg_hba_scram_md5_and_password_each_let_the_token_login_through() {
    let stack = billing_stack("pg-hba-methods");
    let token = stack.token(DB).unwrap();
    let pg = stack.postgres(DB);
    let conninfo = stack.pg_conninfo(DB, &token, "sslmode=disable");
    for method in [HbaMethod::Md5, HbaMethod::Password, HbaMethod::ScramSha256] {
        pg.set_auth(method).unwrap();
        let before = pg.logins_by(method);
        let res = stack
            .psql(
                &conninfo,
                &["-At", "-c", "SELECT current_user, count(*) FROM customers"],
            )
            .unwrap();
        res.assert_ok();
        assert_eq!(res.lines(), [format!("{ROLE}|3").as_str()], "{method:?}");
        // The server logs how it authenticated each login.
        poll(
            &format!("postgres to log a {} login", method.keyword()),
            WAIT,
            || (pg.logins_by(method) > before).then_some(()),
        )
        .unwrap();
    }
    stack.assert_no_secret_leaked();
}

#[test]
fn a_wrong_token_gets_28p01_and_the_upstream_sees_no_login() {
    let stack = billing_stack("pg-wrong-token");
    let pg = stack.postgres(DB);
    let wrong = format!("slt_{}", sluice_tests::random_hex(20));
    let out = pg_client(
        &stack,
        &stack.pg_conninfo(DB, &wrong, "sslmode=disable"),
        &["query:SELECT 1"],
    );
    assert_eq!(out[0]["connect_error"]["code"], "28P01", "{out:?}");

    // psql too, with its own message.
    let res = stack
        .psql(
            &stack.pg_conninfo(DB, &wrong, "sslmode=prefer"),
            &["-c", "SELECT 1"],
        )
        .unwrap();
    assert_ne!(res.exit, 0);
    assert!(res.stderr.contains("FATAL"), "psql: {}", res.stderr);

    stack
        .sluice
        .wait_for_event("an auth_fail event", WAIT, |e| {
            e["event"] == "auth_fail" && e["service"] == DB
        })
        .unwrap();
    assert_eq!(
        pg.logins_by(HbaMethod::ScramSha256),
        0,
        "Sluice did not log in upstream for a bad token"
    );
    // A good token works.
    let token = stack.token(DB).unwrap();
    let out = pg_client(
        &stack,
        &stack.pg_conninfo(DB, &token, "sslmode=disable"),
        &["query:SELECT 1"],
    );
    assert_eq!(out[0]["rows"], serde_json::json!([[1]]), "{out:?}");
    stack.assert_no_secret_leaked();
}

#[test]
fn a_stopped_upstream_gets_08006_at_once_and_logins_work_again_after_restart() {
    let mut stack = billing_stack("pg-upstream-down");
    let token = stack.token(DB).unwrap();
    let conninfo = stack.pg_conninfo(DB, &token, "sslmode=disable");
    stack.postgres_mut(DB).stop();

    let out = pg_client(&stack, &conninfo, &["query:SELECT 1"]);
    assert_eq!(out[0]["connect_error"]["code"], "08006", "{out:?}");
    let ms = out[0]["ms"].as_u64().unwrap();
    assert!(
        ms < 3000,
        "the agent waited {ms} ms for 08006 (login timeout is 15 s)"
    );
    let res = stack.psql(&conninfo, &["-c", "SELECT 1"]).unwrap();
    assert_ne!(res.exit, 0);
    assert!(res.stderr.contains("FATAL"), "psql: {}", res.stderr);

    stack.postgres_mut(DB).restart().unwrap();
    let out = pg_client(&stack, &conninfo, &["query:SELECT count(*) FROM customers"]);
    assert_eq!(out[0]["rows"], serde_json::json!([[3]]), "{out:?}");
    stack.assert_no_secret_leaked();
}

#[test]
fn a_token_revoked_mid_session_fails_the_next_statement_with_28p01_and_closes_the_connection() {
    let stack = billing_stack("pg-revoke-mid-session");
    let token = stack.token(DB).unwrap();
    let conninfo = stack.pg_conninfo(DB, &token, "sslmode=disable");
    let argv = [
        PG_CLIENT,
        &conninfo,
        "query:SELECT 1",
        "wait",
        "query:SELECT count(*) FROM customers",
        "closed",
    ];
    let mut agent = stack.sluice.exec_spawn(stack.agent(), &argv).unwrap();
    let mut stdin = agent.stdin.take().unwrap();
    let lines = Lines::new(agent.stdout.take().unwrap());

    let first = lines.next("the first statement");
    assert!(
        first.contains(r#""rows":[[1]]"#),
        "before revocation: {first}"
    );
    assert!(lines.next("waiting").contains("waiting"));
    stack.sluice.token_revoke(&token).unwrap();
    stdin.write_all(b"go\n").unwrap();
    let second: serde_json::Value =
        serde_json::from_str(&lines.next("the statement after revocation")).unwrap();
    assert_eq!(
        second["error"]["code"], "28P01",
        "after revocation: {second}"
    );
    let closed: serde_json::Value =
        serde_json::from_str(&lines.next("whether the connection closed")).unwrap();
    assert_eq!(
        closed["closed"], true,
        "Sluice closes the connection after the FATAL"
    );
    assert_eq!(
        process::wait_timeout(&mut agent, WAIT)
            .unwrap()
            .map(|s| s.success()),
        Some(true)
    );
    stack
        .sluice
        .capture_text("pg_client stdout", &format!("{first}\n{second}\n{closed}"));

    let sessions = sessions_of(&stack, DB);
    assert_eq!(sessions.len(), 1);
    assert_eq!(
        events(&sessions[0], "auth_fail").len(),
        1,
        "the revocation is recorded: {:?}",
        sessions[0]
    );
    stack.assert_no_secret_leaked();
}
