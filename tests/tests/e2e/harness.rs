//! Self-tests of the harness pieces that do not need Sluice: the test CA,
//! the recording upstreams, redis-server and PostgreSQL.
use std::process::Command;

use sluice_tests::{redis, stack::next_upstream_ip, HbaMethod, Postgres, Redis, TestCa, Upstream};

fn curl_direct(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "--noproxy",
            "*",
            "-w",
            "\n%{http_code} %{http_version}",
        ])
        .args(args)
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').expect("curl -w line");
    (body.to_string(), tail.to_string())
}

#[test]
fn harness_https_upstream_records_http1_and_http2_requests() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path()).unwrap();
    let up = Upstream::https(&ca, "api.selftest.test", next_upstream_ip()).unwrap();
    let resolve = format!("api.selftest.test:{}:{}", up.addr().port(), up.addr().ip());
    let cacert = ca.pem_path().to_str().unwrap();
    let url = up.url("/v1/ping?x=1");

    let (body, tail) = curl_direct(&[
        "--http1.1",
        "--cacert",
        cacert,
        "--resolve",
        &resolve,
        "-H",
        "x-probe: one",
        &url,
    ]);
    assert_eq!(tail, "200 1.1");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["upstream"], "api.selftest.test");
    let (_, tail) = curl_direct(&[
        "--http2",
        "--cacert",
        cacert,
        "--resolve",
        &resolve,
        "-H",
        "x-probe: two",
        &url,
    ]);
    assert_eq!(tail, "200 2");

    let reqs = up.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        (reqs[0].method.as_str(), reqs[0].target.as_str()),
        ("GET", "/v1/ping?x=1")
    );
    assert_eq!(reqs[0].header("X-Probe"), Some("one"));
    assert_eq!(reqs[0].version, "HTTP/1.1");
    assert_eq!(reqs[1].header("x-probe"), Some("two"));
    assert_eq!(reqs[1].version, "HTTP/2.0");
    assert_eq!(reqs[1].query("x").as_deref(), Some("1"));
}

#[test]
fn harness_plain_http_upstream_records_requests() {
    let up = Upstream::http("plain.selftest.test", next_upstream_ip()).unwrap();
    let resolve = format!(
        "plain.selftest.test:{}:{}",
        up.addr().port(),
        up.addr().ip()
    );
    up.respond_with(418, r#"{"teapot":true}"#);
    let (body, tail) = curl_direct(&["--resolve", &resolve, "-d", "hello", &up.url("/brew")]);
    assert_eq!(tail, "418 1.1");
    assert_eq!(body, r#"{"teapot":true}"#);
    let req = up.last().unwrap();
    assert_eq!(
        (req.method.as_str(), req.path(), req.body_len),
        ("POST", "/brew", 5)
    );
}

#[test]
fn harness_redis_answers_ping_stops_and_restarts_on_its_port() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Redis::start(dir.path()).unwrap();
    let addr = r.addr();
    assert!(redis::ping(addr));
    r.stop();
    assert!(!redis::ping(addr), "redis still answers after stop");
    r.restart().unwrap();
    assert_eq!(r.addr(), addr);
    assert!(redis::ping(addr));
}

#[test]
fn harness_postgres_serves_billing_switches_hba_method_and_restarts_with_its_data() {
    let password = sluice_tests::random_secret();
    let mut pg = Postgres::start(next_upstream_ip(), &password, None).unwrap();
    assert_eq!(pg.customers_count().unwrap(), Some(3));
    assert_eq!(
        pg.superuser_psql(
            "billing",
            "SELECT count(*) FROM customers WHERE ssn IS NULL"
        )
        .unwrap()
        .trim(),
        "1"
    );
    pg.direct_login().unwrap();
    assert_eq!(pg.logins_by(HbaMethod::ScramSha256), 1);
    pg.set_auth(HbaMethod::Md5).unwrap();
    assert!(pg.logins_by(HbaMethod::Md5) >= 1);
    let postmaster = pg.pid().unwrap();
    pg.stop();
    assert!(
        !std::path::Path::new(&format!("/proc/{postmaster}")).exists(),
        "postmaster gone after stop"
    );
    assert!(pg.direct_login().is_err());
    pg.restart().unwrap();
    assert_eq!(pg.customers_count().unwrap(), Some(3));
}
