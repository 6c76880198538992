//! MySQL / MariaDB through the real eBPF redirect (issue 12, DESIGN.md §6
//! "MySQL / MariaDB"): the `mariadb` CLI (with TLS verifying Sluice's CA,
//! and without), PyMySQL and mysql-connector-python (a prepared cursor
//! too) log in with the token against a real MariaDB, which sees the real
//! user; `ssn` is masked in text and binary results; guardrails refuse with
//! 1227/`42000`, the table stays and the session goes on; records carry
//! `query`, `denied`, `masked` and `close`; the real password appears
//! nowhere.
use std::process::Output;

use sluice_tests::{mariadb::DATABASE, ServiceSpec, Stack};

use crate::{events, sessions_of};

/// The MySQL service of the `mysql*` tests and the name agents dial.
pub const MY: &str = "orders-db";
pub const MY_HOST: &str = "mysql.internal";
/// The guardrails of the MySQL service (DESIGN.md §6's example).
pub const MY_DENY: &str = r#"deny = ["DROP", "TRUNCATE", "ALTER", "GRANT", "DELETE_WITHOUT_WHERE", "UPDATE_WITHOUT_WHERE", "LOAD_DATA", "INTO_OUTFILE"]"#;

/// `orders-db` on `mysql.internal`: deny [`MY_DENY`], mask `ssn`, the
/// upstream without TLS.
pub fn orders_db() -> ServiceSpec {
    ServiceSpec::mysql(MY, MY_HOST)
        .extra(MY_DENY)
        .extra(r#"mask = ["ssn"]"#)
}

/// The `mariadb` CLI's argv for the agent against `orders-db` with
/// `token`, then `more` (TLS options, `-e SQL`).
pub fn mariadb_argv(stack: &Stack, token: &str, more: &[&str]) -> Vec<String> {
    let mut argv: Vec<String> = [
        "mariadb",
        "--host",
        MY_HOST,
        "--user=agent",
        "--batch",
        "--skip-column-names",
        "--connect-timeout=10",
        "-D",
        DATABASE,
    ]
    .map(String::from)
    .to_vec();
    argv.push(format!("--port={}", stack.mariadb(MY).addr().port()));
    argv.push(format!("--password={token}"));
    argv.extend(more.iter().map(|a| a.to_string()));
    argv
}

/// Runs the `mariadb` CLI as the agent against `orders-db` with `token`,
/// `tls` arguments and `sql`; (success, stdout + stderr).
pub fn mariadb(stack: &Stack, token: &str, tls: &[&str], sql: &str) -> (bool, String) {
    let mut more = tls.to_vec();
    more.extend(["-e", sql]);
    text(
        stack
            .agent_with_hosts(&[], &mariadb_argv(stack, token, &more))
            .unwrap(),
    )
}

/// Runs a Python `body` as the agent, with `HOST`, `PORT` and `TOKEN` set
/// and `pymysql`, `mysql.connector` imported; (success, stdout + stderr).
pub fn python(stack: &Stack, token: &str, body: &str) -> (bool, String) {
    let script = format!(
        "import sys, time, threading, pymysql, pymysql.constants.CLIENT, mysql.connector\n\
         HOST, PORT, TOKEN = {MY_HOST:?}, {port}, sys.argv[1]\n{body}",
        port = stack.mariadb(MY).addr().port(),
    );
    text(stack.python(&[], &script, &[token]).unwrap())
}

fn text(out: Output) -> (bool, String) {
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), all)
}

