//! `cargo xtask demo`: one real request, agent → eBPF → Sluice → HTTPS
//! upstream, with the placeholder token swapped for the real key; then a
//! real psql session against PostgreSQL and a mariadb CLI session against
//! MariaDB, each logged in with a token, with a masked column and a denied
//! DROP; and a `git clone` over SSH from a real sshd with a placeholder
//! key, Sluice logging in upstream with the real key.
//!
//! Everything runs on loopback in a temp dir with its own redis-server,
//! cgroup and bpffs pins, and is removed at the end.
use std::{os::unix::fs::PermissionsExt, process::ExitCode};

use anyhow::{bail, Context, Result};
use sluice_tests::{
    assert_no_secret, sha256_hex,
    sshd::{assert_no_private_key, bare_repo},
    ServiceSpec, Stack,
};

const SERVICE: &str = "payments-api";
const HOST: &str = "api.payments.test";
const DB: &str = "billing-db";
const DB_HOST: &str = "db.internal";
const MY: &str = "orders-db";
const MY_HOST: &str = "mysql.internal";
const GIT: &str = "git";
const GIT_HOST: &str = "git.internal";

fn main() -> ExitCode {
    match demo() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn step(n: u32, text: &str) {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        println!("\n\x1b[1m{n}. {text}\x1b[0m");
    } else {
        println!("\n{n}. {text}");
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("   {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn demo() -> Result<()> {
    println!("Sluice demo: an agent calls an HTTPS API with a placeholder token; the API gets the real key.");

    step(1, "Test fixtures: redis-server, an HTTPS upstream for api.payments.test, a PostgreSQL server for db.internal, a MariaDB server for mysql.internal and an OpenSSH sshd for git.internal, each on its own 127.0.0.x");
    let mut stack = Stack::builder("run")
        .agent("demo-agent")
        .cgroup_prefix("sluice-demo")
        .service(ServiceSpec::https(SERVICE, HOST))
        .service(
            ServiceSpec::postgres(DB, DB_HOST)
                .extra(r#"deny = ["DROP", "TRUNCATE", "ALTER", "DELETE_WITHOUT_WHERE", "DO"]"#)
                .extra(r#"mask = ["ssn"]"#),
        )
        .service(
            ServiceSpec::mysql(MY, MY_HOST)
                .extra(r#"deny = ["DROP", "TRUNCATE", "DELETE_WITHOUT_WHERE", "LOAD_DATA"]"#)
                .extra(r#"mask = ["ssn"]"#),
        )
        .service(ServiceSpec::ssh(GIT, GIT_HOST))
        .prepare()
        .context("preparing the demo environment")?;
    let up_addr = stack.upstream(SERVICE).addr();
    let db_addr = stack.postgres(DB).addr();
    println!("   redis-server on {}", stack.redis.addr());
    println!(
        "   upstream https://{HOST}:{} on {}",
        up_addr.port(),
        up_addr.ip()
    );
    println!(
        "   PostgreSQL 15 (initdb in a temp dir) on {db_addr}: database billing, role billing, table customers(id, name, ssn)"
    );
    println!(
        "   MariaDB on {}; sshd (Debian's, own config and host key) on {}",
        stack.mariadb(MY).addr(),
        stack.sshd(GIT).addr
    );

    step(2, "sluice run --config <this file>: agent demo-agent in its own cgroup, services payments-api, billing-db, orders-db and git");
    println!(
        "{}",
        indent(&std::fs::read_to_string(&stack.sluice.config_path)?)
    );
    stack.sluice.start().context("starting sluice run")?;
    let agent = stack.sluice.agent(stack.agent()).clone();
    println!(
        "   sluice run (pid {}) is up; eBPF attached to cgroup {}",
        stack.sluice.pid().unwrap_or(0),
        agent.rel
    );

    let secret = stack.secret(SERVICE).to_string();
    let secret_name = format!("{SERVICE}-key");
    step(
        3,
        &format!("sluice secret put {secret_name}   (value on stdin; the daemon picks it up live)"),
    );
    stack.sluice.secret_put(&secret_name, &secret)?;
    println!(
        "   stored {} bytes, sealed in {}",
        secret.len(),
        stack.sluice.state_dir.join("vault.sealed").display()
    );

    step(
        4,
        "sluice token issue --agent demo-agent --service payments-api --ttl 1h",
    );
    let token = stack.token(SERVICE)?;
    println!("   {token}   <- the only credential the agent ever holds");

    step(
        5,
        "The agent runs a real curl inside its cgroup via sluice exec",
    );
    let ca = stack.sluice.ca_cert_path()?;
    let url = stack.url(SERVICE, "/v1/charges");
    println!(
        "   $ sluice exec --agent demo-agent -- curl --cacert {} --resolve {HOST}:{}:{} \\\n       -H 'Authorization: Bearer {token}' {url}",
        ca.display(),
        up_addr.port(),
        up_addr.ip()
    );
    let res = stack.curl(&["-H", &format!("Authorization: Bearer {token}"), &url])?;
    if res.exit != 0 {
        bail!(
            "curl failed (exit {}): {}\n--- sluice run ---\n{}",
            res.exit,
            res.stderr.trim(),
            stack.sluice.daemon_log()
        );
    }
    println!(
        "   HTTP {} (HTTP/{}), peer {}",
        res.status, res.http_version, res.remote_ip
    );
    println!("   {}", res.body);
    if res.status != 200 {
        bail!("expected 200 from the upstream, got {}", res.status);
    }

    step(6, "What the upstream received");
    let got = stack
        .upstream(SERVICE)
        .wait_for(1, std::time::Duration::from_secs(10))?
        .remove(0);
    let auth = got.header("authorization").unwrap_or("").to_string();
    let real = auth.strip_prefix("Bearer ").unwrap_or("");
    let digest = sha256_hex(real);
    println!("   {} {} {}", got.method, got.target, got.version);
    println!(
        "   Authorization: Bearer <secret, {} bytes, sha256 {}…>",
        real.len(),
        &digest[..12]
    );
    if real != secret {
        bail!("the upstream did not receive the vault secret");
    }
    if got.all_text().contains("slt_") {
        bail!("the placeholder token reached the upstream");
    }
    println!("   = the vault secret ✓   (and no slt_ token reached the upstream ✓)");

    step(7, "The session record");
    let request = stack.sluice.wait_for_event(
        "the request event",
        std::time::Duration::from_secs(10),
        |e| e["event"] == "request" && e["service"] == SERVICE,
    )?;
    let session = request["session"].as_str().unwrap_or_default().to_string();
    println!("   $ sluice sessions show {session}");
    let shown = stack
        .sluice
        .cli_output(&["sessions", "show", &session], None)?;
    if shown.status.success() {
        println!(
            "{}",
            indent(String::from_utf8_lossy(&shown.stdout).trim_end())
        );
    } else {
        println!(
            "   (sessions show failed: {}); the JSON lines:",
            String::from_utf8_lossy(&shown.stderr).trim()
        );
        for e in stack.sluice.session_events(&session)? {
            println!("   {e}");
        }
    }

    postgres_session(&stack)?;
    mysql_session(&stack)?;
    git_clone(&stack)?;

    step(17, "Leak check");
    let texts = stack.sluice.all_output_text();
    assert_no_secret(&secret, &texts);
    assert_no_secret(stack.secret(DB), &texts);
    assert_no_secret(stack.secret(MY), &texts);
    assert_no_private_key(stack.secret(GIT), &texts);
    println!("   neither the API key, a database password nor a line of the SSH private key appears in any agent output, sluice log, session record or state file ✓");

    step(18, "Cleanup");
    let bpf_dir = stack.sluice.bpf_dir.clone();
    let report = stack.sluice.teardown();
    if !report.errors.is_empty() {
        bail!("teardown problems: {:?}", report.errors);
    }
    println!(
        "   sluice stopped, `sluice uninstall` {}, pins {} removed, cgroup {} removed",
        if report.uninstall_ok { "ok" } else { "FAILED" },
        bpf_dir.display(),
        agent.rel
    );
    drop(stack);
    println!("\nDone.");
    Ok(())
}

/// Steps 8–12: the PostgreSQL half of the demo.
fn postgres_session(stack: &Stack) -> Result<()> {
    let pg = stack.postgres(DB);
    let secret_name = format!("{DB}-key");
    step(
        8,
        &format!("sluice secret put {secret_name}   (role billing's real password, on stdin)"),
    );
    stack.sluice.secret_put(&secret_name, stack.secret(DB))?;
    println!(
        "   stored {} bytes; the agent never sees it",
        stack.secret(DB).len()
    );

    step(
        9,
        "sluice token issue --agent demo-agent --service billing-db --ttl 1h",
    );
    let token = stack.token(DB)?;
    println!("   {token}   <- the agent's PostgreSQL password");

    step(
        10,
        "The agent runs a real psql inside its cgroup: SELECT, DROP, SELECT in one session",
    );
    let conninfo = stack.pg_conninfo(DB, &token, "sslmode=prefer");
    let statements = [
        "SELECT * FROM customers ORDER BY id",
        "DROP TABLE customers",
        "SELECT count(*) FROM customers",
    ];
    println!("   $ sluice exec --agent demo-agent -- psql \"{conninfo}\" -e \\");
    println!(
        "       -c '\\set VERBOSITY verbose' {}",
        statements.map(|s| format!("-c '{s}'")).join(" ")
    );
    let mut argv = vec![
        "sh",
        "-c",
        r#"exec psql -X -w -d "$0" -e -P 'null=(null)' -c '\set VERBOSITY verbose' -c "$1" -c "$2" -c "$3" 2>&1"#,
        &conninfo,
    ];
    argv.extend(statements);
    let out = stack.sluice.exec(stack.agent(), &argv)?;
    let transcript = String::from_utf8_lossy(&out.stdout).into_owned();
    if transcript.trim().is_empty() {
        bail!(
            "psql printed nothing: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    println!("{}", indent(transcript.trim_end()));
    if !transcript.contains("****") || transcript.contains("123-45-6789") {
        bail!("the ssn column was not masked");
    }
    if !transcript.contains("ERROR:  42501") {
        bail!("DROP TABLE was not denied with 42501");
    }
    if !transcript.contains("     3\n(1 row)") {
        bail!("the SELECT after the denial did not return the 3 customers");
    }
    println!("   ssn masked ✓   DROP denied with 42501 ✓   the session went on ✓");

    step(
        11,
        "The table is still there (asked directly, as the superuser, outside the agent's cgroup)",
    );
    let count = pg.customers_count()?;
    println!(
        "   customers: {}",
        count.map_or("gone!".to_string(), |n| format!("{n} rows"))
    );
    if count != Some(3) {
        bail!("the customers table was changed");
    }

    step(12, "The session record");
    print_session_record(stack, DB)
}

/// Waits until the first session of `service` has closed, then prints its
/// record file's path and lines.
fn print_session_record(stack: &Stack, service: &str) -> Result<()> {
    let open = stack.sluice.wait_for_event(
        &format!("the {service} session"),
        std::time::Duration::from_secs(10),
        |e| e["event"] == "open" && e["service"] == service,
    )?;
    let session = open["session"].as_str().unwrap_or_default().to_string();
    stack.sluice.wait_for_event(
        &format!("the close of the {service} session"),
        std::time::Duration::from_secs(10),
        |e| e["event"] == "close" && e["session"] == session.as_str(),
    )?;
    println!(
        "   {}",
        stack
            .sluice
            .log_dir
            .join("sessions")
            .join(format!("{session}.jsonl"))
            .display()
    );
    for e in stack.sluice.session_events(&session)? {
        println!("   {e}");
    }
    Ok(())
}

/// Step 13: the MySQL half of the demo, in one step.
fn mysql_session(stack: &Stack) -> Result<()> {
    step(
        13,
        "MySQL: secret put orders-db-key, token issue, then a real mariadb CLI: SELECT, DROP, SELECT",
    );
    stack
        .sluice
        .secret_put(&format!("{MY}-key"), stack.secret(MY))?;
    let token = stack.token(MY)?;
    let port = format!("--port={}", stack.mariadb(MY).addr().port());
    let password = format!("--password={token}");
    let sql = "SELECT * FROM customers ORDER BY id;\nDROP TABLE customers;\nSELECT COUNT(*) FROM customers;";
    println!(
        "   $ sluice exec --agent demo-agent -- mariadb -h {MY_HOST} {port} -u agent -p<token> --force -t -D billing <<< '…'"
    );
    let out = stack.sluice.exec(
        stack.agent(),
        &[
            "sh",
            "-c",
            r#"printf '%s\n' "$3" | mariadb --host "$0" "$1" --user=agent "$2" --skip-ssl --force -t -v -D billing 2>&1"#,
            &stack.mariadb(MY).addr().ip().to_string(),
            &port,
            &password,
            sql,
        ],
    )?;
    let transcript = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{}", indent(transcript.trim_end()));
    if !transcript.contains("****") || transcript.contains("123-45-6789") {
        bail!("the ssn column was not masked");
    }
    if !transcript.contains("ERROR 1227 (42000)") {
        bail!("DROP TABLE was not denied with 1227");
    }
    let count = stack
        .mariadb(MY)
        .root_sql("SELECT COUNT(*) FROM billing.customers")?;
    println!(
        "   customers (asked as root, outside the agent): {}",
        count.trim()
    );
    if count.trim() != "3" {
        bail!("the customers table was changed");
    }
    if !transcript.contains("|        3 |") {
        bail!("the SELECT after the denial did not return the 3 customers");
    }
    println!("   ssn masked ✓   DROP denied with 1227 ✓   the session went on ✓   table intact ✓");
    Ok(())
}

/// Steps 14–16: the SSH part of the demo, a `git clone` as the agent with
/// a placeholder key; Sluice logs in to the sshd with the real key.
fn git_clone(stack: &Stack) -> Result<()> {
    let sshd = stack.sshd(GIT);
    let bare = bare_repo(sshd.dir());
    let secret_name = format!("{GIT}-key");
    step(
        14,
        &format!(
            "sluice secret put {secret_name}   (the OpenSSH private key sshd accepts, on stdin)"
        ),
    );
    stack.sluice.secret_put(&secret_name, stack.secret(GIT))?;
    println!(
        "   stored {} bytes; the sshd serves the bare repository {}",
        stack.secret(GIT).len(),
        bare.display()
    );

    step(
        15,
        "sluice token issue --agent demo-agent --service git --ssh-key --ttl 1h; sluice ssh known-hosts",
    );
    let dir = stack.dir().join("agent-ssh");
    std::fs::create_dir_all(&dir)?;
    let pem = stack.sluice.cli(&[
        "token",
        "issue",
        "--agent",
        stack.agent(),
        "--service",
        GIT,
        "--ssh-key",
        "--ttl",
        "1h",
    ])?;
    let key = dir.join("id_placeholder");
    std::fs::write(&key, &pem)?;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    println!(
        "   {}   <- a fresh placeholder key ({} lines), written to {}",
        pem.lines().next().unwrap_or_default(),
        pem.lines().count(),
        key.display()
    );
    let known = stack.sluice.cli(&["ssh", "known-hosts"])?;
    let known_hosts = dir.join("known_hosts");
    std::fs::write(&known_hosts, &known)?;
    println!("   $ sluice ssh known-hosts > {}", known_hosts.display());
    println!("{}", indent(known.trim_end()));

    step(
        16,
        "The agent runs a real git clone over ssh inside its cgroup: only Sluice's known_hosts, StrictHostKeyChecking=yes, only the placeholder key",
    );
    let git_ssh = format!(
        "ssh -F /dev/null -o UserKnownHostsFile={} -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes -o BatchMode=yes -o IdentitiesOnly=yes -o IdentityAgent=none -i {}",
        known_hosts.display(),
        key.display()
    );
    let url = format!(
        "ssh://agent@{GIT_HOST}:{}{}",
        sshd.addr.port(),
        bare.display()
    );
    let dest = dir.join("clone");
    let dest = dest.to_str().context("utf-8 path")?;
    println!("   $ sluice exec --agent demo-agent -- env GIT_SSH_COMMAND='{git_ssh}' \\");
    println!(
        "       sh -c 'git clone {url} {dest} && git -C {dest} log --oneline && cat {dest}/README'"
    );
    let out = stack.agent_with_hosts(
        &[("GIT_SSH_COMMAND", &git_ssh)],
        &[
            "sh",
            "-c",
            r#"git clone "$0" "$1" 2>&1 && git -C "$1" log --oneline && cat "$1/README""#,
            &url,
            dest,
        ],
    )?;
    let transcript = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{}", indent(transcript.trim_end()));
    if !out.status.success() {
        bail!(
            "git clone failed: {}\n--- sluice run ---\n{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            stack.sluice.daemon_log()
        );
    }
    if std::fs::read_to_string(std::path::Path::new(dest).join("README"))?
        != "cloned through sluice\n"
    {
        bail!("the clone does not have the repository's README");
    }
    let accepted = format!("Accepted publickey for {}", sshd.user);
    if !sshd.log().contains(&accepted) {
        bail!("the sshd logged no login with the real key");
    }
    println!(
        "   cloned ✓   the sshd logged \"{accepted} …\": Sluice logged in with the real key ✓"
    );
    println!("   the session record:");
    print_session_record(stack, GIT)
}
