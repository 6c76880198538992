//! `echo_guard`: for services whose upstream may reflect request headers
//! back (debug endpoints, echo servers, verbose error pages), every
//! occurrence of the exact secret bytes in the response is overwritten
//! before it reaches the agent.
//!
//! The body is scanned as it streams: the last `len(secret) - 1` bytes of
//! each chunk are held back until the next one arrives, so an occurrence
//! split across chunks is still caught. The replacement has the secret's
//! length, so `Content-Length` stays right. Response header values holding
//! the secret are replaced too.
use std::{
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::{
    body::{Body, Frame},
    header::HeaderValue,
    HeaderMap,
};
use zeroize::Zeroizing;

use super::reply::ProxyBody;

/// Byte written over each byte of a reflected secret.
pub const REDACTED_BYTE: u8 = b'*';

/// Overwrites every occurrence of `secret` in `buf`; returns how many.
pub fn redact_in_place(buf: &mut [u8], secret: &[u8]) -> usize {
    if secret.is_empty() || buf.len() < secret.len() {
        return 0;
    }
    let mut count = 0;
    let mut i = 0;
    while i + secret.len() <= buf.len() {
        if &buf[i..i + secret.len()] == secret {
            buf[i..i + secret.len()].fill(REDACTED_BYTE);
            count += 1;
            i += secret.len();
        } else {
            i += 1;
        }
    }
    count
}

/// Replaces header values that contain `secret`. Returns how many.
pub fn redact_headers(headers: &mut HeaderMap, secret: &[u8]) -> usize {
    let mut count = 0;
    for value in headers.values_mut() {
        let mut bytes = value.as_bytes().to_vec();
        let n = redact_in_place(&mut bytes, secret);
        if n > 0 {
            count += n;
            *value = HeaderValue::from_bytes(&bytes)
                .unwrap_or_else(|_| HeaderValue::from_static("[redacted]"));
        }
    }
    count
}

/// A response body with reflected secrets overwritten.
pub struct EchoGuard {
    inner: ProxyBody,
    secret: Zeroizing<Vec<u8>>,
    carry: BytesMut,
    /// Trailers seen after the last data, released once `carry` is out.
    trailers: Option<HeaderMap>,
    finished: bool,
}

impl EchoGuard {
    /// Wraps `inner`, guarding against `secret`.
    pub fn wrap(inner: ProxyBody, secret: &[u8]) -> ProxyBody {
        EchoGuard {
            inner,
            secret: Zeroizing::new(secret.to_vec()),
            carry: BytesMut::new(),
            trailers: None,
            finished: false,
        }
        .boxed()
    }

    /// Emits everything but the tail that could start a split occurrence.
    fn drain(&mut self, all: bool) -> Option<Bytes> {
        redact_in_place(&mut self.carry, &self.secret);
        let keep = if all {
            0
        } else {
            self.secret.len().saturating_sub(1).min(self.carry.len())
        };
        let emit = self.carry.len() - keep;
        (emit > 0).then(|| self.carry.split_to(emit).freeze())
    }
}

impl Body for EchoGuard {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        loop {
            if self.finished {
                if let Some(rest) = self.drain(true) {
                    return Poll::Ready(Some(Ok(Frame::data(rest))));
                }
                return Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
                None => self.finished = true,
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        self.carry.extend_from_slice(&data);
                        if let Some(out) = self.drain(false) {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            let secret = self.secret.clone();
                            let mut t = t;
                            redact_headers(&mut t, &secret);
                            self.trailers = Some(t);
                        }
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::http::reply::full;
    use futures_util::stream;
    use http_body_util::StreamBody;

    fn chunked(chunks: &[&'static [u8]]) -> ProxyBody {
        let frames: Vec<Result<Frame<Bytes>, hyper::Error>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c))))
            .collect();
        StreamBody::new(stream::iter(frames)).boxed()
    }

    async fn collect(body: ProxyBody) -> Vec<u8> {
        body.collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn a_secret_split_across_chunks_is_overwritten() {
        let body = chunked(&[b"auth: Bearer sk_li", b"ve_123 and sk_live_123", b"!"]);
        let out = collect(EchoGuard::wrap(body, b"sk_live_123")).await;
        assert_eq!(out, b"auth: Bearer *********** and ***********!".to_vec());
    }

    #[tokio::test]
    async fn bodies_without_the_secret_pass_unchanged() {
        let out = collect(EchoGuard::wrap(
            full(Bytes::from_static(b"{\"ok\":true}")),
            b"sk",
        ))
        .await;
        assert_eq!(out, b"{\"ok\":true}".to_vec());
    }

    #[test]
    fn headers_are_redacted() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-echo-authorization",
            HeaderValue::from_static("Bearer sk_live_123"),
        );
        assert_eq!(redact_headers(&mut h, b"sk_live_123"), 1);
        assert_eq!(h["x-echo-authorization"], "Bearer ***********");
    }
}
