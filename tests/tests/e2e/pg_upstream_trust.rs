//! The real database password goes only to a server that proved who it is
//! (DESIGN.md §4 "TLS"): a rogue listener on the database's address asks
//! for a cleartext or md5 password, or fakes a SCRAM login, and gets
//! nothing; the default `upstream_tls` is `verify-full`; over TLS the login
//! uses SCRAM-SHA-256-PLUS (channel binding).
use sluice_tests::{
    poll,
    rogue_postgres::{RogueAuth, RoguePostgres},
    PsqlResult, ServiceSpec, Stack,
};

use crate::{billing_db, DB, DB_HOST, WAIT};

/// Starts a stack for `spec`, stops its real PostgreSQL, and returns the
/// stack; rogues then listen on the real server's address.
fn stack_without_its_server(label: &str, spec: ServiceSpec) -> Stack {
    let mut stack = Stack::builder(label).service(spec).start().unwrap();
    stack.postgres_mut(DB).stop();
    stack
}

/// A rogue on the (stopped) real server's address.
fn rogue(stack: &Stack, tls: bool, auth: RogueAuth) -> RoguePostgres {
    RoguePostgres::start(stack.postgres(DB).addr(), DB_HOST, tls, auth).unwrap()
}

/// The agent's psql, through Sluice, with the token.
fn agent_psql(stack: &Stack) -> PsqlResult {
    let token = stack.token(DB).unwrap();
    let conninfo = stack.pg_conninfo(DB, &token, "sslmode=disable");
    stack
        .psql(&conninfo, &["-At", "-c", "SELECT current_user"])
        .unwrap()
}

/// Asserts the agent's login failed with a message containing `why`.
#[track_caller]
fn assert_refused(res: &PsqlResult, why: &str, what: &str) {
    assert_ne!(res.exit, 0, "{what}: psql logged in: {}", res.stdout);
    assert!(
        res.stderr.contains(why),
        "{what}: psql's error does not say {why:?}: {}",
        res.stderr
    );
}

/// Asserts the rogue saw the connection (the start-up names the upstream
/// user) but never the password, and no answer to its password request.
#[track_caller]
fn assert_rogue_got_no_password(stack: &Stack, rogue: &RoguePostgres, what: &str) {
    let received = rogue.received();
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.contains("billing"),
        "{what}: the rogue saw no start-up: {text:?}"
    );
    assert!(
        !text.contains(stack.secret(DB)),
        "{what}: the rogue received the password"
    );
    assert_eq!(
        rogue.received_after_request(),
        b"",
        "{what}: Sluice answered the rogue's password request"
    );
}

#[test]
fn rogue_server_asking_for_a_cleartext_or_md5_password_under_prefer_and_require_never_gets_it() {
    // prefer: the rogue declines TLS; require: it accepts TLS with a
    // certificate nobody trusts (require does not check it).
    for (mode, tls) in [("prefer", false), ("require", true)] {
        let stack =
            stack_without_its_server(&format!("pg-rogue-{mode}"), billing_db().upstream_tls(mode));
        for auth in [RogueAuth::Cleartext, RogueAuth::Md5] {
            let what = format!("upstream_tls = {mode}, rogue asks {auth:?}");
            let rogue = rogue(&stack, tls, auth);
            let res = agent_psql(&stack);
            assert_rogue_got_no_password(&stack, &rogue, &what);
            assert_refused(&res, "upstream_tls", &what);
        }
        poll("Sluice to log the refusals", WAIT, || {
            let log = stack.sluice.daemon_log();
            (log.contains("refused to send a cleartext password")
                && log.contains("refused to send an md5 password"))
            .then_some(())
        })
        .unwrap();
        stack.assert_no_secret_leaked();
    }
}

#[test]
fn rogue_server_answering_authentication_ok_mid_scram_or_a_wrong_signature_is_refused() {
    let stack = stack_without_its_server("pg-rogue-scram", billing_db().upstream_tls("prefer"));
    for (auth, why) in [
        (RogueAuth::ScramThenOk, "AuthenticationOk"),
        (
            RogueAuth::ScramWrongSignature,
            "wrong SCRAM server signature",
        ),
    ] {
        let rogue = rogue(&stack, false, auth);
        let res = agent_psql(&stack);
        assert_refused(&res, why, &format!("{auth:?}"));
        assert!(res.stdout.is_empty(), "{auth:?}: {}", res.stdout);
        // The session never reached the relay: no statement went to the rogue.
        let received = String::from_utf8_lossy(&rogue.received()).into_owned();
        assert!(
            !received.contains("SELECT current_user"),
            "{auth:?}: a statement reached the rogue"
        );
        assert!(!received.contains(stack.secret(DB)), "{auth:?}");
    }
    stack.assert_no_secret_leaked();
}

#[test]
fn default_upstream_tls_trusts_upstream_ca_and_refuses_an_untrusted_certificate() {
    let mut stack = Stack::builder("pg-default-tls")
        .service(billing_db().default_upstream_tls())
        .start()
        .unwrap();
    // The server's certificate is for db.internal, from the harness CA
    // named by upstream_ca: the login works, over TLS.
    let token = stack.token(DB).unwrap();
    let conninfo = stack.pg_conninfo(DB, &token, "sslmode=disable");
    let res = stack
        .psql(
            &conninfo,
            &[
                "-At",
                "-c",
                "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            ],
        )
        .unwrap();
    res.assert_ok();
    assert_eq!(res.lines(), ["billing|t"], "upstream role over TLS");

    // A rogue with its own CA's certificate for db.internal, asking for a
    // cleartext password: the TLS handshake already fails.
    stack.postgres_mut(DB).stop();
    let rogue = rogue(&stack, true, RogueAuth::Cleartext);
    let res = agent_psql(&stack);
    let received = String::from_utf8_lossy(&rogue.received()).into_owned();
    assert!(
        !received.contains(stack.secret(DB)),
        "the rogue received the password"
    );
    assert_eq!(rogue.received_after_request(), b"", "nothing after TLS");
    assert_refused(&res, "upstream TLS", "untrusted certificate");
    stack.assert_no_secret_leaked();
}

#[test]
fn scram_login_over_tls_uses_channel_binding_scram_sha_256_plus() {
    let stack = Stack::builder("pg-channel-binding")
        .service(billing_db().upstream_tls("verify-full"))
        .start()
        .unwrap();
    assert!(stack.postgres(DB).tls());
    let res = agent_psql(&stack);
    res.assert_ok();
    assert_eq!(res.lines(), ["billing"]);
    // PostgreSQL accepts SCRAM-SHA-256-PLUS only when the binding data (the
    // hash of its own certificate) matches; Sluice logs the mechanism.
    poll("Sluice to log the SASL mechanism", WAIT, || {
        stack
            .sluice
            .daemon_log()
            .lines()
            .any(|l| l.contains("upstream SASL login") && l.contains("SCRAM-SHA-256-PLUS"))
            .then_some(())
    })
    .unwrap();
    stack.assert_no_secret_leaked();
}
