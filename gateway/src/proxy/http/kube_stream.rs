//! The output of a Kubernetes `exec` or `attach` for the session's `.cast`
//! file (DESIGN.md §6 "Kubernetes API"): the WebSocket stream from the API
//! server is read as it is relayed, unchanged, and the payloads of its
//! stdout and stderr channels are recorded.
//!
//! Framing: WebSocket frames (RFC 6455 §5.2; a server's are unmasked, a
//! mask is honoured anyway), data messages possibly fragmented, control
//! frames (close, ping, pong) skipped. Each data message of the
//! `channel.k8s.io` subprotocols (`v5.channel.k8s.io`, `v4…`, and the
//! original `channel.k8s.io`; Kubernetes "remotecommand" streaming) starts
//! with one byte naming its channel: 0 stdin, 1 stdout, 2 stderr, 3 the
//! error `Status`, 4 resize. Channels 1 and 2 are recorded. The
//! `base64.channel.k8s.io` variants and SPDY are relayed unrecorded.
//!
//! The stream never carries the upstream credential: the bearer token
//! went in the headers of the upgrade request, a client certificate in
//! the TLS handshake.
use bytes::Bytes;

/// Subprotocols whose messages this reader understands.
const CHANNEL_PROTOCOLS: [&str; 3] = ["v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io"];
/// The channels recorded: stdout and stderr.
const OUTPUT_CHANNELS: [u8; 2] = [1, 2];

/// Whether the API server's `Sec-WebSocket-Protocol` answer is one whose
/// output [`Frames`] can read.
pub fn readable(protocol: Option<&str>) -> bool {
    protocol.is_some_and(|p| CHANNEL_PROTOCOLS.contains(&p.trim()))
}

/// Reads the frames of one direction of a WebSocket connection as they
/// pass, keeping only what it needs: at most the 14 bytes of a header.
#[derive(Debug, Default)]
pub struct Frames {
    /// The header being read.
    header: Vec<u8>,
    /// Payload bytes left in the current frame.
    remaining: u64,
    /// Its masking key and how far into the payload we are.
    mask: Option<([u8; 4], usize)>,
    /// The current frame is part of a data message.
    data: bool,
    /// The channel of the current data message, once its first payload
    /// byte was read.
    channel: Option<u8>,
}

impl Frames {
    /// Feeds the next bytes of the stream; returns the output they carry
    /// as (channel, payload) pieces, in order.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Vec<(u8, Bytes)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            if self.remaining == 0 {
                let used = self.read_header(bytes);
                bytes = &bytes[used..];
                continue;
            }
            let n = usize::try_from(self.remaining).map_or(bytes.len(), |r| r.min(bytes.len()));
            let mut payload = bytes[..n].to_vec();
            bytes = &bytes[n..];
            self.remaining -= n as u64;
            if let Some((key, offset)) = &mut self.mask {
                for b in &mut payload {
                    *b ^= key[*offset % 4];
                    *offset += 1;
                }
            }
            if !self.data {
                continue;
            }
            let mut payload = &payload[..];
            let channel = match self.channel {
                Some(c) => c,
                None => {
                    let c = payload[0];
                    payload = &payload[1..];
                    *self.channel.insert(c)
                }
            };
            if OUTPUT_CHANNELS.contains(&channel) && !payload.is_empty() {
                out.push((channel, Bytes::copy_from_slice(payload)));
            }
        }
        out
    }

    /// Reads header bytes from `bytes`; returns how many it used. A
    /// complete header starts the frame's payload.
    fn read_header(&mut self, bytes: &[u8]) -> usize {
        let mut used = 0;
        loop {
            if let Some(len) = header_len(&self.header) {
                if self.header.len() == len {
                    self.start_frame();
                    return used;
                }
            }
            let Some(&b) = bytes.get(used) else {
                return used;
            };
            self.header.push(b);
            used += 1;
        }
    }

    /// The frame whose header is complete begins.
    fn start_frame(&mut self) {
        let h = std::mem::take(&mut self.header);
        let opcode = h[0] & 0x0F;
        let (length, at) = match h[1] & 0x7F {
            126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), 4),
            127 => (
                u64::from_be_bytes(h[2..10].try_into().unwrap_or_default()),
                10,
            ),
            n => (u64::from(n), 2),
        };
        self.mask = (h[1] & 0x80 != 0).then(|| ([h[at], h[at + 1], h[at + 2], h[at + 3]], 0));
        self.remaining = length;
        match opcode {
            // Text or binary: a new message, its channel byte first.
            1 | 2 => {
                self.data = true;
                self.channel = None;
            }
            // Continuation of the current message.
            0 => self.data = true,
            // Control frames, between fragments too.
            _ => self.data = false,
        }
    }
}

/// The full length of a frame header starting with `h`, once its first two
/// bytes are known.
fn header_len(h: &[u8]) -> Option<usize> {
    let second = *h.get(1)?;
    let extended = match second & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    Some(2 + extended + mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut f = vec![u8::from(fin) << 7 | opcode];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => f.push(m | n as u8),
            n if n < 65536 => {
                f.push(m | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(m | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        match mask {
            Some(key) => {
                f.extend_from_slice(&key);
                f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
            }
            None => f.extend_from_slice(payload),
        }
        f
    }

    fn text(pieces: &[(u8, Bytes)], channel: u8) -> String {
        pieces
            .iter()
            .filter(|(c, _)| *c == channel)
            .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    #[test]
    fn stdout_and_stderr_are_read_whatever_the_chunking() {
        let mut stream = frame(true, 2, b"\x01hello ", None);
        stream.extend(frame(true, 9, b"ping", None));
        stream.extend(frame(true, 2, b"\x02oops\n", Some([1, 2, 3, 4])));
        stream.extend(frame(false, 2, b"\x01wor", None));
        stream.extend(frame(true, 10, b"", None));
        stream.extend(frame(true, 0, b"ld\n", None));
        stream.extend(frame(true, 2, b"\x03{\"status\":\"Success\"}", None));
        stream.extend(frame(true, 2, &[&[1u8][..], &[b'x'; 70000]].concat(), None));
        for chunk in [1, 3, 7, stream.len()] {
            let mut frames = Frames::default();
            let pieces: Vec<_> = stream.chunks(chunk).flat_map(|c| frames.feed(c)).collect();
            let stdout = text(&pieces, 1);
            assert!(stdout.starts_with("hello world\n"), "chunk {chunk}");
            assert_eq!(stdout.len(), "hello world\n".len() + 70000);
            assert_eq!(text(&pieces, 2), "oops\n", "chunk {chunk}");
            assert!(pieces.iter().all(|(c, _)| *c != 3));
        }
    }

    #[test]
    fn only_channel_protocols_are_readable() {
        assert!(readable(Some("v5.channel.k8s.io")));
        assert!(readable(Some("v4.channel.k8s.io")));
        assert!(!readable(Some("base64.channel.k8s.io")));
        assert!(!readable(None));
    }
}
