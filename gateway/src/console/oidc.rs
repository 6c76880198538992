//! Sign-in with OpenID Connect: the authorization code flow with PKCE
//! (OpenID Connect Core 1.0 §3.1, RFC 7636), through the `openidconnect`
//! crate.
//!
//! [`Issuer::begin`] reads the issuer's discovery document and JWKS
//! (OpenID Connect Discovery 1.0 §4) afresh, so a rotated key is picked up
//! at the next sign-in, and returns the authorization URL with a fresh
//! `state`, `nonce` and PKCE S256 challenge. [`Issuer::finish`] exchanges
//! the code with the PKCE verifier and the client secret, and checks the
//! ID token: signature against the JWKS, `iss`, `aud`, `exp`, and the
//! `nonce` of this sign-in. The groups come from the token's groups claim.
//! Requests to the issuer go over the gateway's own hyper + rustls client,
//! verified against the system roots or the issuer's `ca`, and never
//! follow redirects.
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{
        connect::{
            dns::{GaiResolver, Name},
            HttpConnector,
        },
        Client as HyperClient,
    },
    rt::TokioExecutor,
};
use openidconnect::{
    core::{
        CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreErrorResponseType,
        CoreGenderClaim, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm,
        CoreJwsSigningAlgorithm, CoreProviderMetadata, CoreRevocableToken,
        CoreRevocationErrorResponse, CoreTokenIntrospectionResponse, CoreTokenType,
    },
    AdditionalClaims, AsyncHttpClient, AuthorizationCode, Client, ClientId, ClientSecret,
    CsrfToken, EndpointMaybeSet, EndpointNotSet, EndpointSet, HttpRequest, HttpResponse,
    IdTokenFields, IssuerUrl, Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope,
    StandardErrorResponse, StandardTokenResponse, TokenResponse,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{
    config::oidc, proxy::http::request::error_chain, tls::upstream_client_config, vault::VaultCache,
};

/// The ID token's claims beyond the standard ones, kept whole so the
/// configured groups claim can be read by name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OtherClaims {
    #[serde(flatten)]
    claims: Map<String, Value>,
}
impl AdditionalClaims for OtherClaims {}

type Fields = IdTokenFields<
    OtherClaims,
    openidconnect::EmptyExtraTokenFields,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type Tokens = StandardTokenResponse<Fields, CoreTokenType>;
/// A client built from discovery: authorization endpoint set, token and
/// userinfo endpoints as the provider published them.
type SignInClient = Client<
    OtherClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    Tokens,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// Why a sign-in failed (shown to the person, logged; never a secret).
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    #[error("the issuer's discovery document: {0}")]
    Discovery(String),
    #[error("the code exchange: {0}")]
    Exchange(String),
    #[error("the issuer returned no ID token")]
    NoIdToken,
    #[error("the ID token was refused: {0}")]
    IdToken(String),
    #[error("TLS towards the issuer: {0}")]
    Tls(String),
    #[error("the console's client secret: {0}")]
    ClientSecret(String),
}

/// The issuer people sign in with, as the console uses it.
pub struct Issuer {
    /// `issuer` of the `[[oidc]]` entry.
    url: String,
    client_id: String,
    /// The vault secret holding the client secret, read at each sign-in
    /// (so a rotated secret needs no restart).
    client_secret: String,
    vault: VaultCache,
    /// The claim holding the groups (`groups_claim`).
    groups_claim: String,
    /// `<console url>/callback`.
    redirect: String,
    http: IssuerHttp,
}

/// The HTTP client towards the issuer, as `openidconnect` calls it.
struct IssuerHttp(HyperClient<hyper_rustls::HttpsConnector<HttpConnector<Resolver>>, Full<Bytes>>);

impl<'c> AsyncHttpClient<'c> for IssuerHttp {
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<HttpResponse, Self::Error>> + Send + 'c>,
    >;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let request = hyper::Request::from_parts(parts, Full::new(Bytes::from(body)));
            let response = self
                .0
                .request(request)
                .await
                .map_err(std::io::Error::other)?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(std::io::Error::other)?
                .to_bytes();
            Ok(HttpResponse::from_parts(parts, body.to_vec()))
        })
    }
}

/// Addresses for the issuer's host: the entry's `resolve` when given,
/// else DNS.
#[derive(Clone)]
pub struct Resolver {
    pinned: Vec<IpAddr>,
    system: GaiResolver,
}

impl tower_service::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.system.poll_ready(cx)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        if !self.pinned.is_empty() {
            let addrs: Vec<SocketAddr> = self
                .pinned
                .iter()
                .map(|ip| SocketAddr::new(*ip, 0))
                .collect();
            return Box::pin(std::future::ready(Ok(addrs.into_iter())));
        }
        let lookup = self.system.call(name);
        Box::pin(async move { Ok(lookup.await?.collect::<Vec<_>>().into_iter()) })
    }
}

