//! The client certificate a Kubernetes service presents upstream
//! (`credential = { client_cert = "kube-cert", client_key = "kube-key" }`,
//! DESIGN.md §6 "Kubernetes API"): mutual TLS (RFC 8446 §4.4.2), the
//! certificate and key read from the vault at each handshake, so
//! `sluice secret put` takes effect on the next connection.
//!
//! The key lives in the vault and in rustls' signing key only: errors and
//! logs name the secrets, never their contents.
use std::sync::{Arc, Mutex};

use rustls::{
    client::ResolvesClientCert,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    sign::CertifiedKey,
    SignatureScheme,
};
use sha2::{Digest, Sha256};
use tracing::warn;

use crate::{config::ClientCertSecrets, vault::VaultCache};

/// Why the client certificate cannot be presented.
#[derive(Debug, thiserror::Error)]
pub enum ClientCertError {
    #[error("vault secret {0:?} is missing; run `sluice secret put {0}`")]
    Missing(String),
    #[error("vault unavailable: {0}")]
    Vault(String),
    #[error("vault secret {0:?} holds no PEM certificate")]
    BadCertificate(String),
    #[error("vault secret {0:?} holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    BadKey(String),
    #[error("the private key in {key:?} does not match the certificate in {cert:?}")]
    Mismatch { cert: String, key: String },
}

/// Presents the certificate in the vault secrets `names` on upstream
/// connections; parsed once per content.
pub struct VaultClientCert {
    vault: Arc<VaultCache>,
    names: ClientCertSecrets,
    /// The last certificate loaded, under the SHA-256 of its two PEMs.
    loaded: Mutex<Option<([u8; 32], Arc<CertifiedKey>)>>,
}

impl std::fmt::Debug for VaultClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultClientCert")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl VaultClientCert {
    /// The certificate of the secrets `names`, read from `vault`.
    pub fn new(vault: Arc<VaultCache>, names: ClientCertSecrets) -> Self {
        VaultClientCert {
            vault,
            names,
            loaded: Mutex::new(None),
        }
    }

    /// The certificate and key as they are in the vault now.
    ///
    /// # Errors
    /// [`ClientCertError`]: a secret missing or unreadable, not PEM, or a
    /// key that is not the certificate's.
    pub fn load(&self) -> Result<Arc<CertifiedKey>, ClientCertError> {
        let read = |name: &String| match self.vault.get(name) {
            Ok(Some(secret)) => Ok(secret),
            Ok(None) => Err(ClientCertError::Missing(name.clone())),
            Err(e) => Err(ClientCertError::Vault(e.to_string())),
        };
        let (cert, key) = (read(&self.names.cert)?, read(&self.names.key)?);
        let digest: [u8; 32] = Sha256::new()
            .chain_update(cert.expose())
            .chain_update([0])
            .chain_update(key.expose())
            .finalize()
            .into();
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((seen, certified)) = &*loaded {
            if *seen == digest {
                return Ok(certified.clone());
            }
        }
        let bad_cert = || ClientCertError::BadCertificate(self.names.cert.clone());
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.expose())
            .collect::<Result<_, _>>()
            .map_err(|_| bad_cert())?;
        if chain.is_empty() {
            return Err(bad_cert());
        }
        let bad_key = || ClientCertError::BadKey(self.names.key.clone());
        let der = PrivateKeyDer::from_pem_slice(key.expose()).map_err(|_| bad_key())?;
        let provider = rustls::crypto::ring::default_provider();
        let certified = CertifiedKey::from_der(chain, der, &provider).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => ClientCertError::Mismatch {
                cert: self.names.cert.clone(),
                key: self.names.key.clone(),
            },
            _ => bad_key(),
        })?;
        let certified = Arc::new(certified);
        *loaded = Some((digest, certified.clone()));
        Ok(certified)
    }
}

impl ResolvesClientCert for VaultClientCert {
    /// The vault's certificate; without a usable one (logged, by secret
    /// name) none is sent and the API server refuses the handshake, which
    /// the agent sees as a 502.
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.load()
            .inspect_err(|e| warn!(cert = %self.names.cert, "upstream client certificate: {e}"))
            .ok()
    }

    fn has_certs(&self) -> bool {
        true
    }
}
