//! A misbehaving upstream for the attack and fault tests (issue 8): it
//! echoes what it received, compresses or encodes the echo, stalls, drips
//! or breaks off mid-body, chosen by the request path. It binds an exact
//! address (so two services can share one port on two loopback IPs) and
//! records every request, like [`crate::Upstream`].
//!
//! Paths:
//! - `/echo…`: `200` JSON `{"method","target","headers":{…}}` of the request;
//! - `/echo-gzip…`: the same JSON gzip-compressed (`Content-Encoding: gzip`)
//!   when the request accepts gzip;
//! - `/echo-b64…`: base64 of the JSON, `text/plain`;
//! - `/echo-header…`: the request's `authorization` and `x-api-key` values
//!   in response headers `x-echo-authorization`, `x-echo-api-key`;
//! - `/echo-location…`: `302` to a `Location` holding the request target;
//! - `/stall…`: never answers;
//! - `/drip…`: a 64-byte body sent one byte per 500 ms;
//! - `/close-mid…`: promises 100 000 bytes, sends 1 000, then resets;
//! - anything else: `200 {"ok":true}`.
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::{body::Frame, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::{poll, RecordedRequest, TestCa};

type Body = BoxBody<Bytes, std::io::Error>;

/// A running echoing upstream.
pub struct EchoUpstream {
    addr: SocketAddr,
    host: String,
    tls: bool,
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl EchoUpstream {
    /// HTTPS for `host` at exactly `addr` (loopback), certificate from `ca`.
    pub fn https(ca: &TestCa, host: &str, addr: SocketAddr) -> Result<EchoUpstream> {
        let config = ca.server_config(&[host], &[b"h2", b"http/1.1"])?;
        Self::start(host, addr, Some(tokio_rustls::TlsAcceptor::from(config)))
    }

    /// Plain HTTP for `host` at exactly `addr` (loopback).
    pub fn http(host: &str, addr: SocketAddr) -> Result<EchoUpstream> {
        Self::start(host, addr, None)
    }

    fn start(
        host: &str,
        addr: SocketAddr,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Result<EchoUpstream> {
        assert!(
            addr.ip().is_loopback(),
            "test upstreams listen on loopback only"
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("echo-upstream")
            .enable_all()
            .build()?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(addr))
            .with_context(|| format!("bind echo upstream {addr}"))?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let is_tls = tls.is_some();
        runtime.spawn(accept_loop(listener, tls, requests.clone()));
        Ok(EchoUpstream {
            addr,
            host: host.into(),
            tls: is_tls,
            requests,
            runtime: Some(runtime),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// `<scheme>://<host>:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!(
            "{}://{}:{}{}",
            if self.tls { "https" } else { "http" },
            self.host,
            self.addr.port(),
            path
        )
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.requests.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// Waits until at least `n` requests arrived.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Result<Vec<RecordedRequest>> {
        poll(
            &format!("{n} request(s) at echo upstream {}", self.host),
            timeout,
            || {
                let r = self.requests();
                (r.len() >= n).then_some(r)
            },
        )
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

/// Binds two listeners on `a` and `b` (loopback IPs) with one common free
/// port and returns it (the listeners are closed again, so the port is
/// free for the upstreams a moment later).
pub fn common_port(a: std::net::IpAddr, b: std::net::IpAddr) -> Result<u16> {
    for _ in 0..50 {
        let first = std::net::TcpListener::bind((a, 0))?;
        let port = first.local_addr()?.port();
        if std::net::TcpListener::bind((b, port)).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no port free on both {a} and {b}")
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
) {
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            continue;
        };
        let (tls, requests) = (tls.clone(), requests.clone());
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req| handle(req, peer, requests.clone()));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            match tls {
                Some(acceptor) => {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
                None => {
                    let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
                }
            }
        });
    }
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    peer: SocketAddr,
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let body_len = body.len();
    let target = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let record = RecordedRequest {
        method: parts.method.to_string(),
        target: target.clone(),
        version: format!("{:?}", parts.version),
        headers: headers.clone(),
        body_len,
        body,
        peer,
    };
    let path = record.path().to_string();
    requests.lock().unwrap().push(record);
    // Every value of every header, as the upstream received it.
    let mut map = serde_json::Map::new();
    for (n, v) in &headers {
        match map.get_mut(n) {
            Some(serde_json::Value::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(v);
            }
            _ => {
                map.insert(n.clone(), serde_json::Value::String(v.clone()));
            }
        }
    }
    let echo =
        serde_json::json!({"method": parts.method.as_str(), "target": target, "headers": map})
            .to_string();
    let accepts_gzip = parts
        .headers
        .get_all(hyper::header::ACCEPT_ENCODING)
        .iter()
        .any(|v| v.to_str().is_ok_and(|s| s.contains("gzip")));
    let header_of = |name: &str| {
        parts
            .headers
            .get(name)
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default()
    };
    let json = |body: Body| {
        Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(body)
    };
    let response = if path.starts_with("/echo-gzip") && accepts_gzip {
        Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(full(gzip(echo.as_bytes())))
    } else if path.starts_with("/echo-b64") {
        Response::builder()
            .status(200)
            .header("content-type", "text/plain")
            .body(full(base64::engine::general_purpose::STANDARD.encode(echo)))
    } else if path.starts_with("/echo-header") {
        Response::builder()
            .status(200)
            .header(
                "x-echo-authorization",
                hyper::header::HeaderValue::from_bytes(&header_of("authorization")).unwrap(),
            )
            .header(
                "x-echo-api-key",
                hyper::header::HeaderValue::from_bytes(&header_of("x-api-key")).unwrap(),
            )
            .body(full("ok"))
    } else if path.starts_with("/echo-location") {
        Response::builder()
            .status(302)
            .header("location", format!("https://elsewhere.test{target}"))
            .body(full(""))
    } else if path.starts_with("/echo") {
        json(full(echo))
    } else if path.starts_with("/stall") {
        std::future::pending::<()>().await;
        unreachable!()
    } else if path.starts_with("/drip") {
        let stream = byte_stream(64, Duration::from_millis(500), None);
        Response::builder()
            .status(200)
            .header("content-length", "64")
            .body(stream)
    } else if path.starts_with("/close-mid") {
        let stream = byte_stream(1000, Duration::ZERO, Some(1000));
        Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .header("content-length", "100000")
            .body(stream)
    } else {
        json(full(r#"{"ok":true}"#))
    };
    Ok(response.expect("valid response"))
}

/// A body of `n` bytes (`x`), one per `every`, failing after `fail_after`
/// bytes if given.
fn byte_stream(n: usize, every: Duration, fail_after: Option<usize>) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    tokio::spawn(async move {
        if every.is_zero() {
            let chunk = fail_after.unwrap_or(n).min(n);
            let _ = tx
                .send(Ok(Frame::data(Bytes::from(vec![b'x'; chunk]))))
                .await;
        } else {
            for _ in 0..n {
                tokio::time::sleep(every).await;
                if tx
                    .send(Ok(Frame::data(Bytes::from_static(b"x"))))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        if fail_after.is_some() {
            let _ = tx
                .send(Err(std::io::Error::other("upstream broke off mid-body")))
                .await;
        }
    });
    ChannelBody(rx).boxed()
}

/// A response body fed by a channel.
struct ChannelBody(tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx)
    }
}

/// gzip via the `gzip` program (the test crate has no deflate library).
fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = std::process::Command::new("gzip")
        .args(["-c", "-n", "-9"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("gzip is installed");
    child.stdin.take().unwrap().write_all(data).unwrap();
    child.wait_with_output().expect("gzip ran").stdout
}
