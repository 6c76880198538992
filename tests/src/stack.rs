//! A whole test environment in a few lines: redis-server, a test CA, one
//! upstream per service and `sluice run` with one agent.
//!
//! ```no_run
//! use sluice_tests::{Credential, ServiceSpec, Stack};
//! let stack = Stack::builder("curl-swap")
//!     .service(ServiceSpec::https("payments-api", "api.payments.test").credential(Credential::bearer()))
//!     .start()
//!     .unwrap();
//! let token = stack.token("payments-api").unwrap();
//! let res = stack.curl(&["-H", &format!("Authorization: Bearer {token}"), &stack.url("payments-api", "/v1/charges")]).unwrap();
//! assert_eq!(res.status, 200);
//! ```
use std::{
    ffi::OsStr,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    process::{Child, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{bail, Context, Result};

use crate::{
    kube_api::{Auth, KubeApi},
    mariadb::MariaDb,
    postgres::Postgres,
    redis::Redis,
    sluice::{toml_str, Sluice, SluiceOptions},
    sshd::{Sshd, UserKey},
    upstream::Upstream,
    TestCa,
};

/// The agent name a stack configures unless told otherwise.
pub const AGENT: &str = "agent";

/// Where the service's secret goes (DESIGN.md §4 "Tokens").
#[derive(Debug, Clone)]
pub enum Credential {
    /// Neither `header` nor `query`: the token is replaced by the secret
    /// where it stands (same header, Basic auth re-encoded, same parameter).
    InPlace,
    /// `header = NAME, format = FORMAT`: the token is removed from where it
    /// was and `NAME: FORMAT(secret)` is set.
    Header {
        name: String,
        format: Option<String>,
    },
    /// `query = NAME`: the token is removed and `?NAME=secret` is set.
    Query(String),
    /// `user = NAME`: PostgreSQL or MySQL; Sluice logs in upstream as NAME
    /// with the secret as password.
    PgUser(String),
    /// `client_cert = "<service>-cert", client_key = "<service>-key"`:
    /// Kubernetes; the stand-in requires a client certificate of the test
    /// CA, whose key is the service's secret.
    ClientCert,
}

impl Credential {
    /// `header = "Authorization", format = "Bearer {}"`.
    pub fn bearer() -> Credential {
        Credential::Header {
            name: "Authorization".into(),
            format: Some("Bearer {}".into()),
        }
    }

    /// `header = NAME` (format defaults to `{}`).
    pub fn header(name: &str) -> Credential {
        Credential::Header {
            name: name.into(),
            format: None,
        }
    }

    fn toml(&self, secret: &str) -> String {
        match self {
            Credential::InPlace => format!("{{ secret = {} }}", toml_str(secret)),
            Credential::Header { name, format: None } => {
                format!(
                    "{{ secret = {}, header = {} }}",
                    toml_str(secret),
                    toml_str(name)
                )
            }
            Credential::Header {
                name,
                format: Some(f),
            } => format!(
                "{{ secret = {}, header = {}, format = {} }}",
                toml_str(secret),
                toml_str(name),
                toml_str(f)
            ),
            Credential::Query(q) => format!(
                "{{ secret = {}, query = {} }}",
                toml_str(secret),
                toml_str(q)
            ),
            Credential::PgUser(u) => format!(
                "{{ secret = {}, user = {} }}",
                toml_str(secret),
                toml_str(u)
            ),
            Credential::ClientCert => format!(
                "{{ client_cert = {}, client_key = {} }}",
                toml_str(cert_secret_name(secret)),
                toml_str(secret)
            ),
        }
    }
}

/// The `protocol` of a service, and so which upstream the harness starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// A real HTTPS server (own test CA).
    Https,
    /// A plain-HTTP server.
    Http,
    /// A real PostgreSQL server ([`Postgres`]) with database `billing`.
    Postgres,
    /// A real MariaDB server ([`MariaDb`]) with database `billing`.
    Mysql,
    /// The Kubernetes API server stand-in ([`KubeApi`]), which accepts the
    /// service's secret as its bearer token.
    Kubernetes,
    /// A private OpenSSH server ([`Sshd`]) whose authorized ed25519 key is
    /// the vault secret; Sluice logs in as the user running the tests.
    Ssh,
}

impl Protocol {
    fn keyword(self) -> &'static str {
        match self {
            Protocol::Https => "https",
            Protocol::Http => "http",
            Protocol::Postgres => "postgres",
            Protocol::Mysql => "mysql",
            Protocol::Kubernetes => "kubernetes",
            Protocol::Ssh => "ssh",
        }
    }
}

