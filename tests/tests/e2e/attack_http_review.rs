//! An independent review of HTTP rule matching and protocol upgrades
//! (README "How HTTP rules match", "Clients tested"); JSON masking is in
//! `attack_http_review_mask`. A passing test means Sluice held; an ignored
//! one is a bypass that fails today.
use sluice_tests::{CurlResult, ServiceSpec, Stack};

use crate::bearer;

pub(crate) const SERVICE: &str = "payments-api";
const HOST: &str = "api.payments.test";
const DENY: &str = r#"deny = [{ method = "DELETE", path = "/v1/customers/*" }]"#;
pub(crate) const MASK: &str = r#"mask = ["ssn", "card.number"]"#;
pub(crate) const SSN: &str = "123-45-6789";
pub(crate) const CARD: &str = "4111111111111111";

pub(crate) fn stack(label: &str, extra: &str) -> (Stack, String) {
    let stack = Stack::builder(label)
        .service(ServiceSpec::https(SERVICE, HOST).extra(extra))
        .start()
        .expect("start the stack");
    let token = stack.token(SERVICE).unwrap();
    (stack, bearer(&token))
}

/// curl as the agent with `args`, then the service's base URL.
pub(crate) fn curl(stack: &Stack, auth: &str, args: &[&str]) -> CurlResult {
    let mut all = vec!["--http1.1", "-H", auth];
    all.extend_from_slice(args);
    let url = stack.url(SERVICE, "/");
    all.push(&url);
    stack.curl(&all).unwrap()
}

/// A request the agent sends: `curl` arguments before the URL.
type Case = (&'static str, Vec<String>);

fn case(what: &'static str, args: &[&str]) -> Case {
    (what, args.iter().map(|s| s.to_string()).collect())
}

/// `-X method --path-as-is --request-target target`.
fn raw(what: &'static str, method: &str, target: &str) -> Case {
    case(
        what,
        &["-X", method, "--path-as-is", "--request-target", target],
    )
}

/// Sends every case; returns those that reached the upstream, with the
/// status the agent saw and what the upstream got.
fn reaching(stack: &Stack, auth: &str, cases: &[Case]) -> Vec<String> {
    let up = stack.upstream(SERVICE);
    let mut reached = Vec::new();
    for (what, args) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let before = up.count();
        let res = curl(stack, auth, &args);
        if up.count() > before {
            let got = up.last().unwrap();
            reached.push(format!(
                "{what}: agent got {}, upstream got {} {}",
                res.status, got.method, got.target
            ));
        } else {
            assert!(
                res.exit == 0 && (400..500).contains(&res.status),
                "{what}: curl exit {} status {}: {}",
                res.exit,
                res.status,
                res.body
            );
        }
    }
    reached
}

/// Runs `cases` against a service with [`DENY`]; asserts none reached the
/// upstream.
fn assert_all_refused(label: &str, cases: &[Case]) {
    let (stack, auth) = stack(label, DENY);
    let reached = reaching(&stack, &auth, cases);
    assert!(reached.is_empty(), "passed the deny rule: {reached:#?}");
}

