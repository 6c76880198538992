//! `[[notify]]` (DESIGN.md §9): where notifications go, for which events,
//! validated at config load; [`crate::notify`] sends them.
use std::{net::IpAddr, path::PathBuf};

use serde::Deserialize;

use crate::recorder::EVENT_NAMES;

/// `format = …`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Slack incoming-webhook JSON (`{"text": …}`).
    Slack,
    /// The record line's fields, signed when `secret` is set.
    Json,
}

/// One `[[notify]]` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    url: String,
    format: Format,
    events: Vec<String>,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    ca: Option<PathBuf>,
    #[serde(default)]
    resolve: Vec<IpAddr>,
}

/// A validated `[[notify]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The webhook URL as written (for logs; it may hold a path token, so
    /// it is never logged whole).
    pub url: hyper::Uri,
    pub https: bool,
    pub host: String,
    pub port: u16,
    pub format: Format,
    pub events: Vec<String>,
    /// Vault secret keying `X-Sluice-Signature` of `json` messages.
    pub secret: Option<String>,
    /// CA to trust for the target's TLS instead of the system roots.
    pub ca: Option<PathBuf>,
    /// Pinned addresses instead of DNS.
    pub resolve: Vec<IpAddr>,
}

impl RawTarget {
    /// Validates the entry.
    ///
    /// # Errors
    /// `(field, message)`: the key to fix and why.
    pub fn validate(self) -> Result<Target, (&'static str, String)> {
        let url: hyper::Uri = self
            .url
            .parse()
            .map_err(|e| ("url", format!("not a URL ({e})")))?;
        let https = match url.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err((
                    "url",
                    "must start with https:// (or http:// on loopback)".into(),
                ))
            }
        };
        let host = url
            .host()
            .ok_or(("url", "names no host".to_string()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
        let loopback = |ip: &IpAddr| ip.is_loopback();
        let on_loopback = match host.parse::<IpAddr>() {
            Ok(ip) => ip.is_loopback(),
            Err(_) => !self.resolve.is_empty() && self.resolve.iter().all(loopback),
        };
        if !https && !on_loopback {
            return Err((
                "url",
                "http:// targets are accepted only on loopback; use https://".into(),
            ));
        }
        if let Some(bad) = self
            .events
            .iter()
            .find(|e| !EVENT_NAMES.contains(&e.as_str()))
        {
            return Err((
                "events",
                format!(
                    "{bad:?} is no event; choose from {}",
                    EVENT_NAMES.join(", ")
                ),
            ));
        }
        if self.events.is_empty() {
            return Err((
                "events",
                "choose at least one event, e.g. [\"approval_wait\"]".into(),
            ));
        }
        Ok(Target {
            url,
            https,
            host,
            port,
            format: self.format,
            events: self.events,
            secret: self.secret,
            ca: self.ca,
            resolve: self.resolve,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(url: &str, resolve: &[&str]) -> RawTarget {
        RawTarget {
            url: url.into(),
            format: Format::Json,
            events: vec!["approval_wait".into()],
            secret: None,
            ca: None,
            resolve: resolve.iter().map(|r| r.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn http_targets_only_on_loopback() {
        assert!(raw("https://hooks.example/T0/B0", &[]).validate().is_ok());
        assert!(raw("http://127.0.0.9:8080/hook", &[]).validate().is_ok());
        assert!(raw("http://sink.test/hook", &["127.0.0.9"])
            .validate()
            .is_ok());
        let (field, _) = raw("http://hooks.example/hook", &[])
            .validate()
            .unwrap_err();
        assert_eq!(field, "url");
        assert!(raw("http://sink.test/x", &["10.0.0.1"]).validate().is_err());
        assert!(raw("ftp://x/y", &[]).validate().is_err());
    }

    #[test]
    fn unknown_events_are_refused_by_name() {
        let mut t = raw("https://h/x", &[]);
        t.events = vec!["approval_waits".into()];
        let (field, msg) = t.validate().unwrap_err();
        assert_eq!(field, "events");
        assert!(msg.contains("approval_waits"), "{msg}");
    }
}
