//! HTTP policy: `deny`/`approve` rules of a method and a path glob, matched
//! against every method and path reading of a request (see the HTTP
//! handler's `operation` module).
use super::{glob, Decision};

/// One HTTP `deny`/`approve` entry: `{ method = "DELETE", path = "/v1/*" }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRule {
    /// `None` (or `"*"`) matches every method.
    pub method: Option<String>,
    /// A glob: `*` matches any run of characters.
    pub path: String,
    /// When not empty, the rule applies only to callers in one of these
    /// groups (DESIGN.md §7).
    pub groups: Vec<String>,
}

impl std::fmt::Display for HttpRule {
    /// `METHOD path`, `*` for any method: how records name the rule.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method.as_deref().unwrap_or("*"), self.path)
    }
}

/// An HTTP request as policy sees it: every method and path reading a
/// backend may act on.
#[derive(Debug, Clone, Copy)]
pub struct HttpOperation<'a> {
    /// The request method, then every method an override names, e.g.
    /// `["POST", "DELETE"]` (RFC 9110 §9).
    pub methods: &'a [String],
    /// Readings of the request path without the query, e.g.
    /// `["/v1/customers/42"]`.
    pub paths: &'a [String],
    /// The caller's groups (from a JWT; empty for an `slt_` token).
    pub groups: &'a [String],
}

/// Decides an HTTP operation against a service's `deny` then `approve`
/// rules: a rule matches when it matches any of the operation's methods
/// together with any of its path readings. A rule without a method matches
/// every method; methods and paths compare case-insensitively (paths by
/// [`glob::matches_ignore_case`]), since some backends route that way.
pub fn decide(deny: &[HttpRule], approve: &[HttpRule], op: HttpOperation<'_>) -> Decision {
    if let Some(rule) = first_match(deny, op) {
        return Decision::Deny {
            reason: format!("denied by policy: {rule}"),
            rule: rule.to_string(),
        };
    }
    match first_match(approve, op) {
        Some(rule) => Decision::Hold {
            rule: rule.to_string(),
        },
        None => Decision::Allow,
    }
}

fn first_match<'r>(rules: &'r [HttpRule], op: HttpOperation<'_>) -> Option<&'r HttpRule> {
    rules.iter().find(|r| {
        let caller_ok = r.groups.is_empty() || r.groups.iter().any(|g| op.groups.contains(g));
        let method_ok = r
            .method
            .as_deref()
            .is_none_or(|m| m == "*" || op.methods.iter().any(|om| m.eq_ignore_ascii_case(om)));
        caller_ok
            && method_ok
            && op
                .paths
                .iter()
                .any(|p| glob::matches_ignore_case(&r.path, p))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(method: &str, path: &str) -> HttpRule {
        HttpRule {
            method: Some(method.into()),
            path: path.into(),
            groups: Vec::new(),
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn judge(
        deny: &[HttpRule],
        approve: &[HttpRule],
        methods: &[&str],
        paths: &[&str],
    ) -> Decision {
        let (methods, paths) = (strings(methods), strings(paths));
        let op = HttpOperation {
            methods: &methods,
            paths: &paths,
            groups: &[],
        };
        decide(deny, approve, op)
    }

    #[test]
    fn rules_with_groups_apply_only_to_members() {
        let mut rule = http("POST", "/v1/refunds*");
        rule.groups = strings(&["payments"]);
        let (methods, paths) = (strings(&["POST"]), strings(&["/v1/refunds"]));
        let op = |groups| HttpOperation {
            methods: &methods,
            paths: &paths,
            groups,
        };
        let members = strings(&["ci", "payments"]);
        assert!(matches!(
            decide(&[], std::slice::from_ref(&rule), op(&members)),
            Decision::Hold { .. }
        ));
        assert_eq!(decide(&[], &[rule], op(&strings(&["ci"]))), Decision::Allow);
    }

    #[test]
    fn deny_wins_over_approve() {
        let deny = [http("DELETE", "/v1/customers/*")];
        let approve = [http("POST", "/v1/refunds*"), http("DELETE", "/v1/*")];
        assert_eq!(
            judge(&deny, &approve, &["delete"], &["/v1/customers/42"]),
            Decision::Deny {
                rule: "DELETE /v1/customers/*".into(),
                reason: "denied by policy: DELETE /v1/customers/*".into(),
            }
        );
        assert!(matches!(
            judge(&deny, &approve, &["POST"], &["/v1/refunds/9"]),
            Decision::Hold { .. }
        ));
        assert_eq!(
            judge(&deny, &approve, &["GET"], &["/v1/customers/42"]),
            Decision::Allow
        );
    }

    #[test]
    fn any_method_override_or_path_reading_and_any_case_matches() {
        let deny = [http("DELETE", "/v1/customers/*")];
        assert!(matches!(
            judge(&deny, &[], &["POST", "DELETE"], &["/V1/Customers/42"]),
            Decision::Deny { .. }
        ));
        assert_eq!(
            judge(
                &deny,
                &[],
                &["DELETE"],
                &["/v1/customers", "/v1/customers%2F42"]
            ),
            Decision::Allow
        );
    }
}
