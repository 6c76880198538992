//! A private PostgreSQL server for one test: `initdb` in a temp dir owned by
//! the `postgres` OS user, `postgres` listening on one `127.0.0.x` address
//! and a unix socket inside that dir, stopped by PID on drop.
//!
//! The server holds database `billing`, owned by role `billing` (whose
//! password is the service's vault secret), with table
//! `customers(id int primary key, name text, ssn text)` and [`CUSTOMERS`].
//! The superuser `postgres` logs in over the unix socket only (`trust`),
//! from the test process, which is outside every agent cgroup.
use std::{
    net::{IpAddr, SocketAddr},
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::{ca::Leaf, poll, process};

/// PostgreSQL's server binaries (initdb, postgres).
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// The role and database Sluice logs in to.
pub const ROLE: &str = "billing";
/// The rows of `customers`: (id, name, ssn); one ssn is NULL.
pub const CUSTOMERS: &[(i32, &str, Option<&str>)] = &[
    (1, "Ada Lovelace", Some("123-45-6789")),
    (2, "Grace Hopper", Some("987-65-4321")),
    (3, "Edsger Dijkstra", None),
];
/// How long the server may take to start or stop.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// What `pg_hba.conf` asks TCP clients for (PostgreSQL docs §21.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HbaMethod {
    ScramSha256,
    Md5,
    /// Cleartext password.
    Password,
}

impl HbaMethod {
    /// The keyword in `pg_hba.conf` and in the server's
    /// `connection authenticated: … method=…` log line.
    pub fn keyword(self) -> &'static str {
        match self {
            HbaMethod::ScramSha256 => "scram-sha-256",
            HbaMethod::Md5 => "md5",
            HbaMethod::Password => "password",
        }
    }
}

/// A running PostgreSQL 15 server.
pub struct Postgres {
    addr: SocketAddr,
    password: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
    tls: bool,
}

