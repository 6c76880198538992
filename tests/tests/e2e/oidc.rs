//! OIDC workload tokens (DESIGN.md §7) through the real eBPF redirect: a
//! JWT from the test issuer ([`sluice_tests::oidc_issuer`], standing in for
//! a CI system's issuer) works where a Sluice token goes, for the agent
//! whose `oidc` binding it matches, and every bad one is refused before
//! anything reaches the upstream.
use serde_json::{json, Value};
use sluice_tests::{
    oidc_issuer::{now, tamper, Alg, OidcIssuer},
    poll, ServiceSpec, Stack,
};

use crate::{assert_sluice_error_body, assert_status, bearer, WAIT};

const SERVICE: &str = "payments-api";
const AUDIENCE: &str = "sluice";
const SUBJECT: &str = "repo:acme/app:ref:refs/heads/main";
const OTHER: &str = "other-bot";

/// An issuer on `127.0.78.<n>` and a stack whose agent is bound to it
/// (`repo:acme/app:*`), with [`OTHER`] bound to `repo:other/*`.
fn oidc_stack(
    label: &str,
    n: u8,
    service: ServiceSpec,
    issuer_extra: &str,
) -> (OidcIssuer, Stack, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let issuer =
        OidcIssuer::start_on(dir.path(), format!("127.0.78.{n}").parse().unwrap()).unwrap();
    let stack = Stack::builder(label)
        .service(service)
        .also_agent(OTHER)
        .tables(&format!(
            "{}{issuer_extra}\n",
            issuer.config_entry("ci", AUDIENCE)
        ))
        .agent_line_for(
            sluice_tests::stack::AGENT,
            "oidc = { issuer = \"ci\", subject = \"repo:acme/app:*\" }",
        )
        .agent_line_for(
            OTHER,
            "oidc = { issuer = \"ci\", subject = \"repo:other/*\" }",
        )
        .start()
        .expect("start the stack");
    (issuer, stack, dir)
}

fn get(stack: &Stack, token: &str, path: &str) -> sluice_tests::CurlResult {
    stack
        .curl(&["-H", &bearer(token), &stack.url(SERVICE, path)])
        .unwrap()
}

/// `get`, waiting out a 429 of the failed-guess throttle (ten failures a
/// minute per agent, which a test's refusals spend), bounded by [`WAIT`].
fn get_unthrottled(stack: &Stack, token: &str, path: &str) -> sluice_tests::CurlResult {
    poll("an answer that is not throttled", WAIT, || {
        let res = get(stack, token, path);
        (res.status != 429).then_some(res)
    })
    .unwrap()
}

/// Asserts that `token` is refused with 401.
#[track_caller]
fn assert_refused(stack: &Stack, token: &str, what: &str) {
    let res = get_unthrottled(stack, token, "/v1/refused");
    assert_eq!(res.status, 401, "{what}: {}", res.body);
    assert_sluice_error_body(&res);
}

