//! A private redis-server on a free loopback port, killed by PID on drop;
//! optionally with `requirepass` (set in a 0600 config file, never on the
//! command line).
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::{poll, process};

/// A redis-server started for one test.
pub struct Redis {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// `requirepass`, if any.
    password: Option<String>,
}

impl Redis {
    /// Starts redis-server on a free port of 127.0.0.1 with persistence off,
    /// working in `dir`, and waits until it answers PING.
    pub fn start(dir: &Path) -> Result<Redis> {
        Self::start_inner(dir, None)
    }

    /// Like [`Redis::start`], with `requirepass password` in
    /// `<dir>/redis.conf` (mode 0600).
    pub fn start_with_password(dir: &Path, password: &str) -> Result<Redis> {
        Self::start_inner(dir, Some(password))
    }

    fn start_inner(dir: &Path, password: Option<&str>) -> Result<Redis> {
        std::fs::create_dir_all(dir)?;
        if let Some(pw) = password {
            use std::os::unix::fs::OpenOptionsExt;
            let mut conf = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(dir.join("redis.conf"))?;
            conf.write_all(format!("requirepass \"{pw}\"\n").as_bytes())?;
        }
        let mut last = None;
        // The free port may be taken between probing and binding: retry.
        for _ in 0..3 {
            let port = process::free_port(Ipv4Addr::LOCALHOST.into())?;
            let mut redis = Redis {
                port,
                dir: dir.to_path_buf(),
                child: None,
                password: password.map(str::to_string),
            };
            match redis.spawn() {
                Ok(()) => return Ok(redis),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("tried"))
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("redis.log"))?;
        let mut cmd = Command::new("redis-server");
        if self.password.is_some() {
            cmd.arg(self.dir.join("redis.conf"));
        }
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(&self.dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
        let mut child = process::die_with_parent(&mut cmd)
            .spawn()
            .context("cannot start redis-server (cargo xtask setup installs it)")?;
        let addr = self.addr();
        let password = self.password.clone();
        let ready = poll(
            "redis-server to answer PING",
            Duration::from_secs(10),
            || {
                if let Ok(Some(status)) = child.try_wait() {
                    return Some(Err(anyhow::anyhow!(
                        "redis-server exited early with {status}"
                    )));
                }
                ping_auth(addr, password.as_deref()).then_some(Ok(()))
            },
        );
        match ready.and_then(|r| r) {
            Ok(()) => {
                self.child = Some(child);
                Ok(())
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
                bail!("{e}; redis.log:\n{log}")
            }
        }
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, self.port).into()
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The `requirepass` password, if set.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The redis-server PID, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills redis-server (SIGKILL, by PID) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (its data is gone: persistence is off).
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether a Redis server at `addr` answers `PING` with `+PONG`.
pub fn ping(addr: SocketAddr) -> bool {
    ping_auth(addr, None)
}

/// [`ping`], after `AUTH password` when a password is given.
pub fn ping_auth(addr: SocketAddr, password: Option<&str>) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if let Some(pw) = password {
        let auth = format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{pw}\r\n", pw.len());
        let mut ok = [0u8; 5];
        if s.write_all(auth.as_bytes()).is_err()
            || s.read_exact(&mut ok).is_err()
            || &ok != b"+OK\r\n"
        {
            return false;
        }
    }
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}
