//! The SSH server side: Sluice towards one agent connection.
//!
//! User authentication (RFC 4252) asks [`Gate::authenticate`]; the first
//! channel logs in upstream ([`Upstream::connect`]); every channel open and
//! request asks [`Gate::authorize`] and is relayed by [`Relay`]. Requests
//! Sluice never relays are refused here: agent forwarding, X11 (RFC 4254
//! §6.3), remote forwarding (`tcpip-forward`, §7.1) and stream-local
//! forwarding.
use std::{sync::Arc, time::Duration};

use russh::{
    server::{self, Auth, ChannelOpenHandle, Msg, Session, VerifiedPublicKey},
    Channel, ChannelId, ChannelOpenFailure, MethodKind, MethodSet, Pty,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::OnceCell,
};
use zeroize::Zeroizing;

use crate::{
    gate::{Decision, Gate, Operation, Presented, SshEvent},
    relay::{env_passes, Relay},
    upstream::Upstream,
};

/// Why serving a connection ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The SSH protocol failed (bad packet, key exchange, closed socket).
    #[error("ssh: {0}")]
    Ssh(#[from] russh::Error),
}

/// The server configuration for agents: `host_key` (from
/// [`host_key::load_or_generate`](crate::host_key::load_or_generate)),
/// `publickey` and `password` authentication, no rejection delay (the gate
/// decides on throttling).
pub fn config(host_key: russh::keys::PrivateKey) -> Arc<server::Config> {
    Arc::new(server::Config {
        server_id: russh::SshId::Standard("SSH-2.0-Sluice".into()),
        methods: MethodSet::from(&[MethodKind::PublicKey, MethodKind::Password][..]),
        auth_rejection_time: Duration::ZERO,
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key],
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        nodelay: true,
        ..Default::default()
    })
}

/// Serves one agent connection until it ends. `gate` decides for this
/// connection; the upstream connection is opened with the first channel and
/// closed with the agent's.
pub async fn serve<G, S>(config: Arc<server::Config>, stream: S, gate: G) -> Result<(), ServeError>
where
    G: Gate,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let upstream = Arc::new(OnceCell::new());
    let handler = Connection {
        gate: Arc::new(gate),
        login: None,
        upstream: upstream.clone(),
    };
    let outcome = server::run_stream(config, stream, handler).await?.await;
    if let Some(up) = upstream.get() {
        up.disconnect().await;
    }
    match outcome {
        Ok(()) | Err(russh::Error::Disconnect) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The russh handler of one agent connection.
struct Connection<G: Gate> {
    gate: Arc<G>,
    login: Option<Arc<G::Login>>,
    upstream: Arc<OnceCell<Upstream>>,
}

/// One channel's link to the gate and the (shared, lazily opened) upstream
/// connection.
struct Opening<G: Gate> {
    relay: Relay<G>,
    upstream: Arc<OnceCell<Upstream>>,
}

impl<G: Gate> Connection<G> {
    async fn authenticate(&mut self, user: &str, presented: Presented) -> Auth {
        match self.gate.authenticate(user, presented).await {
            Ok(login) => {
                self.login = Some(Arc::new(login));
                Auth::Accept
            }
            Err(refusal) => {
                tracing::info!(user, "ssh login refused: {refusal}");
                Auth::reject()
            }
        }
    }

    /// The relay context for a new channel, or `None` before login.
    fn opening(&self, session: &Session) -> Option<Opening<G>> {
        Some(Opening {
            relay: Relay {
                gate: self.gate.clone(),
                login: self.login.clone()?,
                server: session.handle(),
            },
            upstream: self.upstream.clone(),
        })
    }
}

impl<G: Gate> Opening<G> {
    /// Asks the gate about `operation` (a session, or a forward), logs in
    /// upstream if not yet done, opens the same kind of channel upstream and
    /// relays the two; on refusal or failure the agent's channel open fails
    /// with the reason. `originator` is the agent-side address of a
    /// `direct-tcpip` request.
    async fn open(
        self,
        agent: Channel<Msg>,
        reply: ChannelOpenHandle,
        operation: Operation,
        originator: (String, u32),
    ) {
        let Relay { gate, login, .. } = &self.relay;
        let channel = u32::from(agent.id());
        if let Decision::Deny { message } = gate.authorize(login, &operation).await {
            gate.record(
                login,
                SshEvent::Denied {
                    channel,
                    operation,
                    message: message.clone(),
                },
            );
            return reply.reject(refused(message)).await;
        }
        let upstream = self
            .upstream
            .get_or_try_init(|| async {
                let target = gate.upstream(login).await.map_err(|r| r.message)?;
                Upstream::connect(&target).await.map_err(|e| e.to_string())
            })
            .await;
        let upstream = match upstream {
            Ok(upstream) => upstream,
            Err(message) => {
                tracing::warn!("ssh upstream login failed: {message}");
                gate.record(
                    login,
                    SshEvent::UpstreamFailed {
                        message: message.clone(),
                    },
                );
                return reply.reject(refused(message)).await;
            }
        };
        let opened = match &operation {
            Operation::Forward { host, port } => {
                upstream
                    .open_direct_tcpip(host, *port, &originator.0, originator.1)
                    .await
            }
            _ => upstream.open_session().await,
        };
        let up_channel = match opened {
            Ok(c) => c,
            Err(e) => return reply.reject(refused(format!("upstream: {e}"))).await,
        };
        reply.accept().await;
        gate.record(
            login,
            SshEvent::ChannelOpen {
                channel,
                kind: operation.clone(),
            },
        );
        let terminal = operation == Operation::Session;
        self.relay.run(agent, up_channel, terminal).await;
    }
}

/// A channel open failure carrying `message` to the agent (RFC 4254 §5.1:
/// reason 1, administratively prohibited).
fn refused(message: String) -> ChannelOpenFailure {
    ChannelOpenFailure::Other {
        code: 1,
        reason: message,
    }
}

impl<G: Gate> server::Handler for Connection<G> {
    type Error = russh::Error;

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        let presented = Presented::Password(Zeroizing::new(password.to_string()));
        Ok(self.authenticate(user, presented).await)
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let presented = Presented::PublicKey(key.public_key.clone());
        Ok(self.authenticate(user, presented).await)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(opening) = self.opening(session) {
            let originator = (String::new(), 0);
            tokio::spawn(opening.open(channel, reply, Operation::Session, originator));
        }
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(opening) = self.opening(session) {
            let operation = Operation::Forward {
                host: host_to_connect.to_string(),
                port: port_to_connect,
            };
            let originator = (originator_address.to_string(), originator_port);
            tokio::spawn(opening.open(channel, reply, operation, originator));
        }
        Ok(())
    }

    // Channel requests are answered here, as they arrive (RFC 4254 §5.4:
    // in order; russh sends the answer only if the agent asked for one).
    // The relay decides and starts them; a refusal ends the channel with
    // the reason on stderr.

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        variable_name: &str,
        _variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if env_passes(variable_name) {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(false)
    }

    async fn tcpip_forward(
        &mut self,
        _address: &str,
        _port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(false)
    }
}
