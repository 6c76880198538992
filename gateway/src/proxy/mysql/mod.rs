//! MySQL and MariaDB (DESIGN.md §6 "MySQL / MariaDB"), on the
//! `sluice-mysql` protocol crate. One connection, in order:
//!
//! 1. identify: the guard opens the session;
//! 2. dial the upstream and read its greeting (an unreachable upstream is
//!    answered at once with ERR 1105 naming it);
//! 3. greet the agent with Sluice's own connection id and the upstream's
//!    version, TLS by a certificate for the service host from the local
//!    CA, and check its token by `caching_sha2_password` or
//!    `mysql_native_password` against the stored verifiers ([`login`]);
//! 4. log in upstream as `credential.user` with the vault secret;
//! 5. relay commands, each statement authorized by the guard
//!    ([`gate::GuardGate`]), results masked, `KILL QUERY` translated
//!    ([`threads`]).
use std::{net::SocketAddr, sync::Arc, time::Duration, time::Instant};

use rustls_pki_types::ServerName;
use sluice_mysql::{
    agent::{accept, AgentError, AgentSettings},
    auth::Plugin,
    classify::Escapes,
    packet::PacketStream,
    relay::{relay, RelayError},
    response::OkPacket,
    upstream::{greet, Greeted, LoginParams, UpstreamTls as Tls},
    Capabilities, ErrPacket, PacketError,
};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use super::{Gateway, Intercepted};
use crate::{
    config::{Service, UpstreamTls},
    guard::Session,
    intercept::resolver::service_addrs,
    tls::upstream_client_config,
};

mod gate;
pub mod login;
mod threads;

pub use gate::err_packet;

/// How long dialling the upstream and reading its greeting may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the agent's login and then the upstream login may each take.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The MySQL handler's own state, shared by its connections.
#[derive(Default)]
pub struct Mysql {
    /// Sluice connection ids → upstream threads, for `KILL QUERY`.
    pub threads: threads::Threads,
}

/// Serves one intercepted connection to MySQL `service`.
pub async fn serve(
    gw: Arc<Gateway>,
    conn: Intercepted,
    mut stream: TcpStream,
    service: Arc<Service>,
) {
    let opened = match gw.guard.open(&conn, &service, "mysql") {
        // Nothing is relayed before the open line is written.
        Ok(session) => session.opened().await.map(|()| Arc::new(session)),
        Err(refused) => Err(refused),
    };
    let session = match opened {
        Ok(s) => s,
        Err(refused) => {
            // A server may answer a connection with ERR instead of its greeting.
            let _ = first_packet(&mut stream, &err_packet(&service.name, &refused)).await;
            return;
        }
    };
    let started = Instant::now();
    let mysql = gw.mysql.clone();
    let id = mysql.threads.open(&conn.identity.agent, &service.name);
    if let Err(message) = login_and_relay(&session, &mysql, id, stream).await {
        session.error(message);
    }
    mysql.threads.release(id);
    session.close(started.elapsed());
}

/// Writes `err` as the first packet of a connection.
async fn first_packet(stream: &mut TcpStream, err: &ErrPacket) -> Result<(), PacketError> {
    PacketStream::new(stream).write(&err.encode()).await
}

