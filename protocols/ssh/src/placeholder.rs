//! Placeholder keys: the key pair an agent logs in to Sluice with instead of
//! the real key (`sluice token issue --ssh-key`). Sluice prints the private
//! key once and keeps only the public half, an [`AuthorizedKey`], bound to
//! agent, service and expiry like any token.
use russh::keys::{
    ssh_key::{Algorithm, HashAlg, LineEnding},
    PrivateKey, PublicKey,
};
use zeroize::Zeroizing;

/// Why a key could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Generating or encoding the key failed.
    #[error("cannot generate an SSH key: {0}")]
    Generate(russh::keys::ssh_key::Error),
    /// An authorized_keys line did not parse.
    #[error("not an OpenSSH public key line: {0}")]
    Parse(russh::keys::ssh_key::Error),
}

/// A fresh placeholder key pair.
pub struct PlaceholderKey {
    /// The private key in OpenSSH format (`-----BEGIN OPENSSH PRIVATE
    /// KEY-----`), for the agent's `~/.ssh/id_ed25519`. Shown once.
    pub private_pem: Zeroizing<String>,
    /// The public key Sluice stores.
    pub public: AuthorizedKey,
}

impl PlaceholderKey {
    /// Generates an ed25519 key pair; `comment` (e.g. `agent@service`) ends
    /// up in both halves.
    pub fn generate(comment: &str) -> Result<Self, KeyError> {
        let mut key =
            PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).map_err(KeyError::Generate)?;
        key.set_comment(comment);
        let private_pem = key.to_openssh(LineEnding::LF).map_err(KeyError::Generate)?;
        Ok(PlaceholderKey {
            private_pem,
            public: AuthorizedKey(key.public_key().clone()),
        })
    }
}

/// A public key that may log in, as stored by Sluice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizedKey(PublicKey);

impl AuthorizedKey {
    /// Parses an authorized_keys style line (`ssh-ed25519 AAAA… [comment]`).
    pub fn parse(line: &str) -> Result<Self, KeyError> {
        PublicKey::from_openssh(line.trim())
            .map(AuthorizedKey)
            .map_err(KeyError::Parse)
    }

    /// The line to store: `ssh-ed25519 AAAA… comment`.
    pub fn to_line(&self) -> String {
        self.0.to_openssh().unwrap_or_default()
    }

    /// `SHA256:…` fingerprint, the form records and logs show.
    pub fn fingerprint(&self) -> String {
        self.0.fingerprint(HashAlg::Sha256).to_string()
    }

    /// Whether `presented` is this key (same algorithm and key material; the
    /// comment does not count).
    pub fn matches(&self, presented: &PublicKey) -> bool {
        self.0.key_data() == presented.key_data()
    }

    /// The public key itself.
    pub fn public_key(&self) -> &PublicKey {
        &self.0
    }
}

/// `SHA256:…` fingerprint of any public key (for `auth_fail` records of
/// unknown keys).
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_round_trips_and_matches_only_itself() {
        let key = PlaceholderKey::generate("agent@git").unwrap();
        assert!(key
            .private_pem
            .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        let private = PrivateKey::from_openssh(key.private_pem.as_bytes()).unwrap();
        let stored = AuthorizedKey::parse(&key.public.to_line()).unwrap();
        assert!(stored.to_line().starts_with("ssh-ed25519 AAAA"));
        assert!(stored.to_line().ends_with(" agent@git"));
        assert!(stored.matches(private.public_key()));
        assert!(stored.fingerprint().starts_with("SHA256:"));

        let mut renamed = private.public_key().clone();
        renamed.set_comment("other");
        assert!(stored.matches(&renamed));

        let other = PlaceholderKey::generate("agent@git").unwrap();
        assert!(!stored.matches(other.public.public_key()));
    }

    #[test]
    fn garbage_is_not_a_key() {
        assert!(AuthorizedKey::parse("ssh-ed25519 not-base64").is_err());
        assert!(AuthorizedKey::parse("").is_err());
    }
}
