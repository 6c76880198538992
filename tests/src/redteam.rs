//! What the attack and fault tests (issue 8) need on top of [`Stack`]:
//! a non-root agent user, stacks with several agents or hand-written
//! services, agent commands run as that user, a world-readable directory
//! for the CA and scripts, and the Python probes agents run.
//!
//! ```no_run
//! use sluice_tests::{redteam::{AgentUser, RedTeam}, ServiceSpec, Stack};
//! let user = AgentUser::create().unwrap(); // first: dropped after the stack
//! let stack = Stack::builder("bypass").service(ServiceSpec::https("payments-api", "api.payments.test")).start().unwrap();
//! let rt = RedTeam::new(&stack, &user).unwrap();
//! let out = rt.python(stack.agent(), "print(open('/proc/self/cgroup').read())", &[]).unwrap();
//! ```
use std::{
    ffi::OsStr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::{
    cgroup, process,
    sluice::{toml_str, AgentCgroup, COMMAND_TIMEOUT},
    stack::StackBuilder,
    Stack,
};

/// The system Python (the `python3` on root's PATH may live under /root,
/// which the agent user cannot read).
pub const PYTHON: &str = "/usr/bin/python3";

/// A throw-away system user for agent commands (`useradd --system`),
/// removed again on drop. Create it before the [`Stack`] so that it is
/// dropped after the stack has killed the agent's processes.
pub struct AgentUser {
    name: String,
    uid: u32,
}

impl AgentUser {
    /// `useradd --system --no-create-home --user-group srt-<pid>-<n>`,
    /// retrying while another test holds the passwd lock.
    pub fn create() -> Result<AgentUser> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "srt-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut last = String::new();
        for _ in 0..50 {
            let out = process::output_with_timeout(
                Command::new("useradd")
                    .args([
                        "--system",
                        "--no-create-home",
                        "--user-group",
                        "--shell",
                        "/usr/sbin/nologin",
                        "--home-dir",
                        "/nonexistent",
                    ])
                    .arg(&name),
                None,
                Duration::from_secs(20),
            )?;
            if out.status.success() {
                let uid = uid_of(&name).context("the new user has a uid")?;
                return Ok(AgentUser { name, uid });
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            // Exit 10: cannot lock /etc/passwd (a parallel test); retry.
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("useradd {name} failed: {last}")
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn uid(&self) -> u32 {
        self.uid
    }
}

impl Drop for AgentUser {
    fn drop(&mut self) {
        for _ in 0..50 {
            let out = process::output_with_timeout(
                Command::new("userdel").arg(&self.name),
                None,
                Duration::from_secs(20),
            );
            match out {
                Ok(o) if o.status.success() => return,
                // 6: no such user (already gone).
                Ok(o) if o.status.code() == Some(6) => return,
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        eprintln!("sluice-tests: could not remove test user {}", self.name);
    }
}

fn uid_of(name: &str) -> Option<u32> {
    std::fs::read_to_string("/etc/passwd")
        .ok()?
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[0] == name)
        .and_then(|f| f[2].parse().ok())
}

/// Agent commands as [`AgentUser`] against one stack, with a
/// world-readable directory holding Sluice's CA.
pub struct RedTeam<'a> {
    pub stack: &'a Stack,
    pub user: &'a AgentUser,
    dir: tempfile::TempDir,
    /// Sluice's CA certificate, readable by the agent user.
    pub ca: PathBuf,
}

impl<'a> RedTeam<'a> {
    pub fn new(stack: &'a Stack, user: &'a AgentUser) -> Result<RedTeam<'a>> {
        let dir = tempfile::Builder::new()
            .prefix("sluice-redteam-")
            .tempdir()?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let ca = dir.path().join("sluice-ca.pem");
        std::fs::copy(stack.sluice.ca_cert_path()?, &ca)?;
        std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o644))?;
        Ok(RedTeam {
            stack,
            user,
            dir,
            ca,
        })
    }

    /// The world-readable directory (for scripts and files agents read).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `sluice exec --agent AGENT --user USER -- argv…`, from `/`.
    pub fn command<S: AsRef<OsStr>>(&self, agent: &str, argv: &[S]) -> Command {
        let mut cmd = self.stack.sluice.command(&[
            "exec",
            "--agent",
            agent,
            "--user",
            self.user.name(),
            "--",
        ]);
        cmd.args(argv).current_dir("/");
        cmd
    }

    /// `psql -X -w -At -d <conninfo> -c <sql>` as [`RedTeam::run`] runs it.
    ///
    /// # Errors
    /// As [`RedTeam::run`].
    pub fn psql(
        &self,
        agent: &str,
        conninfo: &str,
        sql: &str,
        timeout: Duration,
    ) -> Result<Output> {
        self.run(
            agent,
            &["psql", "-X", "-w", "-At", "-d", conninfo, "-c", sql],
            timeout,
        )
    }

    /// Runs argv as the agent user in `agent`'s cgroup; the output is
    /// captured for the secret scans.
    pub fn run<S: AsRef<OsStr>>(
        &self,
        agent: &str,
        argv: &[S],
        timeout: Duration,
    ) -> Result<Output> {
        let out = process::output_with_timeout(&mut self.command(agent, argv), None, timeout)?;
        let label = format!("agent {agent} as {}", self.user.name());
        self.stack.sluice.capture_text(
            &format!("{label} (stdout)"),
            &String::from_utf8_lossy(&out.stdout),
        );
        self.stack.sluice.capture_text(
            &format!("{label} (stderr)"),
            &String::from_utf8_lossy(&out.stderr),
        );
        Ok(out)
    }

    /// Spawns argv as the agent user with piped stdin/stdout (stderr
    /// inherited). The caller waits for it; teardown kills what is left.
    pub fn spawn<S: AsRef<OsStr>>(&self, agent: &str, argv: &[S]) -> Result<Child> {
        let mut cmd = self.command(agent, argv);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        Ok(process::die_with_parent(&mut cmd).spawn()?)
    }

    /// Runs [`PROBES`] followed by `script` with [`PYTHON`] as the agent
    /// user; argv is available as `sys.argv[1:]`, `CA` is the CA path.
    pub fn python(&self, agent: &str, script: &str, args: &[&str]) -> Result<Output> {
        self.python_with_timeout(agent, script, args, COMMAND_TIMEOUT)
    }

    pub fn python_with_timeout(
        &self,
        agent: &str,
        script: &str,
        args: &[&str],
        timeout: Duration,
    ) -> Result<Output> {
        let full = self.script(script);
        let mut argv = vec![PYTHON, "-c", &full];
        argv.extend_from_slice(args);
        self.run(agent, &argv, timeout)
    }

    /// Spawned [`RedTeam::python`].
    pub fn spawn_python(&self, agent: &str, script: &str, args: &[&str]) -> Result<Child> {
        let full = self.script(script);
        let mut argv = vec![PYTHON, "-c", &full];
        argv.extend_from_slice(args);
        self.spawn(agent, &argv)
    }

    fn script(&self, script: &str) -> String {
        format!(
            "{PROBES}\nCA = {:?}\n{script}",
            self.ca.display().to_string()
        )
    }

    /// The JSON lines a probe printed (panics with its stderr otherwise).
    pub fn json_lines(out: &Output) -> Vec<serde_json::Value> {
        let stdout = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<serde_json::Value> = stdout
            .lines()
            .filter(|l| l.starts_with('{') || l.starts_with('['))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("probe printed {l:?}: {e}")))
            .collect();
        assert!(
            !lines.is_empty(),
            "the probe printed no JSON (exit {:?}); stdout: {stdout}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        lines
    }

    /// Runs a probe script and returns its single JSON result.
    pub fn probe(&self, agent: &str, script: &str, args: &[&str]) -> serde_json::Value {
        let out = self.python(agent, script, args).expect("run the probe");
        Self::json_lines(&out).pop().expect("one line")
    }
}

