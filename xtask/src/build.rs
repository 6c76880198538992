//! `cargo xtask build`: builds the `sluice` binary.
//!
//! `gateway/build.rs` compiles the eBPF programs with nightly and
//! bpf-linker and embeds the object, so one `cargo build` does it all.
use std::{path::PathBuf, process::Command};

use anyhow::Result;

use crate::sh;

/// Builds `sluice` and returns the path of the binary.
pub fn run(release: bool) -> Result<PathBuf> {
    let root = sh::workspace_root();
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(&root)
        .args(["build", "--package", "sluice"])
        .env("PATH", sh::path_with_cargo_bin());
    if release {
        cmd.arg("--release");
    }
    println!(
        "build: sluice ({})",
        if release { "release" } else { "debug" }
    );
    sh::run(&mut cmd)?;
    let bin = target_dir()
        .join(if release { "release" } else { "debug" })
        .join("sluice");
    println!("build: {}", bin.display());
    Ok(bin)
}

/// The cargo target directory (`CARGO_TARGET_DIR` or `<workspace>/target`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                sh::workspace_root().join(dir)
            }
        }
        None => sh::workspace_root().join("target"),
    }
}
