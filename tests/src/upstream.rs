//! Real HTTPS and plain-HTTP upstreams on `127.0.0.x`, recording every
//! request they receive.
//!
//! Each upstream runs on its own small tokio runtime, inside the test
//! process, which is outside every agent cgroup. It speaks HTTP/1.1 with
//! keep-alive and HTTP/2 (ALPN `h2`, or the h2 preface on plain HTTP).
use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;

use crate::{poll, TestCa};

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query, e.g. `/v1/charges?limit=1`.
    pub target: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    /// Every header, in order, names lower-case.
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
    /// The request body as received.
    pub body: Vec<u8>,
    /// The TCP peer (Sluice's upstream socket).
    pub peer: SocketAddr,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The query parameters, in order, undecoded.
    pub fn query_params(&self) -> Vec<(String, String)> {
        let Some((_, q)) = self.target.split_once('?') else {
            return Vec::new();
        };
        q.split('&')
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (p.to_string(), String::new()),
            })
            .collect()
    }

    /// The first value of query parameter `name`.
    pub fn query(&self, name: &str) -> Option<String> {
        self.query_params()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// Everything the request carried that could hold a credential: the
    /// target and every header value.
    pub fn all_text(&self) -> String {
        let mut s = self.target.clone();
        for (n, v) in &self.headers {
            s.push('\n');
            s.push_str(n);
            s.push_str(": ");
            s.push_str(v);
        }
        s
    }
}

/// The canned answer: status and JSON body.
#[derive(Clone)]
struct Answer {
    status: u16,
    /// `Content-Type` of the answer; `None` sends none.
    content_type: Option<String>,
    body: String,
}

/// A running upstream.
pub struct Upstream {
    host: String,
    addr: SocketAddr,
    tls: bool,
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
    answer: Arc<Mutex<Option<Answer>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Upstream {
    /// An HTTPS upstream for `host` on `ip`:<free port>, with a certificate
    /// from `ca`, offering ALPN `h2` and `http/1.1`.
    pub fn https(ca: &TestCa, host: &str, ip: IpAddr) -> Result<Upstream> {
        let config = ca.server_config(&[host], &[b"h2", b"http/1.1"])?;
        Self::start(host, ip, Some(tokio_rustls::TlsAcceptor::from(config)))
    }

    /// A plain-HTTP upstream for `host` on `ip`:<free port>.
    pub fn http(host: &str, ip: IpAddr) -> Result<Upstream> {
        Self::start(host, ip, None)
    }

    fn start(host: &str, ip: IpAddr, tls: Option<tokio_rustls::TlsAcceptor>) -> Result<Upstream> {
        assert!(ip.is_loopback(), "test upstreams listen on loopback only");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("upstream")
            .enable_all()
            .build()?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind((ip, 0)))
            .with_context(|| format!("bind upstream on {ip}"))?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(Mutex::new(None));
        let is_tls = tls.is_some();
        runtime.spawn(accept_loop(
            listener,
            tls,
            host.to_string(),
            requests.clone(),
            answer.clone(),
        ));
        Ok(Upstream {
            host: host.to_string(),
            addr,
            tls: is_tls,
            requests,
            answer,
            runtime: Some(runtime),
        })
    }

    /// The host name agents dial.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https` or `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }

    /// `<scheme>://<host>:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!(
            "{}://{}:{}{}",
            self.scheme(),
            self.host,
            self.addr.port(),
            path
        )
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.requests.lock().unwrap().clone()
    }

    /// How many requests were received so far.
    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// The last request received.
    pub fn last(&self) -> Option<RecordedRequest> {
        self.requests.lock().unwrap().last().cloned()
    }

    /// Waits until at least `n` requests arrived.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Result<Vec<RecordedRequest>> {
        poll(
            &format!("{n} request(s) at upstream {}", self.host),
            timeout,
            || {
                let r = self.requests();
                (r.len() >= n).then_some(r)
            },
        )
    }

    /// Answers every later request with `status` and `body` instead of the
    /// default `200 {"ok":true,…}`.
    pub fn respond_with(&self, status: u16, body: &str) {
        self.respond_with_type(status, Some("application/json"), body);
    }

    /// Like [`Upstream::respond_with`] with `content_type` (`None`: no
    /// `Content-Type` header at all).
    pub fn respond_with_type(&self, status: u16, content_type: Option<&str>, body: &str) {
        *self.answer.lock().unwrap() = Some(Answer {
            status,
            content_type: content_type.map(str::to_string),
            body: body.to_string(),
        });
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    host: String,
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
    answer: Arc<Mutex<Option<Answer>>>,
) {
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            continue;
        };
        let (tls, host, requests, answer) =
            (tls.clone(), host.clone(), requests.clone(), answer.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                handle(req, peer, host.clone(), requests.clone(), answer.clone())
            });
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

async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    host: String,
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
    answer: Arc<Mutex<Option<Answer>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
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
    let record = RecordedRequest {
        method: parts.method.to_string(),
        target: target.clone(),
        version: format!("{:?}", parts.version),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body_len,
        body,
        peer,
    };
    // Never echo headers or the query back: they carry the real key.
    let path = record.path().to_string();
    requests.lock().unwrap().push(record);
    let answer = answer.lock().unwrap().clone().unwrap_or_else(|| Answer {
        status: 200,
        content_type: Some("application/json".into()),
        body: json!({"ok": true, "upstream": host, "method": parts.method.as_str(), "path": path})
            .to_string(),
    });
    let mut response = Response::builder().status(answer.status);
    if let Some(ct) = &answer.content_type {
        response = response.header("content-type", ct);
    }
    let response = response
        .body(Full::new(Bytes::from(answer.body)))
        .expect("valid response");
    Ok(response)
}
