//! [`sluice_mysql::gate::Gate`] on a guard [`Session`]: the MySQL
//! handler's login check, statement decisions and records, made by the
//! shared pipeline; every refusal answered in MySQL's ERR packet
//! ([`err_packet`]).
use std::sync::Arc;

use sluice_mysql::{
    auth::verifier::Proof,
    classify::check_exposure,
    gate::{Allowed, Event as MysqlEvent, Gate, Statement},
    ErrPacket,
};

use super::{login, Mysql};
use crate::{
    guard::{self, Presented, Refusal, RefusalKind, Session},
    policy::{statement::SqlFacts, Operation},
    recorder::Event,
};

/// The ERR packet for a refusal of the pipeline (DESIGN.md §6 "MySQL /
/// MariaDB", errors): 1045/`28000` for a bad, expired or revoked token,
/// 1227/`42000` for policy (naming the rule) and rejected approvals
/// (naming the approval), 1105/`HY000` for the rest.
pub fn err_packet(service: &str, refusal: &Refusal) -> ErrPacket {
    match &refusal.kind {
        RefusalKind::Unauthenticated | RefusalKind::Throttled | RefusalKind::Malformed => {
            ErrPacket::access_denied(format!("Access denied: {}", refusal.message))
        }
        RefusalKind::Denied { rule } => ErrPacket::policy_denied(format!(
            "permission denied by Sluice policy for service {service}: {} (rule {rule})",
            refusal.message
        )),
        RefusalKind::Rejected { approval } => ErrPacket::policy_denied(format!(
            "Sluice approval {approval} for service {service} was not given: {}",
            refusal.message
        )),
        RefusalKind::Unavailable
        | RefusalKind::Unrecorded
        | RefusalKind::NoSecret
        | RefusalKind::Vault => ErrPacket::unknown(refusal.message.clone()),
    }
}

/// The gate of one agent connection.
pub struct GuardGate {
    pub session: Arc<Session>,
    pub mysql: Arc<Mysql>,
}

impl GuardGate {
    /// The refusal as the agent sees it; its line is written first.
    async fn refuse(&self, refusal: Refusal) -> ErrPacket {
        let _ = self.session.flush().await;
        err_packet(&self.session.service().name, &refusal)
    }

    /// Which token a login proof was made with, as the guard is told.
    async fn presented(&self, proof: &Proof) -> Result<Option<String>, Refusal> {
        if matches!(proof, Proof::Absent) {
            return Err(self
                .session
                .absent("no password: use a Sluice token for this agent and service"));
        }
        let stored = self.session.verifiers(login::SCHEME).await?;
        Ok(login::find(stored, proof))
    }
}

/// Why an agent bound to an OIDC issuer cannot log in with a
/// challenge–response proof (DESIGN.md §6, "Common to every protocol").
const CLEARTEXT_ONLY: &str = "this agent logs in with its token or JWT as a cleartext password, \
     over TLS only: use caching_sha2_password (or mysql_clear_password) with --ssl";

impl Gate for GuardGate {
    async fn authenticate(&mut self, proof: &Proof) -> Result<(), ErrPacket> {
        let bound = self.session.wants_cleartext_password();
        let checked = match proof {
            // The password itself (caching_sha2_password's full
            // authentication or mysql_clear_password, both over TLS only):
            // an slt_ token, or a JWT for an agent bound to an issuer.
            Proof::Cleartext(text) => match std::str::from_utf8(text) {
                Ok(token) => self.session.authenticate(Presented::Token(token)).await,
                Err(_) => Err(self.session.malformed("the password is not UTF-8")),
            },
            // A JWT cannot be checked by a challenge–response proof. A
            // caching_sha2_password fast path is answered with a request
            // for full authentication (over TLS), so that refusal is not
            // recorded or counted; a mysql_native_password proof ends the
            // login.
            Proof::CachingSha2 { .. } if bound => Err(Refusal {
                kind: RefusalKind::Unauthenticated,
                message: CLEARTEXT_ONLY.into(),
            }),
            _ if bound => Err(self.session.absent(CLEARTEXT_ONLY)),
            _ => match self.presented(proof).await {
                Ok(Some(digest)) => self.session.authenticate(Presented::Digest(&digest)).await,
                Ok(None) => self.session.authenticate(Presented::Unmatched).await,
                Err(refusal) => Err(refusal),
            },
        };
        // The agent learns the outcome once its line is written.
        let flushed = self.session.flush().await;
        checked
            .and(flushed)
            .map_err(|r| err_packet(&self.session.service().name, &r))
    }

    async fn authorize(&mut self, statement: &Statement<'_>) -> Result<Allowed, ErrPacket> {
        let s = &self.session;
        if let Err(refusal) = s.recheck().await {
            return Err(self.refuse(refusal).await);
        }
        if s.record(Event::Query {
            sql: statement.sql.to_string(),
        })
        .is_err()
        {
            return Err(self.refuse(Refusal::unrecorded()).await);
        }
        let mask = s.service().mask.clone();
        let exposure =
            check_exposure(statement.sql, statement.escapes, &mask).map_err(|e| e.to_string());
        let kinds: Vec<_> = statement
            .classification
            .as_ref()
            .map(|c| c.kinds.iter().copied().collect())
            .unwrap_or_default();
        let unparseable = statement
            .classification
            .as_ref()
            .err()
            .map(ToString::to_string);
        let facts = match &unparseable {
            None => Ok(SqlFacts {
                kinds: &kinds,
                running: &kinds,
                functions: &[],
                exposure: exposure.as_ref().map(|_| ()).map_err(String::as_str),
            }),
            Some(message) => Err(message.as_str()),
        };
        match s.authorize(Operation::Sql(facts), statement.sql).await {
            Ok(guard::Allowed::AsIs) => Ok(Allowed::AsIs),
            Ok(guard::Allowed::Masked) => Ok(Allowed::Masked(mask)),
            Err(refusal) => Err(self.refuse(refusal).await),
        }
    }

    async fn record(&mut self, event: MysqlEvent) -> Result<(), ErrPacket> {
        let s = &self.session;
        let recorded = match event {
            MysqlEvent::Masked { columns, rows } => s.record(Event::Masked {
                fields: columns,
                count: rows,
            }),
            MysqlEvent::Error { code, message } => {
                // A server message can quote a value (e.g. a duplicate key
                // of a masked column): on masked services only the code.
                let message = if s.service().mask.is_empty() {
                    format!("{code}: {message}")
                } else {
                    code.to_string()
                };
                s.record(Event::Error { message })
            }
            MysqlEvent::Close => Ok(()),
        };
        recorded.map_err(|_| err_packet(&s.service().name, &Refusal::unrecorded()))
    }

    fn upstream_thread(&self, connection_id: u64) -> Option<u32> {
        let s = &self.session;
        let id = u32::try_from(connection_id).ok()?;
        self.mysql
            .threads
            .owned_by(id, &s.identity.agent, &s.service().name)
    }
}
