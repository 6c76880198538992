//! Path globs for HTTP rules: `*` matches any run of characters (including
//! `/`); every other character matches itself. Linear time, no backtracking
//! blow-up (the classic greedy-star algorithm).

/// True when `path` matches `pattern`.
pub fn matches(pattern: &str, path: &str) -> bool {
    matches_bytes(pattern.as_bytes(), path.as_bytes(), |a, b| a == b)
}

/// [`matches`], ignoring case (Unicode lower case of both sides). ASCII
/// on both sides, the common case, is compared in place, without
/// allocating lower-cased copies.
pub fn matches_ignore_case(pattern: &str, path: &str) -> bool {
    if pattern.is_ascii() && path.is_ascii() {
        return matches_bytes(pattern.as_bytes(), path.as_bytes(), |a, b| {
            a.eq_ignore_ascii_case(&b)
        });
    }
    matches(&pattern.to_lowercase(), &path.to_lowercase())
}

/// The greedy-star match of `s` against `p`, literal bytes compared by
/// `same`.
fn matches_bytes(p: &[u8], s: &[u8], same: impl Fn(u8, u8) -> bool) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && same(p[pi], s[si]) {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::{matches, matches_ignore_case};

    #[test]
    fn stars_and_literals() {
        assert!(matches("/v1/customers/*", "/v1/customers/42"));
        assert!(matches("/v1/refunds*", "/v1/refunds"));
        assert!(matches("/v1/refunds*", "/v1/refunds/7/items"));
        assert!(!matches("/v1/refunds*", "/v1/refund"));
        assert!(matches("*", ""));
        assert!(matches("/a/*/c", "/a/b/x/c"));
        assert!(!matches("/a/*/c", "/a/b/x/d"));
        assert!(matches_ignore_case("/v1/Customers/*", "/V1/customers/42"));
        assert!(!matches("/v1/Customers/*", "/V1/customers/42"));
        assert!(matches_ignore_case("/ÜNÏ/*", "/ünï/q"));
        assert!(!matches_ignore_case("/A/*/C", "/a/b/x/d"));
    }
}
