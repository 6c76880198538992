//! `cargo xtask dist`: the Debian package, made by cargo-deb from
//! `[package.metadata.deb]` in `gateway/Cargo.toml`.
//!
//! The package holds `/usr/bin/sluice`, the units of `systemd/` and
//! `/etc/sluice/sluice.toml.example`; its maintainer scripts are
//! `packaging/debian/{postinst,prerm,postrm}`.
//!
//! `--dev` packages the debug binary instead of a release build, with light
//! compression, into `target/debian-dev/`. `cargo xtask test` uses it so the
//! package test costs seconds, not a second full (release) build; cargo-deb
//! warns that it is meant for releases, which it is not.
use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use crate::{build, sh};

/// The cargo-deb release `setup` installs when none is present (3.x still
/// accepts `--profile dev`, which `--dev` relies on).
pub const CARGO_DEB_VERSION: &str = "3.8.0";

/// `cargo xtask dist [--dev]`: builds the binary, then the package; returns
/// the path of the `.deb`.
pub fn run(dev: bool) -> Result<PathBuf> {
    build::run(!dev)?;
    package(dev)
}

/// Packages the binary already built (`target/release/sluice`, or
/// `target/debug/sluice` with `dev`) and returns the path of the `.deb`.
pub fn package(dev: bool) -> Result<PathBuf> {
    if sh::find_program("cargo-deb").is_none() {
        bail!("cargo-deb is not installed; run `cargo xtask setup`");
    }
    let out_dir = build::target_dir().join(if dev { "debian-dev" } else { "debian" });
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(sh::workspace_root())
        // `--strip`: the release profile keeps debug info (debug = 1), which
        // cargo-deb would otherwise ship: 125 MB instead of 15 MB.
        .args([
            "deb",
            "--package",
            "sluice",
            "--no-build",
            "--strip",
            "--output",
        ])
        .arg(&out_dir)
        .env("PATH", sh::path_with_cargo_bin())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    if dev {
        cmd.args(["--profile", "dev", "--fast", "--quiet"]);
    }
    println!(
        "dist: {} package",
        if dev {
            "development (debug binary)"
        } else {
            "release"
        }
    );
    println!("  $ {}", sh::display(&cmd));
    let out = cmd.output().context("cannot start cargo deb")?;
    if !out.status.success() {
        bail!("cargo deb failed with {}", out.status);
    }
    // cargo-deb prints the path of the package it wrote as its last line.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let deb = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .with_context(|| format!("cargo deb printed no .deb path: {stdout}"))?;
    if !deb.is_file() {
        bail!("cargo deb reported {} but it does not exist", deb.display());
    }
    println!("dist: {}", deb.display());
    Ok(deb)
}
