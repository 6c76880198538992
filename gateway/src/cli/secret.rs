//! `sluice secret put NAME | list | rm NAME`: manage the sealed vault
//! (DESIGN.md §4 "CLI"). Values are read from stdin and never printed.
use std::io::{self, IsTerminal, Read};

use clap::Subcommand;
use zeroize::Zeroizing;

use super::{sessions::print_line, CliError};
use crate::{
    config::Config,
    vault::{self, Vault, VaultError},
};

/// The largest secret `put` accepts.
const MAX_SECRET_BYTES: usize = 1 << 20;

#[derive(Subcommand, Debug)]
pub enum SecretCmd {
    /// Store a secret; the value is read from stdin (one trailing newline is dropped)
    Put {
        /// Secret name, as used by a service's `credential.secret`
        name: String,
    },
    /// List secret names (values are never shown)
    List,
    /// Remove a secret
    Rm {
        /// Secret name
        name: String,
    },
}

impl From<VaultError> for CliError {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::InvalidName(_) => CliError::Usage(e.to_string()),
            e => CliError::Runtime(e.to_string()),
        }
    }
}

/// Runs a `sluice secret` subcommand against `cfg`'s vault.
///
/// # Errors
/// [`CliError::Usage`] for an empty value or a bad name,
/// [`CliError::Runtime`] for a missing secret or a vault failure.
pub fn run(cfg: &Config, cmd: SecretCmd, json: bool) -> Result<(), CliError> {
    let vault = Vault::open(&cfg.gateway)?;
    if let Some(path) = vault.key_created() {
        eprintln!("sluice: created a new vault key at {}; back it up, the vault cannot be opened without it", path.display());
    }
    match cmd {
        SecretCmd::Put { name } => put(cfg, &vault, &name),
        SecretCmd::List => list(&vault, json),
        SecretCmd::Rm { name } => {
            if vault.remove(&name)? {
                Ok(())
            } else {
                Err(CliError::Runtime(format!(
                    "no secret named {name:?}; see `sluice secret list`"
                )))
            }
        }
    }
}

fn put(cfg: &Config, vault: &Vault, name: &str) -> Result<(), CliError> {
    vault::check_name(name)?;
    let stdin = io::stdin();
    if stdin.is_terminal() {
        eprintln!("sluice: type the value of {name}, then press Ctrl-D");
    }
    let mut value = read_value(stdin.lock())
        .map_err(|e| CliError::Runtime(format!("cannot read the secret value from stdin: {e}")))?;
    if value.last() == Some(&b'\n') {
        value.pop();
    }
    if value.is_empty() {
        return Err(CliError::Usage(format!("the value for {name:?} on stdin is empty; pipe it in, e.g. `printf %s \"$VALUE\" | sluice secret put {name}`")));
    }
    vault.put(name, &value)?;
    if !cfg.services.iter().any(|s| s.secret == name) {
        eprintln!(
            "sluice: stored {name:?}; note that no [[service]] in {} uses it as credential.secret",
            cfg.path.display()
        );
    }
    Ok(())
}

/// Reads all of `input` (at most [`MAX_SECRET_BYTES`]) into a buffer that
/// is wiped on drop, growing it by copying so no unwiped copy is left.
fn read_value(mut input: impl Read) -> io::Result<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(Vec::with_capacity(4096));
    loop {
        if buf.len() == buf.capacity() {
            if buf.len() >= MAX_SECRET_BYTES {
                return Err(io::Error::other(format!(
                    "the value is too large (limit {} KiB)",
                    MAX_SECRET_BYTES / 1024
                )));
            }
            let mut bigger = Zeroizing::new(Vec::with_capacity(buf.capacity() * 2));
            bigger.extend_from_slice(&buf);
            buf = bigger;
        }
        let len = buf.len();
        let capacity = buf.capacity();
        buf.resize(capacity, 0);
        let read = input.read(&mut buf[len..]);
        buf.truncate(len + read.as_ref().map_or(0, |n| *n));
        match read {
            Ok(0) => return Ok(buf),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn list(vault: &Vault, json: bool) -> Result<(), CliError> {
    for name in vault.names()? {
        let line = if json {
            serde_json::json!({ "name": name }).to_string()
        } else {
            name
        };
        print_line(&line)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_value_reads_everything_across_growth() {
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        assert_eq!(&read_value(&data[..]).unwrap()[..], &data[..]);
        assert!(read_value(&b""[..]).unwrap().is_empty());
    }

    #[test]
    fn read_value_refuses_huge_input() {
        let huge = vec![b'x'; MAX_SECRET_BYTES + 5000];
        assert!(read_value(&huge[..]).is_err());
    }
}
