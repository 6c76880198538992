//! Terminal recordings and `sluice sessions replay` (DESIGN.md §4 "Session
//! records"): an interactive SSH shell driven through a real pty (`ssh -tt`
//! with a placeholder key) leaves an asciicast v2 `.cast` file beside its
//! session record, whose size and SHA-256 the `close` line carries, and
//! which replay plays back between the transcript's lines; a PostgreSQL
//! session replays as its statements with their outcomes. Neither holds a
//! real secret.
use std::process::Output;

use sluice_tests::Stack;

use crate::{
    billing_stack, events, recording, sessions_of,
    ssh::{assert_real_key_leaks_nowhere, git_service, ssh_stack, AgentFiles, HOST, SVC},
    DB,
};

fn replay(stack: &Stack, id: &str, pace: &[&str]) -> String {
    let mut args = vec!["sessions", "replay", id];
    args.extend_from_slice(pace);
    let out: Output = stack.sluice.cli_output(&args, None).unwrap();
    assert!(
        out.status.success(),
        "replay: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `'word'` for `sh -c`.
fn quoted(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

#[test]
fn an_ssh_shell_through_a_pty_is_recorded_as_asciicast_and_replayed() {
    let stack = ssh_stack("replay-ssh", git_service());
    let agent = AgentFiles::new(&stack);
    agent.issue_key(&stack);
    // A shell (no command) on a forced pty, fed a small script on stdin:
    // the pty echoes the input, the shell prints the sum.
    let mut ssh = vec!["ssh".to_string(), "-tt".into()];
    ssh.extend(agent.options());
    ssh.push(format!("agent@{HOST}"));
    let script = "echo cast-marker-$((6*7)); exit 3\n";
    let line = format!(
        "printf %s {} | {}",
        quoted(script),
        ssh.iter().map(|w| quoted(w)).collect::<Vec<_>>().join(" ")
    );
    let out = stack
        .agent_with_hosts(&[("TERM", "xterm-256color")], &["sh", "-c", &line])
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "the shell's exit status; stdout: {stdout} stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("cast-marker-42"), "{stdout}");

    let session = sluice_tests::poll("the shell session closed", crate::WAIT, || {
        sessions_of(&stack, SVC)
            .into_iter()
            .find(|s| s.iter().any(|e| e["event"] == "close"))
    })
    .unwrap();
    let id = session[0]["session"].as_str().unwrap().to_string();
    let shell = events(&session, "command");
    assert!(
        shell
            .iter()
            .any(|c| c["kind"] == "shell" && c["command"] == "shell"),
        "{session:?}"
    );
    let close = events(&session, "close")[0].clone();
    assert_eq!(
        close["exits"][0]["exit_status"], 3,
        "exit status on close: {close}"
    );
    assert_eq!(close["exits"][0]["command"], "shell");

    let (header, output) = recording(&stack, &session);
    assert!(header["width"].as_u64().is_some_and(|w| w > 0), "{header}");
    assert!(header["height"].as_u64().is_some_and(|h| h > 0), "{header}");
    assert!(header["timestamp"].as_u64().is_some(), "{header}");
    assert_eq!(header["env"]["TERM"], "xterm-256color", "{header}");
    assert!(output.contains("cast-marker-42"), "{output}");

    let shown = replay(&stack, &id, &["--no-wait"]);
    let shell_at = shown.find("SHELL      shell").expect(&shown);
    let output_at = shown.find("cast-marker-42").expect(&shown);
    let exit_at = shown.find("-> exit 3: shell").expect(&shown);
    assert!(shell_at < output_at && output_at < exit_at, "{shown}");
    assert!(
        !shown.contains('\u{1b}'),
        "output is shown with escapes escaped: {shown}"
    );
    // Real time, sped up: the same transcript.
    assert_eq!(replay(&stack, &id, &["--speed", "1000"]), shown);
    assert_real_key_leaks_nowhere(&stack);
}

#[test]
fn a_postgresql_session_replays_as_its_statements_and_outcomes() {
    let stack = billing_stack("replay-pg");
    let token = stack.token(DB).unwrap();
    let conninfo = stack.pg_conninfo(DB, &token, "sslmode=disable");
    let res = stack
        .psql(
            &conninfo,
            &[
                "-At",
                "-v",
                "ON_ERROR_STOP=0",
                "-c",
                r"\set VERBOSITY verbose",
                "-c",
                "SELECT name, ssn FROM customers ORDER BY id",
                "-c",
                "DROP TABLE customers",
            ],
        )
        .unwrap();
    assert!(res.stderr.contains("ERROR:  42501:"), "{}", res.stderr);
    let session = sluice_tests::poll("the psql session closed", crate::WAIT, || {
        sessions_of(&stack, DB)
            .into_iter()
            .find(|s| s.iter().any(|e| e["event"] == "close"))
    })
    .unwrap();
    let id = session[0]["session"].as_str().unwrap();
    assert!(
        !stack
            .sluice
            .log_dir
            .join(format!("sessions/{id}.cast"))
            .exists(),
        "no terminal, no recording"
    );
    let shown = replay(&stack, id, &["--no-wait"]);
    let body: Vec<&str> = shown
        .lines()
        .skip(1)
        .map(|l| l.split_once("s  ").expect("+offset column").1)
        .collect();
    let at = |prefix: &str| {
        body.iter()
            .position(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in {shown}"))
    };
    let select = at("SQL        SELECT name, ssn FROM customers ORDER BY id");
    let masked = at("             -> masked ssn (");
    let drop = at("SQL        DROP TABLE customers");
    let denied = at("             -> denied: ");
    assert!(select < masked && masked < drop && drop < denied, "{shown}");
    assert!(
        body.last().unwrap().starts_with("close      after "),
        "{shown}"
    );
    assert_eq!(replay(&stack, id, &["--speed", "1000"]), shown);
    stack.assert_no_secret_leaked();
}
