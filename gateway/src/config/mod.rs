//! The TOML configuration (DESIGN.md §4 "Config"): parsing, defaults and
//! validation.
//!
//! Every validation error names the key to fix, e.g.
//! `service[0] (billing-db).upstream: expected host:port, got "db.internal"`,
//! so the CLI can print it on one line and exit 2.
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub mod console;
mod gateway;
pub mod notify;
pub mod oidc;
mod service;
mod ssh;

use gateway::defaults;
pub use gateway::Gateway;
use service::RawService;
pub use service::{
    ClientCertSecrets, HttpService, Injection, KubeService, Protocol, Service, ServiceKind,
    SqlService, UpstreamTls, MASK_SECRETS,
};
pub use ssh::{parse_host_key, SshService};

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
    pub notify: Vec<notify::Target>,
    /// `[console]`, the web console (DESIGN.md §9), when set.
    pub console: Option<console::Console>,
    /// `[[oidc]]` issuers whose JWTs are accepted (DESIGN.md §7).
    pub oidc: Vec<oidc::Issuer>,
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
    /// `oidc = { issuer, subject }`: JWTs from that `[[oidc]]` issuer whose
    /// `sub` matches the glob authenticate this agent (DESIGN.md §7).
    #[serde(default)]
    pub oidc: Option<oidc::Binding>,
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
    notify: Vec<notify::RawTarget>,
    #[serde(default)]
    console: Option<console::RawConsole>,
    #[serde(default, rename = "oidc")]
    oidc: Vec<oidc::RawIssuer>,
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
        let err = |(key, message): (String, String)| ConfigError {
            path: path.display().to_string(),
            key,
            message,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let key = e
                .span()
                .map(|s| format!("line {}", text[..s.start].lines().count().max(1)))
                .unwrap_or_else(|| "(toml)".into());
            err((key, e.message().to_string()))
        })?;
        check_agents(&raw.agents).map_err(err)?;
        check_gateway(&raw.gateway).map_err(err)?;
        let services = parse_services(raw.services).map_err(err)?;
        let notify = raw
            .notify
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                t.validate()
                    .map_err(|(field, message)| err((format!("notify[{i}].{field}"), message)))
            })
            .collect::<Result<_, _>>()?;
        let console = raw
            .console
            .map(|c| c.validate())
            .transpose()
            .map_err(|(field, message)| err((format!("console.{field}"), message)))?;
        let oidc = parse_issuers(raw.oidc).map_err(err)?;
        check_bindings(&raw.agents, &oidc).map_err(err)?;
        if let Some(c) = &console {
            console::check_issuer(c, &oidc).map_err(err)?;
        }
        Ok(Config {
            path: path.to_path_buf(),
            gateway: raw.gateway,
            agents: raw.agents,
            services,
            notify,
            console,
            oidc,
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

    /// The `[[oidc]]` issuer named `name`.
    pub fn issuer(&self, name: &str) -> Option<&oidc::Issuer> {
        self.oidc.iter().find(|i| i.name == name)
    }

    /// The service named `name`.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// `(key, message)` of a validation failure.
type KeyError = (String, String);

fn check_agents(agents: &[Agent]) -> Result<(), KeyError> {
    let mut seen = std::collections::HashSet::new();
    for (i, a) in agents.iter().enumerate() {
        let key = format!("agent[{i}]");
        if !valid_name(&a.name) {
            return Err((
                format!("{key}.name"),
                "use letters, digits, '-', '_' or '.'".into(),
            ));
        }
        if !seen.insert(a.name.clone()) {
            return Err((
                format!("{key}.name"),
                format!("duplicate agent {:?}", a.name),
            ));
        }
        let cg = a.cgroup.trim_matches('/');
        if cg.is_empty() || cg.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            return Err((
                format!("{key}.cgroup"),
                "must be a non-empty path below the cgroup2 mount (the root is never used)".into(),
            ));
        }
        if let Some(to) = a.redirect {
            if to.port() == 0 || to.ip().is_unspecified() || to.ip().is_loopback() {
                return Err((
                    format!("{key}.redirect"),
                    "must be an address and port of this host that containers reach (not loopback, not 0.0.0.0, not port 0)".into(),
                ));
            }
        }
    }
    Ok(())
}

fn parse_services(raw: Vec<RawService>) -> Result<Vec<Service>, KeyError> {
    let mut names = std::collections::HashSet::new();
    raw.into_iter()
        .enumerate()
        .map(|(i, s)| {
            let key = format!("service[{i}] ({})", s.name);
            if !valid_name(&s.name) || !names.insert(s.name.clone()) {
                return Err((
                    format!("{key}.name"),
                    "must be unique; use letters, digits, '-', '_' or '.'".into(),
                ));
            }
            s.parse()
                .map_err(|(field, message)| (format!("{key}.{field}"), message))
        })
        .collect()
}

fn parse_issuers(raw: Vec<oidc::RawIssuer>) -> Result<Vec<oidc::Issuer>, KeyError> {
    let mut names = std::collections::HashSet::new();
    raw.into_iter()
        .enumerate()
        .map(|(i, o)| {
            let key = format!("oidc[{i}] ({})", o.name());
            if !valid_name(o.name()) || !names.insert(o.name().to_string()) {
                return Err((
                    format!("{key}.name"),
                    "must be unique; use letters, digits, '-', '_' or '.'".into(),
                ));
            }
            o.validate()
                .map_err(|(field, message)| (format!("{key}.{field}"), message))
        })
        .collect()
}

/// Every agent's `oidc.issuer` names an `[[oidc]]` entry.
fn check_bindings(agents: &[Agent], issuers: &[oidc::Issuer]) -> Result<(), KeyError> {
    for (i, a) in agents.iter().enumerate() {
        let Some(binding) = &a.oidc else { continue };
        if !issuers.iter().any(|o| o.name == binding.issuer) {
            return Err((
                format!("agent[{i}].oidc.issuer"),
                format!("no [[oidc]] entry is named {:?}", binding.issuer),
            ));
        }
        if binding.subject.is_empty() {
            return Err((
                format!("agent[{i}].oidc.subject"),
                "must be a glob on the token's sub, e.g. \"repo:acme/app:*\"".into(),
            ));
        }
    }
    Ok(())
}

fn check_gateway(gw: &Gateway) -> Result<(), KeyError> {
    let fail = |key: &str, message: &str| Err((key.to_string(), message.to_string()));
    if !gw.listen.ip().is_loopback() {
        return fail(
            "gateway.listen",
            "must be a loopback address such as 127.0.0.1:15001",
        );
    }
    if !gw.listen.is_ipv4() {
        return fail(
            "gateway.listen",
            "must be an IPv4 loopback address; [::1] is served on the same port",
        );
    }
    if gw.audit_rotate_bytes == 0 {
        return fail(
            "gateway.audit_rotate_bytes",
            "must be at least 1 (bytes; the default is 104857600, 100 MiB)",
        );
    }
    for (i, entry) in gw.egress_allow.iter().enumerate() {
        if split_host_port_any(entry).is_none() {
            return Err((
                format!("gateway.egress_allow[{i}]"),
                format!("expected host:port, CIDR:port or host:*, got {entry:?}"),
            ));
        }
    }
    Ok(())
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
    use std::time::Duration;

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
    fn kubernetes_service_from_design_parses() {
        let service = |extra: &str| {
            format!(
                "[[service]]\nname='k'\nprotocol='kubernetes'\nupstream='kube.internal:6443'\n\
                 credential={{secret='t', header='Authorization', format='Bearer {{}}'}}\n{extra}"
            )
        };
        let cfg = parse(&service(
            r#"deny = [{ verb = "delete", resource = "namespaces" }, { verb = "*", resource = "secrets", namespace = "kube-system" }]
approve = [{ verb = "create", resource = "pods/exec" }, { verb = "delete", resource = "pods", namespace = "prod" }]
mask = ["secrets"]"#,
        ))
        .unwrap();
        let s = &cfg.services[0];
        assert_eq!(s.protocol(), Protocol::Kubernetes);
        let kube = s.kube().unwrap();
        assert_eq!((kube.deny.len(), kube.approve.len()), (2, 1 + 1));
        assert!(kube.mask_secrets && kube.http.tls && kube.http.deny.is_empty());
        assert_eq!(kube.deny[1].to_string(), "* secrets namespace=kube-system");
        for (extra, key) in [
            ("mask = ['ssn']", "mask"),
            ("deny = ['DROP']", "deny"),
            ("deny = [{ method = 'GET', path = '/api*' }]", "deny"),
            ("approve = [{ verb = 'get', path = '/x' }]", "approve"),
            ("approve = [{ }]", "approve"),
        ] {
            let e = parse(&service(extra)).unwrap_err();
            assert_eq!(e.key, format!("service[0] (k).{key}"), "{extra}");
        }
        let no_header = "[[service]]\nname='k'\nprotocol='kubernetes'\nupstream='kube.internal:6443'\ncredential={secret='t'}\n";
        assert_eq!(
            parse(no_header).unwrap_err().key,
            "service[0] (k).credential.header"
        );
        let with_credential = |credential: &str| {
            format!("[[service]]\nname='k'\nprotocol='kubernetes'\nupstream='kube.internal:6443'\ncredential={credential}\n")
        };
        let cfg = parse(&with_credential(
            "{client_cert='kube-cert', client_key='kube-key'}",
        ))
        .unwrap();
        let kube = cfg.services[0].kube().unwrap();
        assert_eq!(
            kube.http.inject,
            crate::config::Injection::ClientCertificate
        );
        assert_eq!(
            kube.client_cert.as_ref().map(|c| c.cert.as_str()),
            Some("kube-cert")
        );
        for (credential, key) in [
            ("{client_cert='kube-cert'}", "credential.client_key"),
            ("{client_key='kube-key'}", "credential.client_cert"),
            (
                "{client_cert='c', client_key='k', header='Authorization'}",
                "credential.header",
            ),
            (
                "{client_cert='c', client_key='k', secret='s'}",
                "credential.secret",
            ),
        ] {
            let e = parse(&with_credential(credential)).unwrap_err();
            assert_eq!(e.key, format!("service[0] (k).{key}"), "{credential}");
        }
        let https = "[[service]]\nname='k'\nprotocol='https'\nupstream='api.test:443'\ncredential={client_cert='c', client_key='k'}\n";
        assert_eq!(
            parse(https).unwrap_err().key,
            "service[0] (k).credential.client_cert"
        );
    }

    #[test]
    fn console_and_approvers_name_their_keys() {
        let service = |approvers: &str| {
            format!(
                "[[service]]\nname='db'\nprotocol='postgres'\nupstream='db.test:5432'\n\
                 credential={{secret='s', user='u'}}\napprovers = {approvers}\n"
            )
        };
        let cfg = parse(&service("['group:db-leads']")).unwrap();
        assert_eq!(cfg.services[0].approvers, ["db-leads"]);
        assert!(cfg.console.is_none());
        let e = parse(&service("['db-leads']")).unwrap_err();
        assert_eq!(e.key, "service[0] (db).approvers[0]");
        let console =
            "[console]\nlisten = '127.0.0.1:9443'\noidc = 'corp'\nadmins = ['group:security']\n";
        let e = parse(&console.replace("group:security", "security")).unwrap_err();
        assert_eq!(e.key, "console.admins[0]");
        assert_eq!(
            parse(console).unwrap_err().key,
            "console.oidc",
            "no such issuer"
        );
        let issuer = "[[oidc]]\nname='corp'\nissuer='https://idp.example'\naudience='sluice'\n";
        assert_eq!(
            parse(&format!("{console}{issuer}")).unwrap_err().key,
            "console.oidc",
            "an issuer without client_id"
        );
        let client = "client_id = 'sluice-console'\nclient_secret = 'console-secret'\n";
        let cfg = parse(&format!("{console}{issuer}{client}")).unwrap();
        assert_eq!(cfg.console.unwrap().admins, ["security"]);
    }

    #[test]
    fn oidc_issuers_and_bindings_from_design_parse() {
        let text = |issuer: &str| {
            format!(
                "[[oidc]]\nname='ci'\nissuer='https://token.actions.example'\naudience='sluice'\n\
                 [[agent]]\nname='deploy-bot'\ncgroup='sluice/deploy-bot'\n\
                 oidc={{ issuer='{issuer}', subject='repo:acme/app:ref:refs/heads/*' }}\n"
            )
        };
        let cfg = parse(&text("ci")).unwrap();
        assert_eq!(cfg.issuer("ci").unwrap().audience, "sluice");
        assert_eq!(cfg.agents[0].oidc.as_ref().unwrap().issuer, "ci");
        assert_eq!(parse(&text("gh")).unwrap_err().key, "agent[0].oidc.issuer");
        let dup = "[[oidc]]\nname='a'\nissuer='https://x'\naudience='s'\n".repeat(2);
        assert_eq!(parse(&dup).unwrap_err().key, "oidc[1] (a).name");
    }

    #[test]
    fn mysql_service_from_design_parses() {
        let service = |extra: &str| {
            format!(
                "[[service]]\nname='orders-db'\nprotocol='mysql'\nupstream='mysql.internal:3306'\n\
                 credential={{secret='orders-db', user='orders'}}\n{extra}"
            )
        };
        let cfg = parse(&service(
            r#"deny = ["DROP", "TRUNCATE", "ALTER", "GRANT", "DELETE_WITHOUT_WHERE", "UPDATE_WITHOUT_WHERE", "LOAD_DATA", "INTO_OUTFILE"]
approve = ["DELETE"]
mask = ["ssn"]"#,
        ))
        .unwrap();
        let s = &cfg.services[0];
        assert_eq!(s.protocol(), Protocol::Mysql);
        let sql = s.sql().unwrap();
        assert_eq!((sql.deny.len(), sql.approve.len()), (8, 1));
        assert_eq!(sql.upstream_tls, UpstreamTls::VerifyFull);
        assert_eq!(sql.user, "orders");
        let cfg = parse(&service("upstream_tls = 'disable'")).unwrap();
        assert_eq!(
            cfg.services[0].sql().unwrap().upstream_tls,
            UpstreamTls::Disable
        );
        for (extra, key) in [
            ("deny = ['LOAD_DATAA']", "deny"),
            ("approve = [{ method = 'GET', path = '/x' }]", "approve"),
        ] {
            let e = parse(&service(extra)).unwrap_err();
            assert_eq!(e.key, format!("service[0] (orders-db).{key}"), "{extra}");
        }
        let no_user =
            "[[service]]\nname='m'\nprotocol='mysql'\nupstream='m:3306'\ncredential={secret='t'}\n";
        assert_eq!(
            parse(no_user).unwrap_err().key,
            "service[0] (m).credential.user"
        );
    }

    #[test]
    fn root_cgroup_is_refused() {
        let e = parse("[[agent]]\nname='a'\ncgroup='/'\n").unwrap_err();
        assert_eq!(e.key, "agent[0].cgroup");
    }
}