/// Python helpers every probe starts with. Results are JSON: a request
/// gives `{"status", "headers", "body"}` or `{"error": ERRNO_NAME}`.
pub const PROBES: &str = r#"
import base64, errno, gzip, json, os, select, socket, ssl, struct, sys, threading, time

def ename(e):
    n = getattr(e, 'errno', None)
    if isinstance(e, socket.timeout) or isinstance(e, TimeoutError):
        return 'TIMEOUT'
    if n:
        return errno.errorcode.get(n, str(n))
    if isinstance(e, ssl.SSLError):
        return 'SSL:' + (e.reason or str(e))
    return type(e).__name__

def family_of(ip):
    return socket.AF_INET6 if ':' in ip else socket.AF_INET

def tcp(ip, port, timeout=10, proto=0):
    s = socket.socket(family_of(ip), socket.SOCK_STREAM, proto)
    s.settimeout(timeout)
    s.connect((ip, port))
    return s

def connect_result(ip, port, proto=0):
    try:
        tcp(ip, port, 5, proto).close()
        return 'connected'
    except Exception as e:
        return ename(e)

def tls(sock, sni, alpn=None):
    ctx = ssl.create_default_context(cafile=CA)
    if sni is None:
        ctx.check_hostname = False
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx.wrap_socket(sock, server_hostname=sni)

