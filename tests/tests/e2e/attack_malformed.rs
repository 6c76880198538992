//! Malformed input against the running daemon (issue 8), from inside an
//! agent cgroup as a non-root user: broken PostgreSQL framing and start-up
//! packets, duplicate and oversized HTTP headers, HTTP/2 floods. Each gets
//! a clear error or a closed connection, never a hang or a panic, and other
//! sessions are unaffected.
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_tests::{
    redteam::{self, assert_daemon_healthy, AgentUser, RedTeam},
    ServiceSpec, Stack,
};

use crate::{billing_db, DB, DB_HOST, WAIT};

const SERVICE: &str = "payments-api";
const HOST: &str = "api.payments.test";

/// PostgreSQL wire helpers for probes: start-up, SCRAM-SHA-256 login with
/// the token, and reading what comes back until close or a deadline.
pub const PG: &str = r#"
import hashlib, hmac

def pg_msg(tag, body):
    return tag + struct.pack('>i', len(body) + 4) + body

def pg_startup(params, version=196608):
    body = struct.pack('>i', version) + b''.join(k.encode() + b'\0' + v.encode() + b'\0' for k, v in params) + b'\0'
    return struct.pack('>i', len(body) + 4) + body

def recv_exact(s, n):
    data = b''
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data

def pg_read(s):
    hdr = recv_exact(s, 5)
    if hdr is None:
        return None
    n = struct.unpack('>i', hdr[1:])[0]
    return hdr[:1], recv_exact(s, n - 4) or b''

def pg_fields(body):
    return {chr(f[0]): f[1:].decode('utf-8', 'replace') for f in body.split(b'\0') if f}

def pg_drain(s, timeout=10):
    """Messages until the server closes (or the deadline): [(tag, fields)], 'closed'|'timeout'."""
    s.settimeout(timeout)
    start = time.time()
    got = []
    try:
        while time.time() - start < timeout:
            m = pg_read(s)
            if m is None:
                return got, 'closed', round(time.time() - start, 2)
            got.append((m[0].decode('latin-1'), pg_fields(m[1]) if m[0] in (b'E', b'N') else len(m[1])))
    except socket.timeout:
        return got, 'timeout', round(time.time() - start, 2)
    except OSError as e:
        return got, 'closed:' + ename(e), round(time.time() - start, 2)
    return got, 'timeout', round(time.time() - start, 2)

def pg_login(ip, port, token, user='agent', db='billing'):
    s = tcp(ip, port)
    s.sendall(pg_startup([('user', user), ('database', db)]))
    t, b = pg_read(s)
    if t != b'R' or struct.unpack('>i', b[:4])[0] != 10:
        raise Exception('no SASL offer: %r %r' % (t, b))
    nonce = base64.b64encode(os.urandom(18)).decode()
    bare = 'n=,r=' + nonce
    first = ('n,,' + bare).encode()
    s.sendall(pg_msg(b'p', b'SCRAM-SHA-256\0' + struct.pack('>i', len(first)) + first))
    t, b = pg_read(s)
    server_first = b[4:].decode()
    attrs = dict(a.split('=', 1) for a in server_first.split(','))
    salted = hashlib.pbkdf2_hmac('sha256', token.encode(), base64.b64decode(attrs['s']), int(attrs['i']))
    client_key = hmac.new(salted, b'Client Key', 'sha256').digest()
    stored = hashlib.sha256(client_key).digest()
    without_proof = 'c=biws,r=' + attrs['r']
    auth = (bare + ',' + server_first + ',' + without_proof).encode()
    proof = bytes(a ^ b for a, b in zip(client_key, hmac.new(stored, auth, 'sha256').digest()))
    s.sendall(pg_msg(b'p', (without_proof + ',p=' + base64.b64encode(proof).decode()).encode()))
    while True:
        m = pg_read(s)
        if m is None or m[0] == b'E':
            raise Exception('login failed: %r' % (m and pg_fields(m[1])))
        if m[0] == b'Z':
            return s

def pg_query(s, sql):
    s.sendall(pg_msg(b'Q', sql.encode() + b'\0'))
    got = []
    while True:
        m = pg_read(s)
        if m is None:
            return got + [('closed',)]
        got.append((m[0].decode('latin-1'), pg_fields(m[1]) if m[0] in (b'E', b'N') else m[1].decode('latin-1')))
        if m[0] == b'Z':
            return got
