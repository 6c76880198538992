//! `[[oidc]]` issuers and the agents' `oidc` bindings (DESIGN.md §7):
//! which identity providers' JWTs Sluice accepts, for which audience, and
//! which agent may present which subjects. [`crate::identity`] fetches the
//! keys and checks the tokens; the console (§9) signs people in through an
//! issuer that also has `client_id` and `client_secret`.
use std::{net::IpAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

use super::gateway::humantime_serde_compat;

/// The default `leeway`: clock skew allowed on `exp` and `nbf`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// The largest `leeway` accepted: a "small" allowance, not a longer token life.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);

/// One `[[oidc]]` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIssuer {
    name: String,
    issuer: String,
    audience: String,
    #[serde(default)]
    ca: Option<PathBuf>,
    #[serde(default = "default_groups_claim")]
    groups_claim: String,
    #[serde(default)]
    resolve: Vec<IpAddr>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    client_secret: Option<String>,
    #[serde(default = "default_leeway", with = "humantime_serde_compat")]
    leeway: Duration,
}

fn default_groups_claim() -> String {
    "groups".into()
}

fn default_leeway() -> Duration {
    DEFAULT_LEEWAY
}

/// A validated `[[oidc]]` issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issuer {
    /// What agents' bindings and `[console] oidc` refer to.
    pub name: String,
    /// The issuer URL exactly as the tokens' `iss` carries it.
    pub issuer: String,
    /// `<issuer>/.well-known/openid-configuration` (OpenID Connect
    /// Discovery 1.0 §4).
    pub discovery_url: hyper::Uri,
    /// The issuer's host (DNS name or address, without brackets).
    pub host: String,
    /// The issuer's port (443 unless the URL names one).
    pub port: u16,
    /// The `aud` every accepted token must carry.
    pub audience: String,
    /// CA (PEM) to trust for the issuer's TLS instead of the system roots.
    pub ca: Option<PathBuf>,
    /// The claim holding the caller's groups (a string array, or a string).
    pub groups_claim: String,
    /// Pinned addresses for `host` instead of DNS (like a service's `resolve`).
    pub resolve: Vec<IpAddr>,
    /// The console's OAuth 2.0 client (DESIGN.md §9), when it signs people in here.
    pub client: Option<Client>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
}

/// `client_id` and `client_secret`: the console's registration at the issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub id: String,
    /// The vault secret holding the client secret (never the value itself).
    pub secret: String,
}

impl RawIssuer {
    /// The entry's `name`, for error keys.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Validates the entry.
    ///
    /// # Errors
    /// `(field, message)`: the key to fix and why.
    pub fn validate(self) -> Result<Issuer, (&'static str, String)> {
        let trimmed = self.issuer.trim_end_matches('/');
        let discovery_url: hyper::Uri = format!("{trimmed}/.well-known/openid-configuration")
            .parse()
            .map_err(|e| ("issuer", format!("not a URL ({e})")))?;
        if discovery_url.scheme_str() != Some("https") {
            return Err((
                "issuer",
                "must be an https:// URL (its keys are fetched over TLS)".into(),
            ));
        }
        if discovery_url.query().is_some() || self.issuer.contains('#') {
            return Err(("issuer", "must have no query or fragment".into()));
        }
        let host = discovery_url
            .host()
            .ok_or(("issuer", "names no host".to_string()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = discovery_url.port_u16().unwrap_or(443);
        if self.audience.is_empty() {
            return Err((
                "audience",
                "must name the audience tokens are minted for, e.g. \"sluice\"".into(),
            ));
        }
        if self.groups_claim.is_empty() {
            return Err(("groups_claim", "must name a claim, e.g. \"groups\"".into()));
        }
        if self.leeway > MAX_LEEWAY {
            return Err((
                "leeway",
                format!(
                    "at most {}s; it only allows for clock skew",
                    MAX_LEEWAY.as_secs()
                ),
            ));
        }
        let client = match (self.client_id, self.client_secret) {
            (None, None) => None,
            (Some(id), Some(secret)) if !id.is_empty() && !secret.is_empty() => {
                Some(Client { id, secret })
            }
            (Some(_), None) => {
                return Err((
                    "client_secret",
                    "client_id needs client_secret (the name of a vault secret)".into(),
                ))
            }
            (None, Some(_)) => return Err(("client_id", "client_secret needs client_id".into())),
            _ => {
                return Err((
                    "client_id",
                    "client_id and client_secret must not be empty".into(),
                ))
            }
        };
        Ok(Issuer {
            name: self.name,
            issuer: self.issuer,
            discovery_url,
            host,
            port,
            audience: self.audience,
            ca: self.ca,
            groups_claim: self.groups_claim,
            resolve: self.resolve,
            client,
            leeway: self.leeway,
        })
    }
}

/// `oidc = { issuer = "ci", subject = "repo:acme/app:*" }` on an `[[agent]]`:
/// this agent's processes may present JWTs from `issuer` whose `sub` matches
/// the glob `subject` (`*` any run of characters, `?` one).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    /// The `[[oidc]]` entry's `name`.
    pub issuer: String,
    /// Glob on the token's `sub`.
    pub subject: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> RawIssuer {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn design_example_parses_with_defaults() {
        let i = raw("name='ci'\nissuer='https://token.actions.example'\naudience='sluice'\n")
            .validate()
            .unwrap();
        assert_eq!(i.groups_claim, "groups");
        assert_eq!(i.port, 443);
        assert_eq!(i.leeway, DEFAULT_LEEWAY);
        assert_eq!(
            i.discovery_url.to_string(),
            "https://token.actions.example/.well-known/openid-configuration"
        );
        assert_eq!(i.client, None);
    }

    #[test]
    fn bad_entries_name_the_key() {
        for (text, key) in [
            ("issuer='http://idp.test'\naudience='a'", "issuer"),
            ("issuer='https://idp.test'\naudience=''", "audience"),
            (
                "issuer='https://idp.test'\naudience='a'\nleeway='1h'",
                "leeway",
            ),
            (
                "issuer='https://idp.test'\naudience='a'\nclient_id='c'",
                "client_secret",
            ),
            (
                "issuer='https://idp.test'\naudience='a'\nclient_secret='s'",
                "client_id",
            ),
        ] {
            let (field, _) = raw(&format!("name='x'\n{text}\n")).validate().unwrap_err();
            assert_eq!(field, key, "{text}");
        }
    }

    #[test]
    fn console_client_and_resolve() {
        let i = raw(
            "name='corp'\nissuer='https://idp.test:8443/realms/x'\naudience='sluice'\n\
             resolve=['127.0.0.1']\nclient_id='console'\nclient_secret='corp-client'\n",
        )
        .validate()
        .unwrap();
        assert_eq!((i.host.as_str(), i.port), ("idp.test", 8443));
        assert_eq!(i.client.unwrap().secret, "corp-client");
        assert_eq!(i.resolve.len(), 1);
    }
}
