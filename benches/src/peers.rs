//! The systems Sluice is compared with, each its own process with a
//! temporary config on `127.0.0.x`, stopped by PID on drop:
//!
//! - nginx as the fast HTTPS upstream (a static JSON answer, HTTP/1.1 and
//!   HTTP/2, checking the real key);
//! - nginx as the peer: a TLS-terminating reverse proxy that sets the
//!   `Authorization` header and keeps upstream connections alive;
//! - pgbouncer in session pooling mode.
use std::{
    net::SocketAddr,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use sluice_tests::{ca::Leaf, poll, process};

/// The JSON the upstream answers with; Sluice masks `card.number`.
pub const UPSTREAM_BODY: &str = r#"{"id":"ch_1","object":"charge","amount":4200,"currency":"eur","status":"succeeded","card":{"brand":"visa","last4":"4242","number":"4242424242424242","exp":"12/30"}}"#;

/// How long a peer may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running nginx (master and workers; `daemon off`, so the master is our
/// child).
pub struct Nginx {
    /// The HTTP/1.1-only listener (ALPN offers `http/1.1` alone).
    pub addr: SocketAddr,
    /// The listener that also speaks HTTP/2, if any.
    pub h2_addr: Option<SocketAddr>,
    pub dir: PathBuf,
    child: Option<Child>,
}

/// What one nginx serves.
pub enum NginxRole<'a> {
    /// Answers every request with [`UPSTREAM_BODY`] if it carries
    /// `Authorization: Bearer <key>`, else 401.
    Upstream { key: &'a str },
    /// Proxies to `upstream` (TLS, verified for `upstream_host` against
    /// `upstream_ca`), setting `Authorization: Bearer <key>`.
    Proxy {
        upstream: SocketAddr,
        upstream_host: &'a str,
        upstream_ca: &'a Path,
        key: &'a str,
    },
}

impl Nginx {
    /// Writes the config into `dir` and starts nginx on `addr` (HTTP/1.1)
    /// and `h2_addr` (HTTP/2 and HTTP/1.1) with a certificate for `host`.
    pub fn start(
        dir: &Path,
        addr: SocketAddr,
        h2_addr: Option<SocketAddr>,
        host: &str,
        leaf: &Leaf,
        role: NginxRole<'_>,
    ) -> Result<Nginx> {
        assert!(
            addr.ip().is_loopback() && h2_addr.is_none_or(|a| a.ip().is_loopback()),
            "peers listen on loopback only"
        );
        std::fs::create_dir_all(dir.join("tmp"))?;
        let mut listen = format!("listen {addr} ssl;");
        if let Some(h2) = h2_addr {
            listen.push_str(&format!("\n        listen {h2} ssl http2;"));
        }
        // As many files as this process may open (raising the hard limit
        // needs CAP_SYS_RESOURCE, which containers often lack).
        let nofile = nofile_limit();
        let connections = nofile.saturating_sub(64).clamp(1024, 30_000);
        std::fs::write(dir.join("cert.pem"), &leaf.cert_pem)?;
        std::fs::write(dir.join("key.pem"), &leaf.key_pem)?;
        let d = dir.display();
        let (access_log, location) = match role {
            NginxRole::Upstream { key } => (
                "access_log off;".to_string(),
                format!(
                    "if ($http_authorization != \"Bearer {key}\") {{ return 401 '{{\"error\":\"unauthorized\"}}'; }}\n            return 200 '{UPSTREAM_BODY}';"
                ),
            ),
            NginxRole::Proxy { upstream, upstream_host, upstream_ca, key } => (
                // What a production proxy does: log every request, buffered.
                format!("access_log {d}/access.log combined buffer=64k flush=1s;\n    upstream api {{ server {upstream}; keepalive 128; keepalive_requests 1000000; keepalive_timeout 300s; }}"),
                format!(
                    "proxy_pass https://api;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host {upstream_host};
            proxy_set_header Authorization \"Bearer {key}\";
            proxy_ssl_server_name on;
            proxy_ssl_name {upstream_host};
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {};
            proxy_ssl_session_reuse on;",
                    upstream_ca.display()
                ),
            ),
        };
        let conf = format!(
            "# written by sluice-bench
daemon off;
master_process on;
worker_processes 2;
worker_rlimit_nofile {nofile};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections {connections}; }}
http {{
    {access_log}
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    default_type application/json;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    server {{
        {listen}
        server_name {host};
        ssl_certificate {d}/cert.pem;
        ssl_certificate_key {d}/key.pem;
        location / {{
            {location}
        }}
    }}
}}
"
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let log = std::fs::File::create(dir.join("stderr.log"))?;
        let mut cmd = Command::new("nginx");
        cmd.arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = process::die_with_parent(&mut cmd)
            .spawn()
            .context("cannot start nginx (cargo xtask bench installs it)")?;
        let mut nginx = Nginx {
            addr,
            h2_addr,
            dir: dir.to_path_buf(),
            child: Some(child),
        };
        nginx.wait_listening()?;
        Ok(nginx)
    }

    fn wait_listening(&mut self) -> Result<()> {
        let addr = self.addr;
        let child = self.child.as_mut().expect("just started");
        let dir = self.dir.clone();
        let ready = poll("nginx to listen", START_TIMEOUT, || {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(Err(anyhow::anyhow!(
                    "nginx exited with {status}: {}{}",
                    std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default(),
                    std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
                )));
            }
            process::tcp_accepts(addr).then_some(Ok(()))
        });
        ready.and_then(|r| r)
    }

    /// The master's PID.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The master and its workers.
    pub fn pids(&self) -> Vec<u32> {
        let Some(master) = self.pid() else {
            return Vec::new();
        };
        let mut pids = vec![master];
        pids.extend(children(master));
        pids
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM to the master (by PID): it stops its workers and exits.
            process::stop(&mut child, Duration::from_secs(5));
        }
    }
}

