//! The `Ready` phase: two tasks relay an authenticated session.
//!
//! - Frontend (agent → upstream, [`super::frontend`]): re-checks the
//!   token, judges statements, tracks statements and portals.
//! - Backend (upstream → agent, [`backend`]): masks `DataRow`s, records
//!   results, and writes Sluice's own error responses where the
//!   [`super::tracker::Tracker`] says they belong, so the agent sees them
//!   in protocol order (§55.2.2–3).
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{
    codec::{self, CodecError, Message, Reader},
    mask::{self, RowPlan},
    session::Session,
    tracker::{Expect, SyncAction},
};
use crate::{guard::Refusal, recorder::Event};

/// Records `event` in `s`.
///
/// # Errors
/// [`RelayError::Record`] when the record is closed.
pub(super) fn note(s: &Session, event: Event) -> Result<(), RelayError> {
    s.guard.record(event).map_err(RelayError::Record)
}

/// Errors that end a relay task.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("session record cannot be written: {0}")]
    Record(std::io::Error),
    #[error("result columns unknown; refusing to relay rows unmasked")]
    UnknownColumns,
}

impl RelayError {
    pub(super) fn unrecorded(refused: Refusal) -> Self {
        RelayError::Record(std::io::Error::other(refused))
    }
}

impl From<std::io::Error> for RelayError {
    fn from(e: std::io::Error) -> Self {
        RelayError::Codec(CodecError::Io(e))
    }
}

/// Parses a `Bind` body: (portal, statement, result-format codes). Parameter
/// values are skipped, never copied.
pub fn parse_bind(body: &[u8]) -> Result<(String, String, Vec<i16>), CodecError> {
    let mut b = body;
    let portal = codec::cstr(&mut b, "Bind")?.to_string();
    let statement = codec::cstr(&mut b, "Bind")?.to_string();
    let n_formats = codec::i16_at(&mut b, "Bind")?.max(0) as usize;
    if b.len() < n_formats * 2 {
        return Err(CodecError::Malformed("Bind"));
    }
    b = &b[n_formats * 2..];
    let n_params = codec::i16_at(&mut b, "Bind")?.max(0);
    for _ in 0..n_params {
        let len = codec::i32_at(&mut b, "Bind")?;
        if len > 0 {
            if b.len() < len as usize {
                return Err(CodecError::Malformed("Bind"));
            }
            b = &b[len as usize..];
        }
    }
    let n_results = codec::i16_at(&mut b, "Bind")?.max(0);
    let mut formats = Vec::with_capacity(n_results as usize);
    for _ in 0..n_results {
        formats.push(codec::i16_at(&mut b, "Bind")?);
    }
    Ok((portal, statement, formats))
}

/// Upstream → agent. Returns when the upstream closes or a FATAL was sent.
pub async fn backend<R, W>(
    s: &Session,
    mut upstream: Reader<R>,
    mut agent: W,
) -> Result<(), RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mask = s.mask();
    let mut current: Option<Arc<RowPlan>> = None;
    let mut masked_count = 0u64;
    let mut masked_names: Vec<String> = Vec::new();
    let mut out = BytesMut::with_capacity(64 * 1024);
    loop {
        let msg = match upstream.message().await {
            Ok(m) => m,
            Err(CodecError::Closed) => {
                deliver(s, &mut agent, &mut out).await?;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        match msg.tag {
            b'T' => {
                let cols = mask::columns(&msg.body)?;
                let hidden = s.tracker.with_front(|f| match f {
                    Some(Expect::DescribeStatement(st)) => {
                        let _ = st.columns.set(cols.clone());
                        Some(false)
                    }
                    Some(Expect::DescribePortal { portal, hidden }) => {
                        let _ = portal.described.set(cols.clone());
                        Some(*hidden)
                    }
                    _ => None,
                });
                match hidden {
                    Some(hidden) => {
                        s.tracker.pop();
                        if !hidden {
                            msg.encode(&mut out);
                        }
                    }
                    None => {
                        current = RowPlan::new(&cols, mask, None).map(Arc::new);
                        msg.encode(&mut out);
                    }
                }
            }
            b'n' => {
                let hidden = s.tracker.with_front(|f| match f {
                    Some(Expect::DescribeStatement(_)) => Some(false),
                    Some(Expect::DescribePortal { hidden, .. }) => Some(*hidden),
                    _ => None,
                });
                if hidden.is_some() {
                    s.tracker.pop();
                }
                if hidden != Some(true) {
                    msg.encode(&mut out);
                }
            }
            b'D' if !mask.is_empty() => {
                let plan = s.tracker.with_front(|f| match f {
                    Some(Expect::Execute(portal)) => {
                        portal.plan(mask).map_err(|_| RelayError::UnknownColumns)
                    }
                    _ => Ok(current.clone()),
                })?;
                match plan {
                    Some(plan) => {
                        masked_count += plan.apply(&msg.body, &mut out)?;
                        if masked_names.is_empty() {
                            masked_names.clone_from(&plan.names);
                        }
                    }
                    None => mask::passthrough(msg.tag, &msg.body, &mut out),
                }
            }
            b'C' | b'I' | b's' => {
                if s.tracker
                    .with_front(|f| matches!(f, Some(Expect::Execute(_))))
                {
                    s.tracker.pop();
                }
                current = None;
                if masked_count > 0 {
                    let fields = std::mem::take(&mut masked_names);
                    note(
                        s,
                        Event::Masked {
                            fields,
                            count: masked_count,
                        },
                    )?;
                    masked_count = 0;
                }
                msg.encode(&mut out);
            }
            b'E' => {
                s.tracker.skip_to_sync();
                current = None;
                let (code, message) = super::upstream::error_fields(&msg);
                // A server message can quote a value (e.g. a failed cast of a
                // masked column): on masked services only the SQLSTATE is kept.
                let message = if mask.is_empty() {
                    format!("{code}: {message}")
                } else {
                    code
                };
                let _ = s.guard.record(Event::Error { message });
                msg.encode(&mut out);
            }
            b'Z' => match s.tracker.ready() {
                SyncAction::Forward => msg.encode(&mut out),
                SyncAction::ErrorThenForward(err) => {
                    out.put_slice(&err);
                    msg.encode(&mut out);
                }
                SyncAction::ErrorInstead(err) => out.put_slice(&err),
                SyncAction::FatalInstead(err) => {
                    out.put_slice(&err);
                    deliver(s, &mut agent, &mut out).await?;
                    let _ = agent.shutdown().await;
                    return Ok(());
                }
            },
            _ => msg.encode(&mut out),
        }
        if !upstream.has_buffered_message() || out.len() > 256 * 1024 {
            deliver(s, &mut agent, &mut out).await?;
        }
    }
}

/// Sends `out` to the agent once the lines recorded for it (`masked`,
/// `error`) are written.
async fn deliver<W: AsyncWrite + Unpin>(
    s: &Session,
    agent: &mut W,
    out: &mut BytesMut,
) -> Result<(), RelayError> {
    s.guard.flush().await.map_err(RelayError::unrecorded)?;
    agent.write_all(out).await?;
    out.clear();
    Ok(())
}

/// Writes `msg` to `w` immediately (used before the relay starts).
pub async fn write_messages<W: AsyncWrite + Unpin>(
    w: &mut W,
    msgs: &[Message],
    extra: &[u8],
) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    for m in msgs {
        m.encode(&mut out);
    }
    out.put_slice(extra);
    w.write_all(&out).await
}
