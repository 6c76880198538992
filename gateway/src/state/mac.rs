//! Integrity of the shared state: anything that can write to Redis must not
//! be able to mint a token, lift a revocation or decide an approval.
//!
//! Every token record, revocation entry and approval carries a `mac`
//! field: HMAC-SHA256 over all of its fields, each length-prefixed, under a
//! key derived from the vault key (every gateway sharing Redis shares the
//! vault key) with [`crate::vault::derive_key`] and a fixed label:
//! - the *token key* ([`TOKENS_LABEL`]) signs token records (bound to the
//!   token digest, so a record cannot be moved to another token), SCRAM
//!   verifiers and revocation entries. Only root (the daemon, `sluice token`) has it.
//! - the *approval key* ([`APPROVALS_LABEL`]) signs approvals. Root derives
//!   it; members of `sluice-admin`, who cannot read the vault key, read it
//!   from [`approval_key_path`] (0640 root:sluice-admin), which
//!   `sluice approvals key-file` writes (the package's postinst runs it).
//!
//! A record whose MAC fails is refused and logged with its key. Revocation
//! cannot be lifted by rewriting a record: a revoked token also has a MAC'd
//! entry in `sluice:revoked`, and every gateway remembers each revocation it
//! has seen until the token expires (in memory and in `state_dir/revoked`,
//! see [`super::seen`]), so replaying the older `revoked=0` record and
//! deleting the entry does not revive it there, even after a restart.
use std::{
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::{seen::SeenRevocations, StateError};
use crate::{config::Gateway, vault};

/// Label deriving the key of token records and revocations.
pub const TOKENS_LABEL: &[u8] = b"sluice/state-mac/v1/tokens";
/// Label deriving the key of approvals.
pub const APPROVALS_LABEL: &[u8] = b"sluice/state-mac/v1/approvals";
/// File name of the approval key, next to the configured vault key.
pub const APPROVAL_KEY_FILE: &str = "approvals.key";
/// Group that may read the approval key file.
const ADMIN_GROUP: &str = "sluice-admin";

type Key = Zeroizing<[u8; vault::KEY_LEN]>;

/// The MAC keys this process holds, plus the revocations it has seen.
pub struct StateKeys {
    tokens: Option<Key>,
    approvals: Option<Key>,
    revoked: SeenRevocations,
}

/// Where the approval key is kept: `approvals.key` beside `gw.vault_key`.
pub fn approval_key_path(gw: &Gateway) -> PathBuf {
    gw.vault_key.with_file_name(APPROVAL_KEY_FILE)
}

impl StateKeys {
    /// Keys given directly (tests, or the approval key file alone).
    pub fn new(tokens: Option<[u8; 32]>, approvals: Option<[u8; 32]>) -> Self {
        StateKeys {
            tokens: tokens.map(Zeroizing::new),
            approvals: approvals.map(Zeroizing::new),
            revoked: SeenRevocations::default(),
        }
    }

    /// Both keys derived from the vault key; when the vault key is not
    /// readable by this user (a `sluice-admin` member), the approval key
    /// from [`approval_key_path`] and no token key.
    ///
    /// # Errors
    /// [`StateError::Keys`] naming the file that could not be read.
    pub fn load(gw: &Gateway) -> Result<Self, StateError> {
        match vault::derive_key(gw, TOKENS_LABEL) {
            Ok(tokens) => {
                let approvals = vault::derive_key(gw, APPROVALS_LABEL)
                    .map_err(|e| StateError::Keys(e.to_string()))?;
                Ok(StateKeys::new(Some(*tokens), Some(*approvals)))
            }
            Err(vault::VaultError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                let approvals = read_approval_key(&approval_key_path(gw))?;
                Ok(StateKeys::new(None, Some(*approvals)))
            }
            Err(e) => Err(StateError::Keys(e.to_string())),
        }
    }

    fn key(&self, which: &'static str) -> Result<&Key, StateError> {
        let key = match which {
            "tokens" => &self.tokens,
            _ => &self.approvals,
        };
        key.as_ref().ok_or_else(|| {
            StateError::Keys(format!(
                "no {which} key: run as root (it is derived from the vault key)"
            ))
        })
    }

    /// The MAC (hex) of a token record stored under `digest`.
    pub(super) fn token_mac(
        &self,
        digest: &str,
        r: &crate::tokens::TokenRecord,
    ) -> Result<String, StateError> {
        let revoked = if r.revoked { "1" } else { "0" };
        Ok(mac(
            self.key("tokens")?,
            &[
                b"token",
                digest.as_bytes(),
                r.id.as_bytes(),
                r.agent.as_bytes(),
                r.service.as_bytes(),
                r.created.to_string().as_bytes(),
                r.expires.to_string().as_bytes(),
                revoked.as_bytes(),
            ],
        ))
    }

    /// The MAC (hex) of the `scheme` login verifier `entry` of the token
    /// `digest` of (`agent`, `service`).
    pub(super) fn verifier_mac(
        &self,
        scheme: &str,
        agent: &str,
        service: &str,
        digest: &str,
        entry: &str,
    ) -> Result<String, StateError> {
        Ok(mac(
            self.key("tokens")?,
            &[
                scheme.as_bytes(),
                agent.as_bytes(),
                service.as_bytes(),
                digest.as_bytes(),
                entry.as_bytes(),
            ],
        ))
    }

    /// The MAC (hex) of the revocation entry of token `id`.
    pub(super) fn revocation_mac(&self, id: &str, expires: i64) -> Result<String, StateError> {
        Ok(mac(
            self.key("tokens")?,
            &[b"revocation", id.as_bytes(), expires.to_string().as_bytes()],
        ))
    }

    /// The MAC (hex) of an approval, over every field.
    pub(super) fn approval_mac(&self, a: &super::Approval) -> Result<String, StateError> {
        let opt = |o: &Option<String>| match o {
            Some(s) => format!("+{s}"),
            None => "-".to_string(),
        };
        let groups = a.groups.join("\n");
        let (pid, uid) = (a.pid.to_string(), a.uid.to_string());
        let (created, expires) = (a.created.to_string(), a.expires.to_string());
        let (by, reason) = (opt(&a.by), opt(&a.reason));
        let mut parts: Vec<&[u8]> = vec![
            b"approval",
            a.id.as_bytes(),
            a.agent.as_bytes(),
            pid.as_bytes(),
            uid.as_bytes(),
            a.service.as_bytes(),
            a.summary.as_bytes(),
            created.as_bytes(),
            expires.as_bytes(),
            a.status.as_str().as_bytes(),
            by.as_bytes(),
            reason.as_bytes(),
            a.gateway.as_bytes(),
        ];
        // The caller of a JWT (absent otherwise, so older MACs still hold).
        if let Some(subject) = &a.subject {
            parts.extend([subject.as_bytes(), groups.as_bytes()]);
        }
        Ok(mac(self.key("approvals")?, &parts))
    }

    /// These keys, keeping the revocations seen in `file` as well (the
    /// daemon: `state_dir/revoked`), so a restart does not forget them.
    ///
    /// # Errors
    /// [`StateError::Keys`] naming the file when it cannot be read or
    /// written.
    pub fn keep_revocations_in(mut self, file: &Path) -> Result<Self, StateError> {
        self.revoked = SeenRevocations::persisted(file).map_err(StateError::Keys)?;
        Ok(self)
    }

    /// Remembers that token `id` (valid until `expires`) is revoked.
    pub(super) fn remember_revoked(&self, id: &str, expires: i64) {
        self.revoked.remember(id, expires);
    }

    /// Whether a revocation of token `id` was seen.
    pub(super) fn seen_revoked(&self, id: &str) -> bool {
        self.revoked.contains(id)
    }
}

/// Constant-time comparison of a computed MAC with a stored one.
pub(super) fn matches(expected: &str, stored: Option<&str>) -> bool {
    use subtle::ConstantTimeEq;
    stored.is_some_and(|s| bool::from(expected.as_bytes().ct_eq(s.as_bytes())))
}

fn mac(key: &Key, parts: &[&[u8]]) -> String {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&key[..]).expect("HMAC takes any key");
    for part in parts {
        m.update(&(part.len() as u64).to_be_bytes());
        m.update(part);
    }
    hex::encode(m.finalize().into_bytes())
}

