//! The statement kinds that Sluice's SQL `deny` and `approve` rules name
//! (DESIGN.md §4 "Config", §6 "MySQL / MariaDB"): one vocabulary for every
//! SQL dialect. The gateway's policy (`policy::statement`) decides on them;
//! each protocol's classifier (PostgreSQL's in the gateway, MySQL's in
//! `sluice-mysql`) reports them from its own parser's syntax tree. A
//! dialect reports only the kinds it has: `COPY` is PostgreSQL's,
//! `LOAD_DATA` MySQL's. Kind names follow the SQL command names.
#![forbid(unsafe_code)]

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
    /// `INSERT` (MySQL: and `REPLACE`), including a `MERGE … WHEN NOT
    /// MATCHED THEN INSERT`.
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
    /// MySQL `LOAD DATA` / `LOAD XML` (server-side or `LOCAL` files).
    LoadData = "LOAD_DATA",
    /// MySQL `SELECT … INTO OUTFILE` or `INTO DUMPFILE`: a file on the server.
    IntoOutfile = "INTO_OUTFILE",
    /// `DO` (anonymous code block).
    Do = "DO",
    /// `CALL`.
    Call = "CALL",
    /// `SET`, `RESET`, `SET CONSTRAINTS`, `SET ROLE`, `SET SESSION AUTHORIZATION`.
    Set = "SET",
    /// `SHOW` (MySQL: and `DESCRIBE`).
    Show = "SHOW",
    /// MySQL `USE db`.
    Use = "USE",
    /// MySQL `KILL [QUERY] id`.
    Kill = "KILL",
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
    /// `LOCK` (MySQL: `LOCK TABLES`, `UNLOCK TABLES`).
    Lock = "LOCK",
    /// `COMMENT ON …` (a catalog change); such a statement is also
    /// [`StatementKind::Other`], as it was before it had a kind of its own.
    Comment = "COMMENT",
    /// A call of a function the dialect deems dangerous (PostgreSQL: large objects, backend
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
