//! Every console action, recorded in `log_dir/console.jsonl` (JSON Lines,
//! append-only opening, 0640, in the log directory's group like the
//! session records).
//!
//! Each line carries `ts` (RFC 3339 UTC, µs), `subject` and `name` of the
//! signed-in person, `action` (`sign_in`, `sign_out`, `approve`, `deny`,
//! `revoke`), the target (`approval` or `token` id), `reason` for a
//! denial, and `outcome` (`done`, or why nothing happened: `forbidden`,
//! `unknown`, `already <status>`, an error). Decisions also reach the held
//! operation's own session record as `approved`/`rejected` with `by` =
//! the subject, written by the gateway that holds it.
use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::Path,
    sync::Mutex,
};

use serde_json::json;

use super::oidc::Person;

/// The file's name in `log_dir`.
pub const FILE: &str = "console.jsonl";

/// What was acted on.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    None,
    Approval(&'a str),
    Token(&'a str),
}

/// The open `console.jsonl`.
pub struct ActionLog {
    file: Mutex<File>,
}

impl ActionLog {
    /// Opens (creating) `log_dir/console.jsonl` for appending.
    ///
    /// # Errors
    /// I/O errors opening the file.
    pub fn open(log_dir: &Path) -> io::Result<ActionLog> {
        let path = log_dir.join(FILE);
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Ok(ActionLog {
            file: Mutex::new(file),
        })
    }

    /// Appends one line (one `write(2)`); a failure is logged, never shown
    /// to the person.
    pub fn record(
        &self,
        person: &Person,
        action: &str,
        target: Target<'_>,
        reason: Option<&str>,
        outcome: &str,
    ) {
        let mut line = json!({
            "ts": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "subject": person.subject,
            "name": person.name,
            "action": action,
        });
        match target {
            Target::None => {}
            Target::Approval(id) => line["approval"] = id.into(),
            Target::Token(id) => line["token"] = id.into(),
        }
        if let Some(reason) = reason {
            line["reason"] = reason.into();
        }
        line["outcome"] = outcome.into();
        let mut bytes = line.to_string().into_bytes();
        bytes.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = file.write_all(&bytes) {
            tracing::warn!(error = %e, action, "cannot record a console action in {FILE}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_are_json_lines_naming_the_subject() {
        let dir = tempfile::tempdir().unwrap();
        let log = ActionLog::open(dir.path()).unwrap();
        let alice = Person {
            subject: "alice@corp".into(),
            name: "Alice".into(),
            groups: vec![],
        };
        log.record(
            &alice,
            "deny",
            Target::Approval("apr_1"),
            Some("no"),
            "done",
        );
        log.record(&alice, "revoke", Target::Token("tok_1"), None, "done");
        let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["subject"], "alice@corp");
        assert_eq!(lines[0]["approval"], "apr_1");
        assert_eq!(lines[0]["reason"], "no");
        assert_eq!(lines[1]["token"], "tok_1");
        assert_eq!(lines[1]["action"], "revoke");
    }
}
