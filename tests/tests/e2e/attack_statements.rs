//! Statements that got around the PostgreSQL statement policy: a blank
//! query that stopped the daemon, prepared statements run with SQL
//! `EXECUTE` or `Bind` past `approve`, and catalog changes and dangerous
//! functions outside the deny kinds. Real psql, and a raw protocol client
//! (Python) as a non-root agent user for what psql cannot send.
use std::process::Child;

use serde_json::Value;
use sluice_tests::{
    redteam::{assert_daemon_healthy, AgentUser, RedTeam},
    PsqlResult, ServiceSpec, Stack,
};

use crate::{attack_malformed::PG, billing_db, events, sessions_of, DB, DB_HOST, WAIT};

/// Extended-protocol messages and reading up to `ReadyForQuery`.
const PG_EXTENDED: &str = r#"
def parse(name, sql):
    return pg_msg(b'P', name.encode() + b'\0' + sql.encode() + b'\0' + struct.pack('>h', 0))

def bind(statement, *values):
    params = b''.join(struct.pack('>i', len(v)) + v.encode() for v in values)
    return pg_msg(b'B', b'\0' + statement.encode() + b'\0' + struct.pack('>hh', 0, len(values)) + params + struct.pack('>h', 0))

def execute():
    return pg_msg(b'E', b'\0' + struct.pack('>i', 0))

SYNC = pg_msg(b'S', b'')

def until_ready(s, data):
    """Sends data; [tag or (tag, sqlstate, message)] up to ReadyForQuery."""
    s.sendall(data)
    got = []
    while True:
        m = pg_read(s)
        if m is None:
            return got + ['closed']
        tag = m[0].decode('latin-1')
        if tag == 'E':
            f = pg_fields(m[1])
            got.append([tag, f.get('C'), f.get('M')])
        elif tag == 'C':
            got.append([tag, m[1].rstrip(b'\0').decode()])
        else:
            got.append(tag)
        if tag == 'Z':
            return got
"#;

/// psql's `ERROR:` lines.
fn errors(res: &PsqlResult) -> Vec<&str> {
    res.stderr
        .lines()
        .filter(|l| l.starts_with("ERROR:"))
        .collect()
}

/// A stack whose `billing-db` has `deny` as given (no mask).
fn stack_denying(label: &str, deny: &str) -> Stack {
    Stack::builder(label)
        .service(ServiceSpec::postgres(DB, DB_HOST).extra(&format!("deny = {deny}")))
        .start()
        .expect("start the stack")
}

