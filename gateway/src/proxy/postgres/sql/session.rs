//! Judging statements in a PostgreSQL session, where `EXECUTE` runs what a
//! `PREPARE` or a named `Parse` prepared earlier (see [`super::prepared`]).

use std::sync::Arc;

use super::{
    verdict, Classification, ClassifyCache, PreparedStatements, PreparedText, StatementKind,
};
use crate::policy::{statement::SqlPolicy, Decision};

/// The `rule` of a [`Decision::Deny`] for an `EXECUTE` or `Bind` of a
/// prepared statement whose text Sluice does not know.
pub const UNKNOWN_PREPARED: &str = "UNKNOWN_PREPARED";

/// What a text run in a session gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionVerdict {
    pub verdict: Decision,
    /// The prepared statements its `EXECUTE`s run: name and each text the
    /// name may run (for the record and the approval summary).
    pub executed: Vec<(String, Arc<PreparedText>)>,
}

impl ClassifyCache {
    /// Judges `sql` (a simple Query's text, or a Parse's, then `name` is
    /// its statement name) as run in a session holding `prepared`.
    ///
    /// Each `EXECUTE name` counts as what `name` runs (deny and approve
    /// both); a name with no known text is denied under
    /// [`UNKNOWN_PREPARED`] on a service with any rule or mask. A `PREPARE`
    /// body counts for deny only: it runs at `EXECUTE`. Unless denied, the
    /// `PREPARE`s of `sql`, and a named Parse, are added to `prepared`.
    pub fn decide_in_session(
        &self,
        sql: &str,
        name: Option<&str>,
        policy: SqlPolicy<'_>,
        prepared: &mut PreparedStatements,
    ) -> SessionVerdict {
        let classified = self.classify(sql);
        let Ok(c) = classified.as_ref() else {
            return SessionVerdict {
                verdict: verdict(&classified, policy),
                executed: Vec::new(),
            };
        };
        let mut executed = Vec::new();
        for called in &c.executes {
            // `PREPARE p AS …; EXECUTE p` in one text.
            let here: Vec<_> = c.prepares.iter().filter(|p| &p.name == called).collect();
            here.iter().for_each(|p| {
                let text = prepared_text(sql, &p.kinds, &p.functions);
                executed.push((called.clone(), Arc::new(text)));
            });
            match prepared.get(called) {
                Ok(texts) => executed.extend(texts.iter().map(|t| (called.clone(), t.clone()))),
                Err(_) if !here.is_empty() || policy.is_empty() => {}
                Err(e) => return unknown(e.to_string()),
            }
        }
        // Only a text that executes something is copied to add to it.
        let merged = (!executed.is_empty()).then(|| {
            let texts: Vec<&PreparedText> = executed.iter().map(|(_, t)| &**t).collect();
            Ok(with_executed(c, &texts))
        });
        let judged = merged.as_ref().unwrap_or(&*classified);
        let verdict = verdict(judged, policy);
        let c = judged.as_ref().unwrap_or(c);
        if !matches!(verdict, Decision::Deny { .. }) {
            for p in &c.prepares {
                prepared.add(&p.name, prepared_text(sql, &p.kinds, &p.functions));
            }
            if let Some(name) = name.filter(|n| !n.is_empty()) {
                prepared.add(name, prepared_text(sql, &c.running, &c.functions));
            }
        }
        SessionVerdict { verdict, executed }
    }

    /// Judges running the prepared statement `name` (a `Bind` of it):
    /// as every text it may run, or denied under [`UNKNOWN_PREPARED`] when
    /// it has none (on a service with any rule or mask).
    pub fn decide_prepared(
        &self,
        name: &str,
        policy: SqlPolicy<'_>,
        prepared: &PreparedStatements,
    ) -> Decision {
        match prepared.get(name) {
            Ok(texts) => {
                let texts: Vec<&PreparedText> = texts.iter().map(|t| &**t).collect();
                verdict(
                    &Ok(with_executed(&Classification::default(), &texts)),
                    policy,
                )
            }
            Err(_) if policy.is_empty() => Decision::Allow,
            Err(e) => unknown(e.to_string()).verdict,
        }
    }
}

fn unknown(reason: String) -> SessionVerdict {
    SessionVerdict {
        verdict: Decision::Deny {
            rule: UNKNOWN_PREPARED.into(),
            reason,
        },
        executed: Vec::new(),
    }
}

fn prepared_text(sql: &str, kinds: &[StatementKind], functions: &[String]) -> PreparedText {
    PreparedText {
        text: sql.to_string(),
        kinds: kinds.to_vec(),
        functions: functions.to_vec(),
    }
}

