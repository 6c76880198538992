//! A Kubernetes API server stand-in, for the Kubernetes tests: this machine
//! has no cluster, so this HTTPS server (own test CA, ALPN `h2` and
//! `http/1.1`) answers what `kubectl` and client libraries ask of an API
//! server, the way the API server does (Kubernetes API reference, v1):
//! - discovery: `/version`, `/api`, `/apis`, `/api/v1` (pods, pods/log,
//!   pods/exec, namespaces, secrets);
//! - pods in namespace `default` (`web-1`, `web-2`): get, list, delete,
//!   watch (`?watch=true`: an `ADDED` event for a new pod `web-3`, which
//!   no list shows, then held open), logs
//!   (`?follow=true`: the first line at once, the second when the test
//!   calls [`KubeApi::release_logs`]);
//! - namespaces: list, get, delete;
//! - secrets (`db` in `default`, data `password` = base64 of the value
//!   given at start, also in its last-applied annotation): get, list,
//!   watch;
//! - `pods/{name}/exec` over WebSocket (`v5.channel.k8s.io`,
//!   `v4.channel.k8s.io`; RFC 6455): `echo ARGS` writes ARGS on the stdout
//!   channel (`warn ARGS` on the stderr channel), then a `Success` status
//!   on the error channel, then closes;
//!   a SPDY/3.1 upgrade is switched and answered with [`SPDY_MARK`] only.
//!
//! Every request must carry `Authorization: Bearer <the real token>`, else
//! it gets a 401 `Status`; or, started with [`Auth::ClientCert`], the TLS
//! handshake requires a client certificate signed by the test CA (as an
//! API server with `--client-ca-file`) and a request carrying any
//! `Authorization` gets the 401. Requests are recorded as
//! [`RecordedRequest`]s.
use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use anyhow::{Context as _, Result};
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::{
    body::{Body, Frame, Incoming},
    Request, Response, StatusCode,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::{mpsc, Notify},
};

use crate::{upstream::RecordedRequest, TestCa};

type ApiBody = BoxBody<Bytes, Infallible>;

/// How the stand-in authenticates its clients.
#[derive(Debug, Clone)]
pub enum Auth {
    /// `Authorization: Bearer <token>`.
    Bearer(String),
    /// A client certificate of the test CA, and no `Authorization`.
    ClientCert,
}

/// What the handlers share.
struct State {
    auth: Auth,
    secret_value: String,
    pods: Mutex<Vec<String>>,
    requests: Mutex<Vec<RecordedRequest>>,
    logs_released: Notify,
}

