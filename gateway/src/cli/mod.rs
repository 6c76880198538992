//! Command-line interface (DESIGN.md §4 "CLI").
//!
//! Exit codes: 0 on success, 2 on bad usage or config (one line naming the
//! key or argument to fix), 1 on a runtime failure.
use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::config::Config;

pub mod approvals;
pub mod ca;
pub mod doctor;
pub mod exec;
pub mod run;
pub mod secret;
pub mod sessions;
pub mod ssh;
pub mod token;
pub mod uninstall;

/// A CLI failure, printed as one line on stderr.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad usage or config: exit 2.
    #[error("{0}")]
    Usage(String),
    /// Runtime failure: exit 1.
    #[error("{0}")]
    Runtime(String),
    /// The child of `sluice exec` exited with this status.
    #[error("command exited with status {0}")]
    Exit(u8),
}

impl CliError {
    /// A runtime failure from any displayable error.
    pub fn runtime(e: impl std::fmt::Display) -> Self {
        CliError::Runtime(e.to_string())
    }
}

impl From<crate::config::ConfigError> for CliError {
    fn from(e: crate::config::ConfigError) -> Self {
        CliError::Usage(format!("config error: {e}"))
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "sluice",
    version,
    about = "Credential-injecting gateway for automation and AI agents"
)]
pub struct Cli {
    /// Config file [default: $SLUICE_CONFIG or /etc/sluice/sluice.toml]
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Print one JSON object per line instead of a table
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon (root): load or adopt eBPF, attach to agent cgroups, serve
    Run(run::RunArgs),
    /// Run CMD inside an agent's cgroup; exits with CMD's status
    Exec(exec::ExecArgs),
    /// Manage sealed secrets (values are never printed)
    #[command(subcommand)]
    Secret(secret::SecretCmd),
    /// Issue, list and revoke agent tokens
    #[command(subcommand)]
    Token(token::TokenCmd),
    /// List JIT approvals
    #[command(subcommand)]
    Approvals(approvals::ApprovalsCmd),
    /// Approve a held operation (root or sluice-admin)
    Approve(approvals::DecideArgs),
    /// Deny a held operation (root or sluice-admin)
    Deny(approvals::DecideArgs),
    /// List, show, follow and replay session records
    #[command(subcommand)]
    Sessions(sessions::SessionsCmd),
    /// Local CA operations
    #[command(subcommand)]
    Ca(ca::CaCmd),
    /// SSH: the known_hosts lines agents trust Sluice with
    #[command(subcommand)]
    Ssh(ssh::SshCmd),
    /// Check kernel, BPF, cgroup2, bpffs, Redis and config; say what to fix
    Doctor,
    /// Remove pinned programs and maps
    Uninstall(uninstall::UninstallArgs),
}

/// Parses arguments, runs the command and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    harden_process();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Exit(code)) => ExitCode::from(code),
        Err(e) => {
            eprintln!("sluice: {e}");
            ExitCode::from(match e {
                CliError::Usage(_) => 2,
                _ => 1,
            })
        }
    }
}

fn dispatch(cli: Cli) -> Result<(), CliError> {
    let path = Config::resolve_path(cli.config.as_deref());
    let json = cli.json;
    // `doctor` reports a broken config instead of refusing to start.
    if let Command::Doctor = cli.command {
        return doctor::run(&path);
    }
    let cfg = Config::load(&path)?;
    match cli.command {
        Command::Run(args) => run::run(cfg, args),
        Command::Exec(args) => exec::run(&cfg, args),
        Command::Secret(cmd) => secret::run(&cfg, cmd, json),
        Command::Token(cmd) => block_on(token::run(&cfg, cmd, json)),
        Command::Sessions(cmd) => block_on(sessions::run(&cfg, cmd, json)),
        Command::Approvals(cmd) => block_on(approvals::list(&cfg, cmd, json)),
        Command::Approve(args) => block_on(approvals::decide(&cfg, args, true)),
        Command::Deny(args) => block_on(approvals::decide(&cfg, args, false)),
        Command::Ca(cmd) => ca::run(&cfg, cmd),
        Command::Ssh(cmd) => ssh::run(&cfg, cmd),
        Command::Uninstall(args) => uninstall::run(&cfg, args),
        Command::Doctor => unreachable!(),
    }
}

/// Runs a CLI future on a small current-thread runtime.
pub fn block_on<F: std::future::Future<Output = Result<(), CliError>>>(
    f: F,
) -> Result<(), CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::runtime)?
        .block_on(f)
}

/// No core dumps and no ptrace by unprivileged users for any `sluice`
/// process: the daemon and `secret put` hold secrets in memory
/// (prctl(2) `PR_SET_DUMPABLE`). Children of `sluice exec` get the normal
/// setting back at exec of a binary they may read.
fn harden_process() {
    // SAFETY: prctl with PR_SET_DUMPABLE takes plain integer arguments.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
}