/// `c` with the kinds and functions of the executed texts added, as
/// running now.
fn with_executed(c: &Classification, executed: &[&PreparedText]) -> Classification {
    let mut merged = c.clone();
    for text in executed {
        for kind in &text.kinds {
            for set in [&mut merged.kinds, &mut merged.running] {
                if !set.contains(kind) {
                    set.push(*kind);
                }
            }
        }
        for f in &text.functions {
            if !merged.functions.contains(f) {
                merged.functions.push(f.clone());
            }
        }
    }
    merged.kinds.sort_unstable();
    merged.running.sort_unstable();
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::policy::statement::SqlRule;

    fn rules(kinds: &[&str]) -> Vec<SqlRule> {
        kinds.iter().map(|k| SqlRule::parse(k).unwrap()).collect()
    }

    struct Session {
        cache: ClassifyCache,
        prepared: PreparedStatements,
        deny: Vec<SqlRule>,
        approve: Vec<SqlRule>,
    }

    impl Session {
        fn new(deny: &[&str], approve: &[&str]) -> Self {
            Session {
                cache: ClassifyCache::new(64),
                prepared: PreparedStatements::default(),
                deny: rules(deny),
                approve: rules(approve),
            }
        }

        fn policy(&self) -> SqlPolicy<'_> {
            SqlPolicy {
                deny: &self.deny,
                approve: &self.approve,
                mask: &[],
            }
        }

        fn run(&mut self, sql: &str, name: Option<&str>) -> SessionVerdict {
            let policy = SqlPolicy {
                deny: &self.deny,
                approve: &self.approve,
                mask: &[],
            };
            self.cache
                .decide_in_session(sql, name, policy, &mut self.prepared)
        }

        fn verdict(&mut self, sql: &str) -> Decision {
            self.run(sql, None).verdict
        }
    }

    fn approve(rule: &str) -> Decision {
        Decision::Hold { rule: rule.into() }
    }

    #[test]
    fn execute_of_a_parsed_statement_is_held_like_the_statement() {
        let mut s = Session::new(&[], &["DELETE"]);
        let parse = s.run("DELETE FROM t WHERE id = $1", Some("s1"));
        assert_eq!(parse.verdict, approve("DELETE"));
        let run = s.run("EXECUTE s1(3)", None);
        assert_eq!(run.verdict, approve("DELETE"));
        assert_eq!(run.executed[0].0, "s1");
        assert_eq!(run.executed[0].1.text, "DELETE FROM t WHERE id = $1");
        assert_eq!(
            s.cache.decide_prepared("s1", s.policy(), &s.prepared),
            approve("DELETE")
        );
    }

    #[test]
    fn a_prepare_is_not_held_but_every_execute_of_it_is() {
        let mut s = Session::new(&["DROP"], &["DELETE"]);
        assert_eq!(
            s.verdict("PREPARE p AS DELETE FROM t WHERE id = $1"),
            Decision::Allow
        );
        for _ in 0..2 {
            assert_eq!(s.verdict("EXECUTE p(3)"), approve("DELETE"));
        }
        assert_eq!(s.verdict("EXPLAIN ANALYZE EXECUTE p(3)"), approve("DELETE"));
        assert_eq!(
            s.cache.decide_prepared("p", s.policy(), &s.prepared),
            approve("DELETE")
        );
        assert_eq!(
            s.verdict("PREPARE q AS DELETE FROM t WHERE id = 1; EXECUTE q"),
            approve("DELETE")
        );
        // A denied PREPARE prepares nothing Sluice would run later.
        assert!(matches!(
            s.verdict("PREPARE d AS SELECT 1; DROP TABLE t"),
            Decision::Deny { rule, .. } if rule == "DROP"
        ));
        assert!(matches!(
            s.verdict("EXECUTE d"),
            Decision::Deny { rule, .. } if rule == UNKNOWN_PREPARED
        ));
    }

    #[test]
    fn unknown_names_are_refused_and_re_prepared_names_are_judged_as_every_text() {
        let mut s = Session::new(&["TRUNCATE"], &["DELETE"]);
        let Decision::Deny { rule, reason } = s.verdict("EXECUTE nobody_made_me") else {
            panic!("an unknown name was not refused");
        };
        assert_eq!(rule, UNKNOWN_PREPARED);
        assert!(reason.contains("\"nobody_made_me\""), "{reason}");
        assert!(matches!(
            s.cache.decide_prepared("nobody", s.policy(), &s.prepared),
            Decision::Deny { rule, .. } if rule == UNKNOWN_PREPARED
        ));
        s.verdict("PREPARE p AS DELETE FROM t WHERE id = $1");
        // The server refuses this one (p exists); Sluice cannot tell.
        s.verdict("PREPARE p AS SELECT $1::int");
        assert_eq!(s.verdict("EXECUTE p(1)"), approve("DELETE"));
        // Without any rule nothing is enforced.
        let mut open = Session::new(&[], &[]);
        assert_eq!(open.verdict("EXECUTE nobody"), Decision::Allow);
    }
}
