//! A test OpenID Connect issuer. It stands in for an identity provider we
//! cannot run here (a CI system's workload-identity issuer, a Kubernetes
//! API server's service-account issuer, a corporate IdP): Sluice fetches
//! its discovery document and JWKS over HTTPS exactly as from a real one.
//!
//! - HTTPS on `127.0.0.x`:<free port> with a certificate from its own test
//!   CA (`<dir>/upstream-ca.pem`, Sluice's `[[oidc]] ca`), for the name
//!   [`HOST`] (Sluice's `resolve` pins it) and the address.
//! - `/.well-known/openid-configuration` (OpenID Connect Discovery 1.0 §4)
//!   and `/jwks` (RFC 7517) with RSA, P-256 and Ed25519 keys
//!   ([`Alg`]); keys can be added at run time ([`OidcIssuer::add_key`], a
//!   rotation) and the server stopped and started on the same address
//!   ([`OidcIssuer::stop`], [`OidcIssuer::start`]).
//! - Tokens minted with any claims, algorithm and `kid`
//!   ([`OidcIssuer::mint`]), and the malformed ones attacks use
//!   ([`OidcIssuer::alg_none`], [`OidcIssuer::hs256_with_public_key`],
//!   [`tamper`]).
//! - An authorization-code flow with PKCE for the console ([`login`]).
use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use crate::TestCa;

mod keys;
pub mod login;

pub use keys::Alg;
use keys::SigningKey;
pub use login::User;

/// The issuer's host name; Sluice's `[[oidc]] resolve` pins it to the
/// fixture's address.
pub const HOST: &str = "idp.sluice.test";

/// A running (or stopped) test issuer.
pub struct OidcIssuer {
    addr: SocketAddr,
    ca: TestCa,
    state: Arc<State>,
    tls: tokio_rustls::TlsAcceptor,
    runtime: tokio::runtime::Runtime,
    server: Option<tokio::task::JoinHandle<()>>,
}

/// What the handlers share.
struct State {
    issuer: String,
    keys: Mutex<Vec<SigningKey>>,
    login: Mutex<login::Login>,
    jwks_fetches: AtomicUsize,
    discovery_fetches: AtomicUsize,
}

type Body = Full<Bytes>;

