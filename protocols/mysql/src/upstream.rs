//! Sluice's login to the real server as `credential.user` with the vault
//! secret (DESIGN.md §6 "MySQL / MariaDB", §TLS "Towards a database
//! upstream"), over any async stream:
//!
//! 1. read the server's HandshakeV10 ([`Greeted`]);
//! 2. upgrade to TLS by `SSLRequest` as `upstream_tls` says ([`Secured`]);
//! 3. answer the plugin the server asks for — `mysql_native_password`,
//!    `caching_sha2_password` (fast path; full authentication in cleartext
//!    over TLS or by RSA key exchange), MariaDB `client_ed25519` — through
//!    every `AuthSwitchRequest` until OK.
//!
//! Nothing derived from the password leaves Sluice unless the connection
//! is TLS with a verified certificate, or the service says
//! `upstream_tls = "disable"`: a challenge answer can be relayed by a
//! server in the middle as well as a cleartext password can be read.
//! `CLIENT_LOCAL_FILES` is never offered, so the server can never ask for
//! a local file.
use std::sync::Arc;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;

use crate::{
    auth::{
        rsa_exchange::{self, REQUEST_PUBLIC_KEY},
        scramble,
        server::{FAST_AUTH_SUCCESS, PERFORM_FULL_AUTHENTICATION},
        Plugin,
    },
    capability::Capabilities,
    handshake::{
        AuthPacket, ClientHeader, HandshakeResponse, InitialHandshake, UTF8MB4_GENERAL_CI,
    },
    packet::{PacketError, PacketStream},
    response::ErrPacket,
    transport::Transport,
    wire::Malformed,
};

/// `upstream_tls`: how Sluice secures the connection to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamTls {
    /// No TLS; the credential goes in the clear or RSA-encrypted. Only
    /// when the service says so explicitly.
    Disable,
    /// TLS when the server offers it, without certificate checks: the
    /// credential is then refused.
    Prefer,
    /// TLS without certificate checks: the credential is then refused.
    Require,
    /// TLS with the certificate checked against the trusted roots and the
    /// host name (the default).
    VerifyFull,
}

/// What the login needs.
pub struct LoginParams<'a> {
    /// `credential.user`.
    pub user: &'a str,
    /// The vault secret.
    pub password: &'a [u8],
    /// The database the agent asked for, if any.
    pub database: Option<&'a [u8]>,
    /// `upstream_tls`.
    pub tls: UpstreamTls,
    /// The TLS client configuration: for `VerifyFull` one that verifies
    /// (system roots or `upstream_ca`); for `Prefer`/`Require` whatever the
    /// caller chose. Unused with `Disable`.
    pub tls_config: Option<Arc<rustls::ClientConfig>>,
    /// The name the certificate must carry.
    pub server_name: ServerName<'static>,
    /// What to ask for, before intersecting with the server's offer: the
    /// agent's own flags within [`Capabilities::UPSTREAM`] (so
    /// `CLIENT_FOUND_ROWS` and the like mean what the agent expects).
    /// `CLIENT_LOCAL_FILES` and `CLIENT_COMPRESS` are dropped whatever is
    /// given.
    pub capabilities: Capabilities,
}