"#;

/// Asserts a drained connection ended closed (not by our deadline), and
/// that anything it said first was an ErrorResponse.
#[track_caller]
fn assert_closed(what: &str, r: &Value) {
    let (msgs, end) = (&r[0], &r[1]);
    assert!(
        end.as_str().is_some_and(|e| e.starts_with("closed")),
        "{what}: not closed: {r}"
    );
    for m in msgs.as_array().unwrap() {
        assert_eq!(
            m[0], "E",
            "{what}: only an ErrorResponse may precede the close: {r}"
        );
    }
}

/// The one FATAL ErrorResponse of a drained connection, then closed.
#[track_caller]
fn assert_fatal(what: &str, r: &Value, sqlstate: &str) {
    assert_closed(what, r);
    let msgs = r[0].as_array().unwrap();
    assert_eq!(msgs.len(), 1, "{what}: {r}");
    assert_eq!(
        (msgs[0][1]["S"].as_str(), msgs[0][1]["C"].as_str()),
        (Some("FATAL"), Some(sqlstate)),
        "{what}: {r}"
    );
    assert!(
        msgs[0][1]["M"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: a message says why: {r}"
    );
}

fn pg_probe(rt: &RedTeam, script: &str, args: &[&str]) -> Value {
    rt.probe(rt.stack.agent(), &format!("{PG}\n{script}"), args)
}

/// A psql as the agent still gets its rows.
fn assert_psql_works(rt: &RedTeam, stack: &Stack) {
    let token = stack.token(DB).unwrap();
    let conninfo = stack.pg_conninfo(DB, &token, "sslmode=disable");
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
        "psql after the attack: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn postgres_length_prefixes_0_3_max_and_negative_close_the_connection_in_start_up_and_after_login()
{
    let user = AgentUser::create().unwrap();
    let stack = Stack::builder("malformed-pg-len")
        .service(billing_db())
        .start()
        .unwrap();
    let rt = RedTeam::new(&stack, &user).unwrap();
    let token = stack.token(DB).unwrap();
    let pg = stack.postgres(DB).addr();
    let script = r#"
ip, port, token = sys.argv[1], int(sys.argv[2]), sys.argv[3]
res = {}
for n in (0, 3, 0x7fffffff, -1, -2147483648):
    s = tcp(ip, port)
    s.sendall(struct.pack('>i', n) + b'\0\0\0\0')
    res['startup %d' % n] = pg_drain(s)
    s = pg_login(ip, port, token)
    s.sendall(b'Q' + struct.pack('>i', n) + b'SELECT 1\0')
    res['typed %d' % n] = pg_drain(s)
out(res)
"#;
    let r = pg_probe(
        &rt,
        script,
        &[&pg.ip().to_string(), &pg.port().to_string(), &token],
    );
    for (what, v) in r.as_object().unwrap() {
        assert_closed(what, v);
    }
    assert_daemon_healthy(&stack);
    assert_psql_works(&rt, &stack);
    stack.assert_no_secret_leaked();
}

#[test]
fn a_startup_message_without_user_and_unknown_protocol_codes_get_a_fatal_error() {
    let user = AgentUser::create().unwrap();
    let stack = Stack::builder("malformed-pg-startup")
        .service(billing_db())
        .start()
        .unwrap();
    let rt = RedTeam::new(&stack, &user).unwrap();
    let pg = stack.postgres(DB).addr();
    let script = r#"
ip, port, host = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def send(data):
    s = tcp(ip, port); s.sendall(data); return pg_drain(s)
res = {
  'no user': send(pg_startup([('database', 'billing')])),
  'empty user': send(pg_startup([('user', '')])),
  # 1234.5679 is SSLRequest itself; 1234.5681 is no known code.
  'version 1234.5681': send(pg_startup([('user', 'u')], (1234 << 16) | 5681)),
  'version 2.0': send(pg_startup([('user', 'u')], 2 << 16)),
  'cancel with a short body': send(struct.pack('>iii', 12, 80877102, 1)),
}
# SSLRequest, TLS, then a second SSLRequest (1234.5679) inside TLS.
s = tcp(ip, port)
s.sendall(struct.pack('>ii', 8, 80877103))
answer = s.recv(1)
t = tls(s, host)
t.sendall(struct.pack('>ii', 8, 80877103))
res['sslrequest inside tls'] = pg_drain(t)
res['ssl answer'] = answer.decode()
out(res)
"#;
    let r = pg_probe(
        &rt,
        script,
        &[&pg.ip().to_string(), &pg.port().to_string(), DB_HOST],
    );
    assert_eq!(r["ssl answer"], "S");
    assert_fatal("no user", &r["no user"], "28000");
    assert_fatal("empty user", &r["empty user"], "28000");
    for what in [
        "version 1234.5681",
        "version 2.0",
        "cancel with a short body",
        "sslrequest inside tls",
    ] {
        assert_fatal(what, &r[what], "08P01");
    }
    assert_daemon_healthy(&stack);
    assert_psql_works(&rt, &stack);
}

#[test]
fn malformed_extended_protocol_messages_and_a_deeply_nested_query_leave_sluice_standing() {
    let user = AgentUser::create().unwrap();
    let stack = Stack::builder("malformed-pg-ext")
        .service(billing_db())
        .start()
        .unwrap();
    let rt = RedTeam::new(&stack, &user).unwrap();
    let token = stack.token(DB).unwrap();
    let pg = stack.postgres(DB).addr();
    let script = r#"
ip, port, token = sys.argv[1], int(sys.argv[2]), sys.argv[3]
res = {}
# Bind announcing 32767 parameters, then truncated.
s = pg_login(ip, port, token)
s.sendall(pg_msg(b'B', b'\0\0' + struct.pack('>hh', 0, 32767) + struct.pack('>i', 100) + b'x') + pg_msg(b'S', b''))
res['truncated bind'] = pg_drain(s)
# Parse whose SQL has no terminating NUL.
s = pg_login(ip, port, token)
s.sendall(pg_msg(b'P', b's1\0SELECT 1') + pg_msg(b'S', b''))
res['unterminated parse'] = pg_drain(s)
# Describe and Close with no body at all.
s = pg_login(ip, port, token)
s.sendall(pg_msg(b'D', b'') + pg_msg(b'S', b''))
res['empty describe'] = pg_drain(s)
# A statement nested 100 000 deep: refused or failed, and the session goes on.
s = pg_login(ip, port, token)
deep = pg_query(s, 'SELECT ' + '(' * 100000 + '1' + ')' * 100000)
after = pg_query(s, 'SELECT 41 + 1')
res['deep'] = [m[0] for m in deep]
res['deep error'] = [m[1].get('C') for m in deep if m[0] == 'E']
res['after deep'] = [m for m in after if m[0] == 'D']
out(res)
"#;
    let r = pg_probe(
        &rt,
        script,
        &[&pg.ip().to_string(), &pg.port().to_string(), &token],
    );
    for what in ["truncated bind", "unterminated parse", "empty describe"] {
        assert_closed(what, &r[what]);
    }
    assert_eq!(r["deep"].as_array().unwrap().last().unwrap(), "Z", "{r}");
    assert_eq!(
        r["deep error"].as_array().unwrap().len(),
        1,
        "the nested query gets one ErrorResponse: {r}"
    );
    assert!(
        r["after deep"].to_string().contains("42"),
        "the session goes on: {r}"
    );
    assert_daemon_healthy(&stack);
    assert_psql_works(&rt, &stack);
}

#[test]
fn duplicate_authorization_headers_are_refused_when_they_disagree_and_collapse_to_one_secret_when_they_agree(
) {
    let user = AgentUser::create().unwrap();
    let stack = Stack::builder("malformed-dup-auth")
        .service(ServiceSpec::https(SERVICE, HOST))
        .start()
        .unwrap();
    let rt = RedTeam::new(&stack, &user).unwrap();
    let token = stack.token(SERVICE).unwrap();
    let other = stack.token(SERVICE).unwrap();
    let up = stack.upstream(SERVICE).addr();
    let script = r#"
ip, port, host, token, other = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
a = lambda t: ('Authorization', 'Bearer ' + t)
out({'different': https(ip, port, host, '/v1/different', [a(token), a(other)]),
     'same': https(ip, port, host, '/v1/same', [a(token), a(token)]),
     'token and junk': https(ip, port, host, '/v1/junk', [a(token), ('Authorization', 'Basic Zm9vOmJhcg==')])})
"#;
    let r = rt.probe(
        stack.agent(),
        script,
        &[
            &up.ip().to_string(),
            &up.port().to_string(),
            HOST,
            &token,
            &other,
        ],
    );
    assert_eq!(r["different"]["status"], 400, "{r}");
    assert!(
        r["different"]["body"]
            .as_str()
            .unwrap()
            .contains("more than one"),
        "{r}"
    );
    assert_eq!(r["same"]["status"], 200, "{r}");
    assert_eq!(r["token and junk"]["status"], 200, "{r}");
    let reqs = stack.upstream(SERVICE).wait_for(2, WAIT).unwrap();
    assert_eq!(
        reqs.len(),
        2,
        "the disagreeing request never reached the upstream"
    );
    let secret = format!("Bearer {}", stack.secret(SERVICE));
    for q in &reqs {
        let auths: Vec<&str> = q
            .headers
            .iter()
            .filter(|(n, _)| n == "authorization")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(
            auths,
            [secret.as_str()],
            "{}: exactly one Authorization, the secret",
            q.path()
        );
        crate::assert_no_token(q);
    }
    assert_daemon_healthy(&stack);
    stack.assert_no_secret_leaked();
}

#[test]
fn oversized_headers_get_431_or_a_closed_connection_quickly_and_other_sessions_go_on() {
    let user = AgentUser::create().unwrap();
    let stack = Stack::builder("malformed-big-header")
        .service(ServiceSpec::https(SERVICE, HOST))
        .start()
        .unwrap();
    let rt = RedTeam::new(&stack, &user).unwrap();
    let token = stack.token(SERVICE).unwrap();
    let up = stack.upstream(SERVICE).addr();
    let script = r#"
ip, port, host, token = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def timed(headers):
    t = time.time()
    r = https(ip, port, host, '/v1/big', bearer(token) + headers, timeout=20)
    return {'status': r.get('status'), 'error': r.get('error'), 'secs': round(time.time() - t, 2)}
out({'one 1 MiB header': timed([('X-Big', 'a' * (1 << 20))]),
     'four thousand headers': timed([('X-H%d' % i, 'v') for i in range(4000)]),
     'after': https(ip, port, host, '/v1/after', bearer(token)).get('status')})
"#;
    let r = rt.probe(
        stack.agent(),
        script,
        &[&up.ip().to_string(), &up.port().to_string(), HOST, &token],
    );
    for what in ["one 1 MiB header", "four thousand headers"] {
        let v = &r[what];
        assert!(v["status"] == 431 || v["status"].is_null(), "{what}: {r}");
        assert!(
            v["secs"].as_f64().unwrap() < 10.0,
            "{what} took too long: {r}"
        );
    }
    assert_eq!(r["after"], 200, "{r}");
    let paths: Vec<String> = stack
        .upstream(SERVICE)
        .requests()
        .iter()
        .map(|q| q.path().to_string())
        .collect();
    assert_eq!(
        paths,
        ["/v1/after"],
        "no oversized request reached the upstream"
    );
    assert_daemon_healthy(&stack);
}

/// Raw HTTP/2 over TLS (ALPN h2) for the flood probes.
const H2: &str = r#"
PREFACE = b'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'

def frame(ftype, flags, sid, payload=b''):
    return struct.pack('>I', len(payload))[1:] + bytes([ftype, flags]) + struct.pack('>I', sid) + payload

def request_block(host, token=None):
    # :method GET, :scheme https, :path / (static table), :authority literal.
    block = b'\x82\x87\x84' + b'\x01' + bytes([len(host)]) + host.encode()
    if token:
        v = ('Bearer ' + token).encode()
        block += b'\x00' + bytes([13]) + b'authorization' + bytes([len(v)]) + v
    return block

def h2_connect(ip, port, host):
    s = tls(tcp(ip, port, 20), host, ['h2'])
    if s.selected_alpn_protocol() != 'h2':
        raise Exception('no h2: %r' % s.selected_alpn_protocol())
    s.sendall(PREFACE + frame(4, 0, 0))
    return s

def flood(s, frames_for, total, seconds=30, expect_acks=0):
    """Writes total frame batches while reading; returns what ended it."""
    s.setblocking(False)
    start = time.time()
    sent = goaway = acks = 0
    done_at = None
    pending = b''
    buf = b''
    while time.time() - start < seconds:
        if not pending and sent < total:
            pending = frames_for(sent)
            sent += 1
        r, w, _ = select.select([s], [s] if pending else [], [], 0.5)
        if r:
            try:
                data = s.recv(65536)
            except ssl.SSLWantReadError:
                data = None
            except (ConnectionResetError, ssl.SSLError, OSError):
                return {'ended': 'reset', 'sent': sent, 'goaway': goaway, 'acks': acks, 'secs': round(time.time() - start, 2)}
            if data == b'':
                return {'ended': 'closed', 'sent': sent, 'goaway': goaway, 'acks': acks, 'secs': round(time.time() - start, 2)}
            if data:
                buf += data
                while len(buf) >= 9:
                    n = int.from_bytes(buf[:3], 'big')
                    if len(buf) < 9 + n:
                        break
                    if buf[3] == 7:
                        goaway += 1
                    if buf[3] == 4 and buf[4] & 1:
                        acks += 1
                    buf = buf[9 + n:]
        if w and pending:
            try:
                k = s.send(pending)
                pending = pending[k:]
            except (ssl.SSLWantWriteError, BlockingIOError):
                pass
            except (ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError):
                return {'ended': 'reset', 'sent': sent, 'goaway': goaway, 'acks': acks, 'secs': round(time.time() - start, 2)}
        if sent >= total and not pending:
            # Everything is written: keep reading what the server makes of it.
            done_at = done_at or time.time()
            if time.time() - done_at > 5 or (expect_acks and acks >= expect_acks):
                return {'ended': 'done', 'sent': sent, 'goaway': goaway, 'acks': acks, 'secs': round(time.time() - start, 2)}
    return {'ended': 'deadline', 'sent': sent, 'goaway': goaway, 'acks': acks, 'secs': round(time.time() - start, 2)}
"#;

#[test]
fn http2_rapid_reset_settings_and_continuation_floods_are_cut_off_and_other_sessions_go_on() {
    let user = AgentUser::create().unwrap();
    let stack = Stack::builder("malformed-h2-flood")
        .service(ServiceSpec::https(SERVICE, HOST))
        .start()
        .unwrap();
    let rt = RedTeam::new(&stack, &user).unwrap();
    let token = stack.token(SERVICE).unwrap();
    let up = stack.upstream(SERVICE).addr();
    let rss_before = rss_kib(redteam::daemon_pid(&stack));
    let script = format!(
        "{H2}\n{}",
        r#"
ip, port, host, token = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
res = {}
# Rapid reset: HEADERS then RST_STREAM(CANCEL), 100 streams per batch.
s = h2_connect(ip, port, host)
block = request_block(host, token)
def resets(i):
    return b''.join(frame(1, 0x5, 2 * (100 * i + j) + 1, block) + frame(3, 0, 2 * (100 * i + j) + 1, struct.pack('>I', 8)) for j in range(100))
res['rapid reset'] = flood(s, resets, 500)
# SETTINGS flood: 100 000 frames, never reading the ACKs unless the server makes us.
s = h2_connect(ip, port, host)
settings = frame(4, 0, 0, struct.pack('>HI', 3, 100)) * 1000
res['settings'] = flood(s, lambda i: settings, 100, expect_acks=100 * 1000 + 1)
# CONTINUATION flood: one HEADERS without END_HEADERS, then 10 MiB of CONTINUATION.
s = h2_connect(ip, port, host)
cont = frame(9, 0, 1, b'\x00\x03abc\x03def' * 100) * 10
def continuation(i):
    return (frame(1, 0x1, 1, b'\x82\x87\x84') if i == 0 else b'') + cont
res['continuation'] = flood(s, continuation, 1000)
out(res)
"#
    );
    let mut flood = rt
        .spawn_python(
            stack.agent(),
            &script,
            &[&up.ip().to_string(), &up.port().to_string(), HOST, &token],
        )
        .unwrap();
    // While the floods run, another session of the same agent works.
    let started = Instant::now();
    let mut during = Vec::new();
    while started.elapsed() < Duration::from_secs(3) {
        let ok = rt.probe(stack.agent(), "out({'s': https(sys.argv[1], int(sys.argv[2]), sys.argv[3], '/v1/during', bearer(sys.argv[4])).get('status')})", &[&up.ip().to_string(), &up.port().to_string(), HOST, &token]);
        during.push(ok["s"].clone());
    }
    let status = sluice_tests::process::wait_timeout(&mut flood, Duration::from_secs(90)).unwrap();
    let mut stdout = String::new();
    std::io::Read::read_to_string(flood.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert!(status.is_some(), "the flood probe hung");
    let r: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    eprintln!("h2 floods: {r}; requests during them: {during:?}");
    assert!(
        during.iter().all(|s| *s == 200),
        "requests during the floods: {during:?}"
    );
    for what in ["rapid reset", "continuation"] {
        let ended = r[what]["ended"].as_str().unwrap();
        assert!(
            ended == "closed" || ended == "reset",
            "{what}: the server must cut the flooding connection off: {r}"
        );
    }
    // SETTINGS: either cut off, or each frame answered with its ACK under
    // backpressure (the server stops reading while its ACK cannot be
    // written), within the probe's deadline: bounded work, no hang.
    let settings = &r["settings"];
    let ended = settings["ended"].as_str().unwrap();
    assert!(
        ended == "closed"
            || ended == "reset"
            || (ended == "done" && settings["acks"].as_u64() >= Some(100_000)),
        "settings flood: {r}"
    );
    assert_daemon_healthy(&stack);
    let rss_after = rss_kib(redteam::daemon_pid(&stack));
    assert!(
        rss_after < rss_before + 200 * 1024,
        "sluice grew from {rss_before} KiB to {rss_after} KiB"
    );
}

fn rss_kib(pid: u32) -> u64 {
    sluice_tests::process::status_kib(pid, "VmRSS:")
}

fn vm_kib(pid: u32, field: &str) -> u64 {
    sluice_tests::process::status_kib(pid, field)
}

#[test]
fn a_huge_postgres_message_is_refused_before_it_is_buffered() {
    let user = AgentUser::create().unwrap();
    let stack = Stack::builder("malformed-pg-big")
        .service(billing_db())
        .start()
        .unwrap();
    let rt = RedTeam::new(&stack, &user).unwrap();
    let token = stack.token(DB).unwrap();
    let pg = stack.postgres(DB).addr();
    let pid = redteam::daemon_pid(&stack);
    let (rss0, vm0) = (vm_kib(pid, "VmRSS:"), vm_kib(pid, "VmSize:"));
    let script = r#"
ip, port, token = sys.argv[1], int(sys.argv[2]), sys.argv[3]
socks = []
for i in range(4):
    s = pg_login(ip, port, token)
    try:
        s.sendall(b'Q' + struct.pack('>i', (1 << 30) - 1) + b'a' * (64 << 20))
    except OSError:
        pass  # refused at the header: the connection is already closed
    socks.append(s)
out({'sent': len(socks)})
sys.stdin.readline()
"#;
    let mut child = rt
        .spawn_python(
            stack.agent(),
            &format!("{PG}\n{script}"),
            &[&pg.ip().to_string(), &pg.port().to_string(), &token],
        )
        .unwrap();
    let lines = crate::Lines::new(child.stdout.take().unwrap());
    let _ = lines.next("the big messages sent");
    let (rss1, vm1) = (vm_kib(pid, "VmRSS:"), vm_kib(pid, "VmSize:"));
    eprintln!("sluice RSS {rss0} -> {rss1} KiB, VmSize {vm0} -> {vm1} KiB with 4 connections each announcing 1 GiB and sending 64 MiB");
    drop(child.stdin.take());
    let _ = sluice_tests::process::wait_timeout(&mut child, WAIT);
    assert_daemon_healthy(&stack);
    // One process serves every agent: what one connection may make it hold
    // must be bounded well below what the host has (measured before the
    // fix: +256 MiB resident and +4 GiB reserved for these four).
    assert!(
        vm1 < vm0 + 1024 * 1024,
        "{} MiB reserved up front for four announced messages",
        (vm1 - vm0) / 1024
    );
    assert!(
        rss1 < rss0 + 128 * 1024,
        "{} MiB held for four unfinished statements",
        (rss1 - rss0) / 1024
    );
}
