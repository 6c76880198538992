//! What Sluice's SSH handler refuses or records between real clients and a
//! real OpenSSH server: denied commands (exit status 126, connection still
//! usable), revocation mid-connection, forwarding, unknown keys, a wrong
//! upstream host key (the credential never offered), and a pty shell with
//! its resize and output recorded. Run as root, as `cargo xtask test` does.
mod support;

use std::{net::SocketAddr, sync::atomic::Ordering};

use russh::keys::{ssh_key::Algorithm, PrivateKey};
use sluice_ssh::{Operation, SshEvent, Stream, DENIED_EXIT_STATUS};
use support::{assert_no_secret, fresh_ip, paramiko::Paramiko, run, Options, Stack};
use tokio::io::AsyncWriteExt;

const DENIED: &str = "rm -rf /srv/data";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_command_gets_126_and_stderr_and_the_connection_stays_usable() {
    let stack = Stack::start(Options {
        denied: vec![DENIED],
        ..Options::default()
    })
    .await;
    let out = run("ssh", &stack.ssh_args(&[], DENIED), &[], None, None).await;
    assert_eq!(out.status, Some(DENIED_EXIT_STATUS as i32), "{out:?}");
    assert!(
        out.stderr.contains("denied by rule: rm -rf /srv/data"),
        "{out:?}"
    );
    assert_eq!(out.stdout, "");

    let mut agent = Paramiko::connect(&stack).await;
    let denied = agent.exec(DENIED).await;
    assert_eq!(denied["status"], DENIED_EXIT_STATUS, "{denied}");
    assert!(
        denied["stderr"]
            .as_str()
            .unwrap()
            .contains("denied by rule"),
        "{denied}"
    );
    let allowed = agent.exec("echo still here").await;
    assert_eq!(allowed["stdout"], "still here\n", "{allowed}");
    assert_eq!(allowed["status"], 0, "{allowed}");

    let events = stack.events();
    let denials = events
        .iter()
        .filter(|e| matches!(e, SshEvent::Denied { operation: Operation::Exec { command }, .. } if command == DENIED))
        .count();
    assert_eq!(denials, 2, "{events:?}");
    assert!(
        !events.iter().any(|e| matches!(e, SshEvent::Started { operation: Operation::Exec { command }, .. } if command == DENIED)),
        "a denied command never starts upstream: {events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_ends_new_channels_of_an_open_connection() {
    let stack = Stack::start(Options::default()).await;
    let mut agent = Paramiko::connect(&stack).await;
    let before = agent.exec("echo before").await;
    assert_eq!(before["stdout"], "before\n", "{before}");
    stack.policy().revoked.store(true, Ordering::SeqCst);
    let after = agent.exec("echo after").await;
    let error = after["error"].as_str().unwrap_or_default();
    assert!(error.contains("ChannelException"), "{after}");
    let events = stack.events();
    assert!(
        events.iter().any(|e| matches!(e, SshEvent::Denied { operation: Operation::Session, message, .. } if message == "token revoked")),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pty_shell_passes_window_changes_and_is_recorded() {
    let stack = Stack::start(Options::default()).await;
    let mut agent = Paramiko::connect(&stack).await;
    let shell = agent.shell().await;
    assert_eq!(shell["status"], 0, "{shell}");
    let output = shell["output"].as_str().unwrap();
    assert!(
        output.contains("24 80") && output.contains("40 100"),
        "{shell}"
    );

    let events = stack.events();
    assert!(
        events.iter().any(|e| matches!(
            e,
            SshEvent::Pty {
                cols: 80,
                rows: 24,
                ..
            }
        )),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| matches!(
            e,
            SshEvent::WindowChange {
                cols: 100,
                rows: 40,
                ..
            }
        )),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| matches!(
            e,
            SshEvent::Started {
                operation: Operation::Shell,
                ..
            }
        )),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, SshEvent::ExitStatus { status: 0, .. })),
        "{events:?}"
    );
    let recorded: Vec<u8> = stack
        .policy()
        .output
        .lock()
        .unwrap()
        .iter()
        .filter(|(stream, _)| *stream == Stream::Stdout)
        .flat_map(|(_, data)| data.clone())
        .collect();
    let recorded = String::from_utf8_lossy(&recorded);
    let first = recorded.find("24 80").expect("first stty size recorded");
    let second = recorded.find("40 100").expect("second stty size recorded");
    assert!(first < second, "output recorded in order");
    assert_no_secret(&stack.secret, &[("records".into(), format!("{events:?}"))]);
}

