//! The TOML configuration (DESIGN.md §4 "Config"): parsing, defaults and
//! validation.
//!
//! Every validation error names the key to fix, e.g.
//! `service[0] (billing-db).upstream: expected host:port, got "db.internal"`,
//! so the CLI can print it on one line and exit 2.
use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

/// Default config path, overridable with `--config` or `SLUICE_CONFIG`.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/sluice/sluice.toml";

/// A configuration error that names the offending key.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {key}: {message}")]
pub struct ConfigError {
    /// The config file the error is in.
    pub path: String,
    /// The key to fix, e.g. `gateway.listen` or `service[1].upstream`.
    pub key: String,
    /// What is wrong and what is expected.
    pub message: String,
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from.
    pub path: PathBuf,
    pub gateway: Gateway,
    pub agents: Vec<Agent>,
    pub services: Vec<Service>,
    /// `[[notify]]` targets (DESIGN.md §9).
    pub notify: Vec<crate::notify::Target>,
}

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

/// `egress = "deny" | "allow"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Egress {
    /// Agents reach only services, DNS resolvers and `egress_allow`.
    #[default]
    Deny,
    /// Unmatched traffic passes untouched.
    Allow,
}

/// `[[agent]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    pub name: String,
    /// cgroup v2 path relative to the cgroup2 mount, e.g. `sluice/ci-bot`.
    pub cgroup: String,
    /// `user = "NAME"` or a numeric uid: the user `sluice exec` runs the
    /// agent's commands as (DESIGN.md §3). A uid of its own keeps sockets
    /// made outside the cgroup out of the agent's reach (README security notes).
    #[serde(default)]
    pub user: Option<String>,
    /// `redirect = "ADDR:PORT"`: an address of this host that the agent's
    /// containers (other network namespaces, below its cgroup) can reach,
    /// such as a bridge address. Sluice listens there too, and connections
    /// from another network namespace go there; without it they are
    /// refused (DESIGN.md §8). Connections from Sluice's own namespace keep
    /// using `gateway.listen`.
    #[serde(default)]
    pub redirect: Option<std::net::SocketAddr>,
}

/// `protocol = …`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Postgres,
    Https,
    Http,
}

impl Protocol {
    /// HTTP services get the port-wide rule: every agent connection to the
    /// port is redirected and routed by SNI or `Host`.
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Https | Protocol::Http)
    }
}

/// `upstream_tls = …` for PostgreSQL services; `verify-full` by default
/// (DESIGN.md §4 "TLS").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTls {
    Disable,
    Prefer,
    Require,
    #[default]
    VerifyFull,
}

/// `credential = { … }`: which vault secret to inject and how.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// Vault secret name.
    pub secret: String,
    /// PostgreSQL: the upstream user name.
    pub user: Option<String>,
    /// HTTP: the header that carries the secret, e.g. `Authorization`.
    pub header: Option<String>,
    /// HTTP: how the header value is built; `{}` stands for the secret.
    pub format: Option<String>,
    /// HTTP: a query parameter that carries the secret instead of a header.
    pub query: Option<String>,
}

/// One `deny`/`approve` entry: a SQL kind (`"DROP"`) or an HTTP rule.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Rule {
    /// PostgreSQL statement kind, e.g. `DROP`, `DELETE_WITHOUT_WHERE`.
    Sql(String),
    /// HTTP method and path glob (`*` matches any run of characters).
    Http {
        #[serde(default)]
        method: Option<String>,
        path: String,
    },
}

