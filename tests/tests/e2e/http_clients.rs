//! HTTPS clients in the wild (issue 20): gRPC (HTTP/2 with `te: trailers`,
//! binary bodies and trailers, streaming both ways) through an HTTPS
//! service, against a real grpcio server with TLS. The test upstreams are
//! Python servers started by the test, outside the agent's cgroup.
use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use sluice_tests::{process, redteam, stack::next_upstream_ip, Stack};

pub(crate) const HOST: &str = "grpc.api.test";
pub(crate) const SERVICE: &str = "grpc-api";

/// A Python server (script `script`, then `args`) that prints its port on
/// its first stdout line; killed by PID when dropped.
pub(crate) struct PyServer {
    child: Child,
    pub(crate) addr: SocketAddr,
}

impl PyServer {
    pub(crate) fn start(script: &str, ip: std::net::IpAddr, args: &[&str]) -> PyServer {
        let mut cmd = Command::new("python3");
        cmd.args(["-c", script, &ip.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = process::die_with_parent(&mut cmd)
            .spawn()
            .expect("start the python server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .expect("server prints its port");
        let port: u16 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("server printed {line:?} instead of its port"));
        PyServer {
            child,
            addr: SocketAddr::new(ip, port),
        }
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A stack whose service `SERVICE` on `HOST` is `server`, credential
/// `Authorization: Bearer <secret>`, plus `extra` config lines.
pub(crate) fn stack_for(
    label: &str,
    start: impl FnOnce(&Stack) -> PyServer,
    extra: &str,
) -> (Stack, PyServer, String) {
    let mut stack = Stack::builder(label).prepare().unwrap();
    let server = start(&stack);
    let toml = redteam::https_service_toml(
        SERVICE,
        HOST,
        server.addr,
        stack.ca.pem_path(),
        "api-key",
        r#"header = "Authorization", format = "Bearer {}""#,
        extra,
    );
    redteam::append_config(&stack, &toml).unwrap();
    let secret = format!("sk_test_{}", sluice_tests::random_hex(16));
    stack.sluice.secret_put("api-key", &secret).unwrap();
    stack.sluice.start().unwrap();
    (stack, server, secret)
}

/// Writes the leaf certificate and key for `HOST` into the stack's dir.
pub(crate) fn leaf_files(stack: &Stack) -> (PathBuf, PathBuf) {
    let leaf = stack.ca.leaf(&[HOST]).unwrap();
    let (cert, key) = (stack.dir().join("leaf.pem"), stack.dir().join("leaf.key"));
    std::fs::write(&cert, &leaf.cert_pem).unwrap();
    std::fs::write(&key, &leaf.key_pem).unwrap();
    (cert, key)
}

pub(crate) fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8")
}

/// grpcio server: `Say` (unary, sets a trailer) and `Chat` (bidirectional
/// stream); each call's `authorization` metadata is appended to argv[4].
const GRPC_SERVER: &str = r#"
import grpc, json, sys
from concurrent import futures
ip, cert, key, log = sys.argv[1:5]
def record(ctx):
    md = dict(ctx.invocation_metadata())
    with open(log, "a") as f:
        f.write(json.dumps({"authorization": md.get("authorization", "")}) + "\n")
def say(req, ctx):
    record(ctx)
    ctx.set_trailing_metadata((("x-echo-trailer", "yes"),))
    return b"hello " + req
def chat(requests, ctx):
    record(ctx)
    for m in requests:
        yield b"echo " + m
handler = grpc.method_handlers_generic_handler("echo.Echo", {
    "Say": grpc.unary_unary_rpc_method_handler(say),
    "Chat": grpc.stream_stream_rpc_method_handler(chat)})
server = grpc.server(futures.ThreadPoolExecutor(4))
server.add_generic_rpc_handlers((handler,))
creds = grpc.ssl_server_credentials([(open(key, "rb").read(), open(cert, "rb").read())])
port = server.add_secure_port(ip + ":0", creds)
server.start()
print(port, flush=True)
server.wait_for_termination()
"#;

/// grpcio client (the agent): a unary call, then a bidirectional stream;
/// prints the reply, the trailer, and the joined stream replies, or the
/// status code and details of a failed call.
const GRPC_CLIENT: &str = r#"
import grpc, sys
target, host, ca, token = sys.argv[1:5]
creds = grpc.ssl_channel_credentials(open(ca, "rb").read())
channel = grpc.secure_channel(target, creds, options=(("grpc.ssl_target_name_override", host),))
md = (("authorization", "Bearer " + token),)
try:
    reply, call = channel.unary_unary("/echo.Echo/Say").with_call(b"agent", metadata=md, timeout=20)
    print(reply.decode())
    print(dict(call.trailing_metadata()).get("x-echo-trailer"))
    chat = channel.stream_stream("/echo.Echo/Chat")
    print(",".join(m.decode() for m in chat(iter([b"a", b"b", b"c"]), metadata=md, timeout=20)))
except grpc.RpcError as e:
    print("error", e.code().name, e.details())
"#;

/// A stack whose upstream is the Python server `script` (TLS with a leaf
/// for `HOST`), which appends what it saw to the file `log` in the stack's
/// dir; the stack, server, secret and that file's path.
fn py_stack(
    label: &str,
    script: &str,
    log: &str,
    extra: &str,
) -> (Stack, PyServer, String, PathBuf) {
    let mut log_path = PathBuf::new();
    let (stack, server, secret) = stack_for(
        label,
        |stack| {
            let (cert, key) = leaf_files(stack);
            log_path = stack.dir().join(log);
            PyServer::start(
                script,
                next_upstream_ip(),
                &[path_str(&cert), path_str(&key), path_str(&log_path)],
            )
        },
        extra,
    );
    (stack, server, secret, log_path)
}

fn grpc_stack(label: &str, extra: &str) -> (Stack, PyServer, String, PathBuf) {
    py_stack(label, GRPC_SERVER, "grpc-calls.jsonl", extra)
}

fn grpc_client(stack: &Stack, server: &PyServer) -> Vec<String> {
    let token = stack.token(SERVICE).unwrap();
    let ca = stack.sluice.ca_cert_path().unwrap();
    let out = stack
        .python(
            &[("GRPC_DNS_RESOLVER", "native")],
            GRPC_CLIENT,
            &[&server.addr.to_string(), HOST, path_str(&ca), &token],
        )
        .unwrap();
    assert!(
        out.status.success(),
        "grpc client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn grpcio_unary_and_bidirectional_streaming_calls_get_the_real_key_upstream() {
    let (stack, server, secret, log) = grpc_stack("grpc-calls", "");
    let lines = grpc_client(&stack, &server);
    assert_eq!(lines, ["hello agent", "yes", "echo a,echo b,echo c"]);
    let calls = std::fs::read_to_string(&log).unwrap();
    let seen: Vec<serde_json::Value> = calls
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(seen.len(), 2, "{calls}");
    for call in &seen {
        assert_eq!(call["authorization"], format!("Bearer {secret}"));
    }
    let texts = stack.sluice.all_output_text();
    sluice_tests::assert_no_secret(&secret, &texts);
}

#[test]
fn grpc_on_a_service_with_masked_fields_is_refused_with_a_clear_status() {
    let (stack, server, _secret, log) = grpc_stack("grpc-masked", r#"mask = ["ssn"]"#);
    let lines = grpc_client(&stack, &server);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("error PERMISSION_DENIED") && lines[0].contains("mask"),
        "{lines:?}"
    );
    assert!(
        std::fs::read_to_string(&log).unwrap_or_default().is_empty(),
        "the call reached the upstream"
    );
}

/// websockets server: echoes each text message as `echo <message>`; the
/// `Authorization` header of each handshake is appended to argv[4].
const WS_SERVER: &str = r#"
import asyncio, json, ssl, sys
from websockets.asyncio.server import serve
ip, cert, key, log = sys.argv[1:5]
async def echo(ws):
    with open(log, "a") as f:
        f.write(json.dumps({"authorization": ws.request.headers.get("Authorization", "")}) + "\n")
    async for message in ws:
        await ws.send("echo " + message)
async def main():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    async with serve(echo, ip, 0, ssl=ctx) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()
asyncio.run(main())
"#;

/// websockets client (the agent): sends two messages and prints the
/// replies, or `refused <status>` when the handshake is refused.
const WS_CLIENT: &str = r#"
import ssl, sys
from websockets.sync.client import connect
from websockets.exceptions import InvalidStatus
uri, host, ca, token = sys.argv[1:5]
ctx = ssl.create_default_context(cafile=ca)
try:
    with connect(uri, ssl=ctx, server_hostname=host,
                 additional_headers={"Authorization": "Bearer " + token}) as ws:
        for m in ["one", "two"]:
            ws.send(m)
            print(ws.recv())
except InvalidStatus as e:
    print("refused", e.response.status_code)
"#;

fn ws_stack(label: &str, extra: &str) -> (Stack, PyServer, String, PathBuf) {
    py_stack(label, WS_SERVER, "ws-handshakes.jsonl", extra)
}

fn ws_client(stack: &Stack, server: &PyServer) -> Vec<String> {
    let token = stack.token(SERVICE).unwrap();
    let ca = stack.sluice.ca_cert_path().unwrap();
    let uri = format!("wss://{}/chat", server.addr);
    let out = stack
        .python(&[], WS_CLIENT, &[&uri, HOST, path_str(&ca), &token])
        .unwrap();
    assert!(
        out.status.success(),
        "websocket client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_websocket_upgrade_gets_the_real_key_and_relays_both_ways_with_its_bytes_recorded() {
    let (stack, server, secret, log) = ws_stack("ws-upgrade", "");
    assert_eq!(ws_client(&stack, &server), ["echo one", "echo two"]);
    let handshakes = std::fs::read_to_string(&log).unwrap();
    let first: serde_json::Value =
        serde_json::from_str(handshakes.lines().next().expect("a handshake")).unwrap();
    assert_eq!(first["authorization"], format!("Bearer {secret}"));

    let events = sluice_tests::poll("the upgrade's response line", crate::WAIT, || {
        let events = stack.sluice.audit_events().unwrap();
        events
            .iter()
            .any(|e| e["event"] == "response" && e["status"] == 101)
            .then_some(events)
    })
    .unwrap();
    let request = events.iter().find(|e| e["event"] == "request").unwrap();
    assert_eq!(
        (request["method"].as_str(), request["status"].as_u64()),
        (Some("GET"), Some(101))
    );
    let response = events.iter().find(|e| e["event"] == "response").unwrap();
    assert!(
        response["bytes"].as_u64().unwrap() > 0 && response["bytes_up"].as_u64().unwrap() > 0,
        "{response}"
    );
    let texts = stack.sluice.all_output_text();
    sluice_tests::assert_no_secret(&secret, &texts);
}

#[test]
fn a_websocket_upgrade_on_a_service_with_masked_fields_is_refused() {
    let (stack, server, _secret, log) = ws_stack("ws-masked", r#"mask = ["ssn"]"#);
    assert_eq!(ws_client(&stack, &server), ["refused 403"]);
    assert!(std::fs::read_to_string(&log).unwrap_or_default().is_empty());
}

/// Node's `ws` client (the agent): the same exchange as [`WS_CLIENT`].
const NODE_WS_CLIENT: &str = r#"
const WebSocket = require('ws');
const fs = require('fs');
const [uri, host, ca, token] = process.argv.slice(1);
const ws = new WebSocket(uri, { ca: fs.readFileSync(ca), servername: host,
                                headers: { Authorization: 'Bearer ' + token } });
const replies = [];
ws.on('open', () => ws.send('one'));
ws.on('message', (m) => {
  replies.push(m.toString());
  if (replies.length === 1) { ws.send('two'); return; }
  console.log(replies.join('\n'));
  ws.close();
});
ws.on('unexpected-response', (req, res) => { console.log('refused ' + res.statusCode); process.exit(0); });
ws.on('error', (e) => { console.error(e.message); process.exit(1); });
"#;

#[test]
fn nodes_ws_client_upgrades_through_sluice_too() {
    let (stack, server, secret, log) = ws_stack("ws-node", "");
    let token = stack.token(SERVICE).unwrap();
    let ca = stack.sluice.ca_cert_path().unwrap();
    let uri = format!("wss://{}/chat", server.addr);
    let node_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/node-clients/node_modules");
    let out = stack
        .agent_with_hosts(
            &[("NODE_PATH", path_str(&node_path))],
            &[
                "node",
                "-e",
                NODE_WS_CLIENT,
                &uri,
                HOST,
                path_str(&ca),
                &token,
            ],
        )
        .unwrap();
    assert!(
        out.status.success(),
        "node ws client failed (run `cargo xtask setup` for the ws package): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .collect::<Vec<_>>(),
        ["echo one", "echo two"]
    );
    let handshakes = std::fs::read_to_string(&log).unwrap();
    assert!(
        handshakes.contains(&format!("Bearer {secret}")),
        "{handshakes}"
    );
    sluice_tests::assert_no_secret(&secret, &stack.sluice.all_output_text());
}
