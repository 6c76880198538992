//! SSH pushes under `approve` (DESIGN.md §6 "SSH"): `git push` over ssh
//! with a placeholder key waits for `sluice approve` and lands; `sluice
//! deny` fails it with the reason and leaves the repository unchanged.
use std::{fs, path::Path, process::Command};

use sluice_tests::{sshd::bare_repo, Stack};

use crate::{
    ssh::{assert_real_key_leaks_nowhere, git_service, ssh_stack, AgentFiles, Out, HOST, SVC},
    WAIT,
};

/// `git` in `repo` as the agent, over ssh with the placeholder key.
fn agent_git(stack: &Stack, agent: &AgentFiles, args: &[&str]) -> Out {
    let git_ssh = format!("ssh {}", agent.options().join(" "));
    let mut argv = vec![
        "git",
        "-c",
        "user.name=agent",
        "-c",
        "user.email=agent@test",
    ];
    argv.extend_from_slice(args);
    Out::of(
        stack
            .agent_with_hosts(&[("GIT_SSH_COMMAND", &git_ssh)], &argv)
            .unwrap(),
    )
}

/// Commits a new file in `clone` and pushes it as the agent while the test
/// approves (`true`) or denies the held `git-receive-pack`.
fn push_decided(stack: &Stack, agent: &AgentFiles, clone: &Path, file: &str, approve: bool) -> Out {
    let c = clone.to_str().unwrap();
    fs::write(clone.join(file), "pushed through sluice\n").unwrap();
    assert_eq!(
        agent_git(stack, agent, &["-C", c, "add", file]).code,
        Some(0)
    );
    assert_eq!(
        agent_git(stack, agent, &["-C", c, "commit", "-q", "-m", file]).code,
        Some(0)
    );
    std::thread::scope(|scope| {
        let push =
            scope.spawn(|| agent_git(stack, agent, &["-C", c, "push", "-q", "origin", "main"]));
        let held = stack
            .sluice
            .wait_for_pending("git-receive-pack", WAIT)
            .unwrap();
        assert!(!push.is_finished(), "the push waits for the human");
        let id = held["id"].as_str().unwrap();
        if approve {
            stack.sluice.approve(id).unwrap();
        } else {
            stack.sluice.deny(id, "not today").unwrap();
        }
        push.join().unwrap()
    })
}

#[test]
fn a_git_push_under_approve_waits_for_the_human_and_a_denied_push_changes_nothing() {
    let stack = ssh_stack("ssh-push", git_service());
    let agent = AgentFiles::new(&stack);
    agent.issue_key(&stack);
    let bare = bare_repo(stack.sshd(SVC).dir());
    let head = || {
        let out = Command::new("git")
            .args(["--git-dir", bare.to_str().unwrap(), "rev-parse", "main"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let clone = agent.dir.join("work");
    let url = format!("ssh://agent@{HOST}:{}{}", agent.port, bare.display());
    let cloned = agent_git(
        &stack,
        &agent,
        &["clone", "-q", &url, clone.to_str().unwrap()],
    );
    assert_eq!(cloned.code, Some(0), "git clone: {}", cloned.stderr);

    let approved = push_decided(&stack, &agent, &clone, "approved.txt", true);
    assert_eq!(approved.code, Some(0), "git push: {}", approved.stderr);
    let local = agent_git(
        &stack,
        &agent,
        &["-C", clone.to_str().unwrap(), "rev-parse", "HEAD"],
    );
    assert_eq!(head(), local.stdout.trim(), "the approved push landed");

    let before = head();
    let denied = push_decided(&stack, &agent, &clone, "denied.txt", false);
    assert_ne!(denied.code, Some(0), "a denied push fails");
    assert!(
        denied.stderr.contains("not today"),
        "git push: {}",
        denied.stderr
    );
    assert_eq!(head(), before, "the repository is unchanged");
    assert_real_key_leaks_nowhere(&stack);
}
