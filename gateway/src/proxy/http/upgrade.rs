//! HTTP/1.1 protocol upgrades (RFC 9110 §7.8, `101 Switching Protocols`),
//! e.g. WebSocket (RFC 6455 §4): the upgrade request goes through token
//! swap and policy like any request, then both directions are relayed as
//! bytes until either side closes, and a `response` line records the bytes
//! each way.
//!
//! Over HTTP/2 towards the agent, Sluice does not announce extended CONNECT
//! (RFC 8441), so clients use HTTP/1.1 for WebSockets; the upstream leg of
//! an upgrade always uses an HTTP/1.1-only client, since an upgrade cannot
//! run over HTTP/2. Frames are not inspected: an upgrade is refused on a
//! service with `mask` or `echo_guard`, which could not be honoured.
use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use hyper::{
    header::{self, HeaderMap, HeaderValue},
    upgrade::OnUpgrade,
    Response,
};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::debug;

use super::session::ConnCtx;
use crate::recorder::Event;

/// True when the request asks to switch protocols (`Connection: upgrade`
/// and an `Upgrade` header).
pub fn requested(headers: &HeaderMap) -> bool {
    let connection_upgrade = headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
    });
    connection_upgrade && headers.contains_key(header::UPGRADE)
}

/// The protocol Sluice relays upgrades to (RFC 6455 §4.1), with [`SPDY`]
/// for Kubernetes streams. Others (`h2c`, …) would tunnel requests past
/// policy and are refused.
pub const WEBSOCKET: &str = "websocket";

/// True when an `Upgrade` value names WebSocket alone.
pub fn is_websocket(value: &HeaderValue) -> bool {
    names(value, WEBSOCKET)
}

/// SPDY/3.1, which Kubernetes clients before WebSocket support (kubectl
/// before 1.30) stream `exec`, `attach` and `port-forward` over. Relayed
/// for those subresources of a Kubernetes service only, where the
/// streams carry a command's input and output, not API requests.
pub const SPDY: &str = "SPDY/3.1";

/// True when an `Upgrade` value names SPDY/3.1 alone.
pub fn is_spdy(value: &HeaderValue) -> bool {
    names(value, SPDY)
}

fn names(value: &HeaderValue, protocol: &str) -> bool {
    value
        .to_str()
        .is_ok_and(|v| v.trim().eq_ignore_ascii_case(protocol))
}

/// Puts `Connection: upgrade` and the agent's `Upgrade` value back on the
/// upstream request after hop-by-hop headers were stripped.
pub fn restore_request_headers(headers: &mut HeaderMap, upgrade: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, upgrade);
}

/// Puts `Connection: upgrade` and the upstream's `Upgrade` value back on a
/// `101` response to the agent.
pub fn restore_response_headers(headers: &mut HeaderMap, upgrade: Option<HeaderValue>) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(v) = upgrade {
        headers.insert(header::UPGRADE, v);
    }
}

/// Relays the upgraded connection in the background: waits for both sides
/// to switch, copies bytes both ways until one closes, then records a
/// `response` line with status 101, `bytes` sent to the agent and
/// `bytes_up` sent to the upstream. The connection's `close` line waits for
/// it ([`ConnCtx::relay_guard`]).
pub fn relay<B>(ctx: Arc<ConnCtx>, agent: OnUpgrade, upstream: &mut Response<B>) {
    let upstream = hyper::upgrade::on(upstream);
    let guard = ctx.relay_guard();
    tokio::spawn(async move {
        let _guard = guard;
        let (agent, upstream) = match tokio::try_join!(agent, upstream) {
            Ok(both) => both,
            Err(e) => {
                ctx.record(Event::Error {
                    message: format!("protocol upgrade failed: {e}"),
                });
                return;
            }
        };
        let mut agent = Counting::new(TokioIo::new(agent));
        let mut upstream = Counting::new(TokioIo::new(upstream));
        if let Err(e) = tokio::io::copy_bidirectional(&mut agent, &mut upstream).await {
            // A peer that closes without a TLS close_notify ends here too.
            debug!(error = %e, "upgraded connection ended with an error");
        }
        ctx.record(Event::Response {
            status: 101,
            bytes: upstream.read,
            bytes_up: Some(agent.read),
        });
    });
}

/// A stream that counts the bytes read from it (those then written to the
/// other side), kept however the copy ends.
struct Counting<T> {
    inner: T,
    read: u64,
}

impl<T> Counting<T> {
    fn new(inner: T) -> Self {
        Counting { inner, read: 0 }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counting<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.read += (buf.filled().len() - before) as u64;
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counting<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
