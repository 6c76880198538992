//! `sluice approvals list`, `sluice approve ID`, `sluice deny ID [--reason]`:
//! JIT approvals, from any gateway host sharing the Redis.
//!
//! Only root and members of the Unix group [`ADMIN_GROUP`] may decide; the
//! decision records the caller's Unix user (the `sudo` caller when run
//! through sudo).
use clap::{Args, Subcommand};

use super::{
    sessions::{print_line, table},
    CliError,
};
use crate::{
    config::Config,
    state::{
        approval_key_path, write_approval_key, Approval, ApprovalStatus, Decided, State, StateKeys,
    },
};

/// Members of this group may approve or deny.
pub const ADMIN_GROUP: &str = "sluice-admin";

#[derive(Subcommand, Debug)]
pub enum ApprovalsCmd {
    /// Pending approvals (id, agent, caller, service, summary, created, expires)
    List {
        /// Also show decided, expired and abandoned approvals
        #[arg(long)]
        all: bool,
    },
    /// Write the approval key (derived from the vault key) to approvals.key
    /// beside the vault key, 0640 root:sluice-admin, so members of
    /// sluice-admin can approve and deny (root only; run again after
    /// replacing the vault key)
    KeyFile,
}

#[derive(Args, Debug)]
pub struct DecideArgs {
    /// The approval id (apr_…)
    pub id: String,
    /// Why (shown to the agent on deny)
    #[arg(long)]
    pub reason: Option<String>,
}

/// The Redis of `cfg` with the approval key: derived from the vault key
/// as root, read from [`approval_key_path`] by `sluice-admin` members.
async fn state(cfg: &Config) -> Result<State, CliError> {
    let keys = StateKeys::load(&cfg.gateway).map_err(CliError::runtime)?;
    Ok(State::open(&cfg.gateway)
        .await
        .map_err(CliError::runtime)?
        .with_keys(std::sync::Arc::new(keys)))
}

fn time(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// Lists approvals.
///
/// # Errors
/// [`CliError::Runtime`] when Redis is unreachable.
pub async fn list(cfg: &Config, cmd: ApprovalsCmd, json: bool) -> Result<(), CliError> {
    let all = match cmd {
        ApprovalsCmd::List { all } => all,
        ApprovalsCmd::KeyFile => return key_file(cfg),
    };
    let approvals = state(cfg)
        .await?
        .approval_list(!all)
        .await
        .map_err(CliError::runtime)?;
    if json {
        for a in &approvals {
            let line = serde_json::json!({
                "id": a.id, "agent": a.agent, "pid": a.pid, "uid": a.uid, "service": a.service,
                "summary": a.summary, "created": time(a.created), "expires": time(a.expires),
                "status": a.status.as_str(), "by": a.by, "reason": a.reason,
                "subject": a.subject, "groups": a.groups,
            });
            print_line(&line.to_string())?;
        }
        return Ok(());
    }
    if approvals.is_empty() {
        return print_line(if all {
            "no approvals"
        } else {
            "no pending approvals"
        });
    }
    let rows: Vec<[String; 8]> = approvals.iter().map(row).collect();
    for line in table(
        [
            "ID", "AGENT", "CALLER", "SERVICE", "SUMMARY", "CREATED", "EXPIRES", "STATUS",
        ],
        &rows,
    ) {
        print_line(&line)?;
    }
    Ok(())
}

/// `sluice approvals key-file`: writes the approval key for
/// `sluice-admin` and prints its path.
fn key_file(cfg: &Config) -> Result<(), CliError> {
    let path = write_approval_key(&cfg.gateway).map_err(|e| {
        CliError::Runtime(format!(
            "{e}; run as root ({} is derived from the vault key)",
            approval_key_path(&cfg.gateway).display()
        ))
    })?;
    print_line(&path.display().to_string())
}

fn row(a: &Approval) -> [String; 8] {
    let summary: String = a
        .summary
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(60)
        .collect();
    // The JWT's subject and groups, when one authenticated the caller.
    let caller = match &a.subject {
        Some(sub) if a.groups.is_empty() => sub.clone(),
        Some(sub) => format!("{sub} [{}]", a.groups.join(",")),
        None => "-".into(),
    };
    [
        a.id.clone(),
        a.agent.clone(),
        caller,
        a.service.clone(),
        summary,
        time(a.created),
        time(a.expires),
        a.status.as_str().into(),
    ]
}

/// Approves (`approve = true`) or denies one approval.
///
/// # Errors
/// [`CliError::Usage`] for a caller outside root/[`ADMIN_GROUP`];
/// [`CliError::Runtime`] for an unknown or already decided id.
pub async fn decide(cfg: &Config, args: DecideArgs, approve: bool) -> Result<(), CliError> {
    let by = authorized_user()?;
    let status = if approve {
        ApprovalStatus::Approved
    } else {
        ApprovalStatus::Denied
    };
    let reason = args.reason.unwrap_or_default();
    let outcome = state(cfg)
        .await?
        .approval_decide(&args.id, status, &by, &reason)
        .await
        .map_err(CliError::runtime)?;
    match outcome {
        Decided::Done => print_line(&format!("{} {} by {by}", args.id, status.as_str())),
        Decided::Unknown => Err(CliError::Runtime(format!(
            "no approval {}; see `sluice approvals list`",
            args.id
        ))),
        Decided::Already(s) => Err(CliError::Runtime(format!(
            "approval {} is already {}",
            args.id,
            s.as_str()
        ))),
    }
}

/// The caller's user name if root or in [`ADMIN_GROUP`].
fn authorized_user() -> Result<String, CliError> {
    use nix::unistd::{getgroups, getuid, Group, User};
    let uid = getuid();
    let name = User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string());
    if uid.is_root() {
        return Ok(std::env::var("SUDO_USER")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or(name));
    }
    let admin = Group::from_name(ADMIN_GROUP).ok().flatten();
    let member = admin.as_ref().is_some_and(|g| {
        g.mem.contains(&name) || getgroups().map(|gs| gs.contains(&g.gid)).unwrap_or(false)
    });
    if member {
        Ok(name)
    } else {
        Err(CliError::Usage(format!("user {name} may not approve or deny: only root and members of the {ADMIN_GROUP} group may")))
    }
}
