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
//! ```
//! use sluice::policy::sql::{classify, decide, SqlVerdict, StatementKind};
//!
//! let c = classify("WITH d AS (DELETE FROM customers RETURNING *) SELECT 1").unwrap();
//! assert!(c.kinds.contains(&StatementKind::DeleteWithoutWhere));
//!
//! let deny = ["DROP".to_string()];
//! assert!(matches!(decide("drop/**/table customers", &deny, &[]), SqlVerdict::Deny { .. }));
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::config::Rule;

mod calls;
mod masked;
mod parser;
mod prepared;
mod rules;
mod session;
mod walk;

pub use calls::DANGEROUS;
pub use masked::Exposures;
pub use prepared::{PreparedError, PreparedStatements, PreparedText, MAX_TEXTS_PER_NAME};
pub use rules::{parse_rule, SqlRule};
pub use session::{Policy, SessionVerdict, UNKNOWN_PREPARED};

macro_rules! statement_kinds {
    ($($(#[doc = $doc:literal])* $variant:ident = $name:literal,)*) => {
        /// A statement kind that `deny` and `approve` rules name, e.g.
        /// `"DROP"`. One statement can have several kinds: `WITH d AS
        /// (DELETE FROM t RETURNING *) SELECT 1` is `SELECT`, `DELETE`
        /// and `DELETE_WITHOUT_WHERE`. Kinds order as declared here.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum StatementKind {
            $($(#[doc = $doc])* $variant,)*
        }

        impl StatementKind {
            /// Every kind, in declaration order.
            pub const ALL: &'static [StatementKind] = &[$(Self::$variant,)*];

            /// The upper-case name that config rules use, e.g.
            /// `"DELETE_WITHOUT_WHERE"`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)*
                }
            }
        }
    };
}

statement_kinds! {
    /// `SELECT`, `VALUES`, `TABLE`, sub-selects, `DECLARE … CURSOR FOR SELECT`.
    Select = "SELECT",
    /// `INSERT`, including a `MERGE … WHEN NOT MATCHED THEN INSERT`.
    Insert = "INSERT",
    /// `UPDATE`, including `INSERT … ON CONFLICT DO UPDATE` and `MERGE … THEN UPDATE`.
    Update = "UPDATE",
    /// `DELETE`, including `MERGE … THEN DELETE`.
    Delete = "DELETE",
    /// `MERGE`.
    Merge = "MERGE",
    /// An `UPDATE` with no `WHERE` clause (`WHERE CURRENT OF` counts as one).
    UpdateWithoutWhere = "UPDATE_WITHOUT_WHERE",
    /// A `DELETE` with no `WHERE` clause (`WHERE CURRENT OF` counts as one).
    DeleteWithoutWhere = "DELETE_WITHOUT_WHERE",
    /// Any `DROP …`, including `DROP DATABASE`, `DROP ROLE` and `DROP OWNED`.
    Drop = "DROP",
    /// `TRUNCATE`.
    Truncate = "TRUNCATE",
    /// Any `ALTER …`, `… RENAME`, `REASSIGN OWNED`.
    Alter = "ALTER",
    /// `GRANT` on objects or roles.
    Grant = "GRANT",
    /// `REVOKE` on objects or roles.
    Revoke = "REVOKE",
    /// Any `CREATE …`, including views, indexes, rules, `SELECT … INTO`,
    /// `IMPORT FOREIGN SCHEMA`.
    Create = "CREATE",
    /// Any `COPY`.
    Copy = "COPY",
    /// `COPY … TO` a file, a program or `STDOUT`.
    CopyTo = "COPY_TO",
    /// `COPY … TO PROGRAM`.
    CopyToProgram = "COPY_TO_PROGRAM",
    /// `COPY … FROM PROGRAM`.
    CopyFromProgram = "COPY_FROM_PROGRAM",
    /// `DO` (anonymous code block).
    Do = "DO",
    /// `CALL`.
    Call = "CALL",
    /// `SET`, `RESET`, `SET CONSTRAINTS`, `SET ROLE`, `SET SESSION AUTHORIZATION`.
    Set = "SET",
    /// `SHOW`.
    Show = "SHOW",
    /// `BEGIN`, `START TRANSACTION`, `COMMIT`, `ROLLBACK`, savepoints, two-phase commit.
    Transaction = "TRANSACTION",
    /// `EXPLAIN`. The explained statement is classified too, with or without `ANALYZE`.
    Explain = "EXPLAIN",
    /// `PREPARE`. The prepared statement is classified too: its kinds count
    /// for `deny` at once, and for `approve` each time it is executed.
    Prepare = "PREPARE",
    /// `EXECUTE` of a prepared statement; in a session it also has the
    /// kinds of the statement it executes.
    Execute = "EXECUTE",
    /// `DEALLOCATE`.
    Deallocate = "DEALLOCATE",
    /// `LISTEN` and `UNLISTEN`.
    Listen = "LISTEN",
    /// `NOTIFY`.
    Notify = "NOTIFY",
    /// `VACUUM`, with or without `ANALYZE`.
    Vacuum = "VACUUM",
    /// `ANALYZE`.
    Analyze = "ANALYZE",
    /// `LOCK`.
    Lock = "LOCK",
    /// `COMMENT ON …` (a catalog change); such a statement is also
    /// [`StatementKind::Other`], as it was before it had a kind of its own.
    Comment = "COMMENT",
    /// A call of a function in [`DANGEROUS`] (large objects, backend
    /// signalling, configuration, server files, dblink, replication, WAL),
    /// anywhere in the statement.
    DangerousFunctions = "DANGEROUS_FUNCTIONS",
    /// Anything else: `CLUSTER`, `REINDEX`, `CHECKPOINT`, `LOAD`, `DISCARD`, `FETCH`…
    Other = "OTHER",
}

impl StatementKind {
    /// The kind a config rule names, compared case-insensitively; `None`
    /// for a name that is no kind (a typo that would never match).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|k| k.as_str().eq_ignore_ascii_case(name.trim()))
    }
}

