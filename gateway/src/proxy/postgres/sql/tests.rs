use super::*;
use crate::policy::statement::SqlRule;

fn strings(kinds: &[&str]) -> Vec<String> {
    kinds.iter().map(|k| k.to_string()).collect()
}

fn rules(written: &[String]) -> Vec<SqlRule> {
    written.iter().map(|w| SqlRule::parse(w).unwrap()).collect()
}

/// The decision on `sql` under `deny` and `approve` rules as written.
fn decide(sql: &str, deny: &[String], approve: &[String]) -> Decision {
    let (deny, approve) = (rules(deny), rules(approve));
    super::decide(
        sql,
        SqlPolicy {
            deny: &deny,
            approve: &approve,
            mask: &[],
        },
    )
}

/// The cached decision on `sql` with `mask`.
fn decide_cached(
    cache: &ClassifyCache,
    sql: &str,
    deny: &[SqlRule],
    approve: &[SqlRule],
    mask: &[String],
) -> Decision {
    cache.decide(
        sql,
        SqlPolicy {
            deny,
            approve,
            mask,
        },
    )
}

#[test]
fn deny_wins_then_approve_then_allow() {
    let deny = strings(&["DROP", "TRUNCATE", "ALTER", "DELETE_WITHOUT_WHERE"]);
    let approve = strings(&["DELETE", "UPDATE"]);
    let denied = |rule: &str| Decision::Deny {
        rule: rule.into(),
        reason: format!("{rule} statements are denied"),
    };
    assert_eq!(
        decide("DELETE FROM customers", &deny, &approve),
        denied("DELETE_WITHOUT_WHERE")
    );
    assert_eq!(
        decide("select 1; drop/**/table customers", &deny, &approve),
        denied("DROP")
    );
    assert_eq!(
        decide("DELETE FROM customers WHERE id = 7", &deny, &approve),
        Decision::Hold {
            rule: "DELETE".into()
        }
    );
    assert_eq!(
        decide("SELECT * FROM customers", &deny, &approve),
        Decision::Allow
    );
    assert_eq!(decide("SELECT 1", &[], &[]), Decision::Allow);
}

#[test]
fn config_names_match_whatever_their_case() {
    let verdict = decide("DROP TABLE t", &strings(&["drop"]), &[]);
    assert_eq!(
        verdict,
        Decision::Deny {
            rule: "drop".into(),
            reason: "DROP statements are denied".into()
        }
    );
    assert_eq!(
        StatementKind::from_name("delete_without_where"),
        Some(StatementKind::DeleteWithoutWhere)
    );
    assert_eq!(StatementKind::from_name("DROPP"), None);
}

#[test]
fn function_rules_and_the_dangerous_set_deny_calls_anywhere() {
    let sql = "WITH x AS (SELECT 1) SELECT (SELECT pg_catalog.lo_unlink(42)) FROM x";
    let verdict = decide(sql, &strings(&["function:LO_UNLINK"]), &[]);
    assert_eq!(
        verdict,
        Decision::Deny {
            rule: "function:LO_UNLINK".into(),
            reason: "calls of the function pg_catalog.lo_unlink are denied".into()
        }
    );
    assert!(matches!(
        decide(sql, &strings(&["DANGEROUS_FUNCTIONS"]), &[]),
        Decision::Deny { rule, .. } if rule == "DANGEROUS_FUNCTIONS"
    ));
    assert_eq!(
        decide(sql, &strings(&["FUNCTION:other.lo_unlink"]), &[]),
        Decision::Allow
    );
    assert_eq!(
        decide(
            "SELECT set_config('a', 'b', false)",
            &[],
            &strings(&["FUNCTION:set_config"])
        ),
        Decision::Hold {
            rule: "FUNCTION:set_config".into()
        }
    );
    assert!(matches!(
        decide("COMMENT ON TABLE t IS 'x'", &strings(&["COMMENT"]), &[]),
        Decision::Deny { rule, .. } if rule == "COMMENT"
    ));
}

#[test]
fn a_do_block_is_denied_for_the_drop_inside_it() {
    let sql = "DO $$ BEGIN EXECUTE 'DROP TABLE customers'; END $$";
    assert!(
        matches!(decide(sql, &strings(&["DROP"]), &[]), Decision::Deny { rule, .. } if rule == "DROP")
    );
    assert!(
        matches!(decide(sql, &strings(&["DO"]), &[]), Decision::Deny { rule, .. } if rule == "DO")
    );
}

#[test]
fn unparseable_sql_passes_only_without_deny_rules() {
    assert_eq!(
        decide("selec 1", &[], &strings(&["DELETE"])),
        Decision::Allow
    );
    let Decision::Deny { rule, reason } = decide("selec 1", &strings(&["DROP"]), &[]) else {
        panic!("unparseable SQL allowed despite deny rules");
    };
    assert_eq!(rule, UNPARSEABLE);
    assert!(
        reason.contains("could not be parsed") && reason.contains("syntax error"),
        "{reason}"
    );
}

