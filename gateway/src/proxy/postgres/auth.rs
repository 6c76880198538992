//! Authenticating the agent (protocol §55.2.1, SASL §55.3): SCRAM-SHA-256
//! with the agent's Sluice token as the password, for any user name.
//!
//! The proof is checked against the verifiers of every live token of this
//! agent and service; the matching token is then checked like an HTTP token
//! (agent cgroup, service, expiry, revocation). Failure is a FATAL `28P01`.
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{
    codec::{self, backend, Reader},
    scram::{self, ServerFirst},
};
use crate::{
    state::{State, StateError},
    tokens::{self, Rejection, TokenRecord},
};

/// A token that passed, and its digest (for re-checks on each statement).
pub struct Authenticated {
    pub record: TokenRecord,
    pub digest: String,
}

/// Why a login failed. The agent has already been sent a FATAL.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("password authentication failed: {0}")]
    Rejected(String),
    #[error("token store unavailable: {0}")]
    State(#[from] StateError),
    #[error("{0}")]
    Protocol(String),
    #[error(transparent)]
    Codec(#[from] codec::CodecError),
}

impl AuthError {
    /// The SQLSTATE the agent was sent.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            AuthError::Rejected(_) => "28P01",
            AuthError::State(_) => "08006",
            AuthError::Protocol(_) | AuthError::Codec(_) => "08P01",
        }
    }
}

async fn fatal<W: AsyncWrite + Unpin>(w: &mut W, sqlstate: &str, message: &str) {
    let mut out = BytesMut::new();
    backend::fatal_response(sqlstate, message, &mut out);
    let _ = w.write_all(&out).await;
    let _ = w.flush().await;
}

/// Writes and clears `out`.
async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    reader: &mut Reader<S>,
    out: &mut BytesMut,
) -> Result<(), AuthError> {
    reader
        .get_mut()
        .write_all(out)
        .await
        .map_err(codec::CodecError::Io)?;
    out.clear();
    Ok(())
}

/// Reads a `SASLInitialResponse`/`SASLResponse` (`p`) message body.
async fn sasl_message<R: AsyncRead + Unpin>(
    reader: &mut Reader<R>,
) -> Result<bytes::Bytes, AuthError> {
    let m = reader.message().await?;
    if m.tag != b'p' {
        return Err(AuthError::Protocol(format!(
            "expected a SASL response, got message type {:?}",
            m.tag as char
        )));
    }
    Ok(m.body)
}

/// Runs the SASL exchange on the agent connection (`io` both reads via
/// `reader` and writes). `user` is only used in messages.
///
/// # Errors
/// [`AuthError`]; a FATAL with its SQLSTATE has been sent.
pub async fn authenticate<S>(
    reader: &mut Reader<S>,
    state: &State,
    agent: &str,
    service: &str,
    user: &str,
    preamble: BytesMut,
) -> Result<Authenticated, AuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let result = exchange(reader, state, agent, service, preamble).await;
    if let Err(e) = &result {
        let message = match e {
            AuthError::Rejected(_) => format!("password authentication failed for user \"{user}\" (use a valid Sluice token for this agent and service as the password)"),
            AuthError::State(_) => "Sluice cannot reach its token store (Redis); try again later".to_string(),
            other => other.to_string(),
        };
        fatal(reader.get_mut(), e.sqlstate(), &message).await;
    }
    result
}

async fn exchange<S>(
    reader: &mut Reader<S>,
    state: &State,
    agent: &str,
    service: &str,
    mut out: BytesMut,
) -> Result<Authenticated, AuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let salt = state.scram_salt(agent, service).await?;
    backend::auth_sasl(&mut out);
    send(reader, &mut out).await?;

    let initial = sasl_message(reader).await?;
    let mut body = &initial[..];
    let mechanism = codec::cstr(&mut body, "SASLInitialResponse")?;
    if mechanism != "SCRAM-SHA-256" {
        return Err(AuthError::Protocol(format!(
            "SASL mechanism {mechanism:?} not offered; use SCRAM-SHA-256"
        )));
    }
    let len = codec::i32_at(&mut body, "SASLInitialResponse")?;
    if len < 0 || len as usize != body.len() {
        return Err(AuthError::Protocol("malformed SASLInitialResponse".into()));
    }
    let first = ServerFirst::new(body, &salt).map_err(|e| AuthError::Protocol(e.to_string()))?;
    backend::auth_sasl_data(11, first.message(), &mut out);
    send(reader, &mut out).await?;

    let client_final = sasl_message(reader).await?;
    let candidates = state.scram_verifiers(agent, service).await?;
    let verifiers: Vec<scram::Verifier> = candidates.iter().map(|(_, v)| v.clone()).collect();
    let Some((index, server_final)) = first
        .verify(&client_final, &verifiers)
        .map_err(|e| AuthError::Protocol(e.to_string()))?
    else {
        return Err(AuthError::Rejected(Rejection::Unknown.to_string()));
    };
    let digest = candidates[index].0.clone();
    let record = state.lookup_digest(&digest).await?;
    let record = tokens::check(record, agent, service, chrono::Utc::now().timestamp())
        .map_err(|r| AuthError::Rejected(r.to_string()))?;
    backend::auth_sasl_data(12, server_final.as_bytes(), &mut out);
    backend::auth_ok(&mut out);
    send(reader, &mut out).await?;
    Ok(Authenticated { record, digest })
}