impl OidcIssuer {
    /// Starts an issuer on `ip` (loopback):<free port>, with its CA written
    /// into `dir` and one published key of each [`Alg`] (kids `rsa-1`,
    /// `ec-1`, `ed-1`).
    ///
    /// # Errors
    /// When the CA, the keys (`openssl` for RSA) or the listener fail.
    pub fn start_on(dir: &Path, ip: IpAddr) -> Result<OidcIssuer> {
        assert!(ip.is_loopback(), "the test issuer listens on loopback only");
        let ca = TestCa::new(dir)?;
        let ip_text = ip.to_string();
        let tls =
            tokio_rustls::TlsAcceptor::from(ca.server_config(&[HOST, &ip_text], &[b"http/1.1"])?);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("oidc-issuer")
            .enable_all()
            .build()?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind((ip, 0)))
            .with_context(|| format!("bind the test issuer on {ip}"))?;
        let addr = listener.local_addr()?;
        let keys = [
            (Alg::Rs256, "rsa-1"),
            (Alg::Es256, "ec-1"),
            (Alg::EdDsa, "ed-1"),
        ]
        .into_iter()
        .map(|(alg, kid)| SigningKey::generate(alg, kid))
        .collect::<Result<_>>()?;
        let state = Arc::new(State {
            issuer: format!("https://{HOST}:{}", addr.port()),
            keys: Mutex::new(keys),
            login: Mutex::new(login::Login::default()),
            jwks_fetches: AtomicUsize::new(0),
            discovery_fetches: AtomicUsize::new(0),
        });
        let mut issuer = OidcIssuer {
            addr,
            ca,
            state,
            tls,
            runtime,
            server: None,
        };
        issuer.serve(listener);
        Ok(issuer)
    }

    /// The `iss` of its tokens: `https://idp.sluice.test:<port>`.
    pub fn issuer(&self) -> &str {
        &self.state.issuer
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its CA certificate (PEM file), for `[[oidc]] ca`.
    pub fn ca_path(&self) -> PathBuf {
        self.ca.pem_path().to_path_buf()
    }

    /// An `[[oidc]]` entry for Sluice's config naming this issuer `name`,
    /// for `audience`, trusting its CA and pinning its address.
    pub fn config_entry(&self, name: &str, audience: &str) -> String {
        format!(
            "[[oidc]]\nname = {name:?}\nissuer = {:?}\naudience = {audience:?}\nca = {:?}\nresolve = [\"{}\"]\n",
            self.issuer(),
            self.ca_path().display().to_string(),
            self.addr.ip()
        )
    }

    /// How often `/jwks` has been fetched.
    pub fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    /// How often the discovery document has been fetched.
    pub fn discovery_fetches(&self) -> usize {
        self.state.discovery_fetches.load(Ordering::SeqCst)
    }

    /// Registers the console's OAuth client (`client_id`, `client_secret`).
    pub fn set_client(&self, id: &str, secret: &str) {
        self.state.login.lock().unwrap().client = Some((id.to_string(), secret.to_string()));
    }

    /// The person the authorization endpoint signs in from now on.
    pub fn set_user(&self, subject: &str, groups: &[&str]) {
        self.state.login.lock().unwrap().user = User {
            subject: subject.to_string(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        };
    }

    /// Generates a key of `alg` named `kid` and publishes it in the JWKS
    /// (a key rotation; the old keys stay published).
    pub fn add_key(&self, alg: Alg, kid: &str) -> Result<()> {
        let key = SigningKey::generate(alg, kid)?;
        self.state.keys.lock().unwrap().push(key);
        Ok(())
    }

    /// Generates a key that signs tokens but is never published: its
    /// tokens carry a `kid` the JWKS does not know.
    pub fn add_unpublished_key(&self, alg: Alg, kid: &str) -> Result<()> {
        let mut key = SigningKey::generate(alg, kid)?;
        key.published = false;
        self.state.keys.lock().unwrap().push(key);
        Ok(())
    }

    /// Claims for a well-formed token: this `iss`, `aud`, `sub`, `groups`,
    /// `iat` and `nbf` now, `exp` in 10 minutes, a random `jti`.
    pub fn claims(&self, audience: &str, subject: &str, groups: &[&str]) -> Value {
        let now = now();
        json!({
            "iss": self.issuer(), "aud": audience, "sub": subject, "groups": groups,
            "iat": now, "nbf": now, "exp": now + 600, "jti": crate::random_hex(12),
        })
    }

    /// A JWT over `claims`, signed by the key `kid` with its algorithm.
    ///
    /// # Panics
    /// When no key is named `kid`.
    pub fn mint(&self, kid: &str, claims: &Value) -> String {
        let keys = self.state.keys.lock().unwrap();
        let key = keys
            .iter()
            .find(|k| k.kid == kid)
            .expect("a key of that kid");
        sign(key, claims)
    }

    /// An unsigned JWT (`alg: none`, empty signature) naming `kid`.
    pub fn alg_none(&self, kid: &str, claims: &Value) -> String {
        let header = json!({"alg": "none", "typ": "JWT", "kid": kid});
        format!("{}.{}.", b64_json(&header), b64_json(claims))
    }

    /// An HS256 JWT whose HMAC key is the RSA key `kid`'s public key (PEM):
    /// the algorithm-confusion attack.
    pub fn hs256_with_public_key(&self, kid: &str, claims: &Value) -> String {
        let keys = self.state.keys.lock().unwrap();
        let key = keys
            .iter()
            .find(|k| k.kid == kid)
            .expect("a key of that kid");
        let secret = key.public_pem.as_deref().expect("an RSA key");
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some(kid.to_string());
        jsonwebtoken::encode(
            &header,
            claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("HS256 signs")
    }

    /// Stops serving (connections are refused) until [`Self::start`].
    pub fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = self.runtime.block_on(server);
        }
    }

    /// Serves again on the same address, with the same keys.
    ///
    /// # Errors
    /// When the address cannot be bound again.
    pub fn start(&mut self) -> Result<()> {
        if self.server.is_none() {
            let listener = self
                .runtime
                .block_on(tokio::net::TcpListener::bind(self.addr))
                .with_context(|| format!("bind the test issuer on {} again", self.addr))?;
            self.serve(listener);
        }
        Ok(())
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let (state, tls) = (self.state.clone(), self.tls.clone());
        self.server =
            Some(self.runtime.spawn(async move {
                let mut connections = tokio::task::JoinSet::new();
                while let Ok((tcp, _)) = listener.accept().await {
                    let (state, tls) = (state.clone(), tls.clone());
                    connections.spawn(async move {
                    let Ok(stream) = tls.accept(tcp).await else { return };
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, std::convert::Infallible>(route(&state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                }
            }));
    }
}

impl Drop for OidcIssuer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `token` with its payload replaced by `claims` and its signature kept.
pub fn tamper(token: &str, claims: &Value) -> String {
    let mut parts = token.splitn(3, '.');
    let (header, _, signature) = (
        parts.next().unwrap_or(""),
        parts.next(),
        parts.next().unwrap_or(""),
    );
    format!("{header}.{}.{signature}", b64_json(claims))
}

fn sign(key: &SigningKey, claims: &Value) -> String {
    let mut header = jsonwebtoken::Header::new(key.alg.jwt());
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, claims, &key.encoding).expect("the fixture's keys sign")
}

fn b64_json(value: &Value) -> String {
    B64.encode(serde_json::to_vec(value).expect("JSON"))
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

async fn route(state: &State, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    match (parts.method.as_str(), parts.uri.path()) {
        ("GET", "/.well-known/openid-configuration") => {
            state.discovery_fetches.fetch_add(1, Ordering::SeqCst);
            let iss = &state.issuer;
            json_response(
                200,
                &json!({
                    "issuer": iss,
                    "jwks_uri": format!("{iss}/jwks"),
                    "authorization_endpoint": format!("{iss}/authorize"),
                    "token_endpoint": format!("{iss}/token"),
                    "userinfo_endpoint": format!("{iss}/userinfo"),
                    "response_types_supported": ["code"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
                    "code_challenge_methods_supported": ["S256"],
                    "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
                }),
            )
        }
        ("GET", "/jwks") => {
            state.jwks_fetches.fetch_add(1, Ordering::SeqCst);
            let keys: Vec<Value> = state
                .keys
                .lock()
                .unwrap()
                .iter()
                .filter(|k| k.published)
                .map(|k| k.jwk.clone())
                .collect();
            json_response(200, &json!({ "keys": keys }))
        }
        ("GET", "/authorize") => login::authorize(state, parts.uri.query().unwrap_or("")),
        ("POST", "/token") => login::token(state, &parts.headers, &body),
        ("GET", "/userinfo") => login::userinfo(state, &parts.headers),
        _ => json_response(404, &json!({ "error": "not_found" })),
    }
}

fn json_response(status: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("response")
}

#[cfg(test)]
mod self_test;
