//! `sluice exec --agent NAME -- CMD ARGS…`: runs CMD inside the agent's
//! cgroup. The child joins the cgroup between fork and exec, so no socket of
//! the new program can predate it; Sluice exits with CMD's status.
use std::{os::unix::process::CommandExt, process::Command};

use clap::Args;

use super::CliError;
use crate::{
    config::Config,
    intercept::{cgroup, programs},
};

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// The `[[agent]]` whose cgroup CMD runs in
    #[arg(long)]
    pub agent: String,
    /// The command and its arguments
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

/// Runs the command; returns [`CliError::Exit`] with its status when non-zero.
///
/// # Errors
/// [`CliError::Usage`] for an unknown agent; [`CliError::Runtime`] when
/// Sluice is not attached to the agent's cgroup (the command would run
/// unintercepted) or the command cannot start.
pub fn run(cfg: &Config, args: ExecArgs) -> Result<(), CliError> {
    let agent = cfg.agent(&args.agent).ok_or_else(|| {
        CliError::Usage(format!(
            "--agent {:?} is not an [[agent]] in {}",
            args.agent,
            cfg.path.display()
        ))
    })?;
    let pin = programs::links_dir(&cfg.gateway.bpf_dir, &agent.name)
        .join(programs::SOCK_ADDR_PROGRAMS[0]);
    if !pin.exists() {
        return Err(CliError::Runtime(format!(
            "sluice is not attached to agent {:?} (no {}); start `sluice run` first",
            agent.name,
            pin.display()
        )));
    }
    let mount = cgroup::cgroup2_mount().map_err(CliError::runtime)?;
    let dir = cgroup::agent_dir(&mount, &agent.cgroup);
    if !dir.is_dir() {
        return Err(CliError::Runtime(format!(
            "agent cgroup {} does not exist; is `sluice run` up?",
            dir.display()
        )));
    }
    let mut cmd = Command::new(&args.command[0]);
    cmd.args(&args.command[1..]);
    let join_dir = dir.clone();
    // SAFETY: the closure only opens and writes a file, which is safe
    // between fork and exec in this single-threaded CLI.
    unsafe {
        cmd.pre_exec(move || cgroup::join_self(&join_dir));
    }
    let status = cmd.status().map_err(|e| {
        CliError::Runtime(format!(
            "cannot run {:?} in cgroup {}: {e}",
            args.command[0],
            dir.display()
        ))
    })?;
    match status.code() {
        Some(0) => Ok(()),
        Some(code) => Err(CliError::Exit(code.clamp(1, 255) as u8)),
        None => {
            use std::os::unix::process::ExitStatusExt;
            Err(CliError::Exit(
                (128 + status.signal().unwrap_or(0)).clamp(1, 255) as u8,
            ))
        }
    }
}
