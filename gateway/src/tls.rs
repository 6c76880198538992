//! TLS: the local CA, per-SNI certificates minted on the fly, and the
//! rustls configurations for both legs.
//!
//! - Towards the agent (RFC 8446, SNI per RFC 6066 §3, ALPN per RFC 7301):
//!   a leaf certificate for the requested server name, signed by the local CA
//!   under `state_dir/ca/`, cached per name (at most [`MAX_CACHED`] names)
//!   and re-minted once less than a third of its [`LEAF_LIFETIME`] is left;
//!   ALPN offers only what the agent offered, among `h2` and `http/1.1`.
//!   One server config per (name, ALPN list) is built once and cached with
//!   the certificate; all of them share one TLS session store and one
//!   ticket key rotator (RFC 8446 §4.6.1, RFC 5077), so an agent's next
//!   connection can resume instead of paying a full handshake, and an idle
//!   connection does not carry a private session cache.
//! - Towards the upstream: certificates verified against the system roots, or
//!   against `upstream_ca` alone when a service sets it.
use std::{
    collections::HashMap,
    fs, io,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::{
    crypto::ring::sign::any_supported_type,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::{ClientHello, ProducesTickets, ResolvesServerCert, StoresServerSessions},
    sign::CertifiedKey,
    ClientConfig, RootCertStore, ServerConfig,
};

/// ALPN protocol ids Sluice can serve to agents, in preference order.
pub const SERVABLE_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// How long a minted leaf certificate is valid (from a day before minting,
/// for clock skew).
pub const LEAF_LIFETIME: time::Duration = time::Duration::days(90);

/// A cached leaf is re-minted once less than this much of it is left.
const RENEW_BEFORE: time::Duration = time::Duration::days(30);

/// Server names whose certificates are cached; past it, the oldest goes.
pub const MAX_CACHED: usize = 4096;

/// TLS 1.2 sessions (by id) kept for resumption, over all names; TLS 1.3
/// resumes from tickets and stores nothing.
const SESSION_CACHE: usize = 4096;

/// A minted certificate, the server configs built on it (by ALPN list),
/// and when it stops being served.
struct Cached {
    key: Arc<CertifiedKey>,
    configs: Vec<(Vec<Vec<u8>>, Arc<ServerConfig>)>,
    minted: time::OffsetDateTime,
    renew_at: time::OffsetDateTime,
}

/// Errors from the CA, minting and TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("{path}: no PEM certificate found: {reason}")]
    BadPem { path: PathBuf, reason: String },
}

/// The local CA that signs per-SNI certificates for agents.
pub struct LocalCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cache: Mutex<HashMap<String, Cached>>,
    sessions: Arc<dyn StoresServerSessions>,
    tickets: Arc<dyn ProducesTickets>,
}

