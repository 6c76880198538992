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
/// [`CliError::Usage`] without root or the needed capabilities;
/// [`CliError::Runtime`] when start-up fails.
pub fn run(cfg: Config, args: RunArgs) -> Result<(), CliError> {
    init_logging(args.log_format);
    refuse_inside_agent(&cfg)?;
    if let Some(missing) = missing_capabilities() {
        return Err(CliError::Usage(format!(
            "sluice run needs root or the capabilities CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN and CAP_PERFMON (missing {missing})"
        )));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::runtime)?;
    let result = rt.block_on(crate::daemon::run(cfg));
    // Ends every task: open sessions queue their close lines.
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    result.map_err(CliError::runtime)?.flush_all();
    Ok(())
}

/// Refuses (exit 2) to run inside an agent's cgroup: Sluice's own upstream
/// connections would be redirected back to itself.
fn refuse_inside_agent(cfg: &Config) -> Result<(), CliError> {
    let own = crate::intercept::procs::own_cgroup().map_err(CliError::runtime)?;
    match cfg
        .agents
        .iter()
        .find(|a| crate::intercept::procs::in_agent_cgroup(&own, &a.cgroup))
    {
        Some(a) => Err(CliError::Usage(format!(
            "sluice run is inside agent {:?}'s cgroup ({own}), where its own upstream connections would loop back to it; start it outside the agent cgroups",
            a.name
        ))),
        None => Ok(()),
    }
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

/// The capabilities `sluice run` needs that the process does not have in
/// its effective set (read from `/proc/self/status` `CapEff`, capabilities(7)).
fn missing_capabilities() -> Option<String> {
    const NEEDED: [(u32, &str); 4] = [
        (39, "CAP_BPF"),
        (12, "CAP_NET_ADMIN"),
        (21, "CAP_SYS_ADMIN"),
        (38, "CAP_PERFMON"),
    ];
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    let eff = u64::from_str_radix(eff.trim(), 16).ok()?;
    let missing: Vec<&str> = NEEDED
        .iter()
        .filter(|(bit, _)| eff & (1 << bit) == 0)
        .map(|(_, name)| *name)
        .collect();
    (!missing.is_empty()).then(|| missing.join(", "))
}