/// What a sign-in in progress must keep until the callback: the state
/// sent, the nonce the ID token must carry, and the PKCE verifier.
pub struct Pending {
    pub state: CsrfToken,
    nonce: Nonce,
    verifier: PkceCodeVerifier,
}

/// A person as the ID token names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    /// `sub`.
    pub subject: String,
    /// `name` or `email` when the token has one, else `sub`: for display.
    pub name: String,
    /// The groups claim (a list of strings; anything else is no groups).
    pub groups: Vec<String>,
}

impl Issuer {
    /// The `[[oidc]]` entry `issuer` with its console client `client`,
    /// redirecting back to `redirect`: HTTPS verified against the system
    /// roots or the entry's `ca`, its host at the entry's `resolve`
    /// addresses when given, else DNS.
    ///
    /// # Errors
    /// [`SignInError::Tls`] when `ca` cannot be read.
    pub fn new(
        issuer: &oidc::Issuer,
        client: &oidc::Client,
        vault: VaultCache,
        redirect: String,
    ) -> Result<Issuer, SignInError> {
        let tls = upstream_client_config(issuer.ca.as_deref())
            .map_err(|e| SignInError::Tls(e.to_string()))?;
        let mut http = HttpConnector::new_with_resolver(Resolver {
            pinned: issuer.resolve.clone(),
            system: GaiResolver::new(),
        });
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        Ok(Issuer {
            url: issuer.issuer.clone(),
            client_id: client.id.clone(),
            client_secret: client.secret.clone(),
            vault,
            groups_claim: issuer.groups_claim.clone(),
            redirect,
            http: IssuerHttp(HyperClient::builder(TokioExecutor::new()).build(connector)),
        })
    }

    /// The client for the issuer's current discovery document and keys.
    async fn client(&self) -> Result<SignInClient, SignInError> {
        let issuer =
            IssuerUrl::new(self.url.clone()).map_err(|e| SignInError::Discovery(e.to_string()))?;
        let metadata = CoreProviderMetadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| SignInError::Discovery(error_chain(&e)))?;
        let redirect = RedirectUrl::new(self.redirect.clone())
            .map_err(|e| SignInError::Discovery(e.to_string()))?;
        let secret = self
            .vault
            .get(&self.client_secret)
            .map_err(|e| SignInError::ClientSecret(e.to_string()))?
            .ok_or_else(|| {
                SignInError::ClientSecret(format!(
                    "the vault has no secret {:?}; sluice secret put {0}",
                    self.client_secret
                ))
            })?;
        let secret = String::from_utf8(secret.expose().to_vec())
            .map_err(|_| SignInError::ClientSecret("not UTF-8".into()))?;
        Ok(SignInClient::from_provider_metadata(
            metadata,
            ClientId::new(self.client_id.clone()),
            Some(ClientSecret::new(secret)),
        )
        .set_redirect_uri(redirect))
    }

    /// Starts a sign-in: the URL to send the browser to, and what the
    /// callback needs.
    ///
    /// # Errors
    /// [`SignInError::Discovery`] when the issuer cannot be read.
    pub async fn begin(&self) -> Result<(String, Pending), SignInError> {
        let client = self.client().await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state, nonce) = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scope(Scope::new("profile".into()))
            .add_scope(Scope::new("email".into()))
            .add_scope(Scope::new("groups".into()))
            .set_pkce_challenge(challenge)
            .url();
        Ok((
            url.to_string(),
            Pending {
                state,
                nonce,
                verifier,
            },
        ))
    }

    /// Ends a sign-in: exchanges `code` and checks the ID token against
    /// `pending` (its nonce); the caller has already matched the `state`.
    ///
    /// # Errors
    /// [`SignInError`] for a failed exchange or a refused ID token.
    pub async fn finish(&self, code: String, pending: Pending) -> Result<Person, SignInError> {
        let client = self.client().await?;
        let tokens = client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|e| SignInError::Exchange(e.to_string()))?
            .set_pkce_verifier(pending.verifier)
            .request_async(&self.http)
            .await
            .map_err(|e| SignInError::Exchange(error_chain(&e)))?;
        let id_token = tokens.id_token().ok_or(SignInError::NoIdToken)?;
        let claims = id_token
            .claims(&client.id_token_verifier(), &pending.nonce)
            .map_err(|e| SignInError::IdToken(error_chain(&e)))?;
        let subject = claims.subject().to_string();
        let name = claims
            .name()
            .and_then(|n| n.get(None))
            .map(|n| n.to_string())
            .or_else(|| claims.email().map(|e| e.to_string()))
            .unwrap_or_else(|| subject.clone());
        let groups = match claims.additional_claims().claims.get(&self.groups_claim) {
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(|g| g.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        Ok(Person {
            subject,
            name,
            groups,
        })
    }
}
