//! Secret-extraction attempts (issue 8), by a non-root agent: upstreams
//! that reflect the request (with and without `echo_guard`), in plain and
//! encoded forms; error messages, `sluice doctor`, `sluice secret list`,
//! `/proc/<pid>` of the daemon, and token guessing.
use std::{net::SocketAddr, time::Duration};

use base64::Engine;
use serde_json::Value;
use sluice_tests::{
    assert_no_secret,
    echo_upstream::EchoUpstream,
    process,
    redteam::{self, AgentUser, RedTeam},
    stack::next_upstream_ip,
    ServiceSpec, Stack,
};

use crate::{billing_db, DB, WAIT};

const ECHO: &str = "echo-api";
const ECHO_HOST: &str = "api.echo.test";

/// A stack whose service `echo-api` is an [`EchoUpstream`]. Field order
/// matters: the stack (and its daemon) goes first.
struct EchoStack {
    stack: Stack,
    echo: EchoUpstream,
    secret: String,
}

/// `credential` is the inline-table body after `secret = …` (e.g.
/// `header = "Authorization", format = "Bearer {}"`); `extra` adds lines
/// such as `echo_guard = true`.
fn echo_stack(label: &str, credential: &str, extra: &str, secret: &str) -> EchoStack {
    let mut stack = Stack::builder(label).prepare().unwrap();
    let echo =
        EchoUpstream::https(&stack.ca, ECHO_HOST, SocketAddr::new(next_upstream_ip(), 0)).unwrap();
    let toml = redteam::https_service_toml(
        ECHO,
        ECHO_HOST,
        echo.addr(),
        stack.ca.pem_path(),
        "echo-key",
        credential,
        extra,
    );
    redteam::append_config(&stack, &toml).unwrap();
    stack.sluice.secret_put("echo-key", secret).unwrap();
    stack.sluice.start().unwrap();
    EchoStack {
        stack,
        echo,
        secret: secret.to_string(),
    }
}

const BEARER: &str = r#"header = "Authorization", format = "Bearer {}""#;

impl EchoStack {
    /// One HTTPS request by the agent (as `user`) to `path` with `headers`
    /// (`name: value` strings); the response as the probe parsed it.
    fn get(&self, rt: &RedTeam, path: &str, headers: &[String]) -> Value {
        let script = r#"
ip, port, host, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
hs = [tuple(h.split(': ', 1)) for h in sys.argv[5:]]
out(https(ip, port, host, path, hs))
"#;
        let a = self.echo.addr();
        let mut args = vec![
            a.ip().to_string(),
            a.port().to_string(),
            ECHO_HOST.to_string(),
            path.to_string(),
        ];
        args.extend(headers.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        rt.probe(self.stack.agent(), script, &args)
    }

    fn token(&self) -> String {
        self.stack
            .sluice
            .token_issue(self.stack.agent(), ECHO, "1h")
            .unwrap()
    }

    /// Asserts the secret occurs nowhere Sluice or the agent wrote.
    fn assert_no_secret_leaked(&self) {
        assert_no_secret(&self.secret, &self.stack.sluice.all_output_text());
    }
}

/// Everything the agent could read in a response: status line, headers, body.
fn response_text(r: &Value) -> String {
    let mut s = r["body"].as_str().unwrap_or("").to_string();
    for h in r["headers"].as_array().into_iter().flatten() {
        s.push('\n');
        s.push_str(&h.to_string());
    }
    s
}

#[test]
fn an_upstream_echoing_request_headers_hands_the_agent_the_secret_without_echo_guard() {
    // The documented leak path (README "echo_guard"): without the option,
    // whatever the upstream reflects reaches the agent unchanged.
    let user = AgentUser::create().unwrap();
    let es = echo_stack(
        "secret-echo-open",
        BEARER,
        "",
        &sluice_tests::random_secret(),
    );
    let rt = RedTeam::new(&es.stack, &user).unwrap();
    let r = es.get(
        &rt,
        "/echo",
        &[format!("Authorization: Bearer {}", es.token())],
    );
    assert_eq!(r["status"], 200, "{r}");
    assert!(
        response_text(&r).contains(&es.secret),
        "an echoing upstream without echo_guard reflects the secret: {r}"
    );
}

#[test]
fn echo_guard_overwrites_the_reflected_secret_in_bodies_and_headers_over_http1_and_http2() {
    let user = AgentUser::create().unwrap();
    let es = echo_stack(
        "secret-echo-guard",
        BEARER,
        "echo_guard = true",
        &sluice_tests::random_secret(),
    );
    let rt = RedTeam::new(&es.stack, &user).unwrap();
    let token = es.token();
    for path in ["/echo", "/echo-header"] {
        let r = es.get(&rt, path, &[format!("Authorization: Bearer {token}")]);
        assert_eq!(r["status"], 200, "{path}: {r}");
        let text = response_text(&r);
        assert!(!text.contains(&es.secret), "{path}: the secret came back");
        assert!(
            text.contains(&"*".repeat(es.secret.len())),
            "{path}: the reflection is overwritten in place: {r}"
        );
    }
    // curl over HTTP/2, as the agent.
    let a = es.echo.addr();
    let resolve = format!("{ECHO_HOST}:{}:{}", a.port(), a.ip());
    for version in ["--http1.1", "--http2"] {
        let out = rt
            .run(
                es.stack.agent(),
                &[
                    "curl",
                    "-sS",
                    "-i",
                    version,
                    "--max-time",
                    "15",
                    "--cacert",
                    rt.ca.to_str().unwrap(),
                    "--resolve",
                    &resolve,
                    "-H",
                    &format!("Authorization: Bearer {token}"),
                    &es.echo.url("/echo-header"),
                ],
                WAIT * 2,
            )
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("x-echo-authorization"),
            "{version}: {text}"
        );
        assert!(
            !text.contains(&es.secret),
            "{version}: the secret came back"
        );
    }
    let got = es.echo.requests();
    assert!(got
        .iter()
        .all(|q| q.header("authorization") == Some(format!("Bearer {}", es.secret).as_str())));
    es.assert_no_secret_leaked();
}