/// A TCP server on a fresh loopback address that sends one line and closes.
async fn hello_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind((fresh_ip(), 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.write_all(b"hello-forward\n").await;
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_only_when_allowed_and_remote_forwarding_never() {
    let stack = Stack::start(Options::default()).await;
    let target = hello_server().await;
    let forward = format!("{}:{}", target.ip(), target.port());
    let w = ["-W", forward.as_str()];

    let refused = run("ssh", &stack.ssh_args(&w, ""), &[], None, None).await;
    assert_eq!(refused.status, Some(255), "{refused:?}");
    assert!(
        refused.stderr.contains("forwarding is not allowed"),
        "{refused:?}"
    );

    stack.policy().forward.store(true, Ordering::SeqCst);
    let allowed = run("ssh", &stack.ssh_args(&w, ""), &[], None, None).await;
    assert_eq!(allowed.stdout, "hello-forward\n", "{allowed:?}");

    let remote = ["-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:9"];
    let out = run("ssh", &stack.ssh_args(&remote, "echo ran"), &[], None, None).await;
    assert_eq!(out.status, Some(255), "{out:?}");
    assert!(
        out.stderr.contains("remote port forwarding failed"),
        "{out:?}"
    );
    assert!(!out.stdout.contains("ran"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_key_is_refused_and_nothing_reaches_upstream() {
    let stack = Stack::start(Options::default()).await;
    let stranger = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
    let path = stack.dir.path().join("id_stranger");
    stranger
        .write_openssh_file(&path, Default::default())
        .unwrap();
    let identity = path.display().to_string();
    let mut args = vec!["-F".to_string(), "/dev/null".into()];
    for option in [
        format!(
            "UserKnownHostsFile={}/known_hosts",
            stack.dir.path().display()
        ),
        "StrictHostKeyChecking=yes".into(),
        "BatchMode=yes".into(),
        "IdentitiesOnly=yes".into(),
        "IdentityAgent=none".into(),
    ] {
        args.extend(["-o".into(), option]);
    }
    args.extend([
        "-i".into(),
        identity,
        "-p".into(),
        stack.addr.port().to_string(),
    ]);
    args.extend([format!("agent@{}", stack.addr.ip()), "echo hi".into()]);
    let out = run("ssh", &args, &[], None, None).await;
    assert_eq!(out.status, Some(255), "{out:?}");
    assert!(out.stderr.contains("Permission denied"), "{out:?}");
    assert!(
        !stack.sshd.log().contains("userauth-request"),
        "no upstream login for a refused agent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_upstream_host_key_is_refused_before_the_credential_is_offered() {
    let expected = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
    let stack = Stack::start(Options {
        expected_host_key: Some(expected.public_key().clone()),
        ..Options::default()
    })
    .await;
    let out = run("ssh", &stack.ssh_args(&[], "echo hi"), &[], None, None).await;
    assert_eq!(out.status, Some(255), "{out:?}");
    assert!(out.stderr.contains("upstream_host_key"), "{out:?}");
    assert!(!out.stdout.contains("hi"), "{out:?}");
    // The server saw Sluice connect and exchange keys, and no user
    // authentication request at all: the real key was never offered.
    let log = stack.sshd.log();
    assert!(log.contains("Connection from"), "sshd log: {log}");
    assert!(!log.contains("userauth-request"), "sshd log: {log}");
    assert!(!log.contains("publickey"), "sshd log: {log}");
    let events = stack.events();
    assert!(
        events.iter().any(|e| matches!(e, SshEvent::UpstreamFailed { message } if message.contains("upstream_host_key"))),
        "the mismatch is recorded: {events:?}"
    );
    assert_no_secret(&stack.secret, &out.texts("ssh"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_upstream_refuses_ends_the_channel_with_the_reason() {
    let stack = Stack::start(Options::default()).await;
    let out = run(
        "ssh",
        &stack.ssh_args(&["-s"], "no-such-subsystem"),
        &[],
        None,
        None,
    )
    .await;
    assert_ne!(out.status, Some(0), "{out:?}");
    assert!(
        out.stderr
            .contains("sluice: the upstream host refused the request"),
        "{out:?}"
    );
    let ok = run("ssh", &stack.ssh_args(&[], "echo fine"), &[], None, None).await;
    assert_eq!(ok.stdout, "fine\n", "{ok:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_forwarding_is_refused() {
    let stack = Stack::start(Options::default()).await;
    let command = "echo agent=${SSH_AUTH_SOCK:-none}";
    // `ssh-agent CMD` runs CMD with a fresh agent and ends with it.
    let forward = ["-A", "-o", "IdentityAgent=SSH_AUTH_SOCK"];
    let mut args = vec!["ssh".to_string()];
    args.extend(stack.ssh_args(&forward, command));
    let out = run("ssh-agent", &args, &[], None, None).await;
    assert_eq!(out.status, Some(0), "{out:?}");
    assert_eq!(out.stdout.trim(), "agent=none", "{out:?}");

    // Control: the same client straight to the upstream sshd (which allows
    // agent forwarding) does get an agent socket.
    let key = stack.dir.path().join("real_key");
    std::fs::write(&key, &stack.secret).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut args = vec!["ssh".to_string(), "-F".into(), "/dev/null".into()];
    for option in [
        "StrictHostKeyChecking=no",
        "UserKnownHostsFile=/dev/null",
        "BatchMode=yes",
        "IdentitiesOnly=yes",
        "IdentityAgent=SSH_AUTH_SOCK",
        "LogLevel=ERROR",
    ] {
        args.extend(["-o".into(), option.into()]);
    }
    args.extend(["-A".into(), "-i".into(), key.display().to_string()]);
    args.extend(["-p".into(), stack.sshd.addr.port().to_string()]);
    args.extend([
        format!("{}@{}", stack.sshd.user, stack.sshd.addr.ip()),
        command.into(),
    ]);
    let direct = run("ssh-agent", &args, &[], None, None).await;
    assert_eq!(direct.status, Some(0), "{direct:?}");
    assert!(direct.stdout.starts_with("agent=/"), "{direct:?}");
}
