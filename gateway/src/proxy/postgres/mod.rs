//! PostgreSQL (frontend/backend protocol 3.0, PostgreSQL docs chapter 55).
//!
//! One connection goes through typed phases, each a function that consumes
//! the previous phase's output:
//! [`startup::negotiate`] (SSLRequest, GSSENCRequest, CancelRequest,
//! StartupMessage) → [`auth::prove`] (SCRAM-SHA-256 with the token) and
//! the guard's token check → [`upstream::connect`] (the guard's real
//! credential) → [`relay`] (statement policy, masking, records).
use std::{sync::Arc, time::Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tracing::{debug, warn};

use super::{Gateway, Intercepted};
use crate::{
    config::Service,
    guard::{Presented, RefusalKind, Session},
};

pub mod auth;
pub mod cancel;
pub mod codec;
mod frontend;
mod judge;
pub mod mask;
pub mod relay;
pub mod scram;
pub mod session;
pub mod sql;
pub mod startup;
pub mod tracker;
pub mod upstream;
pub mod upstream_auth;

/// How long an agent may take from connecting to its StartupMessage
/// (TLS included) before the connection is dropped.
const STARTUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How long the backend may drain after the agent's side ended.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A byte stream to or from PostgreSQL peers (plain TCP or TLS).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
/// A boxed [`Io`].
pub type BoxIo = Box<dyn Io>;

/// The PostgreSQL handler's own state, shared by its connections.
pub struct Postgres {
    /// Statement classification cache (keyed by SQL text).
    pub sql: sql::ClassifyCache,
    /// Sluice BackendKeyData → upstream backend, for CancelRequest.
    pub cancel: cancel::CancelRegistry,
}

impl Postgres {
    /// A handler whose statement cache holds `entries` classifications.
    pub fn new(entries: usize) -> Arc<Self> {
        Arc::new(Postgres {
            sql: sql::ClassifyCache::new(entries),
            cancel: Default::default(),
        })
    }
}

/// The SQLSTATE for a refusal of the pipeline (PostgreSQL docs appendix A).
pub fn sqlstate(kind: &RefusalKind) -> &'static str {
    match kind {
        RefusalKind::Unauthenticated | RefusalKind::Throttled => "28P01",
        RefusalKind::Malformed => "08P01",
        RefusalKind::Denied { .. } | RefusalKind::Rejected { .. } => "42501",
        RefusalKind::Unavailable | RefusalKind::NoSecret | RefusalKind::Vault => "08006",
        RefusalKind::Unrecorded => "53100",
    }
}

/// Serves one intercepted connection to PostgreSQL `service`.
pub async fn serve(
    gw: Arc<Gateway>,
    conn: Intercepted,
    stream: tokio::net::TcpStream,
    service: Arc<Service>,
) {
    let negotiated = tokio::time::timeout(STARTUP_TIMEOUT, async {
        let mut first = [0u8; 1];
        match stream.peek(&mut first).await {
            Ok(1) => {}
            Ok(_) => return Err(codec::CodecError::Closed.into()),
            Err(e) => return Err(codec::CodecError::Io(e).into()),
        }
        let opener = startup::Opener::from_first_byte(first[0]);
        startup::negotiate(&gw.guard.ca, &service.host, Box::new(stream), opener).await
    })
    .await;
    let opening = match negotiated
        .unwrap_or_else(|_| Err(startup::StartupError::Protocol("start-up timed out".into())))
    {
        Ok(o) => o,
        Err(e) => {
            return debug!(agent = %conn.identity.agent, error = %e, "PostgreSQL start-up failed")
        }
    };
    let (mut reader, startup, tls) = match opening {
        startup::Opening::Cancel { key } => {
            if let Err(e) = gw.postgres.cancel.cancel(key).await {
                warn!(error = %e, "forwarding CancelRequest failed");
            }
            return;
        }
        startup::Opening::Login {
            reader,
            startup,
            tls,
        } => (reader, startup, tls),
    };
    let protocol = if tls { "postgres+tls" } else { "postgres" };
    let opened = match gw.guard.open(&conn, &service, protocol) {
        // Nothing is relayed before the open line is written.
        Ok(session) => session.opened().await.map(|()| Arc::new(session)),
        Err(refused) => Err(refused),
    };
    let session = match opened {
        Ok(s) => s,
        Err(refused) => {
            return startup::refuse(&mut reader, sqlstate(&refused.kind), &refused.message).await
        }
    };
    let started = Instant::now();
    if let Err(message) = login_and_relay(&gw, &session, reader, startup, tls).await {
        session.error(message);
    }
    session.close(started.elapsed());
}