#[test]
fn more_variants_of_a_denied_request_are_refused() {
    let (stack, auth) = stack("review-deny-variants", DENY);
    let big = stack.dir().join("big-form");
    let mut body = b"x=".to_vec();
    body.resize(9 * 1024 * 1024, b'a');
    body.extend_from_slice(b"&_method=DELETE");
    std::fs::write(&big, body).unwrap();
    let big = format!("@{}", big.display());
    let mp =
        "--XyZ\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--XyZ--\r\n";
    let post = |what, target| raw(what, "POST", target);
    let form = |what, extra: &[&str], data: &str| {
        let mut args = extra.to_vec();
        args.extend([
            "--data-binary",
            data,
            "--request-target",
            "/v1/customers/42",
        ]);
        case(what, &args)
    };
    let cases = vec![
        raw("lowercase method", "delete", "/v1/customers/42"),
        raw(
            "absolute form",
            "DELETE",
            "https://api.payments.test/v1/customers/42",
        ),
        raw(
            "absolute form, upper-case host and path",
            "DELETE",
            "https://API.PAYMENTS.TEST/V1/customers/42",
        ),
        raw("IIS %u encoding", "DELETE", "/v1/%u0063ustomers/42"),
        raw("encoded tab", "DELETE", "/v1/customers/42%09"),
        raw("encoded NUL", "DELETE", "/v1/customers%00/42"),
        raw("trailing slash", "DELETE", "/v1/customers/42/"),
        raw("no id", "DELETE", "/v1/customers/"),
        raw("fragment", "DELETE", "/v1/customers/42#x"),
        raw("relative target", "DELETE", "v1/customers/42"),
        post(
            "duplicate _method, last wins",
            "/v1/customers/42?_method=GET&_method=DELETE",
        ),
        post("_METHOD", "/v1/customers/42?_METHOD=DELETE"),
        post("encoded _method name", "/v1/customers/42?%5Fmethod=DELETE"),
        post(
            "lower-case _method value",
            "/v1/customers/42?_method=delete",
        ),
        form("duplicate form _method", &[], "_method=GET&_method=DELETE"),
        form("encoded form _method name", &[], "%5Fmethod=DELETE"),
        form(
            "form with charset",
            &[
                "-H",
                "Content-Type: application/x-www-form-urlencoded; charset=UTF-8",
            ],
            "_method=DELETE",
        ),
        form(
            "form content type in capitals",
            &["-H", "Content-Type: Application/X-WWW-Form-URLencoded"],
            "_method=DELETE",
        ),
        form(
            "chunked form",
            &["-H", "Transfer-Encoding: chunked"],
            "_method=DELETE",
        ),
        form(
            "multipart with a quoted boundary",
            &["-H", "Content-Type: multipart/form-data; boundary=\"XyZ\""],
            mp,
        ),
        case(
            "duplicate override headers",
            &[
                "-X",
                "POST",
                "-H",
                "X-HTTP-Method-Override: PATCH",
                "-H",
                "X-HTTP-Method-Override: DELETE",
                "--request-target",
                "/v1/customers/42",
            ],
        ),
        case(
            "override list",
            &[
                "-X",
                "POST",
                "-H",
                "X-HTTP-Method-Override: DELETE, PATCH",
                "--request-target",
                "/v1/customers/42",
            ],
        ),
        case(
            "h2",
            &[
                "--http2",
                "-X",
                "DELETE",
                "--request-target",
                "/v1/customers/42",
            ],
        ),
        case(
            "h2 lower-case method and path case",
            &[
                "--http2",
                "-X",
                "delete",
                "--request-target",
                "/v1/Customers/42",
            ],
        ),
        case(
            "h2 override header",
            &[
                "--http2",
                "-X",
                "POST",
                "-H",
                "x-http-method-override: DELETE",
                "--request-target",
                "/v1/customers/42",
            ],
        ),
        case(
            "h2 form",
            &[
                "--http2",
                "-d",
                "_method=DELETE",
                "--request-target",
                "/v1/customers/42",
            ],
        ),
        form("form over the read limit", &[], &big),
    ];
    let reached = reaching(&stack, &auth, &cases);
    assert!(reached.is_empty(), "passed the deny rule: {reached:#?}");
}

#[test]
fn unicode_lookalikes_of_a_denied_path_are_refused() {
    assert_all_refused(
        "review-deny-unicode",
        &[
            raw("long s, raw UTF-8", "DELETE", "/v1/cuſtomers/42"),
            raw("long s, encoded", "DELETE", "/v1/cu%C5%BFtomers/42"),
            raw("fullwidth c, encoded", "DELETE", "/v1/%EF%BD%83ustomers/42"),
        ],
    );
}