/// One `[[service]]` and the upstream the harness starts for it.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub name: String,
    pub host: String,
    pub protocol: Protocol,
    /// PostgreSQL: `upstream_tls`; `verify-full`, `require` and `None` (the
    /// default, `verify-full`) also make the server accept TLS with a
    /// certificate from the stack's test CA.
    pub upstream_tls: Option<String>,
    pub credential: Credential,
    /// Extra TOML lines for the table, e.g. `deny = [...]`.
    pub extra: String,
    /// SSH: `upstream_host_key`; the sshd's own key when `None`.
    pub upstream_host_key: Option<String>,
}

impl ServiceSpec {
    /// An `https` service whose upstream is a real HTTPS server for `host`.
    pub fn https(name: &str, host: &str) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            host: host.into(),
            protocol: Protocol::Https,
            upstream_tls: None,
            credential: Credential::bearer(),
            extra: String::new(),
            upstream_host_key: None,
        }
    }

    /// An `http` service whose upstream is a plain-HTTP server for `host`.
    pub fn http(name: &str, host: &str) -> ServiceSpec {
        ServiceSpec {
            protocol: Protocol::Http,
            ..ServiceSpec::https(name, host)
        }
    }

    /// A `postgres` service for `host`: a fresh PostgreSQL server
    /// ([`Postgres`]) whose role `billing` has the vault secret as its
    /// password, `upstream_tls = "disable"` unless [`ServiceSpec::upstream_tls`]
    /// says otherwise.
    pub fn postgres(name: &str, host: &str) -> ServiceSpec {
        ServiceSpec {
            protocol: Protocol::Postgres,
            upstream_tls: Some("disable".into()),
            credential: Credential::PgUser(crate::postgres::ROLE.into()),
            ..ServiceSpec::https(name, host)
        }
    }

    /// A `mysql` service for `host`: a fresh MariaDB server ([`MariaDb`])
    /// whose user [`crate::mariadb::NATIVE_USER`] has the vault secret as
    /// its password, `upstream_tls = "disable"` unless
    /// [`ServiceSpec::upstream_tls`] says otherwise.
    pub fn mysql(name: &str, host: &str) -> ServiceSpec {
        ServiceSpec {
            protocol: Protocol::Mysql,
            credential: Credential::PgUser(crate::mariadb::NATIVE_USER.into()),
            ..ServiceSpec::postgres(name, host)
        }
    }

    /// A `kubernetes` service for `host`: the API server stand-in
    /// ([`KubeApi`]), the secret as bearer token.
    pub fn kubernetes(name: &str, host: &str) -> ServiceSpec {
        ServiceSpec {
            protocol: Protocol::Kubernetes,
            ..ServiceSpec::https(name, host)
        }
    }

    /// An `ssh` service for `host`: a private sshd ([`Sshd`]) whose
    /// authorized key is the vault secret, `credential.user` the user
    /// running the tests, `upstream_host_key` the sshd's host key unless
    /// [`ServiceSpec::upstream_host_key`] says otherwise.
    pub fn ssh(name: &str, host: &str) -> ServiceSpec {
        ServiceSpec {
            protocol: Protocol::Ssh,
            credential: Credential::InPlace,
            ..ServiceSpec::https(name, host)
        }
    }

    /// `upstream_host_key = LINE` (SSH) instead of the sshd's own key.
    pub fn upstream_host_key(mut self, line: &str) -> ServiceSpec {
        self.upstream_host_key = Some(line.into());
        self
    }

    /// No `upstream_tls` key (PostgreSQL): Sluice's default, `verify-full`;
    /// the server gets TLS and `upstream_ca` is set as for `verify-full`.
    pub fn default_upstream_tls(mut self) -> ServiceSpec {
        self.upstream_tls = None;
        self
    }

    /// `upstream_tls = MODE` (PostgreSQL).
    pub fn upstream_tls(mut self, mode: &str) -> ServiceSpec {
        self.upstream_tls = Some(mode.into());
        self
    }

    pub fn credential(mut self, credential: Credential) -> ServiceSpec {
        self.credential = credential;
        self
    }

    pub fn extra(mut self, toml: &str) -> ServiceSpec {
        self.extra.push_str(toml);
        self.extra.push('\n');
        self
    }

    /// The vault secret name: `<service>-key`.
    pub fn secret_name(&self) -> String {
        format!("{}-key", self.name)
    }
}