/// `[[service]]`.
#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    pub protocol: Protocol,
    /// Upstream host name (or IP literal) as agents dial it.
    pub host: String,
    /// Upstream port, host byte order.
    pub port: u16,
    /// Pinned upstream addresses (instead of DNS).
    pub resolve: Vec<IpAddr>,
    pub upstream_tls: UpstreamTls,
    pub upstream_ca: Option<PathBuf>,
    pub credential: Credential,
    pub deny: Vec<Rule>,
    pub approve: Vec<Rule>,
    pub mask: Vec<String>,
    /// HTTP: overwrite the secret's exact bytes wherever the upstream
    /// reflects them in a response (headers or body).
    pub echo_guard: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: String,
    protocol: Protocol,
    upstream: String,
    #[serde(default)]
    resolve: Vec<IpAddr>,
    #[serde(default)]
    upstream_tls: UpstreamTls,
    upstream_ca: Option<PathBuf>,
    credential: Credential,
    #[serde(default)]
    deny: Vec<Rule>,
    #[serde(default)]
    approve: Vec<Rule>,
    #[serde(default)]
    mask: Vec<String>,
    #[serde(default)]
    echo_guard: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "defaults::gateway")]
    gateway: Gateway,
    #[serde(default, rename = "agent")]
    agents: Vec<Agent>,
    #[serde(default, rename = "service")]
    services: Vec<RawService>,
    #[serde(default, rename = "notify")]
    notify: Vec<crate::notify::RawTarget>,
}

mod defaults {
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
    pub fn gateway() -> Gateway {
        toml::from_str("").expect("gateway defaults")
    }
}

/// `approval_timeout = "5m"`: humantime strings.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

impl Config {
    /// The config path from `--config`, else `SLUICE_CONFIG`, else
    /// [`DEFAULT_CONFIG_PATH`].
    pub fn resolve_path(flag: Option<&Path>) -> PathBuf {
        flag.map(Path::to_path_buf)
            .or_else(|| std::env::var_os("SLUICE_CONFIG").map(PathBuf::from))
            .unwrap_or_else(|| DEFAULT_CONFIG_PATH.into())
    }

