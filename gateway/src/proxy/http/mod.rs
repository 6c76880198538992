//! HTTP/1.1 (RFC 9112) and HTTP/2 (RFC 9113), over TLS (RFC 8446) or plain.
//!
//! A connection is TLS when its first byte is a handshake record (`0x16`,
//! RFC 8446 §5.1). The ClientHello's SNI picks the service among those on
//! the dialled port; an unknown SNI is refused and logged. The agent gets a
//! certificate for that name minted by the local CA, and ALPN offers only
//! what it offered. Plain HTTP is routed by `Host`.
use std::{convert::Infallible, sync::Arc, time::Instant};

use hyper::{body::Incoming, service::service_fn, Request};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tokio_rustls::LazyConfigAcceptor;
use tracing::{debug, warn};

use super::{Gateway, Intercepted};
use crate::tls::servable_alpn;

pub mod client_cert;
pub mod counted;
pub mod credential;
pub mod echo_guard;
pub mod json_mask;
pub mod kube;
pub mod kube_mask;
pub mod kube_stream;
pub mod operation;
pub mod reply;
pub mod request;
pub mod session;
pub mod upgrade;
pub mod upstream;
pub mod wide_text;

/// How long an agent may take to send its first bytes or a request head.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves one intercepted connection. `default` names the service matched
/// by (address, port), if any; otherwise SNI or `Host` decide.
pub async fn serve(
    gw: Arc<Gateway>,
    conn: Intercepted,
    stream: TcpStream,
    default: Option<String>,
) {
    let mut first = [0u8; 1];
    match tokio::time::timeout(HEADER_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(1)) => {}
        _ => return,
    }
    if first[0] == 0x16 {
        serve_tls(gw, conn, stream, default).await
    } else {
        let ctx = session::ConnCtx::new(gw, conn, default, false);
        serve_http(ctx, stream).await
    }
}

async fn serve_tls(
    gw: Arc<Gateway>,
    conn: Intercepted,
    stream: TcpStream,
    default: Option<String>,
) {
    let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
    let start = match tokio::time::timeout(HEADER_TIMEOUT, acceptor).await {
        Ok(Ok(start)) => start,
        Ok(Err(e)) => return debug!(error = %e, "bad TLS ClientHello"),
        Err(_) => return debug!("TLS ClientHello timed out"),
    };
    let hello = start.client_hello();
    let sni = hello.server_name().map(str::to_ascii_lowercase);
    let offered: Vec<&[u8]> = hello.alpn().map(|it| it.collect()).unwrap_or_default();
    let Some(service) = pick_https(&gw, &conn, sni.as_deref(), default) else {
        warn!(
            agent = %conn.identity.agent, pid = conn.identity.pid, sni = sni.as_deref().unwrap_or("(none)"),
            dst = %conn.original_dst, "refused TLS: SNI names no service on this port"
        );
        return;
    };
    let name = match sni {
        Some(name) => name,
        None => gw
            .snapshot()
            .service(&service)
            .map(|(_, s)| s.host.clone())
            .unwrap_or_default(),
    };
    let config = match gw.guard.ca.agent_config(&name, &servable_alpn(&offered)) {
        Ok(c) => c,
        Err(e) => return warn!(error = %e, "cannot mint a certificate"),
    };
    let tls = match tokio::time::timeout(HEADER_TIMEOUT, start.into_stream(config)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return debug!(error = %e, "TLS handshake with agent failed"),
        Err(_) => return debug!("TLS handshake timed out"),
    };
    let ctx = session::ConnCtx::new(gw, conn, Some(service), true);
    serve_http(ctx, tls).await
}

/// The https service for a TLS connection: the one whose host is the SNI
/// among services on the dialled port, or, without SNI, the service
/// matched by address.
fn pick_https(
    gw: &Gateway,
    conn: &Intercepted,
    sni: Option<&str>,
    default: Option<String>,
) -> Option<String> {
    let snap = gw.snapshot();
    let port = conn.original_dst.port();
    let https =
        |s: &&crate::config::Service| s.protocol().http_tls() == Some(true) && s.port == port;
    match sni {
        Some(name) => snap
            .cfg
            .services
            .iter()
            .filter(https)
            .find(|s| s.host.eq_ignore_ascii_case(name)),
        None => default.and_then(|d| snap.cfg.services.iter().filter(https).find(|s| s.name == d)),
    }
    .map(|s| s.name.clone())
}

async fn serve_http<S>(ctx: Arc<session::ConnCtx>, io: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let started = Instant::now();
    let svc_ctx = ctx.clone();
    // The request's future is boxed: hyper keeps room for the service's
    // future in every connection, idle or not, and the pipeline's is large.
    let svc = service_fn(move |req: Request<Incoming>| {
        let ctx = svc_ctx.clone();
        async move { Ok::<_, Infallible>(Box::pin(request::handle(ctx, req)).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256);
    if let Err(e) = builder
        .serve_connection_with_upgrades(TokioIo::new(io), svc)
        .await
    {
        debug!(error = %e, "agent connection ended with an error");
    }
    ctx.relays_done().await;
    ctx.close(started.elapsed());
}