/// The vault secret of a [`Credential::ClientCert`]'s certificate, beside
/// its key `key_secret`.
fn cert_secret_name(key_secret: &str) -> String {
    format!("{}-cert", key_secret.trim_end_matches("-key"))
}

/// Configures a [`Stack`].
pub struct StackBuilder {
    label: String,
    agent: String,
    /// More agents besides `agent`, with cgroups of their own.
    other_agents: Vec<String>,
    /// Extra lines for every `[[agent]]` table.
    agent_toml: String,
    services: Vec<ServiceSpec>,
    egress: String,
    cgroup_prefix: String,
    /// Extra `[gateway]` lines, e.g. `approval_timeout = "2s"`.
    gateway: String,
    redis_password: bool,
    /// Extra lines for one agent's table: (agent, lines).
    agent_lines: Vec<(String, String)>,
    /// Extra top-level tables, e.g. `[[oidc]]` entries.
    tables: String,
}

impl StackBuilder {
    /// An extra `[gateway]` line, e.g. `approval_timeout = "2s"`.
    pub fn gateway(mut self, toml: &str) -> StackBuilder {
        self.gateway.push_str(toml);
        self.gateway.push('\n');
        self
    }

    /// Redis with `requirepass` (a random password), which Sluice reads
    /// from `gateway.redis_password_file` (`<dir>/redis.password`, 0600).
    pub fn redis_password(mut self) -> StackBuilder {
        self.redis_password = true;
        self
    }

    pub fn service(mut self, spec: ServiceSpec) -> StackBuilder {
        self.services.push(spec);
        self
    }

    /// `egress = "deny"` (the default) or `"allow"`.
    pub fn egress(mut self, egress: &str) -> StackBuilder {
        self.egress = egress.into();
        self
    }

    /// The agent's name (default [`AGENT`]).
    pub fn agent(mut self, name: &str) -> StackBuilder {
        self.agent = name.into();
        self
    }

    /// A further `[[agent]]` named `name` with a cgroup of its own; its
    /// tokens come from [`Sluice::token_issue`].
    pub fn also_agent(mut self, name: &str) -> StackBuilder {
        self.other_agents.push(name.into());
        self
    }

    /// An extra line for every `[[agent]]` table, e.g.
    /// `redirect = "10.213.0.1:15001"`.
    pub fn agent_line(mut self, toml: &str) -> StackBuilder {
        self.agent_toml.push_str(toml);
        self.agent_toml.push('\n');
        self
    }