impl std::fmt::Display for StatementKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

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

/// What to do with a SQL text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlVerdict {
    /// No rule matched.
    Allow,
    /// Refused. `rule` is the matching config entry as written (or
    /// [`UNPARSEABLE`], or `COPY_TO` or [`MASK`] for masked services).
    /// `reason` is a sentence for the agent's ErrorResponse and the record.
    Deny { rule: String, reason: String },
    /// Held until a human approves it (JIT approval), under `rule`.
    Approve { rule: String },
}

/// The `rule` of a [`SqlVerdict::Deny`] for text the parser rejects.
pub const UNPARSEABLE: &str = "UNPARSEABLE";

/// The `rule` of a [`SqlVerdict::Deny`] for a statement that reads a masked
/// column in a way masking cannot follow (see [`Exposures::check`]).
pub const MASK: &str = "MASK";

/// Decides `sql` against a service's `deny` and then `approve` kinds (config
/// strings, compared case-insensitively). Deny wins over approve.
///
/// Text the parser rejects is allowed only when `deny` is empty (whatever
/// `approve` holds). Otherwise it is denied under [`UNPARSEABLE`] with a
/// reason that says it could not be parsed: fail closed.
pub fn decide(sql: &str, deny: &[String], approve: &[String]) -> SqlVerdict {
    let deny: Vec<&str> = deny.iter().map(String::as_str).collect();
    let approve: Vec<&str> = approve.iter().map(String::as_str).collect();
    verdict(&classify(sql), &deny, &approve, &[])
}

/// `mask` is the service's masked column names (empty: no masking).
fn verdict(
    result: &Result<Classification, SqlError>,
    deny: &[&str],
    approve: &[&str],
    mask: &[&str],
) -> SqlVerdict {
    let masked = !mask.is_empty();
    let classification = match result {
        Ok(classification) => classification,
        Err(_) if deny.is_empty() && !masked => return SqlVerdict::Allow,
        Err(SqlError::Parse(message)) => {
            return SqlVerdict::Deny {
                rule: UNPARSEABLE.into(),
                reason: format!(
                    "the statement could not be parsed ({message}); unparseable SQL is refused on a service with deny rules or masked columns"
                ),
            }
        }
    };
    // The first rule that matches: the rule as written and what it matched.
    let first_match = |rules: &[&str], kinds: &[StatementKind]| {
        rules.iter().find_map(|rule| {
            let what = match parse_rule(rule).ok()? {
                SqlRule::Kind(kind) => kinds
                    .contains(&kind)
                    .then(|| format!("{kind} statements are"))?,
                SqlRule::Function(name) => classification
                    .functions
                    .iter()
                    .find(|called| calls::matches(&name, called))
                    .map(|called| format!("calls of the function {called} are"))?,
            };
            Some((rule.to_string(), what))
        })
    };
    if let Some((rule, what)) = first_match(deny, &classification.kinds) {
        return SqlVerdict::Deny {
            rule,
            reason: format!("{what} denied"),
        };
    }
    if masked && classification.kinds.contains(&StatementKind::CopyTo) {
        return SqlVerdict::Deny {
            rule: StatementKind::CopyTo.as_str().into(),
            reason: "COPY … TO is denied on a service with masked columns: its output would not be masked".into(),
        };
    }
    if let Err(reason) = classification.exposures.check(mask) {
        return SqlVerdict::Deny {
            rule: MASK.into(),
            reason,
        };
    }
    match first_match(approve, &classification.running) {
        Some((rule, _)) => SqlVerdict::Approve { rule },
        None => SqlVerdict::Allow,
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

    /// [`decide`] with the cache, taking the service's config rules
    /// ([`Rule::Sql`] kinds; HTTP rules are ignored) and its `mask` column
    /// names. On a service that masks columns, `COPY … TO` is denied as
    /// well, since COPY output bypasses DataRow masking, and so is a
    /// statement that reads a masked column in a way masking cannot follow
    /// (rule [`MASK`], see [`Exposures`]) or that cannot be parsed.
    pub fn decide(
        &self,
        sql: &str,
        deny: &[Rule],
        approve: &[Rule],
        mask: &[String],
    ) -> SqlVerdict {
        let mask: Vec<&str> = mask.iter().map(String::as_str).collect();
        verdict(
            &self.classify(sql),
            &sql_kinds(deny),
            &sql_kinds(approve),
            &mask,
        )
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

/// The statement kinds among a service's rules.
fn sql_kinds(rules: &[Rule]) -> Vec<&str> {
    rules
        .iter()
        .filter_map(|r| match r {
            Rule::Sql(kind) => Some(kind.as_str()),
            Rule::Http { .. } => None,
        })
        .collect()
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
