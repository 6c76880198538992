//! MySQL / MariaDB statement classification for a service's `deny` and
//! `approve` rules (DESIGN.md §6 "MySQL / MariaDB").
//!
//! Input is the text of a `COM_QUERY` (possibly several statements) or a
//! `COM_STMT_PREPARE`; output is the set of [`StatementKind`]s it contains, or
//! [`Unparseable`] (refused while `deny` is set). `sqlparser`'s MySQL
//! dialect parses each statement and kinds come from the syntax tree.
//! Before that, the token level ([`tokens`]) turns executable comments
//! (`/*!50000 DROP TABLE t */`) into code, splits at `;`, and recognises
//! the forms the parser does not know: `LOAD DATA`/`LOAD XML`,
//! `INTO OUTFILE`/`INTO DUMPFILE` and `PREPARE … FROM '…'` (whose text is
//! classified in turn). Comments (`#`, `-- `, `/* */`), backticks and case
//! cannot hide a statement; `DELIMITER` is a client command the server
//! never sees, so it is unparseable.
//!
//! ```
//! use sluice_mysql::classify::{classify, Escapes, StatementKind};
//!
//! let c = classify("SELECT 1; /*!50000 DROP TABLE customers */", Escapes::Backslash).unwrap();
//! assert!(c.kinds.contains(&StatementKind::Drop));
//! ```
mod dialect;
mod kinds;
mod masked;
pub mod tokens;

use std::collections::BTreeSet;

use sqlparser::{
    dialect::{Dialect, MySqlDialect},
    parser::Parser,
};

use tokens::TokenForm;

pub use dialect::NoBackslashMySql;
pub use masked::{check_exposure, Exposure};

pub use sluice_sql_kinds::StatementKind;

/// The text cannot be read as MySQL; carries the tokenizer's or parser's
/// message (which may quote the text, so it is not for a record of a
/// masked service).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unparseable SQL: {0}")]
pub struct Unparseable(pub String);

/// How the server reads string literals: from
/// `SERVER_STATUS_NO_BACKSLASH_ESCAPES` in its last OK or EOF packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escapes {
    /// `\'` escapes a quote (the default `sql_mode`).
    Backslash,
    /// `sql_mode` has `NO_BACKSLASH_ESCAPES`.
    NoBackslash,
}

/// `SERVER_STATUS_NO_BACKSLASH_ESCAPES`.
pub const STATUS_NO_BACKSLASH_ESCAPES: u16 = 0x0200;

impl Escapes {
    /// The mode a server's `SERVER_STATUS_*` flags say.
    pub fn from_status(status: u16) -> Escapes {
        if status & STATUS_NO_BACKSLASH_ESCAPES != 0 {
            Escapes::NoBackslash
        } else {
            Escapes::Backslash
        }
    }
}

/// What a text contains.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Classification {
    /// Every kind of every statement.
    pub kinds: BTreeSet<StatementKind>,
    /// How many statements the text holds.
    pub statements: usize,
}

/// Classifies `sql` as the server reads it under `escapes`.
pub fn classify(sql: &str, escapes: Escapes) -> Result<Classification, Unparseable> {
    let mut out = Classification::default();
    match escapes {
        Escapes::Backslash => classify_into(&MySqlDialect {}, sql, 0, &mut out)?,
        Escapes::NoBackslash => classify_into(&NoBackslashMySql::default(), sql, 0, &mut out)?,
    }
    Ok(out)
}

fn classify_into(
    dialect: &dyn Dialect,
    sql: &str,
    depth: usize,
    out: &mut Classification,
) -> Result<(), Unparseable> {
    if depth > tokens::MAX_DEPTH {
        return Err(Unparseable("PREPARE texts nested too deep".into()));
    }
    for statement in tokens::split(dialect, sql)? {
        out.statements += 1;
        match statement.form(dialect)? {
            Some(TokenForm::LoadData) => {
                out.kinds.insert(StatementKind::LoadData);
            }
            Some(TokenForm::IntoOutfile) => {
                out.kinds
                    .extend([StatementKind::Select, StatementKind::IntoOutfile]);
            }
            Some(TokenForm::PrepareText(text)) => {
                out.kinds.insert(StatementKind::Prepare);
                classify_into(dialect, &text, depth + 1, out)?;
            }
            Some(TokenForm::PrepareVariable) => {
                return Err(Unparseable(
                    "PREPARE from a variable: the statement is unknown until it runs".into(),
                ));
            }
            None => {
                let parsed = Parser::parse_sql(dialect, &statement.text())
                    .map_err(|e| Unparseable(e.to_string()))?;
                for s in &parsed {
                    kinds::of_statement(s, &mut out.kinds);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