impl LocalCa {
    /// Loads `state_dir/ca/ca.pem` and `ca.key`, creating them (key 0600,
    /// directory 0700) on first use.
    ///
    /// # Errors
    /// [`TlsError::Io`] for filesystem failures, [`TlsError::Rcgen`] for a
    /// corrupt key or certificate.
    pub fn load_or_create(state_dir: &Path) -> Result<LocalCa, TlsError> {
        let dir = state_dir.join("ca");
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca.key");
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| TlsError::Io { what, path, source }
        };
        if !cert_path.exists() || !key_path.exists() {
            fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                .map_err(io("chmod", &dir))?;
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, "Sluice local CA");
            dn.push(DnType::OrganizationName, "Sluice");
            params.distinguished_name = dn;
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            params.not_before = rcgen::date_time_ymd(2024, 1, 1);
            params.not_after = rcgen::date_time_ymd(2036, 1, 1);
            let cert = params.self_signed(&key)?;
            write_private(&key_path, key.serialize_pem().as_bytes())
                .map_err(io("writing", &key_path))?;
            fs::write(&cert_path, cert.pem()).map_err(io("writing", &cert_path))?;
        }
        let key_pem = fs::read_to_string(&key_path).map_err(io("reading", &key_path))?;
        let cert_pem = fs::read_to_string(&cert_path).map_err(io("reading", &cert_path))?;
        let key = KeyPair::from_pem(&key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
        Ok(LocalCa {
            issuer,
            cert_pem,
            cache: Mutex::new(HashMap::new()),
            sessions: rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE),
            tickets: rustls::crypto::ring::Ticketer::new()?,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A certificate and key for `server_name` (a DNS name or IP literal),
    /// minted on first use and cached; re-minted when less than a third of
    /// its lifetime is left.
    ///
    /// # Errors
    /// [`TlsError::Rcgen`] when minting fails.
    pub fn certified_key(&self, server_name: &str) -> Result<Arc<CertifiedKey>, TlsError> {
        self.certified_key_at(server_name, time::OffsetDateTime::now_utc())
    }

    /// The server config towards an agent that dialled `server_name`:
    /// presenting its certificate ([`LocalCa::certified_key`]) and offering
    /// exactly the ALPN ids `alpn` (RFC 7301; empty for none). Built once
    /// per (name, ALPN list) and kept with the certificate, so it is rebuilt
    /// when the certificate is re-minted; every config shares the CA's
    /// session store and ticket keys.
    ///
    /// # Errors
    /// [`TlsError::Rcgen`] when minting fails, [`TlsError::Rustls`] when the
    /// protocol versions cannot be set up.
    pub fn agent_config(
        &self,
        server_name: &str,
        alpn: &[&[u8]],
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let key = self.certified_key(server_name)?;
        let matches = |ids: &Vec<Vec<u8>>| ids.iter().map(Vec::as_slice).eq(alpn.iter().copied());
        let mut cache = self.cache.lock().unwrap();
        let entry = cache
            .get_mut(server_name)
            .filter(|hit| Arc::ptr_eq(&hit.key, &key));
        if let Some(hit) = entry
            .as_ref()
            .and_then(|e| e.configs.iter().find(|(ids, _)| matches(ids)))
        {
            return Ok(hit.1.clone());
        }
        let mut cfg =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(MintedCert(key)));
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        cfg.session_storage = self.sessions.clone();
        cfg.ticketer = self.tickets.clone();
        let cfg = Arc::new(cfg);
        if let Some(entry) = entry {
            entry
                .configs
                .push((cfg.alpn_protocols.clone(), cfg.clone()));
        }
        Ok(cfg)
    }

    /// [`LocalCa::certified_key`] with the clock read as `now`.
    fn certified_key_at(
        &self,
        server_name: &str,
        now: time::OffsetDateTime,
    ) -> Result<Arc<CertifiedKey>, TlsError> {
        if let Some(hit) = self.cache.lock().unwrap().get(server_name) {
            if now < hit.renew_at {
                return Ok(hit.key.clone());
            }
        }
        let ck = self.mint(server_name, now)?;
        let mut cache = self.cache.lock().unwrap();
        if cache.len() >= MAX_CACHED && !cache.contains_key(server_name) {
            let oldest = cache
                .iter()
                .min_by_key(|(_, c)| c.minted)
                .map(|(name, _)| name.clone());
            if let Some(name) = oldest {
                cache.remove(&name);
            }
        }
        cache.insert(
            server_name.to_string(),
            Cached {
                key: ck.clone(),
                configs: Vec::new(),
                minted: now,
                renew_at: now + LEAF_LIFETIME - RENEW_BEFORE,
            },
        );
        Ok(ck)
    }

    /// Signs a fresh leaf for `server_name`, valid from a day before `now`
    /// for [`LEAF_LIFETIME`].
    fn mint(
        &self,
        server_name: &str,
        now: time::OffsetDateTime,
    ) -> Result<Arc<CertifiedKey>, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![match server_name.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(server_name.try_into()?),
        }];
        params
            .distinguished_name
            .push(DnType::CommonName, server_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + LEAF_LIFETIME;
        let cert = params.signed_by(&key, &self.issuer)?;
        let key_der = PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
        let signing = any_supported_type(&key_der)?;
        Ok(Arc::new(CertifiedKey::new(
            vec![cert.der().clone()],
            signing,
        )))
    }
}

/// Always presents the one certificate minted for the connection's SNI.
#[derive(Debug)]
struct MintedCert(Arc<CertifiedKey>);

impl ResolvesServerCert for MintedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use io::Write;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// The ALPN ids among [`SERVABLE_ALPN`] that the agent offered
/// (`offered`), in our preference order: what an HTTP agent is offered.
pub fn servable_alpn<'a>(offered: &[&[u8]]) -> Vec<&'a [u8]> {
    SERVABLE_ALPN
        .iter()
        .copied()
        .filter(|p| offered.contains(p))
        .collect()
}

