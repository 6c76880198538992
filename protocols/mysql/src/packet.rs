//! Packet framing (MySQL Internals, "MySQL Packets"): every frame is a
//! 3-byte little-endian payload length, a 1-byte sequence id and the
//! payload. A payload of 2^24−1 bytes or more is split into frames of
//! exactly 2^24−1 bytes followed by a shorter (possibly empty) one; the
//! sequence id grows by one per frame, modulo 256, and restarts at 0 with
//! each command.
//!
//! [`PacketDecoder`] reassembles logical packets from bytes (it never
//! panics on any input, which the fuzz target checks), [`encode`] frames
//! one, and [`PacketStream`] does both over an async stream.
use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest payload one frame carries: 2^24 − 1 bytes.
pub const MAX_FRAME: usize = 0xFF_FFFF;
/// The default limit on a reassembled payload: 64 MiB, MySQL 8's default
/// `max_allowed_packet`.
pub const DEFAULT_MAX_PACKET: usize = 64 << 20;

/// A logical packet: its payload and the sequence id of its last frame
/// (a reply carries that id plus one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// The sequence id of the last frame.
    pub seq: u8,
    /// The reassembled payload.
    pub payload: Bytes,
}

/// Why a byte stream is not a valid packet stream.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    /// A continuation frame's sequence id is not the previous one plus one.
    #[error("packet sequence out of order: expected {expected}, got {got}")]
    OutOfOrder { expected: u8, got: u8 },
    /// The reassembled payload would exceed the decoder's limit.
    #[error("packet larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// The peer closed the connection in the middle of a packet, or before
    /// the packet that was awaited.
    #[error("connection closed")]
    Closed,
    /// Reading or writing the socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reassembles logical packets from frames; keeps a partial packet between
/// calls.
#[derive(Debug)]
pub struct PacketDecoder {
    max_packet: usize,
    partial: BytesMut,
    /// The sequence id of the last frame of the partial packet.
    last_seq: Option<u8>,
}

impl Default for PacketDecoder {
    fn default() -> Self {
        PacketDecoder::new(DEFAULT_MAX_PACKET)
    }
}

impl PacketDecoder {
    /// A decoder that refuses payloads over `max_packet` bytes.
    pub fn new(max_packet: usize) -> PacketDecoder {
        PacketDecoder {
            max_packet,
            partial: BytesMut::new(),
            last_seq: None,
        }
    }

    /// Takes whole frames from the front of `buf` and returns the first
    /// complete logical packet, or `None` when more bytes are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, PacketError> {
        loop {
            if buf.len() < 4 {
                return Ok(None);
            }
            let len = usize::from(buf[0]) | usize::from(buf[1]) << 8 | usize::from(buf[2]) << 16;
            let seq = buf[3];
            if let Some(prev) = self.last_seq {
                let expected = prev.wrapping_add(1);
                if seq != expected {
                    return Err(PacketError::OutOfOrder { expected, got: seq });
                }
            }
            if self.partial.len() + len > self.max_packet {
                return Err(PacketError::TooLarge {
                    limit: self.max_packet,
                });
            }
            if buf.len() < 4 + len {
                buf.reserve(4 + len - buf.len());
                return Ok(None);
            }
            buf.advance(4);
            let frame = buf.split_to(len);
            if len == MAX_FRAME {
                self.partial.extend_from_slice(&frame);
                self.last_seq = Some(seq);
                continue;
            }
            let payload = if self.partial.is_empty() {
                frame.freeze()
            } else {
                self.partial.extend_from_slice(&frame);
                std::mem::take(&mut self.partial).freeze()
            };
            self.last_seq = None;
            return Ok(Some(Packet { seq, payload }));
        }
    }
}

/// Appends `payload` as frames starting at sequence id `*seq`; leaves
/// `*seq` at the id the next packet takes.
pub fn encode(seq: &mut u8, payload: &[u8], out: &mut BytesMut) {
    let mut rest = payload;
    loop {
        let n = rest.len().min(MAX_FRAME);
        out.reserve(4 + n);
        out.put_uint_le(n as u64, 3);
        out.put_u8(*seq);
        out.put_slice(&rest[..n]);
        *seq = seq.wrapping_add(1);
        rest = &rest[n..];
        if n < MAX_FRAME {
            return;
        }
    }
}

/// A packet stream over any async byte stream: reads logical packets,
/// writes them with the running sequence id.
#[derive(Debug)]
pub struct PacketStream<S> {
    io: S,
    decoder: PacketDecoder,
    read_buf: BytesMut,
    write_buf: BytesMut,
    seq: u8,
}

impl<S: AsyncRead + AsyncWrite + Unpin> PacketStream<S> {
    /// Wraps `io`, sequence id 0.
    pub fn new(io: S) -> PacketStream<S> {
        PacketStream {
            io,
            decoder: PacketDecoder::default(),
            read_buf: BytesMut::with_capacity(8 * 1024),
            write_buf: BytesMut::new(),
            seq: 0,
        }
    }

    /// The sequence id the next written packet takes.
    pub fn seq(&self) -> u8 {
        self.seq
    }

    /// Restarts the sequence at 0, as each new command does.
    pub fn reset_seq(&mut self) {
        self.seq = 0;
    }

