//! Policy decisions on protocol-neutral operations. Protocol handlers turn
//! bytes into operations ([`HttpOperation`] today); this module decides
//! whether they are allowed, denied, or must wait for a JIT approval. It
//! knows no wire format.
use crate::config::Rule;

pub mod glob;
pub mod sql;

/// An HTTP request as policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct HttpOperation<'a> {
    /// Request method, e.g. `DELETE` (RFC 9110 §9).
    pub method: &'a str,
    /// Request path without the query, e.g. `/v1/customers/42`.
    pub path: &'a str,
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
/// rules. A rule without a method matches every method; methods compare
/// case-insensitively, paths by [`glob::matches`].
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
                .is_none_or(|m| m == "*" || m.eq_ignore_ascii_case(op.method));
            (method_ok && glob::matches(path, op.path))
                .then(|| format!("{} {}", method.as_deref().unwrap_or("*"), path))
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

    #[test]
    fn deny_wins_over_approve() {
        let deny = [http("DELETE", "/v1/customers/*")];
        let approve = [http("POST", "/v1/refunds*"), http("DELETE", "/v1/*")];
        let op = HttpOperation {
            method: "delete",
            path: "/v1/customers/42",
        };
        assert_eq!(
            decide_http(&deny, &approve, op),
            Verdict::Deny {
                rule: "DELETE /v1/customers/*".into()
            }
        );
        let op = HttpOperation {
            method: "POST",
            path: "/v1/refunds/9",
        };
        assert!(matches!(
            decide_http(&deny, &approve, op),
            Verdict::Approve { .. }
        ));
        let op = HttpOperation {
            method: "GET",
            path: "/v1/customers/42",
        };
        assert_eq!(decide_http(&deny, &approve, op), Verdict::Allow);
    }
}
