//! SSH (DESIGN.md §6 "SSH") through the real eBPF redirect: unmodified
//! OpenSSH `ssh`, `scp` and `git` in the agent's cgroup dial `git.test`
//! (the private sshd's address) with a placeholder key or an `slt_` token
//! as password, trusting only `sluice ssh known-hosts`; Sluice trusts only
//! `upstream_host_key` and logs in upstream with the real key from the
//! vault, which appears in no output, log or record. Commands are decided
//! by `deny`/`approve` globs (126 on refusal, pushes held for a human),
//! channel kinds by `allow`.
use std::{fs, os::unix::fs::PermissionsExt};

use serde_json::Value;
use sluice_tests::{
    sshd::{assert_no_private_key, bare_repo},
    ServiceSpec, Stack,
};

use crate::{events, sessions_of, WAIT};

pub(crate) const SVC: &str = "git";
pub(crate) const HOST: &str = "git.test";

pub(crate) fn ssh_stack(label: &str, spec: ServiceSpec) -> Stack {
    Stack::builder(label).service(spec).start().unwrap()
}

pub(crate) fn git_service() -> ServiceSpec {
    ServiceSpec::ssh(SVC, HOST)
        .extra(r#"deny = [{ command = "rm *" }]"#)
        .extra(r#"approve = [{ command = "git-receive-pack *" }]"#)
}

/// The agent's files: `known_hosts` from `sluice ssh known-hosts` only,
/// and the placeholder key from `sluice token issue --ssh-key`.
pub(crate) struct AgentFiles {
    pub(crate) dir: std::path::PathBuf,
    pub(crate) port: u16,
}

impl AgentFiles {
    pub(crate) fn new(stack: &Stack) -> AgentFiles {
        let dir = stack.dir().join("agent-ssh");
        fs::create_dir_all(&dir).unwrap();
        let known = stack.sluice.cli(&["ssh", "known-hosts"]).unwrap();
        let port = stack.sshd(SVC).addr.port();
        assert_eq!(
            known.lines().count(),
            1,
            "one line per ssh service: {known}"
        );
        assert!(
            known.starts_with(&format!("[{HOST}]:{port} ssh-ed25519 AAAA")),
            "{known}"
        );
        fs::write(dir.join("known_hosts"), known).unwrap();
        AgentFiles { dir, port }
    }

    /// `sluice token issue --ssh-key` for the stack's agent, valid for an
    /// hour, into `id_placeholder` (0600).
    pub(crate) fn issue_key(&self, stack: &Stack) {
        self.issue_key_for(stack, stack.agent(), "1h");
    }

    /// `sluice token issue --agent AGENT --ssh-key --ttl TTL` into
    /// `id_placeholder` (0600), whoever the agent.
    pub(crate) fn issue_key_for(&self, stack: &Stack, agent: &str, ttl: &str) {
        let pem = stack
            .sluice
            .cli(&[
                "token",
                "issue",
                "--agent",
                agent,
                "--service",
                SVC,
                "--ssh-key",
                "--ttl",
                ttl,
            ])
            .unwrap();
        assert!(
            pem.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"),
            "{pem}"
        );
        let path = self.dir.join("id_placeholder");
        fs::write(&path, pem).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    }

    /// Options trusting only Sluice's known_hosts line, offering only the
    /// placeholder key, never prompting.
    pub(crate) fn options(&self) -> Vec<String> {
        let d = self.dir.display();
        [
            "-F",
            "/dev/null",
            "-o",
            &format!("UserKnownHostsFile={d}/known_hosts"),
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-i",
            &format!("{d}/id_placeholder"),
            "-p",
            &self.port.to_string(),
        ]
        .map(String::from)
        .to_vec()
    }

    /// Runs `ssh OPTIONS agent@git.test command` as the agent, logging in
    /// by password only, with `password` answered by an askpass program.
    pub(crate) fn ssh_with_password(&self, stack: &Stack, password: &str, command: &str) -> Out {
        let askpass = self.dir.join("askpass");
        fs::write(&askpass, format!("#!/bin/sh\necho {password}\n")).unwrap();
        fs::set_permissions(&askpass, fs::Permissions::from_mode(0o700)).unwrap();
        let env = [
            ("SSH_ASKPASS", askpass.to_str().unwrap()),
            ("SSH_ASKPASS_REQUIRE", "force"),
            ("DISPLAY", ":0"),
        ];
        // Options before the defaults win: password only, prompting allowed.
        let password_only = [
            "-o",
            "BatchMode=no",
            "-o",
            "PreferredAuthentications=password",
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "NumberOfPasswordPrompts=1",
        ];
        self.ssh(stack, &env, &password_only, command)
    }

    /// Runs `ssh [extra] OPTIONS agent@git.test [command]` as the agent.
    pub(crate) fn ssh(
        &self,
        stack: &Stack,
        env: &[(&str, &str)],
        extra: &[&str],
        command: &str,
    ) -> Out {
        let mut argv: Vec<String> = vec!["ssh".into()];
        argv.extend(extra.iter().map(|s| s.to_string()));
        argv.extend(self.options());
        argv.push(format!("agent@{HOST}"));
        if !command.is_empty() {
            argv.push(command.into());
        }
        Out::of(stack.agent_with_hosts(env, &argv).unwrap())
    }
}

pub(crate) struct Out {
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Out {
    pub(crate) fn of(o: std::process::Output) -> Out {
        Out {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Asserts that no line of the real private key appears in anything Sluice
/// or the agent produced (logs, records, state, captured output).
pub(crate) fn assert_real_key_leaks_nowhere(stack: &Stack) {
    assert_no_private_key(stack.secret(SVC), &stack.sluice.all_output_text());
}

/// Every event of every session of the ssh service.
pub(crate) fn all_events(stack: &Stack) -> Vec<Value> {
    sessions_of(stack, SVC).into_iter().flatten().collect()
}

#[test]
fn placeholder_key_runs_commands_clones_with_git_and_denied_commands_exit_126() {
    let stack = ssh_stack("ssh-key", git_service());
    let agent = AgentFiles::new(&stack);
    agent.issue_key(&stack);

    let hi = agent.ssh(&stack, &[], &[], "echo hi from $USER");
    assert_eq!(hi.code, Some(0), "stderr: {}", hi.stderr);
    assert_eq!(
        hi.stdout.trim(),
        format!("hi from {}", stack.sshd(SVC).user),
        "ran upstream as credential.user"
    );

    let denied = agent.ssh(&stack, &[], &[], "rm -rf /tmp/sluice-never");
    assert_eq!(denied.code, Some(126), "stderr: {}", denied.stderr);
    assert!(
        denied.stderr.contains("denied by policy: rm *"),
        "stderr: {}",
        denied.stderr
    );

    let bare = bare_repo(stack.sshd(SVC).dir());
    let dest = agent.dir.join("clone");
    let git_ssh = format!("ssh {}", agent.options().join(" "));
    let url = format!("ssh://agent@{HOST}:{}{}", agent.port, bare.display());
    let clone = Out::of(
        stack
            .agent_with_hosts(
                &[("GIT_SSH_COMMAND", &git_ssh)],
                &["git", "clone", "-q", &url, dest.to_str().unwrap()],
            )
            .unwrap(),
    );
    assert_eq!(clone.code, Some(0), "git clone: {}", clone.stderr);
    assert_eq!(
        fs::read_to_string(dest.join("README")).unwrap(),
        "cloned through sluice\n"
    );

    let recorded = all_events(&stack);
    let commands: Vec<&str> = recorded
        .iter()
        .filter(|e| e["event"] == "command")
        .filter_map(|e| e["command"].as_str())
        .collect();
    assert!(
        commands.contains(&"rm -rf /tmp/sluice-never"),
        "{commands:?}"
    );
    assert!(
        commands.iter().any(|c| c.starts_with("git-upload-pack ")),
        "{commands:?}"
    );
    let denials = events(&recorded, "denied");
    assert!(
        denials.iter().any(|d| d["rule"] == "rm *"),
        "denied recorded: {denials:?}"
    );
    assert!(events(&recorded, "open")
        .iter()
        .all(|e| e["protocol"] == "ssh"));
    assert_eq!(
        events(&recorded, "auth_ok").len(),
        3,
        "one login per ssh run"
    );
    assert_real_key_leaks_nowhere(&stack);
}

#[test]
fn an_slt_token_works_as_the_ssh_password() {
    let stack = ssh_stack("ssh-password", ServiceSpec::ssh(SVC, HOST));
    let agent = AgentFiles::new(&stack);
    let token = stack.token(SVC).unwrap();
    let out = agent.ssh_with_password(&stack, &token, "echo password-ok");
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    assert_eq!(out.stdout.trim(), "password-ok");

    let refused = agent.ssh_with_password(
        &stack,
        "slt_notarealtoken0000000000000000000000",
        "echo never",
    );
    assert_ne!(refused.code, Some(0));
    assert!(!refused.stdout.contains("never"));
    assert!(all_events(&stack).iter().any(|e| e["event"] == "auth_fail"));
    assert_real_key_leaks_nowhere(&stack);
}

#[test]
fn a_wrong_upstream_host_key_is_refused_and_the_real_key_never_offered() {
    let other = sluice_ssh::placeholder::PlaceholderKey::generate("impostor").unwrap();
    let spec = ServiceSpec::ssh(SVC, HOST).upstream_host_key(&other.public.to_line());
    let stack = ssh_stack("ssh-hostkey", spec);
    let agent = AgentFiles::new(&stack);
    agent.issue_key(&stack);

    let out = agent.ssh(&stack, &[], &[], "echo never");
    assert_ne!(out.code, Some(0));
    assert!(!out.stdout.contains("never"));
    assert!(
        out.stderr.contains("not the configured upstream_host_key"),
        "stderr: {}",
        out.stderr
    );
    let log = stack.sshd(SVC).log();
    assert!(
        !log.contains("userauth-request"),
        "sshd saw a login attempt: {log}"
    );
    stack
        .sluice
        .wait_for_event("the host key mismatch recorded", WAIT, |e| {
            e["event"] == "error"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("upstream_host_key"))
        })
        .unwrap();
    assert_real_key_leaks_nowhere(&stack);
}

#[test]
fn scp_and_sftp_pass_and_forwarding_is_refused_unless_allowed() {
    let spec = ServiceSpec::ssh(SVC, HOST).extra(r#"allow = ["exec", "sftp"]"#);
    let stack = ssh_stack("ssh-files", spec);
    let agent = AgentFiles::new(&stack);
    agent.issue_key(&stack);
    let remote = stack.sshd(SVC).dir().join("remote.txt");
    let local = agent.dir.join("local.txt");
    fs::write(&local, "up through sluice\n").unwrap();
    // scp's and sftp's options: ssh's, with -P for the port.
    let scp_options: Vec<String> = agent
        .options()
        .into_iter()
        .map(|o| if o == "-p" { "-P".into() } else { o })
        .collect();
    let scp = |from: String, to: String| {
        let mut argv = vec!["scp".to_string(), "-q".into()];
        argv.extend(scp_options.clone());
        argv.extend([from, to]);
        Out::of(stack.agent_with_hosts(&[], &argv).unwrap())
    };
    let up = scp(
        local.display().to_string(),
        format!("agent@{HOST}:{}", remote.display()),
    );
    assert_eq!(up.code, Some(0), "scp up: {}", up.stderr);
    assert_eq!(fs::read_to_string(&remote).unwrap(), "up through sluice\n");
    let back = agent.dir.join("back.txt");
    let down = scp(
        format!("agent@{HOST}:{}", remote.display()),
        back.display().to_string(),
    );
    assert_eq!(down.code, Some(0), "scp down: {}", down.stderr);
    assert_eq!(fs::read_to_string(&back).unwrap(), "up through sluice\n");

    let batch = agent.dir.join("sftp.batch");
    let fetched = agent.dir.join("fetched.txt");
    fs::write(
        &batch,
        format!("get {} {}\n", remote.display(), fetched.display()),
    )
    .unwrap();
    let mut argv = vec!["sftp".to_string(), "-q".into(), "-b".into()];
    argv.push(batch.display().to_string());
    argv.extend(scp_options.clone());
    argv.push(format!("agent@{HOST}"));
    let sftp = Out::of(stack.agent_with_hosts(&[], &argv).unwrap());
    assert_eq!(sftp.code, Some(0), "sftp: {}", sftp.stderr);
    assert_eq!(fs::read_to_string(&fetched).unwrap(), "up through sluice\n");

    let forward = agent.ssh(&stack, &[], &["-W", "127.0.0.1:9"], "");
    assert_eq!(forward.code, Some(255), "ssh -W: {}", forward.stderr);
    assert!(
        forward.stderr.contains("forwarding is not allowed"),
        "ssh -W: {}",
        forward.stderr
    );
    let recorded = all_events(&stack);
    assert!(
        events(&recorded, "denied")
            .iter()
            .any(|d| d["rule"] == "allow"),
        "{recorded:?}"
    );
    assert_real_key_leaks_nowhere(&stack);
}

#[test]
fn revoking_the_key_refuses_new_channels_of_an_open_connection() {
    let stack = ssh_stack("ssh-revoke-live", ServiceSpec::ssh(SVC, HOST));
    let agent = AgentFiles::new(&stack);
    agent.issue_key(&stack);
    let socket = format!("ControlPath={}/cm", agent.dir.display());
    // One connection, kept open by a background master (ended by `-O exit`
    // below, or by the teardown's kill of what is left in the cgroup).
    let master = agent.ssh(
        &stack,
        &[],
        &[
            "-o",
            "ControlMaster=yes",
            "-o",
            &socket,
            "-o",
            "ControlPersist=60",
            "-f",
            "-N",
        ],
        "",
    );
    assert_eq!(master.code, Some(0), "master: {}", master.stderr);
    let over_master = |command: &str| {
        agent.ssh(
            &stack,
            &[],
            &[
                "-o",
                "ControlMaster=no",
                "-o",
                &socket,
                "-o",
                "LogLevel=DEBUG1",
            ],
            command,
        )
    };
    let first = over_master("echo first");
    assert_eq!(first.code, Some(0), "stderr: {}", first.stderr);
    assert_eq!(first.stdout.trim(), "first");

    let list = stack.sluice.cli(&["--json", "token", "list"]).unwrap();
    let id = list
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|t| t["service"] == SVC)
        .map(|t| t["id"].as_str().unwrap().to_string())
        .unwrap();
    stack.sluice.token_revoke(&id).unwrap();
    let refused = sluice_tests::poll("a new channel refused after revocation", WAIT, || {
        let out = over_master("echo after");
        (out.code != Some(0)).then_some(out)
    })
    .unwrap();
    assert!(!refused.stdout.contains("after"));
    // The mux client shows no reason; the master's session records it.
    assert!(
        refused.stderr.contains("Session open refused by peer"),
        "stderr: {}",
        refused.stderr
    );
    let sessions = sessions_of(&stack, SVC);
    assert!(
        sessions.iter().any(|s| {
            events(s, "auth_ok").len() == 1
                && events(s, "auth_fail")
                    .iter()
                    .any(|f| f["reason"].as_str().is_some_and(|r| r.contains("revoked")))
        }),
        "the open connection's session records the revocation: {sessions:?}"
    );
    let _ = agent.ssh(&stack, &[], &["-o", &socket, "-O", "exit"], "");
}
