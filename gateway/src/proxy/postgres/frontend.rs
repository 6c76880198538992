//! The agent → upstream task of a relayed session: re-checks the token
//! before each statement, judges every `Query`, `Parse` and `Bind` through
//! the guard ([`super::judge`]), records statements, holds what needs a JIT
//! approval, and tracks statements and portals for the backend task.
//!
//! A refused statement is replaced upstream by a `Sync`; its
//! `ReadyForQuery` marks where the agent gets the `ErrorResponse` (SQLSTATE
//! `42501`) and the session stays usable.
use std::{collections::HashMap, sync::Arc};

use bytes::{Bytes, BytesMut};
use postgres_protocol::message::frontend::sync;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{
    codec::{self, backend, CodecError, Message, Reader},
    judge::{bound, judge, Judgement},
    relay::{note, parse_bind, RelayError},
    session::{error_bytes, refusal_bytes, Session},
    sql::PreparedStatements,
    tracker::{Expect, Portal, Statement, SyncAction},
};
use crate::{guard::RefusalKind, recorder::Event};

/// Agent → upstream. Returns when the agent terminates or disconnects, or
/// after a FATAL was queued for the agent.
///
/// # Errors
/// [`RelayError`] when either side fails or the record cannot be written.
pub async fn frontend<R, W>(s: &Session, agent: Reader<R>, upstream: W) -> Result<(), RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut f = Frontend {
        s,
        agent,
        upstream,
        statements: HashMap::new(),
        prepared: PreparedStatements::default(),
        portals: HashMap::new(),
        discard_until_sync: false,
        out: BytesMut::with_capacity(8192),
    };
    loop {
        let msg = f.agent.message().await?;
        if f.discard_until_sync && msg.tag != b'S' {
            continue;
        }
        if matches!(msg.tag, b'Q' | b'P' | b'E' | b'F') && !f.token_still_valid().await {
            return Ok(());
        }
        match msg.tag {
            b'Q' => f.query(&msg).await?,
            b'P' => f.parse(&msg)?,
            b'B' => f.bind(&msg)?,
            b'D' => f.describe(&msg)?,
            b'E' => f.execute(&msg).await?,
            b'C' => f.close(&msg)?,
            b'S' => {
                f.discard_until_sync = false;
                s.tracker.push(Expect::Sync(SyncAction::Forward));
                msg.encode(&mut f.out);
            }
            b'F' if s.guarded() => f.function_call()?,
            b'X' => {
                msg.encode(&mut f.out);
                let _ = f.upstream.write_all(&f.out).await;
                return Ok(());
            }
            _ => msg.encode(&mut f.out),
        }
        if !f.agent.has_buffered_message() || f.out.len() > 64 * 1024 {
            f.forward().await?;
        }
    }
}

/// The frontend task's state.
struct Frontend<'s, R, W> {
    s: &'s Session,
    agent: Reader<R>,
    upstream: W,
    /// Parsed statements by name, as judged.
    statements: HashMap<String, Arc<Statement>>,
    /// PREPARE and named Parse share PostgreSQL's namespace: both go here.
    prepared: PreparedStatements,
    portals: HashMap<String, Arc<Portal>>,
    /// After a refused extended-protocol message, until the agent's Sync.
    discard_until_sync: bool,
    /// Messages for the upstream, sent in batches.
    out: BytesMut,
}

