//! `[[service]]` (DESIGN.md §4 "Config", §6): a service is a name, the host
//! and port agents dial, how to resolve it, the vault secret and masks, and
//! a protocol-specific part ([`ServiceKind`]) parsed once at load, rules
//! included.
use std::{net::IpAddr, path::PathBuf};

use serde::Deserialize;

use crate::policy::{
    http::{HttpRule, HttpRules},
    kube::KubeRule,
    statement::SqlRule,
};

/// `protocol = …`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Postgres,
    /// MySQL or MariaDB (DESIGN.md §6 "MySQL / MariaDB").
    Mysql,
    Https,
    Http,
    /// The Kubernetes API (DESIGN.md §6): HTTPS read as the API server
    /// reads it.
    Kubernetes,
    Ssh,
}

impl Protocol {
    /// HTTP services get the port-wide rule: every agent connection to the
    /// port is redirected and routed by SNI or `Host`.
    pub fn is_http(self) -> bool {
        self.http_tls().is_some()
    }

    /// For a protocol the HTTP handler serves, whether it speaks TLS
    /// (towards the agent and upstream); `None` for the others.
    pub fn http_tls(self) -> Option<bool> {
        match self {
            Protocol::Https | Protocol::Kubernetes => Some(true),
            Protocol::Http => Some(false),
            Protocol::Postgres | Protocol::Mysql | Protocol::Ssh => None,
        }
    }
}

/// `upstream_tls = …` for PostgreSQL and MySQL services; `verify-full` by default
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

/// A validated `[[service]]`.
#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    /// Upstream host name (or IP literal) as agents dial it.
    pub host: String,
    /// Upstream port, host byte order.
    pub port: u16,
    /// Pinned upstream addresses (instead of DNS).
    pub resolve: Vec<IpAddr>,
    /// CA to trust for the upstream's TLS instead of the system roots.
    pub upstream_ca: Option<PathBuf>,
    /// The vault secret holding the real credential (`credential.secret`;
    /// for a Kubernetes client certificate, `credential.client_key`).
    pub secret: String,
    /// Column (SQL) or JSON field (HTTP) names whose values are masked.
    pub mask: Vec<String>,
    /// Groups whose members may approve or deny this service's held
    /// operations in the console (`approvers = ["group:NAME"]`, DESIGN.md §9).
    pub approvers: Vec<String>,
    /// `groups = ["payments"]`: when not empty, a caller authenticated by a
    /// JWT must be in one of these groups (DESIGN.md §7).
    pub groups: Vec<String>,
    /// What only this service's protocol has.
    pub kind: ServiceKind,
}

/// The protocol-specific part of a service.
#[derive(Debug, Clone)]
pub enum ServiceKind {
    /// `protocol = "https"` or `"http"`.
    Http(HttpService),
    /// `protocol = "postgres"`.
    Postgres(SqlService),
    /// `protocol = "mysql"` (MySQL and MariaDB).
    Mysql(SqlService),
    /// `protocol = "kubernetes"`: an HTTPS service with Kubernetes rules.
    Kubernetes(KubeService),
    /// `protocol = "ssh"`.
    Ssh(super::ssh::SshService),
}

impl Service {
    /// The `protocol` the service was configured with.
    pub fn protocol(&self) -> Protocol {
        match &self.kind {
            ServiceKind::Http(h) if h.tls => Protocol::Https,
            ServiceKind::Http(_) => Protocol::Http,
            ServiceKind::Postgres(_) => Protocol::Postgres,
            ServiceKind::Mysql(_) => Protocol::Mysql,
            ServiceKind::Kubernetes(_) => Protocol::Kubernetes,
            ServiceKind::Ssh(_) => Protocol::Ssh,
        }
    }

    /// The HTTP part, for an HTTP(S) or Kubernetes service.
    pub fn http(&self) -> Option<&HttpService> {
        match &self.kind {
            ServiceKind::Http(h) => Some(h),
            ServiceKind::Kubernetes(k) => Some(&k.http),
            ServiceKind::Postgres(_) | ServiceKind::Mysql(_) | ServiceKind::Ssh(_) => None,
        }
    }

    /// The Kubernetes part, for a Kubernetes API service.
    pub fn kube(&self) -> Option<&KubeService> {
        match &self.kind {
            ServiceKind::Kubernetes(k) => Some(k),
            ServiceKind::Http(_)
            | ServiceKind::Postgres(_)
            | ServiceKind::Mysql(_)
            | ServiceKind::Ssh(_) => None,
        }
    }

