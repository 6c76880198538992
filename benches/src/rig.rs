//! Everything the scenarios run against, started once per bench run from
//! the e2e harness's parts (`sluice-tests`): redis-server, a PostgreSQL
//! server with a pgbench database, a MariaDB server, an OpenSSH sshd, nginx
//! as upstream and as the peer proxy, pgbouncer, and three `sluice run`
//! daemons on loopback.
//!
//! | address       | what                                                    |
//! |---------------|---------------------------------------------------------|
//! | 127.0.0.201   | PostgreSQL (`db.bench.test`)                            |
//! | 127.0.0.202   | nginx, the HTTPS upstream (`api.bench.test`): one port HTTP/1.1 only (the service's), one also HTTP/2 (direct runs) |
//! | 127.0.0.203   | nginx, the peer proxy (`proxy.bench.test`), same two ports |
//! | 127.0.0.204   | pgbouncer                                               |
//! | 127.0.0.205   | a plain listener for the redirect microbenchmark        |
//! | 127.0.0.206   | MariaDB (`mysql.bench.test`), without TLS                |
//! | 127.0.0.207   | OpenSSH sshd (`ssh.bench.test`), the harness's [`Sshd`]  |
//!
//! Both gateways proxy the same PostgreSQL database, with policy, masking
//! and recording on; the main one also proxies MariaDB the same way, and
//! the sshd as SSH service [`SSH_SERVICE`] (logging in upstream with the
//! sshd's authorized key from the vault). The second one also masks
//! `abalance`, the column `pgbench -S` reads, and serves only the masked
//! scenario. The third serves only the HTTPS service, with [`RULES`]
//! method/path rules instead of two: the cost-growth run of the keep-alive
//! scenario. Each gateway's
//! agent cgroup and pin directory are its own and go away on drop.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use sluice_tests::{
    mariadb::{MariaDb, NATIVE_USER},
    process,
    sluice::{toml_str, SluiceOptions},
    sshd::{Sshd, UserKey},
    Postgres, Redis, Sluice, TestCa,
};

use crate::peers::{free_addr, Nginx, NginxRole, PgBouncer};