#[test]
fn good_jwts_reach_the_upstream_with_the_secret_and_bad_ones_get_401() {
    let (issuer, stack, _dir) = oidc_stack(
        "oidc-http",
        1,
        ServiceSpec::https(SERVICE, "api.payments.test"),
        "",
    );
    let claims = issuer.claims(AUDIENCE, SUBJECT, &["payments"]);
    for kid in ["rsa-1", "ec-1", "ed-1"] {
        let res = get(&stack, &issuer.mint(kid, &claims), &format!("/v1/{kid}"));
        assert_status(&res, 200);
    }
    let reqs = stack.upstream(SERVICE).wait_for(3, WAIT).unwrap();
    let secret = stack.secret(SERVICE);
    for r in &reqs {
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {secret}").as_str())
        );
        assert!(!r.all_text().contains("eyJ"), "a JWT reached the upstream");
    }
    let with = |patch: Value| {
        let mut c = claims.clone();
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let good = issuer.mint("rsa-1", &claims);
    issuer.add_unpublished_key(Alg::Rs256, "rogue").unwrap();
    let t = now();
    for (what, token, reason) in [
        (
            "alg none",
            issuer.alg_none("rsa-1", &claims),
            "unknown variant `none`",
        ),
        (
            "HS256 with the RSA public key",
            issuer.hs256_with_public_key("rsa-1", &claims),
            "alg HS256 is not accepted",
        ),
        (
            "expired",
            issuer.mint("rsa-1", &with(json!({"iat": t - 900, "exp": t - 600}))),
            "ExpiredSignature",
        ),
        (
            "nbf in the future",
            issuer.mint("ec-1", &with(json!({"nbf": t + 600}))),
            "ImmatureSignature",
        ),
        (
            "wrong aud",
            issuer.mint("rsa-1", &with(json!({"aud": "someone-else"}))),
            "InvalidAudience",
        ),
        (
            "wrong iss",
            issuer.mint("rsa-1", &with(json!({"iss": "https://evil.test"}))),
            "InvalidIssuer",
        ),
        (
            "unknown kid",
            issuer.mint("rogue", &claims),
            "kid \"rogue\" is not in the JWKS",
        ),
        (
            "tampered payload",
            tamper(
                &good,
                &with(json!({"sub": "repo:acme/app:ref:refs/heads/evil", "groups": ["admins"]})),
            ),
            "InvalidSignature",
        ),
        (
            "subject outside the binding",
            issuer.mint(
                "rsa-1",
                &with(json!({"sub": "repo:evil/app:ref:refs/heads/main"})),
            ),
            "does not match agent",
        ),
    ] {
        assert_refused(&stack, &token, what);
        stack
            .sluice
            .wait_for_event(what, WAIT, |e| {
                e["event"] == "auth_fail"
                    && e["reason"].as_str().is_some_and(|r| r.contains(reason))
            })
            .unwrap();
    }
    // The good JWT from a process of another agent (bound to other subjects).
    let res = stack
        .curl_via(
            &stack.sluice,
            OTHER,
            &[
                stack.resolve_args(),
                vec!["-H".into(), bearer(&good), stack.url(SERVICE, "/v1/other")],
            ]
            .concat(),
        )
        .unwrap();
    assert_eq!(res.status, 401, "another agent's process: {}", res.body);
    assert_eq!(
        stack.upstream(SERVICE).count(),
        3,
        "a refused JWT reached the upstream"
    );
    // Records name the caller next to the agent.
    let ok = stack
        .sluice
        .wait_for_event("auth_ok with the subject", WAIT, |e| {
            e["event"] == "auth_ok" && e["subject"] == SUBJECT
        })
        .unwrap();
    assert_eq!(ok["groups"], json!(["payments"]));
    assert_eq!(ok["agent"], stack.agent());
    stack.assert_no_secret_leaked();
}

#[test]
fn a_jwt_is_a_postgres_password_over_tls_only() {
    let (mut issuer, stack, _dir) = oidc_stack(
        "oidc-pg",
        2,
        ServiceSpec::postgres(crate::DB, crate::DB_HOST),
        "",
    );
    let claims = issuer.claims(AUDIENCE, SUBJECT, &["payments"]);
    let good = issuer.mint("ec-1", &claims);
    let conninfo = stack.pg_conninfo(crate::DB, &good, "sslmode=require");
    // No keys can be fetched: the login fails closed (08006), upstream untouched.
    issuer.stop();
    let res = stack.psql(&conninfo, &["-c", "SELECT 1"]).unwrap();
    assert!(
        res.exit != 0 && res.stderr.contains("identity provider unavailable"),
        "{}",
        res.stderr
    );
    assert_eq!(
        stack
            .postgres(crate::DB)
            .logins_by(sluice_tests::HbaMethod::ScramSha256),
        0
    );
    issuer.start().unwrap();
    let res = poll("a login once the issuer is back", WAIT, || {
        let res = stack
            .psql(&conninfo, &["-At", "-c", "SELECT current_user"])
            .unwrap();
        (res.exit == 0).then_some(res)
    })
    .unwrap();
    assert!(!res.stdout.trim().is_empty());
    // Without TLS the cleartext password is never asked for.
    let res = stack
        .psql(
            &stack.pg_conninfo(crate::DB, &good, "sslmode=disable"),
            &["-At", "-c", "SELECT 1"],
        )
        .unwrap();
    assert!(
        res.exit != 0 && res.stderr.contains("TLS only"),
        "{}",
        res.stderr
    );
    let pg = stack.postgres(crate::DB);
    let logins = pg.logins_by(sluice_tests::HbaMethod::ScramSha256);
    let t = now();
    let mut expired = claims.clone();
    (expired["iat"], expired["exp"]) = (json!(t - 900), json!(t - 600));
    for (what, token) in [
        ("expired", issuer.mint("ec-1", &expired)),
        ("alg none", issuer.alg_none("rsa-1", &claims)),
        ("HS256", issuer.hs256_with_public_key("rsa-1", &claims)),
    ] {
        let res = stack
            .psql(
                &stack.pg_conninfo(crate::DB, &token, "sslmode=require"),
                &["-c", "SELECT 1"],
            )
            .unwrap();
        assert!(
            res.exit != 0 && res.stderr.contains("password authentication failed"),
            "{what}: {}",
            res.stderr
        );
    }
    assert_eq!(
        pg.logins_by(sluice_tests::HbaMethod::ScramSha256),
        logins,
        "a refused JWT logged in upstream"
    );
    stack.assert_no_secret_leaked();
}