    /// An extra line for the `[[agent]]` table of `agent` only, e.g. an
    /// OIDC binding `oidc = { issuer = "ci", subject = "repo:*" }`.
    pub fn agent_line_for(mut self, agent: &str, toml: &str) -> StackBuilder {
        self.agent_lines.push((agent.into(), toml.into()));
        self
    }

    /// Extra top-level tables, e.g. an `[[oidc]]` entry.
    pub fn tables(mut self, toml: &str) -> StackBuilder {
        self.tables.push('\n');
        self.tables.push_str(toml);
        self
    }

    /// Parent cgroup of the agent cgroup (default `sluice-test`).
    pub fn cgroup_prefix(mut self, prefix: &str) -> StackBuilder {
        self.cgroup_prefix = prefix.into();
        self
    }

    /// Starts everything; see [`Stack`]. Secrets are put before the daemon
    /// starts.
    pub fn start(self) -> Result<Stack> {
        let mut stack = self.prepare()?;
        for s in &stack.services {
            stack.sluice.secret_put(&s.spec.secret_name(), &s.secret)?;
            if let Some(cert) = &s.client_cert {
                let name = cert_secret_name(&s.spec.secret_name());
                stack.sluice.secret_put(&name, cert)?;
            }
        }
        stack.sluice.start()?;
        Ok(stack)
    }

