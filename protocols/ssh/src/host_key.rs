//! The host key Sluice presents to agents: one ed25519 key per gateway,
//! `state_dir/ssh_host_ed25519_key` (OpenSSH private key format, mode 0600),
//! generated on first start. Gateways that share Redis share this file.
//!
//! Agents trust it through a known_hosts line (`sluice ssh known-hosts`),
//! written as OpenSSH writes them: `host` for port 22, `[host]:port`
//! otherwise (sshd(8) "SSH_KNOWN_HOSTS FILE FORMAT").
use std::{
    fs,
    io::{self, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use russh::keys::{
    ssh_key::{Algorithm, LineEnding},
    PrivateKey, PublicKey,
};

/// File name of the host key inside the state directory.
pub const HOST_KEY_FILE: &str = "ssh_host_ed25519_key";

/// Why the host key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    /// Reading, creating or renaming the file failed.
    #[error("host key {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The file exists but is not an OpenSSH private key.
    #[error("host key {path}: not an OpenSSH private key: {source}")]
    Format {
        /// The key file.
        path: PathBuf,
        /// The parse error.
        source: russh::keys::ssh_key::Error,
    },
}

/// Loads `state_dir/ssh_host_ed25519_key`, or generates a fresh ed25519 key
/// there (written to a temporary file with mode 0600, then renamed, so a
/// concurrent reader never sees half a key).
pub fn load_or_generate(state_dir: &Path) -> Result<PrivateKey, HostKeyError> {
    let path = state_dir.join(HOST_KEY_FILE);
    let io_err = |source| HostKeyError::Io {
        path: path.clone(),
        source,
    };
    match fs::read_to_string(&path) {
        Ok(text) => {
            PrivateKey::from_openssh(text.as_bytes()).map_err(|source| HostKeyError::Format {
                path: path.clone(),
                source,
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let key =
                PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).map_err(|source| {
                    HostKeyError::Format {
                        path: path.clone(),
                        source,
                    }
                })?;
            let text = key
                .to_openssh(LineEnding::LF)
                .map_err(|source| HostKeyError::Format {
                    path: path.clone(),
                    source,
                })?;
            let tmp = state_dir.join(format!(".{HOST_KEY_FILE}.{}", std::process::id()));
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io_err)?;
            file.set_permissions(fs::Permissions::from_mode(0o600))
                .map_err(io_err)?;
            file.write_all(text.as_bytes()).map_err(io_err)?;
            file.sync_all().map_err(io_err)?;
            fs::rename(&tmp, &path).map_err(io_err)?;
            Ok(key)
        }
        Err(e) => Err(io_err(e)),
    }
}

/// One known_hosts line for `key` as agents dial `host:port`:
/// `host ssh-ed25519 AAAA…`, or `[host]:port ssh-ed25519 AAAA…` when the
/// port is not 22.
pub fn known_hosts_line(host: &str, port: u16, key: &PublicKey) -> String {
    let name = if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    };
    format!("{name} {} {}", key.algorithm(), key_base64(key))
}

/// The base64 blob of a public key, as in authorized_keys and known_hosts.
fn key_base64(key: &PublicKey) -> String {
    let mut bare = key.clone();
    bare.set_comment("");
    let line = bare.to_openssh().unwrap_or_default();
    line.split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_with_mode_0600_then_loads_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_generate(dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join(HOST_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let second = load_or_generate(dir.path()).unwrap();
        assert_eq!(first.public_key(), second.public_key());
        assert_eq!(first.algorithm(), Algorithm::Ed25519);
    }

    #[test]
    fn known_hosts_line_brackets_non_default_ports() {
        let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
        let public = key.public_key();
        let blob = key_base64(public);
        assert_eq!(
            known_hosts_line("git.internal", 22, public),
            format!("git.internal ssh-ed25519 {blob}")
        );
        assert_eq!(
            known_hosts_line("10.0.0.5", 2222, public),
            format!("[10.0.0.5]:2222 ssh-ed25519 {blob}")
        );
        let parsed = PublicKey::from_openssh(&format!("ssh-ed25519 {blob}")).unwrap();
        assert_eq!(parsed.key_data(), public.key_data());
    }
}
