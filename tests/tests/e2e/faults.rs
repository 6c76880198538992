//! Faults (issue 8): the upstream breaking off or stalling, slowloris
//! agents, Redis restarting and Sluice being killed under load, a full log
//! disk, running out of file descriptors. Sluice fails closed, tells the
//! agent, frees what it held, and recovers; other sessions are unaffected.
use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;
use sluice_tests::{
    echo_upstream::EchoUpstream,
    poll, process,
    redteam::{self, assert_daemon_healthy, AgentUser, RedTeam},
    stack::next_upstream_ip,
    ServiceSpec, Stack,
};

use crate::{billing_db, Lines, DB, WAIT};

const SERVICE: &str = "payments-api";
const HOST: &str = "api.payments.test";
const SLOW: &str = "slow-api";
const SLOW_HOST: &str = "api.slow.test";

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A stack with [`SERVICE`] (a recording upstream) and [`SLOW`] (an
/// [`EchoUpstream`] that breaks off, stalls or drips on request); `extra`
/// lines go into the `[gateway]` table.
struct FaultStack {
    stack: Stack,
    slow: EchoUpstream,
}

fn fault_stack(label: &str) -> FaultStack {
    fault_stack_with(label, "")
}

/// [`fault_stack`] with `gateway` lines in the `[gateway]` table.
fn fault_stack_with(label: &str, gateway: &str) -> FaultStack {
    let mut builder = Stack::builder(label).service(ServiceSpec::https(SERVICE, HOST));
    if !gateway.is_empty() {
        builder = builder.gateway(gateway);
    }
    let mut stack = builder.prepare().unwrap();
    let slow =
        EchoUpstream::https(&stack.ca, SLOW_HOST, SocketAddr::new(next_upstream_ip(), 0)).unwrap();
    let toml = redteam::https_service_toml(
        SLOW,
        SLOW_HOST,
        slow.addr(),
        stack.ca.pem_path(),
        "slow-key",
        r#"header = "Authorization", format = "Bearer {}""#,
        "",
    );
    redteam::append_config(&stack, &toml).unwrap();
    stack
        .sluice
        .secret_put("slow-key", &sluice_tests::random_secret())
        .unwrap();
    for s in &stack.services {
        stack
            .sluice
            .secret_put(&s.spec.secret_name(), &s.secret)
            .unwrap();
    }
    stack.sluice.start().unwrap();
    FaultStack { stack, slow }
}

/// One agent request per line: `ip port host path token` → its status.
const GET: &str = r#"
a = sys.argv[1:]
r = https(a[0], int(a[1]), a[2], a[3], bearer(a[4]), timeout=float(a[5]) if len(a) > 5 else 10)
r['secs'] = None
out(r)
"#;

#[test]
fn an_upstream_breaking_off_mid_body_fails_that_request_only() {
    let user = AgentUser::create().unwrap();
    let fs = fault_stack("fault-close-mid");
    let rt = RedTeam::new(&fs.stack, &user).unwrap();
    let token = fs
        .stack
        .sluice
        .token_issue(fs.stack.agent(), SLOW, "1h")
        .unwrap();
    let a = fs.slow.addr();
    let resolve = format!("{SLOW_HOST}:{}:{}", a.port(), a.ip());
    let curl = |path: &str| {
        let version = if path.ends_with("--http2") {
            "--http2"
        } else {
            "--http1.1"
        };
        rt.run(
            fs.stack.agent(),
            &[
                "curl",
                version,
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "20",
                "--cacert",
                rt.ca.to_str().unwrap(),
                "--resolve",
                &resolve,
                "-H",
                &format!("Authorization: Bearer {token}"),
                &fs.slow.url(path),
            ],
            WAIT * 3,
        )
        .unwrap()
    };
    // Depending on when the break reaches Sluice, the agent gets a 502
    // (before the response head: curl exits 0 on an HTTP error status), a
    // connection closed without a reply (HTTP/1.1, curl 52), a short body
    // (curl 18) or a reset stream (HTTP/2, curl 92). Never a clean 200.
    for version in ["--http1.1", "--http2"] {
        let started = Instant::now();
        let broken = curl(&format!("/close-mid{version}"));
        let (code, status) = (
            broken.status.code(),
            String::from_utf8_lossy(&broken.stdout).into_owned(),
        );
        assert!(
            code != Some(0) || status.starts_with('5'),
            "{version}: curl exit {code:?}, status {status}: the broken body looked complete; {}",
            String::from_utf8_lossy(&broken.stderr)
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the agent learnt of the break at once"
        );
    }
    let ok = curl("/fine");
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "200");
    assert_daemon_healthy(&fs.stack);
}

