//! Harness of the relay tests: a test [`Gate`] with one placeholder key and
//! one password token, a Sluice SSH listener on its own `127.0.x.y`, and the
//! real OpenSSH / git / paramiko clients run against it.
//!
//! Each test binary uses a part of this module.
#![allow(dead_code)]
pub mod paramiko;
/// The private sshd fixture, shared with the end-to-end tests.
#[path = "../../../../tests/src/sshd.rs"]
pub mod sshd;

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use russh::keys::{PrivateKey, PublicKey};
use sluice_ssh::{
    host_key,
    placeholder::{AuthorizedKey, PlaceholderKey},
    Decision, Gate, Operation, Presented, Refusal, SshEvent, Stream, UpstreamCredential,
    UpstreamTarget,
};

pub use sshd::{Sshd, UserKey};

/// How long any client command may run.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// A fresh loopback address per test (`127.0.2.x`, apart from the
/// `127.0.0.x` of the end-to-end stacks).
pub fn fresh_ip() -> IpAddr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) + std::process::id();
    IpAddr::V4(Ipv4Addr::new(127, 0, 2, 1 + (n % 250) as u8))
}

/// What the test gate lets through, shared with the test.
pub struct Policy {
    /// The placeholder key's public half.
    pub key: AuthorizedKey,
    /// The password token.
    pub token: String,
    /// Exec command lines refused (exact match: a test fixture, not a
    /// policy engine).
    pub denied: HashSet<String>,
    /// Whether `direct-tcpip` is allowed.
    pub forward: AtomicBool,
    /// Set to refuse every new channel, as a revoked token does.
    pub revoked: AtomicBool,
    /// Where Sluice logs in.
    pub upstream: SocketAddr,
    /// The upstream user.
    pub user: String,
    /// The vault secret.
    pub credential: Credential,
    /// The upstream host key Sluice expects.
    pub host_key: PublicKey,
    /// Everything recorded, in order.
    pub events: Mutex<Vec<SshEvent>>,
    /// Recorded terminal output, in order.
    pub output: Mutex<Vec<(Stream, Vec<u8>)>>,
}

/// The vault secret of the test gate.
pub enum Credential {
    /// The sshd's authorized user key.
    Key(Arc<PrivateKey>),
    /// A password (another Sluice's token, see [`Options::hop`]).
    Password(String),
}

/// The login the test gate hands out.
pub struct Login;

/// The test [`Gate`].
#[derive(Clone)]
pub struct TestGate(pub Arc<Policy>);

impl Gate for TestGate {
    type Login = Login;

    async fn authenticate(&self, _user: &str, presented: Presented) -> Result<Login, Refusal> {
        match presented {
            Presented::PublicKey(key) if self.0.key.matches(&key) => Ok(Login),
            Presented::Password(p) if p.as_str() == self.0.token => Ok(Login),
            _ => Err(Refusal::new("unknown key or token")),
        }
    }

    async fn upstream(&self, _login: &Login) -> Result<UpstreamTarget, Refusal> {
        Ok(UpstreamTarget {
            addr: self.0.upstream,
            user: self.0.user.clone(),
            credential: match &self.0.credential {
                Credential::Key(key) => UpstreamCredential::Key(key.clone()),
                Credential::Password(p) => UpstreamCredential::Password(p.clone().into()),
            },
            host_keys: vec![self.0.host_key.clone()],
        })
    }

    async fn authorize(&self, _login: &Login, operation: &Operation) -> Decision {
        if self.0.revoked.load(Ordering::SeqCst) {
            return Decision::Deny {
                message: "token revoked".into(),
            };
        }
        match operation {
            Operation::Exec { command } if self.0.denied.contains(command) => Decision::Deny {
                message: format!("denied by rule: {command}"),
            },
            Operation::Forward { .. } if !self.0.forward.load(Ordering::SeqCst) => Decision::Deny {
                message: "forwarding is not allowed".into(),
            },
            _ => Decision::Allow,
        }
    }

    fn record(&self, _login: &Login, event: SshEvent) {
        self.0.events.lock().unwrap().push(event);
    }

    async fn output(&self, _login: &Login, _channel: u32, stream: Stream, data: bytes::Bytes) {
        self.0.output.lock().unwrap().push((stream, data.to_vec()));
    }
}

/// How a [`Stack`] is set up.
#[derive(Default)]
pub struct Options {
    /// Exec command lines the gate refuses.
    pub denied: Vec<&'static str>,
    /// The upstream host key the gate expects (the sshd's own if `None`).
    pub expected_host_key: Option<PublicKey>,
    /// Which of the sshd's user keys is the vault secret.
    pub user_key: UserKey,
    /// Log in not to the sshd but to this SSH server with a password.
    pub hop: Option<Hop>,
}

/// An upstream reached with a password: another Sluice [`Stack`], whose
/// token is the password.
pub struct Hop {
    /// Its address.
    pub addr: SocketAddr,
    /// Its host key.
    pub host_key: PublicKey,
    /// The password.
    pub password: String,
}

