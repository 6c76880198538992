//! The SSH client side: Sluice logging in to the real host.
//!
//! The server's host key is checked against the expected keys during key
//! exchange (RFC 4253 §8), before user authentication (RFC 4252) starts, so
//! a server with another key never sees the credential.
use std::{sync::Arc, time::Duration};

use russh::{
    client,
    keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate},
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
