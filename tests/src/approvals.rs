//! JIT approvals from the test's side: `sluice approvals list --json`,
//! `sluice approve`, `sluice deny`, waiting for a hold to appear, and
//! running the CLI as another Unix user.
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{poll, process, sluice::COMMAND_TIMEOUT, Sluice};

impl Sluice {
    /// `sluice approvals list --json [--all]`, one object per approval.
    pub fn approvals(&self, all: bool) -> Result<Vec<Value>> {
        let mut args = vec!["--json", "approvals", "list"];
        if all {
            args.push("--all");
        }
        self.cli(&args)?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .with_context(|| format!("approvals list --json printed {l:?}"))
            })
            .collect()
    }

    /// The approval `id` as `approvals list --all --json` shows it.
    pub fn approval(&self, id: &str) -> Result<Option<Value>> {
        Ok(self.approvals(true)?.into_iter().find(|a| a["id"] == id))
    }

    /// Polls `approvals list --json` until a pending approval whose summary
    /// contains `summary` appears, and returns it.
    pub fn wait_for_pending(&self, summary: &str, timeout: Duration) -> Result<Value> {
        poll(
            &format!("a pending approval for {summary:?}"),
            timeout,
            || {
                self.approvals(false).ok()?.into_iter().find(|a| {
                    a["status"] == "pending"
                        && a["summary"].as_str().is_some_and(|s| s.contains(summary))
                })
            },
        )
    }

    /// Polls until approval `id` has `status` (e.g. `abandoned`).
    pub fn wait_for_approval_status(
        &self,
        id: &str,
        status: &str,
        timeout: Duration,
    ) -> Result<Value> {
        poll(&format!("approval {id} to be {status}"), timeout, || {
            self.approval(id)
                .ok()
                .flatten()
                .filter(|a| a["status"] == status)
        })
    }

    /// `sluice approve ID`; its stdout.
    pub fn approve(&self, id: &str) -> Result<String> {
        self.cli(&["approve", id])
    }

    /// `sluice deny ID --reason REASON`; its stdout.
    pub fn deny(&self, id: &str, reason: &str) -> Result<String> {
        self.cli(&["deny", id, "--reason", reason])
    }
}

/// The Unix user `sluice approve` records for this test process: the
/// `sudo` caller when run through sudo, else root.
pub fn expected_approver() -> String {
    std::env::var("SUDO_USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "root".into())
}

/// A throwaway system user (no home, no login shell) created for one test
/// and deleted by name on drop; it belongs to no group but its own.
pub struct ThrowawayUser {
    pub name: String,
    /// A world-readable directory for files the user must read.
    public: tempfile::TempDir,
}

impl ThrowawayUser {
    /// `useradd --system --no-create-home` with a name unique to this run.
    pub fn create() -> Result<ThrowawayUser> {
        let name = format!("sluicet{}", crate::random_hex(4));
        let out = process::output_with_timeout(
            Command::new("useradd").args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                &name,
            ]),
            None,
            COMMAND_TIMEOUT,
        )?;
        if !out.status.success() {
            bail!(
                "useradd {name} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let public = tempfile::Builder::new()
            .prefix("sluice-public-")
            .tempdir()?;
        std::fs::set_permissions(public.path(), std::fs::Permissions::from_mode(0o755))?;
        Ok(ThrowawayUser { name, public })
    }

    /// Copies `file` into the user's readable directory (mode 0644).
    pub fn readable_copy(&self, file: &Path) -> Result<PathBuf> {
        let to = self
            .public
            .path()
            .join(file.file_name().context("a file name")?);
        std::fs::copy(file, &to)?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644))?;
        Ok(to)
    }

    /// Runs `sluice --config CONFIG args…` as this user (`runuser -u`).
    pub fn sluice(&self, config: &Path, args: &[&str]) -> Result<Output> {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", &self.name, "--"])
            .arg(crate::sluice_bin())
            .arg("--config")
            .arg(config)
            .args(args);
        cmd.env_remove("SLUICE_CONFIG").env_remove("SUDO_USER");
        process::output_with_timeout(&mut cmd, None, COMMAND_TIMEOUT)
    }
}

impl Drop for ThrowawayUser {
    fn drop(&mut self) {
        // Only the user this value created, by its unique name.
        let deleted = process::output_with_timeout(
            Command::new("userdel").arg(&self.name),
            None,
            COMMAND_TIMEOUT,
        );
        match deleted {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "userdel {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("userdel {}: {e:#}", self.name),
        }
    }
}
