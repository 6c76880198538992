//! The command phase after both logins: each agent command is read, the
//! statements in it judged through the [`Gate`], and what is allowed
//! relayed to the upstream with its answer (masked where the gate says).
//!
//! - `COM_QUERY` and `COM_STMT_PREPARE` are classified ([`classify`]) and
//!   authorized (and recorded) by the gate; `COM_STMT_EXECUTE` is
//!   authorized again with the text it was prepared from, so a revoked
//!   token stops the next statement. Where columns are masked, the gate
//!   refuses a statement that reads one in a way masking cannot follow
//!   ([`crate::classify::check_exposure`]).
//! - `KILL [QUERY] <id>` is translated to the upstream thread id of the
//!   agent's own connection ([`Gate::upstream_thread`]); other ids get
//!   ERR 1094 (unknown thread id).
//! - `COM_CHANGE_USER` and `COM_PROCESS_KILL` are refused: a new login or
//!   a kill by raw id never passes with the service's credential.
//! - A server's request for a local file is impossible
//!   (`CLIENT_LOCAL_FILES` is never offered) and ends the session.
mod results;

use std::collections::HashMap;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::{
    classify::{classify, Escapes, StatementKind},
    command::{parse_kill, translate_kill, Command},
    gate::{Allowed, Event, Gate, Statement},
    packet::{PacketError, PacketStream},
    response::ErrPacket,
    wire::Malformed,
};
use results::{Ends, Outcome};

