//! `cargo xtask install`: what the Debian package does, on a dev box
//! without the package.
//!
//! - the release binary to `/usr/local/bin/sluice`;
//! - the units of `systemd/` to `/etc/systemd/system/`, pointing at that
//!   binary;
//! - the example config to `/etc/sluice/sluice.toml.example`;
//! - then the package's own `packaging/debian/postinst configure`, so the
//!   groups, directories, vault key, approval key, Redis authentication
//!   (README "Redis authentication"; `SLUICE_REDIS_SETUP=no` leaves Redis
//!   alone), CA and config come from the same script as with `dpkg -i`.
//!
//! Nothing is enabled or started. Undo it with `sluice uninstall`, then
//! removing those files (the postinst leaves secrets in /etc/sluice and
//! /var/lib/sluice and records in /var/log/sluice, as the package does).
use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{build, setup, sh};

/// Where the binary goes: not `/usr/bin`, which belongs to the package.
const BIN: &str = "/usr/local/bin/sluice";
/// The path the units name, rewritten to [`BIN`].
const PACKAGED_BIN: &str = "/usr/bin/sluice";
const UNIT_DIR: &str = "/etc/systemd/system";
const ETC_DIR: &str = "/etc/sluice";

pub fn run(debug: bool) -> Result<()> {
    if !sh::is_root() {
        bail!(
            "installing writes to /usr/local/bin, /etc and /var: run `cargo xtask install` as root"
        );
    }
    setup::check()?;
    let built = build::run(!debug)?;
    let root = sh::workspace_root();

    install_file(&built, Path::new(BIN), 0o755)?;
    for unit in units(&root.join("systemd"))? {
        let name = unit.file_name().expect("unit file name");
        let text = fs::read_to_string(&unit).with_context(|| format!("read {}", unit.display()))?;
        let dest = Path::new(UNIT_DIR).join(name);
        write_file(&dest, text.replace(PACKAGED_BIN, BIN).as_bytes(), 0o644)?;
    }
    fs::create_dir_all(ETC_DIR).with_context(|| format!("mkdir {ETC_DIR}"))?;
    install_file(
        &root.join("packaging/sluice.toml.example"),
        &Path::new(ETC_DIR).join("sluice.toml.example"),
        0o644,
    )?;

    sh::run(
        Command::new("sh")
            .arg(root.join("packaging/debian/postinst"))
            .arg("configure")
            .env("SLUICE_INSTALL_BIN", BIN),
    )?;
    if Path::new("/run/systemd/system").is_dir() {
        sh::run(Command::new("systemctl").arg("daemon-reload"))?;
    }
    println!("install: done. Next:");
    println!("  edit {ETC_DIR}/sluice.toml (agents, services), then: {BIN} doctor");
    println!("  systemctl enable --now sluice");
    Ok(())
}

/// The unit files (`*.service`, `*.slice`) in `dir`, sorted.
fn units(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut units: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "service" || e == "slice")
        })
        .collect();
    units.sort();
    if units.is_empty() {
        bail!("no units in {}", dir.display());
    }
    Ok(units)
}

fn install_file(src: &Path, dest: &Path, mode: u32) -> Result<()> {
    let bytes = fs::read(src).with_context(|| format!("read {}", src.display()))?;
    write_file(dest, &bytes, mode)
}

/// Writes `dest` through a temporary file renamed into place, so a running
/// binary or a unit being read is never seen half written.
fn write_file(dest: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let tmp = dest.with_extension("xtask-new");
    fs::write(&tmp, bytes).with_context(|| format!("write {}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", tmp.display()))?;
    fs::rename(&tmp, dest).with_context(|| format!("rename to {}", dest.display()))?;
    println!("install: {}", dest.display());
    Ok(())
}