/// Why the upstream login failed. No variant carries the password.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Reading or writing packets failed.
    #[error(transparent)]
    Packet(#[from] PacketError),
    /// The server sent a packet that cannot be read.
    #[error(transparent)]
    Malformed(#[from] Malformed),
    /// The TLS handshake failed (for example an untrusted certificate).
    #[error("TLS to the upstream failed: {0}")]
    Tls(std::io::Error),
    /// `upstream_tls` asks for TLS and the server does not offer it.
    #[error("the upstream does not offer TLS")]
    TlsNotOffered,
    /// `upstream_tls` asks for TLS and no TLS configuration was given.
    #[error("no TLS configuration for the upstream")]
    NoTlsConfig,
    /// The credential would have gone over a connection without verified
    /// TLS.
    #[error("refusing to send the credential over a connection without verified TLS (upstream_tls = \"disable\" allows it)")]
    Unverified,
    /// The server asked for a plugin Sluice does not speak.
    #[error("the upstream asks for unsupported authentication plugin {0:?}")]
    UnsupportedPlugin(String),
    /// The server sent something that does not belong in a login.
    #[error("unexpected packet from the upstream during login")]
    Unexpected,
    /// The server refused the login (or the connection).
    #[error("the upstream refused the login: {0}")]
    Refused(ErrPacket),
    /// The RSA key exchange failed.
    #[error(transparent)]
    Rsa(#[from] rsa_exchange::RsaExchangeError),
}

/// A logged-in upstream connection, ready for commands.
#[derive(Debug)]
pub struct Upstream<S> {
    /// The packet stream (sequence restarts with each command).
    pub stream: PacketStream<Transport<S>>,
    /// The server's handshake: its connection (thread) id is what
    /// `KILL QUERY` names upstream.
    pub handshake: InitialHandshake,
    /// The capabilities in force on this connection.
    pub capabilities: Capabilities,
}

/// Step 1 done: the server's handshake was read ([`greet`]);
/// [`Greeted::login`] goes on.
pub struct Greeted<S> {
    stream: PacketStream<S>,
    /// The server's handshake (its version is what agents are shown).
    pub handshake: InitialHandshake,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Greeted<S> {
    /// Steps 2 and 3: secures the connection and logs in.
    ///
    /// # Errors
    /// As [`login`].
    pub async fn login(self, params: &LoginParams<'_>) -> Result<Upstream<S>, UpstreamError> {
        let secured = secure(self, params).await?;
        authenticate(secured, params).await
    }
}

/// Step 2 done: the connection is as secure as it will be.
struct Secured<S> {
    stream: PacketStream<Transport<S>>,
    handshake: InitialHandshake,
    capabilities: Capabilities,
}

/// Logs in over `io` (a fresh connection to the server).
///
/// # Errors
/// [`UpstreamError`]: the server refused, TLS failed or is missing where
/// `params.tls` needs it, or the credential would go unprotected.
pub async fn login<S>(io: S, params: &LoginParams<'_>) -> Result<Upstream<S>, UpstreamError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    greet(io).await?.login(params).await
}

/// Step 1: reads the server's handshake over `io` (a fresh connection).
///
/// # Errors
/// [`UpstreamError::Refused`] when the server greets with an ERR packet
/// (e.g. too many connections), or a packet error.
pub async fn greet<S: AsyncRead + AsyncWrite + Unpin>(io: S) -> Result<Greeted<S>, UpstreamError> {
    let mut stream = PacketStream::new(io);
    let first = stream.read().await?;
    if first.payload.first() == Some(&0xFF) {
        return Err(UpstreamError::Refused(ErrPacket::decode(&first.payload)?));
    }
    let handshake = InitialHandshake::decode(&first.payload)?;
    Ok(Greeted { stream, handshake })
}

async fn secure<S: AsyncRead + AsyncWrite + Unpin>(
    greeted: Greeted<S>,
    params: &LoginParams<'_>,
) -> Result<Secured<S>, UpstreamError> {
    let Greeted { stream, handshake } = greeted;
    let offered = handshake.capabilities.contains(Capabilities::SSL);
    let mut capabilities = (params.capabilities & handshake.capabilities)
        .without(Capabilities::LOCAL_FILES | Capabilities::COMPRESS | Capabilities::SSL);
    if params.database.is_none() {
        capabilities = capabilities.without(Capabilities::CONNECT_WITH_DB);
    }
    let use_tls = match params.tls {
        UpstreamTls::Disable => false,
        UpstreamTls::Prefer => offered,
        UpstreamTls::Require | UpstreamTls::VerifyFull if offered => true,
        UpstreamTls::Require | UpstreamTls::VerifyFull => return Err(UpstreamError::TlsNotOffered),
    };
    if !use_tls {
        let (io, seq) = stream.into_parts();
        return Ok(Secured {
            stream: PacketStream::from_parts(Transport::Plain(io), seq),
            handshake,
            capabilities,
        });
    }
    let config = params
        .tls_config
        .clone()
        .ok_or(UpstreamError::NoTlsConfig)?;
    capabilities = capabilities | Capabilities::SSL;
    let mut stream = stream;
    stream
        .write(&client_header(capabilities).encode_ssl_request())
        .await?;
    if stream.has_buffered() {
        // Bytes the server sent before TLS would be read as if protected.
        return Err(UpstreamError::Unexpected);
    }
    let (io, seq) = stream.into_parts();
    let tls = TlsConnector::from(config)
        .connect(params.server_name.clone(), io)
        .await
        .map_err(UpstreamError::Tls)?;
    let transport = Transport::Tls {
        stream: Box::new(tls.into()),
        verified: params.tls == UpstreamTls::VerifyFull,
    };
    Ok(Secured {
        stream: PacketStream::from_parts(transport, seq),
        handshake,
        capabilities,
    })
}

fn client_header(capabilities: Capabilities) -> ClientHeader {
    ClientHeader {
        capabilities,
        max_packet: 1 << 24,
        charset: UTF8MB4_GENERAL_CI,
    }
}

async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    secured: Secured<S>,
    params: &LoginParams<'_>,
) -> Result<Upstream<S>, UpstreamError> {
    let Secured {
        mut stream,
        handshake,
        capabilities,
    } = secured;
    let may_send = params.tls == UpstreamTls::Disable || stream_is_verified(&stream);
    if !may_send {
        return Err(UpstreamError::Unverified);
    }
    let mut plugin = Plugin::from_name(&handshake.auth_plugin)
        .filter(|p| *p != Plugin::MysqlClearPassword)
        .unwrap_or(Plugin::MysqlNativePassword);
    let mut nonce = handshake.nonce.clone();
    let response = HandshakeResponse {
        header: client_header(capabilities),
        user: params.user.as_bytes().to_vec(),
        auth_response: answer(plugin, params.password, &nonce),
        database: params.database.map(<[u8]>::to_vec),
        auth_plugin: Some(plugin.name().as_bytes().to_vec()),
        attributes: Vec::new(),
    };
    stream.write(&response.encode()).await?;
    loop {
        let packet = stream.read().await?;
        match AuthPacket::decode(packet.payload)? {
            AuthPacket::Ok(_) => {
                return Ok(Upstream {
                    stream,
                    handshake,
                    capabilities,
                })
            }
            AuthPacket::Err(p) => return Err(UpstreamError::Refused(ErrPacket::decode(&p)?)),
            AuthPacket::Switch { plugin: name, data } => {
                plugin = Plugin::from_name(&name).ok_or_else(|| {
                    UpstreamError::UnsupportedPlugin(String::from_utf8_lossy(&name).into_owned())
                })?;
                nonce = plugin.nonce(&data).to_vec();
                let reply = answer(plugin, params.password, &nonce);
                stream.write(&reply).await?;
            }
            AuthPacket::MoreData(data) if plugin == Plugin::CachingSha2Password => {
                caching_sha2_more(&mut stream, &data, params.password, &nonce).await?;
            }
            AuthPacket::MoreData(_) => return Err(UpstreamError::Unexpected),
        }
    }
}

fn stream_is_verified<S>(stream: &PacketStream<Transport<S>>) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.get_ref().is_verified_tls()
}

/// The plugin's answer to `nonce` (the caller has checked that the
/// credential may be sent on this connection at all).
fn answer(plugin: Plugin, password: &[u8], nonce: &[u8]) -> Vec<u8> {
    match plugin {
        Plugin::MysqlNativePassword => scramble::native_password(password, nonce),
        Plugin::CachingSha2Password => scramble::caching_sha2(password, nonce),
        Plugin::ClientEd25519 => scramble::ed25519(password, nonce),
        Plugin::MysqlClearPassword => {
            let mut p = password.to_vec();
            p.push(0);
            p
        }
    }
}

/// `caching_sha2_password` after the fast-path answer: `0x03` means OK
/// follows; `0x04` asks for the password — in cleartext over TLS, else
/// RSA-encrypted with the key the server sends on request.
async fn caching_sha2_more<S>(
    stream: &mut PacketStream<Transport<S>>,
    data: &[u8],
    password: &[u8],
    nonce: &[u8],
) -> Result<(), UpstreamError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match data {
        [FAST_AUTH_SUCCESS] => Ok(()),
        [PERFORM_FULL_AUTHENTICATION] if stream.get_ref().is_tls() => {
            let mut p = zeroize::Zeroizing::new(password.to_vec());
            p.push(0);
            Ok(stream.write(&p).await?)
        }
        [PERFORM_FULL_AUTHENTICATION] => {
            stream.write(&[REQUEST_PUBLIC_KEY]).await?;
            let key = stream.read().await?;
            let AuthPacket::MoreData(pem) = AuthPacket::decode(key.payload)? else {
                return Err(UpstreamError::Unexpected);
            };
            let sealed = rsa_exchange::encrypt_password(password, nonce, &pem)?;
            Ok(stream.write(&sealed).await?)
        }
        _ => Err(UpstreamError::Unexpected),
    }
}

#[cfg(test)]
#[path = "upstream_tests.rs"]
mod tests;
