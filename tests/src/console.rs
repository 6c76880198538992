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
    oidc_issuer::{OidcIssuer, TestUser},
    process, ServiceSpec, Stack,
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

/// The console's address: `127.0.3.<n>:9443`, one per stack in this run.
fn next_console_addr() -> SocketAddr {
    static NEXT: AtomicU8 = AtomicU8::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    SocketAddr::from((Ipv4Addr::new(127, 0, 3, n), 9443))
}

/// A running stack with the console, the issuer and its people.
pub struct ConsoleStack {
    pub stack: Stack,
    pub issuer: OidcIssuer,
    pub listen: SocketAddr,
    client_secret: String,
}

impl ConsoleStack {
    /// Starts the issuer, then the stack with `[[oidc]]` and `[console]`.
    pub fn start(label: &str) -> ConsoleStack {
        let client_secret = crate::random_secret();
        let people: Vec<TestUser> = PEOPLE
            .iter()
            .map(|(login, groups)| TestUser::new(login, groups))
            .collect();
        let issuer = OidcIssuer::start_with_client(CLIENT_ID, &client_secret, &people)
            .expect("start the test OIDC issuer");
        let listen = next_console_addr();
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
        let sections = format!(
            "\n[[oidc]]\nname = \"corp\"\nissuer = {:?}\naudience = {CLIENT_ID:?}\nca = {:?}\n\
             client_id = {CLIENT_ID:?}\nclient_secret = {CLIENT_SECRET_NAME:?}\n\
             \n[console]\nlisten = \"{listen}\"\noidc = \"corp\"\nadmins = [\"group:security\"]\n",
            issuer.url(),
            issuer.ca_path().display().to_string(),
        );
        let config = &stack.sluice.config_path;
        let mut text = std::fs::read_to_string(config).expect("the stack's config");
        text.push_str(&sections);
        std::fs::write(config, text).expect("write the config");
        for s in &stack.services {
            stack.sluice.secret_put(&s.spec.secret_name(), &s.secret).unwrap();
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

    /// A browser trusting Sluice's local CA and the issuer's CA.
    pub fn browser(&self) -> Browser {
        let sluice_ca = self.stack.sluice.ca_cert_path().unwrap();
        Browser::start(&[&sluice_ca, self.issuer.ca_path()]).expect("start chromium")
    }

    /// The OIDC subject of `login` (what `by` records).
    pub fn subject(&self, login: &str) -> String {
        self.issuer.subject(login)
    }

    /// Signs `login` in: the console sends the browser to the issuer, the
    /// issuer signs them in, the browser lands on the approvals page.
    pub fn sign_in(&self, browser: &Browser, login: &str) {
        browser.goto(&self.url("/approvals")).unwrap();
        self.issuer.sign_in_page(browser, login);
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
