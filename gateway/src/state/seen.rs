//! The revocations this gateway has seen, kept until each token expires,
//! in memory and (for the daemon) in `state_dir/revoked`, so neither
//! rewriting Redis nor restarting the gateway lifts one (see
//! [`super::mac`]). The file holds one `<token id> <expires unix s>` line
//! per revocation, mode 0600; it is rewritten without expired lines when
//! loaded.
use std::{
    collections::HashMap,
    fs::OpenOptions,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::Mutex,
};

/// Token id → expiry of each revocation seen.
#[derive(Default)]
pub(super) struct SeenRevocations {
    ids: Mutex<HashMap<String, i64>>,
    file: Option<PathBuf>,
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl SeenRevocations {
    /// Loads the revocations kept in `file` and appends new ones to it.
    ///
    /// # Errors
    /// A message naming `file` when it cannot be read or rewritten.
    pub(super) fn persisted(file: &Path) -> Result<Self, String> {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
        };
        let now = now();
        let ids: HashMap<String, i64> = text
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter_map(|(id, e)| Some((id.to_string(), e.parse().ok()?)))
            .filter(|(_, e)| *e > now)
            .collect();
        let kept: String = ids.iter().map(|(id, e)| format!("{id} {e}\n")).collect();
        let tmp = file.with_extension("tmp");
        let rewritten = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(kept.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, file)
        })();
        rewritten.map_err(|e| format!("cannot write {}: {e}", file.display()))?;
        Ok(SeenRevocations {
            ids: Mutex::new(ids),
            file: Some(file.to_path_buf()),
        })
    }

    /// Remembers that token `id` (valid until `expires`) is revoked.
    pub(super) fn remember(&self, id: &str, expires: i64) {
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        if ids.insert(id.to_string(), expires).is_some() {
            return;
        }
        let Some(file) = &self.file else { return };
        let appended = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(file)
            .and_then(|mut f| f.write_all(format!("{id} {expires}\n").as_bytes()));
        if let Err(e) = appended {
            tracing::warn!(file = %file.display(), error = %e, "cannot keep a revocation on disk; it is kept in memory");
        }
    }

    /// Whether a revocation of token `id` was seen.
    pub(super) fn contains(&self, id: &str) -> bool {
        let ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        ids.contains_key(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocations_survive_a_reload_until_their_token_expires() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("revoked");
        let seen = SeenRevocations::persisted(&file).unwrap();
        seen.remember("tok_live", now() + 600);
        seen.remember("tok_gone", now() - 1);
        seen.remember("tok_live", now() + 600);
        let again = SeenRevocations::persisted(&file).unwrap();
        assert!(again.contains("tok_live"));
        assert!(!again.contains("tok_gone"));
        assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 1);
    }
}
