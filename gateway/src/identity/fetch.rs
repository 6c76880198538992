//! Fetching an issuer's discovery document (OpenID Connect Discovery 1.0
//! §4) and JWKS (RFC 7517 §5) over HTTPS, verified against the system roots
//! or the issuer's `ca`, connecting to its `resolve` addresses when set.
use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{header, Request, Uri};
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::JwkSet;
use rustls::pki_types::ServerName;
use serde::Deserialize;

use crate::{config::oidc::Issuer, tls::upstream_client_config};

/// How long one fetch (connect, TLS, request, body) may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest discovery document or JWKS read (bytes).
const MAX_BODY: usize = 1 << 20;

/// Why a fetch failed: a one-line message naming the URL and what to fix.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct FetchError(pub String);

/// The fields of the discovery document Sluice uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    /// Must equal the configured issuer (Discovery §4.3).
    pub issuer: String,
    pub jwks_uri: String,
}

/// Fetches and checks the discovery document of `issuer`.
///
/// # Errors
/// [`FetchError`] when it cannot be fetched or read, names another issuer,
/// or its `jwks_uri` is not HTTPS.
pub async fn discovery(issuer: &Issuer) -> Result<Discovery, FetchError> {
    let body = get(issuer, &issuer.discovery_url).await?;
    let doc: Discovery = serde_json::from_slice(&body).map_err(|e| {
        FetchError(format!(
            "{}: not a discovery document ({e})",
            issuer.discovery_url
        ))
    })?;
    if doc.issuer.trim_end_matches('/') != issuer.issuer.trim_end_matches('/') {
        return Err(FetchError(format!(
            "{}: names issuer {:?}, not {:?}; set oidc.issuer to what the tokens' iss says",
            issuer.discovery_url, doc.issuer, issuer.issuer
        )));
    }
    if !doc.jwks_uri.starts_with("https://") {
        return Err(FetchError(format!(
            "{}: jwks_uri {:?} is not https://",
            issuer.discovery_url, doc.jwks_uri
        )));
    }
    Ok(doc)
}

/// Fetches the JWKS at `jwks_uri` (from `issuer`'s discovery document).
///
/// # Errors
/// [`FetchError`] when it cannot be fetched or is not a JWK set.
pub async fn jwks(issuer: &Issuer, jwks_uri: &str) -> Result<JwkSet, FetchError> {
    let uri: Uri = jwks_uri
        .parse()
        .map_err(|e| FetchError(format!("jwks_uri {jwks_uri:?}: {e}")))?;
    let body = get(issuer, &uri).await?;
    serde_json::from_slice(&body)
        .map_err(|e| FetchError(format!("{jwks_uri}: not a JWK set ({e})")))
}

/// GET `uri` over TLS; the body of a 200 answer.
async fn get(issuer: &Issuer, uri: &Uri) -> Result<Bytes, FetchError> {
    tokio::time::timeout(FETCH_TIMEOUT, get_once(issuer, uri))
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {}s", FETCH_TIMEOUT.as_secs())))
        .map_err(|e| FetchError(format!("{uri}: {e}")))
}

async fn get_once(issuer: &Issuer, uri: &Uri) -> Result<Bytes, String> {
    let host = uri
        .host()
        .ok_or("names no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    // The issuer's pinned addresses serve its own host only.
    let resolve = if host == issuer.host {
        &issuer.resolve[..]
    } else {
        &[]
    };
    let tcp = crate::notify::connect(&host, port, resolve).await?;
    let mut config = upstream_client_config(issuer.ca.as_deref()).map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e} (is oidc.ca the issuer's CA?)"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let authority = uri.authority().map_or(host.as_str(), |a| a.as_str());
    let request = Request::get(uri.path_and_query().map_or("/", |pq| pq.as_str()))
        .header(header::HOST, authority)
        .header(header::ACCEPT, "application/json")
        .header(
            header::USER_AGENT,
            concat!("sluice/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("answered {}", response.status()));
    }
    Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| format!("reading the body: {e}"))
}
