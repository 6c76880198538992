//! What the upstream's responses belong to.
//!
//! The frontend task pushes an [`Expect`] for every forwarded message that
//! produces row descriptions, rows or a `ReadyForQuery`; the backend task
//! pops them as responses arrive (protocol §55.2.2 simple query, §55.2.3
//! extended query). This is what lets masking find the columns of a
//! `DataRow` produced by `Execute` without a preceding `RowDescription`, and
//! lets Sluice put its own error responses at the right place in the stream.
use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, OnceLock},
};

use bytes::Bytes;

use super::mask::{Column, RowPlan};

/// A prepared statement as the frontend task knows it.
#[derive(Debug, Default)]
pub struct Statement {
    /// The SQL text (bind values are never stored).
    pub sql: String,
    /// Columns from `Describe` (statement), once the upstream answered.
    pub columns: OnceLock<Vec<Column>>,
    /// Each execution waits for a JIT approval under this rule.
    pub hold: Option<String>,
}

/// A portal: a statement bound with result formats.
#[derive(Debug)]
pub struct Portal {
    pub statement: Arc<Statement>,
    /// Result-column format codes from `Bind`.
    pub formats: Vec<i16>,
    /// Columns from `Describe` (portal), once the upstream answered.
    pub described: OnceLock<Vec<Column>>,
    plan: OnceLock<Option<Arc<RowPlan>>>,
}

impl Portal {
    /// A new portal over `statement`.
    pub fn new(statement: Arc<Statement>, formats: Vec<i16>) -> Self {
        Portal {
            statement,
            formats,
            described: OnceLock::new(),
            plan: OnceLock::new(),
        }
    }

    /// True when the columns of its rows are known.
    pub fn columns_known(&self) -> bool {
        self.described.get().is_some() || self.statement.columns.get().is_some()
    }

    /// The masking plan for its rows: `Err(())` when the columns are unknown.
    pub fn plan(&self, mask: &[String]) -> Result<Option<Arc<RowPlan>>, ()> {
        if let Some(p) = self.plan.get() {
            return Ok(p.clone());
        }
        let plan = if let Some(cols) = self.described.get() {
            RowPlan::new(cols, mask, None)
        } else if let Some(cols) = self.statement.columns.get() {
            RowPlan::new(cols, mask, Some(&self.formats))
        } else {
            return Err(());
        };
        Ok(self.plan.get_or_init(|| plan.map(Arc::new)).clone())
    }
}

/// What to do when the `ReadyForQuery` answering a `Sync` arrives.
#[derive(Debug, Clone)]
pub enum SyncAction {
    /// Relay it.
    Forward,
    /// Send this ErrorResponse, then relay it (a refused simple query).
    ErrorThenForward(Bytes),
    /// Send this ErrorResponse instead (a refused extended-protocol batch;
    /// the agent's own Sync follows).
    ErrorInstead(Bytes),
    /// Send this FATAL ErrorResponse and close (e.g. a revoked token).
    FatalInstead(Bytes),
}

/// One expected group of responses.
#[derive(Debug)]
pub enum Expect {
    /// A simple `Query`: row descriptions and rows until `ReadyForQuery`.
    SimpleQuery,
    /// `Describe` of a statement: `ParameterDescription`, then
    /// `RowDescription` or `NoData`.
    DescribeStatement(Arc<Statement>),
    /// `Describe` of a portal; `hidden` when Sluice sent it itself to learn
    /// the columns (the answer is not relayed).
    DescribePortal { portal: Arc<Portal>, hidden: bool },
    /// `Execute`: rows until `CommandComplete`, `EmptyQueryResponse` or
    /// `PortalSuspended`.
    Execute(Arc<Portal>),
    /// `Sync` (or a `Query` replaced by one): a `ReadyForQuery`.
    Sync(SyncAction),
}

/// The queue shared by the two relay tasks.
#[derive(Default)]
pub struct Tracker {
    queue: Mutex<VecDeque<Expect>>,
}

impl Tracker {
    /// Appends an expectation (frontend task).
    pub fn push(&self, e: Expect) {
        self.queue.lock().unwrap().push_back(e);
    }

    /// Runs `f` on the front expectation (backend task).
    pub fn with_front<T>(&self, f: impl FnOnce(Option<&Expect>) -> T) -> T {
        f(self.queue.lock().unwrap().front())
    }

    /// Removes the front expectation.
    pub fn pop(&self) -> Option<Expect> {
        self.queue.lock().unwrap().pop_front()
    }

    /// After an ErrorResponse in the extended protocol the server skips to
    /// the next Sync: drop expectations up to it (a simple query's stays).
    pub fn skip_to_sync(&self) {
        let mut q = self.queue.lock().unwrap();
        while matches!(
            q.front(),
            Some(Expect::DescribeStatement(_) | Expect::DescribePortal { .. } | Expect::Execute(_))
        ) {
            q.pop_front();
        }
    }

    /// On `ReadyForQuery`: pops through the `Sync` or simple query it
    /// answers and returns the action (`Forward` for a simple query).
    pub fn ready(&self) -> SyncAction {
        let mut q = self.queue.lock().unwrap();
        while let Some(e) = q.pop_front() {
            match e {
                Expect::Sync(action) => return action,
                Expect::SimpleQuery => return SyncAction::Forward,
                _ => {}
            }
        }
        SyncAction::Forward
    }
}
