//! PostgreSQL (frontend/backend protocol 3.0, PostgreSQL docs chapter 55).
//!
//! One connection goes through typed phases, each a function that consumes
//! the previous phase's output:
//! [`startup::negotiate`] (SSLRequest, GSSENCRequest, CancelRequest,
//! StartupMessage) → [`auth::authenticate`] (SCRAM-SHA-256 with the token)
//! → [`upstream::connect`] (real credential) → [`relay`] (statement policy,
//! masking, records).
use std::{sync::Arc, time::Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tracing::{debug, warn};

use super::{Gateway, Intercepted};
use crate::config::Service;
use crate::{
    recorder::{Event, SessionMeta},
    state::LiveToken,
};

pub mod auth;
pub mod cancel;
pub mod codec;
mod judge;
pub mod mask;
pub mod relay;
pub mod scram;
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

/// Serves one intercepted connection to PostgreSQL service `idx`.
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
        startup::negotiate(&gw, &service.host, Box::new(stream), opener).await
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
            if let Err(e) = gw.pg_cancel.cancel(key).await {
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
    let id = &conn.identity;
    let meta = SessionMeta {
        agent: id.agent.clone(),
        pid: id.pid,
        uid: id.uid,
        service: service.name.clone(),
    };
    let open = Event::Open {
        protocol: if tls {
            "postgres+tls".into()
        } else {
            "postgres".into()
        },
        original_dst: conn.original_dst.to_string(),
        peer: conn.peer.to_string(),
        cgroup: id.cgroup.clone(),
        netns_cookie: id.netns_cookie,
    };
    let opened = match gw.recorder.start(meta) {
        Ok(r) => match r.record(open) {
            // Nothing is relayed before the open line is written.
            Ok(()) => r.flush().await.map(|()| Arc::new(r)),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    let record = match opened {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "cannot write the session record");
            let msg = "Sluice cannot write its session record; refusing unaudited access";
            return startup::refuse(&mut reader, "53100", msg).await;
        }
    };
    let started = Instant::now();
    if let Err(message) =
        login_and_relay(&gw, &conn, service, record.clone(), reader, startup).await
    {
        let _ = record.record(Event::Error { message });
    }
    let _ = record.record(Event::Close {
        duration_ms: started.elapsed().as_millis() as u64,
    });
}

async fn login_and_relay(
    gw: &Arc<Gateway>,
    conn: &Intercepted,
    service: Arc<crate::config::Service>,
    record: Arc<crate::recorder::SessionRecord>,
    mut reader: codec::Reader<BoxIo>,
    startup: startup::StartupMessage,
) -> Result<(), String> {
    let agent = conn.identity.agent.as_str();
    let epoch = gw.state.revocation_epoch();
    let user = startup.get("user").unwrap_or_default().to_string();
    let mut preamble = BytesMut::new();
    startup::negotiate_protocol_version(&startup, &mut preamble);

    let state = match gw.state.get().await {
        Ok(s) => s,
        Err(e) => {
            startup::refuse(
                &mut reader,
                "08006",
                "Sluice cannot reach its token store (Redis); try again later",
            )
            .await;
            return Err(e.to_string());
        }
    };
    if let Err(wait) = gw.auth_throttle.check(agent) {
        let msg = format!(
            "too many failed token checks from this agent; retry in {} ms",
            wait.as_millis().max(1)
        );
        let _ = record.record(Event::AuthFail {
            reason: msg.clone(),
        });
        let _ = record.flush().await;
        startup::refuse(&mut reader, "28P01", &msg).await;
        return Ok(());
    }
    let authed = match auth::authenticate(
        &mut reader,
        &state,
        agent,
        &service.name,
        &user,
        preamble,
    )
    .await
    {
        Ok(a) => a,
        Err(e) => {
            let reason = match e {
                auth::AuthError::Rejected(_) => {
                    let failures = gw.auth_throttle.failure(agent);
                    format!(
                        "{e} (failure {failures} of this agent within {} s)",
                        super::throttle::WINDOW.as_secs()
                    )
                }
                _ => e.to_string(),
            };
            // The agent already has its ErrorResponse: write the line now,
            // not with the next batch.
            let _ = record.record(Event::AuthFail { reason });
            let _ = record.flush().await;
            return Ok(());
        }
    };
    record
        .record(Event::AuthOk {
            token_id: authed.record.id.clone(),
        })
        .map_err(|e| e.to_string())?;

    let secret = match gw.vault.get(&service.credential.secret) {
        Ok(Some(s)) => s,
        Ok(None) => {
            let msg = format!(
                "secret {:?} is not in the vault; run `sluice secret put {}`",
                service.credential.secret, service.credential.secret
            );
            startup::refuse(&mut reader, "08006", &msg).await;
            return Err(msg);
        }
        Err(e) => {
            startup::refuse(&mut reader, "08006", "Sluice vault unavailable").await;
            return Err(e.to_string());
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
    let key = gw.pg_cancel.register(cancel::CancelTarget {
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
            let token = LiveToken::new(authed.digest, authed.record, epoch);
            run_relay(
                gw,
                &conn.identity,
                service,
                record,
                reader,
                up.reader,
                token,
            )
            .await
        }
        Err(e) => Err(e.to_string()),
    };
    gw.pg_cancel.unregister(key);
    result
}

async fn run_relay(
    gw: &Arc<Gateway>,
    identity: &crate::proxy::AgentIdentity,
    service: Arc<crate::config::Service>,
    record: Arc<crate::recorder::SessionRecord>,
    agent: codec::Reader<BoxIo>,
    upstream: codec::Reader<BoxIo>,
    token: LiveToken,
) -> Result<(), String> {
    let session = relay::Session {
        gw: gw.clone(),
        service,
        identity: identity.clone(),
        record,
        tracker: tracker::Tracker::default(),
    };
    let (agent_io, agent_buf) = agent.into_parts();
    let (up_io, up_buf) = upstream.into_parts();
    let (agent_r, mut agent_w) = tokio::io::split(agent_io);
    let (up_r, mut up_w) = tokio::io::split(up_io);
    let result = {
        let front = relay::frontend(
            &session,
            codec::Reader::new(agent_r, agent_buf).with_limit(codec::MAX_FRONTEND_MESSAGE),
            &mut up_w,
            token,
        );
        let back = relay::backend(&session, codec::Reader::new(up_r, up_buf), &mut agent_w);
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