/// `billing-db` whose DELETEs need approval (Redis with a password).
fn deletes_stack(label: &str) -> Stack {
    Stack::builder(label)
        .redis_password()
        .gateway(r#"approval_timeout = "60s""#)
        .service(billing_db().extra(r#"approve = ["DELETE"]"#))
        .start()
        .expect("start the stack")
}

fn ids(stack: &Stack) -> String {
    stack
        .postgres(DB)
        .superuser_psql("billing", "SELECT id FROM customers ORDER BY id")
        .unwrap()
}

/// The agent's Python probe, spawned: it prints one JSON line at the end.
fn spawn_probe(rt: &RedTeam, script: &str) -> Child {
    let token = rt.stack.token(DB).unwrap();
    let pg = rt.stack.postgres(DB).addr();
    let full = format!("{PG}\n{PG_EXTENDED}\n{script}");
    rt.spawn_python(
        rt.stack.agent(),
        &full,
        &[&pg.ip().to_string(), &pg.port().to_string(), &token],
    )
    .unwrap()
}

fn probe_result(child: Child) -> Value {
    let out = child.wait_with_output().unwrap();
    RedTeam::json_lines(&out).pop().expect("one JSON line")
}

#[test]
fn blank_and_empty_statements_get_empty_query_response_and_the_gateway_keeps_serving() {
    let user = AgentUser::create().unwrap();
    let stack = crate::billing_stack("attack-blank");
    let rt = RedTeam::new(&stack, &user).unwrap();
    let script = r#"
ip, port, token = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = pg_login(ip, port, token)
res = {}
for name, sql in [('spaces', '   '), ('empty', ''), ('comment', ' /* c */ -- c\n'), ('tab', '\t\r\n')]:
    res[name] = until_ready(s, pg_msg(b'Q', sql.encode() + b'\0'))
res['empty parse'] = until_ready(s, parse('', '') + bind('') + execute() + SYNC)
res['blank parse'] = until_ready(s, parse('', '  ') + bind('') + execute() + SYNC)
res['after'] = until_ready(s, pg_msg(b'Q', b'SELECT count(*) FROM customers\0'))
out(res)
"#;
    let r = probe_result(spawn_probe(&rt, script));
    for what in ["spaces", "empty", "comment", "tab"] {
        assert_eq!(r[what], serde_json::json!(["I", "Z"]), "{what}: {r}");
    }
    for what in ["empty parse", "blank parse"] {
        assert_eq!(
            r[what],
            serde_json::json!(["1", "2", "I", "Z"]),
            "{what}: {r}"
        );
    }
    assert_eq!(
        r["after"],
        serde_json::json!(["T", "D", ["C", "SELECT 1"], "Z"]),
        "the same session goes on: {r}"
    );
    assert_daemon_healthy(&stack);
    let token = stack.token(DB).unwrap();
    let conninfo = stack.pg_conninfo(DB, &token, "sslmode=disable");
    let res = stack
        .psql(
            &conninfo,
            &["-At", "-c", " ", "-c", "SELECT count(*) FROM customers"],
        )
        .unwrap();
    assert_eq!(
        res.stdout.trim(),
        "3",
        "another session works: {}",
        res.stderr
    );
    stack.assert_no_secret_leaked();
}

#[test]
fn a_parsed_delete_run_with_sql_execute_or_a_prepare_run_with_bind_is_held_for_approval() {
    let user = AgentUser::create().unwrap();
    let stack = deletes_stack("attack-parse-execute");
    let rt = RedTeam::new(&stack, &user).unwrap();
    let script = r#"
ip, port, token = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = pg_login(ip, port, token)
res = {}
res['parse'] = until_ready(s, parse('s1', 'DELETE FROM customers WHERE id = $1') + SYNC)
res['execute'] = until_ready(s, pg_msg(b'Q', b'EXECUTE s1(3)\0'))
res['prepare'] = until_ready(s, pg_msg(b'Q', b'PREPARE p AS DELETE FROM customers WHERE id = $1\0'))
res['bind'] = until_ready(s, bind('p', '2') + execute() + SYNC)
out(res)
"#;
    let probe = spawn_probe(&rt, script);
    let first = stack
        .sluice
        .wait_for_pending("EXECUTE s1(3)", WAIT)
        .unwrap();
    let summary = first["summary"].as_str().unwrap();
    assert!(
        summary.contains("DELETE FROM customers WHERE id = $1"),
        "the approval shows what s1 runs: {summary}"
    );
    assert_eq!(ids(&stack), "1\n2\n3\n", "nothing deleted while held");
    stack.sluice.approve(first["id"].as_str().unwrap()).unwrap();
    let second = stack
        .sluice
        .wait_for_pending("PREPARE p AS DELETE", WAIT)
        .unwrap();
    assert_eq!(ids(&stack), "1\n2\n", "the approved EXECUTE ran");
    stack
        .sluice
        .deny(second["id"].as_str().unwrap(), "not this one")
        .unwrap();
    let r = probe_result(probe);
    assert_eq!(r["parse"], serde_json::json!(["1", "Z"]), "{r}");
    assert_eq!(
        r["execute"],
        serde_json::json!([["C", "DELETE 1"], "Z"]),
        "{r}"
    );
    assert_eq!(
        r["prepare"],
        serde_json::json!([["C", "PREPARE"], "Z"]),
        "not held: {r}"
    );
    let refused = r["bind"].as_array().unwrap().iter();
    assert!(
        refused.clone().any(|m| m[0] == "E" && m[1] == "42501")
            && !refused.clone().any(|m| m[0] == "C"),
        "the denied Bind gets 42501 and runs nothing: {r}"
    );
    assert_eq!(ids(&stack), "1\n2\n", "the denied Bind deleted nothing");

    let session = &sessions_of(&stack, DB)[0];
    let queries: Vec<&str> = events(session, "query")
        .iter()
        .filter_map(|e| e["sql"].as_str())
        .collect();
    assert!(
        queries
            .iter()
            .any(|q| q.starts_with("EXECUTE s1(3)")
                && q.contains("DELETE FROM customers WHERE id = $1")),
        "the record has the EXECUTE with what it ran: {queries:?}"
    );
    assert!(
        queries.iter().all(|q| !q.is_empty()),
        "no execution is recorded without its SQL: {queries:?}"
    );
    stack.assert_no_secret_leaked();
}

#[test]
fn an_approved_prepare_executes_once_and_the_next_execute_is_held_again() {
    let stack = deletes_stack("attack-prepare-twice");
    let token = stack.token(DB).unwrap();
    let conninfo = stack.pg_conninfo(DB, &token, "sslmode=disable");
    let res = std::thread::scope(|s| {
        let agent = s.spawn(|| {
            let args = [
                "-At",
                "-v",
                "VERBOSITY=verbose",
                "-c",
                "PREPARE p AS DELETE FROM customers WHERE id = $1",
                "-c",
                "EXECUTE p(3)",
                "-c",
                "EXECUTE p(2)",
            ];
            stack.psql(&conninfo, &args).unwrap()
        });
        let first = stack.sluice.wait_for_pending("EXECUTE p(3)", WAIT).unwrap();
        stack.sluice.approve(first["id"].as_str().unwrap()).unwrap();
        let again = stack.sluice.wait_for_pending("EXECUTE p(2)", WAIT).unwrap();
        assert_ne!(first["id"], again["id"], "a new approval");
        stack
            .sluice
            .deny(again["id"].as_str().unwrap(), "one approval, one execution")
            .unwrap();
        agent.join().unwrap()
    });
    assert!(res.stdout.contains("DELETE 1"), "{res:?}");
    let errors = errors(&res);
    assert!(
        errors.len() == 1 && errors[0].contains("42501"),
        "only the second EXECUTE is refused: {res:?}"
    );
    assert_eq!(ids(&stack), "1\n2\n", "row 3 gone, row 2 kept");
    stack.assert_no_secret_leaked();
}

#[test]
fn an_execute_of_a_name_sluice_never_saw_prepared_is_refused_with_42501_and_recorded() {
    let stack = deletes_stack("attack-execute-unknown");
    let token = stack.token(DB).unwrap();
    let conninfo = stack.pg_conninfo(DB, &token, "sslmode=disable");
    let res = stack
        .psql(
            &conninfo,
            &[
                "-At",
                "-v",
                "VERBOSITY=verbose",
                "-c",
                "EXECUTE nobody_made_me(3)",
                "-c",
                "SELECT count(*) FROM customers",
            ],
        )
        .unwrap();
    let errors = errors(&res);
    assert!(
        errors.len() == 1
            && errors[0].contains("42501")
            && errors[0].contains("\"nobody_made_me\""),
        "{res:?}"
    );
    assert_eq!(res.stdout.trim(), "3", "the session goes on: {res:?}");
    let session = &sessions_of(&stack, DB)[0];
    let denied = events(session, "denied");
    assert_eq!(denied.len(), 1, "{session:#?}");
    assert_eq!(denied[0]["rule"], "UNKNOWN_PREPARED");
    assert!(events(session, "query")
        .iter()
        .any(|q| q["sql"] == "EXECUTE nobody_made_me(3)"));
}

#[test]
fn comment_on_and_lo_unlink_anywhere_are_denied_under_comment_and_function_rules() {
    let stack = stack_denying(
        "attack-comment-function",
        r#"["COMMENT", "FUNCTION:lo_unlink"]"#,
    );
    let token = stack.token(DB).unwrap();
    let conninfo = stack.pg_conninfo(DB, &token, "sslmode=disable");
    let refused = [
        "COMMENT ON TABLE customers IS 'owned by the agent now'",
        "WITH x AS (SELECT pg_catalog.lo_unlink(424242)) SELECT * FROM x",
        "SELECT name FROM customers WHERE id = (SELECT LO_UNLINK(424242))",
    ];
    let mut args = vec!["-At", "-v", "VERBOSITY=verbose"];
    for sql in &refused {
        args.extend(["-c", sql]);
    }
    args.extend(["-c", "SELECT pg_cancel_backend(0)"]);
    let res = stack.psql(&conninfo, &args).unwrap();
    let errors = errors(&res);
    assert_eq!(errors.len(), refused.len(), "{res:?}");
    assert!(errors.iter().all(|e| e.contains("42501")), "{errors:?}");
    assert!(
        errors[0].contains("COMMENT statements are denied"),
        "{errors:?}"
    );
    assert!(errors[1].contains("lo_unlink"), "{errors:?}");
    assert_eq!(res.stdout.trim(), "f", "a function not named runs: {res:?}");
    let comment = stack
        .postgres(DB)
        .superuser_psql("billing", "SELECT obj_description('customers'::regclass)")
        .unwrap();
    assert_eq!(comment.trim(), "", "the catalog is unchanged");
}

#[test]
fn dangerous_functions_deny_backend_signalling_and_large_objects_in_ctes_and_sub_selects() {
    let stack = stack_denying("attack-dangerous", r#"["DANGEROUS_FUNCTIONS"]"#);
    let token = stack.token(DB).unwrap();
    let conninfo = stack.pg_conninfo(DB, &token, "sslmode=disable");
    let refused = [
        "WITH t AS (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE false) SELECT * FROM t",
        "SELECT name FROM customers WHERE id = (SELECT pg_cancel_backend(0)::int)",
        "SELECT lo_unlink(424242)",
        "SELECT set_config('statement_timeout', '1', false)",
    ];
    let mut args = vec!["-At", "-v", "VERBOSITY=verbose"];
    for sql in &refused {
        args.extend(["-c", sql]);
    }
    args.extend(["-c", "SELECT count(*) FROM customers"]);
    let res = stack.psql(&conninfo, &args).unwrap();
    let errors = errors(&res);
    assert_eq!(errors.len(), refused.len(), "{res:?}");
    assert!(
        errors
            .iter()
            .all(|e| e.contains("42501") && e.contains("DANGEROUS_FUNCTIONS")),
        "{errors:?}"
    );
    assert_eq!(res.stdout.trim(), "3", "{res:?}");
    let session = &sessions_of(&stack, DB)[0];
    assert_eq!(events(session, "denied").len(), refused.len());
}