    /// Reads the next logical packet; the next written packet takes its
    /// sequence id plus one.
    pub async fn read(&mut self) -> Result<Packet, PacketError> {
        loop {
            if let Some(p) = self.decoder.decode(&mut self.read_buf)? {
                self.seq = p.seq.wrapping_add(1);
                return Ok(p);
            }
            if self.io.read_buf(&mut self.read_buf).await? == 0 {
                return Err(PacketError::Closed);
            }
        }
    }

    /// Reads one single-frame packet without reading a byte past it, for
    /// the client's first packet: after an `SSLRequest` the client starts
    /// TLS at once, and those bytes belong to the TLS handshake.
    pub async fn read_exact_frame(&mut self) -> Result<Packet, PacketError> {
        if !self.read_buf.is_empty() {
            return self.read().await;
        }
        let mut header = [0u8; 4];
        self.io.read_exact(&mut header).await.map_err(closed)?;
        let len =
            usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
        if len >= MAX_FRAME.min(self.decoder.max_packet) {
            return Err(PacketError::TooLarge {
                limit: MAX_FRAME.min(self.decoder.max_packet) - 1,
            });
        }
        let mut payload = vec![0u8; len];
        self.io.read_exact(&mut payload).await.map_err(closed)?;
        self.seq = header[3].wrapping_add(1);
        Ok(Packet {
            seq: header[3],
            payload: payload.into(),
        })
    }

    /// Writes one logical packet and flushes it.
    pub async fn write(&mut self, payload: &[u8]) -> Result<(), PacketError> {
        self.write_buf.clear();
        encode(&mut self.seq, payload, &mut self.write_buf);
        self.io.write_all(&self.write_buf).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// Flushes and closes the write side (TLS `close_notify`, TCP FIN), so
    /// a last ERR packet reaches the peer before the connection drops.
    pub async fn shutdown(&mut self) -> Result<(), PacketError> {
        Ok(self.io.shutdown().await?)
    }

    /// Whether bytes of a next packet already arrived (a TLS upgrade must
    /// not leave any behind in this buffer).
    pub fn has_buffered(&self) -> bool {
        !self.read_buf.is_empty()
    }

    /// The underlying stream and the sequence id the next packet takes, for
    /// a TLS upgrade after an SSLRequest.
    pub fn into_parts(self) -> (S, u8) {
        (self.io, self.seq)
    }

    /// Wraps `io` continuing at sequence id `seq` (after a TLS upgrade).
    pub fn from_parts(io: S, seq: u8) -> PacketStream<S> {
        let mut s = PacketStream::new(io);
        s.seq = seq;
        s
    }
}

fn closed(e: std::io::Error) -> PacketError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        PacketError::Closed
    } else {
        PacketError::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8]) -> Result<Vec<Packet>, PacketError> {
        let mut d = PacketDecoder::default();
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(p) = d.decode(&mut buf)? {
            out.push(p);
        }
        Ok(out)
    }

    #[test]
    fn small_packet_round_trips_byte_by_byte() {
        let mut seq = 3;
        let mut wire = BytesMut::new();
        encode(&mut seq, b"\x03SELECT 1", &mut wire);
        assert_eq!(seq, 4);
        assert_eq!(&wire[..4], &[9, 0, 0, 3]);
        let mut d = PacketDecoder::default();
        let mut buf = BytesMut::new();
        for (i, b) in wire.iter().enumerate() {
            buf.put_u8(*b);
            let got = d.decode(&mut buf).unwrap();
            assert_eq!(got.is_some(), i == wire.len() - 1);
            if let Some(p) = got {
                assert_eq!(p.seq, 3);
                assert_eq!(&p.payload[..], b"\x03SELECT 1");
            }
        }
    }

    #[test]
    fn sixteen_mib_payloads_continue_with_an_empty_frame() {
        for len in [MAX_FRAME, MAX_FRAME + 1, 2 * MAX_FRAME] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut seq = 255;
            let mut wire = BytesMut::new();
            encode(&mut seq, &payload, &mut wire);
            let frames = len / MAX_FRAME + 1;
            assert_eq!(wire.len(), len + 4 * frames);
            assert_eq!(seq, 255u8.wrapping_add(frames as u8));
            let got = decode_all(&wire).unwrap();
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].payload.len(), len);
            assert!(got[0].payload[..] == payload[..]);
            assert_eq!(got[0].seq, seq.wrapping_sub(1));
        }
    }

    #[test]
    fn out_of_order_continuation_and_oversize_are_errors() {
        let mut wire = BytesMut::new();
        let mut seq = 0;
        encode(&mut seq, &vec![0u8; MAX_FRAME], &mut wire);
        wire[MAX_FRAME + 4 + 3] = 7;
        assert!(matches!(
            decode_all(&wire),
            Err(PacketError::OutOfOrder {
                expected: 1,
                got: 7
            })
        ));
        let mut d = PacketDecoder::new(10);
        let mut buf = BytesMut::from(&[11u8, 0, 0, 0][..]);
        assert!(matches!(
            d.decode(&mut buf),
            Err(PacketError::TooLarge { limit: 10 })
        ));
    }
}
