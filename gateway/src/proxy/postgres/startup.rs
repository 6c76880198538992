//! The start-up phase (protocol §55.2.1 "Start-up", §55.2.10 "SSL Session
//! Encryption", §55.2.11 "GSSAPI Session Encryption", §55.2.8 cancel),
//! written once: a loop over start-up packets that ends in a login, a
//! cancel, or a refusal.
//!
//! - SSLRequest: `S` and a TLS handshake with a certificate for the service
//!   host minted by the local CA (so `sslmode=verify-full` with Sluice's CA
//!   works); bytes pipelined after the SSLRequest are refused (they would
//!   bypass TLS, cf. CVE-2021-23214).
//! - Direct TLS (PostgreSQL 17, §55.2.10, libpq `sslnegotiation=direct`):
//!   the connection opens with a TLS ClientHello instead of an SSLRequest.
//!   As the server does, Sluice then requires the ALPN protocol
//!   `postgresql` and presents the same certificate.
//! - GSSENCRequest: `N`, then the client carries on.
//! - CancelRequest: returned to the caller to route.
//! - StartupMessage 3.x: parameters parsed; `user` is required.
use bytes::{Buf, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio_rustls::TlsAcceptor;

use super::{
    codec::{self, backend, CodecError, Reader},
    BoxIo,
};
use crate::tls::LocalCa;

const SSL_REQUEST: i32 = 80877103;
const GSSENC_REQUEST: i32 = 80877104;
const CANCEL_REQUEST: i32 = 80877102;
const PROTOCOL_3: i32 = 3 << 16;

/// The ALPN protocol id of PostgreSQL over TLS (§55.2.10).
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// How a connection opened, before any start-up packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opener {
    /// A start-up packet (SSLRequest, StartupMessage, …) comes first.
    Packet,
    /// A TLS ClientHello comes first (`sslnegotiation=direct`).
    DirectTls,
}

impl Opener {
    /// Tells the two apart by the first byte the agent sent: a TLS
    /// handshake record is `0x16` (RFC 8446 §5.1); a start-up packet
    /// begins with its length, whose first byte is 0 for any length Sluice
    /// accepts.
    pub fn from_first_byte(byte: u8) -> Opener {
        if byte == 0x16 {
            Opener::DirectTls
        } else {
            Opener::Packet
        }
    }
}

/// A parsed StartupMessage.
#[derive(Debug, Clone)]
pub struct StartupMessage {
    /// Every parameter in order, `user` included.
    pub params: Vec<(String, String)>,
    /// The minor protocol version requested (0 for 3.0).
    pub minor: u16,
}

impl StartupMessage {
    /// The value of parameter `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How the start-up phase ended.
pub enum Opening {
    /// A login to carry on with, over plain TCP or TLS.
    Login {
        reader: Reader<BoxIo>,
        startup: StartupMessage,
        tls: bool,
    },
    /// A CancelRequest for (process id, secret key).
    Cancel { key: (i32, i32) },
}

/// Why start-up failed; the agent has been sent a FATAL where possible.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("{0}")]
    Protocol(String),
    #[error("TLS with the agent: {0}")]
    Tls(String),
}

