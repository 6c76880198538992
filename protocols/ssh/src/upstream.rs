//! The SSH client side: Sluice logging in to the real host.
//!
//! The server's host key is checked against the expected keys during key
//! exchange (RFC 4253 §8), before user authentication (RFC 4252) starts, so
//! a server with another key never sees the credential.
//!
//! As the client, Sluice chooses the upstream cipher (RFC 4253 §7.1: the
//! first of the client's list the server also offers): AES-GCM (RFC 5647,
//! `aes256-gcm@openssh.com`) where the CPU has AES and carry-less multiply
//! instructions, else russh's default order, ChaCha20-Poly1305 first.
use std::{borrow::Cow, sync::Arc, time::Duration};

use russh::{
    cipher, client,
    keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate},
    Preferred,
};
use tokio::net::TcpStream;

use crate::gate::{UpstreamCredential, UpstreamTarget};

/// How long the TCP connect, key exchange and login may take together.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(20);

/// Why Sluice could not log in upstream. No variant carries the credential.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP connect failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The upstream address.
        addr: std::net::SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The server presented a host key that is not `upstream_host_key`; the
    /// credential was not offered.
    #[error("upstream host key {presented} is not the configured upstream_host_key; credential not offered")]
    HostKeyMismatch {
        /// `SHA256:…` fingerprint of the key the server presented.
        presented: String,
    },
    /// The server refused the credential.
    #[error("upstream refused the login as {user}")]
    Rejected {
        /// The upstream user.
        user: String,
    },
    /// Connect, key exchange and login took longer than 20 s.
    #[error("upstream login timed out")]
    Timeout,
    /// The SSH protocol failed.
    #[error("upstream ssh: {0}")]
    Ssh(#[from] russh::Error),
}

/// Parses a vault secret as a private key: OpenSSH, PKCS#8 or PKCS#1 PEM
/// (unencrypted).
///
/// Known limitation of the parser (ssh-key 0.7.0-rc.11): an OpenSSH ECDSA
/// P-256 key whose private scalar starts with a zero byte (1 key in 256) is
/// rejected with a length error; re-generate such a key.
pub fn parse_private_key(text: &str) -> Result<PrivateKey, russh::keys::Error> {
    russh::keys::decode_secret_key(text, None)
}

/// An authenticated connection to the real host.
pub struct Upstream {
    handle: client::Handle<HostKeyCheck>,
}

impl Upstream {
    /// Connects to `target.addr`, checks the host key against
    /// `target.host_keys` and logs in as `target.user`.
    pub async fn connect(target: &UpstreamTarget) -> Result<Self, UpstreamError> {
        tokio::time::timeout(LOGIN_TIMEOUT, Self::login(target))
            .await
            .map_err(|_| UpstreamError::Timeout)?
    }

    async fn login(target: &UpstreamTarget) -> Result<Self, UpstreamError> {
        let stream =
            TcpStream::connect(target.addr)
                .await
                .map_err(|source| UpstreamError::Connect {
                    addr: target.addr,
                    source,
                })?;
        stream.set_nodelay(true).ok();
        let config = Arc::new(client::Config {
            inactivity_timeout: None,
            keepalive_interval: Some(Duration::from_secs(30)),
            preferred: Preferred {
                cipher: Cow::Borrowed(cipher_order(aes_in_hardware())),
                ..Preferred::DEFAULT
            },
            ..Default::default()
        });
        let check = HostKeyCheck {
            expected: target.host_keys.clone(),
        };
        let mut handle = client::connect_stream(config, stream, check).await?;
        let result = match &target.credential {
            UpstreamCredential::Key(key) => {
                let hash = if key.algorithm().is_rsa() {
                    handle.best_supported_rsa_hash().await?.flatten()
                } else {
                    None
                };
                let key = PrivateKeyWithHashAlg::new(key.clone(), hash);
                handle.authenticate_publickey(&target.user, key).await?
            }
            UpstreamCredential::Password(password) => {
                handle
                    .authenticate_password(&target.user, password.as_str())
                    .await?
            }
        };
        if !result.success() {
            return Err(UpstreamError::Rejected {
                user: target.user.clone(),
            });
        }
        Ok(Upstream { handle })
    }

    /// Opens a `session` channel upstream.
    pub async fn open_session(&self) -> Result<russh::Channel<client::Msg>, russh::Error> {
        self.handle.channel_open_session().await
    }

    /// Opens a `direct-tcpip` channel upstream (the upstream host connects
    /// to `host:port`).
    pub async fn open_direct_tcpip(
        &self,
        host: &str,
        port: u32,
        originator: &str,
        originator_port: u32,
    ) -> Result<russh::Channel<client::Msg>, russh::Error> {
        self.handle
            .channel_open_direct_tcpip(host, port, originator, originator_port)
            .await
    }

    /// Ends the upstream connection.
    pub async fn disconnect(&self) {
        let _ = self
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
}

/// The upstream cipher preference: AES-GCM first when `aes_in_hardware`
/// (several times cheaper per byte than ChaCha20-Poly1305 then, for Sluice
/// and for the upstream sshd), else russh's default order. The same set of
/// ciphers either way, so no server is refused that russh's default
/// accepts.
fn cipher_order(aes_in_hardware: bool) -> &'static [cipher::Name] {
    const AES_GCM_FIRST: &[cipher::Name] = &[
        cipher::AES_256_GCM,
        cipher::CHACHA20_POLY1305,
        cipher::AES_256_CTR,
        cipher::AES_192_CTR,
        cipher::AES_128_CTR,
    ];
    if aes_in_hardware {
        AES_GCM_FIRST
    } else {
        &Preferred::DEFAULT.cipher
    }
}

/// Whether this CPU has AES rounds and carry-less multiplication (GHASH)
/// in hardware: AES-NI and PCLMULQDQ on x86-64, the AES and PMULL
/// extensions on AArch64.
fn aes_in_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// The client handler: accepts exactly the expected host keys.
struct HostKeyCheck {
    expected: Vec<PublicKey>,
}

impl client::Handler for HostKeyCheck {
    type Error = UpstreamError;

    async fn check_server_key(
        &mut self,
        server_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let presented = match server_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key,
            PublicKeyOrCertificate::Certificate(cert) => {
                return Err(UpstreamError::HostKeyMismatch {
                    presented: format!("certificate {}", cert.key_id()),
                })
            }
        };
        if self
            .expected
            .iter()
            .any(|k| k.key_data() == presented.key_data())
        {
            Ok(true)
        } else {
            Err(UpstreamError::HostKeyMismatch {
                presented: crate::placeholder::fingerprint(presented),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_gcm_leads_only_with_hardware_aes_and_the_cipher_set_stays_russh_s() {
        assert_eq!(cipher_order(true)[0], cipher::AES_256_GCM);
        assert_eq!(cipher_order(false), &Preferred::DEFAULT.cipher[..]);
        let mut with = cipher_order(true).to_vec();
        let mut without = cipher_order(false).to_vec();
        with.sort_by_key(|n| n.as_ref().to_string());
        without.sort_by_key(|n| n.as_ref().to_string());
        assert_eq!(with, without);
    }
}
