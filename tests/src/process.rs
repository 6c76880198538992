//! Child processes: started with a parent-death signal, waited for with a
//! deadline, and killed by PID only.
use std::{
    io::Read,
    os::unix::process::CommandExt,
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

/// Environment variables that would send agent traffic to a proxy instead
/// of the address it dials.
pub const PROXY_VARS: &[&str] = &[
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
];

/// Makes `cmd`'s child receive SIGKILL when the thread that spawned it
/// exits, so a test binary that dies mid-test leaves no daemon behind.
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// Sends `signal` to the process `pid` (one PID, never a group or a name).
pub fn signal(pid: u32, signal: i32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    if pid > 1 {
        // SAFETY: plain syscall on a positive PID.
        unsafe { libc::kill(pid, signal) };
    }
}

/// Waits for `child` until `timeout`; `None` if it is still running.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Stops `child`: SIGTERM, up to `grace` to exit, then SIGKILL; reaps it.
pub fn stop(child: &mut Child, grace: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    signal(child.id(), libc::SIGTERM);
    if !matches!(wait_timeout(child, grace), Ok(Some(_))) {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Runs `cmd` to completion with `stdin` as its input, killing it (by PID)
/// when it outlives `timeout`.
pub fn output_with_timeout(
    cmd: &mut Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let shown = format!("{:?}", cmd);
    let mut child = die_with_parent(cmd)
        .spawn()
        .with_context(|| format!("cannot start {shown}"))?;
    if let Some(input) = stdin {
        use std::io::Write;
        let mut pipe = child.stdin.take().expect("piped");
        pipe.write_all(input).context("writing stdin")?;
    }
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let status = match wait_timeout(&mut child, timeout)? {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("{shown} did not finish within {timeout:?}; killed it");
        }
    };
    Ok(Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    })
}

/// Whether something accepts TCP connections at `addr` (from this process,
/// which is outside every agent cgroup).
pub fn tcp_accepts(addr: std::net::SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// The uid and gid of the OS user `name` (a server's own user, such as
/// `postgres` or `mysql`, created by its Debian package).
pub fn os_user_ids(name: &str) -> Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").context("read /etc/passwd")?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[0] == name)
        .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
        .with_context(|| {
            format!("no {name} user in /etc/passwd; cargo xtask setup installs its server")
        })
}

/// Gives `path` to the OS user `user`; a directory becomes private to it
/// (mode 0700).
pub fn chown_private(path: &std::path::Path, user: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let (uid, gid) = os_user_ids(user)?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .with_context(|| format!("chown {user} {}", path.display()))?;
    if path.is_dir() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// A loopback port that was free a moment ago.
pub fn free_port(ip: std::net::IpAddr) -> Result<u16> {
    let l = std::net::TcpListener::bind((ip, 0)).context("bind a free port")?;
    Ok(l.local_addr()?.port())
}

/// Runs `start` with a free port of `ip`, up to three times: the port may
/// be taken between probing and binding.
pub fn on_free_port<T>(ip: std::net::IpAddr, mut start: impl FnMut(u16) -> Result<T>) -> Result<T> {
    let mut last = None;
    for _ in 0..3 {
        match start(free_port(ip)?) {
            Ok(v) => return Ok(v),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("three tries"))
}

/// A `kB` field of `/proc/<pid>/status` (`"VmRSS:"`, `"VmSize:"`), in KiB.
///
/// # Panics
/// When the process or the field does not exist.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"))
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}
