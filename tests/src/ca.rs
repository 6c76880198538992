//! A throwaway certificate authority for the test upstreams (rcgen).
//!
//! Sluice verifies the upstream against it through the service's
//! `upstream_ca`; the agent never sees it (the agent trusts Sluice's CA).
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA whose certificate is written to `<dir>/upstream-ca.pem`.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pem_path: PathBuf,
}

/// A leaf certificate and key for some DNS names.
pub struct Leaf {
    pub cert_der: CertificateDer<'static>,
    pub key_der: PrivatePkcs8KeyDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    /// Generates a CA and writes its certificate (PEM) into `dir`.
    pub fn new(dir: &Path) -> Result<TestCa> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "Sluice test upstream CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        std::fs::create_dir_all(dir)?;
        let pem_path = dir.join("upstream-ca.pem");
        std::fs::write(&pem_path, issuer.pem())
            .with_context(|| format!("write {}", pem_path.display()))?;
        Ok(TestCa { issuer, pem_path })
    }

    /// The CA certificate file (PEM).
    pub fn pem_path(&self) -> &Path {
        &self.pem_path
    }

    /// The CA certificate (PEM).
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf certificate for `names`, signed by this CA.
    pub fn leaf(&self, names: &[&str]) -> Result<Leaf> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("upstream"),
        );
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf {
            cert_der: cert.der().clone(),
            key_der: PrivatePkcs8KeyDer::from(key.serialize_der()),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A rustls client config that trusts this CA only (what Sluice does
    /// with `upstream_ca`).
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }

    /// A rustls server config presenting a leaf for `names`, offering
    /// `alpn` (e.g. `[b"h2", b"http/1.1"]`).
    pub fn server_config(
        &self,
        names: &[&str],
        alpn: &[&[u8]],
    ) -> Result<Arc<rustls::ServerConfig>> {
        self.server_config_with(names, alpn, false)
    }

    /// [`TestCa::server_config`]; with `client_auth`, the handshake also
    /// requires a client certificate signed by this CA (mutual TLS).
    pub fn server_config_with(
        &self,
        names: &[&str],
        alpn: &[&[u8]],
        client_auth: bool,
    ) -> Result<Arc<rustls::ServerConfig>> {
        let leaf = self.leaf(names)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = if client_auth {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.issuer.der().clone())?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config =
            builder.with_single_cert(vec![leaf.cert_der], PrivateKeyDer::Pkcs8(leaf.key_der))?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}