#[test]
fn a_stalled_http_upstream_gets_the_agent_a_timely_error() {
    let user = AgentUser::create().unwrap();
    // The timeout is configurable; a short one keeps the test quick.
    let fs = fault_stack_with("fault-stall", r#"upstream_timeout = "3s""#);
    let rt = RedTeam::new(&fs.stack, &user).unwrap();
    let token = fs
        .stack
        .sluice
        .token_issue(fs.stack.agent(), SLOW, "1h")
        .unwrap();
    let a = fs.slow.addr();
    let started = Instant::now();
    let out = rt
        .python_with_timeout(
            fs.stack.agent(),
            GET,
            &[
                &a.ip().to_string(),
                &a.port().to_string(),
                SLOW_HOST,
                "/stall",
                &token,
                "90",
            ],
            Duration::from_secs(100),
        )
        .unwrap();
    let r = RedTeam::json_lines(&out).pop().unwrap();
    assert_eq!(
        r["status"],
        504,
        "a stalled upstream must end in 504: {r} after {:?}",
        started.elapsed()
    );
    assert!(
        r["body"].as_str().unwrap().contains("upstream_timeout"),
        "the error names the setting: {r}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?} with upstream_timeout = 3s",
        started.elapsed()
    );
    // Other requests of the same service are served meanwhile and after.
    let ok = rt.probe(
        fs.stack.agent(),
        GET,
        &[
            &a.ip().to_string(),
            &a.port().to_string(),
            SLOW_HOST,
            "/fine",
            &token,
        ],
    );
    assert_eq!(ok["status"], 200, "{ok}");
    assert_daemon_healthy(&fs.stack);
}

#[test]
fn a_slowloris_https_agent_is_cut_off_by_the_header_timeout_and_others_are_served_meanwhile() {
    let user = AgentUser::create().unwrap();
    let fs = fault_stack("fault-slowloris-http");
    let rt = RedTeam::new(&fs.stack, &user).unwrap();
    let token = fs.stack.token(SERVICE).unwrap();
    let up = fs.stack.upstream(SERVICE).addr();
    let script = r#"
ip, port, host = sys.argv[1], int(sys.argv[2]), sys.argv[3]
res = {}
def idle():
    # TCP only: no ClientHello ever.
    s = tcp(ip, port, 90)
    t = time.time()
    res['idle tcp'] = (s.recv(1) == b'' and 'closed', round(time.time() - t, 1))
def drip():
    # TLS, then a request head one byte every 2 s.
    s = tls(tcp(ip, port, 90), host)
    t = time.time()
    try:
        for b in b'GET /v1/slow HTTP/1.1\r\nHost: ' + host.encode() + b'\r\nX-Slow: ' + b'a' * 100:
            s.send(bytes([b]))
            time.sleep(2)
        res['drip'] = ('never cut off', round(time.time() - t, 1))
    except OSError as e:
        res['drip'] = ('closed:' + ename(e), round(time.time() - t, 1))
ts = [threading.Thread(target=f) for f in (idle, drip)]
[t.start() for t in ts]
[t.join() for t in ts]
out(res)
"#;
    let mut slow = rt
        .spawn_python(
            fs.stack.agent(),
            script,
            &[&up.ip().to_string(), &up.port().to_string(), HOST],
        )
        .unwrap();
    // Meanwhile the agent's ordinary requests go through.
    for _ in 0..3 {
        let r = rt.probe(
            fs.stack.agent(),
            GET,
            &[
                &up.ip().to_string(),
                &up.port().to_string(),
                HOST,
                "/v1/meanwhile",
                &token,
            ],
        );
        assert_eq!(r["status"], 200, "{r}");
    }
    let status = process::wait_timeout(&mut slow, Duration::from_secs(120)).unwrap();
    assert!(status.is_some(), "the slowloris probe was never cut off");
    let mut stdout = String::new();
    std::io::Read::read_to_string(slow.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    let r: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(r["idle tcp"][0], "closed", "{r}");
    assert!(r["drip"][0].as_str().unwrap().starts_with("closed"), "{r}");
    for what in ["idle tcp", "drip"] {
        assert!(
            r[what][1].as_f64().unwrap() < 45.0,
            "{what} held for too long: {r}"
        );
    }
    assert_daemon_healthy(&fs.stack);
}

#[test]
fn a_slowloris_postgres_agent_is_cut_off_during_start_up() {
    let user = AgentUser::create().unwrap();
    let stack = Stack::builder("fault-slowloris-pg")
        .service(billing_db())
        .start()
        .unwrap();
    let rt = RedTeam::new(&stack, &user).unwrap();
    let pg = stack.postgres(DB).addr();
    // PostgreSQL itself drops such clients after authentication_timeout
    // (60 s by default).
    let script = r#"
ip, port = sys.argv[1], int(sys.argv[2])
res = {}
def idle():
    s = tcp(ip, port, 120); t = time.time()
    try:
        res['idle'] = (s.recv(1) == b'' and 'closed', round(time.time() - t, 1))
    except OSError as e:
        res['idle'] = (ename(e), round(time.time() - t, 1))
def half():
    s = tcp(ip, port, 120); s.sendall(struct.pack('>i', 100) + b'\0\3'); t = time.time()
    try:
        res['half'] = (s.recv(1) == b'' and 'closed', round(time.time() - t, 1))
    except OSError as e:
        res['half'] = (ename(e), round(time.time() - t, 1))
ts = [threading.Thread(target=f) for f in (idle, half)]
[t.start() for t in ts]
[t.join() for t in ts]
out(res)
"#;
    let r = rt
        .python_with_timeout(
            stack.agent(),
            script,
            &[&pg.ip().to_string(), &pg.port().to_string()],
            Duration::from_secs(150),
        )
        .unwrap();
    let r = RedTeam::json_lines(&r).pop().unwrap();
    for what in ["idle", "half"] {
        assert_eq!(r[what][0], "closed", "{what}: {r}");
        assert!(r[what][1].as_f64().unwrap() < 75.0, "{what}: {r}");
    }
}

#[test]
fn a_postgres_backend_terminated_mid_statement_fails_that_session_only() {
    let user = AgentUser::create().unwrap();
    let stack = Stack::builder("fault-pg-terminate")
        .service(billing_db())
        .start()
        .unwrap();
    let rt = RedTeam::new(&stack, &user).unwrap();
    let token = stack.token(DB).unwrap();
    let conninfo = stack.pg_conninfo(DB, &token, "sslmode=disable");
    let mut victim = rt
        .spawn(
            stack.agent(),
            &[
                "psql",
                "-X",
                "-w",
                "-At",
                "-d",
                &conninfo,
                "-c",
                "SELECT pg_sleep(30)",
            ],
        )
        .unwrap();
    let pg = stack.postgres(DB);
    poll("the sleeping statement upstream", WAIT, || {
        let n = pg
            .superuser_psql(
                "postgres",
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)'",
            )
            .ok()?;
        (n.trim() == "1").then_some(())
    })
    .unwrap();
    pg.superuser_psql("postgres", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)'").unwrap();
    let started = Instant::now();
    let status = process::wait_timeout(&mut victim, WAIT)
        .unwrap()
        .expect("psql learnt of the termination");
    assert!(!status.success());
    assert!(started.elapsed() < Duration::from_secs(5));
    let out = rt
        .psql(
            stack.agent(),
            &conninfo,
            "SELECT count(*) FROM customers",
            WAIT * 3,
        )
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "3",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_daemon_healthy(&stack);
}

/// An agent that sends one request per fresh connection for `secs`
/// seconds and prints `{"n", "t0", "t1", "status"|"error"}` per request.
const LOAD: &str = r#"
ip, port, host, token, secs = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], float(sys.argv[5])
end = time.time() + secs
n = 0
while time.time() < end:
    t0 = time.time()
    r = https(ip, port, host, '/v1/load/%d' % n, bearer(token), timeout=5)
    r = {'n': n, 't0': t0, 't1': time.time(), 'status': r.get('status'), 'error': r.get('error')}
    out(r)
    n += 1
    if r['error']:
        time.sleep(0.05)