async fn login_and_relay(
    session: &Arc<Session>,
    mysql: &Arc<Mysql>,
    id: u32,
    mut stream: TcpStream,
) -> Result<(), String> {
    let service = session.service().clone();
    let greeted = match tokio::time::timeout(DIAL_TIMEOUT, dial(&service)).await {
        Ok(Ok(greeted)) => greeted,
        failed => {
            let why = match failed {
                Ok(Err(why)) => why,
                _ => format!("no greeting within {} s", DIAL_TIMEOUT.as_secs()),
            };
            let message = format!(
                "Sluice cannot reach the upstream {}:{} of service {}: {why}",
                service.host, service.port, service.name
            );
            let _ = first_packet(&mut stream, &ErrPacket::unknown(message.clone())).await;
            return Err(message);
        }
    };
    let settings = AgentSettings {
        connection_id: id,
        server_version: String::from_utf8_lossy(&greeted.handshake.server_version).into_owned(),
        plugin: Plugin::CachingSha2Password,
        tls: agent_tls(session, &service.host),
    };
    let mut gate = gate::GuardGate {
        session: session.clone(),
        mysql: mysql.clone(),
    };
    let accepted = tokio::time::timeout(LOGIN_TIMEOUT, accept(stream, &settings, &mut gate)).await;
    let mut agent = match accepted {
        Ok(Ok(agent)) => agent,
        // The agent was told (ERR 1045) and the refusal recorded.
        Ok(Err(AgentError::Refused(_))) => return Ok(()),
        Ok(Err(e)) => {
            let refused = session.malformed(&e.to_string());
            return Err(refused.message);
        }
        Err(_) => return Err("the agent's login timed out".into()),
    };
    let secret = match session.credential() {
        Ok(secret) => secret,
        Err(refused) => {
            let _ = agent
                .stream
                .write(&err_packet(&service.name, &refused).encode())
                .await;
            return Ok(());
        }
    };
    let sql = service.sql().expect("a mysql service has SQL settings");
    let tls_config = upstream_client_config(service.upstream_ca.as_deref())
        .map(|mut c| {
            c.alpn_protocols.clear();
            Arc::new(c)
        })
        .map_err(|e| e.to_string());
    let params = LoginParams {
        user: &sql.user,
        password: secret.expose(),
        database: agent.response.database.as_deref(),
        tls: match sql.upstream_tls {
            UpstreamTls::Disable => Tls::Disable,
            UpstreamTls::Prefer => Tls::Prefer,
            UpstreamTls::Require => Tls::Require,
            UpstreamTls::VerifyFull => Tls::VerifyFull,
        },
        tls_config: tls_config.as_ref().ok().cloned(),
        server_name: ServerName::try_from(service.host.clone()).map_err(|e| e.to_string())?,
        capabilities: agent.capabilities & Capabilities::UPSTREAM,
    };
    let logged_in = tokio::time::timeout(LOGIN_TIMEOUT, greeted.login(&params)).await;
    drop(params);
    drop(secret);
    let mut up = match logged_in {
        Ok(Ok(up)) => up,
        outcome => {
            let why = match (outcome, tls_config) {
                (Ok(Err(e)), Ok(_)) => e.to_string(),
                (Ok(Err(e)), Err(tls)) => format!("{e} ({tls})"),
                (_, _) => "timed out".into(),
            };
            let message = format!(
                "Sluice could not log in to the upstream {}:{} of service {}: {why}",
                service.host, service.port, service.name
            );
            let _ = agent
                .stream
                .write(&ErrPacket::unknown(message.clone()).encode())
                .await;
            return Err(message);
        }
    };
    mysql.threads.logged_in(id, up.handshake.connection_id);
    let ok = OkPacket {
        status: up.handshake.status,
        ..OkPacket::default()
    };
    agent
        .stream
        .write(&ok.encode())
        .await
        .map_err(|e| e.to_string())?;
    let escapes = Escapes::from_status(up.handshake.status);
    match relay(&mut agent.stream, &mut up.stream, &mut gate, escapes).await {
        Ok(()) | Err(RelayError::Packet(PacketError::Closed)) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// Dials the service's upstream and reads its greeting; why not, in words.
async fn dial(service: &Service) -> Result<Greeted<TcpStream>, String> {
    let addrs = service_addrs(service).await.map_err(|e| e.to_string())?;
    let mut last = String::from("no address");
    for ip in addrs {
        match TcpStream::connect(SocketAddr::new(ip, service.port)).await {
            Ok(tcp) => {
                let _ = tcp.set_nodelay(true);
                return greet(tcp).await.map_err(|e| e.to_string());
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

/// TLS towards the agent with a certificate for `host` from the local CA;
/// `None` (TLS not offered) when it cannot be minted.
fn agent_tls(session: &Session, host: &str) -> Option<TlsAcceptor> {
    match session.guard().ca.agent_config(host, &[]) {
        Ok(config) => Some(TlsAcceptor::from(config)),
        Err(e) => {
            debug!(error = %e, "no TLS towards the MySQL agent");
            None
        }
    }
}
