//! Placeholder keys Sluice refuses (DESIGN.md §6 "SSH"): a revoked key, an
//! expired one and one issued to another agent, each presented by the
//! agent's unmodified `ssh` through the real eBPF redirect, get
//! `Permission denied` (exit 255); the refusal is recorded as `auth_fail`,
//! the private sshd sees no login for it, and the real key leaks nowhere.
use std::time::Duration;

use serde_json::Value;
use sluice_tests::{ServiceSpec, Stack};

use crate::{
    events,
    ssh::{all_events, assert_real_key_leaks_nowhere, ssh_stack, AgentFiles, HOST, SVC},
    WAIT,
};

/// A second agent, with a cgroup of its own.
const OTHER: &str = "other-agent";
/// The lifetime of the key that expires. Long enough for one login under
/// load, short enough to wait out.
const SHORT_TTL: Duration = Duration::from_secs(3);

/// Runs `ssh … echo WHAT` with the agent's `id_placeholder` and asserts
/// Sluice refuses it: exit 255, `Permission denied`, no output, no
/// `userauth-request` at the sshd, one more `auth_fail` recorded. Returns
/// every `auth_fail` event recorded so far.
#[track_caller]
fn assert_refused(stack: &Stack, agent: &AgentFiles, what: &str) -> Vec<Value> {
    let logins = || stack.sshd(SVC).log().matches("userauth-request").count();
    let fails_before = events(&all_events(stack), "auth_fail").len();
    let logins_before = logins();
    let out = agent.ssh(stack, &[], &[], &format!("echo {what}"));
    assert_eq!(
        out.code,
        Some(255),
        "{what}: stdout: {} stderr: {}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stderr.contains("Permission denied"),
        "{what}: {}",
        out.stderr
    );
    assert!(!out.stdout.contains(what), "{what}: {}", out.stdout);
    assert_eq!(
        logins(),
        logins_before,
        "{what}: the sshd saw a login attempt: {}",
        stack.sshd(SVC).log()
    );
    let recorded = all_events(stack);
    let fails: Vec<Value> = events(&recorded, "auth_fail")
        .into_iter()
        .cloned()
        .collect();
    assert!(
        fails.len() > fails_before,
        "{what}: the refused key is recorded: {recorded:?}"
    );
    fails
}

#[test]
fn a_revoked_placeholder_key_is_refused() {
    let stack = ssh_stack("ssh-revoked", ServiceSpec::ssh(SVC, HOST));
    let agent = AgentFiles::new(&stack);
    agent.issue_key(&stack);
    let before = agent.ssh(&stack, &[], &[], "echo before");
    assert_eq!(before.code, Some(0), "stderr: {}", before.stderr);

    let list = stack.sluice.cli(&["--json", "token", "list"]).unwrap();
    let ids: Vec<String> = list
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|t| t["service"] == SVC && t["state"] == "active")
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 1, "token list shows the key's token: {list}");
    stack.sluice.token_revoke(&ids[0]).unwrap();

    assert_refused(&stack, &agent, "revoked");
    assert_real_key_leaks_nowhere(&stack);
}

#[test]
fn an_expired_placeholder_key_is_refused() {
    let stack = ssh_stack("ssh-expired", ServiceSpec::ssh(SVC, HOST));
    let agent = AgentFiles::new(&stack);
    let ttl = format!("{}s", SHORT_TTL.as_secs());
    agent.issue_key_for(&stack, stack.agent(), &ttl);
    let before = agent.ssh(&stack, &[], &[], "echo before");
    assert_eq!(before.code, Some(0), "stderr: {}", before.stderr);
    assert_eq!(before.stdout.trim(), "before");

    // Waiting out the expiry itself: ssh again until Sluice refuses.
    sluice_tests::poll("the placeholder key to expire", SHORT_TTL + WAIT, || {
        (agent.ssh(&stack, &[], &[], "true").code != Some(0)).then_some(())
    })
    .unwrap();
    assert_refused(&stack, &agent, "expired");
    assert_real_key_leaks_nowhere(&stack);
}

#[test]
fn a_placeholder_key_of_another_agent_is_refused() {
    let stack = Stack::builder("ssh-other-agent")
        .service(ServiceSpec::ssh(SVC, HOST))
        .also_agent(OTHER)
        .start()
        .unwrap();
    let agent = AgentFiles::new(&stack);
    agent.issue_key_for(&stack, OTHER, "1h");

    let fails = assert_refused(&stack, &agent, "borrowed");
    assert!(
        fails.iter().any(|f| f["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no placeholder key of this agent"))),
        "the reason names the mismatch: {fails:?}"
    );
    assert!(
        !stack.sshd(SVC).log().contains("userauth-request"),
        "the sshd saw no login at all"
    );
    assert_real_key_leaks_nowhere(&stack);
}