#[test]
fn echo_guard_catches_a_gzip_compressed_reflection() {
    let user = AgentUser::create().unwrap();
    let es = echo_stack(
        "secret-echo-gzip",
        BEARER,
        "echo_guard = true",
        &sluice_tests::random_secret(),
    );
    let rt = RedTeam::new(&es.stack, &user).unwrap();
    let r = es.get(
        &rt,
        "/echo-gzip",
        &[
            format!("Authorization: Bearer {}", es.token()),
            "Accept-Encoding: gzip".into(),
        ],
    );
    assert_eq!(r["status"], 200, "{r}");
    assert!(
        !response_text(&r).contains(&es.secret),
        "the agent gunzipped the secret out of the echo"
    );
}

#[test]
fn echo_guard_catches_a_base64_encoded_reflection() {
    let user = AgentUser::create().unwrap();
    let es = echo_stack(
        "secret-echo-b64",
        BEARER,
        "echo_guard = true",
        &sluice_tests::random_secret(),
    );
    let rt = RedTeam::new(&es.stack, &user).unwrap();
    let r = es.get(
        &rt,
        "/echo-b64",
        &[format!("Authorization: Bearer {}", es.token())],
    );
    assert_eq!(r["status"], 200, "{r}");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(r["body"].as_str().unwrap().trim())
        .unwrap_or_default();
    assert!(
        !String::from_utf8_lossy(&decoded).contains(&es.secret),
        "the agent base64-decoded the secret out of the echo"
    );
}

#[test]
fn echo_guard_catches_the_secret_in_a_reflected_basic_auth_header() {
    let user = AgentUser::create().unwrap();
    // In place: the token is the Basic auth password, the secret goes where
    // it stood, and the header is re-encoded.
    let es = echo_stack(
        "secret-echo-basic",
        "",
        "echo_guard = true",
        &sluice_tests::random_secret(),
    );
    let rt = RedTeam::new(&es.stack, &user).unwrap();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("agent:{}", es.token()));
    let r = es.get(&rt, "/echo", &[format!("Authorization: Basic {basic}")]);
    assert_eq!(r["status"], 200, "{r}");
    let echoed: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
    let reflected = echoed["headers"]["authorization"].as_str().unwrap_or("");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(reflected.trim_start_matches("Basic "))
        .unwrap_or_default();
    assert!(
        !String::from_utf8_lossy(&decoded).contains(&es.secret),
        "the agent decoded the secret from the reflected Basic header {reflected:?}"
    );
}

