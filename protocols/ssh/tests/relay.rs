//! The SSH handler between real OpenSSH, git and paramiko clients and a real
//! OpenSSH server (`tests/support/sshd.rs`), with a test gate. Run as root
//! (sshd is started as the test user; `cargo xtask test` runs as root).
mod support;

use support::{assert_no_secret, run, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_exec_with_placeholder_key() {
    let stack = Stack::start(&[], None, None).await;
    let mut args = stack.ssh_options();
    args.extend(["-p".into(), stack.addr.port().to_string(), format!("agent@{}", stack.addr.ip()), "echo hi; echo err >&2; exit 3".into()]);
    let out = run("ssh", &args, &[], None, None).await;
    assert_eq!(out.stdout, "hi\n", "{out:?}");
    assert!(out.stderr.contains("err"), "{out:?}");
    assert_eq!(out.status, Some(3), "{out:?}");
    assert_no_secret(&stack.sshd.user_key_pem, &out.texts("ssh"));
    let log = stack.sshd.log();
    assert!(log.contains("Accepted publickey for"), "sshd log: {log}");
}
