//! `sluice ssh known-hosts` (DESIGN.md §6 "SSH"): the known_hosts lines
//! agents need to trust Sluice's host key for every ssh service.
use clap::Subcommand;

use super::{sessions::print_line, CliError};
use crate::config::{Config, Protocol};

#[derive(Subcommand, Debug)]
pub enum SshCmd {
    /// Print a known_hosts line for every ssh service (host, or [host]:port);
    /// creates the gateway's host key on first use
    KnownHosts,
}

/// Runs an `ssh` subcommand.
///
/// # Errors
/// [`CliError::Runtime`] when `state_dir/ssh_host_ed25519_key` cannot be
/// read or created.
pub fn run(cfg: &Config, cmd: SshCmd) -> Result<(), CliError> {
    match cmd {
        SshCmd::KnownHosts => {
            let key = sluice_ssh::host_key::load_or_generate(&cfg.gateway.state_dir)
                .map_err(CliError::runtime)?;
            for service in cfg
                .services
                .iter()
                .filter(|s| s.protocol() == Protocol::Ssh)
            {
                print_line(&sluice_ssh::host_key::known_hosts_line(
                    &service.host,
                    service.port,
                    key.public_key(),
                ))?;
            }
            Ok(())
        }
    }
}