#[test]
fn a_trailing_dot_or_space_in_a_denied_segment_is_refused() {
    assert_all_refused(
        "review-deny-trailing",
        &[
            raw("trailing dot", "DELETE", "/v1/customers./42"),
            raw("trailing space", "DELETE", "/v1/customers%20/42"),
        ],
    );
}

#[test]
fn a_method_override_after_a_semicolon_query_separator_is_refused() {
    assert_all_refused(
        "review-deny-semicolon",
        &[raw(
            "; separator",
            "POST",
            "/v1/customers/42?x=1;_method=DELETE",
        )],
    );
}

#[test]
fn a_method_override_in_an_unlabelled_or_json_body_is_refused() {
    let form = |what, ct: &str, data: &str| {
        case(
            what,
            &[
                "-H",
                ct,
                "--data-binary",
                data,
                "--request-target",
                "/v1/customers/42",
            ],
        )
    };
    assert_all_refused(
        "review-deny-body-override",
        &[
            form(
                "POST without Content-Type (Rack reads it as a form)",
                "Content-Type:",
                "_method=DELETE",
            ),
            form(
                "JSON body (Laravel)",
                "Content-Type: application/json",
                r#"{"_method":"DELETE"}"#,
            ),
        ],
    );
}

#[test]
fn a_multipart_override_with_an_upper_case_parameter_name_is_refused() {
    let part = |disposition: &str| {
        format!("--XyZ\r\nContent-Disposition: {disposition}\r\n\r\nDELETE\r\n--XyZ--\r\n")
    };
    let (upper, unquoted) = (
        part("form-data; NAME=\"_method\""),
        part("form-data; name=_method"),
    );
    let ct = "Content-Type: multipart/form-data; boundary=XyZ";
    let target = ["--request-target", "/v1/customers/42"];
    assert_all_refused(
        "review-deny-multipart",
        &[
            case(
                "NAME=",
                &[&["-H", ct, "--data-binary", &upper][..], &target].concat(),
            ),
            case(
                "unquoted name",
                &[&["-H", ct, "--data-binary", &unquoted][..], &target].concat(),
            ),
        ],
    );
}

/// A raw TLS upstream that answers the first request of every connection
/// with `101 Switching Protocols` whatever it asked, then sends
/// `{"ssn":"<SSN>"}\n`, and appends every byte it receives to argv[4].
const RAW_101_SERVER: &str = r#"
import socket, ssl, sys, threading
ip, cert, key, log, ssn = sys.argv[1:6]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
ctx.set_alpn_protocols(["http/1.1"])
srv = socket.socket()
srv.bind((ip, 0))
srv.listen(16)
print(srv.getsockname()[1], flush=True)
lock = threading.Lock()
def record(data):
    with lock, open(log, "ab") as f:
        f.write(data)
def serve(conn):
    try:
        s = ctx.wrap_socket(conn, server_side=True)
        buf = b""
        while b"\r\n\r\n" not in buf:
            d = s.recv(65536)
            if not d:
                return
            buf += d
            record(d)
        s.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        s.sendall(('{"ssn":"%s"}\n' % ssn).encode())
        while True:
            d = s.recv(65536)
            if not d:
                return
            record(d)
    except Exception:
        pass
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// The agent: a raw TLS connection to argv[1]:argv[2] (SNI argv[3], CA
/// argv[4]); sends argv[5], reads what comes within a second, sends
/// argv[6] (if not empty), reads again; prints everything read.
const RAW_CLIENT: &str = r#"
import socket, ssl, sys
ip, port, host, ca, first, second = sys.argv[1:7]
ctx = ssl.create_default_context(cafile=ca)
ctx.set_alpn_protocols(["http/1.1"])
s = ctx.wrap_socket(socket.create_connection((ip, int(port))), server_hostname=host)
s.settimeout(1.5)
def drain():
    out = b""
    try:
        while True:
            d = s.recv(65536)
            if not d:
                break
            out += d
    except socket.timeout:
        pass
    return out
s.sendall(first.encode())
got = drain()
if second:
    try:
        s.sendall(second.encode())
    except Exception as e:
        got += ("<send failed %s>" % e).encode()
    got += drain()
