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
    /// Run CMD as this user (name or uid) with its groups, after joining
    /// the cgroup (needs root)
    #[arg(long)]
    pub user: Option<String>,
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
    let user = args.user.as_deref().map(lookup_user).transpose()?;
    let mut cmd = Command::new(&args.command[0]);
    cmd.args(&args.command[1..]);
    if let Some(u) = &user {
        cmd.env("USER", &u.name)
            .env("LOGNAME", &u.name)
            .env("HOME", &u.dir);
    }
    let join_dir = dir.clone();
    // SAFETY: the closure opens and writes one file and makes the
    // set*id/setgroups calls, which is safe between fork and exec in this
    // single-threaded CLI. The cgroup is joined first, while still root.
    unsafe {
        cmd.pre_exec(move || {
            cgroup::join_self(&join_dir)?;
            // No socket opened outside the cgroup may reach the agent: every
            // inherited descriptor above stderr closes at exec
            // (close_range(2) with CLOSE_RANGE_CLOEXEC).
            if libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(u) = &user {
                drop_privileges(u)?;
            }
            Ok(())
        });
    }
    let status = cmd.status().map_err(|e| {
        CliError::Runtime(format!(
            "cannot run {:?} in cgroup {}: {e}",
            args.command[0],
            dir.display()
        ))
    })?;
    exit_status(status)
}

/// Maps a child's status to ours: its code, or 128 + the signal.
fn exit_status(status: std::process::ExitStatus) -> Result<(), CliError> {
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

/// Resolves `--user` (a name or a numeric uid).
fn lookup_user(spec: &str) -> Result<nix::unistd::User, CliError> {
    use nix::unistd::{Uid, User};
    let found = match spec.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)),
        Err(_) => User::from_name(spec),
    };
    found
        .map_err(CliError::runtime)?
        .ok_or_else(|| CliError::Usage(format!("--user {spec:?}: no such user")))
}

/// Switches to `user`'s groups, gid and uid (in that order; uid last so
/// the earlier calls are still permitted).
fn drop_privileges(user: &nix::unistd::User) -> std::io::Result<()> {
    use nix::unistd::{initgroups, setgid, setuid};
    let name = std::ffi::CString::new(user.name.as_str()).map_err(std::io::Error::other)?;
    initgroups(&name, user.gid)?;
    setgid(user.gid)?;
    setuid(user.uid)?;
    Ok(())
}