    /// Everything but the secrets and the daemon (the demo does those
    /// steps itself, visibly).
    pub fn prepare(self) -> Result<Stack> {
        let label = crate::unique_name(&self.label);
        let dir = tempfile::Builder::new()
            .prefix(&format!("sluice-{label}-"))
            .tempdir()?;
        let ca = TestCa::new(&dir.path().join("upstream-ca"))?;
        let mut gateway_toml = self.gateway;
        let redis = if self.redis_password {
            let password = crate::random_hex(16);
            let file = dir.path().join("redis.password");
            {
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .create_new(true)
                    .write(true)
                    .mode(0o600)
                    .open(&file)?;
                std::io::Write::write_all(&mut f, format!("{password}\n").as_bytes())?;
            }
            gateway_toml.push_str(&format!(
                "redis_password_file = {}\n",
                toml_str(file.to_str().expect("utf-8"))
            ));
            Redis::start_with_password(&dir.path().join("redis"), &password)?
        } else {
            Redis::start(&dir.path().join("redis"))?
        };
        let mut services = Vec::new();
        let mut services_toml = String::new();
        for spec in self.services {
            let ip = next_upstream_ip();
            let mut secret = crate::random_secret();
            let mut client_cert = None;
            let pg_tls = matches!(spec.protocol, Protocol::Postgres | Protocol::Mysql)
                && matches!(
                    spec.upstream_tls.as_deref(),
                    None | Some("require" | "verify-full")
                );
            let backend = match spec.protocol {
                Protocol::Https => Backend::Http(Upstream::https(&ca, &spec.host, ip)?),
                Protocol::Http => Backend::Http(Upstream::http(&spec.host, ip)?),
                Protocol::Kubernetes => {
                    let value = crate::random_secret();
                    let auth = match spec.credential {
                        Credential::ClientCert => {
                            let leaf = ca.leaf(&["sluice-upstream-client"])?;
                            secret = leaf.key_pem;
                            client_cert = Some(leaf.cert_pem);
                            Auth::ClientCert
                        }
                        _ => Auth::Bearer(secret.clone()),
                    };
                    Backend::Kube(KubeApi::start(&ca, &spec.host, ip, auth, &value)?)
                }
                Protocol::Postgres => {
                    let leaf = if pg_tls {
                        Some(ca.leaf(&[&spec.host])?)
                    } else {
                        None
                    };
                    Backend::Postgres(Postgres::start(ip, &secret, leaf.as_ref())?)
                }
                Protocol::Mysql => {
                    let leaf = if pg_tls {
                        Some(ca.leaf(&[&spec.host])?)
                    } else {
                        None
                    };
                    Backend::Mysql(MariaDb::start(ip, &secret, leaf.as_ref())?)
                }
                Protocol::Ssh => {
                    let sshd = Sshd::start(ip, UserKey::Ed25519);
                    secret = sshd.user_key_pem();
                    Backend::Ssh(sshd)
                }
            };
            let credential = match &backend {
                Backend::Ssh(sshd) => format!(
                    "{{ secret = {}, user = {} }}",
                    toml_str(&spec.secret_name()),
                    toml_str(&sshd.user)
                ),
                _ => spec.credential.toml(&spec.secret_name()),
            };
            services_toml.push_str(&format!(
                "\n[[service]]\nname = {}\nprotocol = {}\nupstream = {}\nresolve = [{}]\ncredential = {}\n",
                toml_str(&spec.name),
                toml_str(spec.protocol.keyword()),
                toml_str(format!("{}:{}", spec.host, backend.addr().port())),
                toml_str(ip.to_string()),
                credential,
            ));
            if let Backend::Ssh(sshd) = &backend {
                let key = spec
                    .upstream_host_key
                    .clone()
                    .unwrap_or_else(|| sshd.host_key.to_openssh().expect("encodable key"));
                services_toml.push_str(&format!("upstream_host_key = {}\n", toml_str(key)));
            }
            if matches!(spec.protocol, Protocol::Https | Protocol::Kubernetes) || pg_tls {
                services_toml.push_str(&format!(
                    "upstream_ca = {}\n",
                    toml_str(ca.pem_path().to_str().expect("utf-8"))
                ));
            }
            if let (Protocol::Postgres | Protocol::Mysql, Some(mode)) =
                (spec.protocol, &spec.upstream_tls)
            {
                services_toml.push_str(&format!("upstream_tls = {}\n", toml_str(mode)));
            }
            services_toml.push_str(&spec.extra);
            services.push(StackService {
                secret,
                client_cert,
                spec,
                backend,
            });
        }
        let sluice = Sluice::new(SluiceOptions {
            label,
            dir: dir.path().to_path_buf(),
            redis_url: redis.url(),
            agents: std::iter::once(self.agent.clone())
                .chain(self.other_agents)
                .collect(),
            cgroup_prefix: self.cgroup_prefix,
            agent_toml: self.agent_toml,
            agent_lines: self.agent_lines,
            egress: self.egress,
            gateway_toml,
            services_toml: services_toml + &self.tables,
        })?;
        let hosts = dir.path().join("agent-hosts");
        let mut hosts_text = String::from("127.0.0.1 localhost\n::1 localhost ip6-localhost\n");
        for s in &services {
            hosts_text.push_str(&format!("{} {}\n", s.backend.addr().ip(), s.spec.host));
        }
        std::fs::write(&hosts, hosts_text)?;
        Ok(Stack {
            sluice,
            agent: self.agent,
            services,
            redis,
            ca,
            hosts,
            dir: Some(dir),
        })
    }
}

/// A service of a running stack.
pub struct StackService {
    pub spec: ServiceSpec,
    /// The secret value in the vault (for PostgreSQL: role `billing`'s
    /// password; for a client certificate, its key).
    pub secret: String,
    /// The certificate (PEM) of a [`Credential::ClientCert`].
    pub client_cert: Option<String>,
    pub backend: Backend,
}

/// The real server behind a service.
pub enum Backend {
    Http(Upstream),
    Postgres(Postgres),
    Mysql(MariaDb),
    Kube(KubeApi),
    Ssh(Sshd),
}

impl Backend {
    /// Where it listens.
    pub fn addr(&self) -> std::net::SocketAddr {
        match self {
            Backend::Http(u) => u.addr(),
            Backend::Postgres(p) => p.addr(),
            Backend::Mysql(m) => m.addr(),
            Backend::Kube(k) => k.addr(),
            Backend::Ssh(s) => s.addr,
        }
    }
}

