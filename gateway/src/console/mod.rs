//! The web console (DESIGN.md §9, `[console]`), served by `sluice run`
//! over HTTPS: pending approvals updating live with approve and deny,
//! sessions with filters and replay, tokens with revoke. People sign in
//! with OIDC (authorization code + PKCE); their groups decide what they
//! may see and do. Console and CLI act on the same Redis state.
//!
//! | file | job |
//! |---|---|
//! | `mod.rs` | the listener: TLS (the given certificate, or one minted by the local CA), HTTP/1.1 |
//! | `routes.rs` | dispatch, and the session, role and CSRF checks in front of every route |
//! | `oidc.rs` | the sign-in flow and ID token checks (`openidconnect`) |
//! | `signin.rs` | `/signin`, `/callback`, `/signout` |
//! | `session.rs` | server-side web sessions, sign-ins in progress, cookies |
//! | `roles.rs` | admins, approvers, viewers |
//! | `approvals.rs`, `sessions.rs`, `tokens.rs` | the pages and their actions |
//! | `actions.rs` | `console.jsonl`, every action recorded |
//! | `html.rs` | layout, escaping, security headers (CSP) |
//! | `assets/` | the one script and style sheet |
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
    ServerConfig,
};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use crate::{config::Config, state::StateHandle, tls::LocalCa};

mod actions;
mod approvals;
mod html;
pub mod oidc;
mod roles;
mod routes;
mod session;
mod sessions;
mod signin;
mod tokens;

pub use oidc::Issuer;

/// Why the console cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("console.cert/key: {0}")]
    Certificate(String),
    #[error("console.listen {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("console actions log: {0}")]
    Log(std::io::Error),
}

/// What every route shares.
pub struct Console {
    cfg: Arc<Config>,
    issuer: Issuer,
    state: Arc<StateHandle>,
    sessions: session::Sessions,
    actions: actions::ActionLog,
}

/// The local CA's certificate for the console's host, re-minted by the CA
/// before it expires.
struct Minted {
    ca: LocalCa,
    host: String,
}

impl std::fmt::Debug for Minted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Minted({})", self.host)
    }
}

impl ResolvesServerCert for Minted {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.ca
            .certified_key(&self.host)
            .map_err(|e| warn!(error = %e, "cannot mint the console's certificate"))
            .ok()
    }
}

/// The TLS server config: `cert`/`key` from the config, or a certificate
/// for the console's host minted by the local CA.
fn server_config(
    console: &crate::config::console::Console,
    ca: LocalCa,
) -> Result<ServerConfig, ConsoleError> {
    let fail = |e: &dyn std::fmt::Display| ConsoleError::Certificate(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(&e))?
        .with_no_client_auth();
    let mut cfg = match &console.cert {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| fail(&format_args!("{}: {e}", cert.display())))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| fail(&format_args!("{}: {e}", key.display())))?;
            builder.with_single_cert(chain, key).map_err(|e| fail(&e))?
        }
        None => {
            let host = console.host().to_string();
            // Mint now, so a CA problem stops the start.
            ca.certified_key(&host).map_err(|e| fail(&e))?;
            builder.with_cert_resolver(Arc::new(Minted { ca, host }))
        }
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Binds `[console] listen` and serves the console in the background
/// (nothing without `[console]`).
///
/// # Errors
/// [`ConsoleError`] when the certificate cannot be loaded or minted, the
/// address cannot be bound, or `console.jsonl` cannot be opened.
pub async fn start(
    cfg: Arc<Config>,
    state: Arc<StateHandle>,
    issuer: Issuer,
) -> Result<(), ConsoleError> {
    let Some(settings) = cfg.console.clone() else {
        return Ok(());
    };
    // The console's own view of the local CA (the same files as the
    // gateway's), for its minted certificate.
    let ca = LocalCa::load_or_create(&cfg.gateway.state_dir)
        .map_err(|e| ConsoleError::Certificate(e.to_string()))?;
    let tls = TlsAcceptor::from(Arc::new(server_config(&settings, ca)?));
    let listener =
        TcpListener::bind(settings.listen)
            .await
            .map_err(|source| ConsoleError::Bind {
                addr: settings.listen,
                source,
            })?;
    let actions = actions::ActionLog::open(&cfg.gateway.log_dir).map_err(ConsoleError::Log)?;
    let console = Arc::new(Console {
        cfg,
        issuer,
        state,
        sessions: session::Sessions::default(),
        actions,
    });
    info!(listen = %settings.listen, url = %settings.url, "console ready");
    tokio::spawn(serve(console, listener, tls));
    Ok(())
}

/// Accepts connections until the daemon stops.
async fn serve(console: Arc<Console>, listener: TcpListener, tls: TlsAcceptor) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "console accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (console, tls) = (console.clone(), tls.clone());
        tokio::spawn(async move {
            let stream = match tls.accept(tcp).await {
                Ok(s) => s,
                Err(e) => return tracing::debug!(%peer, error = %e, "console TLS handshake failed"),
            };
            let service = service_fn(move |req| {
                let console = console.clone();
                async move { Ok::<_, std::convert::Infallible>(routes::handle(console, req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "console connection ended");
            }
        });
    }
}