sys.stdout.write(got.decode("latin-1"))
"#;

use crate::http_clients as upgrade_support;

fn raw_101_stack(
    label: &str,
    extra: &str,
) -> (Stack, upgrade_support::PyServer, std::path::PathBuf) {
    use upgrade_support::*;
    let mut log = std::path::PathBuf::new();
    let (stack, server, _secret) = stack_for(
        label,
        |stack| {
            let (cert, key) = leaf_files(stack);
            log = stack.dir().join("raw-upstream.bin");
            PyServer::start(
                RAW_101_SERVER,
                sluice_tests::stack::next_upstream_ip(),
                &[path_str(&cert), path_str(&key), path_str(&log), SSN],
            )
        },
        extra,
    );
    (stack, server, log)
}

/// Runs [`RAW_CLIENT`] as the agent against `addr` with SNI `host`.
fn raw_client(
    stack: &Stack,
    addr: std::net::SocketAddr,
    host: &str,
    first: &str,
    second: &str,
) -> String {
    let ca = stack.sluice.ca_cert_path().unwrap();
    let out = stack
        .python(
            &[],
            RAW_CLIENT,
            &[
                &addr.ip().to_string(),
                &addr.port().to_string(),
                host,
                ca.to_str().unwrap(),
                first,
                second,
            ],
        )
        .unwrap();
    assert!(
        out.status.success(),
        "raw client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn variants_of_a_request_that_needs_approval_are_held() {
    let stack = Stack::builder("review-approve-variants")
        .redis_password()
        .gateway(r#"approval_timeout = "1s""#)
        .service(
            ServiceSpec::https(SERVICE, HOST)
                .extra(r#"approve = [{ method = "DELETE", path = "/v1/customers/*" }]"#),
        )
        .start()
        .expect("start the stack");
    let auth = bearer(&stack.token(SERVICE).unwrap());
    let json = [
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        r#"{"_method":"DELETE"}"#,
    ];
    let cases = [
        raw(
            "plain (control: held, then refused)",
            "DELETE",
            "/v1/customers/42",
        ),
        raw("long s", "DELETE", "/v1/cu%C5%BFtomers/42"),
        raw("trailing dot", "DELETE", "/v1/customers./42"),
        raw("; separator", "POST", "/v1/customers/42?x=1;_method=DELETE"),
        case(
            "JSON _method",
            &[&json[..], &["--request-target", "/v1/customers/42"]].concat(),
        ),
    ];
    let up = stack.upstream(SERVICE);
    let mut reached = Vec::new();
    for (what, args) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let before = up.count();
        let res = curl(&stack, &auth, &args);
        if up.count() > before {
            reached.push(format!("{what}: {}", res.status));
        }
    }
    assert!(
        reached.is_empty(),
        "reached the upstream without approval: {reached:#?}"
    );
}

const WS: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
const H2C: &str = "Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n";
const DENY_ADMIN: &str = r#"deny = [{ method = "DELETE", path = "/v1/customers/*" }, { method = "GET", path = "/admin/*" }]"#;

/// `GET target` on `host` with the token and the extra header lines `hdrs`.
fn get(host: &str, token: &str, target: &str, hdrs: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n{hdrs}\r\n")
}

fn delete(host: &str, token: &str) -> String {
    format!(
        "DELETE /v1/customers/42 HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
}

/// The status code of the first response in `raw`.
fn status(raw: &str) -> &str {
    raw.split(' ').nth(1).unwrap_or("")
}

#[test]
fn a_denied_request_pipelined_behind_an_upgrade_the_upstream_declines_is_refused() {
    let (stack, auth) = stack("review-upgrade-smuggle", DENY);
    let token = auth.trim_start_matches("Authorization: Bearer ");
    let up = stack.upstream(SERVICE);
    let del = delete(HOST, token);
    for (what, hdrs) in [("websocket", WS), ("h2c", H2C), ("no upgrade", "")] {
        let first = get(HOST, token, "/v1/x", hdrs);
        // The DELETE in the same write as the upgrade, then after the answer.
        for (a, b) in [
            (format!("{first}{del}"), String::new()),
            (first.clone(), del.clone()),
        ] {
            let got = raw_client(&stack, up.addr(), HOST, &a, &b);
            assert!(got.contains("403 Forbidden"), "{what}: {got}");
        }
    }
    let seen: Vec<String> = up
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.target))
        .collect();
    // The websocket and plain GETs reach the upstream; h2c is refused (400)
    // before it, since only WebSocket upgrades are relayed.
    assert_eq!(seen, vec!["GET /v1/x"; 4]);
}

#[test]
fn upgrades_on_denied_paths_masked_services_or_unasked_101s_are_refused() {
    use upgrade_support::{HOST as UHOST, SERVICE as USERVICE};
    let (stack, server, log) = raw_101_stack("review-upgrade-deny", DENY_ADMIN);
    let token = stack.token(USERVICE).unwrap();
    let denied = raw_client(
        &stack,
        server.addr,
        UHOST,
        &get(UHOST, &token, "/ADMIN/x", WS),
        "",
    );
    assert_eq!(status(&denied), "403", "{denied}");
    for (what, hdrs) in [
        ("no Upgrade", ""),
        ("Upgrade without Connection", "Upgrade: websocket\r\n"),
        ("Connection without Upgrade", "Connection: Upgrade\r\n"),
    ] {
        let got = raw_client(
            &stack,
            server.addr,
            UHOST,
            &get(UHOST, &token, "/v1/x", hdrs),
            &delete(UHOST, &token),
        );
        assert_eq!(status(&got), "502", "{what}: {got}");
        assert!(!got.contains(SSN), "{what}: {got}");
    }
    let seen = String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()).into_owned();
    assert!(
        !seen.contains("/ADMIN") && !seen.contains("DELETE /v1/customers"),
        "{seen}"
    );

    let (stack, server, _log) = raw_101_stack("review-upgrade-mask", MASK);
    let token = stack.token(USERVICE).unwrap();
    let caps = "Upgrade: WebSocket\r\nConnection: keep-alive, upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    for (what, hdrs, want) in [
        ("websocket in capitals", caps, "403"),
        ("h2c", H2C, "400"),
        (
            "another protocol",
            "Upgrade: foo/1\r\nConnection: Upgrade\r\n",
            "400",
        ),
        ("no Upgrade", "", "502"),
    ] {
        let got = raw_client(
            &stack,
            server.addr,
            UHOST,
            &get(UHOST, &token, "/v1/x", hdrs),
            "",
        );
        assert_eq!(status(&got), want, "{what}: {got}");
        assert!(!got.contains(SSN), "{what}: {got}");
    }
}

#[test]
fn non_websocket_upgrades_are_not_tunnelled_past_deny_rules() {
    use upgrade_support::{HOST as UHOST, SERVICE as USERVICE};
    let (stack, server, log) = raw_101_stack("review-upgrade-h2c", DENY);
    let token = stack.token(USERVICE).unwrap();
    let mut tunnelled = Vec::new();
    for (what, hdrs) in [
        ("h2c", H2C),
        ("foo/1", "Upgrade: foo/1\r\nConnection: Upgrade\r\n"),
    ] {
        let _ = std::fs::remove_file(&log);
        let got = raw_client(
            &stack,
            server.addr,
            UHOST,
            &get(UHOST, &token, "/v1/x", hdrs),
            &delete(UHOST, &token),
        );
        let seen = String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()).into_owned();
        if seen.contains("DELETE /v1/customers/42") {
            tunnelled.push(format!(
                "{what}: agent got {}",
                got.lines().next().unwrap_or("")
            ));
        }
    }
    assert!(
        tunnelled.is_empty(),
        "a DELETE reached the upstream through: {tunnelled:#?}"
    );
}