impl<R, W> Frontend<'_, R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// Re-checks the token (authenticate, again); when it no longer
    /// passes, queues the FATAL for the agent and ends the upstream batch.
    async fn token_still_valid(&mut self) -> bool {
        let Err(refused) = self.s.guard.recheck().await else {
            return true;
        };
        let fatal = match refused.kind {
            RefusalKind::Unavailable => fatal_bytes(
                "08006",
                "Sluice cannot reach its token store (Redis) to re-check the token; reconnect later",
            ),
            _ => fatal_bytes(
                "28P01",
                &format!("Sluice token no longer valid: {}", refused.message),
            ),
        };
        self.s
            .tracker
            .push(Expect::Sync(SyncAction::FatalInstead(fatal)));
        sync(&mut self.out);
        let _ = self.upstream.write_all(&self.out).await;
        false
    }

    /// A simple `Query`: recorded, judged, held or refused.
    async fn query(&mut self, msg: &Message) -> Result<(), RelayError> {
        let s = self.s;
        let mut body = &msg.body[..];
        let sql = codec::cstr(&mut body, "Query")?;
        let mut recorded = Ok(());
        let judged = judge(s, sql, None, &mut self.prepared, |text| {
            let sql = text.to_string();
            recorded = note(s, Event::Query { sql });
        });
        recorded?;
        let refused = match judged.judgement {
            Judgement::Allow => None,
            Judgement::Deny(err) => Some(err),
            Judgement::Hold(rule) => {
                self.forward().await?;
                self.held(&rule, &judged.text).await?
            }
        };
        match refused {
            None => {
                s.tracker.push(Expect::SimpleQuery);
                msg.encode(&mut self.out);
            }
            Some(err) => {
                s.tracker
                    .push(Expect::Sync(SyncAction::ErrorThenForward(err)));
                sync(&mut self.out);
            }
        }
        Ok(())
    }

    /// A `Parse`: judged now, recorded when executed (or now if refused).
    fn parse(&mut self, msg: &Message) -> Result<(), RelayError> {
        let mut body = &msg.body[..];
        let name = codec::cstr(&mut body, "Parse")?.to_string();
        let sql = codec::cstr(&mut body, "Parse")?;
        let judged = judge(self.s, sql, Some(&name), &mut self.prepared, |_| {});
        let hold = match judged.judgement {
            Judgement::Allow => None,
            Judgement::Hold(rule) => Some(rule),
            Judgement::Deny(err) => {
                note(self.s, Event::Query { sql: judged.text })?;
                self.refuse(err);
                return Ok(());
            }
        };
        let statement = Statement {
            sql: judged.text,
            hold,
            ..Default::default()
        };
        self.statements.insert(name, Arc::new(statement));
        msg.encode(&mut self.out);
        Ok(())
    }

    /// A `Bind`: the statement it runs, judged again when it may run
    /// another text than the one parsed.
    fn bind(&mut self, msg: &Message) -> Result<(), RelayError> {
        let (portal, statement, formats) = parse_bind(&msg.body)?;
        let parsed = self.statements.get(&statement);
        match bound(self.s, &statement, parsed, &self.prepared) {
            Ok(st) => {
                self.portals
                    .insert(portal, Arc::new(Portal::new(st, formats)));
                msg.encode(&mut self.out);
            }
            Err(err) => self.refuse(err),
        }
        Ok(())
    }

    /// A `Describe`: the backend task learns the columns from its answer.
    fn describe(&mut self, msg: &Message) -> Result<(), RelayError> {
        let (kind, name) = kind_and_name(msg, "Describe")?;
        let expect = match kind {
            b'S' => {
                Expect::DescribeStatement(self.statements.get(name).cloned().unwrap_or_default())
            }
            _ => Expect::DescribePortal {
                portal: self.portal(name),
                hidden: false,
            },
        };
        self.s.tracker.push(expect);
        msg.encode(&mut self.out);
        Ok(())
    }

    /// An `Execute`: recorded; held when its statement needs a JIT
    /// approval; on a masked service, the portal's columns are learnt
    /// before its rows arrive.
    async fn execute(&mut self, msg: &Message) -> Result<(), RelayError> {
        let mut body = &msg.body[..];
        let name = codec::cstr(&mut body, "Execute")?;
        let portal = self.portal(name);
        let sql = portal.statement.sql.clone();
        note(self.s, Event::Query { sql })?;
        if let Some(rule) = &portal.statement.hold {
            self.forward().await?;
            if let Some(err) = self.held(rule, &portal.statement.sql).await? {
                // Parse and Bind already went up: close that batch with our
                // own Sync, then skip to the agent's.
                self.refuse(err);
                return self.forward().await;
            }
        }
        if !self.s.mask().is_empty() && !portal.columns_known() {
            postgres_protocol::message::frontend::describe(b'P', name, &mut self.out)
                .map_err(CodecError::Io)?;
            self.s.tracker.push(Expect::DescribePortal {
                portal: portal.clone(),
                hidden: true,
            });
        }
        self.s.tracker.push(Expect::Execute(portal));
        msg.encode(&mut self.out);
        Ok(())
    }

    /// A `Close` of a statement or portal.
    fn close(&mut self, msg: &Message) -> Result<(), RelayError> {
        let (kind, name) = kind_and_name(msg, "Close")?;
        if kind == b'S' {
            self.statements.remove(name);
        } else {
            self.portals.remove(name);
        }
        msg.encode(&mut self.out);
        Ok(())
    }

    /// A `FunctionCall` on a guarded service: refused (it bypasses
    /// classification and masking).
    fn function_call(&mut self) -> Result<(), RelayError> {
        let text = "function calls bypass SQL classification and masking and are refused while the service has deny rules or masked columns";
        note(
            self.s,
            Event::Denied {
                reason: text.into(),
                rule: "FUNCTION_CALL".into(),
            },
        )?;
        let err = error_bytes("42501", text);
        self.s
            .tracker
            .push(Expect::Sync(SyncAction::ErrorThenForward(err)));
        sync(&mut self.out);
        Ok(())
    }

    /// The portal `name`, or an unknown one (the upstream answers it).
    fn portal(&self, name: &str) -> Arc<Portal> {
        self.portals
            .get(name)
            .cloned()
            .unwrap_or_else(|| Arc::new(Portal::new(Arc::default(), Vec::new())))
    }

    /// Refuses an extended-protocol message: `err` instead of the batch's
    /// answer, and nothing more until the agent's Sync.
    fn refuse(&mut self, err: Bytes) {
        self.s
            .tracker
            .push(Expect::Sync(SyncAction::ErrorInstead(err)));
        sync(&mut self.out);
        self.discard_until_sync = true;
    }

    /// Sends the batch upstream once the lines recorded for it are written.
    async fn forward(&mut self) -> Result<(), RelayError> {
        self.s.guard.flush().await.map_err(RelayError::unrecorded)?;
        if !self.out.is_empty() {
            self.upstream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Holds `sql` for a JIT approval under `rule`, abandoned if the agent
    /// disconnects while it waits (the statement then never runs). `None`
    /// when approved, else the ErrorResponse (42501 naming the approval).
    async fn held(&mut self, rule: &str, sql: &str) -> Result<Option<Bytes>, RelayError> {
        tokio::select! {
            outcome = self.s.guard.hold(rule, sql) => Ok(outcome.err().map(|refused| refusal_bytes(&refused))),
            gone = self.agent.closed() => Err(gone.into()),
        }
    }
}

/// The kind byte (`S` statement, `P` portal) and name of a `Describe` or
/// `Close`.
fn kind_and_name<'m>(msg: &'m Message, what: &'static str) -> Result<(u8, &'m str), CodecError> {
    let mut body = &msg.body[..];
    let kind = body.first().copied().ok_or(CodecError::Malformed(what))?;
    body = &body[1..];
    Ok((kind, codec::cstr(&mut body, what)?))
}

fn fatal_bytes(sqlstate: &str, message: &str) -> Bytes {
    let mut out = BytesMut::new();
    backend::fatal_response(sqlstate, message, &mut out);
    out.freeze()
}