fn read_approval_key(path: &Path) -> Result<Key, StateError> {
    let bad = |what: String| StateError::Keys(format!("{}: {what}", path.display()));
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| {
        bad(format!(
            "{e}; root writes it with `sluice approvals key-file` (readable by {ADMIN_GROUP})"
        ))
    })?);
    let mut key = Zeroizing::new([0u8; vault::KEY_LEN]);
    if bytes.len() != key.len() {
        return Err(bad(format!("holds {} bytes, expected 32", bytes.len())));
    }
    key.copy_from_slice(&bytes);
    Ok(key)
}

/// Writes the approval key, derived from the vault key, to
/// [`approval_key_path`] with mode 0640, owner root, group `sluice-admin`
/// (0600 when that group does not exist). Replaces a stale file. Returns
/// the path.
///
/// # Errors
/// A one-line message naming the file that could not be read or written.
pub fn write_approval_key(gw: &Gateway) -> Result<PathBuf, String> {
    let key = vault::derive_key(gw, APPROVALS_LABEL).map_err(|e| e.to_string())?;
    let path = approval_key_path(gw);
    let group = nix::unistd::Group::from_name(ADMIN_GROUP).ok().flatten();
    let mode = if group.is_some() { 0o640 } else { 0o600 };
    let tmp = path.with_file_name(format!(".{APPROVAL_KEY_FILE}.tmp-{}", std::process::id()));
    let io = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&key[..])?;
        f.sync_all()?;
        if let Some(g) = &group {
            nix::unistd::chown(&tmp, None, Some(g.gid))?;
        }
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, &path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::TokenRecord;

    fn record() -> TokenRecord {
        TokenRecord {
            id: "tok_1".into(),
            agent: "a".into(),
            service: "s".into(),
            created: 1,
            expires: 2,
            revoked: false,
        }
    }

    #[test]
    fn token_mac_binds_the_digest_and_every_field() {
        let keys = StateKeys::new(Some([1; 32]), None);
        let base = keys.token_mac("d1", &record()).unwrap();
        assert_ne!(base, keys.token_mac("d2", &record()).unwrap());
        let changes: [fn(&mut TokenRecord); 6] = [
            |r| r.id = "tok_2".into(),
            |r| r.agent = "b".into(),
            |r| r.service = "t".into(),
            |r| r.created = 0,
            |r| r.expires = 3,
            |r| r.revoked = true,
        ];
        for change in changes {
            let mut r = record();
            change(&mut r);
            assert_ne!(base, keys.token_mac("d1", &r).unwrap());
        }
        let other = StateKeys::new(Some([2; 32]), None);
        assert_ne!(base, other.token_mac("d1", &record()).unwrap());
        assert!(matches(&base, Some(&base)));
        assert!(!matches(&base, None));
    }

    #[test]
    fn without_the_token_key_nothing_is_signed() {
        let keys = StateKeys::new(None, Some([1; 32]));
        assert!(matches!(
            keys.token_mac("d", &record()),
            Err(StateError::Keys(_))
        ));
    }
}