impl Postgres {
    /// Runs initdb, starts the server on `ip` (a free port) and creates
    /// role, database and table. `password` becomes role `billing`'s
    /// password, stored as SCRAM; TCP logins use scram-sha-256.
    ///
    /// With `tls` (a certificate and key for the host name agents dial) the
    /// server also accepts TLS (`ssl = on`).
    pub fn start(ip: IpAddr, password: &str, tls: Option<&Leaf>) -> Result<Postgres> {
        let dir = tempfile::Builder::new().prefix("sluice-pg-").tempdir()?;
        chown_postgres(dir.path())?;
        let mut pg = Postgres {
            addr: SocketAddr::new(ip, 0),
            password: password.to_string(),
            dir,
            child: None,
            tls: false,
        };
        pg.initdb()?;
        if let Some(leaf) = tls {
            pg.install_certificate(leaf)?;
        }
        process::on_free_port(ip, |port| {
            pg.addr.set_port(port);
            pg.spawn()
        })?;
        pg.create_billing()?;
        Ok(pg)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The unix socket directory (superuser access from the test).
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// The server log (stdout and stderr of `postgres`).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Where it listens for TCP: `127.0.0.x:<port>`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Role `billing`'s password (the vault secret).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The postmaster's PID, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A command that runs as the `postgres` OS user (initdb and postgres
    /// refuse root), dying with the test thread that started it.
    fn as_postgres(&self, program: &str) -> Command {
        let (uid, gid) = postgres_ids().expect("the postgres OS user exists (cargo xtask setup)");
        let mut cmd = Command::new(Path::new(PG_BIN).join(program));
        cmd.uid(uid)
            .gid(gid)
            .current_dir(self.dir.path())
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        // Set after the uid change (std runs pre_exec closures last), so the
        // parent-death signal survives it.
        process::die_with_parent(&mut cmd);
        cmd
    }

    fn initdb(&self) -> Result<()> {
        let pwfile = self.dir.path().join("superuser.pw");
        std::fs::write(&pwfile, format!("su_{}\n", crate::random_hex(12)))?;
        chown_postgres(&pwfile)?;
        std::fs::create_dir(self.socket_dir())?;
        chown_postgres(&self.socket_dir())?;
        let mut cmd = self.as_postgres("initdb");
        cmd.arg("-D")
            .arg(self.data_dir())
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .args(["--no-sync", "--no-instructions"])
            .arg(format!("--pwfile={}", pwfile.display()));
        let out = process::output_with_timeout(&mut cmd, None, START_TIMEOUT)?;
        std::fs::remove_file(&pwfile).ok();
        if !out.status.success() {
            bail!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.write_hba(HbaMethod::ScramSha256)
    }

    fn install_certificate(&mut self, leaf: &Leaf) -> Result<()> {
        for (name, pem) in [
            ("server.crt", &leaf.cert_pem),
            ("server.key", &leaf.key_pem),
        ] {
            let path = self.data_dir().join(name);
            std::fs::write(&path, pem)?;
            chown_postgres(&path)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        }
        self.tls = true;
        Ok(())
    }

    /// Whether the server accepts TLS.
    pub fn tls(&self) -> bool {
        self.tls
    }

    fn write_hba(&self, method: HbaMethod) -> Result<()> {
        let path = self.data_dir().join("pg_hba.conf");
        let text = format!(
            "# written by the sluice-tests harness\nlocal all postgres trust\nhost all all 127.0.0.0/8 {}\n",
            method.keyword()
        );
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
        chown_postgres(&path)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        chown_postgres(&self.log_path())?;
        let mut cmd = self.as_postgres("postgres");
        cmd.arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.addr.port().to_string()])
            .args(["-c", &format!("listen_addresses={}", self.addr.ip())])
            .args([
                "-c",
                &format!("unix_socket_directories={}", self.socket_dir().display()),
            ])
            .args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ])
            .args([
                "-c",
                "log_connections=on",
                "-c",
                "shared_buffers=16MB",
                "-c",
                "max_connections=30",
            ])
            .args(["-c", if self.tls { "ssl=on" } else { "ssl=off" }])
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut child = cmd
            .spawn()
            .context("cannot start postgres (cargo xtask setup installs it)")?;
        let ready = poll("postgres to accept connections", START_TIMEOUT, || {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(Err(anyhow::anyhow!("postgres exited early with {status}")));
            }
            self.superuser_psql("postgres", "SELECT 1")
                .ok()
                .map(|_| Ok(()))
        });
        match ready.and_then(|r| r) {
            Ok(()) => {
                self.child = Some(child);
                Ok(())
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{e}; postgres.log:\n{}",
                    crate::sluice::tail(&self.log(), 30)
                )
            }
        }
    }

    fn create_billing(&self) -> Result<()> {
        self.superuser_psql(
            "postgres",
            &format!(
                "SET password_encryption = 'scram-sha-256'; CREATE ROLE {ROLE} LOGIN PASSWORD {};",
                sql_literal(&self.password)
            ),
        )?;
        self.superuser_psql("postgres", &format!("CREATE DATABASE {ROLE} OWNER {ROLE}"))?;
        let rows: Vec<String> = CUSTOMERS
            .iter()
            .map(|(id, name, ssn)| {
                format!(
                    "({id}, {}, {})",
                    sql_literal(name),
                    ssn.map(sql_literal).unwrap_or_else(|| "NULL".into())
                )
            })
            .collect();
        // Created as the role itself: without Sluice's guardrails, billing
        // could drop it.
        self.superuser_psql(
            ROLE,
            &format!(
                "SET ROLE {ROLE}; CREATE TABLE customers (id int PRIMARY KEY, name text, ssn text); \
                 INSERT INTO customers VALUES {};",
                rows.join(", ")
            ),
        )?;
        Ok(())
    }

    /// Runs `sql` as the superuser over the unix socket (`psql -X -At`,
    /// stopping at the first error) in `database`; returns stdout.
    pub fn superuser_psql(&self, database: &str, sql: &str) -> Result<String> {
        let mut cmd = Command::new("psql");
        cmd.args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.socket_dir())
            .args([
                "-p",
                &self.addr.port().to_string(),
                "-U",
                "postgres",
                "-d",
                database,
                "-c",
                sql,
            ]);
        for var in PG_ENV {
            cmd.env_remove(var);
        }
        let out = process::output_with_timeout(&mut cmd, None, START_TIMEOUT)?;
        if !out.status.success() {
            bail!(
                "superuser psql {sql:?} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Whether table `customers` exists, and its row count.
    pub fn customers_count(&self) -> Result<Option<u64>> {
        let exists =
            self.superuser_psql(ROLE, "SELECT to_regclass('public.customers') IS NOT NULL")?;
        if exists.trim() != "t" {
            return Ok(None);
        }
        let n = self.superuser_psql(ROLE, "SELECT count(*) FROM customers")?;
        Ok(Some(n.trim().parse().context("count(*)")?))
    }

    /// How many `connection authenticated: … method=<method>` lines the
    /// server has logged (one per successful TCP login by password).
    pub fn logins_by(&self, method: HbaMethod) -> usize {
        let needle = format!("method={} ", method.keyword());
        self.log()
            .lines()
            .filter(|l| l.contains("connection authenticated:") && l.contains(&needle))
            .count()
    }

    /// Rewrites `pg_hba.conf` to ask TCP clients for `method`, stores the
    /// role's password the way that method needs (md5 needs an md5 hash;
    /// scram-sha-256 and password work with a SCRAM verifier), reloads, and
    /// waits until a direct login (from the test process) is authenticated
    /// by `method`.
    pub fn set_auth(&self, method: HbaMethod) -> Result<()> {
        let encryption = if method == HbaMethod::Md5 {
            "md5"
        } else {
            "scram-sha-256"
        };
        self.superuser_psql(
            "postgres",
            &format!(
                "SET password_encryption = '{encryption}'; ALTER ROLE {ROLE} PASSWORD {};",
                sql_literal(&self.password)
            ),
        )?;
        self.write_hba(method)?;
        self.superuser_psql("postgres", "SELECT pg_reload_conf()")?;
        // The reload is asynchronous: log in until the server uses `method`.
        poll(
            &format!("postgres to authenticate by {}", method.keyword()),
            START_TIMEOUT,
            || {
                let before = self.logins_by(method);
                self.direct_login().ok()?;
                // The log line is written before the login completes.
                (self.logins_by(method) > before).then_some(())
            },
        )
    }

    /// `pgbench -i -s 1` into database `billing` (as the superuser, over the
    /// unix socket), with SELECT on `pgbench_accounts` and `pgbench_branches` granted to
    /// `billing` (what `pgbench -S` reads).
    pub fn pgbench_init(&self) -> Result<()> {
        let mut cmd = Command::new("pgbench");
        cmd.args(["-i", "-q", "-s", "1", "-h"])
            .arg(self.socket_dir())
            .args(["-p", &self.addr.port().to_string(), "-U", "postgres", ROLE]);
        for var in PG_ENV {
            cmd.env_remove(var);
        }
        let out = process::output_with_timeout(&mut cmd, None, START_TIMEOUT)?;
        if !out.status.success() {
            bail!(
                "pgbench -i failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        self.superuser_psql(
            ROLE,
            &format!("GRANT SELECT ON pgbench_accounts, pgbench_branches TO {ROLE}"),
        )
        .map(drop)
    }

    /// Runs `pgbench ARGS… CONNINFO` as `billing` with the real password,
    /// from the test process (not intercepted); stdout.
    pub fn pgbench_direct(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new("pgbench");
        cmd.args(args)
            .arg(format!(
                "host={} port={} user={ROLE} dbname={ROLE} sslmode=disable",
                self.addr.ip(),
                self.addr.port()
            ))
            .env("PGPASSWORD", &self.password);
        for var in PG_ENV.iter().filter(|v| **v != "PGPASSWORD") {
            cmd.env_remove(var);
        }
        let out = process::output_with_timeout(&mut cmd, None, Duration::from_secs(120))?;
        if !out.status.success() {
            bail!(
                "direct pgbench failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Logs in as `billing` with the real password over TCP, from the test
    /// process (not intercepted), and runs `SELECT 1`.
    pub fn direct_login(&self) -> Result<()> {
        let mut cmd = Command::new("psql");
        cmd.args(["-X", "-At", "-c", "SELECT 1"])
            .arg(format!(
                "host={} port={} user={ROLE} dbname={ROLE} sslmode=disable",
                self.addr.ip(),
                self.addr.port()
            ))
            .env("PGPASSWORD", &self.password);
        for var in PG_ENV.iter().filter(|v| **v != "PGPASSWORD") {
            cmd.env_remove(var);
        }
        let out = process::output_with_timeout(&mut cmd, None, START_TIMEOUT)?;
        if !out.status.success() {
            bail!(
                "direct login failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Stops the server (fast shutdown: SIGINT to the postmaster, by PID;
    /// SIGKILL after the timeout) and waits until it has exited.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::signal(child.id(), libc::SIGINT);
            if !matches!(
                process::wait_timeout(&mut child, START_TIMEOUT),
                Ok(Some(_))
            ) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Starts it again on the same address, with the same data.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- postgres.log ({}) ---\n{}",
                self.addr,
                crate::sluice::tail(&self.log(), 40)
            );
        }
        self.stop();
    }
}

/// libpq environment variables that would change where a client connects
/// or how it authenticates.
pub const PG_ENV: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGDATABASE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGSSLMODE",
    "PGSSLROOTCERT",
    "PGOPTIONS",
    "PSQLRC",
];

/// `s` as a SQL string literal.
pub fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `s` as a libpq connection-string value (always quoted).
pub fn conninfo_value(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn postgres_ids() -> Result<(u32, u32)> {
    process::os_user_ids("postgres")
}

fn chown_postgres(path: &Path) -> Result<()> {
    process::chown_private(path, "postgres")
}

/// How long an agent's psql may run unless told otherwise.
pub const PSQL_TIMEOUT: Duration = Duration::from_secs(30);

/// What an agent's psql printed.
#[derive(Debug, Clone)]
pub struct PsqlResult {
    pub exit: i32,
    pub stdout: String,
    pub stderr: String,
}

impl PsqlResult {
    /// Asserts exit 0, showing stderr if not.
    #[track_caller]
    pub fn assert_ok(&self) -> &PsqlResult {
        assert_eq!(
            self.exit,
            0,
            "psql failed; stderr: {}\nstdout: {}",
            self.stderr.trim(),
            self.stdout
        );
        self
    }

    /// stdout split into lines.
    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }
}

impl crate::Stack {
    /// A libpq connection string for PostgreSQL service `service` as an
    /// agent writes it: `host` names the service (for TLS verification),
    /// `hostaddr` dials its loopback address (so no DNS is involved), the
    /// token is the password, any user name; `params` adds e.g.
    /// `sslmode=disable`.
    pub fn pg_conninfo(&self, service: &str, token: &str, params: &str) -> String {
        let pg = self.postgres(service);
        let host = &self
            .services
            .iter()
            .find(|s| s.spec.name == service)
            .expect("service")
            .spec
            .host;
        format!(
            "host={host} hostaddr={} port={} user=agent-{} dbname={ROLE} password={} connect_timeout=20 {params}",
            pg.addr().ip(),
            pg.addr().port(),
            self.agent(),
            conninfo_value(token),
        )
    }

    /// Runs `psql -X -w -d CONNINFO ARGS…` as the agent (`sluice exec`).
    pub fn psql(&self, conninfo: &str, args: &[&str]) -> Result<PsqlResult> {
        self.psql_with_timeout(conninfo, args, PSQL_TIMEOUT)
    }

    /// [`Stack::psql`] with a longer timeout.
    pub fn psql_with_timeout(
        &self,
        conninfo: &str,
        args: &[&str],
        timeout: Duration,
    ) -> Result<PsqlResult> {
        let mut argv = vec!["psql", "-X", "-w", "-d", conninfo];
        argv.extend_from_slice(args);
        let out = self
            .sluice
            .exec_with_timeout(self.agent(), &argv, timeout)?;
        Ok(PsqlResult {
            exit: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}
