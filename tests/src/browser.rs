//! A real browser for the console tests: Debian's `chromium`, headless,
//! driven by `chromedriver` over WebDriver (W3C WebDriver) through the
//! `fantoccini` client.
//!
//! Each [`Browser`] runs its own `chromedriver` on a free loopback port
//! with a private `HOME` and profile in a temp dir. The certificates of
//! `trust` (PEM files: Sluice's local CA, the test issuer's CA) are added
//! to that `HOME`'s NSS database with `certutil`, so pages are verified as
//! a person's browser would verify them, with no certificate errors
//! ignored. The driver (and with it the browser) is killed by PID on drop.
use std::{
    net::{IpAddr, TcpListener},
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;

use crate::{poll, process};

/// The browser binary (Debian's `chromium`).
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// One headless browser session.
pub struct Browser {
    rt: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: Child,
    home: tempfile::TempDir,
}

/// A free TCP port on 127.0.0.1 (bound, then released for chromedriver).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Creates `home/.pki/nssdb` trusting each PEM CA of `trust`.
fn trust_store(home: &Path, trust: &[&Path]) -> Result<()> {
    let db = home.join(".pki/nssdb");
    std::fs::create_dir_all(&db)?;
    let db_arg = format!("sql:{}", db.display());
    let run = |args: &[&str]| -> Result<()> {
        let out = process::output_with_timeout(
            Command::new("certutil").args(args),
            None,
            Duration::from_secs(30),
        )
        .context("certutil (Debian: libnss3-tools; run `cargo xtask setup`)")?;
        if !out.status.success() {
            bail!(
                "certutil {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    };
    run(&["-d", &db_arg, "-N", "--empty-password"])?;
    for (i, ca) in trust.iter().enumerate() {
        let name = format!("sluice-test-ca-{i}");
        run(&[
            "-d",
            &db_arg,
            "-A",
            "-t",
            "C,,",
            "-n",
            &name,
            "-i",
            &ca.display().to_string(),
        ])?;
    }
    Ok(())
}

impl Browser {
    /// Starts `chromedriver` and a headless `chromium` session trusting
    /// the CAs in `trust` and resolving each `(host, address)` of `hosts`
    /// to that address (Chromium's own resolver rules; nothing on the
    /// system changes).
    pub fn start(trust: &[&Path], hosts: &[(&str, IpAddr)]) -> Result<Browser> {
        let home = tempfile::Builder::new()
            .prefix("sluice-browser-")
            .tempdir()?;
        trust_store(home.path(), trust)?;
        let port = free_port()?;
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .env("HOME", home.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("chromedriver (Debian: chromium-driver; run `cargo xtask setup`)")?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let mut browser = Browser {
            rt,
            client: None,
            driver,
            home,
        };
        let url = format!("http://127.0.0.1:{port}");
        poll("chromedriver to listen", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        })?;
        let profile = browser.home.path().join("profile");
        let rules: Vec<String> = hosts
            .iter()
            .map(|(h, ip)| format!("MAP {h} {ip}"))
            .collect();
        let caps: serde_json::Map<String, serde_json::Value> =
            serde_json::from_value(serde_json::json!({
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": CHROMIUM,
                    "args": [
                        "--headless=new", "--no-sandbox", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run",
                        "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,860",
                        format!("--user-data-dir={}", profile.display()),
                        format!("--host-resolver-rules={}", rules.join(",")),
                    ],
                },
            }))?;
        let client = browser.rt.block_on(async {
            ClientBuilder::new(HttpConnector::new())
                .capabilities(caps)
                .connect(&url)
                .await
        })?;
        browser.client = Some(client);
        Ok(browser)
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("a browser session")
    }

    /// Opens `url` and waits for the page to load.
    pub fn goto(&self, url: &str) -> Result<()> {
        Ok(self.rt.block_on(self.client().goto(url))?)
    }

    /// The address now shown.
    pub fn current_url(&self) -> Result<String> {
        Ok(self.rt.block_on(self.client().current_url())?.to_string())
    }

    /// The page's HTML as the browser holds it now.
    pub fn source(&self) -> Result<String> {
        Ok(self.rt.block_on(self.client().source())?)
    }

    /// Waits up to `timeout` for an element matching `css`; its text.
    /// An element the page replaced between finding and reading is looked
    /// for again.
    pub fn wait_for(&self, css: &str, timeout: Duration) -> Result<String> {
        poll(&format!("an element {css:?}"), timeout, || {
            self.rt.block_on(async {
                let e = self.client().find(Locator::Css(css)).await.ok()?;
                e.text().await.ok()
            })
        })
    }

    /// How many elements match `css` now.
    pub fn count(&self, css: &str) -> Result<usize> {
        Ok(self
            .rt
            .block_on(self.client().find_all(Locator::Css(css)))?
            .len())
    }

    /// Clicks the element matching `css`.
    pub fn click(&self, css: &str) -> Result<()> {
        self.rt.block_on(async {
            self.client().find(Locator::Css(css)).await?.click().await?;
            Ok(())
        })
    }

    /// Types `text` into the element matching `css`.
    pub fn type_into(&self, css: &str, text: &str) -> Result<()> {
        self.rt.block_on(async {
            self.client()
                .find(Locator::Css(css))
                .await?
                .send_keys(text)
                .await?;
            Ok(())
        })
    }

    /// Runs `script` in the page as an asynchronous script (WebDriver
    /// §13.2.2): it gets `args` and calls the last argument with its
    /// result.
    pub fn execute_async(
        &self,
        script: &str,
        args: Vec<serde_json::Value>,
    ) -> Result<serde_json::Value> {
        Ok(self
            .rt
            .block_on(self.client().execute_async(script, args))?)
    }

    /// A PNG screenshot of the window, written to `path`.
    pub fn screenshot(&self, path: &Path) -> Result<()> {
        let png = self.rt.block_on(self.client().screenshot())?;
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = self.rt.block_on(client.close());
        }
        // Only the driver this value started, by its PID; the browser is
        // its child and goes with the session closed above.
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