/// A running test environment. Dropping it tears everything down (in
/// field order: Sluice first, so no agent is left redirected).
pub struct Stack {
    pub sluice: Sluice,
    agent: String,
    pub services: Vec<StackService>,
    pub redis: Redis,
    pub ca: TestCa,
    /// `/etc/hosts` for agents that resolve service names themselves.
    pub hosts: PathBuf,
    dir: Option<tempfile::TempDir>,
}

/// What an agent's curl got.
#[derive(Debug, Clone)]
pub struct CurlResult {
    /// curl's exit code (0 = transfer done, 7 = could not connect, …).
    pub exit: i32,
    /// HTTP status, 0 when there was no response.
    pub status: u16,
    /// `1.1` or `2`.
    pub http_version: String,
    /// The peer address as curl saw it (`getpeername`).
    pub remote_ip: String,
    pub body: String,
    pub stderr: String,
}

impl CurlResult {
    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_str(&self.body)
            .with_context(|| format!("response body is not JSON: {}", self.body))
    }
}

const CURL_MARK: &str = "--sluice-test-curl--";

/// `python3 -c TCP_CONNECT_PROBE ADDR PORT`: one TCP connect, printing
/// `connected` or the errno name (`EPERM`, `ECONNREFUSED`, …).
pub const TCP_CONNECT_PROBE: &str = r#"
import errno, socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
s.settimeout(5)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("connected")
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e)))
"#;

/// Upstream addresses: 127.0.0.2 – 127.0.0.254, spread over tests.
pub fn next_upstream_ip() -> IpAddr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) + std::process::id();
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (n % 253) as u8))
}

impl Stack {
    /// A stack named after the test (`label` names its cgroup, pins, dirs).
    pub fn builder(label: &str) -> StackBuilder {
        StackBuilder {
            label: label.into(),
            agent: AGENT.into(),
            other_agents: Vec::new(),
            agent_toml: String::new(),
            services: Vec::new(),
            egress: "deny".into(),
            cgroup_prefix: "sluice-test".into(),
            gateway: String::new(),
            redis_password: false,
            agent_lines: Vec::new(),
            tables: String::new(),
        }
    }

    /// The agent's name.
    pub fn agent(&self) -> &str {
        &self.agent
    }

    /// The stack's temp dir.
    pub fn dir(&self) -> PathBuf {
        self.dir
            .as_ref()
            .expect("present until drop")
            .path()
            .to_path_buf()
    }

    fn service(&self, name: &str) -> &StackService {
        self.services
            .iter()
            .find(|s| s.spec.name == name)
            .unwrap_or_else(|| panic!("no service {name:?} in this stack"))
    }

    /// The HTTP(S) upstream of service `name`.
    pub fn upstream(&self, name: &str) -> &Upstream {
        match &self.service(name).backend {
            Backend::Http(u) => u,
            _ => panic!("service {name:?} is not an HTTP service"),
        }
    }

    /// The Kubernetes API server stand-in of service `name`.
    pub fn kube(&self, name: &str) -> &KubeApi {
        match &self.service(name).backend {
            Backend::Kube(k) => k,
            _ => panic!("service {name:?} is not a Kubernetes service"),
        }
    }

    /// The sshd of service `name`.
    pub fn sshd(&self, name: &str) -> &Sshd {
        match &self.service(name).backend {
            Backend::Ssh(s) => s,
            _ => panic!("service {name:?} is not SSH"),
        }
    }

    /// The PostgreSQL server of service `name`.
    pub fn postgres(&self, name: &str) -> &Postgres {
        match &self.service(name).backend {
            Backend::Postgres(p) => p,
            _ => panic!("service {name:?} is not PostgreSQL"),
        }
    }

    fn service_mut(&mut self, name: &str) -> &mut StackService {
        self.services
            .iter_mut()
            .find(|s| s.spec.name == name)
            .unwrap_or_else(|| panic!("no service {name:?} in this stack"))
    }

