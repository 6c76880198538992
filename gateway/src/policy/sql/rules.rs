//! The SQL entries of a service's `deny` and `approve` lists: a statement
//! kind (`"DROP"`, `"DANGEROUS_FUNCTIONS"`) or a function
//! (`"FUNCTION:lo_unlink"`, `"FUNCTION:pg_catalog.set_config"`).

use super::StatementKind;

/// The prefix of a function rule.
const FUNCTION: &str = "FUNCTION:";

/// One parsed `deny`/`approve` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlRule {
    /// A statement kind, e.g. `DROP`.
    Kind(StatementKind),
    /// A function, lower case, optionally schema-qualified
    /// (`pg_catalog.lo_unlink`): its calls anywhere in a statement match.
    Function(String),
}

/// Parses a config entry; kind names and the `FUNCTION:` prefix compare
/// case-insensitively.
///
/// # Errors
/// A one-line message naming `rule` when it is no statement kind and no
/// `FUNCTION:name` with a name of letters, digits, `_` and `$`, optionally
/// qualified by one schema (`schema.name`).
pub fn parse_rule(rule: &str) -> Result<SqlRule, String> {
    let trimmed = rule.trim();
    let prefix = trimmed.get(..FUNCTION.len());
    if prefix.is_some_and(|p| p.eq_ignore_ascii_case(FUNCTION)) {
        let name = trimmed[FUNCTION.len()..].trim();
        let parts: Vec<&str> = name.split('.').collect();
        let identifier = |p: &&str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_alphanumeric() || c == '_' || c == '$')
        };
        if parts.len() > 2 || !parts.iter().all(identifier) {
            return Err(format!(
                "{rule:?} names no function: write FUNCTION:name or FUNCTION:schema.name"
            ));
        }
        return Ok(SqlRule::Function(name.to_lowercase()));
    }
    StatementKind::from_name(trimmed).map(SqlRule::Kind).ok_or_else(|| {
        format!("{rule:?} is no statement kind (e.g. DROP, TRUNCATE, ALTER, GRANT, DELETE_WITHOUT_WHERE, COPY_TO_PROGRAM, DO, COMMENT, DANGEROUS_FUNCTIONS) and no FUNCTION:name")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_functions_parse_and_anything_else_is_named_in_the_error() {
        assert_eq!(parse_rule("drop"), Ok(SqlRule::Kind(StatementKind::Drop)));
        assert_eq!(
            parse_rule("DANGEROUS_FUNCTIONS"),
            Ok(SqlRule::Kind(StatementKind::DangerousFunctions))
        );
        assert_eq!(
            parse_rule("function:PG_Catalog.LO_Unlink"),
            Ok(SqlRule::Function("pg_catalog.lo_unlink".into()))
        );
        for bad in [
            "DROPP",
            "FUNCTION:",
            "FUNCTION:a.b.c",
            "FUNCTION:lo unlink",
            "FUNCTION:f()",
        ] {
            let e = parse_rule(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")) && !e.contains('\n'), "{e}");
        }
    }
}