"#;

/// Reads the load agent's lines until `until` holds for one or `timeout`.
fn read_until(lines: &Lines, seen: &mut Vec<Value>, what: &str, until: impl Fn(&Value) -> bool) {
    loop {
        let l = lines.next(what);
        let v: Value = serde_json::from_str(&l).unwrap();
        let hit = until(&v);
        seen.push(v);
        if hit {
            return;
        }
    }
}

#[test]
fn redis_restarting_under_load_fails_closed_with_503_then_recovers_without_restarting_sluice() {
    let user = AgentUser::create().unwrap();
    let mut stack = Stack::builder("fault-redis-load")
        .service(ServiceSpec::https(SERVICE, HOST))
        .start()
        .unwrap();
    let rt = RedTeam::new(&stack, &user).unwrap();
    let token = stack.token(SERVICE).unwrap();
    let up = stack.upstream(SERVICE).addr();
    let daemon = stack.sluice.pid();
    let mut agent = rt
        .spawn_python(
            stack.agent(),
            LOAD,
            &[
                &up.ip().to_string(),
                &up.port().to_string(),
                HOST,
                &token,
                "25",
            ],
        )
        .unwrap();
    let lines = Lines::new(agent.stdout.take().unwrap());
    let mut seen = Vec::new();
    read_until(&lines, &mut seen, "load before the outage", |v| {
        v["n"].as_u64() >= Some(5)
    });
    // Persist the token store, so the same token is valid after the restart.
    let mut redis = std::net::TcpStream::connect(stack.redis.addr()).unwrap();
    redis.write_all(b"SAVE\r\n").unwrap();
    let mut ok = [0u8; 5];
    std::io::Read::read_exact(&mut redis, &mut ok).unwrap();
    assert_eq!(&ok, b"+OK\r\n");
    let stopped = now();
    stack.redis.stop();
    read_until(&lines, &mut seen, "a refusal during the outage", |v| {
        v["status"] == 503
    });
    read_until(&lines, &mut seen, "more load during the outage", |v| {
        v["t0"].as_f64() > Some(stopped + 2.0)
    });
    let restarted = now();
    stack.redis.restart().unwrap();
    read_until(&lines, &mut seen, "a 200 after Redis is back", |v| {
        v["status"] == 200 && v["t0"].as_f64() > Some(restarted)
    });
    let _ = process::wait_timeout(&mut agent, Duration::from_secs(40));
    while let Ok(l) = lines.0.recv_timeout(Duration::from_millis(200)) {
        seen.push(serde_json::from_str(&l).unwrap());
    }
    let statuses: BTreeSet<String> = seen.iter().map(|v| v["status"].to_string()).collect();
    assert!(
        statuses.iter().all(|s| s == "200" || s == "503"),
        "only 200 and 503: {statuses:?}"
    );
    let during_ok: Vec<&Value> = seen
        .iter()
        .filter(|v| {
            v["status"] == 200
                && v["t0"].as_f64().unwrap() > stopped + 0.5
                && v["t1"].as_f64().unwrap() < restarted
        })
        .collect();
    assert!(
        during_ok.is_empty(),
        "requests served while Redis was down: {during_ok:?}"
    );
    let ok_count = seen.iter().filter(|v| v["status"] == 200).count();
    assert_eq!(
        stack.upstream(SERVICE).count(),
        ok_count,
        "every request that reached the upstream was a checked one"
    );
    assert_eq!(stack.sluice.pid(), daemon, "no restart of sluice");
    assert_daemon_healthy(&stack);
    stack.assert_no_secret_leaked();
}

