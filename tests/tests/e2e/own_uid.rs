//! Sockets made outside the agent's cgroup (item 7): the kernel applies the
//! programs of the cgroup that created a socket, so one taken in with
//! `pidfd_getfd(2)` escapes interception. The documented set-up (each agent
//! under a uid of its own, `user =` in `[[agent]]`) leaves the agent no
//! process to take it from; `sluice exec` refuses a shared uid and
//! `sluice doctor` warns about one.
use std::{
    io::{BufRead, BufReader},
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::Duration,
};

use sluice_tests::{
    process,
    redteam::{add_agent_as, AgentUser, PYTHON},
    stack::next_upstream_ip,
    ServiceSpec, Stack,
};

/// Holds an unconnected TCP socket and prints its descriptor number.
const HOLDER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
print(s.fileno(), flush=True)
sys.stdin.read()
"#;

/// argv: holder pid, its socket's fd, host, port. Takes the holder's
/// socket with pidfd_getfd and connects through it, then connects a socket
/// of its own; prints {"getfd": ..., "stolen": ..., "own": ...}.
const TAKER: &str = r#"
import ctypes, errno, json, os, socket, sys
pid, fd, host, port = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
libc = ctypes.CDLL(None, use_errno=True)
def connect(s):
    s.settimeout(5)
    try:
        s.connect((host, port))
        return "connected"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))
out = {}
got = libc.syscall(438, os.pidfd_open(pid), fd, 0)  # pidfd_getfd
if got < 0:
    out["getfd"] = errno.errorcode.get(ctypes.get_errno(), "?")
else:
    out["getfd"] = "ok"
    out["stolen"] = connect(socket.socket(fileno=got))
out["own"] = connect(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
print(json.dumps(out))
"#;

const AGENT: &str = "owned";

/// A stack with agent [`AGENT`] configured with `user = <user>`.
fn stack_with_own_user(label: &str, user: &AgentUser) -> Stack {
    let mut stack = Stack::builder(label)
        .service(ServiceSpec::https("payments-api", "api.payments.test"))
        .prepare()
        .unwrap();
    add_agent_as(&mut stack, AGENT, user.name()).unwrap();
    for s in &stack.services {
        stack
            .sluice
            .secret_put(&s.spec.secret_name(), &s.secret)
            .unwrap();
    }
    stack.sluice.start().unwrap();
    stack
}

/// Starts [`HOLDER`] outside every agent cgroup, as `user` with its group
/// (root when `None`); returns it and its socket's descriptor number.
fn start_holder(user: Option<&str>) -> (Child, u32) {
    let mut cmd = match user {
        Some(name) => {
            let mut c = Command::new("setpriv");
            c.args(["--reuid", name, "--regid", name, "--clear-groups", PYTHON]);
            c
        }
        None => Command::new(PYTHON),
    };
    cmd.args(["-c", HOLDER])
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = process::die_with_parent(&mut cmd).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    (
        child,
        line.trim().parse().expect("the holder printed its fd"),
    )
}

/// `sluice exec --agent owned [extra…] -- python3 TAKER …` against a
/// loopback listener that is no service.
fn take(
    stack: &Stack,
    extra: &[&str],
    holder: &Child,
    fd: u32,
    target: &TcpListener,
) -> std::process::Output {
    let addr = target.local_addr().unwrap();
    let mut args = vec!["exec", "--agent", AGENT];
    args.extend_from_slice(extra);
    let (pid, fd, ip, port) = (
        holder.id().to_string(),
        fd.to_string(),
        addr.ip().to_string(),
        addr.port().to_string(),
    );
    args.extend_from_slice(&["--", PYTHON, "-c", TAKER, &pid, &fd, &ip, &port]);
    let mut cmd = stack.sluice.command(&args);
    cmd.current_dir("/");
    let out = process::output_with_timeout(&mut cmd, None, Duration::from_secs(30)).unwrap();
    stack
        .sluice
        .capture_text("taker", &String::from_utf8_lossy(&out.stdout));
    out
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "taker printed no JSON ({e}): {} / {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn agent_under_its_own_user_cannot_take_a_socket_from_outside_its_cgroup() {
    let user = AgentUser::create().unwrap();
    let stack = stack_with_own_user("own-uid", &user);
    let target = TcpListener::bind((next_upstream_ip(), 0)).unwrap();
    let (mut holder, fd) = start_holder(None);

    // No --user and no --allow-shared-uid: exec runs it as `user =`.
    let out = take(&stack, &[], &holder, fd, &target);
    assert!(out.status.success(), "exec as the agent's user: {out:?}");
    let r = json(&out);
    assert_eq!(r["getfd"], "EPERM", "{r}");
    assert_eq!(
        r["own"], "EPERM",
        "egress deny holds for its own socket: {r}"
    );
    target.set_nonblocking(true).unwrap();
    assert!(target.accept().is_err(), "the listener never saw the agent");
    holder.kill().unwrap();
    holder.wait().unwrap();
    stack.assert_no_secret_leaked();
}

#[test]
fn exec_refuses_a_uid_with_processes_outside_the_agent_cgroup() {
    let user = AgentUser::create().unwrap();
    let stack = stack_with_own_user("shared-uid", &user);
    let target = TcpListener::bind((next_upstream_ip(), 0)).unwrap();
    // A process of the agent's uid outside its cgroup, holding a socket.
    let (mut holder, fd) = start_holder(Some(user.name()));

    let out = take(&stack, &[], &holder, fd, &target);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "refused: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains(&format!("pid {}", holder.id())) && stderr.contains("--allow-shared-uid"),
        "names the process and the override: {stderr}"
    );
    assert!(out.stdout.is_empty(), "the command never ran");

    // doctor warns about the same process.
    let doc = stack.sluice.cli_output(&["doctor"], None).unwrap();
    let doc_out = String::from_utf8_lossy(&doc.stdout);
    assert!(
        doc_out.lines().any(|l| l.starts_with("WARN")
            && l.contains(AGENT)
            && l.contains(&format!("pid {}", holder.id()))),
        "doctor warns: {doc_out}"
    );

    // Why: with the override, the stolen socket escapes interception.
    let out = take(&stack, &["--allow-shared-uid"], &holder, fd, &target);
    let r = json(&out);
    assert_eq!(r["getfd"], "ok", "{r}");
    assert_eq!(r["stolen"], "connected", "the documented limit: {r}");
    assert_eq!(r["own"], "EPERM", "{r}");
    holder.kill().unwrap();
    holder.wait().unwrap();
}
