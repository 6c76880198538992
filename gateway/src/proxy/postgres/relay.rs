//! The `Ready` phase: two tasks relay an authenticated session.
//!
//! - Frontend (agent → upstream): re-checks the token, classifies every
//!   `Query` and `Parse` with the PostgreSQL parser, records statements,
//!   refuses what policy denies, and tracks statements and portals.
//! - Backend (upstream → agent): masks `DataRow`s, records results, and
//!   writes Sluice's own error responses where the [`Tracker`] says they
//!   belong, so the agent sees them in protocol order (§55.2.2–3).
//!
//! A refused statement is replaced upstream by a `Sync`; its
//! `ReadyForQuery` marks where the agent gets the `ErrorResponse` (SQLSTATE
//! `42501`) and the session stays usable.
use std::{collections::HashMap, sync::Arc};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{
    codec::{self, backend, CodecError, Message, Reader},
    judge::{bound, judge, Judgement},
    mask::{self, RowPlan},
    session::{error_bytes, refusal_bytes, Session},
    sql::PreparedStatements,
    tracker::{Expect, Portal, Statement, SyncAction},
};
use crate::{
    guard::{self, Refusal},
    recorder::Event,
};

fn fatal_bytes(sqlstate: &str, message: &str) -> Bytes {
    let mut out = BytesMut::new();
    backend::fatal_response(sqlstate, message, &mut out);
    out.freeze()
}

/// Records `event` in `s`.
///
/// # Errors
/// [`RelayError::Record`] when the record is closed.
fn note(s: &Session, event: Event) -> Result<(), RelayError> {
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
    fn unrecorded(refused: Refusal) -> Self {
        RelayError::Record(std::io::Error::other(refused))
    }
}

impl From<std::io::Error> for RelayError {
    fn from(e: std::io::Error) -> Self {
        RelayError::Codec(CodecError::Io(e))
    }
}