/// Why the relay ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Reading or writing packets failed.
    #[error(transparent)]
    Packet(#[from] PacketError),
    /// A packet cannot be read.
    #[error(transparent)]
    Malformed(#[from] Malformed),
    /// The upstream asked for a local file.
    #[error("the upstream asked for a local file (LOAD DATA LOCAL), which is never allowed")]
    LocalInfile,
    /// The upstream sent something out of place.
    #[error("unexpected packet from the upstream")]
    Unexpected,
}

/// Relays commands until the agent quits or either side closes.
pub async fn relay<A, U, G>(
    agent: &mut PacketStream<A>,
    upstream: &mut PacketStream<U>,
    gate: &mut G,
    escapes: Escapes,
) -> Result<(), RelayError>
where
    A: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
    G: Gate,
{
    let mut session = Session {
        escapes,
        prepared: HashMap::new(),
    };
    let result = session.run(agent, upstream, gate).await;
    let _ = gate.record(Event::Close).await;
    result
}

/// What the relay keeps between commands.
struct Session {
    escapes: Escapes,
    /// Prepared statement id → the text it was prepared from.
    prepared: HashMap<u32, String>,
}

/// What to do with one command.
enum Plan {
    /// Forward this payload; relay the answer as `Answer` says.
    Forward(Vec<u8>, Answer),
    /// Answer the agent with this error.
    Refuse(ErrPacket),
    /// The agent is done.
    Quit,
}

enum Answer {
    Results { mask: Vec<String>, binary: bool },
    Prepared { mask: Vec<String>, sql: String },
    Single,
    FieldList,
    None,
}

impl Session {
    async fn run<A, U, G>(
        &mut self,
        agent: &mut PacketStream<A>,
        upstream: &mut PacketStream<U>,
        gate: &mut G,
    ) -> Result<(), RelayError>
    where
        A: AsyncRead + AsyncWrite + Unpin,
        U: AsyncRead + AsyncWrite + Unpin,
        G: Gate,
    {
        loop {
            let packet = match agent.read().await {
                Ok(p) => p,
                Err(PacketError::Closed) => break,
                Err(e) => return Err(e.into()),
            };
            match self.plan(&packet.payload, gate).await? {
                Plan::Quit => break,
                Plan::Refuse(err) => agent.write(&err.encode()).await?,
                Plan::Forward(payload, answer) => {
                    upstream.reset_seq();
                    upstream.write(&payload).await?;
                    let outcome = self.answer(agent, upstream, answer).await?;
                    record_outcome(gate, outcome).await;
                }
            }
        }
        upstream.reset_seq();
        let _ = upstream.write(&[0x01]).await;
        Ok(())
    }

    async fn plan<G: Gate>(&mut self, payload: &[u8], gate: &mut G) -> Result<Plan, RelayError> {
        let forward = |answer| Ok(Plan::Forward(payload.to_vec(), answer));
        Ok(match Command::decode(payload)? {
            Command::Quit => Plan::Quit,
            Command::Query(sql) => {
                let sql = String::from_utf8_lossy(sql).into_owned();
                return self.query(sql, gate).await;
            }
            Command::StmtPrepare(sql) => {
                let sql = String::from_utf8_lossy(sql).into_owned();
                match self.authorize(&sql, gate).await {
                    Ok(mask) => return forward(Answer::Prepared { mask, sql }),
                    Err(err) => Plan::Refuse(err),
                }
            }
            Command::StmtExecute {
                statement_id,
                flags,
            } => {
                let Some(sql) = self.prepared.get(&statement_id).cloned() else {
                    return forward(Answer::Single);
                };
                match self.authorize(&sql, gate).await {
                    Ok(mask) if !mask.is_empty() && flags != 0 => {
                        Plan::Refuse(ErrPacket::policy_denied(
                            "cursors are not available where columns are masked",
                        ))
                    }
                    Ok(mask) => return forward(Answer::Results { mask, binary: true }),
                    Err(err) => Plan::Refuse(err),
                }
            }
            Command::StmtClose { statement_id } => {
                self.prepared.remove(&statement_id);
                return forward(Answer::None);
            }
            Command::StmtSendLongData { .. } => return forward(Answer::None),
            Command::ResetConnection => {
                self.prepared.clear();
                return forward(Answer::Single);
            }
            Command::InitDb(_)
            | Command::Ping
            | Command::Statistics
            | Command::SetOption(_)
            | Command::StmtReset { .. } => return forward(Answer::Single),
            Command::FieldList(_) => return forward(Answer::FieldList),
            Command::ChangeUser | Command::ProcessKill(_) => {
                Plan::Refuse(ErrPacket::policy_denied(
                    "COM_CHANGE_USER and COM_PROCESS_KILL are not available through Sluice",
                ))
            }
            Command::StmtFetch { .. } | Command::Other(_) => {
                Plan::Refuse(ErrPacket::new(1047, b"08S01", "Unknown command"))
            }
        })
    }

    /// A `COM_QUERY`: authorized, `KILL` translated.
    async fn query<G: Gate>(&mut self, sql: String, gate: &mut G) -> Result<Plan, RelayError> {
        let mask = match self.authorize(&sql, gate).await {
            Ok(mask) => mask,
            Err(err) => return Ok(Plan::Refuse(err)),
        };
        let is_kill =
            classify(&sql, self.escapes).is_ok_and(|c| c.kinds.contains(&StatementKind::Kill));
        let text = if is_kill {
            let kill = parse_kill(&sql);
            match kill.and_then(|k| translate_kill(k, |id| gate.upstream_thread(id))) {
                Some(translated) => translated,
                None => {
                    return Ok(Plan::Refuse(ErrPacket::new(
                        1094,
                        b"HY000",
                        "Unknown thread id (only the agent's own connections can be killed)",
                    )))
                }
            }
        } else {
            sql
        };
        let mut payload = vec![0x03];
        payload.extend_from_slice(text.as_bytes());
        Ok(Plan::Forward(
            payload,
            Answer::Results {
                mask,
                binary: false,
            },
        ))
    }

    /// Classifies `sql` and has the gate authorize it (and record it);
    /// the mask to apply.
    async fn authorize<G: Gate>(&self, sql: &str, gate: &mut G) -> Result<Vec<String>, ErrPacket> {
        let classification = classify(sql, self.escapes);
        let statement = Statement {
            sql,
            classification: &classification,
            escapes: self.escapes,
        };
        Ok(match gate.authorize(&statement).await? {
            Allowed::AsIs => Vec::new(),
            Allowed::Masked(columns) => columns,
        })
    }

    async fn answer<A, U>(
        &mut self,
        agent: &mut PacketStream<A>,
        upstream: &mut PacketStream<U>,
        answer: Answer,
    ) -> Result<Outcome, RelayError>
    where
        A: AsyncRead + AsyncWrite + Unpin,
        U: AsyncRead + AsyncWrite + Unpin,
    {
        let mut ends = Ends {
            agent,
            upstream,
            escapes: &mut self.escapes,
        };
        match answer {
            Answer::Results { mask, binary } => ends.results(&mask, binary).await,
            Answer::Prepared { mask, sql } => {
                if let Some(id) = ends.prepared(&mask).await? {
                    self.prepared.insert(id, sql);
                }
                Ok(Outcome::default())
            }
            Answer::Single => ends.single().await,
            Answer::FieldList => ends.field_list().await,
            Answer::None => Ok(Outcome::default()),
        }
    }
}

async fn record_outcome<G: Gate>(gate: &mut G, outcome: Outcome) {
    if !outcome.masked.is_empty() {
        let _ = gate
            .record(Event::Masked {
                columns: outcome.masked,
                rows: outcome.rows,
            })
            .await;
    }
    if let Some(err) = outcome.error {
        let _ = gate
            .record(Event::Error {
                code: err.code,
                message: err.message,
            })
            .await;
    }
}