    /// Reads and validates the config at `path`.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file and key when the file cannot be read,
    /// is not valid TOML, or fails validation.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.display().to_string(),
            key: "(file)".into(),
            message: format!("cannot read: {e}; pass --config or set SLUICE_CONFIG"),
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates config text; `path` is used in error messages.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key to fix.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let err = |key: &str, message: String| ConfigError {
            path: path.display().to_string(),
            key: key.to_string(),
            message,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let key = e
                .span()
                .map(|s| format!("line {}", text[..s.start].lines().count().max(1)))
                .unwrap_or_else(|| "(toml)".into());
            err(&key, e.message().to_string())
        })?;
        let mut agents_seen = std::collections::HashSet::new();
        for (i, a) in raw.agents.iter().enumerate() {
            let key = format!("agent[{i}]");
            if !valid_name(&a.name) {
                return Err(err(
                    &format!("{key}.name"),
                    "use letters, digits, '-', '_' or '.'".into(),
                ));
            }
            if !agents_seen.insert(a.name.clone()) {
                return Err(err(
                    &format!("{key}.name"),
                    format!("duplicate agent {:?}", a.name),
                ));
            }
            let cg = a.cgroup.trim_matches('/');
            if cg.is_empty() || cg.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
                return Err(err(
                    &format!("{key}.cgroup"),
                    "must be a non-empty path below the cgroup2 mount (the root is never used)"
                        .into(),
                ));
            }
            if let Some(to) = a.redirect {
                if to.port() == 0 || to.ip().is_unspecified() || to.ip().is_loopback() {
                    return Err(err(
                        &format!("{key}.redirect"),
                        "must be an address and port of this host that containers reach (not loopback, not 0.0.0.0, not port 0)".into(),
                    ));
                }
            }
        }
        let mut services = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (i, s) in raw.services.into_iter().enumerate() {
            let key = format!("service[{i}] ({})", s.name);
            if !valid_name(&s.name) || !names.insert(s.name.clone()) {
                return Err(err(
                    &format!("{key}.name"),
                    "must be unique; use letters, digits, '-', '_' or '.'".into(),
                ));
            }
            let (host, port) = split_host_port(&s.upstream).ok_or_else(|| {
                err(
                    &format!("{key}.upstream"),
                    format!("expected host:port, got {:?}", s.upstream),
                )
            })?;
            if s.credential.secret.is_empty() {
                return Err(err(
                    &format!("{key}.credential.secret"),
                    "names the vault secret; must not be empty".into(),
                ));
            }
            match s.protocol {
                Protocol::Postgres => {
                    if s.credential.user.is_none() {
                        return Err(err(
                            &format!("{key}.credential.user"),
                            "postgres services need the upstream user name".into(),
                        ));
                    }
                    for (field, rules) in [("deny", &s.deny), ("approve", &s.approve)] {
                        if rules.iter().any(|r| !matches!(r, Rule::Sql(_))) {
                            return Err(err(
                                &format!("{key}.{field}"),
                                "postgres rules are statement kinds like \"DROP\"".into(),
                            ));
                        }
                        let bad = rules.iter().find_map(|r| match r {
                            Rule::Sql(k) => crate::policy::sql::parse_rule(k).err(),
                            Rule::Http { .. } => None,
                        });
                        if let Some(message) = bad {
                            return Err(err(&format!("{key}.{field}"), message));
                        }
                    }
                }
                Protocol::Https | Protocol::Http => {
                    if s.credential.header.is_some() && s.credential.query.is_some() {
                        return Err(err(
                            &format!("{key}.credential"),
                            "set header or query, not both".into(),
                        ));
                    }
                    if let Some(f) = &s.credential.format {
                        if !f.contains("{}") {
                            return Err(err(
                                &format!("{key}.credential.format"),
                                "must contain {} where the secret goes".into(),
                            ));
                        }
                    }
                    if let Some(h) = &s.credential.header {
                        if hyper::header::HeaderName::from_bytes(h.as_bytes()).is_err() {
                            return Err(err(
                                &format!("{key}.credential.header"),
                                format!("{h:?} is not a valid header name"),
                            ));
                        }
                    }
                    for (field, rules) in [("deny", &s.deny), ("approve", &s.approve)] {
                        if rules.iter().any(|r| !matches!(r, Rule::Http { .. })) {
                            return Err(err(
                                &format!("{key}.{field}"),
                                "http rules are { method = \"…\", path = \"/glob*\" }".into(),
                            ));
                        }
                    }
                }
            }
            if s.upstream_tls != UpstreamTls::VerifyFull && s.protocol != Protocol::Postgres {
                return Err(err(
                    &format!("{key}.upstream_tls"),
                    "only applies to postgres services".into(),
                ));
            }
            services.push(Service {
                name: s.name,
                protocol: s.protocol,
                host,
                port,
                resolve: s.resolve,
                upstream_tls: s.upstream_tls,
                upstream_ca: s.upstream_ca,
                credential: s.credential,
                deny: s.deny,
                approve: s.approve,
                mask: s.mask,
                echo_guard: s.echo_guard,
            });
        }
        if !raw.gateway.listen.ip().is_loopback() {
            return Err(err(
                "gateway.listen",
                "must be a loopback address such as 127.0.0.1:15001".into(),
            ));
        }
        if !raw.gateway.listen.is_ipv4() {
            return Err(err(
                "gateway.listen",
                "must be an IPv4 loopback address; [::1] is served on the same port".into(),
            ));
        }
        if raw.gateway.audit_rotate_bytes == 0 {
            return Err(err(
                "gateway.audit_rotate_bytes",
                "must be at least 1 (bytes; the default is 104857600, 100 MiB)".into(),
            ));
        }
        for (i, entry) in raw.gateway.egress_allow.iter().enumerate() {
            if split_host_port_any(entry).is_none() {
                return Err(err(
                    &format!("gateway.egress_allow[{i}]"),
                    format!("expected host:port, CIDR:port or host:*, got {entry:?}"),
                ));
            }
        }
        let mut notify = Vec::with_capacity(raw.notify.len());
        for (i, t) in raw.notify.into_iter().enumerate() {
            notify.push(
                t.validate()
                    .map_err(|(field, message)| err(&format!("notify[{i}].{field}"), message))?,
            );
        }
        Ok(Config {
            path: path.to_path_buf(),
            gateway: raw.gateway,
            agents: raw.agents,
            services,
            notify,
        })
    }

    /// The distinct `redirect` addresses of all agents, sorted: one extra
    /// listener each.
    pub fn redirect_addrs(&self) -> Vec<std::net::SocketAddr> {
        let mut addrs: Vec<_> = self.agents.iter().filter_map(|a| a.redirect).collect();
        addrs.sort();
        addrs.dedup();
        addrs
    }

    /// The agent named `name`.
    pub fn agent(&self, name: &str) -> Option<&Agent> {
        self.agents.iter().find(|a| a.name == name)
    }

    /// The service named `name`.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Splits `host:port` or `[v6]:port`; the port must be 1–65535.
