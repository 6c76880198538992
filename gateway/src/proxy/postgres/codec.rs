//! PostgreSQL wire framing (protocol §55.2 "Message Flow", §55.7 "Message
//! Formats"): reading start-up packets and typed messages from a byte
//! stream, and writing the backend messages Sluice itself generates.
//!
//! A typed message is one type byte, an `Int32` length (network byte order)
//! that counts itself but not the type byte, then the body. Reads never
//! assume one message per segment: split and coalesced TCP segments are
//! handled by the buffer.
use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest message accepted from an upstream server (PostgreSQL's own
/// limit on a field value is 1 GB).
pub const MAX_MESSAGE: usize = 1 << 30;
/// Largest message accepted from an agent: one statement or bind of up to
/// 64 MiB. A larger announced length is refused before anything is
/// buffered, so no agent can make the gateway hold gigabytes.
pub const MAX_FRONTEND_MESSAGE: usize = 64 << 20;
/// Largest start-up packet accepted (PostgreSQL's backend uses 10000).
pub const MAX_STARTUP: usize = 10_000;

/// Framing errors.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("connection closed")]
    Closed,
    #[error("invalid message length {0}")]
    BadLength(i64),
    #[error("malformed {0} message")]
    Malformed(&'static str),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// One typed message, body without the type byte and length.
#[derive(Debug, Clone)]
pub struct Message {
    pub tag: u8,
    pub body: Bytes,
}

impl Message {
    /// The message as it goes on the wire.
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(5 + self.body.len());
        out.put_u8(self.tag);
        out.put_i32(self.body.len() as i32 + 4);
        out.put_slice(&self.body);
    }
}

/// Buffered reader of typed messages from one side of a connection.
pub struct Reader<R> {
    io: R,
    buf: BytesMut,
    max: usize,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// Wraps `io`; `leftover` holds bytes already read past the start-up.
    pub fn new(io: R, leftover: BytesMut) -> Self {
        Self {
            io,
            buf: leftover,
            max: MAX_MESSAGE,
        }
    }

    /// The same reader refusing messages over `max` bytes.
    pub fn with_limit(mut self, max: usize) -> Self {
        self.max = max;
        self
    }

    /// Takes the buffered bytes and the stream back (e.g. for a TLS upgrade).
    pub fn into_parts(self) -> (R, BytesMut) {
        (self.io, self.buf)
    }

    async fn fill(&mut self, want: usize) -> Result<(), CodecError> {
        while self.buf.len() < want {
            // Grow with the data that actually arrives, not with the length a
            // peer claims: a 5-byte header must not reserve a gigabyte.
            self.buf
                .reserve((want - self.buf.len()).clamp(8192, 256 * 1024));
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return Err(CodecError::Closed);
            }
        }
        Ok(())
    }

    /// Reads one start-up packet (SSLRequest, GSSENCRequest, CancelRequest
    /// or StartupMessage): `Int32` length including itself, then the body.
    ///
    /// # Errors
    /// [`CodecError::BadLength`] for lengths under 8 or over [`MAX_STARTUP`].
    pub async fn startup_packet(&mut self) -> Result<Bytes, CodecError> {
        self.fill(4).await?;
        let len = i32::from_be_bytes(self.buf[..4].try_into().unwrap()) as i64;
        if !(8..=MAX_STARTUP as i64).contains(&len) {
            return Err(CodecError::BadLength(len));
        }
        self.fill(len as usize).await?;
        let mut packet = self.buf.split_to(len as usize);
        packet.advance(4);
        Ok(packet.freeze())
    }

    /// Reads one typed message.
    ///
    /// # Errors
    /// [`CodecError::Closed`] at EOF; [`CodecError::BadLength`] for a length
    /// under 4 or over the reader's limit ([`MAX_MESSAGE`] by default).
    pub async fn message(&mut self) -> Result<Message, CodecError> {
        self.fill(5).await?;
        let len = i32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as i64;
        if !(4..=self.max as i64).contains(&len) {
            return Err(CodecError::BadLength(len));
        }
        let total = 1 + len as usize;
        self.fill(total).await?;
        let mut frame = self.buf.split_to(total);
        let tag = frame[0];
        frame.advance(5);
        Ok(Message {
            tag,
            body: frame.freeze(),
        })
    }

    /// The stream, for writing replies during start-up.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.io
    }

    /// Resolves when the peer closes (or errors); bytes that arrive
    /// meanwhile stay buffered (up to 1 MiB) for the next [`Reader::message`].
    /// Cancel-safe.
    pub async fn closed(&mut self) -> CodecError {
        loop {
            if self.buf.len() >= 1 << 20 {
                return std::future::pending().await;
            }
            self.buf.reserve(8192);
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) => return CodecError::Closed,
                Err(e) => return CodecError::Io(e),
                Ok(_) => {}
            }
        }
    }

    /// True when any bytes are buffered beyond what was consumed.
    pub fn has_buffered_data(&self) -> bool {
        !self.buf.is_empty()
    }

    /// True when a whole message is already buffered (no read needed).
    pub fn has_buffered_message(&self) -> bool {
        if self.buf.len() < 5 {
            return false;
        }
        let len = i32::from_be_bytes(self.buf[1..5].try_into().unwrap());
        len >= 4 && self.buf.len() > len as usize
    }
}

