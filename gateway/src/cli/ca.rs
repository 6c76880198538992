//! `sluice ca cert`: the local CA certificate agents must trust.
use clap::Subcommand;

use super::CliError;
use crate::{config::Config, tls::LocalCa};

#[derive(Subcommand, Debug)]
pub enum CaCmd {
    /// Print the local CA certificate (PEM) on stdout; creates the CA on first use
    Cert,
}

/// Runs a `ca` subcommand.
///
/// # Errors
/// [`CliError::Runtime`] when `state_dir/ca` cannot be read or created.
pub fn run(cfg: &Config, cmd: CaCmd) -> Result<(), CliError> {
    match cmd {
        CaCmd::Cert => {
            let ca = LocalCa::load_or_create(&cfg.gateway.state_dir).map_err(CliError::runtime)?;
            print!("{}", ca.cert_pem());
            Ok(())
        }
    }
}