#[test]
fn a_jwt_is_a_mysql_password_over_tls_only() {
    use crate::mysql::{orders_db, python, MY};
    let (issuer, stack, _dir) = oidc_stack("oidc-mysql", 7, orders_db(), "");
    let claims = issuer.claims(AUDIENCE, SUBJECT, &["payments"]);
    let good = issuer.mint("rsa-1", &claims);
    let ca = stack.sluice.ca_cert_path().unwrap();
    // PyMySQL answers the greeting's caching_sha2_password; the fast path
    // cannot carry a JWT, so Sluice asks for full authentication: the JWT
    // in cleartext, over TLS.
    let login = |token: &str, tls: bool| {
        let ssl = if tls {
            format!("ssl={{'ca': {:?}}}", ca.display().to_string())
        } else {
            "ssl_disabled=True".to_string()
        };
        python(
            &stack,
            token,
            &format!(
                "try:\n    p = pymysql.connect(host=HOST, port=PORT, user='agent', password=TOKEN, database='billing', {ssl})\n    \
                 with p.cursor() as c:\n        c.execute('SELECT CURRENT_USER()')\n        print('user', c.fetchall()[0][0])\n\
                 except pymysql.err.OperationalError as e:\n    print('refused', e.args[0], e.args[1])\n"
            ),
        )
    };
    let (ok, out) = login(&good, true);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("user {}@%", sluice_tests::mariadb::NATIVE_USER)),
        "a good JWT logs in over TLS and the upstream sees the real user: {out}"
    );
    let (_, out) = login(&good, false);
    assert!(
        out.contains("refused 1045") && out.contains("TLS only"),
        "without TLS the JWT is never asked for: {out}"
    );
    let t = now();
    let mut expired = claims.clone();
    (expired["iat"], expired["exp"]) = (json!(t - 900), json!(t - 600));
    for (what, token) in [
        ("expired", issuer.mint("rsa-1", &expired)),
        ("alg none", issuer.alg_none("rsa-1", &claims)),
        ("HS256", issuer.hs256_with_public_key("rsa-1", &claims)),
    ] {
        let (_, out) = login(&token, true);
        assert!(
            out.contains("refused 1045") && !out.contains("user "),
            "{what}: {out}"
        );
    }
    // An slt_ token of this agent goes the same way: cleartext over TLS.
    let token = stack.token(MY).unwrap();
    let (ok, out) = login(&token, true);
    assert!(ok && out.contains("user "), "an slt_ token over TLS: {out}");
    stack.assert_no_secret_leaked();
}

#[test]
fn groups_rotation_unknown_kid_and_revocation() {
    let service =
        ServiceSpec::https(SERVICE, "api.payments.test").extra("groups = [\"payments\"]\n");
    let (issuer, stack, _dir) = oidc_stack("oidc-groups", 3, service, "jwks_refetch = \"1s\"\n");
    let member = issuer.mint(
        "rsa-1",
        &issuer.claims(AUDIENCE, SUBJECT, &["payments", "ci"]),
    );
    assert_status(&get(&stack, &member, "/v1/member"), 200);
    assert_refused(
        &stack,
        &issuer.mint("rsa-1", &issuer.claims(AUDIENCE, SUBJECT, &["ci"])),
        "not in payments",
    );
    // Rotation: a new kid works without a restart.
    issuer.add_key(Alg::Es256, "ec-2").unwrap();
    let rotated = issuer.mint("ec-2", &issuer.claims(AUDIENCE, SUBJECT, &["payments"]));
    // Past jwks_refetch, so the first request with the new kid refetches
    // instead of spending failed guesses.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    poll("the rotated key to be accepted", WAIT, || {
        (get(&stack, &rotated, "/v1/rotated").status == 200).then_some(())
    })
    .unwrap();
    // An unknown kid: refused after one refetch, and not refetched again at once.
    issuer.add_unpublished_key(Alg::Rs256, "rogue").unwrap();
    let rogue = issuer.mint("rogue", &issuer.claims(AUDIENCE, SUBJECT, &["payments"]));
    std::thread::sleep(std::time::Duration::from_millis(1100)); // past jwks_refetch
    let fetches = issuer.jwks_fetches();
    assert_refused(&stack, &rogue, "unknown kid");
    assert_eq!(
        issuer.jwks_fetches(),
        fetches + 1,
        "one refetch for the unknown kid"
    );
    assert_refused(&stack, &rogue, "unknown kid again");
    assert_eq!(
        issuer.jwks_fetches(),
        fetches + 1,
        "no second refetch within jwks_refetch"
    );
    // Revocation by jti, then by subject.
    let claims = issuer.claims(AUDIENCE, SUBJECT, &["payments"]);
    let by_jti = issuer.mint("rsa-1", &claims);
    assert_status(&get_unthrottled(&stack, &by_jti, "/v1/before-revoke"), 200);
    stack
        .sluice
        .cli(&["token", "revoke", "--jti", claims["jti"].as_str().unwrap()])
        .unwrap();
    assert_refused(&stack, &by_jti, "revoked jti");
    assert_status(&get_unthrottled(&stack, &member, "/v1/other-jti"), 200);
    stack
        .sluice
        .cli(&["token", "revoke", "--subject", SUBJECT])
        .unwrap();
    assert_refused(&stack, &member, "revoked subject");
    stack.assert_no_secret_leaked();
}

