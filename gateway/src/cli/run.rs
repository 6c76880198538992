//! `sluice run`: logging set-up, process hardening, and the daemon.
use clap::{Args, ValueEnum};

use super::CliError;
use crate::config::Config;

/// Log line format on stderr.
#[derive(Debug, Clone, Copy, ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (journald/collectors get fields).
    Json,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Log format on stderr; the level comes from RUST_LOG (default info)
    #[arg(long, value_enum, default_value_t)]
    pub log_format: LogFormat,
}

/// Starts the daemon and blocks until SIGTERM/SIGINT.
///
/// # Errors
/// [`CliError::Usage`] when not root; [`CliError::Runtime`] when start-up fails.
pub fn run(cfg: Config, args: RunArgs) -> Result<(), CliError> {
    init_logging(args.log_format);
    if !nix::unistd::geteuid().is_root() {
        return Err(CliError::Usage(
            "sluice run needs root (CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN to attach cgroup programs)".into(),
        ));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::runtime)?;
    rt.block_on(crate::daemon::run(cfg))
        .map_err(CliError::runtime)
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::{fmt, EnvFilter};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
