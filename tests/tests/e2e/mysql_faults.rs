//! MySQL / MariaDB when things go wrong (issue 12): a bad token gets
//! 1045/`28000`; a token revoked mid-session stops the session's next
//! statement once the revocation's pub/sub message arrived, with 1045; `SELECT SLEEP(30)` interrupted by the `mariadb` CLI's Ctrl-C
//! (SIGINT to the CLI, which sends `KILL QUERY <Sluice's connection id>`
//! from a second connection) ends within 2 s, while another id is refused;
//! `LOAD DATA LOCAL INFILE` cannot read an agent file; a held `DELETE`
//! runs once `sluice approve`d; a stopped upstream is named in an error
//! within 3 s. The real password appears nowhere.
use std::{
    io::{Read, Write},
    time::{Duration, Instant},
};

use sluice_tests::{poll, ServiceSpec, Stack};

use super::mysql::{customers, mariadb, mariadb_argv, python, MY, MY_HOST};
use crate::{events, sessions_of, Lines, WAIT};

/// `orders-db` whose DELETEs need approval, DROP and DELETE without WHERE
/// denied, `ssn` masked; `LOAD_DATA` is not denied, so that the upstream
/// itself must refuse a local file.
fn faults_stack(label: &str) -> Stack {
    Stack::builder(label)
        .gateway(r#"approval_timeout = "60s""#)
        .service(
            ServiceSpec::mysql(MY, MY_HOST)
                .extra(r#"deny = ["DROP", "DELETE_WITHOUT_WHERE"]"#)
                .extra(r#"approve = ["DELETE"]"#)
                .extra(r#"mask = ["ssn"]"#),
        )
        .start()
        .unwrap()
}

/// The pid of the process named `name` among the descendants of `root`.
fn descendant_named(root: u32, name: &str) -> Option<u32> {
    let mut family = vec![root];
    let mut found = None;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid …
        let Some((comm, rest)) = stat.split_once(" (").and_then(|(_, r)| r.rsplit_once(") "))
        else {
            continue;
        };
        let Some(ppid) = rest.split(' ').nth(1).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        // /proc lists pids in ascending order, so parents come first.
        if family.contains(&ppid) {
            family.push(pid);
            if comm == name {
                found = Some(pid);
            }
        }
    }
    found
}

#[test]
fn bad_and_revoked_tokens_get_1045_and_load_data_local_reads_nothing() {
    let stack = faults_stack("mysql-tokens");
    let (ok, out) = mariadb(
        &stack,
        "slt_00000000000000000000000000000000bogus",
        &["--skip-ssl"],
        "SELECT 1",
    );
    assert!(
        !ok && out.contains("1045")
            && out.contains("28000")
            && out.contains("invalid sluice token"),
        "{out}"
    );

    let token = stack.token(MY).unwrap();
    let (ok, out) = mariadb(
        &stack,
        &token,
        &["--skip-ssl", "--local-infile=1"],
        "LOAD DATA LOCAL INFILE '/etc/passwd' INTO TABLE customers",
    );
    assert!(!ok, "LOAD DATA LOCAL must fail: {out}");
    assert_eq!(customers(&stack), "3");
    assert!(
        !stack.mariadb(MY).log().contains("root:x:0:0"),
        "the file reached the upstream"
    );

    // Revoked while connected: the next statement is refused.
    let script = format!(
        "import sys, time, pymysql\n\
         p = pymysql.connect(host={MY_HOST:?}, port={port}, user='agent', password=sys.argv[1], database='billing')\n\
         c = p.cursor(); c.execute('SELECT 1'); print('ready', flush=True)\n\
         sys.stdin.readline()\n\
         for n in range(40):\n    try:\n        c.execute('SELECT 2')\n    except pymysql.MySQLError as e:\n        print('refused', e.args[0], 'after', n, flush=True); break\n    time.sleep(0.05)\n\
         else:\n    print('still ok', flush=True)\n",
        port = stack.mariadb(MY).addr().port()
    );
    let mut child = stack
        .spawn_agent_with_hosts(&[], &["python3", "-c", &script, &token])
        .unwrap();
    let lines = Lines::new(child.stdout.take().unwrap());
    assert_eq!(lines.next("connected"), "ready");
    stack.sluice.token_revoke(&token).unwrap();
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    // The gateway learns of a revocation by Redis pub/sub: the statements
    // sent before that message arrives (a few ms) may still pass.
    let answer = lines.next("the statement after revocation");
    assert!(answer.starts_with("refused 1045 after"), "{answer}");
    child.wait().unwrap();
    stack.sluice.capture_text("revocation agent", &answer);
    stack.assert_no_secret_leaked();
}

#[test]
fn ctrl_c_kills_the_query_and_a_held_delete_runs_once_approved() {
    let stack = faults_stack("mysql-cancel");
    let token = stack.token(MY).unwrap();
    let mut argv = vec![
        "sh".to_string(),
        "-c".into(),
        r#"exec "$@" 2>&1"#.into(),
        "sh".into(),
    ];
    argv.extend(mariadb_argv(
        &stack,
        &token,
        &["--skip-ssl", "-e", "SELECT SLEEP(30)"],
    ));
    let mut child = stack.spawn_agent_with_hosts(&[], &argv).unwrap();
    let db = stack.mariadb(MY);
    poll("SELECT SLEEP(30) to run upstream", WAIT, || {
        let n = db
            .root_sql("SELECT COUNT(*) FROM information_schema.processlist WHERE info = 'SELECT SLEEP(30)'")
            .ok()?;
        (n.trim() == "1").then_some(())
    })
    .unwrap();
    let cli = descendant_named(child.id(), "mariadb").expect("the mariadb CLI's pid");
    let interrupted = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-INT", &cli.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child.wait().unwrap();
    let took = interrupted.elapsed();
    stack.sluice.capture_text("interrupted CLI", &out);
    assert!(
        took < Duration::from_secs(2),
        "SELECT SLEEP(30) should end within 2 s of Ctrl-C, took {took:?}: {out}"
    );
    assert!(out.contains("1317"), "the query was interrupted: {out}");

    // An id Sluice did not give this agent is refused.
    let (ok, out) = python(
        &stack,
        &token,
        "p = pymysql.connect(host=HOST, port=PORT, user='agent', password=TOKEN)\n\
         try:\n    p.cursor().execute('KILL QUERY 4242')\nexcept pymysql.MySQLError as e:\n    print('foreign', e.args[0])\n",
    );
    assert!(ok && out.contains("foreign 1094"), "{out}");

    // A DELETE is held until approved.
    let argv = mariadb_argv(
        &stack,
        &token,
        &["--skip-ssl", "-e", "DELETE FROM customers WHERE id = 3"],
    );
    let mut held = stack.spawn_agent_with_hosts(&[], &argv).unwrap();
    let pending = stack
        .sluice
        .wait_for_pending("DELETE FROM customers WHERE id = 3", WAIT)
        .unwrap();
    assert_eq!(customers(&stack), "3", "nothing runs while held");
    stack
        .sluice
        .approve(pending["id"].as_str().unwrap())
        .unwrap();
    let status = held.wait().unwrap();
    assert!(status.success(), "the approved DELETE completes");
    assert_eq!(customers(&stack), "2");
    let all: Vec<_> = sessions_of(&stack, MY).into_iter().flatten().collect();
    assert_eq!(events(&all, "approved").len(), 1);
    stack.assert_no_secret_leaked();
}

#[test]
fn a_stopped_upstream_is_named_within_3_s() {
    let mut stack = faults_stack("mysql-down");
    let token = stack.token(MY).unwrap();
    stack.mariadb_mut(MY).stop();
    let started = Instant::now();
    let (ok, out) = mariadb(&stack, &token, &["--skip-ssl"], "SELECT 1");
    let took = started.elapsed();
    assert!(!ok, "{out}");
    assert!(
        out.contains("1105") && out.contains(MY_HOST),
        "ERR 1105 naming the upstream: {out}"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
    stack.assert_no_secret_leaked();
}