    /// The PostgreSQL server of service `name`, to stop or restart it.
    pub fn postgres_mut(&mut self, name: &str) -> &mut Postgres {
        match &mut self.service_mut(name).backend {
            Backend::Postgres(p) => p,
            _ => panic!("service {name:?} is not PostgreSQL"),
        }
    }

    /// The MariaDB server of service `name`.
    pub fn mariadb(&self, name: &str) -> &MariaDb {
        match &self.service(name).backend {
            Backend::Mysql(m) => m,
            _ => panic!("service {name:?} is not MySQL"),
        }
    }

    /// The MariaDB server of service `name`, to stop it.
    pub fn mariadb_mut(&mut self, name: &str) -> &mut MariaDb {
        match &mut self.service_mut(name).backend {
            Backend::Mysql(m) => m,
            _ => panic!("service {name:?} is not MySQL"),
        }
    }

    /// The secret value of service `name`.
    pub fn secret(&self, name: &str) -> &str {
        &self.service(name).secret
    }

    /// The URL agents use for service `name`: `https://host:port/path`.
    pub fn url(&self, name: &str, path: &str) -> String {
        self.upstream(name).url(path)
    }

    /// A fresh token for `service`, valid for an hour.
    pub fn token(&self, service: &str) -> Result<String> {
        self.sluice.token_issue(&self.agent, service, "1h")
    }

    /// `curl --resolve HOST:PORT:IP` arguments for every service.
    pub fn resolve_args(&self) -> Vec<String> {
        self.services
            .iter()
            .filter(|s| matches!(s.backend, Backend::Http(_)))
            .flat_map(|s| {
                let a = s.backend.addr();
                [
                    "--resolve".to_string(),
                    format!("{}:{}:{}", s.spec.host, a.port(), a.ip()),
                ]
            })
            .collect()
    }

    /// Runs curl as the agent (`sluice exec`), trusting Sluice's CA, with
    /// `--resolve` for every service, then `args` (which include the URL).
    pub fn curl(&self, args: &[&str]) -> Result<CurlResult> {
        let mut all: Vec<String> = self.resolve_args();
        all.extend(args.iter().map(|s| s.to_string()));
        self.curl_raw(&all)
    }

    /// Like [`Stack::curl`] without the `--resolve` arguments.
    pub fn curl_raw<S: AsRef<str>>(&self, args: &[S]) -> Result<CurlResult> {
        self.curl_via(&self.sluice, &self.agent, args)
    }

    /// Like [`Stack::curl_raw`], as `agent` of another gateway `sluice`
    /// (e.g. a second `sluice run` sharing this stack's Redis), trusting
    /// that gateway's CA.
    pub fn curl_via<S: AsRef<str>>(
        &self,
        sluice: &Sluice,
        agent: &str,
        args: &[S],
    ) -> Result<CurlResult> {
        let ca = sluice.ca_cert_path()?;
        let mut argv: Vec<String> = vec![
            "curl".into(),
            "-sS".into(),
            "--max-time".into(),
            "15".into(),
            "--noproxy".into(),
            "*".into(),
            "--cacert".into(),
            ca.display().to_string(),
            "-w".into(),
            format!("\n{CURL_MARK} %{{http_code}} %{{http_version}} %{{remote_ip}}\n"),
        ];
        argv.extend(args.iter().map(|s| s.as_ref().to_string()));
        let out = sluice.exec(agent, &argv)?;
        parse_curl(&out)
    }

    /// Runs `argv` as the agent with the services' names in its `/etc/hosts`
    /// (a bind mount in a private mount namespace: the host's file is not
    /// touched) and `env` set, e.g. for Python `requests`.
    pub fn agent_with_hosts<S: AsRef<OsStr>>(
        &self,
        env: &[(&str, &str)],
        argv: &[S],
    ) -> Result<Output> {
        let argv = self.hosts_argv(env, argv);
        self.sluice.exec(&self.agent, &argv)
    }

