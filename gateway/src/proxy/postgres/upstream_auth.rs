//! The authentication part of the upstream login (protocol §55.2.1,
//! §55.3) as typed states: which authentication request may come next,
//! and what Sluice answers with the real secret (DESIGN.md §4 "TLS").
//!
//! - A cleartext or md5 password goes only over verified TLS, or where the
//!   service says `upstream_tls = "disable"` explicitly.
//! - SCRAM-SHA-256 (RFC 5802, RFC 7677) via postgres-protocol's client; the
//!   server signature (`v=`) must verify before `AuthenticationOk` counts.
//! - Over TLS, channel binding `tls-server-end-point` (RFC 5929 §4.1) with
//!   `SCRAM-SHA-256-PLUS` when the server offers it; otherwise the `y` flag,
//!   so a server that would have offered it detects the downgrade.
use bytes::BytesMut;
use postgres_protocol::{
    authentication::{md5_hash, sasl},
    message::{backend::Message as Backend, frontend},
};
use sha2::{Digest, Sha256, Sha384, Sha512};

use super::codec::CodecError;

/// Why the upstream login failed; the agent gets the SQLSTATE shown.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("could not connect to upstream {0}")]
    Unreachable(String),
    #[error("upstream TLS: {0}")]
    Tls(String),
    /// The server's own ErrorResponse (SQLSTATE, message).
    #[error("upstream refused the login: {1}")]
    Server(String, String),
    #[error("upstream protocol error: {0}")]
    Protocol(String),
    /// Sluice will not answer the server's authentication request (a
    /// password without verified TLS); the message says why.
    #[error("{0}")]
    Refused(String),
}

impl UpstreamError {
    /// The SQLSTATE to send the agent.
    pub fn sqlstate(&self) -> &str {
        match self {
            UpstreamError::Server(code, _) => code,
            UpstreamError::Protocol(_) => "08P01",
            UpstreamError::Refused(_) => "28000",
            _ => "08006",
        }
    }
}

impl From<CodecError> for UpstreamError {
    fn from(e: CodecError) -> Self {
        UpstreamError::Protocol(e.to_string())
    }
}

/// What the connection to the upstream proved about the server.
pub enum Channel {
    /// No TLS. `explicit` when the service says `upstream_tls = "disable"`;
    /// otherwise the server declined TLS under `prefer`.
    Plain { explicit: bool },
    /// TLS. `verified` when the certificate was checked for the service host
    /// (`verify-full`); `end_point` is the tls-server-end-point binding
    /// data (RFC 5929 §4.1), `None` when the certificate's signature
    /// algorithm names no usable hash.
    Tls {
        verified: bool,
        end_point: Option<Vec<u8>>,
    },
}

impl Channel {
    /// The channel of a TLS connection whose server certificate (DER) is
    /// `cert`.
    pub fn tls(verified: bool, cert: Option<&[u8]>) -> Channel {
        Channel::Tls {
            verified,
            end_point: cert.and_then(tls_server_end_point),
        }
    }

    /// Whether a password may be sent in a form the server can reuse.
    fn may_send_password(&self) -> bool {
        matches!(
            self,
            Channel::Plain { explicit: true } | Channel::Tls { verified: true, .. }
        )
    }

    /// Why a password may not be sent, for the agent and the log.
    fn why_not(&self) -> &'static str {
        match self {
            Channel::Plain { .. } => "the server declined TLS",
            Channel::Tls { .. } => "its TLS certificate was not verified",
        }
    }

    /// The SASL mechanism and channel binding to use, given whether the
    /// server offers `SCRAM-SHA-256-PLUS`.
    fn binding(&self, plus_offered: bool) -> (&'static str, sasl::ChannelBinding) {
        match self {
            Channel::Tls {
                end_point: Some(hash),
                ..
            } if plus_offered => (
                sasl::SCRAM_SHA_256_PLUS,
                sasl::ChannelBinding::tls_server_end_point(hash.clone()),
            ),
            Channel::Tls {
                end_point: Some(_), ..
            } => (sasl::SCRAM_SHA_256, sasl::ChannelBinding::unrequested()),
            _ => (sasl::SCRAM_SHA_256, sasl::ChannelBinding::unsupported()),
        }
    }
}

/// The hash of the server certificate for tls-server-end-point (RFC 5929
/// §4.1): the certificate's signature hash, SHA-256 in place of MD5 and
/// SHA-1. `None` for an unparsable certificate or a signature algorithm
/// without one hash (e.g. Ed25519, RSA-PSS).
pub fn tls_server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let oid = parsed.signature_algorithm.algorithm.to_id_string();
    match oid.as_str() {
        // md5/sha1/sha256 WithRSAEncryption, ecdsa-with-SHA1/SHA256
        "1.2.840.113549.1.1.4"
        | "1.2.840.113549.1.1.5"
        | "1.2.840.113549.1.1.11"
        | "1.2.840.10045.4.1"
        | "1.2.840.10045.4.3.2" => Some(Sha256::digest(cert).to_vec()),
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => Some(Sha384::digest(cert).to_vec()),
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => Some(Sha512::digest(cert).to_vec()),
        _ => None,
    }
}