/// Reads a NUL-terminated string from the front of `body`.
///
/// # Errors
/// [`CodecError::Malformed`] without a terminator or with invalid UTF-8.
pub fn cstr<'a>(body: &mut &'a [u8], what: &'static str) -> Result<&'a str, CodecError> {
    let end = body
        .iter()
        .position(|b| *b == 0)
        .ok_or(CodecError::Malformed(what))?;
    let s = std::str::from_utf8(&body[..end]).map_err(|_| CodecError::Malformed(what))?;
    *body = &body[end + 1..];
    Ok(s)
}

/// Reads a network-order `Int16`.
pub fn i16_at(body: &mut &[u8], what: &'static str) -> Result<i16, CodecError> {
    if body.len() < 2 {
        return Err(CodecError::Malformed(what));
    }
    let v = i16::from_be_bytes([body[0], body[1]]);
    *body = &body[2..];
    Ok(v)
}

/// Reads a network-order `Int32`.
pub fn i32_at(body: &mut &[u8], what: &'static str) -> Result<i32, CodecError> {
    if body.len() < 4 {
        return Err(CodecError::Malformed(what));
    }
    let v = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    *body = &body[4..];
    Ok(v)
}

/// Builders for the backend messages Sluice sends itself (§55.7).
pub mod backend {
    use super::*;

    fn frame(tag: u8, out: &mut BytesMut, body: impl FnOnce(&mut BytesMut)) {
        out.put_u8(tag);
        let at = out.len();
        out.put_i32(0);
        body(out);
        let len = (out.len() - at) as i32;
        out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }

    fn error_fields(severity: &str, sqlstate: &str, message: &str, out: &mut BytesMut) {
        frame(b'E', out, |b| {
            for (field, value) in [
                (b'S', severity),
                (b'V', severity),
                (b'C', sqlstate),
                (b'M', message),
            ] {
                b.put_u8(field);
                b.put_slice(value.as_bytes());
                b.put_u8(0);
            }
            b.put_u8(0);
        });
    }

    /// `ErrorResponse` with severity `ERROR`, SQLSTATE code and message.
    pub fn error_response(sqlstate: &str, message: &str, out: &mut BytesMut) {
        error_fields("ERROR", sqlstate, message, out);
    }

    /// `ErrorResponse` with severity `FATAL` (the connection is closed after it).
    pub fn fatal_response(sqlstate: &str, message: &str, out: &mut BytesMut) {
        error_fields("FATAL", sqlstate, message, out);
    }

    /// `ReadyForQuery` with transaction status `I`, `T` or `E`.
    pub fn ready_for_query(status: u8, out: &mut BytesMut) {
        frame(b'Z', out, |b| b.put_u8(status));
    }

    /// `AuthenticationSASL` offering only SCRAM-SHA-256.
    pub fn auth_sasl(out: &mut BytesMut) {
        frame(b'R', out, |b| {
            b.put_i32(10);
            b.put_slice(b"SCRAM-SHA-256\0\0");
        });
    }

    /// `AuthenticationSASLContinue` (code 11) or `AuthenticationSASLFinal` (12).
    pub fn auth_sasl_data(code: i32, data: &[u8], out: &mut BytesMut) {
        frame(b'R', out, |b| {
            b.put_i32(code);
            b.put_slice(data);
        });
    }

    /// `AuthenticationCleartextPassword` (code 3).
    pub fn auth_cleartext(out: &mut BytesMut) {
        frame(b'R', out, |b| b.put_i32(3));
    }

    /// `AuthenticationOk`.
    pub fn auth_ok(out: &mut BytesMut) {
        frame(b'R', out, |b| b.put_i32(0));
    }

    /// `BackendKeyData` (process id, secret key).
    pub fn backend_key_data(pid: i32, key: i32, out: &mut BytesMut) {
        frame(b'K', out, |b| {
            b.put_i32(pid);
            b.put_i32(key);
        });
    }

    /// `DataRow` from column values (`None` = NULL, length -1).
    pub fn data_row<'a>(
        values: impl ExactSizeIterator<Item = Option<&'a [u8]>>,
        out: &mut BytesMut,
    ) {
        frame(b'D', out, |b| {
            b.put_i16(values.len() as i16);
            for v in values {
                match v {
                    None => b.put_i32(-1),
                    Some(v) => {
                        b.put_i32(v.len() as i32);
                        b.put_slice(v);
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn split_and_coalesced_segments() {
        let mut wire = BytesMut::new();
        Message {
            tag: b'Q',
            body: Bytes::from_static(b"SELECT 1\0"),
        }
        .encode(&mut wire);
        Message {
            tag: b'X',
            body: Bytes::new(),
        }
        .encode(&mut wire);
        let (client, mut server) = tokio::io::duplex(3);
        let bytes = wire.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for chunk in bytes.chunks(2) {
                server.write_all(chunk).await.unwrap();
            }
        });
        let mut r = Reader::new(client, BytesMut::new());
        let m = r.message().await.unwrap();
        assert_eq!((m.tag, &m.body[..]), (b'Q', &b"SELECT 1\0"[..]));
        assert_eq!(r.message().await.unwrap().tag, b'X');
    }

    #[tokio::test]
    async fn bad_lengths_are_rejected() {
        for len in [0i32, 3, -1, i32::MAX] {
            let mut wire = vec![b'Q'];
            wire.extend_from_slice(&len.to_be_bytes());
            let mut r = Reader::new(&wire[..], BytesMut::new());
            assert!(
                matches!(r.message().await, Err(CodecError::BadLength(_))),
                "len {len}"
            );
        }
        let mut r = Reader::new(&[0u8, 0, 0, 3][..], BytesMut::new());
        assert!(matches!(
            r.startup_packet().await,
            Err(CodecError::BadLength(3))
        ));
    }
}
