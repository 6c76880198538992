//! PostgreSQL statement classification for a service's `deny` and `approve`
//! rules (DESIGN.md §4, config).
//!
//! Input is SQL text, as a simple Query or an extended-protocol Parse
//! carries it. Output is the [`StatementKind`]s it contains. PostgreSQL's own
//! grammar parses the text (libpg_query, through the [`pg_query`] crate), and
//! kinds come only from the parse tree, never from the text. So case,
//! comments (`drop/**/table`), quoting and dollar-quoting cannot hide a
//! statement. Neither can nesting: CTEs (`WITH d AS (DELETE …)`),
//! sub-selects, `EXPLAIN`, `PREPARE`, `COPY (query)`, `CREATE RULE` actions,
//! `DO` blocks and the bodies of `CREATE FUNCTION`/`PROCEDURE` are all
//! looked into. Kind names follow the command names in the PostgreSQL
//! documentation, Part VI "Reference", "SQL Commands".
//!
//! Function calls are found anywhere too ([`Classification::functions`]),
//! for `FUNCTION:name` rules and [`StatementKind::DangerousFunctions`].
//! Out of reach by design: what an existing function does (`SELECT f()`),
//! and dynamic SQL built at run time (`EXECUTE format(…)` in a `DO` block,
//! which shows as `DO` only). Code in a language other than `sql` and
//! `plpgsql` (`DO LANGUAGE plperl`, `CREATE FUNCTION … LANGUAGE plpython3u`)
//! is a [`SqlError`]: denied under [`UNPARSEABLE`] on a service with deny
//! rules.
//!
//! The decision itself is the shared SQL policy's
//! ([`crate::policy::statement::decide`]); this module supplies its facts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

pub use crate::policy::statement::{StatementKind, MASK, UNPARSEABLE};
use crate::policy::{
    statement::{self, SqlFacts, SqlPolicy},
    Decision,
};

mod calls;
mod masked;
mod parser;
mod prepared;
mod session;
mod walk;

pub use calls::DANGEROUS;
pub use masked::Exposures;
pub use prepared::{PreparedError, PreparedStatements, PreparedText, MAX_TEXTS_PER_NAME};
pub use session::{SessionVerdict, UNKNOWN_PREPARED};

/// What a SQL text contains.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Classification {
    /// Each kind once, in [`StatementKind`] declaration order (reads, writes,
    /// DDL, then the rest), whatever the order in the text. Every statement
    /// contributes at least one kind ([`StatementKind::Other`] if nothing
    /// more specific).
    pub kinds: Vec<StatementKind>,
    /// Top-level statements: 2 for `SELECT 1; DROP TABLE t`, 0 for an empty
    /// or comment-only text.
    pub statements: usize,
    /// Where the text reads columns in ways masking by output name cannot
    /// follow, checked against a service's `mask`.
    pub exposures: Exposures,
    /// The kinds that run when the text runs: [`Classification::kinds`]
    /// but those only of `PREPARE` bodies (which run at `EXECUTE`).
    /// `approve` rules match these.
    pub running: Vec<StatementKind>,
    /// Every function called, lower case, dotted when qualified
    /// (`pg_catalog.lo_unlink`), sorted.
    pub functions: Vec<String>,
    /// Each `PREPARE`, in text order.
    pub prepares: Vec<Prepare>,
    /// The prepared statement names executed (`EXECUTE p`, `EXPLAIN
    /// ANALYZE EXECUTE p`, `CREATE TABLE t AS EXECUTE p`), in text order.
    pub executes: Vec<String>,
}

/// A `PREPARE name AS statement` found in a text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prepare {
    /// The statement name, as PostgreSQL folds it.
    pub name: String,
    /// What executing it runs, in [`StatementKind`] order.
    pub kinds: Vec<StatementKind>,
    /// The functions executing it calls.
    pub functions: Vec<String>,
}

/// Why a SQL text could not be classified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SqlError {
    /// PostgreSQL's parser rejected the text. The message is the parser's
    /// own, e.g. `syntax error at or near "selec"`.
    #[error("{0}")]
    Parse(String),
}

impl From<pg_query::Error> for SqlError {
    fn from(e: pg_query::Error) -> Self {
        match e {
            pg_query::Error::Parse(message) => Self::Parse(message),
            pg_query::Error::Conversion(_) => {
                Self::Parse("the statement contains a NUL byte".into())
            }
            other => Self::Parse(other.to_string()),
        }
    }
}

/// Classifies every statement in `sql`, multi-statement strings included.
///
/// Nested statements are classified too: CTEs, sub-selects, `EXPLAIN
/// [ANALYZE] stmt`, `PREPARE p AS stmt`, `COPY (query) TO`, `CREATE RULE`
/// actions, `CREATE TABLE AS`, the bodies of `CREATE FUNCTION`/`PROCEDURE`
/// (SQL-standard, quoted `LANGUAGE sql`, `LANGUAGE plpgsql`), and the SQL of
/// PL/pgSQL `DO` blocks and functions (static statements, and `EXECUTE` of a
/// string literal). Bind parameters (`$1`) parse like any expression.
///
/// # Errors
/// [`SqlError::Parse`] when PostgreSQL's grammar rejects the text, a body
/// inside it, or when a body is in a language other than `sql`/`plpgsql`.
pub fn classify(sql: &str) -> Result<Classification, SqlError> {
    let mut found = walk::Found::default();
    let mut exposures = Exposures::default();
    let statements = walk::statements(sql, &mut found, &mut exposures)?;
    found.kinds.sort_unstable();
    found.running.sort_unstable();
    found.functions.sort_unstable();
    Ok(Classification {
        kinds: found.kinds,
        statements,
        exposures,
        running: found.running,
        functions: found.functions,
        prepares: found.prepares,
        executes: found.executes,
    })
}