    /// The SQL part, for a database service.
    pub fn sql(&self) -> Option<&SqlService> {
        match &self.kind {
            ServiceKind::Postgres(s) | ServiceKind::Mysql(s) => Some(s),
            ServiceKind::Http(_) | ServiceKind::Kubernetes(_) | ServiceKind::Ssh(_) => None,
        }
    }

    /// The SSH part, for an SSH service.
    pub fn ssh(&self) -> Option<&super::ssh::SshService> {
        match &self.kind {
            ServiceKind::Ssh(s) => Some(s),
            _ => None,
        }
    }
}

/// An HTTP(S) service's own settings.
#[derive(Debug, Clone)]
pub struct HttpService {
    /// `https` (TLS towards agents and upstream) rather than `http`.
    pub tls: bool,
    /// Where the real credential goes.
    pub inject: Injection,
    /// Compiled at load ([`HttpRules`]).
    pub deny: HttpRules,
    pub approve: HttpRules,
    /// Overwrite the secret's exact bytes wherever the upstream reflects
    /// them in a response (headers or body).
    pub echo_guard: bool,
}

/// A Kubernetes API service's own settings (DESIGN.md §6 "Kubernetes
/// API"): the HTTPS part the HTTP handler serves (TLS both ways, the
/// credential header, no HTTP rules), and rules on requests as the API
/// server reads them.
#[derive(Debug, Clone)]
pub struct KubeService {
    /// TLS and the bearer header injection; no `deny`/`approve` of its own.
    pub http: HttpService,
    pub deny: Vec<KubeRule>,
    pub approve: Vec<KubeRule>,
    /// `mask = ["secrets"]`: `data`/`stringData` values of Secrets in
    /// responses are masked.
    pub mask_secrets: bool,
    /// `credential = { client_cert, client_key }`: the vault secrets (PEM)
    /// of the client certificate Sluice presents upstream, instead of a
    /// bearer token.
    pub client_cert: Option<ClientCertSecrets>,
}

/// The vault secrets of a client certificate (PEM): the certificate
/// (chain, leaf first) and its private key (PKCS#8, PKCS#1 or SEC1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertSecrets {
    pub cert: String,
    pub key: String,
}

/// The one `mask` entry a Kubernetes service takes.
pub const MASK_SECRETS: &str = "secrets";

/// Where an HTTP request gets the real credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Injection {
    /// Wherever the agent put its token (a header, Basic auth, the query).
    InPlace,
    /// Header `name`, valued `format` with `{}` standing for the secret
    /// (`credential = { header = "Authorization", format = "Bearer {}" }`).
    Header { name: String, format: String },
    /// Query parameter `name` (`credential = { query = "api_key" }`).
    Query { name: String },
    /// Nowhere: the token is removed and the credential is a client
    /// certificate on the upstream TLS connection (Kubernetes
    /// `credential = { client_cert, client_key }`).
    ClientCertificate,
}

/// A database service's own settings.
#[derive(Debug, Clone)]
pub struct SqlService {
    /// The upstream user name (`credential.user`).
    pub user: String,
    pub upstream_tls: UpstreamTls,
    pub deny: Vec<SqlRule>,
    pub approve: Vec<SqlRule>,
}

impl SqlService {
    /// The rules with the service's `mask`, as SQL policy takes them.
    pub fn policy<'a>(&'a self, mask: &'a [String]) -> crate::policy::statement::SqlPolicy<'a> {
        crate::policy::statement::SqlPolicy {
            deny: &self.deny,
            approve: &self.approve,
            mask,
        }
    }
}

/// `credential = { … }` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCredential {
    #[serde(default)]
    secret: String,
    client_cert: Option<String>,
    client_key: Option<String>,
    pub(super) user: Option<String>,
    header: Option<String>,
    format: Option<String>,
    query: Option<String>,
}

/// One `deny`/`approve` entry as written: a SQL kind (`"DROP"`), an
/// HTTP rule or a Kubernetes rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum RawRule {
    Sql(String),
    Http {
        #[serde(default)]
        method: Option<String>,
        path: String,
        /// The rule applies only to callers in one of these groups (a
        /// JWT's groups claim, DESIGN.md §7); empty: to every caller.
        #[serde(default)]
        groups: Vec<String>,
    },
    Kube(KubeRule),
    /// An SSH command glob: `{ command = "rm *" }`.
    Command {
        command: String,
    },
}