#[test]
fn cache_parses_a_repeated_statement_once() {
    let cache = ClassifyCache::new(4096);
    let sql = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";
    let first = cache.classify(sql);
    assert!(Arc::ptr_eq(&first, &cache.classify(sql)));
    assert_eq!(
        first.as_ref().as_ref().unwrap().kinds,
        [StatementKind::Select]
    );
}

#[test]
fn statements_differing_only_in_numbers_share_an_entry_and_strings_do_not() {
    let cache = ClassifyCache::new(4096);
    let one = cache.classify("SELECT abalance FROM pgbench_accounts WHERE aid = 17");
    let other = cache.classify("SELECT abalance FROM pgbench_accounts WHERE aid = 9.5e3");
    assert!(Arc::ptr_eq(&one, &other), "same shape, one parse");
    assert_eq!(
        shape("SELECT 1 /* 2 */, '3', $4, 5.0"),
        Some("SELECT \0 /* 2 */, '3', $4, \0".into())
    );
    // A string constant can be code: never blanked.
    let allowed = decide_cached(
        &cache,
        "DO $$ BEGIN EXECUTE 'SELECT 1'; END $$",
        &[],
        &[],
        &[],
    );
    let denied = decide_cached(
        &cache,
        "DO $$ BEGIN EXECUTE 'DROP TABLE t'; END $$",
        &rules(&strings(&["DROP"])),
        &[],
        &[],
    );
    assert_eq!(allowed, Decision::Allow);
    assert!(matches!(denied, Decision::Deny { .. }));
    // A parse error quotes the text: not cached.
    let bad = cache.classify("SELECT 1 1");
    assert!(!Arc::ptr_eq(&bad, &cache.classify("SELECT 2 2")));
}

#[test]
fn cache_stays_bounded_and_keeps_what_is_used() {
    let cache = ClassifyCache::new(4);
    let hot = cache.classify("SELECT c0");
    for i in 1..50 {
        cache.classify(&format!("SELECT c{i}"));
        // Touching the hot entry keeps it alive across generations.
        assert!(Arc::ptr_eq(&hot, &cache.classify("SELECT c0")));
        let g = cache.lock();
        assert!(g.current.len() + g.previous.len() <= 4);
    }
    let uncached = ClassifyCache::new(0);
    assert!(!Arc::ptr_eq(
        &uncached.classify("SELECT 1"),
        &uncached.classify("SELECT 1")
    ));
}

#[test]
fn cache_decides_on_config_rules_and_masking() {
    let cache = ClassifyCache::new(16);
    let mask = ["ssn".to_string()];
    let deny = rules(&strings(&["DROP"]));
    let approve = rules(&strings(&["delete"]));
    assert!(matches!(
        decide_cached(&cache, "DROP TABLE t", &deny, &approve, &[]),
        Decision::Deny { .. }
    ));
    assert_eq!(
        decide_cached(&cache, "DELETE FROM t WHERE id = 1", &deny, &approve, &[]),
        Decision::Hold {
            rule: "delete".into()
        }
    );
    // COPY output bypasses DataRow masking.
    assert_eq!(
        decide_cached(&cache, "COPY customers TO STDOUT", &deny, &approve, &[]),
        Decision::Allow
    );
    assert!(
        matches!(decide_cached(&cache, "COPY customers TO STDOUT", &deny, &approve, &mask), Decision::Deny { rule, .. } if rule == "COPY_TO")
    );
    assert_eq!(
        decide_cached(&cache, "COPY customers FROM STDIN", &deny, &approve, &mask),
        Decision::Allow
    );
    // Masked columns read around masking: refused; the shape is cached
    // once and checked against each service's mask.
    let sql = "SELECT ssn AS x FROM customers WHERE id = 1";
    assert!(
        matches!(decide_cached(&cache, sql, &[], &[], &mask), Decision::Deny { rule, reason } if rule == MASK && reason.contains("masked column ssn"))
    );
    assert_eq!(decide_cached(&cache, sql, &[], &[], &[]), Decision::Allow);
    assert_eq!(
        decide_cached(
            &cache,
            "SELECT ssn AS x FROM customers WHERE id = 2",
            &[],
            &[],
            &["card".into()]
        ),
        Decision::Allow
    );
    // Unparseable text is refused on a masked service even without deny rules.
    assert!(
        matches!(decide_cached(&cache, "selec ssn", &[], &[], &mask), Decision::Deny { rule, .. } if rule == UNPARSEABLE)
    );
}