/// Where the authentication exchange stands.
pub enum Auth {
    /// StartupMessage sent; any authentication request may come.
    Start,
    /// A cleartext or md5 password was sent; only `AuthenticationOk` may
    /// follow.
    PasswordSent,
    /// SASLInitialResponse sent; `AuthenticationSASLContinue` must follow.
    ScramStarted(Box<sasl::ScramSha256>),
    /// SASLResponse sent; `AuthenticationSASLFinal` must follow.
    ScramProved(Box<sasl::ScramSha256>),
    /// The server's SCRAM signature verified; `AuthenticationOk` must follow.
    ScramVerified,
    /// Authenticated: key data, parameters and `ReadyForQuery` follow.
    Done,
}

/// What the exchange needs to answer the server.
pub struct Login<'a> {
    pub channel: &'a Channel,
    /// The upstream user name.
    pub user: &'a str,
    /// The real secret ([`crate::vault::Secret::expose`]); never logged.
    pub secret: &'a [u8],
    /// `host:port`, for messages.
    pub upstream: &'a str,
}

impl Auth {
    /// Takes one authentication request from the server; returns the next
    /// state and the bytes to send back (empty when nothing is due).
    ///
    /// # Errors
    /// [`UpstreamError::Refused`] for a password request the channel does
    /// not allow; [`UpstreamError::Protocol`] for a request out of order, a
    /// SCRAM failure or a wrong server signature.
    pub fn step(self, msg: Backend, login: &Login) -> Result<(Auth, BytesMut), UpstreamError> {
        let mut out = BytesMut::new();
        let next = match (self, msg) {
            (Auth::Start | Auth::PasswordSent | Auth::ScramVerified, Backend::AuthenticationOk) => {
                Auth::Done
            }
            (Auth::Start, Backend::AuthenticationCleartextPassword) => {
                login.check_password_allowed("a cleartext password")?;
                frontend::password_message(login.secret, &mut out).map_err(protocol)?;
                Auth::PasswordSent
            }
            (Auth::Start, Backend::AuthenticationMd5Password(body)) => {
                login.check_password_allowed("an md5 password")?;
                let hashed = md5_hash(login.user.as_bytes(), login.secret, body.salt());
                frontend::password_message(hashed.as_bytes(), &mut out).map_err(protocol)?;
                Auth::PasswordSent
            }
            (Auth::Start, Backend::AuthenticationSasl(body)) => {
                let (mut scram, mut plus) = (false, false);
                let mut mechanisms = body.mechanisms();
                while let Some(m) =
                    fallible_iterator::FallibleIterator::next(&mut mechanisms).map_err(protocol)?
                {
                    scram |= m == sasl::SCRAM_SHA_256;
                    plus |= m == sasl::SCRAM_SHA_256_PLUS;
                }
                if !scram && !plus {
                    return Err(UpstreamError::Protocol(
                        "server offers no SCRAM-SHA-256".into(),
                    ));
                }
                let (mechanism, binding) = login.channel.binding(plus);
                tracing::info!(upstream = login.upstream, mechanism, "upstream SASL login");
                let client = sasl::ScramSha256::new(login.secret, binding);
                frontend::sasl_initial_response(mechanism, client.message(), &mut out)
                    .map_err(protocol)?;
                Auth::ScramStarted(Box::new(client))
            }
            (Auth::ScramStarted(mut client), Backend::AuthenticationSaslContinue(body)) => {
                client.update(body.data()).map_err(protocol)?;
                frontend::sasl_response(client.message(), &mut out).map_err(protocol)?;
                Auth::ScramProved(client)
            }
            (Auth::ScramProved(mut client), Backend::AuthenticationSaslFinal(body)) => {
                client.finish(body.data()).map_err(|_| {
                    UpstreamError::Protocol(format!(
                        "upstream {} sent a wrong SCRAM server signature; it does not know \
                         the password, so Sluice does not trust it",
                        login.upstream
                    ))
                })?;
                Auth::ScramVerified
            }
            (state, msg) => {
                return Err(UpstreamError::Protocol(format!(
                    "upstream {} sent {} while Sluice expected {}; login refused",
                    login.upstream,
                    request_name(&msg),
                    state.expects()
                )))
            }
        };
        Ok((next, out))
    }

    /// What the server may send next, for messages.
    fn expects(&self) -> &'static str {
        match self {
            Auth::Start => "an authentication request",
            Auth::PasswordSent | Auth::ScramVerified => "AuthenticationOk",
            Auth::ScramStarted(_) => "AuthenticationSASLContinue",
            Auth::ScramProved(_) => "AuthenticationSASLFinal (the server signature)",
            Auth::Done => "no further authentication request",
        }
    }
}

