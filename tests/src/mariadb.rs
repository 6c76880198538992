//! A private MariaDB server for one test: `mariadb-install-db` into a temp
//! dir owned by the `mysql` OS user, `mariadbd` on one `127.0.0.x` address
//! and a unix socket inside that dir, stopped by PID on drop.
//!
//! The server holds database `billing` with table
//! `customers(id int primary key, name text, ssn text)` and
//! [`crate::postgres::CUSTOMERS`], and two users that may use it, both
//! with the service's vault secret as password: [`NATIVE_USER`]
//! (`mysql_native_password`) and [`ED25519_USER`] (MariaDB `ed25519`).
//! `root` logs in over the unix socket only (`unix_socket`), from the test
//! process, which is outside every agent cgroup.
use std::{
    net::{IpAddr, SocketAddr},
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::{ca::Leaf, poll, postgres::CUSTOMERS, process};

/// The database the users may use.
pub const DATABASE: &str = "billing";
/// A user that logs in by `mysql_native_password`.
pub const NATIVE_USER: &str = "billing_native";
/// A user that logs in by MariaDB's `ed25519` (`client_ed25519`).
pub const ED25519_USER: &str = "billing_ed";
/// How long the server may take to initialise, start or stop.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running MariaDB server.
pub struct MariaDb {
    addr: SocketAddr,
    password: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
    tls: bool,
}

impl MariaDb {
    /// Initialises a data dir, starts `mariadbd` on `ip` (a free port) and
    /// creates database, table and users, whose password is `password`.
    /// With `tls` (certificate and key for the name Sluice dials) the
    /// server also accepts TLS.
    pub fn start(ip: IpAddr, password: &str, tls: Option<&Leaf>) -> Result<MariaDb> {
        let dir = tempfile::Builder::new()
            .prefix("sluice-mariadb-")
            .tempdir()?;
        process::chown_private(dir.path(), "mysql")?;
        let mut db = MariaDb {
            addr: SocketAddr::new(ip, 0),
            password: password.to_string(),
            dir,
            child: None,
            tls: false,
        };
        db.install_db()?;
        if let Some(leaf) = tls {
            db.install_certificate(leaf)?;
        }
        process::on_free_port(ip, |port| {
            db.addr.set_port(port);
            db.spawn()
        })?;
        db.create_billing()?;
        Ok(db)
    }

    /// Where it listens for TCP: `127.0.0.x:<port>`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The users' password (the vault secret).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// Whether the server accepts TLS.
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// The server's PID, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's error log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("error.log")).unwrap_or_default()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn socket(&self) -> PathBuf {
        self.path("mysqld.sock")
    }

    /// A command that runs as the `mysql` OS user, dying with the test
    /// thread that started it.
    fn as_mysql(&self, program: &str) -> Result<Command> {
        let (uid, gid) = process::os_user_ids("mysql")?;
        let mut cmd = Command::new(program);
        cmd.uid(uid)
            .gid(gid)
            .current_dir(self.dir.path())
            .env("LC_ALL", "C")
            .env("TMPDIR", self.path("tmp"))
            .stdin(Stdio::null());
        // Set after the uid change (std runs pre_exec closures last), so
        // the parent-death signal survives it.
        process::die_with_parent(&mut cmd);
        Ok(cmd)
    }

    fn install_db(&self) -> Result<()> {
        std::fs::create_dir(self.path("tmp"))?;
        process::chown_private(&self.path("tmp"), "mysql")?;
        let mut cmd = self.as_mysql("mariadb-install-db")?;
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", self.path("data").display()))
            .arg(format!("--tmpdir={}", self.path("tmp").display()))
            .args([
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
                "--skip-name-resolve",
            ]);
        let out = process::output_with_timeout(&mut cmd, None, START_TIMEOUT)?;
        if !out.status.success() {
            bail!(
                "mariadb-install-db failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn install_certificate(&mut self, leaf: &Leaf) -> Result<()> {
        for (name, pem) in [
            ("server.crt", &leaf.cert_pem),
            ("server.key", &leaf.key_pem),
        ] {
            let path = self.path(name);
            std::fs::write(&path, pem)?;
            process::chown_private(&path, "mysql")?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        }
        self.tls = true;
        Ok(())
    }

    fn spawn(&mut self) -> Result<()> {
        let mut cmd = self.as_mysql("/usr/sbin/mariadbd")?;
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", self.path("data").display()))
            .arg(format!("--tmpdir={}", self.path("tmp").display()))
            .arg(format!("--socket={}", self.socket().display()))
            .arg(format!("--pid-file={}", self.path("mysqld.pid").display()))
            .arg(format!("--log-error={}", self.path("error.log").display()))
            .arg(format!("--bind-address={}", self.addr.ip()))
            .arg(format!("--port={}", self.addr.port()))
            .args([
                "--skip-name-resolve",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=16M",
                "--innodb-flush-log-at-trx-commit=0",
                "--max-connections=30",
                "--plugin-load-add=auth_ed25519",
            ]);
        if self.tls {
            cmd.arg(format!("--ssl-cert={}", self.path("server.crt").display()))
                .arg(format!("--ssl-key={}", self.path("server.key").display()));
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let mut child = cmd
            .spawn()
            .context("cannot start mariadbd (cargo xtask setup installs mariadb-server)")?;
        let ready = poll("mariadbd to accept connections", START_TIMEOUT, || {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(Err(anyhow::anyhow!("mariadbd exited early with {status}")));
            }
            self.root_sql("SELECT 1").ok().map(|_| Ok(()))
        });
        match ready.and_then(|r| r) {
            Ok(()) => {
                self.child = Some(child);
                Ok(())
            }
            Err(e) => {
                process::stop(&mut child, Duration::from_secs(5));
                bail!("{e}; error.log:\n{}", crate::sluice::tail(&self.log(), 30))
            }
        }
    }

    fn create_billing(&self) -> Result<()> {
        let pw = sql_string(&self.password);
        let rows: Vec<String> = CUSTOMERS
            .iter()
            .map(|(id, name, ssn)| {
                let ssn = ssn.map(sql_string).unwrap_or_else(|| "NULL".into());
                format!("({id}, {}, {ssn})", sql_string(name))
            })
            .collect();
        self.root_sql(&format!(
            "CREATE DATABASE {DATABASE};
             CREATE TABLE {DATABASE}.customers (id int PRIMARY KEY, name text, ssn text);
             INSERT INTO {DATABASE}.customers VALUES {rows};
             CREATE USER {NATIVE_USER}@'%' IDENTIFIED VIA mysql_native_password USING PASSWORD({pw});
             CREATE USER {ED25519_USER}@'%' IDENTIFIED VIA ed25519 USING PASSWORD({pw});
             GRANT ALL ON {DATABASE}.* TO {NATIVE_USER}@'%';
             GRANT ALL ON {DATABASE}.* TO {ED25519_USER}@'%';",
            rows = rows.join(", ")
        ))?;
        Ok(())
    }

    /// Runs `sql` as `root` over the unix socket (`mariadb --batch`,
    /// stopping at the first error); returns stdout.
    pub fn root_sql(&self, sql: &str) -> Result<String> {
        let mut cmd = Command::new("mariadb");
        cmd.arg("--no-defaults")
            .arg(format!("--socket={}", self.socket().display()))
            .args(["--user=root", "--batch", "--skip-column-names", "-e", sql]);
        let out = process::output_with_timeout(&mut cmd, None, START_TIMEOUT)?;
        if !out.status.success() {
            bail!("mariadb: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stops the server (SIGTERM, then SIGKILL), by PID.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::stop(&mut child, START_TIMEOUT);
        }
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `s` as a MariaDB string literal (quotes doubled, backslashes escaped).
pub fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}