/// Sluice's SSH listener for one test, with the agent-side files.
pub struct Stack {
    /// The upstream sshd.
    pub sshd: Sshd,
    /// The real private key Sluice logs in with (OpenSSH format): must
    /// appear in no output.
    pub secret: String,
    /// The gate's policy.
    pub policy: Arc<TestGate>,
    /// Where agents connect.
    pub addr: SocketAddr,
    /// Sluice's host key.
    pub host_key: PublicKey,
    /// Agent-side files: `id_placeholder`, `known_hosts`.
    pub dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Stack {
    /// Starts an sshd and a Sluice listener as `options` say.
    pub async fn start(options: Options) -> Stack {
        let sshd = Sshd::start(fresh_ip(), options.user_key);
        let dir = tempfile::Builder::new()
            .prefix("sluice-ssh-agent-")
            .tempdir()
            .unwrap();
        let placeholder = PlaceholderKey::generate("agent@ssh-test").unwrap();
        let secret = sshd.user_key_pem();
        let key_path = dir.path().join("id_placeholder");
        write_private(&key_path, &placeholder.private_pem);
        let mut policy = Policy {
            key: placeholder.public.clone(),
            token: format!("slt_{}", hex_token()),
            denied: options.denied.iter().map(|s| s.to_string()).collect(),
            forward: AtomicBool::new(false),
            revoked: AtomicBool::new(false),
            upstream: sshd.addr,
            user: sshd.user.clone(),
            credential: Credential::Key(Arc::new(
                sluice_ssh::upstream::parse_private_key(&secret).unwrap(),
            )),
            host_key: options
                .expected_host_key
                .unwrap_or_else(|| sshd.host_key.clone()),
            events: Mutex::new(Vec::new()),
            output: Mutex::new(Vec::new()),
        };
        if let Some(hop) = options.hop {
            policy.upstream = hop.addr;
            policy.user = "agent".into();
            policy.credential = Credential::Password(hop.password);
            policy.host_key = hop.host_key;
        }
        let gate = Arc::new(TestGate(Arc::new(policy)));
        let host = host_key::load_or_generate(dir.path()).unwrap();
        let ip = fresh_ip();
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        std::fs::write(
            dir.path().join("known_hosts"),
            host_key::known_hosts_line(&ip.to_string(), addr.port(), host.public_key()) + "\n",
        )
        .unwrap();
        let host_public = host.public_key().clone();
        let config = sluice_ssh::server::config(host);
        let accept_gate = gate.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let config = config.clone();
                let gate = TestGate::clone(&accept_gate);
                tokio::spawn(async move {
                    let _ = sluice_ssh::server::serve(config, stream, gate).await;
                });
            }
        });
        Stack {
            sshd,
            secret,
            policy: gate,
            addr,
            host_key: host_public,
            dir,
            task,
        }
    }

    /// The policy the gate follows.
    pub fn policy(&self) -> &Policy {
        &self.policy.0
    }

    /// The placeholder key file.
    pub fn key_path(&self) -> PathBuf {
        self.dir.path().join("id_placeholder")
    }

    /// `ssh` options that trust only Sluice's known_hosts line and use only
    /// the placeholder key.
    pub fn ssh_options(&self) -> Vec<String> {
        let d = self.dir.path().display();
        [
            "-F",
            "/dev/null",
            "-o",
            &format!("UserKnownHostsFile={d}/known_hosts"),
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-i",
            &format!("{d}/id_placeholder"),
        ]
        .map(String::from)
        .to_vec()
    }

    /// `ssh` arguments: `extra` options first (ssh keeps the first value
    /// of an option), then [`Stack::ssh_options`], the port, the
    /// destination and `command` (none if empty).
    pub fn ssh_args(&self, extra: &[&str], command: &str) -> Vec<String> {
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        args.extend(self.ssh_options());
        args.extend([
            "-p".into(),
            self.addr.port().to_string(),
            format!("agent@{}", self.addr.ip()),
        ]);
        if !command.is_empty() {
            args.push(command.into());
        }
        args
    }

    /// The `ssh` command line for `GIT_SSH_COMMAND`.
    pub fn git_ssh_command(&self) -> String {
        format!("ssh {}", self.ssh_options().join(" "))
    }

    /// Everything recorded so far.
    pub fn events(&self) -> Vec<SshEvent> {
        self.policy().events.lock().unwrap().clone()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The output of a finished client.
#[derive(Debug)]
pub struct Output {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// `label: stdout`, `label: stderr`, for secret scans.
    pub fn texts(&self, label: &str) -> Vec<(String, String)> {
        vec![
            (format!("{label} stdout"), self.stdout.clone()),
            (format!("{label} stderr"), self.stderr.clone()),
        ]
    }
}

/// Runs `program args` with `env`, stdin from `stdin`, and a deadline.
pub async fn run(
    program: &str,
    args: &[String],
    env: &[(&str, String)],
    stdin: Option<&[u8]>,
    cwd: Option<&Path>,
) -> Output {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("start {program}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input).await.unwrap();
        drop(pipe);
    }
    let out = tokio::time::timeout(CLIENT_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} did not finish in {CLIENT_TIMEOUT:?}"))
        .unwrap();
    Output {
        status: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Asserts that no text contains the secret (the real key's body lines, or
/// a token); names the source on a hit, never the secret.
pub fn assert_no_secret(secret: &str, texts: &[(String, String)]) {
    for line in secret
        .lines()
        .filter(|l| l.len() >= 16 && !l.starts_with("-----"))
    {
        for (label, text) in texts {
            assert!(
                !text.contains(line),
                "a line of the real secret appears in {label}"
            );
        }
    }
}

/// Writes a private key file with mode 0600 (ssh refuses others).
fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// 32 random hex digits.
fn hex_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}