/// A running API server stand-in.
pub struct KubeApi {
    host: String,
    addr: SocketAddr,
    state: Arc<State>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl KubeApi {
    /// Serves `host` on `ip`:<free port> with a certificate from `ca`,
    /// accepting only clients that pass `auth`; Secret `default/db` holds
    /// `secret_value`.
    pub fn start(
        ca: &TestCa,
        host: &str,
        ip: IpAddr,
        auth: Auth,
        secret_value: &str,
    ) -> Result<KubeApi> {
        assert!(ip.is_loopback(), "test servers listen on loopback only");
        let client_auth = matches!(auth, Auth::ClientCert);
        let config = ca.server_config_with(&[host], &[b"h2", b"http/1.1"], client_auth)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kube-api")
            .enable_all()
            .build()?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind((ip, 0)))
            .with_context(|| format!("bind the API server stand-in on {ip}"))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            auth,
            secret_value: secret_value.to_string(),
            pods: Mutex::new(vec!["web-1".into(), "web-2".into()]),
            requests: Mutex::new(Vec::new()),
            logs_released: Notify::new(),
        });
        runtime.spawn(accept_loop(listener, acceptor, state.clone()));
        Ok(KubeApi {
            host: host.to_string(),
            addr,
            state,
            runtime: Some(runtime),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://host:port`, the kubeconfig's `server`.
    pub fn server(&self) -> String {
        format!("https://{}:{}", self.host, self.addr.port())
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The requests received so far with `method` and path `path`.
    pub fn requests_to(&self, method: &str, path: &str) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == method && r.path() == path)
            .collect()
    }

    /// The value Secret `default/db` holds (before base64).
    pub fn secret_value(&self) -> &str {
        &self.state.secret_value
    }

    /// The pods in namespace `default` now.
    pub fn pods(&self) -> Vec<String> {
        self.state.pods.lock().unwrap().clone()
    }

    /// Lets every following log stream send its second line and end.
    pub fn release_logs(&self) {
        self.state.logs_released.notify_waiters();
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    state: Arc<State>,
) {
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            continue;
        };
        let (tls, state) = (tls.clone(), state.clone());
        tokio::spawn(async move {
            let Ok(stream) = tls.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(req, peer, state).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn record(req: &Request<Incoming>, peer: SocketAddr) -> RecordedRequest {
    RecordedRequest {
        method: req.method().to_string(),
        target: req
            .uri()
            .path_and_query()
            .map_or("/".into(), |pq| pq.as_str().to_string()),
        version: format!("{:?}", req.version()),
        headers: req
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body_len: 0,
        body: Vec::new(),
        peer,
    }
}

async fn handle(req: Request<Incoming>, peer: SocketAddr, state: Arc<State>) -> Response<ApiBody> {
    let seen = record(&req, peer);
    state.requests.lock().unwrap().push(seen.clone());
    let authorized = match &state.auth {
        Auth::Bearer(token) => seen.header("authorization") == Some(&format!("Bearer {token}")),
        // The handshake verified the certificate; nothing else may come.
        Auth::ClientCert => seen.header("authorization").is_none(),
    };
    if !authorized {
        return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    }
    let path = seen.path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let watch = seen.query("watch").is_some_and(|w| w == "true" || w == "1");
    let method = req.method().as_str().to_string();
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["version"]) => json_ok(
            json!({"major": "1", "minor": "32", "gitVersion": "v1.32.0", "platform": "linux/amd64"}),
        ),
        ("GET", ["api"]) => json_ok(json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}]})),
        ("GET", ["apis"]) => {
            json_ok(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []}))
        }
        ("GET", ["api", "v1"]) => json_ok(discovery()),
        ("GET", ["api", "v1", "namespaces"]) => json_ok(list(
            "NamespaceList",
            vec![namespace("default"), namespace("prod")],
        )),
        ("GET", ["api", "v1", "namespaces", ns]) => json_ok(namespace(ns)),
        ("DELETE", ["api", "v1", "namespaces", ns]) => json_ok(namespace(ns)),
        ("GET", ["api", "v1", "namespaces", "default", "pods"]) if watch => {
            held_open(vec![json!({"type": "ADDED", "object": pod("web-3")})])
        }
        ("GET", ["api", "v1", "namespaces", "default", "pods"]) => json_ok(list(
            "PodList",
            state.pods.lock().unwrap().iter().map(|p| pod(p)).collect(),
        )),
        ("GET", ["api", "v1", "namespaces", "default", "pods", name]) => {
            match known_pod(&state, name) {
                true => json_ok(pod(name)),
                false => not_found("pods", name),
            }
        }
        ("DELETE", ["api", "v1", "namespaces", "default", "pods", name]) => {
            let mut pods = state.pods.lock().unwrap();
            match pods.iter().position(|p| p == name) {
                Some(i) => {
                    pods.remove(i);
                    json_ok(pod(name))
                }
                None => not_found("pods", name),
            }
        }
        ("GET", ["api", "v1", "namespaces", "default", "pods", name, "log"])
            if known_pod(&state, name) =>
        {
            logs(
                state.clone(),
                seen.query("follow").is_some_and(|f| f == "true"),
            )
        }
        ("GET" | "POST", ["api", "v1", "namespaces", "default", "pods", name, "exec"])
            if known_pod(&state, name) =>
        {
            exec(req, &seen)
        }
        ("GET", ["api", "v1", "namespaces", "default", "secrets"]) if watch => held_open(vec![
            json!({"type": "ADDED", "object": secret(&state.secret_value)}),
        ]),
        ("GET", ["api", "v1", "namespaces", "default", "secrets"]) => {
            json_ok(list("SecretList", vec![secret(&state.secret_value)]))
        }
        ("GET", ["api", "v1", "namespaces", "default", "secrets", "db"]) => {
            json_ok(secret(&state.secret_value))
        }
        _ => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        ),
    }
}

