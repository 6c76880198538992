//! A private redis-server on a free loopback port, killed by PID on drop.
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
}

impl Redis {
    /// Starts redis-server on a free port of 127.0.0.1 with persistence off,
    /// working in `dir`, and waits until it answers PING.
    pub fn start(dir: &Path) -> Result<Redis> {
        std::fs::create_dir_all(dir)?;
        let mut last = None;
        // The free port may be taken between probing and binding: retry.
        for _ in 0..3 {
            let port = process::free_port(Ipv4Addr::LOCALHOST.into())?;
            let mut redis = Redis { port, dir: dir.to_path_buf(), child: None };
            match redis.spawn() {
                Ok(()) => return Ok(redis),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("tried"))
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("redis.log"))?;
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut child = process::die_with_parent(&mut cmd).spawn().context("cannot start redis-server (cargo xtask setup installs it)")?;
        let addr = self.addr();
        let ready = poll("redis-server to answer PING", Duration::from_secs(10), || {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(Err(anyhow::anyhow!("redis-server exited early with {status}")));
            }
            ping(addr).then_some(Ok(()))
        });
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
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}
