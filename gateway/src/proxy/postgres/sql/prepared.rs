//! The prepared statements of one PostgreSQL session, as policy needs them.
//!
//! PostgreSQL keeps one namespace for statements prepared by the extended
//! protocol's `Parse` and by SQL `PREPARE` (docs: "PREPARE", protocol
//! §55.2.3): a statement made by `Parse` can be run with SQL `EXECUTE`, and
//! one made by `PREPARE` can be bound with `Bind`. So an `EXECUTE` is judged
//! as what it executes, each time it runs, and a name Sluice has not seen
//! prepared is refused (fail closed).
//!
//! Sluice cannot see whether the server accepted a `PREPARE`, a `Parse`, a
//! `DEALLOCATE` or a `Close` (a duplicate name or an aborted transaction
//! refuses them). So a name only ever gains texts: re-preparing a name adds
//! the new text to what the name may run, and executing it is judged
//! against all of them; `DEALLOCATE`, `DISCARD ALL` and `Close` forget
//! nothing. That is stricter than the server, never looser. The unnamed
//! statement of the extended protocol is not kept here: SQL cannot name it.

use std::collections::HashMap;
use std::sync::Arc;

use super::StatementKind;

/// Texts kept per name; a name prepared with more distinct texts than this
/// is ambiguous, and executing it is refused.
pub const MAX_TEXTS_PER_NAME: usize = 8;

/// One text a prepared statement name may run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedText {
    /// The whole Query or Parse text that prepared it, as the agent sent it.
    pub text: String,
    /// What executing it runs (kinds in [`StatementKind`] order).
    pub kinds: Vec<StatementKind>,
    /// The functions executing it calls (lower case, as
    /// [`super::Classification::functions`]).
    pub functions: Vec<String>,
}

/// Why an `EXECUTE` or `Bind` of a name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreparedError {
    /// No `PREPARE` or named `Parse` of this name went through Sluice.
    #[error(
        "prepared statement \"{0}\" was not prepared through Sluice, so what it runs is unknown"
    )]
    Unknown(String),
    /// Prepared with too many different texts to judge.
    #[error("prepared statement \"{0}\" was prepared with more than {MAX_TEXTS_PER_NAME} different texts")]
    Ambiguous(String),
}

/// Names to the texts they may run; one per session.
#[derive(Debug, Default)]
pub struct PreparedStatements {
    names: HashMap<String, Vec<Arc<PreparedText>>>,
}

impl PreparedStatements {
    /// Notes that `name` may now run `prepared` (kept once per text).
    pub fn add(&mut self, name: &str, prepared: PreparedText) {
        let texts = self.names.entry(name.to_string()).or_default();
        if texts.len() <= MAX_TEXTS_PER_NAME && !texts.iter().any(|t| **t == prepared) {
            texts.push(Arc::new(prepared));
        }
    }

    /// What executing `name` may run.
    ///
    /// # Errors
    /// [`PreparedError`] for a name never prepared or prepared with too
    /// many texts.
    pub fn get(&self, name: &str) -> Result<&[Arc<PreparedText>], PreparedError> {
        match self.names.get(name) {
            None => Err(PreparedError::Unknown(name.to_string())),
            Some(texts) if texts.len() > MAX_TEXTS_PER_NAME => {
                Err(PreparedError::Ambiguous(name.to_string()))
            }
            Some(texts) => Ok(texts),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(sql: &str, kinds: &[StatementKind]) -> PreparedText {
        PreparedText {
            text: sql.into(),
            kinds: kinds.to_vec(),
            functions: Vec::new(),
        }
    }

    #[test]
    fn names_only_gain_texts_and_too_many_make_a_name_ambiguous() {
        let mut p = PreparedStatements::default();
        assert_eq!(p.get("p"), Err(PreparedError::Unknown("p".into())));
        let select = text("PREPARE p AS SELECT 1", &[StatementKind::Select]);
        p.add("p", select.clone());
        p.add("p", select.clone());
        assert_eq!(p.get("p").unwrap().len(), 1, "the same text once");
        p.add(
            "p",
            text("PREPARE p AS DELETE FROM t", &[StatementKind::Delete]),
        );
        assert_eq!(
            p.get("p").unwrap().len(),
            2,
            "a re-prepared name keeps both"
        );
        for i in 0..20 {
            p.add("p", text(&format!("SELECT {i}"), &[StatementKind::Select]));
        }
        assert_eq!(p.get("p"), Err(PreparedError::Ambiguous("p".into())));
        let message = PreparedError::Unknown("q".into()).to_string();
        assert!(message.contains("\"q\""), "{message}");
    }
}