fn known_pod(state: &State, name: &str) -> bool {
    state.pods.lock().unwrap().iter().any(|p| p == name)
}

fn discovery() -> Value {
    let all = [
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch",
    ];
    json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [
        {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod", "verbs": all, "shortNames": ["po"]},
        {"name": "pods/log", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"]},
        {"name": "pods/exec", "singularName": "", "namespaced": true, "kind": "PodExecOptions", "verbs": ["create", "get"]},
        {"name": "namespaces", "singularName": "namespace", "namespaced": false, "kind": "Namespace", "verbs": all, "shortNames": ["ns"]},
        {"name": "secrets", "singularName": "secret", "namespaced": true, "kind": "Secret", "verbs": all}
    ]})
}

fn metadata(name: &str, namespace: Option<&str>) -> Value {
    let mut m = json!({"name": name, "uid": format!("uid-{name}"), "resourceVersion": "7",
        "creationTimestamp": "2026-01-01T00:00:00Z"});
    if let Some(ns) = namespace {
        m["namespace"] = json!(ns);
    }
    m
}

fn pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata(name, Some("default")),
        "spec": {"containers": [{"name": "web", "image": "nginx"}]},
        "status": {"phase": "Running", "containerStatuses": [{"name": "web", "ready": true, "restartCount": 0, "image": "nginx", "imageID": "", "state": {"running": {}}}]}})
}

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": metadata(name, None), "status": {"phase": "Active"}})
}

/// Secret `default/db`, its value in `data` and in the annotation
/// `kubectl apply` leaves.
fn secret(value: &str) -> Value {
    let data = json!({"password": B64.encode(value)});
    let applied = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": "default"}, "data": data});
    let mut meta = metadata("db", Some("default"));
    meta["annotations"] =
        json!({"kubectl.kubernetes.io/last-applied-configuration": applied.to_string()});
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": "Opaque", "data": data})
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": "7"}, "items": items})
}

fn not_found(resource: &str, name: &str) -> Response<ApiBody> {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{resource} \"{name}\" not found"),
    )
}

/// A `Status` failure, as the API server answers errors.
fn status(code: StatusCode, reason: &str, message: &str) -> Response<ApiBody> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16()});
    respond(code, "application/json", full(body.to_string()))
}

fn json_ok(v: Value) -> Response<ApiBody> {
    respond(StatusCode::OK, "application/json", full(v.to_string()))
}

fn full(text: String) -> ApiBody {
    Full::new(Bytes::from(text)).boxed()
}

fn respond(code: StatusCode, content_type: &str, body: ApiBody) -> Response<ApiBody> {
    Response::builder()
        .status(code)
        .header("content-type", content_type)
        .body(body)
        .expect("valid response")
}

/// A body fed by a channel: each message a frame, the end when the sender
/// is dropped.
struct Channel(mpsc::UnboundedReceiver<Bytes>);

impl Body for Channel {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|m| m.map(|b| Ok(Frame::data(b))))
    }
}

/// A watch: `events`, one JSON line each, then the stream stays open
/// until the client goes away.
fn held_open(events: Vec<Value>) -> Response<ApiBody> {
    let (tx, rx) = mpsc::unbounded_channel();
    for e in events {
        let _ = tx.send(Bytes::from(format!("{e}\n")));
    }
    tokio::spawn(async move { tx.closed().await });
    respond(StatusCode::OK, "application/json", Channel(rx).boxed())
}