def recv_all(s, limit=1 << 22):
    data = b''
    while len(data) < limit:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, ssl.SSLError, socket.timeout, OSError):
            break
        if not chunk:
            break
        data += chunk
    return data

def dechunk(body):
    out = b''
    while body:
        line, _, rest = body.partition(b'\r\n')
        try:
            n = int(line.split(b';')[0], 16)
        except ValueError:
            return out
        if n == 0:
            return out
        out += rest[:n]
        body = rest[n + 2:]
    return out

def parse_http(data):
    head, _, body = data.partition(b'\r\n\r\n')
    lines = head.decode('latin-1').split('\r\n')
    if not lines or not lines[0].startswith('HTTP/'):
        return {'error': 'NO_RESPONSE', 'raw': data[:200].decode('latin-1')}
    status = int(lines[0].split()[1])
    headers = [tuple(x.strip() for x in l.split(':', 1)) for l in lines[1:] if ':' in l]
    if any(k.lower() == 'transfer-encoding' and 'chunked' in v.lower() for k, v in headers):
        body = dechunk(body)
    if any(k.lower() == 'content-encoding' and v.lower() == 'gzip' for k, v in headers):
        try:
            body = gzip.decompress(body)
        except Exception:
            pass
    return {'status': status, 'headers': headers, 'body': body.decode('latin-1')}

def request_bytes(method, path, host, headers=(), body=b''):
    req = '%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n' % (method, path, host)
    for k, v in headers:
        req += '%s: %s\r\n' % (k, v)
    if body:
        req += 'Content-Length: %d\r\n' % len(body)
    return req.encode('latin-1') + b'\r\n' + body

def https(ip, port, sni, path='/', headers=(), method='GET', host=None, proto=0, plain=False, timeout=10):
    try:
        s = tcp(ip, port, timeout, proto)
        if not plain:
            s = tls(s, sni)
        s.sendall(request_bytes(method, path, host or sni or ip, headers))
        return parse_http(recv_all(s))
    except Exception as e:
        return {'error': ename(e)}

def bearer(token):
    return [('Authorization', 'Bearer ' + token)]

def out(value):
    print(json.dumps(value), flush=True)
"#;

/// Starts `builder` with extra agents besides its own: each gets a cgroup
/// next to the first agent's and an `[[agent]]` table; secrets are put,
/// then the daemon starts.
pub fn start_with_agents(builder: StackBuilder, extra_agents: &[&str]) -> Result<Stack> {
    let mut stack = builder.prepare()?;
    add_agents(&mut stack, extra_agents)?;
    for s in &stack.services {
        stack.sluice.secret_put(&s.spec.secret_name(), &s.secret)?;
    }
    stack.sluice.start()?;
    Ok(stack)
}