/// The rows of `customers`, counted by MariaDB's root.
pub fn customers(stack: &Stack) -> String {
    stack
        .mariadb(MY)
        .root_sql("SELECT COUNT(*) FROM billing.customers")
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn mariadb_cli_with_and_without_tls_is_masked_and_guarded() {
    let stack = Stack::builder("mysql-cli")
        .service(orders_db())
        .start()
        .unwrap();
    let token = stack.token(MY).unwrap();
    let ca = stack.sluice.ca_cert_path().unwrap();
    let ca_arg = format!("--ssl-ca={}", ca.display());
    let tls = ["--ssl", &ca_arg, "--ssl-verify-server-cert"];

    let (ok, out) = mariadb(
        &stack,
        &token,
        &tls,
        "SELECT CURRENT_USER(); SELECT id, ssn FROM customers ORDER BY id",
    );
    assert!(ok, "TLS verifying Sluice's CA: {out}");
    assert_eq!(
        out.trim(),
        format!(
            "{}@%\n1\t****\n2\t****\n3\tNULL",
            sluice_tests::mariadb::NATIVE_USER
        ),
        "the upstream sees the real user; ssn masked, NULL kept"
    );

    for sql in [
        "DROP TABLE customers",
        "/*!50000 DROP TABLE customers */",
        "SELECT 1; DROP TABLE customers",
        "DELETE FROM customers",
        "TRUNCATE customers",
        // Reading the masked column where masking cannot follow it.
        "SELECT UPPER(ssn) FROM customers",
    ] {
        let (ok, out) = mariadb(&stack, &token, &["--skip-ssl"], sql);
        assert!(
            !ok && out.contains("1227") && out.contains("42000"),
            "{sql}: {out}"
        );
        assert_eq!(customers(&stack), "3", "{sql}");
    }
    // The same session goes on after a refusal.
    let (ok, out) = python(
        &stack,
        &token,
        "p = pymysql.connect(host=HOST, port=PORT, user='agent', password=TOKEN, database='billing', client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS)\n\
         c = p.cursor()\n\
         try:\n    c.execute('DROP TABLE customers')\nexcept pymysql.MySQLError as e:\n    print('refused', e.args[0])\n\
         c.execute('SELECT name FROM customers WHERE id = 1; SELECT ssn AS tax FROM customers WHERE id = 2')\n\
         print(c.fetchall()); c.nextset(); print(c.fetchall())\n",
    );
    assert!(ok, "{out}");
    assert_eq!(
        out.trim(),
        "refused 1227\n(('Ada Lovelace',),)\n(('****',),)",
        "the session answers after the refusal, masked behind an alias"
    );
    assert_eq!(customers(&stack), "3");
    assert!(!out.contains("123-45-6789") && !out.contains("987-65-4321"));

    let sessions = sessions_of(&stack, MY);
    assert_eq!(sessions.len(), 8, "one session per client run");
    let all: Vec<_> = sessions.iter().flatten().cloned().collect();
    for s in &sessions {
        assert_eq!(events(s, "auth_ok").len(), 1, "{s:#?}");
        assert_eq!(events(s, "close").len(), 1, "{s:#?}");
    }
    let denied = events(&all, "denied");
    assert!(
        denied.iter().any(|e| e["rule"] == "DROP"),
        "a denied DROP is recorded: {denied:#?}"
    );
    assert!(denied.iter().any(|e| e["rule"] == "DELETE_WITHOUT_WHERE"));
    assert!(denied.iter().any(|e| e["rule"] == "MASK"));
    let masked = events(&all, "masked");
    assert!(
        masked.iter().any(|e| e["fields"][0] == "ssn"),
        "{masked:#?}"
    );
    assert!(events(&all, "query")
        .iter()
        .any(|e| e["sql"] == "TRUNCATE customers"));
    stack.assert_no_secret_leaked();
}

#[test]
fn python_clients_log_in_with_the_token_and_prepared_results_are_masked() {
    let stack = Stack::builder("mysql-python")
        .service(orders_db())
        .start()
        .unwrap();
    let token = stack.token(MY).unwrap();
    let ca = stack.sluice.ca_cert_path().unwrap();
    let (ok, out) = python(
        &stack,
        &token,
        &format!(
            "c = mysql.connector.connect(host=HOST, port=PORT, user='agent', password=TOKEN, database='billing', ssl_disabled=True)\n\
             cur = c.cursor(prepared=True)\n\
             cur.execute('SELECT id, ssn FROM customers WHERE id <= %s ORDER BY id', (3,))\n\
             print('prepared', cur.fetchall())\n\
             cur = c.cursor()\n\
             cur.execute('SELECT CURRENT_USER()')\n\
             print('user', cur.fetchall()[0][0])\n\
             try:\n    c.cursor().execute('DROP TABLE customers')\nexcept mysql.connector.Error as e:\n    print('refused', e.errno, e.sqlstate)\n\
             p = pymysql.connect(host=HOST, port=PORT, user='agent', password=TOKEN, database='billing', ssl={{'ca': {ca:?}}})\n\
             with p.cursor() as pc:\n    pc.execute('SELECT ssn FROM customers WHERE id = 2')\n    print('pymysql', pc.fetchall())\n",
            ca = ca.display().to_string(),
        ),
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("prepared [(1, '****'), (2, '****'), (3, None)]"),
        "binary result masked: {out}"
    );
    assert!(
        out.contains(&format!("user {}@%", sluice_tests::mariadb::NATIVE_USER)),
        "{out}"
    );
    assert!(out.contains("refused 1227 42000"), "{out}");
    assert!(out.contains("pymysql (('****',),)"), "{out}");
    assert!(!out.contains("123-45-6789") && !out.contains("987-65-4321"));
    assert_eq!(customers(&stack), "3");
    stack.assert_no_secret_leaked();
}

/// Node's `mysql2` as the agent: `argv`: host, port, token, CA file.
const NODE_MYSQL2: &str = r#"
const mysql = require('mysql2/promise');
const [host, port, token, ca] = process.argv.slice(1);
(async () => {
  const c = await mysql.createConnection({ host, port: Number(port), user: 'agent', password: token,
    database: 'billing', ssl: { ca: require('fs').readFileSync(ca) } });
  const [rows] = await c.execute('SELECT id, ssn FROM customers WHERE id <= ? ORDER BY id', [3]);
  console.log('execute ' + JSON.stringify(rows));
  const [q] = await c.query('SELECT ssn FROM customers WHERE id = 2');
  console.log('query ' + JSON.stringify(q));
  try { await c.query('DROP TABLE customers'); } catch (e) { console.log('refused ' + e.errno + ' ' + e.sqlState); }
  await c.end();
})().catch((e) => { console.error(e.message); process.exit(1); });
"#;

#[test]
fn node_mysql2_logs_in_over_tls_and_its_prepared_results_are_masked() {
    let stack = Stack::builder("mysql-node")
        .service(orders_db())
        .start()
        .unwrap();
    let token = stack.token(MY).unwrap();
    let ca = stack.sluice.ca_cert_path().unwrap();
    let node_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/node-clients/node_modules");
    let port = stack.mariadb(MY).addr().port().to_string();
    let out = stack
        .agent_with_hosts(
            &[("NODE_PATH", node_path.to_str().unwrap())],
            &[
                "node",
                "-e",
                NODE_MYSQL2,
                MY_HOST,
                &port,
                &token,
                ca.to_str().unwrap(),
            ],
        )
        .unwrap();
    let (ok, out) = text(out);
    assert!(ok, "node mysql2 (run `cargo xtask setup` for it): {out}");
    assert!(
        out.contains(
            r#"execute [{"id":1,"ssn":"****"},{"id":2,"ssn":"****"},{"id":3,"ssn":null}]"#
        ),
        "{out}"
    );
    assert!(out.contains(r#"query [{"ssn":"****"}]"#), "{out}");
    assert!(out.contains("refused 1227 42000"), "{out}");
    assert_eq!(customers(&stack), "3");
    stack.assert_no_secret_leaked();
}
