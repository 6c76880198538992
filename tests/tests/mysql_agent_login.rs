//! Sluice's MySQL server side (`sluice_mysql::agent::accept`) against
//! unmodified clients: the `mariadb` CLI, PyMySQL and
//! mysql-connector-python log in with a token as their password, with and
//! without TLS, under each announced plugin (`mysql_native_password`,
//! `caching_sha2_password`); a wrong token gets ERR 1045.
//!
//! The server here stops after authentication: it answers every command
//! with OK, which is all these clients need to finish a session.
//! Requires mariadb-client, PyMySQL and mysql-connector-python
//! (`cargo xtask setup`).
use std::{net::SocketAddr, path::PathBuf, process::Command, time::Duration};

use sluice_mysql::{
    agent::{accept, AgentSettings},
    auth::{
        verifier::{Proof, Verifier},
        Plugin,
    },
    gate::{Allowed, Event, Gate, Statement},
    response::OkPacket,
    ErrPacket,
};
use sluice_tests::{process, random_secret, stack::next_upstream_ip, TestCa};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

struct Server {
    addr: SocketAddr,
    token: String,
    ca_pem: PathBuf,
    _dir: tempfile::TempDir,
}

/// A gate that knows one token's verifier and nothing else.
struct LoginGate {
    verifier: Verifier,
}

impl Gate for LoginGate {
    async fn authenticate(&mut self, proof: &Proof) -> Result<(), ErrPacket> {
        sluice_tests::mysql_gate::authenticate(&self.verifier, proof)
    }

    async fn authorize(&mut self, _: &Statement<'_>) -> Result<Allowed, ErrPacket> {
        unreachable!("no relay in this test")
    }

    async fn record(&mut self, _: Event) -> Result<(), ErrPacket> {
        Ok(())
    }

    fn upstream_thread(&self, _: u64) -> Option<u32> {
        None
    }
}

/// Starts a server announcing `plugin` that accepts `token` (by its
/// verifier only) with TLS offered.
async fn server(plugin: Plugin) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path()).unwrap();
    let ip = next_upstream_ip();
    let tls = TlsAcceptor::from(ca.server_config(&[&ip.to_string()], &[]).unwrap());
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = format!("sluice_tok_{}", random_secret());
    let verifier = Verifier::from_token(token.as_bytes());
    tokio::spawn(async move {
        let mut id = 100;
        loop {
            let (io, _) = listener.accept().await.unwrap();
            id += 1;
            let settings = AgentSettings {
                connection_id: id,
                server_version: "8.0.36-sluice".into(),
                plugin,
                tls: Some(tls.clone()),
            };
            let verifier = verifier.clone();
            tokio::spawn(async move {
                let mut gate = LoginGate { verifier };
                let Ok(mut agent) = accept(io, &settings, &mut gate).await else {
                    return;
                };
                let ok = OkPacket {
                    status: 2,
                    ..OkPacket::default()
                };
                let s = &mut agent.stream;
                if s.write(&ok.encode()).await.is_err() {
                    return;
                }
                // Commands: OK to everything, until COM_QUIT or EOF.
                while let Ok(cmd) = s.read().await {
                    if cmd.payload.first() == Some(&0x01) || s.write(&ok.encode()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Server {
        addr,
        token,
        ca_pem: ca.pem_path().to_path_buf(),
        _dir: dir,
    }
}

/// Runs `cmd` off the async runtime; returns (success, stdout + stderr).
async fn run(mut cmd: Command) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let out = process::output_with_timeout(&mut cmd, None, CLIENT_TIMEOUT).unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    })
    .await
    .unwrap()
}

fn mariadb_cli(s: &Server, password: &str, tls: bool) -> Command {
    let mut cmd = Command::new("mariadb");
    cmd.arg("--no-defaults")
        .arg(format!("--host={}", s.addr.ip()))
        .arg(format!("--port={}", s.addr.port()))
        .arg("--user=any-agent-name")
        .arg(format!("--password={password}"))
        .args(["--connect-timeout=10", "-e", "DO 1"]);
    if tls {
        cmd.arg("--ssl")
            .arg(format!("--ssl-ca={}", s.ca_pem.display()))
            .arg("--ssl-verify-server-cert");
    } else {
        cmd.arg("--skip-ssl");
    }
    cmd
}

/// A Python client: `pymysql` or `mysql.connector`, printing `OK` after a
/// ping, or the error code.
fn python_client(s: &Server, module: &str, password: &str, tls: bool) -> Command {
    let ssl = match (module, tls) {
        ("pymysql", true) => format!("ssl={{'ca': {:?}}}", s.ca_pem.display().to_string()),
        ("pymysql", false) => "ssl=None".to_string(),
        (_, true) => format!(
            "ssl_ca={:?}, ssl_verify_cert=True, ssl_verify_identity=True",
            s.ca_pem.display().to_string()
        ),
        (_, false) => "ssl_disabled=True".to_string(),
    };
    let connect = match module {
        "pymysql" => "pymysql.connect",
        _ => "mysql.connector.connect",
    };
    let extra = if module == "pymysql" {
        ""
    } else {
        ", use_pure=True"
    };
    let script = format!(
        "import sys, {module}\n\
         try:\n\
         \x20   c = {connect}(host={host:?}, port={port}, user='agent', password=sys.argv[1], {ssl}{extra}, connect_timeout=10)\n\
         \x20   c.ping()\n\
         \x20   c.close()\n\
         \x20   print('OK')\n\
         except Exception as e:\n\
         \x20   print('ERR', getattr(e, 'errno', None) or (e.args[0] if e.args else e), repr(e))\n\
         \x20   sys.exit(1)\n",
        module = module,
        host = s.addr.ip().to_string(),
        port = s.addr.port(),
    );
    let mut cmd = Command::new("python3");
    cmd.args(["-c", &script, password]);
    cmd
}

fn clients(s: &Server, password: &str) -> Vec<(String, Command)> {
    let mut all = Vec::new();
    for tls in [false, true] {
        all.push((format!("mariadb tls={tls}"), mariadb_cli(s, password, tls)));
        for module in ["pymysql", "mysql.connector"] {
            all.push((
                format!("{module} tls={tls}"),
                python_client(s, module, password, tls),
            ));
        }
    }
    all
}

async fn logins_with_the_token_succeed(plugin: Plugin) {
    let s = server(plugin).await;
    for (name, cmd) in clients(&s, &s.token) {
        let (ok, out) = run(cmd).await;
        assert!(ok, "{name} under {}: {out}", plugin.name());
        assert!(!out.contains(&s.token), "{name} printed the token");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_log_in_by_mysql_native_password() {
    logins_with_the_token_succeed(Plugin::MysqlNativePassword).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_log_in_by_caching_sha2_password() {
    logins_with_the_token_succeed(Plugin::CachingSha2Password).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_gets_1045() {
    for plugin in [Plugin::MysqlNativePassword, Plugin::CachingSha2Password] {
        let s = server(plugin).await;
        for (name, cmd) in clients(&s, "sluice_tok_wrong") {
            let (ok, out) = run(cmd).await;
            assert!(
                !ok,
                "{name} under {} logged in with a wrong token",
                plugin.name()
            );
            assert!(
                out.contains("1045"),
                "{name} under {}: {out}",
                plugin.name()
            );
        }
    }
}
