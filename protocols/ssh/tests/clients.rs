//! Unmodified clients through Sluice's SSH handler to a real OpenSSH server
//! (`support/sshd.rs`): `ssh` with a placeholder key and with a token as
//! password, `sftp`, `git clone`/`git push`, paramiko. The agent trusts only
//! Sluice's known_hosts line (`StrictHostKeyChecking=yes`); the real key
//! appears in no client output. Run as root, as `cargo xtask test` does.
mod support;

use std::{fs, os::unix::fs::PermissionsExt, path::Path};

use sluice_ssh::{Operation, SshEvent};

use support::{assert_no_secret, paramiko::Paramiko, run, Hop, Options, Output, Stack, UserKey};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_exec_with_placeholder_key() {
    let stack = Stack::start(Options::default()).await;
    let args = stack.ssh_args(&[], "echo hi; echo err >&2; exit 3");
    let out = run("ssh", &args, &[], None, None).await;
    assert_eq!(out.stdout, "hi\n", "{out:?}");
    assert!(out.stderr.contains("err"), "{out:?}");
    assert_eq!(out.status, Some(3), "{out:?}");
    assert_no_secret(&stack.secret, &out.texts("ssh"));
    let log = stack.sshd.log();
    assert!(log.contains("Accepted publickey for"), "sshd log: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_exec_with_token_as_password() {
    let stack = Stack::start(Options::default()).await;
    let askpass = stack.dir.path().join("askpass");
    fs::write(
        &askpass,
        format!("#!/bin/sh\necho '{}'\n", stack.policy().token),
    )
    .unwrap();
    fs::set_permissions(&askpass, fs::Permissions::from_mode(0o700)).unwrap();
    let extra = [
        "-o",
        "BatchMode=no",
        "-o",
        "PreferredAuthentications=password",
        "-o",
        "PubkeyAuthentication=no",
        "-o",
        "NumberOfPasswordPrompts=1",
    ];
    let env = [
        ("SSH_ASKPASS", askpass.display().to_string()),
        ("SSH_ASKPASS_REQUIRE", "force".to_string()),
        ("DISPLAY", ":0".to_string()),
    ];
    let out = run("ssh", &stack.ssh_args(&extra, "id -un"), &env, None, None).await;
    assert_eq!(out.status, Some(0), "{out:?}");
    assert_eq!(out.stdout.trim(), stack.sshd.user, "{out:?}");
    assert_no_secret(&stack.secret, &out.texts("ssh"));

    fs::write(&askpass, "#!/bin/sh\necho slt_wrong\n").unwrap();
    let out = run("ssh", &stack.ssh_args(&extra, "id -un"), &env, None, None).await;
    assert_eq!(out.status, Some(255), "a wrong token is refused: {out:?}");
    assert!(out.stderr.contains("Permission denied"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_put_and_get() {
    let stack = Stack::start(Options::default()).await;
    let local = stack.dir.path().join("upload.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(&local, &data).unwrap();
    let remote = stack.sshd.dir().join("uploaded.bin");
    let back = stack.dir.path().join("download.bin");
    let batch = format!(
        "put {} {}\nget {} {}\n",
        local.display(),
        remote.display(),
        remote.display(),
        back.display()
    );
    let mut args = vec![
        "-b".to_string(),
        "-".into(),
        "-P".into(),
        stack.addr.port().to_string(),
    ];
    args.extend(stack.ssh_options());
    args.push(format!("agent@{}", stack.addr.ip()));
    let out = run("sftp", &args, &[], Some(batch.as_bytes()), None).await;
    assert_eq!(out.status, Some(0), "{out:?}");
    assert_eq!(
        fs::read(&remote).unwrap(),
        data,
        "uploaded file on the real host"
    );
    assert_eq!(fs::read(&back).unwrap(), data, "downloaded file");
    assert_no_secret(&stack.secret, &out.texts("sftp"));
}

/// Runs git with `GIT_SSH_COMMAND` set to ssh through Sluice.
async fn git(stack: &Stack, args: &[&str], cwd: &Path) -> Output {
    let env = [
        ("GIT_SSH_COMMAND", stack.git_ssh_command()),
        ("GIT_AUTHOR_NAME", "Agent".to_string()),
        ("GIT_AUTHOR_EMAIL", "agent@example.invalid".to_string()),
        ("GIT_COMMITTER_NAME", "Agent".to_string()),
        ("GIT_COMMITTER_EMAIL", "agent@example.invalid".to_string()),
        ("GIT_CONFIG_NOSYSTEM", "1".to_string()),
        ("GIT_CONFIG_GLOBAL", "/dev/null".to_string()),
    ];
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let out = run("git", &args, &env, None, Some(cwd)).await;
    assert_eq!(out.status, Some(0), "git {args:?}: {out:?}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_clone_and_push_over_ssh() {
    let stack = Stack::start(Options::default()).await;
    let host_dir = stack.sshd.dir();
    let bare = host_dir.join("repo.git");
    let seed = host_dir.join("seed");
    git(
        &stack,
        &["init", "-q", "--bare", "-b", "main", bare.to_str().unwrap()],
        host_dir,
    )
    .await;
    git(
        &stack,
        &["init", "-q", "-b", "main", seed.to_str().unwrap()],
        host_dir,
    )
    .await;
    fs::write(seed.join("README"), "seed\n").unwrap();
    git(&stack, &["add", "README"], &seed).await;
    git(&stack, &["commit", "-q", "-m", "seed commit"], &seed).await;
    git(
        &stack,
        &["push", "-q", bare.to_str().unwrap(), "main"],
        &seed,
    )
    .await;

    let url = format!(
        "ssh://agent@{}:{}{}",
        stack.addr.ip(),
        stack.addr.port(),
        bare.display()
    );
    let work = stack.dir.path().join("work");
    let clone = git(
        &stack,
        &["clone", "-q", &url, work.to_str().unwrap()],
        stack.dir.path(),
    )
    .await;
    assert_eq!(fs::read_to_string(work.join("README")).unwrap(), "seed\n");
    fs::write(work.join("CHANGE"), "from the agent\n").unwrap();
    git(&stack, &["add", "CHANGE"], &work).await;
    git(&stack, &["commit", "-q", "-m", "agent commit"], &work).await;
    let push = git(&stack, &["push", "-q", "origin", "main"], &work).await;

    let log = git(
        &stack,
        &[
            "--git-dir",
            bare.to_str().unwrap(),
            "log",
            "--format=%s",
            "main",
        ],
        host_dir,
    )
    .await;
    assert_eq!(log.stdout, "agent commit\nseed commit\n");
    let mut texts = clone.texts("git clone");
    texts.extend(push.texts("git push"));
    assert_no_secret(&stack.secret, &texts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paramiko_exec() {
    let stack = Stack::start(Options::default()).await;
    let mut agent = Paramiko::connect(&stack).await;
    let first = agent.exec("echo one; exit 4").await;
    assert_eq!(first["stdout"], "one\n", "{first}");
    assert_eq!(first["status"], 4, "{first}");
    let second = agent.exec("printf two >&2").await;
    assert_eq!(second["stderr"], "two", "{second}");
    assert_eq!(second["status"], 0, "{second}");
    // A killed command has no exit status (paramiko: -1), only an
    // exit-signal, relayed and recorded.
    let killed = agent.exec("kill -TERM $$").await;
    assert_eq!(killed["status"], -1, "{killed}");
    let events = stack.events();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, SshEvent::ExitSignal { signal, .. } if signal == "TERM")),
        "{events:?}"
    );
    assert_no_secret(
        &stack.secret,
        &[("paramiko".into(), agent.transcript.clone())],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scp_both_ways_in_sftp_and_legacy_modes() {
    let stack = Stack::start(Options::default()).await;
    let local = stack.dir.path().join("big.bin");
    let data: Vec<u8> = (0..16u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    fs::write(&local, &data).unwrap();
    let mut texts = Vec::new();
    // Default scp speaks SFTP; -O is the original protocol, an exec of
    // `scp -t` / `scp -f` upstream.
    for mode in [None, Some("-O")] {
        let label = mode.unwrap_or("sftp mode");
        let remote = stack.sshd.dir().join(format!("copied{}.bin", texts.len()));
        let back = stack.dir.path().join(format!("back{}.bin", texts.len()));
        let host = format!("agent@{}", stack.addr.ip());
        for (from, to) in [
            (
                local.display().to_string(),
                format!("{host}:{}", remote.display()),
            ),
            (
                format!("{host}:{}", remote.display()),
                back.display().to_string(),
            ),
        ] {
            let mut args: Vec<String> = mode.map(String::from).into_iter().collect();
            args.extend(["-q".into(), "-P".into(), stack.addr.port().to_string()]);
            args.extend(stack.ssh_options());
            args.extend([from, to]);
            let out = run("scp", &args, &[], None, None).await;
            assert_eq!(out.status, Some(0), "scp {label}: {out:?}");
            texts.extend(out.texts(label));
        }
        assert!(
            fs::read(&remote).unwrap() == data,
            "{label}: upload differs"
        );
        assert!(
            fs::read(&back).unwrap() == data,
            "{label}: download differs"
        );
    }
    assert_no_secret(&stack.secret, &texts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_login_with_ecdsa_and_rsa_keys() {
    for user_key in [UserKey::Ecdsa, UserKey::Rsa] {
        let stack = Stack::start(Options {
            user_key,
            ..Options::default()
        })
        .await;
        let out = run("ssh", &stack.ssh_args(&[], "echo via $0"), &[], None, None).await;
        assert_eq!(out.status, Some(0), "{user_key:?}: {out:?}");
        assert!(out.stdout.starts_with("via "), "{user_key:?}: {out:?}");
        let log = stack.sshd.log();
        let algorithm = match user_key {
            UserKey::Ecdsa => "ECDSA",
            _ => "RSA",
        };
        assert!(
            log.lines()
                .any(|l| l.contains("Accepted publickey for") && l.contains(algorithm)),
            "{user_key:?}: sshd log: {log}"
        );
        assert_no_secret(&stack.secret, &out.texts("ssh"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pty_exec_gets_locale_variables_only() {
    let stack = Stack::start(Options::default()).await;
    // pty-req and exec want replies, env does not: the replies must still
    // reach ssh in order. The upstream sshd accepts any variable; Sluice
    // passes only LANG and LC_*.
    let extra = ["-tt", "-o", "SendEnv=LANG LC_TIME SLUICE_TEST_LEAK"];
    let env = [
        ("LANG", "C.UTF-8".to_string()),
        ("LC_TIME", "C".to_string()),
        ("SLUICE_TEST_LEAK", "leaked".to_string()),
    ];
    let command = "echo lang=$LANG time=$LC_TIME leak=${SLUICE_TEST_LEAK:-none}; tty";
    let out = run("ssh", &stack.ssh_args(&extra, command), &env, None, None).await;
    assert_eq!(out.status, Some(0), "{out:?}");
    assert!(
        out.stdout.contains("lang=C.UTF-8 time=C leak=none"),
        "{out:?}"
    );
    assert!(out.stdout.contains("/dev/pts/"), "a pty upstream: {out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_login_with_a_password() {
    // The password upstream is another Sluice: it accepts its token as
    // password and logs in to its sshd with a key.
    let inner = Stack::start(Options::default()).await;
    let outer = Stack::start(Options {
        hop: Some(Hop {
            addr: inner.addr,
            host_key: inner.host_key.clone(),
            password: inner.policy().token.clone(),
        }),
        ..Options::default()
    })
    .await;
    let out = run(
        "ssh",
        &outer.ssh_args(&[], "echo two hops"),
        &[],
        None,
        None,
    )
    .await;
    assert_eq!(out.stdout, "two hops\n", "{out:?}");
    assert_eq!(out.status, Some(0), "{out:?}");
    let events = inner.events();
    assert!(
        events.iter().any(|e| matches!(e, SshEvent::Started { operation: Operation::Exec { command }, .. } if command == "echo two hops")),
        "{events:?}"
    );
    let mut texts = out.texts("ssh");
    texts.push(("outer records".into(), format!("{:?}", outer.events())));
    assert_no_secret(&inner.policy().token, &texts);
    assert_no_secret(&inner.secret, &texts);
}