#[test]
fn issuer_down_cached_keys_work_and_without_keys_requests_fail_closed() {
    let (mut issuer, stack, _dir) = oidc_stack(
        "oidc-down",
        4,
        ServiceSpec::https(SERVICE, "api.payments.test"),
        "",
    );
    let good = issuer.mint("rsa-1", &issuer.claims(AUDIENCE, SUBJECT, &["payments"]));
    let doctor = |want: &str| {
        let out = stack.sluice.cli_output(&["doctor"], None).unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            text.lines()
                .any(|l| l.starts_with(want) && l.contains("oidc") && l.contains("ci:")),
            "doctor should say {want} for the issuer:\n{text}"
        );
    };
    doctor("ok");
    issuer.stop();
    let res = get(&stack, &good, "/v1/no-keys");
    assert_eq!(res.status, 503, "no keys cached: {}", res.body);
    assert_eq!(stack.upstream(SERVICE).count(), 0);
    issuer.start().unwrap();
    poll("the issuer's keys", WAIT, || {
        (get(&stack, &good, "/v1/keys").status == 200).then_some(())
    })
    .unwrap();
    issuer.stop();
    assert_status(&get(&stack, &good, "/v1/cached"), 200);
    doctor("FAIL");
    stack.assert_no_secret_leaked();
}

#[test]
fn a_rule_with_groups_holds_only_members_for_approval() {
    let service = ServiceSpec::https(SERVICE, "api.payments.test")
        .extra("approve = [{ method = \"POST\", path = \"/v1/refunds*\", groups = [\"payments-leads\"] }]\n");
    let (issuer, stack, _dir) = oidc_stack("oidc-rule-groups", 5, service, "");
    let post = |token: &str| {
        stack
            .curl(&[
                "-X",
                "POST",
                "-H",
                &bearer(token),
                "--data",
                "{}",
                "--max-time",
                "40",
                &stack.url(SERVICE, "/v1/refunds"),
            ])
            .unwrap()
    };
    // Not a member: the rule does not apply, the refund goes through at once.
    let outsider = issuer.mint("rsa-1", &issuer.claims(AUDIENCE, SUBJECT, &["payments"]));
    assert_status(&post(&outsider), 200);
    assert!(
        stack.sluice.approvals(true).unwrap().is_empty(),
        "nothing was held"
    );
    // A member is held until approved; the approval names the caller.
    let lead = issuer.mint(
        "ec-1",
        &issuer.claims(AUDIENCE, SUBJECT, &["payments-leads"]),
    );
    std::thread::scope(|s| {
        let agent = s.spawn(|| post(&lead));
        let pending = stack.sluice.wait_for_pending("/v1/refunds", WAIT).unwrap();
        assert_eq!(pending["subject"], SUBJECT);
        assert_eq!(pending["groups"], json!(["payments-leads"]));
        let table = stack.sluice.cli(&["approvals", "list"]).unwrap();
        assert!(
            table.contains("CALLER") && table.contains(SUBJECT),
            "{table}"
        );
        stack
            .sluice
            .approve(pending["id"].as_str().unwrap())
            .unwrap();
        assert_status(&agent.join().unwrap(), 200);
    });
    assert_eq!(stack.upstream(SERVICE).count(), 2);
    stack.assert_no_secret_leaked();
}

#[test]
fn a_jwt_works_as_the_ssh_password() {
    use crate::ssh::{AgentFiles, HOST, SVC};
    let (issuer, stack, _dir) = oidc_stack("oidc-ssh", 6, ServiceSpec::ssh(SVC, HOST), "");
    let agent = AgentFiles::new(&stack);
    let good = issuer.mint("ed-1", &issuer.claims(AUDIENCE, SUBJECT, &[]));
    let out = agent.ssh_with_password(&stack, &good, "echo jwt-ok");
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    assert_eq!(out.stdout.trim(), "jwt-ok");
    let none = issuer.alg_none("ed-1", &issuer.claims(AUDIENCE, SUBJECT, &[]));
    let refused = agent.ssh_with_password(&stack, &none, "echo never");
    assert_ne!(refused.code, Some(0));
    assert!(!refused.stdout.contains("never"));
    stack.assert_no_secret_leaked();
}
