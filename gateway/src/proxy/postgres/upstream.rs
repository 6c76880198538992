//! Logging in to the real PostgreSQL server with the real credential
//! (protocol §55.2.1, §55.3): TLS per `upstream_tls` (DESIGN.md §4 "TLS"),
//! then the authentication exchange of [`super::upstream_auth`], then the
//! messages up to the first `ReadyForQuery`. Key data, parameters and
//! `ReadyForQuery` count only after `AuthenticationOk`.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::BytesMut;
use postgres_protocol::message::{backend::Message as Backend, frontend};
use rustls::pki_types::ServerName;
use tokio::{io::AsyncWriteExt, net::TcpStream};
use tokio_rustls::TlsConnector;

pub use super::upstream_auth::UpstreamError;
use super::{
    codec::{Message, Reader},
    startup::StartupMessage,
    upstream_auth::{Auth, Channel, Login},
    BoxIo,
};
use crate::{
    config::{Service, UpstreamTls},
    intercept::resolver::service_addrs,
    tls::upstream_client_config,
    vault::Secret,
};

/// How long connecting and logging in upstream may take.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(15);

/// A logged-in upstream connection.
pub struct Upstream {
    pub reader: Reader<BoxIo>,
    pub addr: SocketAddr,
    /// The backend's (process id, secret key), for cancels.
    pub backend_key: (i32, i32),
    /// `ParameterStatus` messages to relay to the agent.
    pub parameter_status: Vec<Message>,
    /// Transaction status of the first `ReadyForQuery`.
    pub tx_status: u8,
}

/// Connects and logs in as `credential.user` with `secret`, forwarding the
/// agent's start-up parameters except `user` and protocol options.
///
/// # Errors
/// [`UpstreamError`] with the SQLSTATE for the agent.
pub async fn connect(
    service: &Service,
    startup: &StartupMessage,
    secret: &Secret,
) -> Result<Upstream, UpstreamError> {
    tokio::time::timeout(LOGIN_TIMEOUT, login(service, startup, secret))
        .await
        .map_err(|_| {
            UpstreamError::Unreachable(format!(
                "{}:{} (login timed out)",
                service.host, service.port
            ))
        })?
}

async fn dial(service: &Service) -> Result<(TcpStream, SocketAddr), UpstreamError> {
    let addrs = service_addrs(service).await.map_err(|e| {
        UpstreamError::Unreachable(format!("{}:{} ({e})", service.host, service.port))
    })?;
    let mut last = String::from("no address");
    for ip in addrs {
        let addr = SocketAddr::new(ip, service.port);
        match TcpStream::connect(addr).await {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok((s, addr));
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(UpstreamError::Unreachable(format!(
        "{}:{} ({last})",
        service.host, service.port
    )))
}

/// Asks for TLS per `upstream_tls` and says what the connection proved.
async fn secure(service: &Service, mut tcp: TcpStream) -> Result<(BoxIo, Channel), UpstreamError> {
    if upstream_tls(service) == UpstreamTls::Disable {
        return Ok((Box::new(tcp), Channel::Plain { explicit: true }));
    }
    let mut buf = BytesMut::new();
    frontend::ssl_request(&mut buf);
    tcp.write_all(&buf)
        .await
        .map_err(|e| UpstreamError::Unreachable(e.to_string()))?;
    let mut answer = [0u8; 1];
    tokio::io::AsyncReadExt::read_exact(&mut tcp, &mut answer)
        .await
        .map_err(|e| UpstreamError::Unreachable(e.to_string()))?;
    match (answer[0], upstream_tls(service)) {
        (b'N', UpstreamTls::Prefer) => {
            return Ok((Box::new(tcp), Channel::Plain { explicit: false }))
        }
        (b'N', _) => {
            return Err(UpstreamError::Tls(
                "server does not support TLS, and upstream_tls requires it".into(),
            ))
        }
        (b'S', _) => {}
        _ => {
            return Err(UpstreamError::Protocol(
                "unexpected answer to SSLRequest".into(),
            ))
        }
    }
    let verified = upstream_tls(service) == UpstreamTls::VerifyFull;
    let config = if verified {
        upstream_client_config(service.upstream_ca.as_deref())
            .map_err(|e| UpstreamError::Tls(e.to_string()))?
    } else {
        no_verification_config()
    };
    let name = ServerName::try_from(service.host.clone())
        .map_err(|e| UpstreamError::Tls(e.to_string()))?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| UpstreamError::Tls(e.to_string()))?;
    let cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|c| c.as_ref());
    let channel = Channel::tls(verified, cert);
    Ok((Box::new(tls), channel))
}