/// `[[service]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) name: String,
    protocol: Protocol,
    upstream: String,
    #[serde(default)]
    resolve: Vec<IpAddr>,
    #[serde(default)]
    upstream_tls: UpstreamTls,
    upstream_ca: Option<PathBuf>,
    pub(super) credential: RawCredential,
    #[serde(default)]
    pub(super) deny: Vec<RawRule>,
    #[serde(default)]
    pub(super) approve: Vec<RawRule>,
    #[serde(default)]
    pub(super) mask: Vec<String>,
    #[serde(default)]
    echo_guard: bool,
    #[serde(default)]
    groups: Vec<String>,
    /// SSH: the real server's host key, as in known_hosts.
    pub(super) upstream_host_key: Option<String>,
    /// SSH: the channel kinds allowed.
    pub(super) allow: Option<Vec<String>>,
    /// `["group:NAME", …]` who may decide held operations in the console.
    #[serde(default)]
    approvers: Vec<String>,
}

/// A problem with one key of a service: `(key below the service, message)`.
pub(super) type KeyError = (String, String);

pub(super) fn key_error(key: &str, message: impl Into<String>) -> KeyError {
    (key.to_string(), message.into())
}

impl RawService {
    /// Validates the entry and parses its rules.
    ///
    /// # Errors
    /// The key to fix (e.g. `credential.user`) and why.
    pub(super) fn parse(self) -> Result<Service, KeyError> {
        let (host, port) = super::split_host_port(&self.upstream).ok_or_else(|| {
            key_error(
                "upstream",
                format!("expected host:port, got {:?}", self.upstream),
            )
        })?;
        let client_cert = self.client_cert()?;
        if self.credential.secret.is_empty() && client_cert.is_none() {
            return Err(key_error(
                "credential.secret",
                "names the vault secret; must not be empty",
            ));
        }
        let database = matches!(self.protocol, Protocol::Postgres | Protocol::Mysql);
        if self.upstream_tls != UpstreamTls::VerifyFull && !database {
            return Err(key_error(
                "upstream_tls",
                "only applies to postgres and mysql services",
            ));
        }
        let kind = match self.protocol {
            Protocol::Postgres => ServiceKind::Postgres(self.sql()?),
            Protocol::Mysql => ServiceKind::Mysql(self.sql()?),
            Protocol::Https | Protocol::Http => ServiceKind::Http(self.http()?),
            Protocol::Kubernetes => ServiceKind::Kubernetes(self.kube()?),
            Protocol::Ssh => ServiceKind::Ssh(self.ssh()?),
        };
        if self.protocol != Protocol::Ssh
            && (self.upstream_host_key.is_some() || self.allow.is_some())
        {
            return Err(key_error(
                "upstream_host_key",
                "upstream_host_key and allow only apply to ssh services",
            ));
        }
        let approvers = super::console::groups("approvers", &self.approvers)?;
        Ok(Service {
            name: self.name,
            host,
            port,
            resolve: self.resolve,
            upstream_ca: self.upstream_ca,
            secret: match client_cert {
                Some(names) => names.key,
                None => self.credential.secret,
            },
            mask: self.mask,
            approvers,
            groups: self.groups,
            kind,
        })
    }