#[test]
fn echo_guard_catches_a_percent_encoded_query_secret() {
    let user = AgentUser::create().unwrap();
    // API keys often hold `+`, `/` and `=`: the URL carries them encoded.
    let secret = format!(
        "sk+{}/{}==",
        sluice_tests::random_hex(8),
        sluice_tests::random_hex(8)
    );
    let es = echo_stack(
        "secret-echo-query",
        r#"query = "api_key""#,
        "echo_guard = true",
        &secret,
    );
    let rt = RedTeam::new(&es.stack, &user).unwrap();
    let r = es.get(&rt, &format!("/echo?api_key={}", es.token()), &[]);
    assert_eq!(r["status"], 200, "{r}");
    let echoed: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
    let target = echoed["target"].as_str().unwrap_or("");
    let decoded = target
        .replace("%2B", "+")
        .replace("%2F", "/")
        .replace("%3D", "=");
    assert!(
        !decoded.contains(&es.secret),
        "the agent percent-decoded the secret out of the echoed target {target:?}"
    );
}

#[test]
fn error_responses_doctor_secret_list_and_the_daemons_environ_and_cmdline_hold_no_secret() {
    let user = AgentUser::create().unwrap();
    // A query-parameter credential puts the secret in the upstream URL,
    // where an error message would most easily pick it up.
    let mut stack = Stack::builder("secret-errors")
        .service(ServiceSpec::https("payments-api", "api.payments.test"))
        .prepare()
        .unwrap();
    let dead = SocketAddr::new(
        next_upstream_ip(),
        process::free_port(next_upstream_ip()).unwrap(),
    );
    let secret = sluice_tests::random_secret();
    let toml = redteam::https_service_toml(
        "dead-api",
        "api.dead.test",
        dead,
        stack.ca.pem_path(),
        "dead-key",
        r#"query = "api_key""#,
        "",
    );
    redteam::append_config(&stack, &toml).unwrap();
    stack.sluice.secret_put("dead-key", &secret).unwrap();
    for s in &stack.services {
        stack
            .sluice
            .secret_put(&s.spec.secret_name(), &s.secret)
            .unwrap();
    }
    stack.sluice.start().unwrap();
    let rt = RedTeam::new(&stack, &user).unwrap();
    let token = stack
        .sluice
        .token_issue(stack.agent(), "dead-api", "1h")
        .unwrap();
    let pay = stack.upstream("payments-api").addr();
    let script = r#"
dead_ip, dead_port, token, pay_ip, pay_port = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
out({'unreachable': https(dead_ip, dead_port, 'api.dead.test', '/v1/x?api_key=' + token),
     'unreachable_header': https(dead_ip, dead_port, 'api.dead.test', '/v1/x', bearer(token)),
     'no_token': https(pay_ip, pay_port, 'api.payments.test', '/v1/x'),
     'bad_token': https(pay_ip, pay_port, 'api.payments.test', '/v1/x', bearer('slt_' + 'x' * 40)),
     'wrong_service': https(pay_ip, pay_port, 'api.payments.test', '/v1/x', bearer(token)),
     'misdirected': https(pay_ip, pay_port, 'api.payments.test', '/v1/x', bearer(token), host='api.dead.test')})
"#;
    let r = rt.probe(
        stack.agent(),
        script,
        &[
            &dead.ip().to_string(),
            &dead.port().to_string(),
            &token,
            &pay.ip().to_string(),
            &pay.port().to_string(),
        ],
    );
    assert_eq!(r["unreachable"]["status"], 502, "{r}");
    for key in ["no_token", "bad_token", "wrong_service"] {
        assert_eq!(r[key]["status"], 401, "{key}: {r}");
    }
    assert_eq!(r["misdirected"]["status"], 421, "{r}");
    // The CLI: doctor (exit status aside), secret list in both forms.
    for args in [
        &["doctor"][..],
        &["secret", "list"],
        &["--json", "secret", "list"],
    ] {
        let out = stack.sluice.cli_output(args, None).unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        if args[0] != "doctor" {
            assert!(
                out.status.success() && text.contains("dead-key"),
                "sluice {args:?}: {text}"
            );
        }
    }
    // What root can read of the running daemon.
    let pid = redteam::daemon_pid(&stack);
    for file in ["environ", "cmdline"] {
        let bytes = std::fs::read(format!("/proc/{pid}/{file}")).unwrap();
        stack.sluice.capture_text(
            &format!("/proc/<sluice>/{file}"),
            &String::from_utf8_lossy(&bytes),
        );
    }
    let texts = stack.sluice.all_output_text();
    assert_no_secret(&secret, &texts);
    stack.assert_no_secret_leaked();
}

