//! Sluice as the server of an agent's connection, up to authentication
//! (MySQL Internals, "Connection Phase"; DESIGN.md §6 "MySQL / MariaDB"):
//!
//! 1. send HandshakeV10 with Sluice's own connection id and nonce;
//! 2. answer an `SSLRequest` with TLS (certificate for the service host);
//! 3. run [`ServerAuth`] on the `HandshakeResponse41`, asking the
//!    [`Gate`] to check each proof against the agent's token verifiers.
//!
//! The OK packet is the caller's to send, once the upstream login
//! succeeded ([`Accepted::stream`]'s sequence id is already right for it);
//! a refusal is answered here with ERR 1045 / `28000`.
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;

use crate::{
    auth::{
        server::{Refused, ServerAuth, Step},
        Plugin,
    },
    capability::Capabilities,
    gate::Gate,
    handshake::{
        ClientHello, HandshakeResponse, InitialHandshake, STATUS_AUTOCOMMIT, UTF8MB4_GENERAL_CI,
    },
    packet::{PacketError, PacketStream},
    response::ErrPacket,
    transport::Transport,
    wire::Malformed,
};

/// What Sluice offers agents: what it asks of upstreams, connection
/// attributes, and TLS when it has a certificate.
pub const AGENT_CAPABILITIES: Capabilities = Capabilities(
    Capabilities::UPSTREAM.0 | Capabilities::CONNECT_ATTRS.0 | Capabilities::INTERACTIVE.0,
);

/// How Sluice greets agents.
pub struct AgentSettings {
    /// The connection id the agent sees (its `KILL QUERY` target).
    pub connection_id: u32,
    /// The server version the agent sees: the upstream's own (clients
    /// choose defaults by it; mysql-connector-python asks a "8.x" server
    /// for `utf8mb4_0900_ai_ci`, which MariaDB, "5.5.5-10.x", lacks).
    pub server_version: String,
    /// The plugin announced in the handshake.
    pub plugin: Plugin,
    /// TLS to the agent, when Sluice has a certificate for the host.
    pub tls: Option<TlsAcceptor>,
}

/// Why the agent's login did not complete.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Reading or writing packets failed.
    #[error(transparent)]
    Packet(#[from] PacketError),
    /// The agent sent a packet that cannot be read.
    #[error(transparent)]
    Malformed(#[from] Malformed),
    /// The TLS handshake with the agent failed.
    #[error("TLS with the agent failed: {0}")]
    Tls(std::io::Error),
    /// The agent asked for TLS where Sluice has no certificate.
    #[error("the agent asked for TLS, which this service does not offer")]
    NoTls,
    /// The login was refused (ERR 1045 was sent).
    #[error("login refused: {0}")]
    Refused(Refused),
}

/// An authenticated agent connection, before its OK packet.
#[derive(Debug)]
pub struct Accepted<S> {
    /// The connection (TLS if the agent asked).
    pub stream: PacketStream<Transport<S>>,
    /// What the agent sent: user, database, capabilities, attributes.
    pub response: HandshakeResponse,
    /// The capabilities in force with the agent.
    pub capabilities: Capabilities,
}

/// Greets the agent on `io` and authenticates it: `gate` says whether a
/// proof matches one of the agent's valid tokens.
pub async fn accept<S, G>(
    io: S,
    settings: &AgentSettings,
    gate: &mut G,
) -> Result<Accepted<S>, AgentError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    G: Gate,
{
    let mut auth = ServerAuth::new(settings.plugin, false);
    let offered = match settings.tls {
        Some(_) => AGENT_CAPABILITIES | Capabilities::SSL,
        None => AGENT_CAPABILITIES,
    };
    let handshake = InitialHandshake {
        server_version: settings.server_version.as_bytes().to_vec(),
        connection_id: settings.connection_id,
        nonce: auth.nonce().to_vec(),
        capabilities: offered,
        charset: UTF8MB4_GENERAL_CI,
        status: STATUS_AUTOCOMMIT,
        auth_plugin: settings.plugin.name().as_bytes().to_vec(),
    };
    let mut plain = PacketStream::new(io);
    plain.write(&handshake.encode()).await?;
    let first = plain.read_exact_frame().await?;
    let (mut stream, response) = match ClientHello::decode(&first.payload)? {
        ClientHello::Response(r) => {
            let (io, seq) = plain.into_parts();
            (PacketStream::from_parts(Transport::Plain(io), seq), r)
        }
        ClientHello::SslRequest(_) => {
            let acceptor = settings.tls.as_ref().ok_or(AgentError::NoTls)?;
            let (io, seq) = plain.into_parts();
            let tls = acceptor.accept(io).await.map_err(AgentError::Tls)?;
            let transport = Transport::Tls {
                stream: Box::new(tls.into()),
                verified: false,
            };
            let mut stream = PacketStream::from_parts(transport, seq);
            auth.set_tls();
            let p = stream.read().await?;
            (stream, tls_response(&p.payload)?)
        }
    };
    let capabilities = offered & response.header.capabilities;
    let mut step = auth.start(&response);
    // The gate's own answer to a proof it refused, if any.
    let mut refusal = None;
    loop {
        step = match step {
            Step::Send(payload) => {
                stream.write(&payload).await?;
                let reply = stream.read().await?;
                auth.reply(&reply.payload)
            }
            Step::Check(proof) => {
                let checked = gate.authenticate(&proof).await;
                let matched = checked.is_ok();
                refusal = checked.err();
                auth.verdict(matched)
            }
            Step::Accept { preface } => {
                if let Some(p) = preface {
                    stream.write(&p).await?;
                }
                return Ok(Accepted {
                    stream,
                    response,
                    capabilities,
                });
            }
            Step::Refuse(why) => {
                let err = refusal
                    .take()
                    .unwrap_or_else(|| ErrPacket::access_denied(format!("Access denied: {why}")));
                stream.write(&err.encode()).await?;
                stream.shutdown().await?;
                return Err(AgentError::Refused(why));
            }
        };
    }
}

/// The `HandshakeResponse41` after TLS (a second `SSLRequest` is not one).
fn tls_response(payload: &[u8]) -> Result<HandshakeResponse, Malformed> {
    match ClientHello::decode(payload)? {
        ClientHello::Response(r) => Ok(r),
        ClientHello::SslRequest(_) => Err(Malformed("SSLRequest inside TLS")),
    }
}