/// Runs the start-up loop on a fresh connection for service `host`.
///
/// # Errors
/// [`StartupError`] for malformed packets, unsupported protocol versions or
/// a failed TLS handshake (a FATAL `08P01` is sent first where the protocol
/// allows).
pub async fn negotiate(
    ca: &LocalCa,
    host: &str,
    io: BoxIo,
    opener: Opener,
) -> Result<Opening, StartupError> {
    let (io, mut tls) = match opener {
        Opener::Packet => (io, false),
        Opener::DirectTls => (accept_tls(ca, host, io, Alpn::Required).await?, true),
    };
    let mut reader = Reader::new(io, BytesMut::new()).with_limit(codec::MAX_FRONTEND_MESSAGE);
    let mut gss_refused = false;
    loop {
        let packet = reader.startup_packet().await?;
        let mut body = &packet[..];
        let code = codec::i32_at(&mut body, "start-up packet")?;
        match code {
            SSL_REQUEST if !tls => {
                if reader.has_buffered_data() {
                    return Err(StartupError::Protocol(
                        "data pipelined after SSLRequest".into(),
                    ));
                }
                let (mut io, _) = reader.into_parts();
                io.write_all(b"S").await.map_err(CodecError::Io)?;
                let io = accept_tls(ca, host, io, Alpn::Optional).await?;
                reader = Reader::new(io, BytesMut::new()).with_limit(codec::MAX_FRONTEND_MESSAGE);
                tls = true;
            }
            GSSENC_REQUEST if !gss_refused && !tls => {
                let (mut io, rest) = reader.into_parts();
                io.write_all(b"N").await.map_err(CodecError::Io)?;
                reader = Reader::new(io, rest).with_limit(codec::MAX_FRONTEND_MESSAGE);
                gss_refused = true;
            }
            CANCEL_REQUEST if body.len() == 8 => {
                let pid = body.get_i32();
                let key = body.get_i32();
                return Ok(Opening::Cancel { key: (pid, key) });
            }
            v if v >> 16 == 3 => {
                let startup = parse_startup(body, (v & 0xffff) as u16)?;
                if startup.get("user").is_none_or(str::is_empty) {
                    refuse(
                        &mut reader,
                        "28000",
                        "no PostgreSQL user name specified in startup packet",
                    )
                    .await;
                    return Err(StartupError::Protocol("StartupMessage without user".into()));
                }
                if startup
                    .get("replication")
                    .is_some_and(|r| r != "false" && r != "0" && r != "off")
                {
                    refuse(
                        &mut reader,
                        "42501",
                        "replication connections are not allowed through Sluice",
                    )
                    .await;
                    return Err(StartupError::Protocol("replication requested".into()));
                }
                return Ok(Opening::Login {
                    reader,
                    startup,
                    tls,
                });
            }
            other => {
                let msg = format!(
                    "unsupported frontend protocol {}.{}: Sluice speaks 3.0",
                    other >> 16,
                    other & 0xffff
                );
                refuse(&mut reader, "08P01", &msg).await;
                return Err(StartupError::Protocol(msg));
            }
        }
    }
}

/// Whether the agent must negotiate ALPN `postgresql`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alpn {
    /// Direct TLS: a handshake without it is refused (§55.2.10).
    Required,
    /// After SSLRequest: offered, and a client that names another protocol
    /// is refused, but older clients that send no ALPN are served.
    Optional,
}

/// The TLS handshake with the agent, presenting a certificate for `host`
/// minted by the local CA (the same for both openers).
async fn accept_tls(
    ca: &LocalCa,
    host: &str,
    io: BoxIo,
    alpn: Alpn,
) -> Result<BoxIo, StartupError> {
    let tls_error = |e: &dyn std::fmt::Display| StartupError::Tls(e.to_string());
    let config = ca
        .agent_config(host, &[ALPN_POSTGRESQL])
        .map_err(|e| tls_error(&e))?;
    let stream = TlsAcceptor::from(config)
        .accept(io)
        .await
        .map_err(|e| tls_error(&e))?;
    if alpn == Alpn::Required && stream.get_ref().1.alpn_protocol() != Some(ALPN_POSTGRESQL) {
        return Err(StartupError::Tls(
            "direct TLS without the ALPN protocol \"postgresql\"".into(),
        ));
    }
    Ok(Box::new(stream))
}

/// Parses `name\0value\0…\0` after the version.
pub fn parse_startup(mut body: &[u8], minor: u16) -> Result<StartupMessage, CodecError> {
    let mut params = Vec::new();
    loop {
        let name = codec::cstr(&mut body, "StartupMessage")?;
        if name.is_empty() {
            break;
        }
        let value = codec::cstr(&mut body, "StartupMessage")?;
        params.push((name.to_string(), value.to_string()));
    }
    Ok(StartupMessage { params, minor })
}

/// Sends a FATAL ErrorResponse; the caller then closes.
pub async fn refuse(reader: &mut Reader<BoxIo>, sqlstate: &str, message: &str) {
    let mut out = BytesMut::new();
    backend::fatal_response(sqlstate, message, &mut out);
    let _ = reader.get_mut().write_all(&out).await;
}

/// The `NegotiateProtocolVersion` message for a client asking for 3.x with
/// x > 0 (§55.7): Sluice offers 3.0 and no protocol options.
pub fn negotiate_protocol_version(startup: &StartupMessage, out: &mut BytesMut) {
    use bytes::BufMut;
    let options: Vec<&str> = startup
        .params
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| k.starts_with("_pq_."))
        .collect();
    if startup.minor == 0 && options.is_empty() {
        return;
    }
    let mut body = BytesMut::new();
    body.put_i32(PROTOCOL_3);
    body.put_i32(options.len() as i32);
    for o in options {
        body.put_slice(o.as_bytes());
        body.put_u8(0);
    }
    codec::Message {
        tag: b'v',
        body: body.freeze(),
    }
    .encode(out);
}
