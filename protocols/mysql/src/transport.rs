//! A connection that is plain or TLS after the MySQL `SSLRequest`
//! upgrade, as one `AsyncRead + AsyncWrite` type, on either side (Sluice
//! as the agent's server, or as the upstream's client).
use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsStream;

/// A connection: `S` itself, or TLS over it.
#[derive(Debug)]
pub enum Transport<S> {
    /// No TLS.
    Plain(S),
    /// TLS; `verified` when Sluice, as the client, checked the server's
    /// certificate against trusted roots and the service's host name.
    Tls {
        stream: Box<TlsStream<S>>,
        verified: bool,
    },
}

impl<S> Transport<S> {
    /// Whether the connection is TLS with a verified certificate.
    pub fn is_verified_tls(&self) -> bool {
        matches!(self, Transport::Tls { verified: true, .. })
    }

    /// Whether the connection is TLS at all.
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls { .. })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Transport<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Transport<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}
