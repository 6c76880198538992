//! SSH (`protocol = "ssh"`, DESIGN.md §6 "SSH"): the `sluice-ssh` server
//! and upstream client, deciding through the guard pipeline.
//!
//! [`serve`] opens the guard session and hands the connection to
//! [`sluice_ssh::server::serve`] with a [`gate::GuardGate`]: logins are
//! token checks (an `slt_` token as password, or a placeholder key matched
//! to its token by [`keys`]), channel requests are policy decisions, and
//! the upstream login uses the vault secret.
use std::{path::Path, sync::Arc, time::Instant};

use tracing::{debug, warn};

use super::{Gateway, Intercepted};
use crate::config::Service;

pub mod gate;
pub mod keys;

/// The SSH handler's own state: the server configuration with the
/// gateway's host key.
pub struct Ssh {
    config: Arc<russh::server::Config>,
}

impl Ssh {
    /// Loads `state_dir/ssh_host_ed25519_key`, generating it on first
    /// start ([`sluice_ssh::host_key::load_or_generate`]).
    ///
    /// # Errors
    /// The key file cannot be read, written or parsed.
    pub fn load(state_dir: &Path) -> Result<Arc<Self>, sluice_ssh::host_key::HostKeyError> {
        let key = sluice_ssh::host_key::load_or_generate(state_dir)?;
        Ok(Arc::new(Ssh {
            config: sluice_ssh::server::config(key),
        }))
    }
}

/// Serves one intercepted connection to SSH `service`: nothing is spoken
/// before the session's `open` line is written.
pub async fn serve(
    gw: Arc<Gateway>,
    conn: Intercepted,
    stream: tokio::net::TcpStream,
    service: Arc<Service>,
) {
    let opened = match gw.guard.open(&conn, &service, "ssh") {
        Ok(session) => session.opened().await.map(|()| Arc::new(session)),
        Err(refused) => Err(refused),
    };
    let session = match opened {
        Ok(s) => s,
        Err(refused) => {
            return warn!(agent = %conn.identity.agent, service = %service.name, "ssh connection refused: {refused}")
        }
    };
    let started = Instant::now();
    let gate = gate::GuardGate::new(session.clone());
    if let Err(e) = sluice_ssh::server::serve(gw.ssh.config.clone(), stream, gate).await {
        debug!(agent = %conn.identity.agent, error = %e, "ssh connection ended");
        session.error(e.to_string());
    }
    session.close(started.elapsed());
}
