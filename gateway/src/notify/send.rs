//! Sending notifications: one task per target, one message at a time,
//! HTTP/1.1 over TLS (verified against the system roots or the target's
//! `ca`) or plain HTTP on loopback, retried with exponential backoff.
use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{header, Request};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::{net::TcpStream, sync::mpsc};
use tracing::warn;

use super::{message::Message, Format, Target, SIGNATURE_HEADER};
use crate::{metrics::Metrics, tls::upstream_client_config, vault::VaultCache};

/// Attempts per message: the first and this many retries.
pub const RETRIES: u32 = 4;
/// The first retry's delay; each later one doubles it.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// How long one attempt (connect, TLS, request, response head) may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends the target's queue until the notifier is dropped.
pub async fn run(
    target: Target,
    vault: Arc<VaultCache>,
    metrics: Arc<Metrics>,
    mut rx: mpsc::Receiver<Message>,
) {
    while let Some(msg) = rx.recv().await {
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 0;
        loop {
            let result = tokio::time::timeout(ATTEMPT_TIMEOUT, post(&target, &vault, &msg))
                .await
                .unwrap_or_else(|_| Err("timed out".into()));
            match result {
                Ok(()) => break,
                Err(e) if attempt < RETRIES => {
                    warn!(target = %target.host, error = %e, "notification failed; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    attempt += 1;
                }
                Err(e) => {
                    metrics.notification_dropped(&target.host);
                    warn!(target = %target.host, error = %e, "notification dropped after {} attempts", RETRIES + 1);
                    break;
                }
            }
        }
    }
}

/// One POST of `msg`; `Err` (a message for the log) unless a 2xx came back.
async fn post(target: &Target, vault: &VaultCache, msg: &Message) -> Result<(), String> {
    let mut request = Request::post(target.url.path_and_query().map_or("/", |pq| pq.as_str()))
        .header(header::HOST, host_header(target))
        .header(header::CONTENT_TYPE, "application/json")
        .header(
            header::USER_AGENT,
            concat!("sluice/", env!("CARGO_PKG_VERSION")),
        );
    if let (Format::Json, Some(name)) = (msg.format, &target.secret) {
        let secret = vault
            .get(name)
            .map_err(|e| format!("vault: {e}"))?
            .ok_or_else(|| format!("notify secret {name:?} is not in the vault"))?;
        request = request.header(
            SIGNATURE_HEADER,
            super::signature(secret.expose(), &msg.body),
        );
    }
    let request = request
        .body(Full::new(Bytes::from(msg.body.clone())))
        .map_err(|e| e.to_string())?;
    let tcp = connect(&target.host, target.port, &target.resolve).await?;
    let status = if target.https {
        let config = upstream_client_config(target.ca.as_deref()).map_err(|e| e.to_string())?;
        let name = ServerName::try_from(target.host.clone()).map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        exchange(tls, request).await?
    } else {
        exchange(tcp, request).await?
    };
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("answered {status}"))
    }
}

async fn exchange<S>(io: S, request: Request<Full<Bytes>>) -> Result<hyper::StatusCode, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    Ok(response.status())
}

/// `host[:port]` as the URL gave it.
fn host_header(target: &Target) -> String {
    match target.url.authority() {
        Some(a) => a
            .as_str()
            .rsplit_once('@')
            .map_or(a.as_str(), |(_, h)| h)
            .to_string(),
        None => target.host.clone(),
    }
}

/// Connects to `host`:`port` at the pinned addresses `resolve`, or what
/// DNS says when there are none; `Err` names what failed.
pub async fn connect(host: &str, port: u16, resolve: &[IpAddr]) -> Result<TcpStream, String> {
    let addrs: Vec<SocketAddr> = if resolve.is_empty() {
        tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .collect()
    } else {
        resolve
            .iter()
            .map(|ip| SocketAddr::new(*ip, port))
            .collect()
    };
    let mut last = format!("{host} has no address");
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("connect {addr}: {e}"),
        }
    }
    Err(last)
}
