//! `cargo xtask setup`: installs what DESIGN.md §3 lists, idempotently.
//!
//! Every step first checks whether its result is already present and skips
//! it if so, so `build`, `test` and `demo` call [`check`] on every run at
//! the cost of a few `dpkg-query`/`rustup` calls.
use std::{fs, path::Path, process::Command};

use anyhow::{bail, Context, Result};

use crate::sh;

/// Debian packages: the LLVM that bpf-linker links against, the servers the
/// end-to-end tests start, the clients they drive, and the OCI runtime and
/// `ip` tool the container tests use (runc rather than crun, which refuses
/// hybrid cgroup hosts), and the console tests' browser.
pub const APT_PACKAGES: &[&str] = &[
    "clang",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "libxml2-dev",
    "redis-server",
    "postgresql",
    "postgresql-client",
    "mariadb-server",
    "mariadb-client",
    "curl",
    "python3-requests",
    "bpftool",
    "runc",
    "iproute2",
    // The SSH tests: a private sshd per test (never the system one), and the
    // ssh/sftp/git clients agents use.
    "openssh-server",
    "openssh-client",
    "git",
    // The test OIDC issuer makes its RSA keys with `openssl genpkey`.
    "openssl",
    // The console tests: a headless browser driven over WebDriver, and
    // certutil to trust the test CAs in its NSS database.
    "chromium",
    "chromium-driver",
    "libnss3-tools",
];

const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// `cargo xtask setup`: reports every step.
pub fn run() -> Result<()> {
    setup(true)?;
    println!("setup: done");
    Ok(())
}

/// The fast path used before `build`, `test` and `demo`: silent unless it
/// has something to install.
pub fn check() -> Result<()> {
    setup(false)
}

fn setup(verbose: bool) -> Result<()> {
    apt_packages(verbose)?;
    nightly(verbose)?;
    bpf_linker(verbose)?;
    cargo_deb(verbose)?;
    bpffs(verbose)?;
    kubectl(verbose)?;
    python_packages(verbose)?;
    node_packages(verbose)?;
    Ok(())
}

/// npm packages the end-to-end tests drive as agents, installed into
/// [`node_modules_dir`]: Node's `ws` WebSocket client and the `mysql2`
/// MySQL client.
pub const NODE_PACKAGES: &[&str] = &["ws@8", "mysql2@3"];

/// Where [`NODE_PACKAGES`] are installed: `target/node-clients`, beside the
/// build, never committed (the tests set `NODE_PATH` to its `node_modules`).
pub fn node_modules_dir() -> std::path::PathBuf {
    sh::workspace_root().join("target/node-clients")
}

fn node_packages(verbose: bool) -> Result<()> {
    let dir = node_modules_dir();
    let missing: Vec<&str> = NODE_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            let name = p.rsplit_once('@').map_or(*p, |(n, _)| n);
            !dir.join("node_modules")
                .join(name)
                .join("package.json")
                .exists()
        })
        .collect();
    if missing.is_empty() {
        if verbose {
            println!("setup: node packages present in {}", dir.display());
        }
        return Ok(());
    }
    if sh::find_program("npm").is_none() {
        bail!("npm not found; install Node.js and npm (Debian: apt-get install nodejs npm)");
    }
    println!(
        "setup: installing node packages into {}: {}",
        dir.display(),
        missing.join(" ")
    );
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    sh::run(
        Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .args(&missing),
    )
}

/// The Kubernetes client the Kubernetes tests drive: any `kubectl` on
/// `PATH`, else Debian's `kubernetes-client`.
fn kubectl(verbose: bool) -> Result<()> {
    if sh::find_program("kubectl").is_some() {
        if verbose {
            println!("setup: kubectl present");
        }
        return Ok(());
    }
    apt_install(&["kubernetes-client"], verbose)
}

/// PyPI packages the end-to-end tests drive as agents: (import name,
/// requirement). psycopg's binary wheel bundles its own libpq (≥ 17, which
/// Debian 12 lacks), the client for PostgreSQL direct TLS; grpcio and
/// websockets are the gRPC and WebSocket clients and servers; paramiko is
/// the Python SSH client; PyMySQL and mysql-connector-python are the MySQL
/// clients agents use; kubernetes is the official Python Kubernetes client.
pub const PYTHON_PACKAGES: &[(&str, &str)] = &[
    ("psycopg", "psycopg[binary]>=3.2"),
    ("grpc", "grpcio>=1.60"),
    ("websockets", "websockets>=12"),
    ("paramiko", "paramiko>=3.4"),
    ("pymysql", "PyMySQL>=1.0"),
    ("mysql.connector", "mysql-connector-python>=8.0"),
    ("kubernetes", "kubernetes>=29"),
];

