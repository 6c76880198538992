//! A stack with the web console (DESIGN.md §9) and the test OIDC issuer
//! people sign in at, for the console tests.
//!
//! Services: `billing-db` (PostgreSQL; `DELETE` needs approval, approvers
//! `group:db-leads`) and `payments-api` (approvers `group:api-leads`).
//! People at the issuer: `alice` (`db-leads`), `bob` (`api-leads`: may
//! look, may not decide billing-db's holds), `carol` (`security`: admin).
//! The console listens on its own loopback address with a certificate
//! from Sluice's local CA; the browser trusts that CA and the issuer's.
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU8, Ordering},
    time::Duration,
};

use serde_json::Value;

use crate::{
    browser::Browser,
    oidc_issuer::{OidcIssuer, HOST},
    process,
    stack::next_upstream_ip,
    ServiceSpec, Stack, Upstream,
};

/// The OIDC client the console is registered as, and its vault secret.
pub const CLIENT_ID: &str = "sluice-console";
const CLIENT_SECRET_NAME: &str = "console-client-secret";

/// The people at the test issuer: (login, groups).
pub const PEOPLE: [(&str, &[&str]); 3] = [
    ("alice", &["db-leads"]),
    ("bob", &["api-leads"]),
    ("carol", &["security"]),
];

/// The console's address `127.0.3.<n>:9443` and the issuer's address
/// `127.0.4.<n>`, one pair per stack in this run.
fn next_addrs() -> (SocketAddr, Ipv4Addr) {
    static NEXT: AtomicU8 = AtomicU8::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    (
        SocketAddr::from((Ipv4Addr::new(127, 0, 3, n), 9443)),
        Ipv4Addr::new(127, 0, 4, n),
    )
}

/// A running stack with the console, the issuer and its people.
pub struct ConsoleStack {
    pub stack: Stack,
    pub issuer: OidcIssuer,
    pub listen: SocketAddr,
    /// A Slack-format `[[notify]]` sink for `approval_wait`.
    pub slack: Upstream,
    client_secret: String,
}

impl ConsoleStack {
    /// Starts the issuer, then the stack with `[[oidc]]` and `[console]`.
    pub fn start(label: &str) -> ConsoleStack {
        let client_secret = crate::random_secret();
        let (listen, issuer_ip) = next_addrs();
        let stack = Stack::builder(label)
            .redis_password()
            .gateway(r#"approval_timeout = "60s""#)
            .service(
                ServiceSpec::postgres("billing-db", "db.internal")
                    .extra(r#"approve = ["DELETE"]"#)
                    .extra(r#"approvers = ["group:db-leads"]"#),
            )
            .service(
                ServiceSpec::https("payments-api", "api.payments.test")
                    .extra(r#"approvers = ["group:api-leads"]"#),
            )
            .prepare()
            .expect("prepare the stack");
        let issuer = OidcIssuer::start_on(&stack.dir().join("idp"), issuer_ip.into())
            .expect("start the test OIDC issuer");
        issuer.set_client(CLIENT_ID, &client_secret);
        let slack = Upstream::http("hooks.test", next_upstream_ip()).expect("a webhook sink");
        let sections = format!(
            "\n{}client_id = {CLIENT_ID:?}\nclient_secret = {CLIENT_SECRET_NAME:?}\n\
             \n[console]\nlisten = \"{listen}\"\noidc = \"corp\"\nadmins = [\"group:security\"]\n\
             \n[[notify]]\nurl = \"http://{}/slack\"\nformat = \"slack\"\nevents = [\"approval_wait\"]\n",
            issuer.config_entry("corp", "sluice"),
            slack.addr(),
        );
        crate::redteam::append_config(&stack, &sections).expect("write the config");
        for s in &stack.services {
            stack
                .sluice
                .secret_put(&s.spec.secret_name(), &s.secret)
                .unwrap();
        }
        stack
            .sluice
            .secret_put(CLIENT_SECRET_NAME, &client_secret)
            .unwrap();
        let mut stack = stack;
        stack.sluice.start().expect("sluice run with the console");
        crate::poll("the console to listen", Duration::from_secs(10), || {
            std::net::TcpStream::connect(listen).ok()
        })
        .unwrap();
        ConsoleStack {
            stack,
            issuer,
            listen,
            slack,
            client_secret,
        }
    }

    /// `https://<listen><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.listen)
    }

    /// The test's temp dir (screenshots go here).
    pub fn dir(&self) -> PathBuf {
        self.stack.dir()
    }

    /// A browser trusting Sluice's local CA and the issuer's CA, which
    /// finds the issuer's host name at its address.
    pub fn browser(&self) -> Browser {
        let sluice_ca = self.stack.sluice.ca_cert_path().unwrap();
        let issuer_ca = self.issuer.ca_path();
        Browser::start(
            &[&sluice_ca, &issuer_ca],
            &[(HOST, self.issuer.addr().ip())],
        )
        .expect("start chromium")
    }

    /// The OIDC subject of `login` (what `by` records).
    pub fn subject(&self, login: &str) -> String {
        format!("{login}@corp.test")
    }

    /// Signs `login` in: the console sends the browser to the issuer,
    /// which signs them in at once with their groups, and the browser
    /// lands on the approvals page.
    pub fn sign_in(&self, browser: &Browser, login: &str) {
        let (_, groups) = PEOPLE
            .iter()
            .find(|(l, _)| *l == login)
            .unwrap_or_else(|| panic!("no {login} among the test people"));
        self.issuer.set_user(&self.subject(login), groups);
        browser.goto(&self.url("/approvals")).unwrap();
        browser
            .wait_for("#pending", Duration::from_secs(10))
            .unwrap_or_else(|e| {
                panic!(
                    "{login} did not reach the approvals page: {e:#}; at {}",
                    browser.current_url().unwrap_or_default()
                )
            });
    }

    /// `curl -s --cacert <sluice CA> args…` from the test host; its stdout.
    pub fn curl(&self, args: &[&str]) -> String {
        let ca = self.stack.sluice.ca_cert_path().unwrap();
        let out = process::output_with_timeout(
            Command::new("curl")
                .args(["-s", "--max-time", "10", "--cacert"])
                .arg(ca)
                .args(args),
            None,
            Duration::from_secs(20),
        )
        .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `log_dir/console.jsonl`, parsed.
    pub fn actions(&self) -> Vec<Value> {
        std::fs::read_to_string(self.stack.sluice.log_dir.join("console.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    /// No service secret, Redis password or client secret in anything
    /// Sluice wrote.
    #[track_caller]
    pub fn assert_nothing_leaked(&self) {
        self.stack.assert_no_secret_leaked();
        let texts = self.stack.sluice.all_output_text();
        crate::assert_no_secret(&self.client_secret, &texts);
        if let Some(password) = self.stack.redis.password() {
            crate::assert_no_secret(password, &texts);
        }
    }
}
