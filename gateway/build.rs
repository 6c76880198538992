//! Builds the eBPF programs in `../ebpf` for `bpfel-unknown-none` with the
//! nightly toolchain and `bpf-linker` (DESIGN.md §3), so that the object can
//! be embedded in the `sluice` binary with `include_bytes_aligned!`.
//!
//! `cargo xtask setup` installs the toolchain this needs.
use std::{env, path::PathBuf, process::Command};

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap();
    let ebpf_dir = root.join("ebpf");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    for watched in [
        "ebpf/src",
        "ebpf/Cargo.toml",
        "common/src",
        "common/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    let target_dir = out_dir.join("ebpf-target");
    let mut cmd = Command::new("rustup");
    cmd.current_dir(&ebpf_dir)
        .args([
            "run",
            "nightly",
            "cargo",
            "build",
            "--release",
            "-Z",
            "build-std=core",
        ])
        .args(["--target", "bpfel-unknown-none", "--target-dir"])
        .arg(&target_dir)
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-Cdebuginfo=2\x1f-Clink-arg=--btf",
        );
    // Do not leak the host build's compiler settings into the BPF build.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        let compiler_setting = key.starts_with("CARGO_")
            || key.starts_with("RUSTC")
            || key == "RUSTFLAGS"
            || key == "RUSTUP_TOOLCHAIN";
        if compiler_setting && key != "CARGO_HOME" && key != "CARGO_ENCODED_RUSTFLAGS" {
            cmd.env_remove(&key);
        }
    }
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("cannot run rustup to build the eBPF programs ({e}); run `cargo xtask setup`")
    });
    if !status.success() {
        panic!("building ebpf/ failed; run `cargo xtask setup` to install nightly, rust-src and bpf-linker");
    }
    let object = target_dir.join("bpfel-unknown-none/release/sluice-ebpf");
    std::fs::copy(&object, out_dir.join("sluice-ebpf.o"))
        .unwrap_or_else(|e| panic!("eBPF object {} missing: {e}", object.display()));
}
