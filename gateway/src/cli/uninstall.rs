//! `sluice uninstall [--detach]`: removes Sluice's pins under `bpf_dir`.
use clap::Args;

use super::CliError;
use crate::{config::Config, intercept::programs};

#[derive(Args, Debug)]
pub struct UninstallArgs {
    /// Only detach the programs from agent cgroups; keep the pinned maps
    #[arg(long)]
    pub detach: bool,
}

/// Unpins links (detaching the programs) and, without `--detach`, maps.
///
/// # Errors
/// [`CliError::Runtime`] when a pin cannot be removed.
pub fn run(cfg: &Config, args: UninstallArgs) -> Result<(), CliError> {
    let dir = &cfg.gateway.bpf_dir;
    programs::uninstall(dir, args.detach).map_err(CliError::runtime)?;
    eprintln!(
        "sluice: removed {} under {}",
        if args.detach {
            "links"
        } else {
            "links and maps"
        },
        dir.display()
    );
    Ok(())
}
