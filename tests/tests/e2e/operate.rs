//! Operating a running gateway: SIGHUP reloads policy into open sessions
//! and refuses a broken config; the metrics listener counts traffic and is
//! out of the agents' reach.
use std::{io::Write, net::TcpListener};

use serde_json::Value;
use sluice_tests::{poll, process, Stack};

use crate::{billing_db, Lines, DB, DB_DENY, PG_CLIENT, WAIT};

/// Sends SIGHUP to the daemon and waits until its log shows the `n`-th
/// outcome line containing `marker`.
fn reload(stack: &Stack, marker: &str, n: usize) {
    let pid = stack.sluice.pid().expect("daemon running");
    process::signal(pid, libc::SIGHUP);
    poll(marker, WAIT, || {
        (stack.sluice.daemon_log().matches(marker).count() >= n).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}; daemon log:\n{}", stack.sluice.daemon_log()));
}

fn rewrite_config(stack: &Stack, edit: impl FnOnce(String) -> String) {
    let path = &stack.sluice.config_path;
    let text = std::fs::read_to_string(path).unwrap();
    std::fs::write(path, edit(text)).unwrap();
}

#[test]
fn sighup_adding_a_deny_rule_refuses_the_next_select_of_an_open_psql_session_which_stays_open() {
    let stack = Stack::builder("op-reload")
        .service(billing_db())
        .start()
        .unwrap();
    let token = stack.token(DB).unwrap();
    let conninfo = stack.pg_conninfo(DB, &token, "sslmode=disable");
    let argv = [
        PG_CLIENT,
        &conninfo,
        "query:SELECT count(*) FROM customers",
        "wait",
        "query:SELECT count(*) FROM customers",
        "wait",
        "query:SELECT count(*) FROM customers",
        "closed",
    ];
    let mut pg = stack.sluice.exec_spawn(stack.agent(), &argv).unwrap();
    let mut stdin = pg.stdin.take().unwrap();
    let lines = Lines::new(pg.stdout.take().unwrap());
    let before = lines.next("the statement before the reload");
    assert!(before.contains(r#""rows":[[3]]"#), "{before}");
    assert!(lines.next("waiting").contains("waiting"));

    // A broken config is refused and the old one keeps running.
    let good = std::fs::read_to_string(&stack.sluice.config_path).unwrap();
    rewrite_config(&stack, |t| t + "\nthis is not toml = [\n");
    reload(&stack, "reload refused", 1);
    std::fs::write(&stack.sluice.config_path, &good).unwrap();

    // The valid reload adds SELECT to the service's deny list.
    let with_select = DB_DENY.replace(r#"["DROP""#, r#"["SELECT", "DROP""#);
    rewrite_config(&stack, |t| t.replace(DB_DENY, &with_select));
    reload(&stack, "config reloaded", 1);
    stdin.write_all(b"go\n").unwrap();
    let refused: Value =
        serde_json::from_str(&lines.next("the statement after the reload")).unwrap();
    assert_eq!(refused["error"]["code"], "42501", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("SELECT"),
        "{refused}"
    );

    // Back to the old rules: the same session, still open, works again.
    std::fs::write(&stack.sluice.config_path, &good).unwrap();
    reload(&stack, "config reloaded", 2);
    assert!(lines.next("waiting").contains("waiting"));
    stdin.write_all(b"go\n").unwrap();
    let after = lines.next("the statement after restoring");
    assert!(after.contains(r#""rows":[[3]]"#), "{after}");
    let closed: Value = serde_json::from_str(&lines.next("closed")).unwrap();
    assert_eq!(
        closed["closed"], false,
        "the session stayed open across both reloads"
    );
    drop(stdin);
    let _ = process::wait_timeout(&mut pg, WAIT);
    assert!(stack
        .sluice
        .daemon_log()
        .contains("reload refused; the previous config keeps running"));
    stack.assert_no_secret_leaked();
}

#[test]
fn metrics_count_sessions_and_statements_and_agents_cannot_reach_the_listener() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let stack = Stack::builder("op-metrics")
        .gateway(&format!("metrics = \"127.0.0.1:{port}\""))
        .service(billing_db())
        .start()
        .unwrap();
    let scrape = || -> String {
        let out = std::process::Command::new("curl")
            .args(["-sS", "-m", "5"])
            .arg(format!("http://127.0.0.1:{port}/metrics"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "scrape from the host: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let counter = |text: &str, name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .map_or(0.0, |v| v.parse().unwrap())
    };
    let before = scrape();
    let token = stack.token(DB).unwrap();
    let conninfo = stack.pg_conninfo(DB, &token, "sslmode=disable");
    let res = stack
        .psql(
            &conninfo,
            &[
                "-At",
                "-c",
                "SELECT ssn FROM customers ORDER BY id",
                "-c",
                "DROP TABLE customers",
            ],
        )
        .unwrap();
    assert!(res.stdout.contains("****"), "{}", res.stdout);
    let after = scrape();
    let sessions = format!("sluice_sessions_total{{service=\"{DB}\"}}");
    let statements = format!("sluice_statements_total{{service=\"{DB}\"}}");
    let denials = format!("sluice_denials_total{{service=\"{DB}\"}}");
    let masked = format!("sluice_masked_values_total{{service=\"{DB}\"}}");
    assert_eq!(
        counter(&after, &sessions) - counter(&before, &sessions),
        1.0,
        "{after}"
    );
    assert_eq!(
        counter(&after, &statements) - counter(&before, &statements),
        2.0,
        "{after}"
    );
    assert_eq!(
        counter(&after, &denials) - counter(&before, &denials),
        1.0,
        "{after}"
    );
    assert_eq!(
        counter(&after, &masked) - counter(&before, &masked),
        2.0,
        "{after}"
    );
    assert!(after.contains("sluice_ebpf_tracked_connections"), "{after}");

    let agent = stack
        .agent_tcp_connect(format!("127.0.0.1:{port}").parse().unwrap())
        .unwrap();
    assert_eq!(
        agent,
        Err("EPERM".to_string()),
        "egress deny keeps the agent off the metrics listener"
    );
}
