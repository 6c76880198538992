//! Authenticating the agent (protocol §55.2.1, SASL §55.3): SCRAM-SHA-256
//! with the agent's Sluice token as the password, for any user name.
//!
//! [`prove`] runs the exchange up to the client's proof, checked against
//! the verifiers of every live token of this agent and service; the
//! handler then has the guard check the matching token (agent cgroup,
//! service, expiry, revocation) and [`accept`]s or refuses with a FATAL.
//!
//! An agent bound to an OIDC issuer may present a JWT, which no
//! challenge–response can check (DESIGN.md §6): for it [`cleartext`] asks
//! for the password in the clear, and only over TLS; the guard checks the
//! `slt_` token or JWT it gets.
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use zeroize::Zeroizing;

use super::{
    codec::{self, backend, Reader},
    scram::{self, ServerFirst},
};
use crate::{
    guard::{Refusal, Session},
    state::{State, StateError},
    tokens::{self, TokenRecord},
};

/// Stores the SCRAM verifier of a newly issued `token` (of `record`'s agent
/// and service), so that the agent can log in with it as the password.
///
/// # Errors
/// [`StateError`] when Redis fails.
pub async fn enrol(state: &State, record: &TokenRecord, token: &str) -> Result<(), StateError> {
    let (agent, service) = (&record.agent, &record.service);
    let salt = state.login_salt(scram::SCHEME, agent, service).await?;
    let verifier = scram::verifier(token.as_bytes(), &salt).to_text();
    let digest = tokens::digest(token);
    state
        .add_verifier(
            scram::SCHEME,
            agent,
            service,
            &digest,
            &verifier,
            record.expires,
        )
        .await
}

/// What the client's SCRAM proof matched.
pub struct Proof {
    /// The digest of the token whose verifier matched; `None` when none
    /// did (a failed guess).
    pub digest: Option<String>,
    /// The server-final message (`v=…`), sent once the token passed;
    /// `None` for a cleartext password.
    server_final: Option<String>,
}

/// Why the exchange could not reach a proof. The agent has not been sent
/// an answer yet.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The guard refused (the token store is unreachable); recorded.
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("{0}")]
    Protocol(String),
    #[error(transparent)]
    Codec(#[from] codec::CodecError),
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

/// Reads a `SASLInitialResponse`/`SASLResponse`/`PasswordMessage` (`p`)
/// message body.
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

/// Runs the SASL exchange on the agent connection up to the client's
/// proof (`reader` both reads and writes), after `preamble`.
///
/// # Errors
/// [`AuthError`] on a protocol error or when the token store is
/// unreachable; nothing has been answered.
pub async fn prove<S>(
    reader: &mut Reader<S>,
    session: &Session,
    mut out: BytesMut,
) -> Result<Proof, AuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let salt = session.login_salt(scram::SCHEME).await?;
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
    let candidates: Vec<(String, scram::Verifier)> = session
        .verifiers(scram::SCHEME)
        .await?
        .into_iter()
        .filter_map(|(digest, text)| Some((digest, scram::Verifier::from_text(&text)?)))
        .collect();
    let verifiers: Vec<scram::Verifier> = candidates.iter().map(|(_, v)| v.clone()).collect();
    let matched = first
        .verify(&client_final, &verifiers)
        .map_err(|e| AuthError::Protocol(e.to_string()))?;
    Ok(match matched {
        Some((index, server_final)) => Proof {
            digest: Some(candidates[index].0.clone()),
            server_final: Some(server_final),
        },
        None => Proof {
            digest: None,
            server_final: None,
        },
    })
}

/// Asks for the password in the clear (`AuthenticationCleartextPassword`,
/// protocol §55.2.1) after `preamble` and reads the `PasswordMessage`:
/// what the guard then checks as [`crate::guard::Presented::Token`].
/// The caller makes sure the connection is TLS.
///
/// # Errors
/// [`AuthError`] on a protocol error; nothing has been answered.
pub async fn cleartext<S>(
    reader: &mut Reader<S>,
    mut out: BytesMut,
) -> Result<(Zeroizing<String>, Proof), AuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    backend::auth_cleartext(&mut out);
    send(reader, &mut out).await?;
    let body = sasl_message(reader).await?;
    let mut rest = &body[..];
    let password = Zeroizing::new(codec::cstr(&mut rest, "PasswordMessage")?.to_string());
    let proof = Proof {
        digest: None,
        server_final: None,
    };
    Ok((password, proof))
}

/// Completes the exchange for a token that passed: SASL final, then
/// AuthenticationOk.
///
/// # Errors
/// The agent connection failed.
pub async fn accept<S>(reader: &mut Reader<S>, proof: &Proof) -> Result<(), AuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = BytesMut::new();
    if let Some(server_final) = &proof.server_final {
        backend::auth_sasl_data(12, server_final.as_bytes(), &mut out);
    }
    backend::auth_ok(&mut out);
    send(reader, &mut out).await
}
