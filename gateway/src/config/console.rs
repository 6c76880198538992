//! `[console]` and the services' `approvers` (DESIGN.md §9 "Console"):
//! where the web console listens, which `[[oidc]]` issuer signs people in,
//! and which groups administer it, validated at config load;
//! [`crate::console`] serves it.
use std::{net::SocketAddr, path::PathBuf};

use serde::Deserialize;

/// `[console]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConsole {
    listen: SocketAddr,
    oidc: String,
    #[serde(default)]
    admins: Vec<String>,
    #[serde(default)]
    cert: Option<PathBuf>,
    #[serde(default)]
    key: Option<PathBuf>,
    #[serde(default)]
    url: Option<String>,
}

/// A validated `[console]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Console {
    /// Where the console serves HTTPS.
    pub listen: SocketAddr,
    /// The `[[oidc]]` entry people sign in with (its `client_id` and
    /// `client_secret`).
    pub oidc: String,
    /// Groups whose members see and do everything (`"group:NAME"` → `NAME`).
    pub admins: Vec<String>,
    /// PEM certificate chain and key to serve; without them a certificate
    /// for the host of [`Console::url`] is minted by the local CA.
    pub cert: Option<(PathBuf, PathBuf)>,
    /// The console's address as people's browsers reach it, without a
    /// trailing `/` (`https://<listen>` unless `url` is set): the OIDC
    /// redirect URI is `<url>/callback`, and notifications link here.
    pub url: hyper::Uri,
}

impl Console {
    /// The host name or IP literal of [`Console::url`] (IPv6 without
    /// brackets), for the minted certificate.
    pub fn host(&self) -> &str {
        self.url
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
    }

    /// `url` followed by `path` (which starts with `/`).
    pub fn link(&self, path: &str) -> String {
        format!("{}{path}", self.url.to_string().trim_end_matches('/'))
    }
}

impl RawConsole {
    /// Validates the section.
    ///
    /// # Errors
    /// `(field, message)`: the key below `console` to fix and why.
    pub fn validate(self) -> Result<Console, (String, String)> {
        if self.listen.port() == 0 {
            return Err(("listen".into(), "needs a port, e.g. 127.0.0.1:9443".into()));
        }
        if self.oidc.is_empty() {
            return Err((
                "oidc".into(),
                "names the [[oidc]] entry people sign in with".into(),
            ));
        }
        let admins = groups("admins", &self.admins)?;
        let cert = match (self.cert, self.key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) => return Err(("key".into(), "set key together with cert".into())),
            (None, Some(_)) => return Err(("cert".into(), "set cert together with key".into())),
        };
        let url = self
            .url
            .unwrap_or_else(|| format!("https://{}", self.listen));
        let parsed: hyper::Uri = url
            .parse()
            .map_err(|e| ("url".to_string(), format!("not a URL ({e})")))?;
        if parsed.scheme_str() != Some("https") || parsed.host().is_none() {
            return Err((
                "url".into(),
                format!("must be https://host[:port], got {url:?}"),
            ));
        }
        if parsed.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err((
                "url".into(),
                "the console is served at the root: give no path".into(),
            ));
        }
        Ok(Console {
            listen: self.listen,
            oidc: self.oidc,
            admins,
            cert,
            url: parsed,
        })
    }
}

/// Checks that `[console] oidc` names an `[[oidc]]` entry with the
/// console's client registration (`client_id`, `client_secret`).
///
/// # Errors
/// `("console.oidc", message)` otherwise.
pub fn check_issuer(
    console: &Console,
    issuers: &[super::oidc::Issuer],
) -> Result<(), (String, String)> {
    let fail = |message: String| Err(("console.oidc".to_string(), message));
    match issuers.iter().find(|i| i.name == console.oidc) {
        None => fail(format!("no [[oidc]] entry named {:?}", console.oidc)),
        Some(i) if i.client.is_none() => fail(format!(
            "the [[oidc]] entry {:?} needs client_id and client_secret (a vault secret) for the console to sign people in",
            console.oidc
        )),
        Some(_) => Ok(()),
    }
}

/// Parses `["group:NAME", …]` (the `admins` of `[console]`, a service's
/// `approvers`) into the group names.
///
/// # Errors
/// `(key[i], message)` for an entry that is not `group:NAME`.
pub fn groups(key: &str, entries: &[String]) -> Result<Vec<String>, (String, String)> {
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| match e.strip_prefix("group:") {
            Some(name) if !name.is_empty() && !name.chars().any(char::is_whitespace) => {
                Ok(name.to_string())
            }
            _ => Err((
                format!("{key}[{i}]"),
                format!("expected \"group:NAME\", got {e:?}"),
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Console, (String, String)> {
        toml::from_str::<RawConsole>(text).unwrap().validate()
    }

    #[test]
    fn design_example_parses_and_links_to_the_listen_address() {
        let c = parse("listen = '127.0.0.1:9443'\noidc = 'corp'\nadmins = ['group:security']\n")
            .unwrap();
        assert_eq!(c.admins, ["security"]);
        assert_eq!(c.host(), "127.0.0.1");
        assert_eq!(c.link("/callback"), "https://127.0.0.1:9443/callback");
        assert!(c.cert.is_none());
        let named =
            parse("listen = '127.0.0.1:9443'\noidc = 'corp'\nurl = 'https://console.example/'\n")
                .unwrap();
        assert_eq!(
            named.link("/approvals"),
            "https://console.example/approvals"
        );
        assert_eq!(named.host(), "console.example");
    }

    #[test]
    fn each_mistake_names_its_key() {
        for (text, key) in [
            ("listen = '127.0.0.1:0'\noidc = 'corp'", "listen"),
            ("listen = '127.0.0.1:9443'\noidc = ''", "oidc"),
            (
                "listen = '127.0.0.1:9443'\noidc = 'c'\nadmins = ['security']",
                "admins[0]",
            ),
            (
                "listen = '127.0.0.1:9443'\noidc = 'c'\ncert = '/c.pem'",
                "key",
            ),
            (
                "listen = '127.0.0.1:9443'\noidc = 'c'\nurl = 'http://x'",
                "url",
            ),
            (
                "listen = '127.0.0.1:9443'\noidc = 'c'\nurl = 'https://x/console'",
                "url",
            ),
        ] {
            assert_eq!(parse(text).unwrap_err().0, key, "{text}");
        }
    }
}
