//! Readiness as systemd sees it (`Type=notify`): `sluice run` sends
//! `READY=1` to `$NOTIFY_SOCKET` (sd_notify(3): one datagram on a Unix
//! socket) only once the agent's programs are attached and pinned and the
//! listener accepts, and never when start-up fails.
//!
//! The test plays systemd's part: it binds the datagram socket, starts the
//! daemon with `NOTIFY_SOCKET` pointing at it, and freezes the daemon
//! (SIGSTOP) the moment the datagram arrives, so what it then finds is what
//! existed when readiness was claimed.
use std::{
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::Duration,
};

use sluice_tests::{cgroup, process, sluice::READY_TIMEOUT, ServiceSpec, Stack};

use crate::{assert_status, bearer, WAIT};

const SERVICE: &str = "payments-api";

/// The socket systemd would create for the unit.
struct NotifySocket {
    path: PathBuf,
    sock: UnixDatagram,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        NotifySocket { path, sock }
    }

    /// The next datagram, or `None` after `timeout`.
    fn recv(&self, timeout: Duration) -> Option<String> {
        self.sock.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = [0u8; 4096];
        let n = self.sock.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

/// `sluice run` started by the test itself (not by the harness, which does
/// not pass `NOTIFY_SOCKET`); stopped by PID on drop, before the stack's
/// teardown runs `sluice uninstall`.
struct Daemon {
    child: Child,
    stderr: PathBuf,
}

impl Daemon {
    fn spawn(stack: &Stack, notify: &Path) -> Daemon {
        let stderr = stack.dir().join("daemon-notify.stderr.log");
        let mut cmd = stack.sluice.command(&["run"]);
        cmd.env("NOTIFY_SOCKET", notify)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap());
        let child = process::die_with_parent(&mut cmd)
            .spawn()
            .expect("start sluice run");
        Daemon { child, stderr }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        process::signal(self.child.id(), libc::SIGCONT);
        process::stop(&mut self.child, Duration::from_secs(5));
    }
}

/// The names of the pins in `<bpf_dir>/links/<agent>/`.
fn link_pins(stack: &Stack) -> Vec<String> {
    let dir = stack.sluice.bpf_dir.join("links").join(stack.agent());
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn ready_1_arrives_only_after_the_agent_is_attached_and_the_listener_accepts() {
    let stack = Stack::builder("notify")
        .service(ServiceSpec::https(SERVICE, "api.payments.test"))
        .prepare()
        .unwrap();
    stack
        .sluice
        .secret_put(&format!("{SERVICE}-key"), stack.secret(SERVICE))
        .unwrap();
    let notify = NotifySocket::bind(&stack.dir());
    let mut daemon = Daemon::spawn(&stack, &notify.path);

    let message = notify
        .recv(READY_TIMEOUT)
        .unwrap_or_else(|| panic!("no READY=1 within {READY_TIMEOUT:?}:\n{}", daemon.log()));
    process::signal(daemon.child.id(), libc::SIGSTOP);
    assert!(
        message.lines().any(|l| l == "READY=1"),
        "notify message {message:?}"
    );

    // Frozen at the moment of READY=1: the links are pinned, the kernel
    // reports the programs on the agent's cgroup, and the listener accepts.
    let pins = link_pins(&stack);
    assert!(
        pins.iter().any(|p| p.ends_with("connect4")),
        "no connect4 link pinned at READY=1: {pins:?}"
    );
    assert!(
        pins.iter().any(|p| p.ends_with("connect6")),
        "no connect6 link pinned at READY=1: {pins:?}"
    );
    let agent_cgroup = &stack.sluice.agent(stack.agent()).path;
    let attached = cgroup::attached_programs(agent_cgroup).unwrap();
    assert!(
        attached.contains("connect4"),
        "bpftool cgroup show at READY=1:\n{attached}"
    );
    assert!(
        process::tcp_accepts(stack.sluice.listen),
        "listener {} not accepting at READY=1",
        stack.sluice.listen
    );
    assert_eq!(daemon.child.try_wait().unwrap(), None);
    process::signal(daemon.child.id(), libc::SIGCONT);

    // Ready means serving: an agent request goes through.
    let token = stack.token(SERVICE).unwrap();
    assert_status(
        &stack
            .curl(&["-H", &bearer(&token), &stack.url(SERVICE, "/v1/charges")])
            .unwrap(),
        200,
    );
    let reqs = stack.upstream(SERVICE).wait_for(1, WAIT).unwrap();
    assert_eq!(
        reqs[0].header("authorization"),
        Some(format!("Bearer {}", stack.secret(SERVICE)).as_str())
    );
    assert_eq!(
        notify.recv(Duration::from_millis(100)),
        None,
        "READY=1 is sent once"
    );
    drop(daemon);
}

#[test]
fn a_daemon_that_cannot_pin_its_programs_exits_without_signalling_ready() {
    let stack = Stack::builder("notify-fail")
        .service(ServiceSpec::https(SERVICE, "api.payments.test"))
        .prepare()
        .unwrap();
    // bpf_dir on a plain directory instead of bpffs: loading works, pinning
    // does not, so the daemon must give up before claiming readiness.
    let not_bpffs = stack.dir().join("not-bpffs");
    std::fs::create_dir(&not_bpffs).unwrap();
    let config = std::fs::read_to_string(&stack.sluice.config_path).unwrap();
    let bpf_line = config
        .lines()
        .find(|l| l.starts_with("bpf_dir"))
        .expect("bpf_dir in the test config")
        .to_string();
    let config = config.replace(
        &bpf_line,
        &format!("bpf_dir = {:?}", not_bpffs.to_str().unwrap()),
    );
    std::fs::write(&stack.sluice.config_path, config).unwrap();

    let notify = NotifySocket::bind(&stack.dir());
    let mut daemon = Daemon::spawn(&stack, &notify.path);
    let status = process::wait_timeout(&mut daemon.child, READY_TIMEOUT).unwrap();
    let status = status.unwrap_or_else(|| {
        panic!(
            "sluice run kept running with bpf_dir off bpffs:\n{}",
            daemon.log()
        )
    });
    assert!(!status.success(), "sluice run exited 0:\n{}", daemon.log());
    assert_eq!(
        notify.recv(Duration::from_millis(200)),
        None,
        "READY=1 sent by a daemon that failed:\n{}",
        daemon.log()
    );
    let agent_cgroup = &stack.sluice.agent(stack.agent()).path;
    assert_eq!(
        cgroup::attached_programs(agent_cgroup).unwrap(),
        "",
        "programs left on the agent cgroup"
    );
}
