//! `[gateway]` (DESIGN.md §4 "Config"): where Sluice listens, keeps its
//! state and logs, reaches Redis, and its timeouts and limits.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use super::Egress;
use crate::recorder::RecorderOptions;

/// `[gateway]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gateway {
    /// Where redirected connections land (IPv4 loopback). Sluice also listens
    /// on `[::1]` at the same port for IPv6 agents.
    #[serde(default = "defaults::listen")]
    pub listen: SocketAddr,
    /// Holds `vault.sealed` and `ca/`.
    #[serde(default = "defaults::state_dir")]
    pub state_dir: PathBuf,
    /// Holds `sessions/*.jsonl` and `audit.jsonl`.
    #[serde(default = "defaults::log_dir")]
    pub log_dir: PathBuf,
    /// Redis URL, `redis://[user:password@]host:port/db`.
    #[serde(default = "defaults::redis_url")]
    pub redis_url: String,
    /// File holding the Redis password (`requirepass` or the ACL user's), so
    /// it never appears on a command line. `$CREDENTIALS_DIRECTORY/redis.password`
    /// (systemd `LoadCredential=`) wins when present.
    #[serde(default)]
    pub redis_password_file: Option<PathBuf>,
    /// File holding the 32-byte vault key (mode 0600). When
    /// `$CREDENTIALS_DIRECTORY/vault.key` exists (systemd `LoadCredential=`),
    /// that file wins.
    #[serde(default = "defaults::vault_key")]
    pub vault_key: PathBuf,
    /// What agents may reach besides services.
    #[serde(default)]
    pub egress: Egress,
    /// With `egress = "deny"`: destinations agents may still reach untouched,
    /// as `host:port`, `CIDR:port` or `host:*`.
    #[serde(default)]
    pub egress_allow: Vec<String>,
    /// How long a held operation waits for a JIT approval.
    #[serde(
        default = "defaults::approval_timeout",
        with = "humantime_serde_compat"
    )]
    pub approval_timeout: Duration,
    /// How long an upstream may take to send its response head before the
    /// agent gets a 504.
    #[serde(
        default = "defaults::upstream_timeout",
        with = "humantime_serde_compat"
    )]
    pub upstream_timeout: Duration,
    /// Largest `application/json` response body (bytes) that is buffered to
    /// mask fields; a larger one is refused with 502, never passed unmasked.
    #[serde(default = "defaults::json_mask_max_bytes")]
    pub json_mask_max_bytes: usize,
    /// Optional admin listener serving Prometheus metrics at `/metrics`.
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
    /// bpffs directory for pinned maps and links. Extension of the contract:
    /// lets two gateways (or tests) on one host keep separate pins.
    #[serde(default = "defaults::bpf_dir")]
    pub bpf_dir: PathBuf,
    /// `audit.jsonl` is renamed to `audit.jsonl.<UTC time>` and started
    /// afresh before a line would take it past this many bytes (at least 1).
    #[serde(default = "defaults::audit_rotate_bytes")]
    pub audit_rotate_bytes: u64,
}

impl Gateway {
    /// How the recorder writes (`audit_rotate_bytes`).
    pub fn recorder_options(&self) -> RecorderOptions {
        RecorderOptions {
            audit_rotate_bytes: self.audit_rotate_bytes,
        }
    }

    /// `redis_url` with the password from `redis_password_file` (or the
    /// systemd credential) inserted, percent-encoded.
    ///
    /// # Errors
    /// A one-line message naming the file that cannot be read.
    pub fn redis_url_with_password(&self) -> Result<zeroize::Zeroizing<String>, String> {
        let credential = std::env::var_os("CREDENTIALS_DIRECTORY")
            .map(|d| Path::new(&d).join("redis.password"))
            .filter(|p| p.exists());
        let Some(file) = credential.or_else(|| self.redis_password_file.clone()) else {
            return Ok(zeroize::Zeroizing::new(self.redis_url.clone()));
        };
        let password = zeroize::Zeroizing::new(std::fs::read_to_string(&file).map_err(|e| {
            format!(
                "gateway.redis_password_file: cannot read {}: {e}",
                file.display()
            )
        })?);
        let password = password.trim_end_matches(['\n', '\r']);
        let Some((scheme, rest)) = self.redis_url.split_once("://") else {
            return Err("gateway.redis_url: expected redis://host:port/db".into());
        };
        let (userinfo, host) = rest.rsplit_once('@').unwrap_or(("", rest));
        let user = userinfo.split(':').next().unwrap_or("");
        let encoded =
            percent_encoding::utf8_percent_encode(password, percent_encoding::NON_ALPHANUMERIC);
        Ok(zeroize::Zeroizing::new(format!(
            "{scheme}://{user}:{encoded}@{host}"
        )))
    }
}

pub(super) mod defaults {
    use super::*;
    pub fn listen() -> SocketAddr {
        "127.0.0.1:15001".parse().unwrap()
    }
    pub fn state_dir() -> PathBuf {
        "/var/lib/sluice".into()
    }
    pub fn log_dir() -> PathBuf {
        "/var/log/sluice".into()
    }
    pub fn redis_url() -> String {
        "redis://127.0.0.1:6379/0".into()
    }
    pub fn vault_key() -> PathBuf {
        "/etc/sluice/vault.key".into()
    }
    pub fn approval_timeout() -> Duration {
        Duration::from_secs(300)
    }
    pub fn upstream_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn json_mask_max_bytes() -> usize {
        8 << 20
    }
    pub fn bpf_dir() -> PathBuf {
        "/sys/fs/bpf/sluice".into()
    }
    pub fn audit_rotate_bytes() -> u64 {
        crate::recorder::DEFAULT_ROTATE_BYTES
    }
    pub(in crate::config) fn gateway() -> Gateway {
        toml::from_str("").expect("gateway defaults")
    }
}

/// `approval_timeout = "5m"`: humantime strings.
pub(in crate::config) mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_rotate_bytes_sets_the_recorder_options() {
        let gw: Gateway = toml::from_str("audit_rotate_bytes = 1048576\n").unwrap();
        assert_eq!(gw.recorder_options().audit_rotate_bytes, 1 << 20);
        assert_eq!(
            defaults::gateway().recorder_options().audit_rotate_bytes,
            100 << 20
        );
    }
}