pub const DB_HOST: &str = "db.bench.test";
pub const API_HOST: &str = "api.bench.test";
pub const PROXY_HOST: &str = "proxy.bench.test";
pub const MYSQL_HOST: &str = "mysql.bench.test";
pub const SSH_HOST: &str = "ssh.bench.test";
/// The agent of the main gateway and of the masking one.
pub const AGENT: &str = "bench";
pub const AGENT_MASKED: &str = "bench-masked";
/// The agent of the gateway with [`RULES`] rules on its HTTPS service.
pub const AGENT_RULES: &str = "bench-rules";
/// How many `deny` rules that gateway's HTTPS service has (none matches the
/// bench's requests).
pub const RULES: usize = 1000;
pub const DB_SERVICE: &str = "bench-db";
pub const API_SERVICE: &str = "bench-api";
pub const MYSQL_SERVICE: &str = "bench-mysql";
pub const SSH_SERVICE: &str = "bench-ssh";
/// PostgreSQL role and database (the harness's).
pub const ROLE: &str = sluice_tests::postgres::ROLE;

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// The running bench environment. Fields drop in order: the gateways
/// first, so no agent stays redirected, then the peers and servers.
pub struct Rig {
    pub sluice: Sluice,
    pub sluice_masked: Sluice,
    /// The gateway with [`RULES`] rules on its HTTPS service.
    pub sluice_rules: Sluice,
    pub proxy: Nginx,
    pub upstream: Nginx,
    pub pgbouncer: PgBouncer,
    pub pg: Postgres,
    pub mariadb: MariaDb,
    /// The SSH service's upstream; its authorized key is the vault secret.
    pub sshd: Sshd,
    pub redis: Redis,
    /// Agent tokens: (main gateway db, masking gateway db, main gateway api).
    pub db_token: String,
    pub db_token_masked: String,
    pub api_token: String,
    /// The token of [`AGENT_RULES`] for the HTTPS service of `sluice_rules`.
    pub api_token_rules: String,
    /// The main gateway's agent token for [`MYSQL_SERVICE`].
    pub mysql_token: String,
    /// The real API key (what the upstream checks, and what the peer sets).
    pub api_key: String,
    /// The CA of the upstream's and the peer's certificates.
    pub upstream_ca: PathBuf,
    /// `/etc/hosts` for the load generators (bind-mounted privately).
    pub hosts: PathBuf,
    /// The redirect microbenchmark's listener, outside every agent cgroup
    /// and listed in the main gateway's `egress_allow`.
    pub plain_listener: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl Rig {
    /// Starts everything; `scale` is the pgbench scale factor.
    pub fn start(scale: u32) -> Result<Rig> {
        let dir = tempfile::Builder::new().prefix("sluice-bench-").tempdir()?;
        let d = dir.path();
        let ca = TestCa::new(&d.join("upstream-ca"))?;
        println!("  redis-server, PostgreSQL (pgbench scale {scale}), MariaDB, sshd, nginx ×2, pgbouncer, sluice ×2 under {}", d.display());
        let redis = Redis::start(&d.join("redis"))?;
        let db_password = sluice_tests::random_secret();
        let pg = Postgres::start(ip(201), &db_password, None)?;
        pgbench_init(&pg, scale)?;
        // User `NATIVE_USER` logs in with this password (the vault secret).
        let mysql_password = sluice_tests::random_secret();
        let mariadb = MariaDb::start(ip(206), &mysql_password, None)?;
        let sshd = Sshd::start(ip(207), UserKey::Ed25519);
        let api_key = sluice_tests::random_secret();
        // Every proxy, Sluice included, talks HTTP/1.1 to the upstream
        // (nginx cannot proxy HTTP/2); `h2_addr` serves direct HTTP/2 runs.
        let upstream = Nginx::start(
            &d.join("nginx-upstream"),
            free_addr(ip(202))?,
            Some(free_addr(ip(202))?),
            API_HOST,
            &ca.leaf(&[API_HOST])?,
            NginxRole::Upstream { key: &api_key },
        )?;
        let proxy = Nginx::start(
            &d.join("nginx-proxy"),
            free_addr(ip(203))?,
            Some(free_addr(ip(203))?),
            PROXY_HOST,
            &ca.leaf(&[PROXY_HOST])?,
            NginxRole::Proxy {
                upstream: upstream.addr,
                upstream_host: API_HOST,
                upstream_ca: ca.pem_path(),
                key: &api_key,
            },
        )?;
        let pgbouncer = PgBouncer::start(
            &d.join("pgbouncer"),
            free_addr(ip(204))?,
            pg.addr(),
            ROLE,
            ROLE,
            &db_password,
        )?;
        let plain_listener = crate::redirect::spawn_listener(ip(205))?;

        let policy = r#"deny = ["DROP", "TRUNCATE", "ALTER", "DELETE_WITHOUT_WHERE"]
approve = ["DELETE", "UPDATE"]
"#;
        let db_service = |mask: &str| {
            format!(
                "\n[[service]]\nname = {}\nprotocol = \"postgres\"\nupstream = {}\nresolve = [{}]\nupstream_tls = \"disable\"\ncredential = {{ secret = \"db-key\", user = {} }}\n{policy}mask = [{mask}]\n",
                toml_str(DB_SERVICE),
                toml_str(format!("{DB_HOST}:{}", pg.addr().port())),
                toml_str(pg.addr().ip().to_string()),
                toml_str(ROLE),
            )
        };
        // The HTTPS service with `extra` more deny rules, none of which
        // matches the bench's requests.
        let api_service = |extra: usize| -> Result<String> {
            let mut deny = vec![r#"{ method = "DELETE", path = "/v1/customers/*" }"#.to_string()];
            deny.extend(
                (0..extra).map(|i| format!(r#"{{ method = "GET", path = "/v2/r{i}/*" }}"#)),
            );
            Ok(format!(
                "\n[[service]]\nname = {}\nprotocol = \"https\"\nupstream = {}\nresolve = [{}]\nupstream_ca = {}\ncredential = {{ secret = \"api-key\", header = \"Authorization\", format = \"Bearer {{}}\" }}\ndeny = [{}]\napprove = [{{ method = \"POST\", path = \"/v1/refunds*\" }}]\nmask = [\"card.number\", \"ssn\"]\n",
                toml_str(API_SERVICE),
                toml_str(format!("{API_HOST}:{}", upstream.addr.port())),
                toml_str(upstream.addr.ip().to_string()),
                toml_str(ca.pem_path().to_str().context("utf-8 path")?),
                deny.join(", "),
            ))
        };
        let mysql_service = format!(
            "\n[[service]]\nname = {}\nprotocol = \"mysql\"\nupstream = {}\nresolve = [{}]\nupstream_tls = \"disable\"\ncredential = {{ secret = \"mysql-key\", user = {} }}\n{policy}mask = [\"ssn\"]\n",
            toml_str(MYSQL_SERVICE),
            toml_str(format!("{MYSQL_HOST}:{}", mariadb.addr().port())),
            toml_str(mariadb.addr().ip().to_string()),
            toml_str(NATIVE_USER),
        );
        let ssh_service = format!(
            "\n[[service]]\nname = {}\nprotocol = \"ssh\"\nupstream = {}\nresolve = [{}]\ncredential = {{ secret = \"ssh-key\", user = {} }}\nupstream_host_key = {}\n",
            toml_str(SSH_SERVICE),
            toml_str(format!("{SSH_HOST}:{}", sshd.addr.port())),
            toml_str(sshd.addr.ip().to_string()),
            toml_str(&sshd.user),
            toml_str(sshd.host_key.to_openssh()?),
        );
        let gateway =
            |name: &str, agent: &str, services: String, gateway_toml: String| -> Result<Sluice> {
                let gw_dir = d.join(name);
                std::fs::create_dir_all(&gw_dir)?;
                let mut sluice = Sluice::new(SluiceOptions {
                    label: sluice_tests::unique_name(name),
                    dir: gw_dir,
                    redis_url: redis.url(),
                    agents: vec![agent.to_string()],
                    agent_toml: String::new(),
                    agent_lines: Vec::new(),
                    cgroup_prefix: "sluice-bench".into(),
                    egress: "deny".into(),
                    gateway_toml,
                    services_toml: services,
                })?;
                sluice.secret_put("db-key", &db_password)?;
                sluice.secret_put("api-key", &api_key)?;
                sluice.secret_put("mysql-key", &mysql_password)?;
                sluice.secret_put("ssh-key", &sshd.user_key_pem())?;
                sluice.start()?;
                Ok(sluice)
            };
        let sluice = gateway(
            "gw",
            AGENT,
            format!(
                "{}{}{mysql_service}{ssh_service}",
                db_service("\"ssn\""),
                api_service(0)?
            ),
            format!(
                "egress_allow = [{}]\n",
                toml_str(plain_listener.to_string())
            ),
        )?;
        let sluice_masked = gateway(
            "gw-masked",
            AGENT_MASKED,
            db_service("\"ssn\", \"abalance\""),
            String::new(),
        )?;
        // Two rules (one deny, one approve) on the main gateway's HTTPS
        // service; RULES here.
        let sluice_rules = gateway(
            "gw-rules",
            AGENT_RULES,
            api_service(RULES - 2)?,
            String::new(),
        )?;
        let db_token = sluice.token_issue(AGENT, DB_SERVICE, "6h")?;
        let db_token_masked = sluice_masked.token_issue(AGENT_MASKED, DB_SERVICE, "6h")?;
        let api_token = sluice.token_issue(AGENT, API_SERVICE, "6h")?;
        let api_token_rules = sluice_rules.token_issue(AGENT_RULES, API_SERVICE, "6h")?;
        let mysql_token = sluice.token_issue(AGENT, MYSQL_SERVICE, "6h")?;

        let hosts = d.join("hosts");
        std::fs::write(
            &hosts,
            format!(
                "127.0.0.1 localhost\n{} {DB_HOST}\n{} {API_HOST}\n{} {PROXY_HOST}\n{} {MYSQL_HOST}\n{} {SSH_HOST}\n",
                pg.addr().ip(),
                upstream.addr.ip(),
                proxy.addr.ip(),
                mariadb.addr().ip(),
                sshd.addr.ip()
            ),
        )?;
        Ok(Rig {
            sluice,
            sluice_masked,
            sluice_rules,
            proxy,
            upstream,
            pgbouncer,
            pg,
            mariadb,
            sshd,
            redis,
            db_token,
            db_token_masked,
            api_token,
            api_token_rules,
            mysql_token,
            api_key,
            upstream_ca: ca.pem_path().to_path_buf(),
            hosts,
            plain_listener,
            dir,
        })
    }

    /// The main gateway's daemon PID.
    pub fn sluice_pid(&self) -> Result<u32> {
        self.sluice.pid().context("sluice run is not running")
    }

    /// Fails if a gateway's daemon died (a crash), with its log's tail.
    pub fn check_alive(&mut self) -> Result<()> {
        for (name, gw) in [
            ("sluice", &mut self.sluice),
            ("sluice (masking)", &mut self.sluice_masked),
            ("sluice (rules)", &mut self.sluice_rules),
        ] {
            if !gw.is_running() {
                bail!(
                    "{name} run died:\n{}",
                    sluice_tests::sluice::tail(&gw.daemon_log(), 40)
                );
            }
        }
        Ok(())
    }

    /// Everything needed to drive the rig by hand (`--hold`), tokens
    /// included (they die with the rig).
    pub fn hold_info(&self) -> serde_json::Value {
        let mut v = self.describe();
        v["dir"] = self.dir.path().display().to_string().into();
        v["sluice_pid"] = self.sluice.pid().into();
        v["sluice_config"] = self.sluice.config_path.display().to_string().into();
        v["agent"] = AGENT.into();
        v["agent_cgroup"] = self.sluice.agent(AGENT).path.display().to_string().into();
        v["plain_listener"] = self.plain_listener.to_string().into();
        v["hosts"] = self.hosts.display().to_string().into();
        v["db_token"] = self.db_token.clone().into();
        v["api_token"] = self.api_token.clone().into();
        v["mysql_token"] = self.mysql_token.clone().into();
        v
    }

    /// A shareable description of the setup for the JSON.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "redis": self.redis.addr().to_string(),
            "postgres": self.pg.addr().to_string(),
            "mariadb": self.mariadb.addr().to_string(),
            "sshd": self.sshd.addr.to_string(),
            "pgbouncer": self.pgbouncer.addr.to_string(),
            "nginx_upstream": self.upstream.addr.to_string(),
            "nginx_proxy": self.proxy.addr.to_string(),
            "sluice_listen": self.sluice.listen.to_string(),
        })
    }
}

/// `pgbench -i -s SCALE` into database `billing` as the superuser over the
/// unix socket, then SELECT on the tables `pgbench -S` reads for `billing`.
fn pgbench_init(pg: &Postgres, scale: u32) -> Result<()> {
    let mut cmd = Command::new("pgbench");
    cmd.args(["-i", "-q", "-s", &scale.to_string(), "-h"])
        .arg(pg.socket_dir())
        .args(["-p", &pg.addr().port().to_string(), "-U", "postgres", ROLE]);
    for var in sluice_tests::postgres::PG_ENV {
        cmd.env_remove(var);
    }
    let out = process::output_with_timeout(&mut cmd, None, Duration::from_secs(300))?;
    if !out.status.success() {
        bail!(
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    pg.superuser_psql(
        ROLE,
        &format!("GRANT SELECT ON pgbench_accounts, pgbench_branches TO {ROLE}"),
    )
    .map(drop)
}
