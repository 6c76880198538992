//! Kubernetes exec streams in the session's terminal recording (DESIGN.md
//! §6 "Kubernetes API"): `kubectl exec` (WebSocket `v5.channel.k8s.io`)
//! and the Python client's exec (`v4`) against the API server stand-in;
//! what the command printed on stdout and stderr lands in the session's
//! asciicast `.cast` file, summarised on its `close` line, and replay
//! shows it after the command; the real token is in none of it.
use serde_json::Value;
use sluice_tests::Stack;

use crate::{
    events,
    kubernetes::{assert_ok, assert_real_token_only, finished, kube_stack, Kubectl, KUBE, RULES},
    recording, sessions_of, WAIT,
};

/// The closed session whose `command` line is `command`.
fn exec_session(stack: &Stack, command: &str) -> Vec<Value> {
    sluice_tests::poll("the exec session closed", WAIT, || {
        sessions_of(stack, KUBE).into_iter().find(|s| {
            s.iter()
                .any(|e| e["event"] == "command" && e["command"] == command)
                && s.iter().any(|e| e["event"] == "close")
        })
    })
    .unwrap()
}

#[test]
fn exec_output_of_kubectl_and_the_python_client_is_recorded_and_replayed() {
    let stack = kube_stack("kube-exec-cast", RULES);
    let token = stack.token(KUBE).unwrap();
    let kubectl = Kubectl::new(&stack, &token);

    let out = assert_ok(&kubectl.run(&["exec", "web-1", "--", "echo", "from-kubectl"]));
    assert_eq!(out, "from-kubectl\n");
    let session = exec_session(&stack, "echo from-kubectl");
    assert_eq!(
        events(&session, "command")[0]["kind"],
        "exec",
        "{session:?}"
    );
    assert_eq!(recording(&stack, &session).1, "from-kubectl\n");

    // stderr too (the stand-in's `warn` writes there), over v4.
    let child = kubectl.python_exec("web-1", &["warn", "to-stderr"]);
    assert_eq!(finished(child), "to-stderr\n");
    let session = exec_session(&stack, "warn to-stderr");
    assert_eq!(recording(&stack, &session).1, "to-stderr\n");

    let id = session[0]["session"].as_str().unwrap();
    let replay = stack
        .sluice
        .cli(&["sessions", "replay", id, "--no-wait"])
        .unwrap();
    let command = replay.find("COMMAND    warn to-stderr").expect(&replay);
    let output = replay.find("\nto-stderr\n").expect(&replay);
    assert!(command < output, "{replay}");

    assert_real_token_only(&stack);
    stack.assert_no_secret_leaked();
}
