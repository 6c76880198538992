//! Redis is not trusted blindly: a process that can write to Redis (here
//! `redis-cli` with the Redis password) cannot approve a held operation,
//! mint a token record, or lift a revocation. Every record Sluice keeps
//! there carries a MAC under a key derived from the vault key; a record
//! that fails it is refused and logged with its key.
use std::process::Command;

use sha2::{Digest, Sha256};
use sluice_tests::{process, ServiceSpec, Stack};

use crate::{
    approvals::{refund_args, refunds_stack, API},
    assert_sluice_error_body, assert_status, bearer, WAIT,
};

/// Runs `redis-cli` against the stack's Redis (the password through
/// `REDISCLI_AUTH`, never on the command line); its stdout.
fn redis_cli(stack: &Stack, args: &[&str]) -> String {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["--no-auth-warning", "-h", "127.0.0.1", "-p"])
        .arg(stack.redis.port().to_string())
        .args(args);
    if let Some(pw) = stack.redis.password() {
        cmd.env("REDISCLI_AUTH", pw);
    }
    let out = process::output_with_timeout(&mut cmd, None, WAIT).unwrap();
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A Redis hash as `field value` pairs (`redis-cli HGETALL`, one per line).
fn hgetall(stack: &Stack, key: &str) -> Vec<(String, String)> {
    let out = redis_cli(stack, &["HGETALL", key]);
    let lines: Vec<&str> = out.lines().collect();
    lines
        .chunks(2)
        .map(|kv| (kv[0].to_string(), kv[1].to_string()))
        .collect()
}