    fn sql(&self) -> Result<SqlService, KeyError> {
        let user = self.credential.user.clone().ok_or_else(|| {
            key_error(
                "credential.user",
                "database services (postgres, mysql) need the upstream user name",
            )
        })?;
        let rules = |field: &str, rules: &[RawRule]| {
            rules
                .iter()
                .map(|r| match r {
                    RawRule::Sql(kind) => SqlRule::parse(kind).map_err(|m| key_error(field, m)),
                    RawRule::Http { .. } | RawRule::Kube(_) | RawRule::Command { .. } => Err(
                        key_error(field, "database rules are statement kinds like \"DROP\""),
                    ),
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(SqlService {
            user,
            upstream_tls: self.upstream_tls,
            deny: rules("deny", &self.deny)?,
            approve: rules("approve", &self.approve)?,
        })
    }

    fn http(&self) -> Result<HttpService, KeyError> {
        let inject = self.injection()?;
        let rules = |field: &str, rules: &[RawRule]| {
            rules
                .iter()
                .map(|r| match r {
                    RawRule::Http {
                        method,
                        path,
                        groups,
                    } => Ok(HttpRule {
                        method: method.clone(),
                        path: path.clone(),
                        groups: groups.clone(),
                    }),
                    RawRule::Sql(_) | RawRule::Kube(_) | RawRule::Command { .. } => Err(key_error(
                        field,
                        "http rules are { method = \"…\", path = \"/glob*\" }",
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
                .and_then(|rules| {
                    HttpRules::new(rules).map_err(|e| {
                        key_error(
                            field,
                            format!("the rules cannot be compiled ({e}); use fewer"),
                        )
                    })
                })
        };
        Ok(HttpService {
            tls: self.protocol.http_tls() == Some(true),
            inject,
            deny: rules("deny", &self.deny)?,
            approve: rules("approve", &self.approve)?,
            echo_guard: self.echo_guard,
        })
    }

    /// Where the real credential goes (`credential.header`/`format`/`query`).
    fn injection(&self) -> Result<Injection, KeyError> {
        let c = &self.credential;
        let inject = match (&c.header, &c.query) {
            (Some(_), Some(_)) => {
                return Err(key_error("credential", "set header or query, not both"))
            }
            (Some(name), None) => {
                if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    return Err(key_error(
                        "credential.header",
                        format!("{name:?} is not a valid header name"),
                    ));
                }
                Injection::Header {
                    name: name.clone(),
                    format: c.format.clone().unwrap_or_else(|| "{}".into()),
                }
            }
            (None, Some(name)) => Injection::Query { name: name.clone() },
            (None, None) => Injection::InPlace,
        };
        if c.format.as_ref().is_some_and(|f| !f.contains("{}")) {
            return Err(key_error(
                "credential.format",
                "must contain {} where the secret goes",
            ));
        }
        Ok(inject)
    }

    /// `credential = { client_cert, client_key }`: both, on a kubernetes
    /// service only, and then nothing else in `credential`.
    fn client_cert(&self) -> Result<Option<ClientCertSecrets>, KeyError> {
        let c = &self.credential;
        let (cert, key) = match (&c.client_cert, &c.client_key) {
            (None, None) => return Ok(None),
            (Some(cert), Some(key)) => (cert, key),
            (Some(_), None) => {
                return Err(key_error("credential.client_key", "names the vault secret of the client certificate's private key; client_cert needs it"))
            }
            (None, Some(_)) => {
                return Err(key_error("credential.client_cert", "names the vault secret of the client certificate; client_key needs it"))
            }
        };
        if self.protocol != Protocol::Kubernetes {
            return Err(key_error(
                "credential.client_cert",
                "client certificates apply to kubernetes services only",
            ));
        }
        for (name, key) in [("client_cert", cert), ("client_key", key)] {
            if key.is_empty() {
                return Err(key_error(
                    &format!("credential.{name}"),
                    "names a vault secret; must not be empty",
                ));
            }
        }
        let others = [
            ("secret", !c.secret.is_empty()),
            ("header", c.header.is_some()),
            ("format", c.format.is_some()),
            ("query", c.query.is_some()),
            ("user", c.user.is_some()),
        ];
        if let Some((other, _)) = others.iter().find(|(_, set)| *set) {
            return Err(key_error(
                &format!("credential.{other}"),
                "a client certificate is the whole credential: no secret, header, format, query or user beside client_cert and client_key",
            ));
        }
        Ok(Some(ClientCertSecrets {
            cert: cert.clone(),
            key: key.clone(),
        }))
    }

    /// The Kubernetes part: the bearer header (`credential = { header,
    /// format }`) or a client certificate (`credential = { client_cert,
    /// client_key }`), rules of `verb`/`resource`/`namespace`/`name`, and
    /// `mask` naming only `secrets`.
    fn kube(&self) -> Result<KubeService, KeyError> {
        let client_cert = self.client_cert()?;
        if self.credential.header.is_none() && client_cert.is_none() {
            return Err(key_error(
                "credential.header",
                "kubernetes services put the real token in a header: { header = \"Authorization\", format = \"Bearer {}\" }",
            ));
        }
        if self.echo_guard {
            return Err(key_error(
                "echo_guard",
                "does not apply to kubernetes services",
            ));
        }
        if let Some(other) = self.mask.iter().find(|m| m.as_str() != MASK_SECRETS) {
            return Err(key_error(
                "mask",
                format!("kubernetes services mask only \"{MASK_SECRETS}\", not {other:?}"),
            ));
        }
        let rules = |field: &str, rules: &[RawRule]| {
            rules
                .iter()
                .map(|r| match r {
                    RawRule::Kube(rule) => rule
                        .validate()
                        .map(|()| rule.clone())
                        .map_err(|m| key_error(field, m)),
                    RawRule::Sql(_) | RawRule::Http { .. } | RawRule::Command { .. } => Err(key_error(
                        field,
                        "kubernetes rules are { verb = \"delete\", resource = \"pods\", namespace = \"prod\", name = \"web-*\" }",
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let inject = match client_cert {
            Some(_) => Injection::ClientCertificate,
            None => self.injection()?,
        };
        let http = HttpService {
            tls: true,
            inject,
            deny: HttpRules::none(),
            approve: HttpRules::none(),
            echo_guard: false,
        };
        Ok(KubeService {
            http,
            deny: rules("deny", &self.deny)?,
            approve: rules("approve", &self.approve)?,
            mask_secrets: !self.mask.is_empty(),
            client_cert,
        })
    }
}