/// Installs the missing [`PYTHON_PACKAGES`] for the `python3` on `PATH`.
fn python_packages(verbose: bool) -> Result<()> {
    let missing: Vec<&str> = PYTHON_PACKAGES
        .iter()
        .filter(|(module, _)| {
            !Command::new("python3")
                .args(["-c", &format!("import {module}")])
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(|(_, requirement)| *requirement)
        .collect();
    if missing.is_empty() {
        if verbose {
            println!("setup: python packages present");
        }
        return Ok(());
    }
    println!("setup: installing python packages: {}", missing.join(" "));
    sh::run(
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(&missing),
    )
}

/// The packages of `packages` that are not installed.
fn missing_packages(packages: &[&'static str]) -> Vec<&'static str> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${db:Status-Status}\\n"])
        .args(packages)
        .stderr(std::process::Stdio::null())
        .output();
    let installed: Vec<String> = match out {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                l.strip_suffix(" installed")
                    .map(|p| p.split(':').next().unwrap_or(p).to_string())
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    packages
        .iter()
        .copied()
        .filter(|p| !installed.iter().any(|i| i == p))
        .collect()
}

fn apt_packages(verbose: bool) -> Result<()> {
    apt_install(APT_PACKAGES, verbose)
}

/// Installs those of `packages` that are missing (`cargo xtask bench` uses
/// it for its peers), without letting apt start them as services.
pub fn apt_install(packages: &[&'static str], verbose: bool) -> Result<()> {
    let missing = missing_packages(packages);
    if missing.is_empty() {
        if verbose {
            println!("setup: apt packages present ({})", packages.join(" "));
        }
        return Ok(());
    }
    if !sh::is_root() {
        bail!(
            "apt packages missing: {}; run `cargo xtask setup` as root",
            missing.join(" ")
        );
    }
    println!("setup: installing apt packages: {}", missing.join(" "));
    // Package installation must not leave redis-server, postgresql or mariadb running
    // as system services: the tests start their own. A policy-rc.d that
    // answers 101 keeps invoke-rc.d / deb-systemd-invoke from starting them.
    let own_policy = !Path::new(POLICY_RC_D).exists();
    if own_policy {
        fs::write(POLICY_RC_D, "#!/bin/sh\n# written by cargo xtask setup for the duration of apt-get install\nexit 101\n")
            .context("writing policy-rc.d")?;
        set_mode(POLICY_RC_D, 0o755)?;
    }
    let result = (|| {
        sh::run(
            Command::new("apt-get")
                .arg("update")
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
        sh::run(
            Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    })();
    if own_policy {
        let _ = fs::remove_file(POLICY_RC_D);
    }
    result?;
    let still = missing_packages(packages);
    if !still.is_empty() {
        bail!(
            "apt-get install finished but these are still missing: {}",
            still.join(" ")
        );
    }
    Ok(())
}

fn set_mode(path: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {path}"))
}

fn nightly(verbose: bool) -> Result<()> {
    if sh::find_program("rustup").is_none() {
        bail!("rustup not found; install it from https://rustup.rs and rerun `cargo xtask setup`");
    }
    let toolchains = sh::output("rustup", &["toolchain", "list"]).unwrap_or_default();
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        println!("setup: installing the nightly toolchain with rust-src (for the eBPF programs)");
        return sh::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]));
    }
    let components = sh::output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .unwrap_or_default();
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        println!("setup: adding rust-src to nightly");
        return sh::run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]));
    }
    if verbose {
        println!("setup: nightly toolchain with rust-src present");
    }
    Ok(())
}

fn bpf_linker(verbose: bool) -> Result<()> {
    if let Some(path) = sh::find_program("bpf-linker") {
        if verbose {
            println!("setup: bpf-linker present ({})", path.display());
        }
        return Ok(());
    }
    println!("setup: installing bpf-linker against LLVM 22 (about a minute)");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![Path::new(LLVM_PREFIX).join("bin")];
    dirs.extend(std::env::split_paths(&path));
    sh::run(
        Command::new("cargo")
            .args([
                "install",
                "--locked",
                "--no-default-features",
                "--features",
                "llvm-22",
                "bpf-linker",
            ])
            .env("PATH", std::env::join_paths(dirs)?)
            .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX)
            // Run from / so the workspace's .cargo/config.toml does not apply.
            .current_dir("/"),
    )
}

/// cargo-deb, which `cargo xtask dist` (and the package test) uses.
fn cargo_deb(verbose: bool) -> Result<()> {
    if let Some(path) = sh::find_program("cargo-deb") {
        if verbose {
            println!("setup: cargo-deb present ({})", path.display());
        }
        return Ok(());
    }
    println!(
        "setup: installing cargo-deb {} (about a minute)",
        crate::dist::CARGO_DEB_VERSION
    );
    sh::run(
        Command::new("cargo")
            .args([
                "install",
                "--locked",
                "--version",
                crate::dist::CARGO_DEB_VERSION,
                "cargo-deb",
            ])
            .current_dir("/"),
    )
}

/// Whether a filesystem of type `fstype` is mounted at `target`.
fn mounted(fstype: &str, target: &str) -> bool {
    fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 2 && f[1] == target && f[2] == fstype
        })
}

fn bpffs(verbose: bool) -> Result<()> {
    if mounted("bpf", "/sys/fs/bpf") {
        if verbose {
            println!("setup: bpffs mounted at /sys/fs/bpf");
        }
        return Ok(());
    }
    if !sh::is_root() {
        println!("setup: warning: bpffs is not mounted at /sys/fs/bpf; as root: mount -t bpf bpf /sys/fs/bpf");
        return Ok(());
    }
    println!("setup: mounting bpffs at /sys/fs/bpf");
    fs::create_dir_all("/sys/fs/bpf").ok();
    sh::run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}
