//! HTTP policy: `deny`/`approve` rules of a method and a path glob, matched
//! against every method and path reading of a request (see the HTTP
//! handler's `operation` module).
use regex::{RegexSet, RegexSetBuilder};

use super::Decision;

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

/// A service's `deny` or `approve` list, compiled once when the
/// configuration loads: the path globs of all its rules, lower-cased, form
/// one [`RegexSet`], so matching a request costs one pass over each path
/// reading however many rules there are. Methods and groups are checked
/// only for the rules whose path matched.
#[derive(Debug, Clone)]
pub struct HttpRules {
    rules: Vec<HttpRule>,
    paths: RegexSet,
}

impl HttpRules {
    /// Compiles `rules` (kept in order: the first match wins).
    ///
    /// # Errors
    /// The regex engine's error when the set grows past its size limit
    /// ([`SET_SIZE_LIMIT`]), with tens of thousands of rules.
    pub fn new(rules: Vec<HttpRule>) -> Result<HttpRules, regex::Error> {
        let paths = RegexSetBuilder::new(rules.iter().map(|r| glob_regex(&r.path)))
            .size_limit(SET_SIZE_LIMIT)
            .dfa_size_limit(SET_SIZE_LIMIT)
            .build()?;
        Ok(HttpRules { rules, paths })
    }

    /// No rules.
    pub fn none() -> HttpRules {
        HttpRules {
            rules: Vec::new(),
            paths: RegexSet::empty(),
        }
    }

    /// True when there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The first rule (in configuration order) that matches one of `op`'s
    /// methods with one of its path readings and applies to its caller.
    fn first_match(&self, op: HttpOperation<'_>) -> Option<&HttpRule> {
        if self.rules.is_empty() {
            return None;
        }
        let mut hits: Vec<usize> = op
            .paths
            .iter()
            .flat_map(|p| self.paths.matches(&p.to_lowercase()).into_iter())
            .collect();
        hits.sort_unstable();
        hits.into_iter().map(|i| &self.rules[i]).find(|r| {
            let caller_ok = r.groups.is_empty() || r.groups.iter().any(|g| op.groups.contains(g));
            let method_ok = r
                .method
                .as_deref()
                .is_none_or(|m| m == "*" || op.methods.iter().any(|om| m.eq_ignore_ascii_case(om)));
            caller_ok && method_ok
        })
    }
}

/// The compiled size a rule list may reach (bytes): 1,000 typical rules
/// take about a megabyte.
pub const SET_SIZE_LIMIT: usize = 256 << 20;

/// The anchored regex of a path glob, matched against lower-cased paths:
/// `*` is any run of characters (newlines included), everything else
/// itself, as [`super::glob::matches_ignore_case`] reads the glob.
fn glob_regex(glob: &str) -> String {
    let parts: Vec<String> = glob.to_lowercase().split('*').map(regex::escape).collect();
    format!("(?s)^{}$", parts.join(".*"))
}

/// Decides an HTTP operation against a service's `deny` then `approve`
/// rules: a rule matches when it matches any of the operation's methods
/// together with any of its path readings. A rule without a method matches
/// every method; methods and paths compare case-insensitively (paths as
/// [`super::glob::matches_ignore_case`] does), since some backends route that way.
pub fn decide(deny: &HttpRules, approve: &HttpRules, op: HttpOperation<'_>) -> Decision {
    if let Some(rule) = deny.first_match(op) {
        return Decision::Deny {
            reason: format!("denied by policy: {rule}"),
            rule: rule.to_string(),
        };
    }
    match approve.first_match(op) {
        Some(rule) => Decision::Hold {
            rule: rule.to_string(),
        },
        None => Decision::Allow,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::glob;

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

    fn compiled(rules: &[HttpRule]) -> HttpRules {
        HttpRules::new(rules.to_vec()).unwrap()
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
        decide(&compiled(deny), &compiled(approve), op)
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
        let (none, rules) = (compiled(&[]), compiled(&[rule]));
        assert!(matches!(
            decide(&none, &rules, op(&members)),
            Decision::Hold { .. }
        ));
        assert_eq!(
            decide(&none, &rules, op(&strings(&["ci"]))),
            Decision::Allow
        );
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

    #[test]
    fn the_compiled_set_matches_as_the_glob_does_and_the_first_rule_wins() {
        let globs = [
            "/v1/customers/*",
            "/v1/refunds*",
            "*",
            "/a/*/c",
            "/v1/Customers/*",
            "/x.y+z(1)?[a]",
            "/ünï/*",
            "/a*b*c",
            "",
        ];
        let paths = [
            "/v1/customers/42",
            "/v1/refunds",
            "/v1/refund",
            "/a/b/x/c",
            "/a/b/x/d",
            "/V1/CUSTOMERS/7",
            "/x.y+z(1)?[a]",
            "/xXy+z(1)?[a]",
            "/ÜNÏ/q",
            "/a\nb\nc",
            "",
            "/abc",
            "/acb",
        ];
        for glob in globs {
            let set = compiled(&[http("GET", glob)]);
            for path in paths {
                let p = [path.to_string()];
                let op = HttpOperation {
                    methods: &strings(&["GET"]),
                    paths: &p,
                    groups: &[],
                };
                assert_eq!(
                    set.first_match(op).is_some(),
                    glob::matches_ignore_case(glob, path),
                    "{glob:?} against {path:?}"
                );
            }
        }
        // With many rules, the first in configuration order is named.
        let mut rules: Vec<HttpRule> = (0..1000)
            .map(|i| http("GET", &format!("/v2/r{i}/*")))
            .collect();
        rules.push(http("POST", "/v1/*"));
        rules.push(http("GET", "/v1/*"));
        rules.push(http("GET", "/v1/charges/*"));
        let deny = compiled(&rules);
        let (methods, paths) = (strings(&["GET"]), strings(&["/v1/charges/ch_1"]));
        let op = HttpOperation {
            methods: &methods,
            paths: &paths,
            groups: &[],
        };
        assert_eq!(
            deny.first_match(op).map(ToString::to_string).as_deref(),
            Some("GET /v1/*")
        );
    }
}
