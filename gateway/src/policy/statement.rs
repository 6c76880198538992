//! SQL statement policy, for every SQL protocol: the statement kinds that
//! `deny` and `approve` rules name, the rules as parsed from config, and
//! the decision on a classified statement ([`decide`]).
//!
//! A protocol handler classifies statements with a real parser for its
//! dialect (PostgreSQL: `pg_query`; MySQL: `sqlparser` in `sluice-mysql`)
//! into [`SqlFacts`]; this module knows no dialect and no wire format. The
//! kinds themselves live in `sluice-sql-kinds`, shared with the protocol
//! crates.

use super::Decision;

pub use sluice_sql_kinds::StatementKind;

/// The prefix of a function rule.
const FUNCTION: &str = "FUNCTION:";

/// What one `deny`/`approve` entry matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlMatch {
    /// A statement kind, e.g. `DROP`.
    Kind(StatementKind),
    /// A function, lower case, optionally schema-qualified
    /// (`pg_catalog.lo_unlink`): its calls anywhere in a statement match.
    Function(String),
}

/// One `deny`/`approve` entry, parsed once at config load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlRule {
    pub matches: SqlMatch,
    /// The entry as written in the config; records and errors name it so.
    pub written: String,
}

impl SqlRule {
    /// Parses a config entry ([`parse_rule`]).
    ///
    /// # Errors
    /// As [`parse_rule`].
    pub fn parse(written: &str) -> Result<Self, String> {
        Ok(SqlRule {
            matches: parse_rule(written)?,
            written: written.to_string(),
        })
    }
}

/// Parses a config entry: a statement kind (`"DROP"`,
/// `"DANGEROUS_FUNCTIONS"`) or a function (`"FUNCTION:lo_unlink"`,
/// `"FUNCTION:pg_catalog.set_config"`); kind names and the `FUNCTION:`
/// prefix compare case-insensitively.
///
/// # Errors
/// A one-line message naming `rule` when it is no statement kind and no
/// `FUNCTION:name` with a name of letters, digits, `_` and `$`, optionally
/// qualified by one schema (`schema.name`).
pub fn parse_rule(rule: &str) -> Result<SqlMatch, String> {
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
        return Ok(SqlMatch::Function(name.to_lowercase()));
    }
    StatementKind::from_name(trimmed).map(SqlMatch::Kind).ok_or_else(|| {
        format!("{rule:?} is no statement kind (e.g. DROP, TRUNCATE, ALTER, GRANT, DELETE_WITHOUT_WHERE, COPY_TO_PROGRAM, DO, COMMENT, DANGEROUS_FUNCTIONS) and no FUNCTION:name")
    })
}

/// The unqualified part of a called name.
pub fn unqualified(called: &str) -> &str {
    called.rsplit('.').next().unwrap_or(called)
}

/// Whether a `FUNCTION:rule` names the function `called` (both lower
/// case, dotted when qualified). An unqualified rule matches the function
/// in any schema; a qualified one matches calls in that schema and
/// unqualified calls, which the search path may resolve to it.
pub fn function_matches(rule: &str, called: &str) -> bool {
    let rule = rule.to_lowercase();
    match (rule.rsplit_once('.'), called.rsplit_once('.')) {
        (None, _) => rule == unqualified(called),
        (Some(_), None) => unqualified(&rule) == called,
        (Some(_), Some(_)) => rule == called,
    }
}

/// A service's SQL rules and masked columns, as configured.
#[derive(Debug, Clone, Copy)]
pub struct SqlPolicy<'r> {
    pub deny: &'r [SqlRule],
    pub approve: &'r [SqlRule],
    pub mask: &'r [String],
}

impl SqlPolicy<'_> {
    /// Whether anything is enforced at all.
    pub fn is_empty(&self) -> bool {
        self.deny.is_empty() && self.approve.is_empty() && self.mask.is_empty()
    }
}

/// What a statement text does, as the protocol's parser found it.
#[derive(Debug, Clone, Copy)]
pub struct SqlFacts<'a> {
    /// Every kind it contains (nested ones included); `deny` matches these.
    pub kinds: &'a [StatementKind],
    /// The kinds that run when it runs (not those of a `PREPARE` body,
    /// which run at `EXECUTE`); `approve` matches these.
    pub running: &'a [StatementKind],
    /// Every function called, lower case, dotted when qualified.
    pub functions: &'a [String],
    /// `Err(reason)` when it reads a masked column in a way masking by
    /// output name cannot follow (checked by the protocol against `mask`).
    pub exposure: Result<(), &'a str>,
}

/// The `rule` of a denial for text the parser rejects.
pub const UNPARSEABLE: &str = "UNPARSEABLE";