/// Agent → upstream. Returns when the agent terminates or disconnects, or
/// after a FATAL was queued for the agent.
pub async fn frontend<R, W>(
    s: &Session,
    mut agent: Reader<R>,
    mut upstream: W,
) -> Result<(), RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut statements: HashMap<String, Arc<Statement>> = HashMap::new();
    // PREPARE and named Parse share PostgreSQL's namespace: both go here.
    let mut prepared = PreparedStatements::default();
    let mut portals: HashMap<String, Arc<Portal>> = HashMap::new();
    let mut discard_until_sync = false;
    let mut out = BytesMut::with_capacity(8192);
    loop {
        let msg = agent.message().await?;
        if discard_until_sync && msg.tag != b'S' {
            continue;
        }
        if matches!(msg.tag, b'Q' | b'P' | b'E' | b'F') {
            if let Err(refused) = s.guard.recheck().await {
                let fatal = match refused.kind {
                    guard::RefusalKind::Unavailable => fatal_bytes("08006", "Sluice cannot reach its token store (Redis) to re-check the token; reconnect later"),
                    _ => fatal_bytes(
                        "28P01",
                        &format!("Sluice token no longer valid: {}", refused.message),
                    ),
                };
                s.tracker
                    .push(Expect::Sync(SyncAction::FatalInstead(fatal)));
                postgres_protocol::message::frontend::sync(&mut out);
                let _ = upstream.write_all(&out).await;
                return Ok(());
            }
        }
        match msg.tag {
            b'Q' => {
                let mut body = &msg.body[..];
                let sql = codec::cstr(&mut body, "Query")?;
                let mut recorded = Ok(());
                let judged = judge(s, sql, None, &mut prepared, |text| {
                    recorded = note(
                        s,
                        Event::Query {
                            sql: text.to_string(),
                        },
                    );
                });
                recorded?;
                let refused = match judged.judgement {
                    Judgement::Allow => None,
                    Judgement::Deny(err) => Some(err),
                    Judgement::Hold(rule) => {
                        forward(s, &mut upstream, &mut out).await?;
                        held(s, &rule, &judged.text, &mut agent).await?
                    }
                };
                match refused {
                    None => {
                        s.tracker.push(Expect::SimpleQuery);
                        msg.encode(&mut out);
                    }
                    Some(err) => {
                        s.tracker
                            .push(Expect::Sync(SyncAction::ErrorThenForward(err)));
                        postgres_protocol::message::frontend::sync(&mut out);
                    }
                }
            }
            b'P' => {
                let mut body = &msg.body[..];
                let name = codec::cstr(&mut body, "Parse")?.to_string();
                let sql = codec::cstr(&mut body, "Parse")?;
                // Recorded when it is executed, or here if refused.
                let judged = judge(s, sql, Some(&name), &mut prepared, |_| {});
                match judged.judgement {
                    judgement @ (Judgement::Allow | Judgement::Hold(_)) => {
                        let hold = match judgement {
                            Judgement::Hold(rule) => Some(rule),
                            _ => None,
                        };
                        statements.insert(
                            name,
                            Arc::new(Statement {
                                sql: judged.text,
                                hold,
                                ..Default::default()
                            }),
                        );
                        msg.encode(&mut out);
                    }
                    Judgement::Deny(err) => {
                        note(s, Event::Query { sql: judged.text })?;
                        s.tracker.push(Expect::Sync(SyncAction::ErrorInstead(err)));
                        postgres_protocol::message::frontend::sync(&mut out);
                        discard_until_sync = true;
                    }
                }
            }
            b'B' => {
                let (portal, statement, formats) = parse_bind(&msg.body)?;
                match bound(s, &statement, statements.get(&statement), &prepared) {
                    Ok(st) => {
                        portals.insert(portal, Arc::new(Portal::new(st, formats)));
                        msg.encode(&mut out);
                    }
                    Err(err) => {
                        s.tracker.push(Expect::Sync(SyncAction::ErrorInstead(err)));
                        postgres_protocol::message::frontend::sync(&mut out);
                        discard_until_sync = true;
                    }
                }
            }
            b'D' => {
                let mut body = &msg.body[..];
                let kind = body
                    .first()
                    .copied()
                    .ok_or(CodecError::Malformed("Describe"))?;
                body = &body[1..];
                let name = codec::cstr(&mut body, "Describe")?;
                match kind {
                    b'S' => s.tracker.push(Expect::DescribeStatement(
                        statements.get(name).cloned().unwrap_or_default(),
                    )),
                    _ => {
                        let portal = portals
                            .get(name)
                            .cloned()
                            .unwrap_or_else(|| Arc::new(Portal::new(Arc::default(), Vec::new())));
                        s.tracker.push(Expect::DescribePortal {
                            portal,
                            hidden: false,
                        });
                    }
                }
                msg.encode(&mut out);
            }
            b'E' => {
                let mut body = &msg.body[..];
                let name = codec::cstr(&mut body, "Execute")?;
                let portal = portals
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Portal::new(Arc::default(), Vec::new())));
                note(
                    s,
                    Event::Query {
                        sql: portal.statement.sql.clone(),
                    },
                )?;
                if let Some(rule) = &portal.statement.hold {
                    forward(s, &mut upstream, &mut out).await?;
                    if let Some(err) = held(s, rule, &portal.statement.sql, &mut agent).await? {
                        // Parse and Bind already went up: close that batch
                        // with our own Sync, then skip to the agent's.
                        s.tracker.push(Expect::Sync(SyncAction::ErrorInstead(err)));
                        postgres_protocol::message::frontend::sync(&mut out);
                        forward(s, &mut upstream, &mut out).await?;
                        discard_until_sync = true;
                        continue;
                    }
                }
                if !s.mask().is_empty() && !portal.columns_known() {
                    // Learn the columns before the rows arrive.
                    postgres_protocol::message::frontend::describe(b'P', name, &mut out)
                        .map_err(CodecError::Io)?;
                    s.tracker.push(Expect::DescribePortal {
                        portal: portal.clone(),
                        hidden: true,
                    });
                }
                s.tracker.push(Expect::Execute(portal));
                msg.encode(&mut out);
            }
            b'C' => {
                let mut body = &msg.body[..];
                let kind = body
                    .first()
                    .copied()
                    .ok_or(CodecError::Malformed("Close"))?;
                body = &body[1..];
                let name = codec::cstr(&mut body, "Close")?;
                if kind == b'S' {
                    statements.remove(name);
                } else {
                    portals.remove(name);
                }
                msg.encode(&mut out);
            }
            b'S' => {
                discard_until_sync = false;
                s.tracker.push(Expect::Sync(SyncAction::Forward));
                msg.encode(&mut out);
            }
            b'F' if s.guarded() => {
                let text = "function calls bypass SQL classification and masking and are refused while the service has deny rules or masked columns";
                note(
                    s,
                    Event::Denied {
                        reason: text.into(),
                        rule: "FUNCTION_CALL".into(),
                    },
                )?;
                s.tracker
                    .push(Expect::Sync(SyncAction::ErrorThenForward(error_bytes(
                        "42501", text,
                    ))));
                postgres_protocol::message::frontend::sync(&mut out);
            }
            b'X' => {
                msg.encode(&mut out);
                let _ = upstream.write_all(&out).await;
                return Ok(());
            }
            _ => msg.encode(&mut out),
        }
        if !agent.has_buffered_message() || out.len() > 64 * 1024 {
            forward(s, &mut upstream, &mut out).await?;
        }
    }
}

/// Sends `out` upstream once the lines recorded for it are written.
async fn forward<W: AsyncWrite + Unpin>(
    s: &Session,
    w: &mut W,
    out: &mut BytesMut,
) -> Result<(), RelayError> {
    s.guard.flush().await.map_err(RelayError::unrecorded)?;
    Ok(flush(w, out).await?)
}

async fn flush<W: AsyncWrite + Unpin>(w: &mut W, out: &mut BytesMut) -> std::io::Result<()> {
    if !out.is_empty() {
        w.write_all(out).await?;
        out.clear();
    }
    Ok(())
}

/// Holds `sql` for a JIT approval under `rule`, abandoned if the agent
/// disconnects while it waits (the statement then never runs). `None` when
/// approved, else the ErrorResponse (42501 naming the approval) to send.
async fn held<R: AsyncRead + Unpin>(
    s: &Session,
    rule: &str,
    sql: &str,
    agent: &mut Reader<R>,
) -> Result<Option<Bytes>, RelayError> {
    tokio::select! {
        outcome = s.guard.hold(rule, sql) => Ok(outcome.err().map(|refused| refusal_bytes(&refused))),
        gone = agent.closed() => Err(gone.into()),
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
