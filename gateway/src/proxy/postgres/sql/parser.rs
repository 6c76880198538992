//! Every call Sluice makes into libpg_query (C code, through `unsafe`
//! blocks in the [`pg_query`] crate) goes through this module, because the
//! text comes from agents and a precondition broken there aborts the daemon
//! (debug builds check `unsafe` preconditions) or is undefined behaviour.
//!
//! What each input form does, pg_query 18.1 / libpg_query 18:
//! - NUL bytes: the crate's `CString::new` refuses them before any C call
//!   ([`pg_query::Error::Conversion`]). A Query or Parse text cannot hold
//!   one anyway (it is a C string on the wire).
//! - Empty, blank or comment-only text: `pg_query_scan_tokens` answers no
//!   tokens with a NULL array, which `pg_query::scan_tokens` hands to
//!   `slice::from_raw_parts` (a NULL pointer there is undefined behaviour,
//!   and the debug-build precondition check aborts the process). So
//!   [`scan_tokens`] uses `pg_query::scan` instead, whose protobuf result
//!   always carries the version field and so is never empty. `parse` and
//!   `parse_plpgsql` answer empty text with a non-empty protobuf (the
//!   version) and `"[]"`.
//! - Deep nesting: libpg_query checks the stack depth against the calling
//!   thread's stack and reports "stack depth limit exceeded" as an error;
//!   prost refuses protobuf nested deeper than 100 messages and serde_json
//!   JSON deeper than 128: both are errors, not crashes.
//! - Huge text: Query and Parse messages are limited to 64 MiB by the codec
//!   (`MAX_FRONTEND_MESSAGE`); PostgreSQL's own allocation limit (1 GiB) is
//!   above that.
//!
//! Errors become [`SqlError::Parse`], which policy treats as unparseable.

use pg_query::protobuf::ScanToken;
use pg_query::{ParseResult, ParserOptions};
use serde_json::Value;

use super::SqlError;

/// `pg_query::parse`: PostgreSQL's raw parse tree of `sql` in `mode`.
pub(super) fn parse(sql: &str, mode: ParserOptions) -> Result<ParseResult, SqlError> {
    Ok(pg_query::parse(sql, mode)?)
}

/// `pg_query::parse_plpgsql`: libpg_query's JSON for a `CREATE FUNCTION …
/// LANGUAGE plpgsql` text.
pub(super) fn parse_plpgsql(function: &str) -> Result<Value, SqlError> {
    Ok(pg_query::parse_plpgsql(function)?)
}

/// The tokens of PostgreSQL's scanner over `sql` (comments included), none
/// for blank text. Not `pg_query::scan_tokens`: see the module notes.
pub(super) fn scan_tokens(sql: &str) -> Result<Vec<ScanToken>, SqlError> {
    Ok(pg_query::scan(sql)?.tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Texts that broke or could break a precondition, each through every
    /// entry point: none may panic or abort (this runs in a debug build,
    /// where `unsafe` preconditions are checked).
    #[test]
    fn blank_nul_deep_and_huge_texts_never_abort() {
        let deep_parens = format!("SELECT {}1{}", "(".repeat(20_000), ")".repeat(20_000));
        let deep_arrays = format!("SELECT {}1{}", "ARRAY[".repeat(2_000), "]".repeat(2_000));
        let deep_nots = format!("SELECT {}true", "NOT ".repeat(20_000));
        let deep_subselects = format!("SELECT {}1{}", "(SELECT ".repeat(1_000), ")".repeat(1_000));
        let texts = [
            "",
            " ",
            "\t\r\n ",
            "--",
            "-- only a comment",
            "/* */",
            "/* /* nested */ */",
            ";",
            " ; ; ",
            "\0",
            "SELECT 1\0",
            "/* unterminated",
            "'unterminated",
            "$$",
            &deep_parens,
            &deep_arrays,
            &deep_nots,
            &deep_subselects,
        ];
        for text in texts {
            let _ = scan_tokens(text);
            let _ = parse(text, ParserOptions::DEFAULT);
            let _ = parse(text, ParserOptions::PLPGSQL_EXPR);
            let _ = parse_plpgsql(text);
            let _ = super::super::classify(text);
            let _ = super::super::ClassifyCache::new(16).classify(text);
        }
        // 800 KiB of SQL: scanned and parsed, no size limit of its own.
        let huge = format!("SELECT 1{}", ", 1".repeat(200_000));
        assert!(scan_tokens(&huge).is_ok());
        assert!(parse(&huge, ParserOptions::DEFAULT).is_ok());
        assert_eq!(scan_tokens("  \n\t ").unwrap(), []);
        assert_eq!(scan_tokens("SELECT 1").unwrap().len(), 2);
        assert!(parse("", ParserOptions::DEFAULT)
            .unwrap()
            .protobuf
            .stmts
            .is_empty());
    }
}