/// Decides `sql` against `policy` (see [`statement::decide`]).
pub fn decide(sql: &str, policy: SqlPolicy<'_>) -> Decision {
    verdict(&classify(sql), policy)
}

/// [`statement::decide`] on a classification (or the parser's error).
fn verdict(result: &Result<Classification, SqlError>, policy: SqlPolicy<'_>) -> Decision {
    match result {
        Ok(c) => {
            let mask: Vec<&str> = policy.mask.iter().map(String::as_str).collect();
            let exposure = c.exposures.check(&mask);
            let facts = SqlFacts {
                kinds: &c.kinds,
                running: &c.running,
                functions: &c.functions,
                exposure: exposure.as_ref().map(|_| ()).map_err(String::as_str),
            };
            statement::decide(policy, Ok(facts))
        }
        Err(SqlError::Parse(message)) => statement::decide(policy, Err(message)),
    }
}

/// Texts longer than this are classified but not cached.
const MAX_CACHED_TEXT: usize = 64 * 1024;

type Cached = Arc<Result<Classification, SqlError>>;

/// Classifications keyed by the statement's shape ([`shape`]: its text
/// with numeric constants blanked), so a statement sent again and again
/// with other numbers (pgbench `-M simple`, an ORM's fixed queries with
/// inlined ids) is parsed once. Texts PostgreSQL's parser rejects are not
/// kept: their error message quotes the text.
///
/// Bounded to `capacity` entries in two generations: a hit in the older one
/// moves the entry to the current one. When the current one is full it
/// becomes the older one, and the previous older one is dropped. That gives
/// LRU-like eviction at O(1) cost. Thread-safe. Parsing happens outside the
/// lock. Texts over 64 KiB are not kept.
pub struct ClassifyCache {
    generations: Mutex<Generations>,
}

struct Generations {
    size: usize,
    current: HashMap<Box<str>, Cached>,
    previous: HashMap<Box<str>, Cached>,
}

impl ClassifyCache {
    /// A cache of at most `capacity` texts (below 2: no caching).
    pub fn new(capacity: usize) -> Self {
        let size = capacity / 2;
        let generations = Generations {
            size,
            current: HashMap::with_capacity(size.min(1024)),
            previous: HashMap::new(),
        };
        Self {
            generations: Mutex::new(generations),
        }
    }

    /// [`classify`], cached by [`shape`].
    pub fn classify(&self, sql: &str) -> Arc<Result<Classification, SqlError>> {
        let key = (sql.len() <= MAX_CACHED_TEXT).then(|| shape(sql)).flatten();
        if let Some(hit) = key.as_deref().and_then(|k| self.lock().get(k)) {
            return hit;
        }
        let classified = Arc::new(classify(sql));
        if let (Some(key), Ok(_)) = (key, classified.as_ref()) {
            self.lock().insert(key.into(), Arc::clone(&classified));
        }
        classified
    }

    /// [`decide`] with the cache.
    pub fn decide(&self, sql: &str, policy: SqlPolicy<'_>) -> Decision {
        verdict(&self.classify(sql), policy)
    }

    fn lock(&self) -> MutexGuard<'_, Generations> {
        // Nothing panics while the lock is held; a poisoned map is intact.
        self.generations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The cache key of `sql`: the text with every numeric constant (the
/// `ICONST` and `FCONST` tokens of PostgreSQL's own scanner) replaced by a
/// NUL character, which no Query or Parse text can contain. A number never
/// changes what kind of statement a text is (string constants, which can
/// hold PL/pgSQL, are kept), so `… WHERE aid = 1` and `… WHERE aid = 2`
/// share an entry. `None` when the scanner rejects the text.
fn shape(sql: &str) -> Option<String> {
    use pg_query::protobuf::Token;
    let mut key = String::with_capacity(sql.len());
    let mut copied = 0;
    for t in parser::scan_tokens(sql).ok()? {
        if t.token == Token::Iconst as i32 || t.token == Token::Fconst as i32 {
            let (start, end) = (usize::try_from(t.start).ok()?, usize::try_from(t.end).ok()?);
            key.push_str(sql.get(copied..start)?);
            key.push('\0');
            copied = end;
        }
    }
    key.push_str(sql.get(copied..)?);
    Some(key)
}

impl Generations {
    fn get(&mut self, sql: &str) -> Option<Cached> {
        if let Some(hit) = self.current.get(sql) {
            return Some(Arc::clone(hit));
        }
        let (key, hit) = self.previous.remove_entry(sql)?;
        self.insert(key, Arc::clone(&hit));
        Some(hit)
    }

    fn insert(&mut self, sql: Box<str>, classified: Cached) {
        if self.size == 0 {
            return;
        }
        if self.current.len() >= self.size {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(sql, classified);
    }
}

impl std::fmt::Debug for ClassifyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = self.lock();
        f.debug_struct("ClassifyCache")
            .field("capacity", &(g.size * 2))
            .field("entries", &(g.current.len() + g.previous.len()))
            .finish()
    }
}

#[cfg(test)]
mod tests;