#[test]
fn the_daemon_is_closed_to_the_agent_user_and_sluice_processes_are_not_dumpable() {
    let user = AgentUser::create().unwrap();
    let stack = Stack::builder("secret-dumpable")
        .service(ServiceSpec::https("payments-api", "api.payments.test"))
        .start()
        .unwrap();
    let rt = RedTeam::new(&stack, &user).unwrap();
    let pid = redteam::daemon_pid(&stack).to_string();
    // The non-root agent user.
    let script = r#"
import ctypes
pid = int(sys.argv[1])
res = {}
for f in ('environ', 'mem', 'maps', 'cmdline'):
    try:
        open('/proc/%d/%s' % (pid, f), 'rb').read(16)
        res[f] = 'read'
    except OSError as e:
        res[f] = ename(e)
libc = ctypes.CDLL(None, use_errno=True)
rc = libc.ptrace(16, pid, 0, 0)  # PTRACE_ATTACH
res['ptrace'] = 'attached' if rc == 0 else errno.errorcode.get(ctypes.get_errno(), '?')
out(res)
"#;
    let r = rt.probe(stack.agent(), script, &[&pid]);
    for key in ["environ", "mem", "maps"] {
        assert_eq!(r[key], "EACCES", "{key}: {r}");
    }
    assert_eq!(r["ptrace"], "EPERM", "{r}");

    // PR_SET_DUMPABLE itself: root without CAP_SYS_PTRACE may open the
    // memory of, and ptrace, a dumpable root process that also lacks the
    // capability (same uid, capability subset), but not a non-dumpable one.
    // The daemon holds every capability, so the same `main` (which hardens
    // every `sluice` process) is probed through a long-running
    // `sluice sessions tail -f` started without CAP_SYS_PTRACE. (On this
    // kernel `environ` stays readable to the same uid either way.)
    let no_ptrace = ["--bounding-set", "-sys_ptrace", "--inh-caps", "-sys_ptrace"];
    let probe = |pid: u32| -> Value {
        let script = r#"
import ctypes, errno, json, sys
pid = int(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
res = {}
try:
    open('/proc/%d/mem' % pid, 'rb').close()
    res['mem'] = 'opened'
except OSError as e:
    res['mem'] = errno.errorcode.get(e.errno, str(e))
if libc.ptrace(16, pid, 0, 0) == 0:  # PTRACE_ATTACH
    res['ptrace'] = 'attached'
    libc.ptrace(17, pid, 0, 0)  # PTRACE_DETACH
else:
    res['ptrace'] = errno.errorcode.get(ctypes.get_errno(), '?')
print(json.dumps(res))
"#;
        let out = process::output_with_timeout(
            std::process::Command::new("setpriv").args(no_ptrace).args([
                redteam::PYTHON,
                "-c",
                script,
                &pid.to_string(),
            ]),
            None,
            WAIT,
        )
        .unwrap();
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
    };
    let spawn = |argv: &[&str]| {
        let mut cmd = std::process::Command::new("setpriv");
        cmd.args(no_ptrace)
            .args(argv)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let child = process::die_with_parent(&mut cmd).spawn().unwrap();
        let exe = argv[0].to_string();
        // Wait for setpriv to have exec'd the program.
        sluice_tests::poll("the program to start", WAIT, || {
            std::fs::read_link(format!("/proc/{}/exe", child.id()))
                .ok()
                .filter(|p| {
                    p.to_string_lossy()
                        .ends_with(exe.rsplit('/').next().unwrap())
                })
                .map(|_| ())
        })
        .unwrap();
        child
    };
    let mut control = spawn(&["/usr/bin/sleep", "30"]);
    let c = probe(control.id());
    let _ = control.kill();
    let _ = control.wait();
    assert_eq!(
        c,
        serde_json::json!({"mem": "opened", "ptrace": "attached"}),
        "control: a dumpable process"
    );
    let bin = sluice_tests::sluice_bin();
    let cfg = stack.sluice.config_path.to_str().unwrap().to_string();
    let mut tail = spawn(&[
        bin.to_str().unwrap(),
        "--config",
        &cfg,
        "sessions",
        "tail",
        "-f",
    ]);
    let d = probe(tail.id());
    let _ = tail.kill();
    let _ = tail.wait();
    assert_eq!(
        d,
        serde_json::json!({"mem": "EACCES", "ptrace": "EPERM"}),
        "a sluice process must not be dumpable"
    );
}

#[test]
fn token_guessing_backs_off_after_ten_failures_for_http_and_postgres_with_a_count_in_auth_fail() {
    let user = AgentUser::create().unwrap();
    let stack = Stack::builder("secret-guessing")
        .service(ServiceSpec::https("payments-api", "api.payments.test"))
        .service(billing_db())
        .start()
        .unwrap();
    let rt = RedTeam::new(&stack, &user).unwrap();
    let up = stack.upstream("payments-api").addr();
    let script = r#"
import random, string
ip, port = sys.argv[1], int(sys.argv[2])
statuses = []
for i in range(25):
    guess = 'slt_' + ''.join(random.choice(string.ascii_letters + string.digits) for _ in range(40))
    statuses.append(https(ip, port, 'api.payments.test', '/v1/guess', bearer(guess)).get('status'))
out(statuses)
"#;
    let r = rt.probe(
        stack.agent(),
        script,
        &[&up.ip().to_string(), &up.port().to_string()],
    );
    let statuses: Vec<u64> = r
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap_or(0))
        .collect();
    assert!(
        statuses[..10].iter().all(|s| *s == 401),
        "the first ten guesses cost nothing: {statuses:?}"
    );
    assert!(
        statuses.contains(&429),
        "guessing backs off with 429: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    // PostgreSQL shares the agent's budget: while backing off, even a
    // login is refused before the token is looked at.
    let conninfo = stack.pg_conninfo(DB, &format!("slt_{}", "q".repeat(40)), "sslmode=disable");
    let out = rt
        .psql(stack.agent(), &conninfo, "SELECT 1", WAIT * 2)
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let fails: Vec<Value> = stack
        .sluice
        .audit_events()
        .unwrap()
        .into_iter()
        .filter(|e| e["event"] == "auth_fail")
        .collect();
    assert!(
        fails.iter().any(|e| e["reason"]
            .as_str()
            .is_some_and(|r| r.contains("failure 11 "))),
        "auth_fail records carry the failure count: {fails:?}"
    );
    assert_eq!(stack.upstream("payments-api").count(), 0);
    let _ = Duration::ZERO;
    stack.assert_no_secret_leaked();
}

/// What each way of reading `customers.ssn` through a masked service
/// showed the agent (psql output), by technique.
fn masked_column_reads(stack: &Stack, rt: &RedTeam) -> Vec<(&'static str, String)> {
    let token = stack.token(DB).unwrap();
    let conninfo = stack.pg_conninfo(DB, &token, "sslmode=disable");
    let tries: [(&str, &[&str]); 6] = [
        (
            "plain column (masked)",
            &["-c", "SELECT ssn FROM customers WHERE id = 1"],
        ),
        (
            "alias",
            &["-c", "SELECT ssn AS x FROM customers WHERE id = 1"],
        ),
        (
            "expression",
            &["-c", "SELECT upper(ssn) FROM customers WHERE id = 1"],
        ),
        (
            "whole row",
            &["-c", "SELECT c FROM customers c WHERE id = 1"],
        ),
        (
            "cast error",
            &["-c", "SELECT ssn::int FROM customers WHERE id = 1"],
        ),
        (
            "notify payload",
            &[
                "-c",
                "LISTEN leak",
                "-c",
                "SELECT pg_notify('leak', ssn) FROM customers WHERE id = 1",
            ],
        ),
    ];
    tries
        .iter()
        .map(|(what, args)| {
            let mut argv = vec!["psql", "-X", "-w", "-At", "-d", &conninfo];
            argv.extend_from_slice(args);
            let out = rt.run(stack.agent(), &argv, WAIT * 3).unwrap();
            (
                *what,
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            )
        })
        .collect()
}

#[test]
fn a_masked_column_cannot_be_read_through_an_alias_an_expression_a_row_value_an_error_or_notify() {
    let user = AgentUser::create().unwrap();
    let stack = Stack::builder("secret-mask-bypass")
        .service(billing_db())
        .start()
        .unwrap();
    let rt = RedTeam::new(&stack, &user).unwrap();
    let ssn = sluice_tests::postgres::CUSTOMERS[0].2.unwrap();
    let reads = masked_column_reads(&stack, &rt);
    assert!(
        !reads[0].1.contains(ssn) && reads[0].1.contains("****"),
        "the plain column is masked: {}",
        reads[0].1
    );
    let leaks: Vec<&(&str, String)> = reads
        .iter()
        .filter(|(_, out)| out.to_uppercase().contains(&ssn.to_uppercase()))
        .collect();
    assert!(
        leaks.is_empty(),
        "the masked ssn reached the agent through: {leaks:#?}"
    );
}

#[test]
fn records_never_hold_a_masked_value_even_from_an_upstream_error_message() {
    let user = AgentUser::create().unwrap();
    let stack = Stack::builder("secret-mask-record")
        .service(billing_db())
        .start()
        .unwrap();
    let rt = RedTeam::new(&stack, &user).unwrap();
    let token = stack.token(DB).unwrap();
    let conninfo = stack.pg_conninfo(DB, &token, "sslmode=disable");
    let out = rt
        .psql(
            stack.agent(),
            &conninfo,
            "SELECT ssn::int FROM customers WHERE id = 1",
            WAIT * 3,
        )
        .unwrap();
    assert!(!out.status.success());
    let ssn = sluice_tests::postgres::CUSTOMERS[0].2.unwrap();
    let records: Vec<(String, String)> = stack
        .sluice
        .session_files()
        .into_iter()
        .chain([stack.sluice.log_dir.join("audit.jsonl")])
        .map(|p| {
            (
                p.display().to_string(),
                std::fs::read_to_string(&p).unwrap_or_default(),
            )
        })
        .collect();
    let hits: Vec<&String> = records
        .iter()
        .filter(|(_, t)| t.contains(ssn))
        .map(|(p, _)| p)
        .collect();
    assert!(
        hits.is_empty(),
        "a masked value is in the records: {hits:?}"
    );
}

#[test]
fn the_agent_user_can_read_no_file_sluice_keeps_but_the_ca_certificate() {
    use std::os::unix::fs::PermissionsExt;
    let user = AgentUser::create().unwrap();
    let stack = Stack::builder("secret-files")
        .service(ServiceSpec::https("payments-api", "api.payments.test"))
        .service(billing_db())
        .start()
        .unwrap();
    let rt = RedTeam::new(&stack, &user).unwrap();
    // A session, so there are records too.
    let token = stack.token(DB).unwrap();
    let conninfo = stack.pg_conninfo(DB, &token, "sslmode=disable");
    rt.psql(stack.agent(), &conninfo, "SELECT 1", WAIT * 3)
        .unwrap();
    // The test's temp dir is 0700 (which would hide everything anyway):
    // open it up so only Sluice's own modes stand between the agent and
    // its files.
    let top = stack.dir();
    std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut files = Vec::new();
    let mut dirs = vec![stack.sluice.state_dir.clone(), stack.sluice.log_dir.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                files.push(p.display().to_string());
            }
        }
    }
    files.push(top.join("vault.key").display().to_string());
    assert!(
        files.len() > 4 && files.iter().any(|f| f.ends_with("/ca.key")),
        "{files:?}"
    );
    let mut args: Vec<&str> = files.iter().map(String::as_str).collect();
    args.insert(0, "x");
    let script = r#"
res = {}
for f in sys.argv[2:]:
    try:
        open(f, 'rb').read(1)
        res[f] = 'read'
    except OSError as e:
        res[f] = ename(e)
out(res)
"#;
    let r = rt.probe(stack.agent(), script, &args);
    std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o700)).unwrap();
    let readable: Vec<&String> = r
        .as_object()
        .unwrap()
        .iter()
        .filter(|(f, v)| *v == "read" && !f.ends_with("/ca.pem"))
        .map(|(f, _)| f)
        .collect();
    assert!(
        readable.is_empty(),
        "the agent user can read: {readable:?} (all: {r})"
    );
}
