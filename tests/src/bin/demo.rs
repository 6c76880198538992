//! `cargo xtask demo`: one real request, agent → eBPF → Sluice → HTTPS
//! upstream, with the placeholder token swapped for the real key.
//!
//! Everything runs on loopback in a temp dir with its own redis-server,
//! cgroup and bpffs pins, and is removed at the end.
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use sluice_tests::{assert_no_secret, sha256_hex, ServiceSpec, Stack};

const SERVICE: &str = "payments-api";
const HOST: &str = "api.payments.test";

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
    text.lines().map(|l| format!("   {l}")).collect::<Vec<_>>().join("\n")
}

fn demo() -> Result<()> {
    println!("Sluice demo: an agent calls an HTTPS API with a placeholder token; the API gets the real key.");

    step(1, "Test fixtures: redis-server, an HTTPS upstream for api.payments.test on 127.0.0.x (own test CA)");
    let mut stack = Stack::builder("run")
        .agent("demo-agent")
        .cgroup_prefix("sluice-demo")
        .service(ServiceSpec::https(SERVICE, HOST))
        .prepare()
        .context("preparing the demo environment")?;
    let up_addr = stack.upstream(SERVICE).addr();
    println!("   redis-server on {}", stack.redis.addr());
    println!("   upstream https://{HOST}:{} on {}", up_addr.port(), up_addr.ip());

    step(2, "sluice run --config <this file>: agent demo-agent in its own cgroup, service payments-api");
    println!("{}", indent(&std::fs::read_to_string(&stack.sluice.config_path)?));
    stack.sluice.start().context("starting sluice run")?;
    let agent = stack.sluice.agent(stack.agent()).clone();
    println!("   sluice run (pid {}) is up; eBPF attached to cgroup {}", stack.sluice.pid().unwrap_or(0), agent.rel);

    let secret = stack.secret(SERVICE).to_string();
    let secret_name = format!("{SERVICE}-key");
    step(3, &format!("sluice secret put {secret_name}   (value on stdin; the daemon picks it up live)"));
    stack.sluice.secret_put(&secret_name, &secret)?;
    println!("   stored {} bytes, sealed in {}", secret.len(), stack.sluice.state_dir.join("vault.sealed").display());

    step(4, "sluice token issue --agent demo-agent --service payments-api --ttl 1h");
    let token = stack.token(SERVICE)?;
    println!("   {token}   <- the only credential the agent ever holds");

    step(5, "The agent runs a real curl inside its cgroup via sluice exec");
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
        bail!("curl failed (exit {}): {}\n--- sluice run ---\n{}", res.exit, res.stderr.trim(), stack.sluice.daemon_log());
    }
    println!("   HTTP {} (HTTP/{}), peer {}", res.status, res.http_version, res.remote_ip);
    println!("   {}", res.body);
    if res.status != 200 {
        bail!("expected 200 from the upstream, got {}", res.status);
    }

    step(6, "What the upstream received");
    let got = stack.upstream(SERVICE).wait_for(1, std::time::Duration::from_secs(10))?.remove(0);
    let auth = got.header("authorization").unwrap_or("").to_string();
    let real = auth.strip_prefix("Bearer ").unwrap_or("");
    let digest = sha256_hex(real);
    println!("   {} {} {}", got.method, got.target, got.version);
    println!("   Authorization: Bearer <secret, {} bytes, sha256 {}…>", real.len(), &digest[..12]);
    if real != secret {
        bail!("the upstream did not receive the vault secret");
    }
    if got.all_text().contains("slt_") {
        bail!("the placeholder token reached the upstream");
    }
    println!("   = the vault secret ✓   (and no slt_ token reached the upstream ✓)");

    step(7, "The session record");
    let request = stack.sluice.wait_for_event("the request event", std::time::Duration::from_secs(10), |e| {
        e["event"] == "request" && e["service"] == SERVICE
    })?;
    let session = request["session"].as_str().unwrap_or_default().to_string();
    println!("   $ sluice sessions show {session}");
    let shown = stack.sluice.cli_output(&["sessions", "show", &session], None)?;
    if shown.status.success() {
        println!("{}", indent(String::from_utf8_lossy(&shown.stdout).trim_end()));
    } else {
        println!("   (sessions show failed: {}); the JSON lines:", String::from_utf8_lossy(&shown.stderr).trim());
        for e in stack.sluice.session_events(&session)? {
            println!("   {e}");
        }
    }

    step(8, "Leak check");
    assert_no_secret(&secret, &stack.sluice.all_output_text());
    println!("   the secret appears in no agent output, sluice log, session record or state file ✓");

    step(9, "Cleanup");
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
