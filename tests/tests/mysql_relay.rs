//! The `sluice-mysql` command relay between real clients and a real
//! MariaDB, with a test gate in place of the gateway's guard pipeline
//! (deny DROP, TRUNCATE, DELETE/UPDATE without WHERE, LOAD_DATA,
//! INTO_OUTFILE and unparseable text; mask `ssn`): guardrails refuse with
//! 1227 and leave the table intact, masking covers text and prepared
//! results, `KILL QUERY` reaches the agent's own upstream thread only,
//! and a revoked token stops the next statement with 1045.
//!
//! Requires root, mariadb-server, mariadb-client, PyMySQL and
//! mysql-connector-python (`cargo xtask setup`).
use std::{
    collections::HashMap,
    net::SocketAddr,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use rustls_pki_types::ServerName;
use sluice_mysql::{
    agent::{accept, AgentSettings},
    auth::{verifier::Proof, verifier::Verifier, Plugin},
    classify::{check_exposure, Escapes},
    gate::{Allowed, Event, Gate, Statement},
    relay::relay,
    response::OkPacket,
    upstream::{login, LoginParams, UpstreamTls},
    Capabilities, ErrPacket,
};
use sluice_tests::{
    mariadb::{MariaDb, DATABASE, NATIVE_USER},
    process, random_secret,
    stack::next_upstream_ip,
};
use tokio::net::{TcpListener, TcpStream};

const DENY: &[&str] = &[
    "DROP",
    "TRUNCATE",
    "ALTER",
    "GRANT",
    "DELETE_WITHOUT_WHERE",
    "UPDATE_WITHOUT_WHERE",
    "LOAD_DATA",
    "INTO_OUTFILE",
];

#[derive(Clone, Default)]
struct Shared {
    revoked: Arc<AtomicBool>,
    events: Arc<Mutex<Vec<Event>>>,
    /// Sluice connection id → upstream thread id.
    threads: Arc<Mutex<HashMap<u64, u32>>>,
}

struct TestGate {
    shared: Shared,
    verifier: Verifier,
}

impl Gate for TestGate {
    async fn authenticate(&mut self, proof: &Proof) -> Result<(), ErrPacket> {
        sluice_tests::mysql_gate::authenticate(&self.verifier, proof)
    }

    async fn authorize(&mut self, statement: &Statement<'_>) -> Result<Allowed, ErrPacket> {
        if self.shared.revoked.load(Ordering::SeqCst) {
            return Err(ErrPacket::access_denied("the token was revoked"));
        }
        let denied =
            |rule: &str| ErrPacket::policy_denied(format!("statement denied by policy ({rule})"));
        let c = statement
            .classification
            .as_ref()
            .map_err(|_| denied("UNPARSEABLE"))?;
        if let Some(k) = c.kinds.iter().find(|k| DENY.contains(&k.as_str())) {
            return Err(denied(k.as_str()));
        }
        if statement.sql == "SELECT 'revoke-now'" {
            self.shared.revoked.store(true, Ordering::SeqCst);
        }
        let mask = vec!["ssn".to_string()];
        check_exposure(statement.sql, statement.escapes, &mask)
            .map_err(|e| ErrPacket::policy_denied(format!("{e} (sluice rule MASK)")))?;
        Ok(Allowed::Masked(mask))
    }

    async fn record(&mut self, event: Event) -> Result<(), ErrPacket> {
        self.shared.events.lock().unwrap().push(event);
        Ok(())
    }

    fn upstream_thread(&self, connection_id: u64) -> Option<u32> {
        self.shared
            .threads
            .lock()
            .unwrap()
            .get(&connection_id)
            .copied()
    }
}

struct Relay {
    addr: SocketAddr,
    token: String,
    shared: Shared,
    /// The upstream password: no client output may hold it.
    secret: String,
}

async fn start_relay(db: &MariaDb) -> Relay {
    let listener = TcpListener::bind((next_upstream_ip(), 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = format!("sluice_tok_{}", random_secret());
    let verifier = Verifier::from_token(token.as_bytes());
    let shared = Shared::default();
    let (upstream_addr, password) = (db.addr(), db.password().to_string());
    let s = shared.clone();
    tokio::spawn(async move {
        let mut next_id = 500u32;
        loop {
            let (io, _) = listener.accept().await.unwrap();
            next_id += 1;
            let (id, verifier, password, shared) =
                (next_id, verifier.clone(), password.clone(), s.clone());
            tokio::spawn(async move {
                let settings = AgentSettings {
                    connection_id: id,
                    server_version: "5.5.5-10.11.0-MariaDB-sluice".into(),
                    plugin: Plugin::MysqlNativePassword,
                    tls: None,
                };
                let mut gate = TestGate { shared, verifier };
                let Ok(mut agent) = accept(io, &settings, &mut gate).await else {
                    return;
                };
                let database = agent.response.database.clone();
                let params = LoginParams {
                    user: NATIVE_USER,
                    password: password.as_bytes(),
                    database: database.as_deref(),
                    tls: UpstreamTls::Disable,
                    tls_config: None,
                    server_name: ServerName::try_from("mysql.sluice.test").unwrap(),
                    capabilities: agent.capabilities & Capabilities::UPSTREAM,
                };
                let tcp = TcpStream::connect(upstream_addr).await.unwrap();
                let mut up = login(tcp, &params).await.unwrap();
                gate.shared
                    .threads
                    .lock()
                    .unwrap()
                    .insert(u64::from(id), up.handshake.connection_id);
                let ok = OkPacket {
                    status: 2,
                    ..OkPacket::default()
                };
                agent.stream.write(&ok.encode()).await.unwrap();
                let _ = relay(
                    &mut agent.stream,
                    &mut up.stream,
                    &mut gate,
                    Escapes::Backslash,
                )
                .await;
            });
        }
    });
    Relay {
        addr,
        token,
        shared,
        secret: db.password().to_string(),
    }
}

async fn run(r: &Relay, mut cmd: Command) -> (bool, String) {
    let secret = r.secret.clone();
    tokio::task::spawn_blocking(move || {
        let out = process::output_with_timeout(&mut cmd, None, Duration::from_secs(60)).unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        sluice_tests::assert_no_secret(&secret, &[("client output".into(), text.clone())]);
        (out.status.success(), text)
    })
    .await
    .unwrap()
}

fn cli(r: &Relay, sql: &str) -> Command {
    let mut cmd = Command::new("mariadb");
    cmd.arg("--no-defaults")
        .arg(format!("--host={}", r.addr.ip()))
        .arg(format!("--port={}", r.addr.port()))
        .arg("--user=agent")
        .arg(format!("--password={}", r.token))
        .args([
            "--skip-ssl",
            "--local-infile=1",
            "--batch",
            "--skip-column-names",
            "-D",
            DATABASE,
            "-e",
            sql,
        ]);
    cmd
}

fn python(r: &Relay, body: &str) -> Command {
    let script = format!(
        "import sys, time, threading, pymysql, mysql.connector\n\
         HOST, PORT, TOKEN = {host:?}, {port}, sys.argv[1]\n{body}",
        host = r.addr.ip().to_string(),
        port = r.addr.port(),
    );
    let mut cmd = Command::new("python3");
    cmd.args(["-c", &script, &r.token]);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guardrails_and_masking_through_the_relay() {
    let db = MariaDb::start(next_upstream_ip(), &random_secret(), None).unwrap();
    let r = start_relay(&db).await;

    let (ok, out) = run(&r, cli(&r, "SELECT id, ssn FROM customers ORDER BY id")).await;
    assert!(ok, "{out}");
    assert_eq!(
        out.trim(),
        "1\t****\n2\t****\n3\tNULL",
        "text result masked, NULL kept"
    );

    for sql in [
        "DROP TABLE customers",
        "/*!50000 DROP TABLE customers */",
        "SELECT 1; DROP TABLE customers",
        "DELETE FROM customers",
        "TRUNCATE customers",
        "LOAD DATA LOCAL INFILE '/etc/passwd' INTO TABLE customers",
        // Reading the masked column where masking cannot follow it.
        "SELECT UPPER(ssn) FROM customers",
        "SELECT name FROM customers UNION SELECT ssn FROM customers",
    ] {
        let (ok, out) = run(&r, cli(&r, sql)).await;
        assert!(
            !ok && out.contains("1227") && out.contains("42000"),
            "{sql}: {out}"
        );
        assert_eq!(
            db.root_sql("SELECT COUNT(*) FROM billing.customers")
                .unwrap()
                .trim(),
            "3",
            "{sql}"
        );
    }
    // The session goes on after a refusal.
    let (ok, out) = run(&r, cli(&r, "DROP TABLE customers; SELECT 1")).await;
    assert!(!ok && out.contains("1227"), "{out}");
    let (ok, out) = run(
        &r,
        cli(
        &r,
        "SELECT name FROM customers WHERE id = 1; SELECT ssn AS tax FROM customers WHERE id = 2",
    ),
    )
    .await;
    assert!(ok, "{out}");
    assert_eq!(
        out.trim(),
        "Ada Lovelace\n****",
        "multi-results masked behind an alias"
    );

    let (ok, out) = run(&r, python(
        &r,
        "c = mysql.connector.connect(host=HOST, port=PORT, user='agent', password=TOKEN, database='billing', ssl_disabled=True, use_pure=True)\n\
         cur = c.cursor(prepared=True)\n\
         cur.execute('SELECT id, ssn FROM customers WHERE id <= %s ORDER BY id', (3,))\n\
         print(cur.fetchall())\n\
         p = pymysql.connect(host=HOST, port=PORT, user='agent', password=TOKEN, database='billing')\n\
         with p.cursor() as pc:\n    pc.execute('SELECT ssn FROM customers WHERE id = 2')\n    print(pc.fetchall())\n",
    ))
    .await;
    assert!(ok, "{out}");
    assert!(
        out.contains("[(1, '****'), (2, '****'), (3, None)]"),
        "prepared result: {out}"
    );
    assert!(out.contains("(('****',),)"), "pymysql: {out}");
    for (_, ssn) in [(1, "123-45-6789"), (2, "987-65-4321")] {
        assert!(!out.contains(ssn));
    }
    let events = r.shared.events.lock().unwrap().clone();
    assert!(events.iter().any(
        |e| matches!(e, Event::Masked { columns, .. } if columns.contains(&"ssn".to_string()))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_query_and_revocation() {
    let db = MariaDb::start(next_upstream_ip(), &random_secret(), None).unwrap();
    let r = start_relay(&db).await;
    let (ok, out) = run(&r, python(
        &r,
        "a = pymysql.connect(host=HOST, port=PORT, user='agent', password=TOKEN)\n\
         b = pymysql.connect(host=HOST, port=PORT, user='agent', password=TOKEN)\n\
         res = {}\n\
         def sleeper():\n    t = time.time()\n    try:\n        with a.cursor() as c:\n            c.execute('SELECT SLEEP(30)')\n            res['v'] = c.fetchall()\n    except Exception as e:\n        res['v'] = e.args[0]\n    res['t'] = time.time() - t\n\
         th = threading.Thread(target=sleeper); th.start(); time.sleep(0.5)\n\
         with b.cursor() as c:\n    c.execute('KILL QUERY %d' % a.thread_id())\n\
         try:\n    b.cursor().execute('KILL QUERY 4242')\nexcept Exception as e:\n    print('foreign', e.args[0])\n\
         th.join(10)\n\
         print('elapsed', round(res.get('t', 99), 1), res.get('v'))\n",
    ))
    .await;
    assert!(ok, "{out}");
    let elapsed: f64 = out
        .split("elapsed ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(99.0);
    assert!(
        elapsed < 2.5,
        "SLEEP(30) should end within 2 s of KILL QUERY: {out}"
    );
    assert!(
        out.contains("foreign 1094"),
        "a foreign id is refused: {out}"
    );

    // The test gate revokes the token once it has allowed 'revoke-now'.
    let (ok, out) = run(&r, python(
        &r,
        "a = pymysql.connect(host=HOST, port=PORT, user='agent', password=TOKEN)\n\
         a.cursor().execute(\"SELECT 'revoke-now'\")\n\
         try:\n    a.cursor().execute('SELECT 1')\n    print('still ok')\nexcept Exception as e:\n    print('revoked', e.args[0])\n",
    ))
    .await;
    assert!(ok, "{out}");
    assert!(out.contains("revoked 1045"), "{out}");
}