impl Login<'_> {
    fn check_password_allowed(&self, what: &str) -> Result<(), UpstreamError> {
        if self.channel.may_send_password() {
            return Ok(());
        }
        let why = self.channel.why_not();
        tracing::warn!(
            upstream = self.upstream,
            "refused to send {what} to an upstream that did not prove who it is ({why})"
        );
        Err(UpstreamError::Refused(format!(
            "upstream {} asks for {what}, but {why}; Sluice sends a password only over \
             verified TLS (upstream_tls = \"verify-full\", the default) or with \
             upstream_tls = \"disable\" set explicitly",
            self.upstream
        )))
    }
}

fn request_name(msg: &Backend) -> &'static str {
    match msg {
        Backend::AuthenticationOk => "AuthenticationOk",
        Backend::AuthenticationCleartextPassword => "a cleartext password request",
        Backend::AuthenticationMd5Password(_) => "an md5 password request",
        Backend::AuthenticationSasl(_) => "AuthenticationSASL",
        Backend::AuthenticationSaslContinue(_) => "AuthenticationSASLContinue",
        Backend::AuthenticationSaslFinal(_) => "AuthenticationSASLFinal",
        _ => "an authentication request Sluice does not speak (use scram-sha-256, md5 or password)",
    }
}

fn protocol(e: std::io::Error) -> UpstreamError {
    UpstreamError::Protocol(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `R` message with `code` and `extra` bytes, parsed.
    fn request(code: i32, extra: &[u8]) -> Backend {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(b"R");
        buf.extend_from_slice(&(8 + extra.len() as i32).to_be_bytes());
        buf.extend_from_slice(&code.to_be_bytes());
        buf.extend_from_slice(extra);
        Backend::parse(&mut buf).unwrap().unwrap()
    }

    fn login(channel: &Channel) -> Login<'_> {
        Login {
            channel,
            user: "billing",
            secret: b"real-password",
            upstream: "db.internal:5432",
        }
    }

    const OK: i32 = 0;
    const CLEARTEXT: i32 = 3;
    const MD5: i32 = 5;
    const SASL: i32 = 10;

    #[test]
    fn passwords_go_only_over_verified_tls_or_explicit_disable() {
        let refused = [
            Channel::Plain { explicit: false },
            Channel::Tls {
                verified: false,
                end_point: None,
            },
        ];
        for channel in &refused {
            for (code, extra) in [(CLEARTEXT, &b""[..]), (MD5, b"salt")] {
                let err = Auth::Start
                    .step(request(code, extra), &login(channel))
                    .err()
                    .expect("refused");
                assert!(matches!(err, UpstreamError::Refused(_)), "{err}");
                assert!(err.to_string().contains("upstream_tls"), "{err}");
                assert!(!err.to_string().contains("real-password"));
            }
        }
        let allowed = [
            Channel::Plain { explicit: true },
            Channel::Tls {
                verified: true,
                end_point: None,
            },
        ];
        for channel in &allowed {
            let (next, out) = Auth::Start
                .step(request(CLEARTEXT, b""), &login(channel))
                .unwrap();
            assert!(matches!(next, Auth::PasswordSent));
            assert!(out.windows(13).any(|w| w == b"real-password"));
        }
    }

    #[test]
    fn authentication_ok_in_the_middle_of_scram_is_refused() {
        let channel = Channel::Plain { explicit: true };
        let (started, _) = Auth::Start
            .step(request(SASL, b"SCRAM-SHA-256\0\0"), &login(&channel))
            .unwrap();
        assert!(matches!(started, Auth::ScramStarted(_)));
        let err = started
            .step(request(OK, b""), &login(&channel))
            .err()
            .expect("refused");
        assert!(err.to_string().contains("AuthenticationOk"), "{err}");
    }

    #[test]
    fn a_second_password_request_after_scram_is_refused() {
        let channel = Channel::Plain { explicit: true };
        let (started, _) = Auth::Start
            .step(request(SASL, b"SCRAM-SHA-256\0\0"), &login(&channel))
            .unwrap();
        assert!(started
            .step(request(CLEARTEXT, b""), &login(&channel))
            .is_err());
    }

    #[test]
    fn plus_is_chosen_over_tls_when_offered() {
        let channel = Channel::Tls {
            verified: false,
            end_point: Some(vec![7; 32]),
        };
        assert_eq!(channel.binding(true).0, sasl::SCRAM_SHA_256_PLUS);
        assert_eq!(channel.binding(false).0, sasl::SCRAM_SHA_256);
        assert_eq!(
            Channel::Plain { explicit: true }.binding(true).0,
            sasl::SCRAM_SHA_256
        );
    }

    #[test]
    fn end_point_of_an_ecdsa_sha256_certificate_is_its_sha256() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["db.internal".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().to_vec();
        assert_eq!(
            tls_server_end_point(&der),
            Some(Sha256::digest(&der).to_vec())
        );
    }
}
