//! `cargo xtask demo`: setup, build, then the demo binary of the `tests`
//! crate (`tests/src/bin/demo.rs`), which uses the end-to-end harness.
use std::process::Command;

use anyhow::{bail, Result};

use crate::{build, setup, sh};

pub fn run() -> Result<()> {
    if !sh::is_root() {
        bail!("the demo loads eBPF programs and creates a cgroup: run `cargo xtask demo` as root");
    }
    setup::check()?;
    let bin = build::run(false)?;
    sh::run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(sh::workspace_root())
            .args([
                "run",
                "--quiet",
                "--package",
                "sluice-tests",
                "--bin",
                "demo",
            ])
            .env("SLUICE_BIN", &bin)
            .env("PATH", sh::path_with_cargo_bin()),
    )
}
