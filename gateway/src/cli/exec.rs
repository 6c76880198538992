//! `sluice exec --agent NAME -- CMD ARGS…`: runs CMD inside the agent's
//! cgroup, as the agent's user. The child joins the cgroup between fork and
//! exec, so no socket of the new program can predate it; Sluice exits with
//! CMD's status.
//!
//! A socket made outside the cgroup and taken in with `pidfd_getfd(2)` or
//! `SCM_RIGHTS` is not intercepted ([`procs`]); so the command runs as the
//! agent's own uid (`user =` in `[[agent]]`, or `--user`), and exec refuses
//! a uid with processes outside the agent's cgroup unless
//! `--allow-shared-uid` is given.
use std::{ffi::CString, os::unix::process::CommandExt, process::Command};

use clap::Args;

use super::CliError;
use crate::{
    config::{Agent, Config},
    intercept::{cgroup, procs, programs},
};

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// The `[[agent]]` whose cgroup CMD runs in
    #[arg(long)]
    pub agent: String,
    /// Run CMD as this user (name or uid) with its groups, after joining
    /// the cgroup (needs root); default: the agent's `user =`, else the
    /// caller's own uid
    #[arg(long)]
    pub user: Option<String>,
    /// Run CMD even when its uid has processes outside the agent's cgroup
    /// (their sockets, taken with pidfd_getfd or passed in, escape
    /// interception)
    #[arg(long)]
    pub allow_shared_uid: bool,
    /// The command and its arguments
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

/// Runs the command; returns [`CliError::Exit`] with its status when non-zero.
///
/// # Errors
/// [`CliError::Usage`] for an unknown agent or user, and for a uid with
/// processes outside the agent's cgroup (without `--allow-shared-uid`);
/// [`CliError::Runtime`] when
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
    let user = args
        .user
        .as_deref()
        .or(agent.user.as_deref())
        .map(resolve_user)
        .transpose()?;
    if !args.allow_shared_uid {
        refuse_shared_uid(agent, user.as_ref())?;
    }
    let mut cmd = Command::new(&args.command[0]);
    cmd.args(&args.command[1..]);
    if let Some(u) = &user {
        if let Some(name) = &u.name {
            cmd.env("USER", name).env("LOGNAME", name);
        }
        cmd.env("HOME", &u.home);
    }
    let procs_file = CString::new(
        dir.join("cgroup.procs")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .map_err(CliError::runtime)?;
    // SAFETY: everything the closure needs was resolved and allocated
    // before the fork; it only makes async-signal-safe calls (open, write,
    // close, close_range, setgroups, setgid, setuid; signal-safety(7)).
    // The cgroup is joined first, while still root.
    unsafe {
        cmd.pre_exec(move || {
            join_cgroup(&procs_file)?;
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

/// The user CMD runs as, resolved before the fork (NSS lookups allocate
/// and take locks, which a forked child of a threaded process must not).
#[derive(Debug)]
struct RunAs {
    /// `None` for a numeric uid without a passwd entry.
    name: Option<String>,
    uid: libc::uid_t,
    gid: libc::gid_t,
    /// Supplementary groups (getgrouplist(3)); empty without a passwd entry.
    groups: Vec<libc::gid_t>,
    home: std::path::PathBuf,
}

/// Resolves a user name or numeric uid. A uid without a passwd entry runs
/// with gid = uid, no supplementary groups and `HOME=/`.
fn resolve_user(spec: &str) -> Result<RunAs, CliError> {
    use nix::unistd::{getgrouplist, Uid, User};
    let uid = spec.parse::<u32>().ok();
    let found = match uid {
        Some(uid) => User::from_uid(Uid::from_raw(uid)),
        None => User::from_name(spec),
    }
    .map_err(CliError::runtime)?;
    match (found, uid) {
        (Some(u), _) => {
            let name = CString::new(u.name.as_str()).map_err(CliError::runtime)?;
            let groups = getgrouplist(&name, u.gid)
                .map_err(|e| CliError::Runtime(format!("groups of user {:?}: {e}", u.name)))?;
            Ok(RunAs {
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
                groups: groups.iter().map(|g| g.as_raw()).collect(),
                home: u.dir,
                name: Some(u.name),
            })
        }
        (None, Some(uid)) => Ok(RunAs {
            name: None,
            uid,
            gid: uid,
            groups: Vec::new(),
            home: "/".into(),
        }),
        (None, None) => Err(CliError::Usage(format!("user {spec:?}: no such user"))),
    }
}

/// Refuses (exit 2) when the uid CMD would run as has processes outside
/// the agent's cgroup: their sockets could be taken in uninterceptable.
fn refuse_shared_uid(agent: &Agent, user: Option<&RunAs>) -> Result<(), CliError> {
    let uid = user.map_or_else(|| nix::unistd::getuid().as_raw(), |u| u.uid);
    let others = procs::outside(uid, &agent.cgroup, std::process::id());
    if others.is_empty() {
        return Ok(());
    }
    Err(CliError::Usage(format!(
        "uid {uid} has {} process(es) outside agent {:?}'s cgroup ({}), whose sockets it could take in uninterceptable (pidfd_getfd, SCM_RIGHTS); give the agent its own user (`user =` in [[agent]] or --user) or pass --allow-shared-uid",
        others.len(),
        agent.name,
        procs::describe(&others)
    )))
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is
/// `procs_file` with open(2) and write(2) only (async-signal-safe).
fn join_cgroup(procs_file: &CString) -> std::io::Result<()> {
    // SAFETY: a valid NUL-terminated path and a 1-byte buffer.
    unsafe {
        let fd = libc::open(procs_file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = libc::write(fd, b"0".as_ptr().cast(), 1);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if n != 1 {
            return Err(err);
        }
    }
    Ok(())
}

/// Switches to `user`'s groups, gid and uid (in that order; uid last so
/// the earlier calls are still permitted). Async-signal-safe: no lookups,
/// no allocation.
fn drop_privileges(user: &RunAs) -> std::io::Result<()> {
    let check = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: `groups` outlives the call and its length is passed with it.
    check(unsafe { libc::setgroups(user.groups.len(), user.groups.as_ptr()) })?;
    // SAFETY: plain integer arguments.
    check(unsafe { libc::setgid(user.gid) })?;
    // SAFETY: plain integer arguments.
    check(unsafe { libc::setuid(user.uid) })?;
    Ok(())
}