async fn login(
    service: &Service,
    startup: &StartupMessage,
    secret: &Secret,
) -> Result<Upstream, UpstreamError> {
    let (tcp, addr) = dial(service).await?;
    let (io, channel) = secure(service, tcp).await?;
    let mut reader = Reader::new(io, BytesMut::new());
    let user = service.sql().map(|s| s.user.as_str()).unwrap_or_default();
    let mut params: Vec<(&str, &str)> = vec![("user", user)];
    params.extend(
        startup
            .params
            .iter()
            .filter(|(k, _)| k != "user" && !k.starts_with("_pq_."))
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    if startup.get("database").is_none() {
        // libpq defaults the database to the user name the agent gave.
        params.push(("database", startup.get("user").unwrap_or(user)));
    }
    let mut out = BytesMut::new();
    frontend::startup_message(params.iter().copied(), &mut out)
        .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
    send(&mut reader, &mut out).await?;

    let upstream = format!("{}:{}", service.host, service.port);
    let login = Login {
        channel: &channel,
        user,
        secret: secret.expose(),
        upstream: &upstream,
    };
    let mut auth = Auth::Start;
    let mut backend_key = (0, 0);
    let mut parameter_status = Vec::new();
    loop {
        let msg = reader.message().await?;
        let authenticated = matches!(auth, Auth::Done);
        match msg.tag {
            b'R' => {
                let (next, mut reply) = auth.step(parse_backend(&msg)?, &login)?;
                auth = next;
                if !reply.is_empty() {
                    send(&mut reader, &mut reply).await?;
                }
            }
            b'K' if authenticated => {
                if let Backend::BackendKeyData(body) = parse_backend(&msg)? {
                    backend_key = (body.process_id(), body.secret_key());
                }
            }
            b'S' if authenticated => parameter_status.push(msg),
            b'N' => {}
            b'E' => {
                let (code, message) = error_fields(&msg);
                return Err(UpstreamError::Server(code, message));
            }
            b'Z' if authenticated => {
                let tx_status = msg.body.first().copied().unwrap_or(b'I');
                return Ok(Upstream {
                    reader,
                    addr,
                    backend_key,
                    parameter_status,
                    tx_status,
                });
            }
            other => {
                return Err(UpstreamError::Protocol(format!(
                    "unexpected message {:?} during login",
                    other as char
                )))
            }
        }
    }
}

async fn send(reader: &mut Reader<BoxIo>, out: &mut BytesMut) -> Result<(), UpstreamError> {
    reader
        .get_mut()
        .write_all(out)
        .await
        .map_err(|e| UpstreamError::Unreachable(e.to_string()))?;
    out.clear();
    Ok(())
}

fn parse_backend(msg: &Message) -> Result<Backend, UpstreamError> {
    let mut buf = BytesMut::new();
    msg.encode(&mut buf);
    Backend::parse(&mut buf)
        .map_err(|e| UpstreamError::Protocol(e.to_string()))?
        .ok_or_else(|| UpstreamError::Protocol("truncated message".into()))
}

/// SQLSTATE (`C`) and message (`M`) fields of an ErrorResponse body.
pub fn error_fields(msg: &Message) -> (String, String) {
    let (mut code, mut message) = (String::from("08006"), String::new());
    for field in msg.body.split(|b| *b == 0) {
        if let Some((&kind, value)) = field.split_first() {
            let value = String::from_utf8_lossy(value).into_owned();
            match kind {
                b'C' => code = value,
                b'M' => message = value,
                _ => {}
            }
        }
    }
    (code, message)
}

/// `sslmode=prefer`/`require` semantics: encrypt, but do not verify the
/// certificate (as libpq does); `verify-full` uses the verifying config.
fn no_verification_config() -> rustls::ClientConfig {
    #[derive(Debug)]
    struct NoVerify(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for NoVerify {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &rustls::pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &rustls::pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
        .with_no_client_auth()
}

/// The service's `upstream_tls` (`verify-full` for a service of another
/// protocol, which never reaches here).
fn upstream_tls(service: &Service) -> UpstreamTls {
    service
        .sql()
        .map_or(UpstreamTls::VerifyFull, |s| s.upstream_tls)
}
