//! The upstream leg: one pooled hyper client per HTTP service, connecting
//! only to that service's configured host (its `resolve` pins or DNS), with
//! TLS verified against the system roots or the service's `upstream_ca`.
//! ALPN offers `h2` and `http/1.1` (RFC 7301); the request is re-targeted
//! at the service's origin whatever `Host` the agent sent, so a secret can
//! reach no other host.
use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
};

use hyper::{
    header::{self, HeaderMap, HeaderName},
    http::request::Parts,
    Uri, Version,
};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{
        connect::{dns::Name, HttpConnector},
        Client,
    },
    rt::TokioExecutor,
};

use crate::{
    config::{Config, Service},
    intercept::resolver::service_addrs,
    tls::{upstream_client_config_with, TlsError},
    vault::VaultCache,
};

/// Resolves only the service's own host: its `resolve` pins or DNS.
#[derive(Clone)]
pub struct ServiceResolver {
    service: std::sync::Arc<Service>,
}

impl tower_service::Service<Name> for ServiceResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _name: Name) -> Self::Future {
        let service = self.service.clone();
        Box::pin(async move {
            let addrs = service_addrs(&service).await?;
            Ok(addrs
                .into_iter()
                .map(|ip| SocketAddr::new(ip, service.port))
                .collect::<Vec<_>>()
                .into_iter())
        })
    }
}

/// A pooled client for one service.
pub type UpstreamClient =
    Client<HttpsConnector<HttpConnector<ServiceResolver>>, super::reply::ProxyBody>;

/// Clients indexed like `Config::services` (`None` for non-HTTP services):
/// a pooled HTTP/1.1 + HTTP/2 client, and an HTTP/1.1-only one for
/// protocol upgrades.
pub struct UpstreamClients(Vec<Option<(UpstreamClient, UpstreamClient)>>);

impl UpstreamClients {
    /// Builds a client for every HTTP service; a Kubernetes service with a
    /// client certificate presents it from `vault`
    /// ([`super::client_cert::VaultClientCert`]).
    ///
    /// # Errors
    /// [`TlsError`] when a service's `upstream_ca` cannot be read.
    pub fn new(cfg: &Config, vault: &std::sync::Arc<VaultCache>) -> Result<Self, TlsError> {
        let mut out = Vec::with_capacity(cfg.services.len());
        for s in &cfg.services {
            if !s.protocol().is_http() {
                out.push(None);
                continue;
            }
            let client_cert = s.kube().and_then(|k| k.client_cert.clone()).map(|names| {
                let resolver = super::client_cert::VaultClientCert::new(vault.clone(), names);
                std::sync::Arc::new(resolver) as _
            });
            let tls = upstream_client_config_with(s.upstream_ca.as_deref(), client_cert)?;
            let mut http = HttpConnector::new_with_resolver(ServiceResolver {
                service: std::sync::Arc::new(s.clone()),
            });
            http.enforce_http(false);
            http.set_nodelay(true);
            http.set_connect_timeout(Some(std::time::Duration::from_secs(10)));
            let both = HttpsConnectorBuilder::new()
                .with_tls_config(tls.clone())
                .https_or_http()
                .enable_http1()
                .enable_http2()
                .wrap_connector(http.clone());
            let h1 = HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http()
                .enable_http1()
                .wrap_connector(http);
            let client = |c| Client::builder(TokioExecutor::new()).build(c);
            out.push(Some((client(both), client(h1))));
        }
        Ok(Self(out))
    }

    /// The client of service `idx`: HTTP/1.1-only when `upgrade` (a
    /// protocol upgrade cannot run over HTTP/2).
    pub fn get(&self, idx: usize, upgrade: bool) -> Option<&UpstreamClient> {
        let (pooled, h1) = self.0.get(idx)?.as_ref()?;
        Some(if upgrade { h1 } else { pooled })
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus `Proxy-Connection`, removed in
/// both directions along with any header named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
}

/// Re-targets the request at the service's origin: absolute URI with the
/// service's scheme, host and port; `Host` rewritten to match; HTTP/1.1 on
/// the wire unless ALPN picks h2.
pub fn retarget(parts: &mut Parts, service: &Service) -> Result<(), hyper::http::Error> {
    let tls = service.protocol().http_tls() == Some(true);
    let (scheme, default_port) = if tls { ("https", 443) } else { ("http", 80) };
    let host = if service.host.contains(':') {
        format!("[{}]", service.host)
    } else {
        service.host.clone()
    };
    let authority = if service.port == default_port {
        host
    } else {
        format!("{host}:{}", service.port)
    };
    let pq = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    parts.uri = Uri::builder()
        .scheme(scheme)
        .authority(authority.as_str())
        .path_and_query(pq)
        .build()?;
    parts.version = Version::HTTP_11;
    // `TE: trailers` is the one hop-by-hop value that must travel on: it
    // says the client reads trailers (gRPC requires it; RFC 9113 §8.2.2
    // allows exactly this value in HTTP/2).
    let trailers = parts.headers.get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    });
    strip_hop_by_hop(&mut parts.headers);
    if trailers {
        parts
            .headers
            .insert(header::TE, header::HeaderValue::from_static("trailers"));
    }
    parts
        .headers
        .insert(header::HOST, header::HeaderValue::from_str(&authority)?);
    Ok(())
}