/// `HSET key field value …` with `fields`.
fn hset(stack: &Stack, key: &str, fields: &[(String, String)]) {
    let mut args = vec!["HSET".to_string(), key.to_string()];
    for (k, v) in fields {
        args.extend([k.clone(), v.clone()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    redis_cli(stack, &args);
}

fn token_key(token: &str) -> String {
    format!(
        "sluice:token:{}",
        hex::encode(Sha256::digest(token.as_bytes()))
    )
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
    &fields.iter().find(|(k, _)| k == name).unwrap().1
}

/// Waits until the daemon log says `key` failed its integrity check.
#[track_caller]
fn assert_logged_tampered(stack: &Stack, key: &str) {
    sluice_tests::poll(&format!("a log line naming {key}"), WAIT, || {
        let log = stack.sluice.daemon_log();
        log.lines()
            .any(|l| l.contains("integrity check") && l.contains(key))
            .then_some(())
    })
    .unwrap();
}

fn payments_stack(label: &str) -> Stack {
    Stack::builder(label)
        .redis_password()
        .service(ServiceSpec::https(API, "api.payments.test"))
        .start()
        .expect("start the stack")
}

#[track_caller]
fn charge(stack: &Stack, token: &str, status: u16) {
    let res = stack
        .curl(&["-H", &bearer(token), &stack.url(API, "/v1/charges")])
        .unwrap();
    assert_status(&res, status);
    if status != 200 {
        assert_sluice_error_body(&res);
    }
}

#[test]
fn an_approval_forged_in_redis_is_refused_and_the_refund_never_reaches_the_upstream() {
    let stack = refunds_stack("forged-approval", "60s");
    let token = stack.token(API).unwrap();
    let (id, res) = std::thread::scope(|s| {
        let agent = s.spawn(|| stack.curl_raw(&refund_args(&stack, &token)).unwrap());
        let pending = stack
            .sluice
            .wait_for_pending("POST /v1/refunds", WAIT)
            .unwrap();
        let id = pending["id"].as_str().unwrap().to_string();
        let key = format!("sluice:approval:{id}");
        let forged =
            [("status", "approved"), ("by", "root")].map(|(k, v)| (k.to_string(), v.to_string()));
        hset(&stack, &key, &forged);
        redis_cli(&stack, &["PUBLISH", "sluice:approval-decisions", &id]);
        (id, agent.join().unwrap())
    });
    assert_status(&res, 403);
    assert_sluice_error_body(&res);
    assert_eq!(
        stack.upstream(API).count(),
        0,
        "no refund reached the upstream"
    );
    assert_logged_tampered(&stack, &format!("sluice:approval:{id}"));
    // Nobody can decide the forged record any more either.
    let out = stack.sluice.cli_output(&["approve", &id], None).unwrap();
    assert!(!out.status.success(), "{out:?}");
}

#[test]
fn a_token_record_forged_in_redis_gets_401_and_the_real_token_still_works() {
    let stack = payments_stack("forged-token");
    let real = stack.token(API).unwrap();
    let copied = hgetall(&stack, &token_key(&real));
    // The attacker's own token, with a copy of a signed record (the MAC
    // binds the digest), and with an unsigned one.
    for with_mac in [true, false] {
        let forged = format!("slt_{}", sluice_tests::random_hex(24));
        let fields: Vec<(String, String)> = copied
            .iter()
            .filter(|(k, _)| with_mac || k != "mac")
            .cloned()
            .collect();
        let key = token_key(&forged);
        hset(&stack, &key, &fields);
        charge(&stack, &forged, 401);
        assert_logged_tampered(&stack, &key);
    }
    charge(&stack, &real, 200);
    assert_eq!(stack.upstream(API).count(), 1);
}

#[test]
fn a_revocation_is_not_lifted_by_rewriting_the_token_record_in_redis() {
    let mut stack = payments_stack("unrevoke");
    let token = stack.token(API).unwrap();
    let key = token_key(&token);
    let signed_unrevoked = hgetall(&stack, &key);
    let id = field(&signed_unrevoked, "id").to_string();
    charge(&stack, &token, 200);
    stack.sluice.token_revoke(&id).unwrap();
    charge(&stack, &token, 401);

    // Replay the older, validly signed revoked=0 record.
    hset(&stack, &key, &signed_unrevoked);
    redis_cli(&stack, &["PUBLISH", "sluice:revocations", &id]);
    charge(&stack, &token, 401);
    // A restarted gateway reads the signed revocation list.
    stack.sluice.restart().unwrap();
    charge(&stack, &token, 401);
    // Deleting the list too: this gateway has seen the revocation, and
    // keeps it across a restart.
    redis_cli(&stack, &["DEL", "sluice:revoked"]);
    redis_cli(&stack, &["PUBLISH", "sluice:revocations", &id]);
    charge(&stack, &token, 401);
    stack.sluice.restart().unwrap();
    charge(&stack, &token, 401);
    // Any edit without a valid MAC (here a later expiry) is refused.
    hset(
        &stack,
        &key,
        &[("expires".to_string(), "9999999999".to_string())],
    );
    charge(&stack, &token, 401);
    assert_logged_tampered(&stack, &key);
    assert_eq!(stack.upstream(API).count(), 1);
}

/// `sluice doctor`'s output and whether it passed.
fn doctor(stack: &Stack) -> (bool, String) {
    let out = stack.sluice.cli_output(&["doctor"], None).unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn doctor_fails_naming_redis_authentication_when_redis_accepts_unauthenticated_writes() {
    let open = Stack::builder("doctor-open-redis")
        .service(ServiceSpec::https(API, "api.payments.test"))
        .start()
        .unwrap();
    let (passed, report) = doctor(&open);
    assert!(!passed, "{report}");
    let fail: Vec<&str> = report.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert_eq!(fail.len(), 1, "{report}");
    assert!(
        fail[0].contains("redis auth") && fail[0].contains("without authentication"),
        "{report}"
    );
    // The probe it wrote is gone.
    assert_eq!(
        redis_cli(&open, &["EXISTS", "sluice:doctor:probe"]).trim(),
        "0"
    );

    let closed = payments_stack("doctor-redis-password");
    let (passed, report) = doctor(&closed);
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("ok") && l.contains("redis auth")),
        "{report}"
    );
    assert!(passed, "{report}");
}