/// A container log: line 1 at once; with `follow`, line 2 only once the
/// test releases it.
fn logs(state: Arc<State>, follow: bool) -> Response<ApiBody> {
    let (tx, rx) = mpsc::unbounded_channel();
    let _ = tx.send(Bytes::from_static(b"log line 1\n"));
    if follow {
        tokio::spawn(async move {
            state.logs_released.notified().await;
            let _ = tx.send(Bytes::from_static(b"log line 2\n"));
        });
    } else {
        let _ = tx.send(Bytes::from_static(b"log line 2\n"));
    }
    respond(StatusCode::OK, "text/plain", Channel(rx).boxed())
}

/// The WebSocket GUID of RFC 6455 §1.3.
const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `pods/exec` over WebSocket: the handshake (RFC 6455 §4.2.2), then the
/// command's output in the channel protocol of `v4`/`v5.channel.k8s.io`.
fn exec(mut req: Request<Incoming>, seen: &RecordedRequest) -> Response<ApiBody> {
    if seen
        .header("upgrade")
        .is_some_and(|u| u.eq_ignore_ascii_case("SPDY/3.1"))
    {
        return spdy(req);
    }
    let offered = seen
        .header("sec-websocket-protocol")
        .unwrap_or("")
        .to_string();
    let Some(protocol) = ["v5.channel.k8s.io", "v4.channel.k8s.io"]
        .into_iter()
        .find(|p| offered.split(',').any(|o| o.trim() == *p))
    else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "a WebSocket upgrade with v5/v4.channel.k8s.io is required",
        );
    };
    let Some(key) = seen.header("sec-websocket-key") else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "no Sec-WebSocket-Key",
        );
    };
    let accept = {
        use sha1::Digest;
        B64.encode(sha1::Sha1::digest(
            format!("{key}{WEBSOCKET_GUID}").as_bytes(),
        ))
    };
    let query = seen.target.split_once('?').map_or("", |(_, q)| q);
    let command: Vec<String> = form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.into_owned())
        .collect();
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut io = TokioIo::new(upgraded);
        let (channel, output) = match command.split_first() {
            Some((first, args)) if first == "echo" => (1u8, format!("{}\n", args.join(" "))),
            Some((first, args)) if first == "warn" => (2u8, format!("{}\n", args.join(" "))),
            _ => (1u8, String::new()),
        };
        let mut out = Vec::new();
        out.extend(frame(0x2, &[&[channel][..], output.as_bytes()].concat()));
        out.extend(frame(
            0x2,
            &[&[3u8][..], br#"{"metadata":{},"status":"Success"}"#].concat(),
        ));
        out.extend(frame(0x8, &1000u16.to_be_bytes()));
        if io.write_all(&out).await.is_err() {
            return;
        }
        let _ = io.flush().await;
        // Read the client's frames until it closes.
        let mut sink = [0u8; 1024];
        while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), io.read(&mut sink)).await
        {
            if n == 0 {
                break;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-accept", accept)
        .header("sec-websocket-protocol", protocol)
        .body(full(String::new()))
        .expect("valid response")
}

/// A SPDY/3.1 upgrade of `pods/exec`: switched, then the bytes
/// [`SPDY_MARK`] (no SPDY framing: this shows the relay, not SPDY).
fn spdy(mut req: Request<Incoming>) -> Response<ApiBody> {
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut io = TokioIo::new(upgraded);
        let _ = io.write_all(SPDY_MARK).await;
        let _ = io.flush().await;
        let mut sink = [0u8; 1024];
        while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), io.read(&mut sink)).await
        {
            if n == 0 {
                break;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("upgrade", "SPDY/3.1")
        .header("connection", "Upgrade")
        .header("x-stream-protocol-version", "v4.channel.k8s.io")
        .body(full(String::new()))
        .expect("valid response")
}

/// What the stand-in sends after switching an exec to SPDY/3.1.
pub const SPDY_MARK: &[u8] = b"spdy-stream-relayed\n";

/// An unmasked server frame with FIN set (RFC 6455 §5.2).
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}