/// Adds agents to a prepared (not yet started) stack.
pub fn add_agents(stack: &mut Stack, names: &[&str]) -> Result<()> {
    add_agents_as(stack, names, None)
}

/// Adds one agent with `user = USER` (the uid `sluice exec` runs it as)
/// to a prepared stack.
pub fn add_agent_as(stack: &mut Stack, name: &str, user: &str) -> Result<()> {
    add_agents_as(stack, &[name], Some(user))
}

fn add_agents_as(stack: &mut Stack, names: &[&str], user: Option<&str>) -> Result<()> {
    let first = stack
        .sluice
        .agents
        .first()
        .context("the stack has an agent")?
        .clone();
    let prefix = first
        .rel
        .strip_suffix(first.name.as_str())
        .context("agent cgroup named after the agent")?
        .to_string();
    let mut toml = String::new();
    for name in names {
        let rel = format!("{prefix}{name}");
        let path = cgroup::create(&rel)?;
        toml.push_str(&format!(
            "\n[[agent]]\nname = {}\ncgroup = {}\n",
            toml_str(name),
            toml_str(&rel)
        ));
        if let Some(user) = user {
            toml.push_str(&format!("user = {}\n", toml_str(user)));
        }
        stack.sluice.agents.push(AgentCgroup {
            name: name.to_string(),
            rel,
            path,
        });
    }
    append_config(stack, &toml)
}

/// Appends TOML (e.g. `[[service]]` tables) to the stack's config.
pub fn append_config(stack: &Stack, toml: &str) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&stack.sluice.config_path)?;
    f.write_all(toml.as_bytes())?;
    Ok(())
}

/// Inserts `lines` at the end of the `[gateway]` table of the config.
pub fn gateway_lines(stack: &Stack, lines: &str) -> Result<()> {
    let path = &stack.sluice.config_path;
    let text = std::fs::read_to_string(path)?;
    let at = text.find("\n[[").unwrap_or(text.len());
    let mut new = text[..at].to_string();
    new.push('\n');
    new.push_str(lines);
    new.push_str(&text[at..]);
    std::fs::write(path, new)?;
    Ok(())
}

/// A `[[service]]` table for an HTTPS service at `addr` (upstream
/// `host:port`, `resolve` the address), its secret in vault entry `secret`,
/// `credential` the inline table body after `secret = …`, and `extra` lines.
pub fn https_service_toml(
    name: &str,
    host: &str,
    addr: std::net::SocketAddr,
    ca_pem: &Path,
    secret: &str,
    credential: &str,
    extra: &str,
) -> String {
    format!(
        "\n[[service]]\nname = {}\nprotocol = \"https\"\nupstream = {}\nresolve = [{}]\nupstream_ca = {}\ncredential = {{ secret = {}{} }}\n{extra}\n",
        toml_str(name),
        toml_str(format!("{host}:{}", addr.port())),
        toml_str(addr.ip().to_string()),
        toml_str(ca_pem.to_str().expect("utf-8")),
        toml_str(secret),
        if credential.is_empty() { String::new() } else { format!(", {credential}") },
    )
}

/// The `pid` of `sluice run` (panics when it is not running).
pub fn daemon_pid(stack: &Stack) -> u32 {
    stack.sluice.pid().expect("sluice run is running")
}

/// Whether process `pid` is alive (not gone, not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(") ")
                .map(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
        })
        .unwrap_or(false)
}

/// Asserts the daemon is still alive and its log has no panic.
#[track_caller]
pub fn assert_daemon_healthy(stack: &Stack) {
    let log = stack.sluice.daemon_log();
    assert!(
        stack.sluice.pid().is_some_and(alive),
        "sluice run died:\n{}",
        crate::sluice::tail(&log, 40)
    );
    assert!(
        !log.contains("panicked"),
        "sluice run panicked:\n{}",
        crate::sluice::tail(&log, 40)
    );
}