    /// Like [`Stack::agent_with_hosts`] but spawned, with piped stdin and
    /// stdout, for interactive agents.
    pub fn spawn_agent_with_hosts<S: AsRef<OsStr>>(
        &self,
        env: &[(&str, &str)],
        argv: &[S],
    ) -> Result<Child> {
        let argv = self.hosts_argv(env, argv);
        self.sluice.exec_spawn(&self.agent, &argv)
    }

    fn hosts_argv<S: AsRef<OsStr>>(
        &self,
        env: &[(&str, &str)],
        argv: &[S],
    ) -> Vec<std::ffi::OsString> {
        let mut all: Vec<std::ffi::OsString> = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            r#"mount --bind "$0" /etc/hosts && exec "$@""#,
        ]
        .iter()
        .map(Into::into)
        .collect();
        all.push(self.hosts.clone().into());
        all.push("env".into());
        all.extend(env.iter().map(|(k, v)| format!("{k}={v}").into()));
        all.extend(argv.iter().map(|a| a.as_ref().to_os_string()));
        all
    }

    /// Runs a Python script as the agent ([`Stack::agent_with_hosts`]).
    pub fn python(&self, env: &[(&str, &str)], script: &str, args: &[&str]) -> Result<Output> {
        let mut argv = vec!["python3", "-c", script];
        argv.extend_from_slice(args);
        self.agent_with_hosts(env, &argv)
    }

    /// Tries a plain TCP connect from inside the agent cgroup; returns
    /// `Ok(())` or the errno name (`EPERM`, `ECONNREFUSED`, …).
    pub fn agent_tcp_connect(
        &self,
        addr: std::net::SocketAddr,
    ) -> Result<std::result::Result<(), String>> {
        let out = self.sluice.exec(
            &self.agent,
            &[
                "python3",
                "-c",
                TCP_CONNECT_PROBE,
                &addr.ip().to_string(),
                &addr.port().to_string(),
            ],
        )?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || text.is_empty() {
            bail!(
                "agent connect probe failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(if text == "connected" {
            Ok(())
        } else {
            Err(text)
        })
    }

    /// Asserts that no service's secret appears in any agent output,
    /// sluice log, session record or state file.
    pub fn assert_no_secret_leaked(&self) {
        let texts = self.sluice.all_output_text();
        for s in &self.services {
            crate::assert_no_secret(&s.secret, &texts);
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- sluice run output (last run) ---\n{}",
                crate::sluice::tail(&self.sluice.daemon_log(), 80)
            );
            if let Some(dir) = self.dir.take() {
                eprintln!("--- test files kept in {} ---", dir.keep().display());
            }
        } else if std::env::var_os("SLUICE_TEST_KEEP").is_some() {
            if let Some(dir) = self.dir.take() {
                eprintln!("test files kept in {}", dir.keep().display());
            }
        }
        // Fields drop next: sluice (teardown), upstreams, redis, temp dir.
    }
}

fn parse_curl(out: &Output) -> Result<CurlResult> {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let exit = out.status.code().unwrap_or(-1);
    let Some(at) = stdout.rfind(CURL_MARK) else {
        return Ok(CurlResult {
            exit,
            status: 0,
            http_version: String::new(),
            remote_ip: String::new(),
            body: stdout,
            stderr,
        });
    };
    let mut fields = stdout[at + CURL_MARK.len()..].split_whitespace();
    let status = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let http_version = fields.next().unwrap_or("").to_string();
    let remote_ip = fields.next().unwrap_or("").to_string();
    let body = stdout[..at]
        .strip_suffix('\n')
        .unwrap_or(&stdout[..at])
        .to_string();
    Ok(CurlResult {
        exit,
        status,
        http_version,
        remote_ip,
        body,
        stderr,
    })
}