#[test]
fn kill_9_under_load_refuses_new_connections_and_loses_no_acknowledged_record() {
    let user = AgentUser::create().unwrap();
    let mut stack = Stack::builder("fault-kill9-load")
        .service(ServiceSpec::https(SERVICE, HOST))
        .start()
        .unwrap();
    let rt = RedTeam::new(&stack, &user).unwrap();
    let token = stack.token(SERVICE).unwrap();
    let up = stack.upstream(SERVICE).addr();
    let mut agent = rt
        .spawn_python(
            stack.agent(),
            LOAD,
            &[
                &up.ip().to_string(),
                &up.port().to_string(),
                HOST,
                &token,
                "20",
            ],
        )
        .unwrap();
    let lines = Lines::new(agent.stdout.take().unwrap());
    let mut seen = Vec::new();
    read_until(&lines, &mut seen, "load before the kill", |v| {
        v["n"].as_u64() >= Some(10)
    });
    let killed = now();
    stack.sluice.kill9();
    read_until(&lines, &mut seen, "refusals while sluice is down", |v| {
        v["t0"].as_f64() > Some(killed + 1.0)
    });
    let restarted = now();
    stack.sluice.start().unwrap();
    read_until(&lines, &mut seen, "a 200 after the restart", |v| {
        v["status"] == 200 && v["t0"].as_f64() > Some(restarted)
    });
    let _ = process::wait_timeout(&mut agent, Duration::from_secs(40));
    while let Ok(l) = lines.0.recv_timeout(Duration::from_millis(200)) {
        seen.push(serde_json::from_str(&l).unwrap());
    }
    // While down: refused, never a timeout, never served.
    let down: Vec<&Value> = seen
        .iter()
        .filter(|v| {
            v["t0"].as_f64().unwrap() > killed + 0.2 && v["t1"].as_f64().unwrap() < restarted
        })
        .collect();
    assert!(!down.is_empty());
    for v in &down {
        assert_eq!(v["error"], "ECONNREFUSED", "while sluice was down: {v}");
    }
    // Nothing reached the upstream while sluice was down.
    let sent_at: BTreeMap<String, f64> = seen
        .iter()
        .map(|v| (format!("/v1/load/{}", v["n"]), v["t0"].as_f64().unwrap()))
        .collect();
    for q in stack.upstream(SERVICE).requests() {
        let t0 = sent_at.get(q.path()).copied().unwrap_or(0.0);
        assert!(
            t0 < killed || t0 > restarted,
            "{} reached the upstream while sluice was down",
            q.path()
        );
    }
    // Every request that got a 200 has its `request` record line.
    let audit = stack.sluice.audit_events().unwrap();
    let recorded: BTreeSet<String> = audit
        .iter()
        .filter(|e| e["event"] == "request")
        .filter_map(|e| e["path"].as_str().map(String::from))
        .collect();
    let missing: Vec<String> = seen
        .iter()
        .filter(|v| v["status"] == 200)
        .map(|v| format!("/v1/load/{}", v["n"]))
        .filter(|p| !recorded.contains(p))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged requests without a record line: {missing:?}"
    );
    assert_daemon_healthy(&stack);
    stack.assert_no_secret_leaked();
}