/// The soft open-files limit of this process.
pub fn nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the local struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    lim.rlim_cur
}

/// The PIDs of `pid`'s child processes.
pub fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// pgbouncer in session pooling mode in front of one database, as the
/// `postgres` OS user (it refuses root).
pub struct PgBouncer {
    pub addr: SocketAddr,
    child: Option<Child>,
}

impl PgBouncer {
    /// Pools `db` (role `user`, password `password`) at `server`; clients
    /// log in with the same user and password by SCRAM-SHA-256.
    pub fn start(
        dir: &Path,
        addr: SocketAddr,
        server: SocketAddr,
        db: &str,
        user: &str,
        password: &str,
    ) -> Result<PgBouncer> {
        assert!(addr.ip().is_loopback(), "peers listen on loopback only");
        let (uid, gid) = postgres_ids()?;
        std::fs::create_dir_all(dir)?;
        let d = dir.display();
        std::fs::write(
            dir.join("userlist.txt"),
            format!("\"{user}\" \"{password}\"\n"),
        )?;
        let conf = format!(
            "; written by sluice-bench
[databases]
{db} = host={} port={} dbname={db}

[pgbouncer]
listen_addr = {}
listen_port = {}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {d}/userlist.txt
pool_mode = session
max_client_conn = 200
default_pool_size = 20
server_tls_sslmode = disable
logfile = {d}/pgbouncer.log
pidfile = {d}/pgbouncer.pid
",
            server.ip(),
            server.port(),
            addr.ip(),
            addr.port()
        );
        std::fs::write(dir.join("pgbouncer.ini"), conf)?;
        for entry in [
            dir.to_path_buf(),
            dir.join("userlist.txt"),
            dir.join("pgbouncer.ini"),
        ] {
            std::os::unix::fs::chown(&entry, Some(uid), Some(gid))?;
        }
        let log = std::fs::File::create(dir.join("stderr.log"))?;
        let mut cmd = Command::new("pgbouncer");
        cmd.arg(dir.join("pgbouncer.ini"))
            .uid(uid)
            .gid(gid)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut child = process::die_with_parent(&mut cmd)
            .spawn()
            .context("cannot start pgbouncer (cargo xtask bench installs it)")?;
        let ready = poll("pgbouncer to listen", START_TIMEOUT, || {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(Err(anyhow::anyhow!(
                    "pgbouncer exited with {status}: {}",
                    std::fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_default()
                )));
            }
            process::tcp_accepts(addr).then_some(Ok(()))
        });
        if let Err(e) = ready.and_then(|r| r) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        Ok(PgBouncer {
            addr,
            child: Some(child),
        })
    }
}

impl PgBouncer {
    /// Its PID, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::stop(&mut child, Duration::from_secs(5));
        }
    }
}

/// uid and gid of the `postgres` OS user.
pub fn postgres_ids() -> Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").context("read /etc/passwd")?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[0] == "postgres")
        .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
        .context("no postgres user in /etc/passwd; cargo xtask setup installs postgresql")
}

/// A free port on `ip` for a peer that needs its port up front.
pub fn free_addr(ip: std::net::IpAddr) -> Result<SocketAddr> {
    Ok(SocketAddr::new(ip, process::free_port(ip)?))
}

/// Fails unless `program` is on `PATH`.
pub fn require(programs: &[&str]) -> Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<&str> = programs
        .iter()
        .copied()
        .filter(|p| !std::env::split_paths(&path).any(|d| d.join(p).is_file()))
        .collect();
    if !missing.is_empty() {
        bail!("missing {}; `cargo xtask bench` installs them (apt: pgbouncer nginx wrk nghttp2-client sysbench)", missing.join(", "));
    }
    Ok(())
}