/// The client config for a service's upstream: system roots, or only
/// `upstream_ca` when given; no client certificate.
///
/// # Errors
/// [`TlsError::Io`]/[`TlsError::BadPem`] for an unreadable `upstream_ca`.
pub fn upstream_client_config(upstream_ca: Option<&Path>) -> Result<ClientConfig, TlsError> {
    upstream_client_config_with(upstream_ca, None)
}

/// [`upstream_client_config`], presenting the certificate `client_cert`
/// resolves when the server asks for one (mutual TLS).
///
/// # Errors
/// As [`upstream_client_config`].
pub fn upstream_client_config_with(
    upstream_ca: Option<&Path>,
    client_cert: Option<Arc<dyn rustls::client::ResolvesClientCert>>,
) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    match upstream_ca {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| TlsError::BadPem {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?
                .collect::<Result<_, _>>()
                .map_err(|e| TlsError::BadPem {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?;
            if certs.is_empty() {
                return Err(TlsError::BadPem {
                    path: path.to_path_buf(),
                    reason: "empty".into(),
                });
            }
            for c in certs {
                roots.add(c)?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
    Ok(match client_cert {
        Some(resolver) => builder.with_client_cert_resolver(resolver),
        None => builder.with_no_client_auth(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_are_reminted_before_they_expire_and_the_cache_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(dir.path()).unwrap();
        let t0 = time::OffsetDateTime::now_utc();
        let first = ca.certified_key_at("api.test", t0).unwrap();
        let day = time::Duration::days(1);
        let same = ca.certified_key_at("api.test", t0 + 59 * day).unwrap();
        assert!(Arc::ptr_eq(&first, &same), "cached while two thirds remain");
        let renewed = ca.certified_key_at("api.test", t0 + 61 * day).unwrap();
        assert!(
            !Arc::ptr_eq(&first, &renewed),
            "re-minted in the last third"
        );
        assert_eq!(
            ca.certified_key_at("api.test", t0 + 62 * day).unwrap().cert,
            renewed.cert
        );

        for i in 0..MAX_CACHED + 10 {
            ca.certified_key_at(
                &format!("h{i}.test"),
                t0 + time::Duration::seconds(i as i64),
            )
            .unwrap();
        }
        let cache = ca.cache.lock().unwrap();
        assert_eq!(cache.len(), MAX_CACHED);
        assert!(!cache.contains_key("h0.test"), "the oldest went first");
        assert!(cache.contains_key(&format!("h{}.test", MAX_CACHED + 9)));
    }

    /// Runs a handshake between `client` and `server` in memory.
    fn handshake(client: &mut rustls::ClientConnection, server: &mut rustls::ServerConnection) {
        let mut wire = Vec::new();
        while client.is_handshaking()
            || server.is_handshaking()
            || client.wants_write()
            || server.wants_write()
        {
            wire.clear();
            client.write_tls(&mut wire).unwrap();
            server.read_tls(&mut wire.as_slice()).unwrap();
            server.process_new_packets().unwrap();
            wire.clear();
            server.write_tls(&mut wire).unwrap();
            client.read_tls(&mut wire.as_slice()).unwrap();
            client.process_new_packets().unwrap();
        }
    }

    #[test]
    fn agent_configs_are_shared_per_name_and_alpn_and_the_next_connection_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(dir.path()).unwrap();
        let h1: &[&[u8]] = &[b"http/1.1"];
        let first = ca.agent_config("api.test", h1).unwrap();
        assert!(Arc::ptr_eq(
            &first,
            &ca.agent_config("api.test", h1).unwrap()
        ));
        let both = ca.agent_config("api.test", &SERVABLE_ALPN).unwrap();
        assert!(!Arc::ptr_eq(&first, &both));
        assert_eq!(
            both.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert!(!Arc::ptr_eq(
            &first,
            &ca.agent_config("db.test", h1).unwrap()
        ));

        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
            .unwrap();
        let client = Arc::new(
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
        let kinds: Vec<_> = (0..2)
            .map(|_| {
                let name = rustls::pki_types::ServerName::try_from("api.test").unwrap();
                let mut c = rustls::ClientConnection::new(client.clone(), name).unwrap();
                let config = ca.agent_config("api.test", h1).unwrap();
                let mut s = rustls::ServerConnection::new(config).unwrap();
                handshake(&mut c, &mut s);
                c.handshake_kind().unwrap()
            })
            .collect();
        assert_eq!(
            kinds,
            [rustls::HandshakeKind::Full, rustls::HandshakeKind::Resumed]
        );
    }
}
