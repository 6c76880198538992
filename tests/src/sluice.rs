//! `sluice run` under test: config, daemon lifecycle, CLI helpers and the
//! teardown guard.
use std::{
    ffi::OsStr,
    fs,
    net::{Ipv4Addr, SocketAddr},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::Mutex,
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::{cgroup, poll, process};

/// How long `sluice run` may take to load, attach and listen.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one CLI or agent command may run.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// One `[[agent]]` of the test config.
#[derive(Debug, Clone)]
pub struct AgentCgroup {
    pub name: String,
    /// Relative to the cgroup2 mount, as in the config.
    pub rel: String,
    /// Absolute path.
    pub path: PathBuf,
}

/// What the test config contains besides the generated paths.
pub struct SluiceOptions {
    /// Unique label: names the pin directory
    /// (`/sys/fs/bpf/<cgroup_prefix>-<label>`) and the agent cgroups.
    pub label: String,
    /// The test's temp dir; everything Sluice writes goes below it.
    pub dir: PathBuf,
    pub redis_url: String,
    /// Agent names; each gets cgroup `<cgroup_prefix>/<label>-<name>`.
    pub agents: Vec<String>,
    /// Parent of the agent cgroups, e.g. `sluice-test`.
    pub cgroup_prefix: String,
    /// Extra lines for every `[[agent]]` table, e.g. `redirect = "…"`
    /// (may be empty).
    pub agent_toml: String,
    /// Extra lines for one `[[agent]]` table: (agent name, lines), e.g. an
    /// OIDC binding.
    pub agent_lines: Vec<(String, String)>,
    /// `deny` or `allow`.
    pub egress: String,
    /// Extra `[gateway]` lines, already rendered (may be empty).
    pub gateway_toml: String,
    /// `[[service]]` tables, already rendered.
    pub services_toml: String,
}

/// The gateway under test.
pub struct Sluice {
    bin: PathBuf,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub listen: SocketAddr,
    pub bpf_dir: PathBuf,
    pub state_dir: PathBuf,
    pub log_dir: PathBuf,
    pub agents: Vec<AgentCgroup>,
    daemon_dir: PathBuf,
    daemon: Option<Child>,
    runs: u32,
    ca_cert: Mutex<Option<PathBuf>>,
    /// (label, text) of every CLI and agent command's stdout and stderr.
    captured: Mutex<Vec<(String, String)>>,
    torn_down: bool,
}

/// What teardown found and did; the cleanup test asserts on it.
#[derive(Debug, Default)]
pub struct TeardownReport {
    /// `sluice uninstall` exited 0.
    pub uninstall_ok: bool,
    pub uninstall_output: String,
    /// The pin directory still existed after `sluice uninstall` (it was
    /// then removed by force).
    pub pins_left_by_uninstall: bool,
    /// `bpftool cgroup show` per agent cgroup after uninstall, before rmdir.
    pub attached_after_uninstall: Vec<(String, String)>,
    /// BPF link ids still attached to an agent cgroup id after uninstall.
    pub links_after_uninstall: Vec<u64>,
    /// Agent cgroup ids (inode numbers) as they were.
    pub cgroup_ids: Vec<u64>,
    /// Problems hit along the way.
    pub errors: Vec<String>,
}

/// Renders `s` as a TOML basic string.
pub fn toml_str(s: impl AsRef<str>) -> String {
    serde_json::to_string(s.as_ref()).expect("string")
}

fn toml_path(p: &Path) -> String {
    toml_str(p.to_str().expect("utf-8 path"))
}

impl Sluice {
    /// Writes the vault key and config and creates the agent cgroups; does
    /// not start the daemon yet.
    pub fn new(opts: SluiceOptions) -> Result<Sluice> {
        let bin = crate::sluice_bin();
        if !bin.is_file() {
            bail!(
                "sluice binary not found at {}; build it (cargo xtask build) or set SLUICE_BIN",
                bin.display()
            );
        }
        let dir = opts.dir.clone();
        let daemon_dir = dir.join("daemon");
        fs::create_dir_all(&daemon_dir)?;
        let state_dir = dir.join("state");
        let log_dir = dir.join("log");
        let vault_key = dir.join("vault.key");
        let key = hex::decode(crate::random_hex(32)).expect("hex");
        fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&vault_key)
            .and_then(|mut f| std::io::Write::write_all(&mut f, &key))
            .context("write vault key")?;
        fs::set_permissions(&vault_key, fs::Permissions::from_mode(0o600))?;

        let listen = SocketAddr::from((
            Ipv4Addr::LOCALHOST,
            process::free_port(Ipv4Addr::LOCALHOST.into())?,
        ));
        let bpf_dir = PathBuf::from(format!(
            "/sys/fs/bpf/{}-{}",
            opts.cgroup_prefix.replace('/', "-"),
            opts.label
        ));
        let mount = cgroup::cgroup2_mount()?;
        let agents: Vec<AgentCgroup> = opts
            .agents
            .iter()
            .map(|name| {
                let rel = format!("{}/{}-{}", opts.cgroup_prefix, opts.label, name);
                AgentCgroup {
                    name: name.clone(),
                    path: mount.join(&rel),
                    rel,
                }
            })
            .collect();

        let mut config = format!(
            "# written by the sluice-tests harness\n[gateway]\nlisten = {}\nstate_dir = {}\nlog_dir = {}\nredis_url = {}\nvault_key = {}\negress = {}\nbpf_dir = {}\n",
            toml_str(listen.to_string()),
            toml_path(&state_dir),
            toml_path(&log_dir),
            toml_str(&opts.redis_url),
            toml_path(&vault_key),
            toml_str(&opts.egress),
            toml_path(&bpf_dir),
        );
        config.push_str(&opts.gateway_toml);
        for a in &agents {
            config.push_str(&format!(
                "\n[[agent]]\nname = {}\ncgroup = {}\n{}",
                toml_str(&a.name),
                toml_str(&a.rel),
                opts.agent_toml,
            ));
            for (_, lines) in opts.agent_lines.iter().filter(|(n, _)| *n == a.name) {
                config.push_str(lines);
                config.push('\n');
            }
        }
        config.push_str(&opts.services_toml);
        let config_path = dir.join("sluice.toml");
        fs::write(&config_path, config)?;

        let sluice = Sluice {
            bin,
            dir,
            config_path,
            listen,
            bpf_dir,
            state_dir,
            log_dir,
            agents,
            daemon_dir,
            daemon: None,
            runs: 0,
            ca_cert: Mutex::new(None),
            captured: Mutex::new(Vec::new()),
            torn_down: false,
        };
        // The harness creates the agent cgroups itself: they are ours, so
        // teardown may remove them, and nothing else is ever attached to.
        for a in &sluice.agents {
            cgroup::create(&a.rel)?;
        }
        Ok(sluice)
    }

    /// The agent named `name`.
    pub fn agent(&self, name: &str) -> &AgentCgroup {
        self.agents
            .iter()
            .find(|a| a.name == name)
            .unwrap_or_else(|| panic!("no agent {name:?} in the test config"))
    }

    /// The pinned connect4 link of `agent` (`<bpf_dir>/links/<agent>/`
    /// `connect4` or `sluice_connect4`), once it is attached.
    pub fn link_pin(&self, agent: &str) -> Option<PathBuf> {
        let dir = self.bpf_dir.join("links").join(agent);
        fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().ends_with("connect4"))
            })
    }

    /// Starts `sluice run --config …` (RUST_LOG=info, output to
    /// `daemon/run-<n>.{stdout,stderr}.log`) and waits until it is ready:
    /// every agent's connect4 link is pinned and the listener accepts.
    pub fn start(&mut self) -> Result<()> {
        if self.is_running() {
            bail!("sluice run is already running");
        }
        self.runs += 1;
        let (out, err) = self.run_log_paths(self.runs);
        let mut cmd = Command::new(&self.bin);
        cmd.arg("run")
            .arg("--config")
            .arg(&self.config_path)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("SLUICE_CONFIG")
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out)?)
            .stderr(fs::File::create(&err)?);
        let child = process::die_with_parent(&mut cmd)
            .spawn()
            .context("cannot start sluice run")?;
        self.daemon = Some(child);
        let listen = self.listen;
        let ready = poll(
            "sluice run to pin its links and listen",
            READY_TIMEOUT,
            || {
                if let Some(status) = self
                    .daemon
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                {
                    return Some(Err(anyhow::anyhow!(
                        "sluice run exited early with {status}"
                    )));
                }
                let pinned = self.agents.iter().all(|a| self.link_pin(&a.name).is_some());
                (pinned && process::tcp_accepts(listen)).then_some(Ok(()))
            },
        );
        match ready.and_then(|r| r) {
            Ok(()) => Ok(()),
            Err(e) => {
                let log = self.daemon_log();
                if let Some(mut child) = self.daemon.take() {
                    process::stop(&mut child, Duration::from_secs(2));
                }
                bail!("{e}\n--- sluice run stderr ---\n{}", tail(&log, 60))
            }
        }
    }

    fn run_log_paths(&self, run: u32) -> (PathBuf, PathBuf) {
        (
            self.daemon_dir.join(format!("run-{run}.stdout.log")),
            self.daemon_dir.join(format!("run-{run}.stderr.log")),
        )
    }

    /// Whether the daemon is running.
    pub fn is_running(&mut self) -> bool {
        self.daemon
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The daemon's PID, while running.
    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    /// Kills the daemon with SIGKILL (a crash) and reaps it. Pins stay.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the daemon again with the same config.
    pub fn restart(&mut self) -> Result<()> {
        self.kill9();
        self.start()
    }

    /// stdout and stderr of the current (latest) run.
    pub fn daemon_log(&self) -> String {
        self.run_log(self.runs)
    }

    /// stdout and stderr of run number `run` (1-based).
    pub fn run_log(&self, run: u32) -> String {
        let (out, err) = self.run_log_paths(run);
        format!(
            "{}{}",
            fs::read_to_string(out).unwrap_or_default(),
            fs::read_to_string(err).unwrap_or_default()
        )
    }

    /// A `sluice --config <cfg> …` command.
    pub fn command<S: AsRef<OsStr>>(&self, args: &[S]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--config")
            .arg(&self.config_path)
            .args(args)
            .env_remove("SLUICE_CONFIG");
        for var in process::PROXY_VARS.iter().chain(crate::postgres::PG_ENV) {
            cmd.env_remove(var);
        }
        cmd
    }

    /// Runs a sluice CLI command (with `stdin` as input), captures its
    /// output for the secret scans, and returns it whatever the exit status.
    pub fn cli_output<S: AsRef<OsStr>>(&self, args: &[S], stdin: Option<&[u8]>) -> Result<Output> {
        let label = format!(
            "sluice {}",
            args.iter()
                .map(|a| a.as_ref().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let out = process::output_with_timeout(&mut self.command(args), stdin, COMMAND_TIMEOUT)?;
        self.capture(&label, &out);
        Ok(out)
    }

    /// Runs a sluice CLI command that must succeed; returns its stdout.
    pub fn cli<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<String> {
        let out = self.cli_output(args, None)?;
        ensure_success(args, &out)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn capture(&self, label: &str, out: &Output) {
        let mut captured = self.captured.lock().unwrap();
        captured.push((
            format!("{label} (stdout)"),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ));
        captured.push((
            format!("{label} (stderr)"),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }

    /// `sluice secret put NAME` with `value` on stdin.
    pub fn secret_put(&self, name: &str, value: &str) -> Result<()> {
        let args = ["secret", "put", name];
        let out = self.cli_output(&args, Some(value.as_bytes()))?;
        ensure_success(&args, &out)
    }

    /// `sluice token issue --agent A --service S --ttl T`: the token.
    pub fn token_issue(&self, agent: &str, service: &str, ttl: &str) -> Result<String> {
        let out = self.cli(&[
            "token",
            "issue",
            "--agent",
            agent,
            "--service",
            service,
            "--ttl",
            ttl,
        ])?;
        let token = out.trim().to_string();
        if !token.starts_with("slt_") || token.len() < 36 || token.contains(char::is_whitespace) {
            bail!("sluice token issue printed {token:?}, expected the token alone (slt_ + ≥32 base62)");
        }
        Ok(token)
    }

    /// `sluice token revoke TOKEN_OR_ID`.
    pub fn token_revoke(&self, token_or_id: &str) -> Result<()> {
        self.cli(&["token", "revoke", token_or_id]).map(drop)
    }

    /// `sluice ca cert`, written once to `<dir>/sluice-ca.pem`.
    pub fn ca_cert_path(&self) -> Result<PathBuf> {
        let mut cached = self.ca_cert.lock().unwrap();
        if let Some(p) = cached.as_ref() {
            return Ok(p.clone());
        }
        let pem = self.cli(&["ca", "cert"])?;
        if !pem.contains("-----BEGIN CERTIFICATE-----") {
            bail!("sluice ca cert printed no PEM certificate");
        }
        let path = self.dir.join("sluice-ca.pem");
        fs::write(&path, pem)?;
        *cached = Some(path.clone());
        Ok(path)
    }

    /// The `sluice exec --agent NAME --allow-shared-uid -- argv…` command
    /// (these agents run as root, like the test), for callers that need
    /// their own stdio (their output is not captured for the scans: pass
    /// it to [`Sluice::capture_text`]).
    pub fn exec_command<S: AsRef<OsStr>>(&self, agent: &str, argv: &[S]) -> Command {
        let mut cmd = self.command(&["exec", "--agent", agent, "--allow-shared-uid", "--"]);
        cmd.args(argv);
        cmd
    }

    /// `sluice exec --agent NAME -- argv…`: runs argv in the agent's
    /// cgroup; output captured for the secret scans.
    pub fn exec<S: AsRef<OsStr>>(&self, agent: &str, argv: &[S]) -> Result<Output> {
        self.exec_with_timeout(agent, argv, COMMAND_TIMEOUT)
    }

    /// [`Sluice::exec`] for commands that may run longer than
    /// [`COMMAND_TIMEOUT`].
    pub fn exec_with_timeout<S: AsRef<OsStr>>(
        &self,
        agent: &str,
        argv: &[S],
        timeout: Duration,
    ) -> Result<Output> {
        let label = format!(
            "agent {agent}: {}",
            argv.iter()
                .map(|a| a.as_ref().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let out = process::output_with_timeout(&mut self.exec_command(agent, argv), None, timeout)?;
        self.capture(&label, &out);
        Ok(out)
    }

    /// Starts `sluice exec --agent NAME -- argv…` with piped stdin and
    /// stdout, stderr to `<dir>/daemon/exec-<pid>.stderr.log`. The caller
    /// waits for it; teardown kills whatever is left in the agent cgroup.
    pub fn exec_spawn<S: AsRef<OsStr>>(&self, agent: &str, argv: &[S]) -> Result<Child> {
        let stderr = self
            .daemon_dir
            .join(format!("exec-{}.stderr.log", crate::random_hex(4)));
        let mut cmd = self.exec_command(agent, argv);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(stderr)?);
        Ok(process::die_with_parent(&mut cmd).spawn()?)
    }

    /// Records text an agent printed through another channel (e.g. a
    /// spawned agent's stdout) for the secret scans.
    pub fn capture_text(&self, label: &str, text: &str) {
        self.captured
            .lock()
            .unwrap()
            .push((label.to_string(), text.to_string()));
    }

    /// `log_dir/sessions/*.jsonl`.
    pub fn session_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(self.log_dir.join("sessions"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
            .collect();
        files.sort();
        files
    }

    /// Every line of `log_dir/audit.jsonl`, parsed (unparsable lines are
    /// an error: the contract says JSON Lines).
    pub fn audit_events(&self) -> Result<Vec<serde_json::Value>> {
        let text = fs::read_to_string(self.log_dir.join("audit.jsonl")).unwrap_or_default();
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .with_context(|| format!("audit.jsonl line is not JSON: {l}"))
            })
            .collect()
    }

    /// The events of session `id` from `log_dir/sessions/<id>.jsonl`.
    pub fn session_events(&self, id: &str) -> Result<Vec<serde_json::Value>> {
        let path = self.log_dir.join("sessions").join(format!("{id}.jsonl"));
        let text = fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .with_context(|| format!("{} line is not JSON: {l}", path.display()))
            })
            .collect()
    }

    /// Polls audit.jsonl until an event matches `pred`.
    pub fn wait_for_event(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        poll(what, timeout, || {
            self.audit_events().ok()?.into_iter().find(|e| pred(e))
        })
    }

    /// Every text Sluice or an agent produced: daemon logs of every run,
    /// captured command output, and every file under `log_dir` and
    /// `state_dir` (binary files lossily), labelled by source.
    pub fn all_output_text(&self) -> Vec<(String, String)> {
        let mut texts = self.captured.lock().unwrap().clone();
        for dir in [&self.daemon_dir, &self.log_dir, &self.state_dir] {
            for file in walk(dir) {
                if let Ok(bytes) = fs::read(&file) {
                    texts.push((
                        file.display().to_string(),
                        String::from_utf8_lossy(&bytes).into_owned(),
                    ));
                }
            }
        }
        texts
    }

    /// Stops the daemon, runs `sluice uninstall`, removes what is left of
    /// the pins, kills what is left in the agent cgroups (by PID) and
    /// removes them. Safe to call twice; runs on drop.
    pub fn teardown(&mut self) -> TeardownReport {
        let mut report = TeardownReport::default();
        if self.torn_down {
            return report;
        }
        self.torn_down = true;
        if let Some(mut child) = self.daemon.take() {
            process::stop(&mut child, Duration::from_secs(5));
        }
        // A daemon that was killed leaves its open sessions append-only
        // (chattr +a), which would keep the temp dir from being removed.
        let _ = std::process::Command::new("chattr")
            .arg("-R")
            .arg("-a")
            .arg(&self.log_dir)
            .stderr(std::process::Stdio::null())
            .status();
        report.cgroup_ids = self
            .agents
            .iter()
            .filter_map(|a| cgroup::id(&a.path))
            .collect();
        match process::output_with_timeout(&mut self.command(&["uninstall"]), None, COMMAND_TIMEOUT)
        {
            Ok(out) => {
                report.uninstall_ok = out.status.success();
                report.uninstall_output = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Err(e) => report.errors.push(format!("sluice uninstall: {e:#}")),
        }
        if self.bpf_dir.exists() {
            report.pins_left_by_uninstall = true;
            // Only our own, uniquely named pin directory; unlinking the pins
            // drops the last reference and detaches the links.
            if let Err(e) = fs::remove_dir_all(&self.bpf_dir) {
                report
                    .errors
                    .push(format!("rm -r {}: {e}", self.bpf_dir.display()));
            }
        }
        for a in &self.agents {
            if a.path.exists() {
                match cgroup::attached_programs(&a.path) {
                    Ok(text) => report.attached_after_uninstall.push((a.rel.clone(), text)),
                    Err(e) => report.errors.push(format!("{e:#}")),
                }
            }
        }
        for id in &report.cgroup_ids {
            match cgroup::links_for_cgroup_id(*id) {
                Ok(links) => report.links_after_uninstall.extend(links),
                Err(e) => report.errors.push(format!("{e:#}")),
            }
        }
        for a in &self.agents {
            if let Err(e) = cgroup::remove(&a.path, a.rel.contains('/')) {
                report
                    .errors
                    .push(format!("removing cgroup {}: {e:#}", a.rel));
            }
        }
        report
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let report = self.teardown();
        if !report.errors.is_empty() {
            eprintln!("sluice-tests teardown problems: {:#?}", report.errors);
        }
    }
}

fn ensure_success<S: AsRef<OsStr>>(args: &[S], out: &Output) -> Result<()> {
    if !out.status.success() {
        bail!(
            "sluice {} failed with {}: {}",
            args.iter()
                .map(|a| a.as_ref().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Every regular file below `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(t) if t.is_file() => files.push(path),
                _ => {}
            }
        }
    }
    files.sort();
    files
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