async fn login_and_relay(
    gw: &Arc<Gateway>,
    session: &Arc<Session>,
    mut reader: codec::Reader<BoxIo>,
    startup: startup::StartupMessage,
    tls: bool,
) -> Result<(), String> {
    let service = session.service().clone();
    let user = startup.get("user").unwrap_or_default().to_string();
    let mut preamble = BytesMut::new();
    startup::negotiate_protocol_version(&startup, &mut preamble);

    // An agent bound to an OIDC issuer may present a JWT: only a cleartext
    // password can carry it, so it is asked for, over TLS only (DESIGN.md §6).
    let oidc_agent = session.wants_cleartext_password();
    if oidc_agent && !tls {
        let refused = session.absent("an agent bound to an OIDC issuer logs in over TLS only");
        let _ = session.flush().await;
        let message = format!("{} (connect with sslmode=require)", refused.message);
        startup::refuse(&mut reader, "28000", &message).await;
        return Ok(());
    }
    let asked = if oidc_agent {
        auth::cleartext(&mut reader, preamble)
            .await
            .map(|(password, proof)| (Some(password), proof))
    } else {
        auth::prove(&mut reader, session, preamble)
            .await
            .map(|proof| (None, proof))
    };
    let (password, proof) = match asked {
        Ok(p) => p,
        Err(auth::AuthError::Refused(refused)) => {
            let _ = session.flush().await;
            startup::refuse(&mut reader, sqlstate(&refused.kind), &refused.message).await;
            return Ok(());
        }
        Err(e) => {
            let refused = session.malformed(&e.to_string());
            let _ = session.flush().await;
            startup::refuse(&mut reader, "08P01", &refused.message).await;
            return Ok(());
        }
    };
    let presented = match (&password, &proof.digest) {
        (Some(password), _) => Presented::Token(password),
        (None, Some(digest)) => Presented::Digest(digest),
        (None, None) => Presented::Unmatched,
    };
    if let Err(refused) = session.authenticate(presented).await {
        // The agent gets its ErrorResponse: write the line now, not with
        // the next batch.
        let _ = session.flush().await;
        let message = match refused.kind {
            RefusalKind::Unauthenticated => format!("password authentication failed for user \"{user}\" (use a valid Sluice token or OIDC token for this agent and service as the password)"),
            _ => refused.message,
        };
        startup::refuse(&mut reader, sqlstate(&refused.kind), &message).await;
        return Ok(());
    }
    auth::accept(&mut reader, &proof)
        .await
        .map_err(|e| e.to_string())?;

    let secret = match session.credential() {
        Ok(s) => s,
        Err(refused) => {
            startup::refuse(&mut reader, sqlstate(&refused.kind), &refused.message).await;
            return Ok(());
        }
    };
    let upstream = upstream::connect(&service, &startup, &secret).await;
    drop(secret);
    let mut up = match upstream {
        Ok(u) => u,
        Err(e) => {
            startup::refuse(&mut reader, e.sqlstate(), &e.to_string()).await;
            return Err(e.to_string());
        }
    };
    let pg = &gw.postgres;
    let key = pg.cancel.register(cancel::CancelTarget {
        upstream: up.addr,
        pid: up.backend_key.0,
        key: up.backend_key.1,
    });
    let mut greeting = BytesMut::new();
    codec::backend::backend_key_data(key.0, key.1, &mut greeting);
    codec::backend::ready_for_query(up.tx_status, &mut greeting);
    let sent = relay::write_messages(
        reader.get_mut(),
        &std::mem::take(&mut up.parameter_status),
        &greeting,
    )
    .await;
    let result = match sent {
        Ok(()) => {
            let relay = session::Session {
                pg: pg.clone(),
                guard: session.clone(),
                tracker: tracker::Tracker::default(),
            };
            run_relay(&relay, reader, up.reader).await
        }
        Err(e) => Err(e.to_string()),
    };
    pg.cancel.unregister(key);
    result
}

async fn run_relay(
    session: &session::Session,
    agent: codec::Reader<BoxIo>,
    upstream: codec::Reader<BoxIo>,
) -> Result<(), String> {
    let (agent_io, agent_buf) = agent.into_parts();
    let (up_io, up_buf) = upstream.into_parts();
    let (agent_r, mut agent_w) = tokio::io::split(agent_io);
    let (up_r, mut up_w) = tokio::io::split(up_io);
    let result = {
        let front = frontend::frontend(
            session,
            codec::Reader::new(agent_r, agent_buf).with_limit(codec::MAX_FRONTEND_MESSAGE),
            &mut up_w,
        );
        let back = relay::backend(session, codec::Reader::new(up_r, up_buf), &mut agent_w);
        tokio::pin!(front, back);
        // The upstream closing ends the session. The agent leaving (Terminate)
        // or a FATAL queued by the frontend lets the backend drain first.
        tokio::select! {
            r = &mut front => match r {
                Ok(()) => tokio::time::timeout(DRAIN_TIMEOUT, &mut back).await.unwrap_or(Ok(())),
                Err(e) => Err(e),
            },
            r = &mut back => r,
        }
    };
    let _ = up_w.shutdown().await;
    let _ = agent_w.shutdown().await;
    match result {
        Ok(()) | Err(relay::RelayError::Codec(codec::CodecError::Closed)) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}
