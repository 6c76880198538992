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
use std::sync::Arc;

use hyper::{
    header::{self, HeaderMap, HeaderValue},
    upgrade::OnUpgrade,
    Response,
};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use super::{kube_stream::Frames, session::ConnCtx};
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
/// to switch, copies bytes both ways until both have closed (an end of one
/// direction is passed on as a shutdown of the other side's writing half),
/// then records a `response` line with status 101, `bytes` sent to the
/// agent and `bytes_up` sent to the upstream. With `record_output` (a
/// Kubernetes exec or attach over a `channel.k8s.io` WebSocket), the
/// upstream's stdout and stderr also go to the session's `.cast` file
/// ([`kube_stream`]). The connection's `close` line waits for it
/// ([`ConnCtx::relay_guard`]).
pub fn relay<B>(
    ctx: Arc<ConnCtx>,
    agent: OnUpgrade,
    upstream: &mut Response<B>,
    record_output: bool,
) {
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
        let (agent_rx, agent_tx) = tokio::io::split(TokioIo::new(agent));
        let (upstream_rx, upstream_tx) = tokio::io::split(TokioIo::new(upstream));
        let mut up = Pump::default();
        let mut down = Pump {
            frames: record_output.then(Frames::default),
            ..Pump::default()
        };
        let copied = tokio::try_join!(
            up.run(agent_rx, upstream_tx, &ctx),
            down.run(upstream_rx, agent_tx, &ctx)
        );
        if let Err(e) = copied {
            // A peer that closes without a TLS close_notify ends here too.
            debug!(error = %e, "upgraded connection ended with an error");
        }
        ctx.record(Event::Response {
            status: 101,
            bytes: down.bytes,
            bytes_up: Some(up.bytes),
        });
    });
}

/// One direction of an upgraded connection: the bytes copied, kept however
/// the copy ends, and the frames read on the way when output is recorded.
#[derive(Default)]
struct Pump {
    bytes: u64,
    frames: Option<Frames>,
}

impl Pump {
    /// Copies `from` to `to` until `from` ends, then shuts `to` down.
    async fn run(
        &mut self,
        mut from: impl AsyncRead + Unpin,
        mut to: impl AsyncWrite + Unpin,
        ctx: &ConnCtx,
    ) -> std::io::Result<()> {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = from.read(&mut buf).await?;
            if n == 0 {
                return to.shutdown().await;
            }
            if let Some(frames) = &mut self.frames {
                for (channel, data) in frames.feed(&buf[..n]) {
                    ctx.terminal_output(u32::from(channel), data).await;
                }
            }
            to.write_all(&buf[..n]).await?;
            to.flush().await?;
            self.bytes += n as u64;
        }
    }
}