pub fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = split_host_port_any(s)?;
    Some((host, port?))
}

/// Like [`split_host_port`] but accepts `*` as the port (`None` = any).
pub fn split_host_port_any(s: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    let port = match port {
        "*" => None,
        p => Some(p.parse::<u16>().ok().filter(|p| *p != 0)?),
    };
    Some((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("t.toml"), text)
    }

    #[test]
    fn example_from_design_parses() {
        let cfg = parse(
            r#"
[gateway]
listen = "127.0.0.1:15001"
egress_allow = ["mirror.example.org:443", "127.0.0.53:53"]
approval_timeout = "5m"
[[agent]]
name = "ci-bot"
cgroup = "sluice/ci-bot"
[[service]]
name = "billing-db"
protocol = "postgres"
upstream = "db.internal:5432"
credential = { secret = "billing-db", user = "billing" }
deny = ["DROP", "DELETE_WITHOUT_WHERE"]
mask = ["ssn"]
[[service]]
name = "payments-api"
protocol = "https"
upstream = "api.payments.test:443"
credential = { secret = "payments-key", header = "Authorization", format = "Bearer {}" }
deny = [{ method = "DELETE", path = "/v1/customers/*" }]
"#,
        )
        .unwrap();
        assert_eq!(cfg.services[1].port, 443);
        assert_eq!(cfg.gateway.approval_timeout, Duration::from_secs(300));
        assert_eq!(cfg.gateway.egress, Egress::Deny);
    }

    #[test]
    fn bad_upstream_names_the_key() {
        let e = parse(
            "[[service]]\nname='a'\nprotocol='https'\nupstream='nohost'\ncredential={secret='s'}\n",
        )
        .unwrap_err();
        assert_eq!(e.key, "service[0] (a).upstream");
    }

    #[test]
    fn agent_redirects_are_host_addresses_listened_on_once() {
        let cfg = parse(
            "[[agent]]\nname='a'\ncgroup='x/a'\nredirect='10.200.0.1:15001'\n\
             [[agent]]\nname='b'\ncgroup='x/b'\nredirect='10.200.0.1:15001'\n\
             [[agent]]\nname='c'\ncgroup='x/c'\n",
        )
        .unwrap();
        assert_eq!(
            cfg.redirect_addrs(),
            vec!["10.200.0.1:15001".parse().unwrap()]
        );
        for bad in ["127.0.0.1:15001", "0.0.0.0:15001", "10.200.0.1:0"] {
            let e = parse(&format!(
                "[[agent]]\nname='a'\ncgroup='x'\nredirect='{bad}'\n"
            ))
            .unwrap_err();
            assert_eq!(e.key, "agent[0].redirect", "{bad}");
        }
    }

    #[test]
    fn root_cgroup_is_refused() {
        let e = parse("[[agent]]\nname='a'\ncgroup='/'\n").unwrap_err();
        assert_eq!(e.key, "agent[0].cgroup");
    }
}