/// A 1 MiB tmpfs mounted by the test; unmounted (lazily if busy) on drop.
#[derive(Default)]
struct Tmpfs(Option<PathBuf>);

impl Tmpfs {
    fn mount(&mut self, at: &Path) {
        std::fs::create_dir_all(at).unwrap();
        let out = process::output_with_timeout(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=1m,mode=0750", "sluice-test-log"])
                .arg(at),
            None,
            WAIT,
        )
        .unwrap();
        assert!(
            out.status.success(),
            "mount tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.0 = Some(at.to_path_buf());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Some(at) = self.0.take() {
            let ok = process::output_with_timeout(Command::new("umount").arg(&at), None, WAIT)
                .is_ok_and(|o| o.status.success());
            if !ok {
                let _ = process::output_with_timeout(
                    Command::new("umount").arg("-l").arg(&at),
                    None,
                    WAIT,
                );
            }
        }
    }
}

/// Fills the filesystem holding `dir` with `dir/filler` until ENOSPC.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 4096];
    for _ in 0..1024 {
        if f.write_all(&chunk).and_then(|()| f.flush()).is_err() {
            break;
        }
    }
    path
}

#[test]
fn a_full_log_disk_refuses_new_sessions_with_503_and_53100_and_recovers_when_space_returns() {
    let user = AgentUser::create().unwrap();
    let mut disk = Tmpfs::default();
    let mut stack = Stack::builder("fault-disk-full")
        .service(ServiceSpec::https(SERVICE, HOST))
        .service(billing_db())
        .prepare()
        .unwrap();
    disk.mount(&stack.sluice.log_dir);
    for s in &stack.services {
        stack
            .sluice
            .secret_put(&s.spec.secret_name(), &s.secret)
            .unwrap();
    }
    stack.sluice.start().unwrap();
    let rt = RedTeam::new(&stack, &user).unwrap();
    let token = stack.token(SERVICE).unwrap();
    let db_token = stack.token(DB).unwrap();
    let up = stack.upstream(SERVICE).addr();
    let get = |path: &str| {
        rt.probe(
            stack.agent(),
            GET,
            &[
                &up.ip().to_string(),
                &up.port().to_string(),
                HOST,
                path,
                &token,
            ],
        )
    };
    let conninfo = stack.pg_conninfo(DB, &db_token, "sslmode=disable");
    let psql = || {
        rt.run(
            stack.agent(),
            &[
                "psql",
                "-X",
                "-w",
                "-At",
                "-v",
                "VERBOSITY=verbose",
                "-d",
                &conninfo,
                "-c",
                "SELECT count(*) FROM customers",
            ],
            WAIT * 3,
        )
        .unwrap()
    };
    assert_eq!(get("/v1/before")["status"], 200);

    let filler = fill(&stack.sluice.log_dir);
    let before = stack.upstream(SERVICE).count();
    let full = get("/v1/while-full");
    assert_eq!(full["status"], 503, "{full}");
    assert!(
        full["body"].as_str().unwrap().contains("record"),
        "the error names the record: {full}"
    );
    let pg = stack.postgres(DB).addr();
    let login = rt.probe(
        stack.agent(),
        &format!("{}\ntry:\n    pg_login(sys.argv[1], int(sys.argv[2]), sys.argv[3]); out({{'login': 'ok'}})\nexcept Exception as e:\n    out({{'login': str(e)}})", crate::attack_malformed::PG),
        &[&pg.ip().to_string(), &pg.port().to_string(), &db_token],
    );
    let login = login["login"].as_str().unwrap();
    assert!(
        login.contains("53100") && login.contains("FATAL"),
        "a login while the log disk is full: {login}"
    );
    assert_eq!(
        stack.upstream(SERVICE).count(),
        before,
        "nothing unaudited reached the upstream"
    );

    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    let back = poll("a 200 once space returns", Duration::from_secs(30), || {
        (get("/v1/after")["status"] == 200).then_some(())
    })
    .is_ok();
    assert!(back, "no recovery within 30 s after the space returned");
    eprintln!(
        "log disk full: served again {:?} after the space returned",
        freed.elapsed()
    );
    let out = psql();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "3",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_daemon_healthy(&stack);
    stack.assert_no_secret_leaked();
    drop(rt);
    stack.sluice.teardown();
    // Unmounted before the stack's temp dir, the mount point, is removed.
    drop(disk);
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = stat.rsplit_once(") ").unwrap().1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn out_of_descriptors_accept_errors_are_backed_off_not_spun_on_and_sluice_recovers() {
    let user = AgentUser::create().unwrap();
    let stack = Stack::builder("fault-emfile")
        .service(ServiceSpec::https(SERVICE, HOST))
        .start()
        .unwrap();
    let rt = RedTeam::new(&stack, &user).unwrap();
    let token = stack.token(SERVICE).unwrap();
    let up = stack.upstream(SERVICE).addr();
    let pid = redteam::daemon_pid(&stack);
    let limit = open_fds(pid) + 12;
    let prlimit = |spec: &str| {
        let out = process::output_with_timeout(
            Command::new("prlimit").args(["--pid", &pid.to_string(), &format!("--nofile={spec}")]),
            None,
            WAIT,
        )
        .unwrap();
        assert!(
            out.status.success(),
            "prlimit: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let original = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let fields: Vec<String> = original
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .skip(3)
        .take(2)
        .map(String::from)
        .collect();
    // Only the soft limit moves: raising a hard limit back needs
    // CAP_SYS_RESOURCE, which test containers may lack.
    let original = format!("{}:{}", fields[0], fields[1]);
    prlimit(&format!("{limit}:{}", fields[1]));

    // 60 idle connections: more than the daemon may hold.
    let hold = r#"
ip, port = sys.argv[1], int(sys.argv[2])
socks = [tcp(ip, port, 30) for _ in range(60)]
out({'holding': len(socks)})
sys.stdin.readline()
"#;
    let mut holder = rt
        .spawn_python(
            stack.agent(),
            hold,
            &[&up.ip().to_string(), &up.port().to_string()],
        )
        .unwrap();
    let lines = Lines::new(holder.stdout.take().unwrap());
    assert!(lines.next("the idle connections").contains("60"));
    poll("an accept error in the log", WAIT, || {
        stack
            .sluice
            .daemon_log()
            .contains("accept failed")
            .then_some(())
    })
    .unwrap();
    let (t0, c0) = (Instant::now(), cpu_ticks(pid));
    // A measurement window, not a synchronisation: how busy is Sluice
    // while every accept fails?
    std::thread::sleep(Duration::from_secs(2));
    let busy = (cpu_ticks(pid) - c0) as f64 / 100.0 / t0.elapsed().as_secs_f64();
    assert!(
        busy < 0.25,
        "sluice spent {:.0}% of a CPU while out of descriptors",
        busy * 100.0
    );

    drop(holder.stdin.take());
    let _ = process::wait_timeout(&mut holder, WAIT);
    let back = poll(
        "a 200 after the descriptors are free",
        Duration::from_secs(40),
        || {
            (rt.probe(
                stack.agent(),
                GET,
                &[
                    &up.ip().to_string(),
                    &up.port().to_string(),
                    HOST,
                    "/v1/after",
                    &token,
                ],
            )["status"]
                == 200)
                .then_some(())
        },
    );
    prlimit(&original);
    back.unwrap();
    assert_daemon_healthy(&stack);
}