/// The `rule` of a denial for a statement that reads a masked column in a
/// way masking cannot follow.
pub const MASK: &str = "MASK";

/// Decides a statement against a service's `deny` then `approve` rules.
/// Deny wins over approve. `facts` is `Err(parser message)` when the
/// dialect's parser rejected the text: allowed only when the service has no
/// deny rule and no mask (whatever `approve` holds), else denied under
/// [`UNPARSEABLE`]: fail closed. On a service with masked columns,
/// `COPY … TO` ([`StatementKind::CopyTo`]), `SELECT … INTO OUTFILE`
/// ([`StatementKind::IntoOutfile`]) and exposures are denied too.
pub fn decide(policy: SqlPolicy<'_>, facts: Result<SqlFacts<'_>, &str>) -> Decision {
    let masked = !policy.mask.is_empty();
    let facts = match facts {
        Ok(facts) => facts,
        Err(_) if policy.deny.is_empty() && !masked => return Decision::Allow,
        Err(message) => {
            return Decision::Deny {
                rule: UNPARSEABLE.into(),
                reason: format!(
                    "the statement could not be parsed ({message}); unparseable SQL is refused on a service with deny rules or masked columns"
                ),
            }
        }
    };
    // The first rule that matches: the rule as written and what it matched.
    let first_match = |rules: &[SqlRule], kinds: &[StatementKind]| {
        rules.iter().find_map(|rule| {
            let what = match &rule.matches {
                SqlMatch::Kind(kind) => kinds
                    .contains(kind)
                    .then(|| format!("{kind} statements are"))?,
                SqlMatch::Function(name) => facts
                    .functions
                    .iter()
                    .find(|called| function_matches(name, called))
                    .map(|called| format!("calls of the function {called} are"))?,
            };
            Some((rule.written.clone(), what))
        })
    };
    if let Some((rule, what)) = first_match(policy.deny, facts.kinds) {
        return Decision::Deny {
            rule,
            reason: format!("{what} denied"),
        };
    }
    if masked && facts.kinds.contains(&StatementKind::CopyTo) {
        return Decision::Deny {
            rule: StatementKind::CopyTo.as_str().into(),
            reason: "COPY … TO is denied on a service with masked columns: its output would not be masked".into(),
        };
    }
    if masked && facts.kinds.contains(&StatementKind::IntoOutfile) {
        return Decision::Deny {
            rule: StatementKind::IntoOutfile.as_str().into(),
            reason: "SELECT … INTO OUTFILE/DUMPFILE is denied on a service with masked columns: the file would not be masked".into(),
        };
    }
    if let Err(reason) = facts.exposure {
        return Decision::Deny {
            rule: MASK.into(),
            reason: reason.to_string(),
        };
    }
    match first_match(policy.approve, facts.running) {
        Some((rule, _)) => Decision::Hold { rule },
        None => Decision::Allow,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_functions_parse_and_anything_else_is_named_in_the_error() {
        assert_eq!(parse_rule("drop"), Ok(SqlMatch::Kind(StatementKind::Drop)));
        assert_eq!(
            parse_rule("DANGEROUS_FUNCTIONS"),
            Ok(SqlMatch::Kind(StatementKind::DangerousFunctions))
        );
        assert_eq!(
            parse_rule("function:PG_Catalog.LO_Unlink"),
            Ok(SqlMatch::Function("pg_catalog.lo_unlink".into()))
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

    #[test]
    fn files_written_by_the_server_are_denied_where_columns_are_masked() {
        let mask = ["ssn".to_string()];
        let kinds = [StatementKind::Select, StatementKind::IntoOutfile];
        let facts = SqlFacts {
            kinds: &kinds,
            running: &kinds,
            functions: &[],
            exposure: Ok(()),
        };
        let policy = |mask| SqlPolicy {
            deny: &[],
            approve: &[],
            mask,
        };
        assert!(matches!(
            decide(policy(&mask), Ok(facts)),
            Decision::Deny { rule, .. } if rule == "INTO_OUTFILE"
        ));
        assert_eq!(decide(policy(&[]), Ok(facts)), Decision::Allow);
    }

    #[test]
    fn rules_match_qualified_and_unqualified_calls() {
        assert!(function_matches("lo_unlink", "lo_unlink"));
        assert!(function_matches("LO_Unlink", "pg_catalog.lo_unlink"));
        assert!(function_matches("pg_catalog.lo_unlink", "lo_unlink"));
        assert!(function_matches(
            "pg_catalog.lo_unlink",
            "pg_catalog.lo_unlink"
        ));
        assert!(!function_matches("pg_catalog.lo_unlink", "other.lo_unlink"));
        assert!(!function_matches("lo_unlink", "lo_unlink2"));
    }
}
