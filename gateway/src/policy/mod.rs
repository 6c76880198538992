//! Policy decisions on protocol-neutral operations. Protocol handlers turn
//! bytes into operations ([`HttpOperation`] today); this module decides
//! whether they are allowed, denied, or must wait for a JIT approval. It
//! knows no wire format.
use crate::config::Rule;

pub mod glob;
pub mod sql;

/// An HTTP request as policy sees it: every method and path reading a
/// backend may act on (see `proxy::http::operation`).
#[derive(Debug, Clone, Copy)]
pub struct HttpOperation<'a> {
    /// The request method, then every method an override names, e.g.
    /// `["POST", "DELETE"]` (RFC 9110 §9).
    pub methods: &'a [String],
    /// Readings of the request path without the query, e.g.
    /// `["/v1/customers/42"]`.
    pub paths: &'a [String],
}

/// What to do with an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Denied by the rule shown (e.g. `DELETE /v1/customers/*`).
    Deny {
        rule: String,
    },
    /// Held until a human approves; the rule shown.
    Approve {
        rule: String,
    },
}

/// Decides an HTTP operation against a service's `deny` then `approve`
/// rules: a rule matches when it matches any of the operation's methods
/// together with any of its path readings. A rule without a method matches
/// every method; methods and paths compare case-insensitively (paths by
/// [`glob::matches_ignore_case`]), since some backends route that way.
pub fn decide_http(deny: &[Rule], approve: &[Rule], op: HttpOperation<'_>) -> Verdict {
    if let Some(rule) = first_match(deny, op) {
        return Verdict::Deny { rule };
    }
    if let Some(rule) = first_match(approve, op) {
        return Verdict::Approve { rule };
    }
    Verdict::Allow
}

fn first_match(rules: &[Rule], op: HttpOperation<'_>) -> Option<String> {
    rules.iter().find_map(|r| match r {
        Rule::Http { method, path } => {
            let method_ok = method
                .as_deref()
                .is_none_or(|m| m == "*" || op.methods.iter().any(|om| m.eq_ignore_ascii_case(om)));
            let path_ok = op.paths.iter().any(|p| glob::matches_ignore_case(path, p));
            (method_ok && path_ok).then(|| format!("{} {}", method.as_deref().unwrap_or("*"), path))
        }
        Rule::Sql(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(method: &str, path: &str) -> Rule {
        Rule::Http {
            method: Some(method.into()),
            path: path.into(),
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn deny_wins_over_approve() {
        let deny = [http("DELETE", "/v1/customers/*")];
        let approve = [http("POST", "/v1/refunds*"), http("DELETE", "/v1/*")];
        let (methods, paths) = (strings(&["delete"]), strings(&["/v1/customers/42"]));
        let op = HttpOperation {
            methods: &methods,
            paths: &paths,
        };
        assert_eq!(
            decide_http(&deny, &approve, op),
            Verdict::Deny {
                rule: "DELETE /v1/customers/*".into()
            }
        );
        let (methods, paths) = (strings(&["POST"]), strings(&["/v1/refunds/9"]));
        let op = HttpOperation {
            methods: &methods,
            paths: &paths,
        };
        assert!(matches!(
            decide_http(&deny, &approve, op),
            Verdict::Approve { .. }
        ));
        let (methods, paths) = (strings(&["GET"]), strings(&["/v1/customers/42"]));
        let op = HttpOperation {
            methods: &methods,
            paths: &paths,
        };
        assert_eq!(decide_http(&deny, &approve, op), Verdict::Allow);
    }

    #[test]
    fn any_method_override_or_path_reading_and_any_case_matches() {
        let deny = [http("DELETE", "/v1/customers/*")];
        let (methods, paths) = (strings(&["POST", "DELETE"]), strings(&["/V1/Customers/42"]));
        let op = HttpOperation {
            methods: &methods,
            paths: &paths,
        };
        assert!(matches!(decide_http(&deny, &[], op), Verdict::Deny { .. }));
        let (methods, paths) = (
            strings(&["DELETE"]),
            strings(&["/v1/customers", "/v1/customers%2F42"]),
        );
        let op = HttpOperation {
            methods: &methods,
            paths: &paths,
        };
        assert_eq!(decide_http(&deny, &[], op), Verdict::Allow);
    }
}
