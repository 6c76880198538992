//! Counting the bytes of a response body as it streams to the agent, and
//! recording a `response` event (status, bytes) when it ends, so replays
//! and audits show sizes without buffering anything.
use std::{
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};

use super::{reply::ProxyBody, session::ConnCtx};
use crate::recorder::Event;

/// A body that records `response` once its last frame has gone out.
pub struct Counted {
    inner: ProxyBody,
    ctx: Arc<ConnCtx>,
    status: u16,
    bytes: u64,
    recorded: bool,
}

impl Counted {
    /// Wraps `inner`, a response with `status`.
    pub fn wrap(inner: ProxyBody, ctx: Arc<ConnCtx>, status: u16) -> ProxyBody {
        Counted {
            inner,
            ctx,
            status,
            bytes: 0,
            recorded: false,
        }
        .boxed()
    }

    fn record(&mut self) {
        if !self.recorded {
            self.recorded = true;
            self.ctx.record(Event::Response {
                status: self.status,
                bytes: self.bytes,
                bytes_up: None,
            });
        }
    }
}

impl Body for Counted {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    self.bytes += data.len() as u64;
                }
            }
            None => self.record(),
            Some(Err(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    /// An agent that goes away mid-body still gets its partial size recorded.
    fn drop(&mut self) {
        self.record();
    }
}
