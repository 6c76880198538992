//! Which processes of a uid run outside an agent's cgroup (from `/proc`).
//!
//! The kernel applies the cgroup programs of the cgroup that *created* a
//! socket. A socket made outside the agent's cgroup and handed in
//! (`SCM_RIGHTS`) or taken with `pidfd_getfd(2)` — which only needs ptrace
//! rights, i.e. the same uid — is not intercepted, and without a BPF LSM no
//! cgroup hook can stop that. An agent that runs under a uid of its own,
//! with no process of that uid outside its cgroup, has no such process to
//! take sockets from. `sluice exec` refuses a shared uid and `sluice doctor`
//! warns about one; both use [`outside`].
use std::{fs, path::Path};

use super::cgroup;

/// A process found by [`outside`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    /// `/proc/<pid>/comm`, e.g. `bash`.
    pub comm: String,
    /// Its cgroup v2 path as in `/proc/<pid>/cgroup`, e.g. `/user.slice`.
    pub cgroup: String,
}

/// Whether the cgroup `path` (as in `/proc/<pid>/cgroup`) is the cgroup of
/// `[[agent]] cgroup = agent_cgroup` or below it.
pub fn in_agent_cgroup(path: &str, agent_cgroup: &str) -> bool {
    let agent = cgroup::agent_dir(Path::new("/"), agent_cgroup);
    within(path, &agent.to_string_lossy())
}

/// The calling process's cgroup v2 path (`/proc/self/cgroup`).
///
/// # Errors
/// The read failure; `InvalidData` without a `0::` line.
pub fn own_cgroup() -> std::io::Result<String> {
    cgroup_v2_path(&fs::read_to_string("/proc/self/cgroup")?).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "no cgroup v2 line in /proc/self/cgroup",
        )
    })
}

/// The processes whose real, effective or saved uid is `uid` and whose
/// cgroup is neither `agent_cgroup` nor below it; `agent_cgroup` is the
/// `[[agent]] cgroup` value (relative to the cgroup2 mount, or a systemd
/// slice name; [`cgroup::agent_dir`]). Processes that exit while being
/// read, and `except` (the caller itself), are skipped.
///
/// A snapshot: a process started afterwards is not seen.
pub fn outside(uid: u32, agent_cgroup: &str, except: u32) -> Vec<Process> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<Process> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != except)
        .filter_map(|pid| read(pid, uid))
        .filter(|p| !in_agent_cgroup(&p.cgroup, agent_cgroup))
        .collect();
    found.sort_by_key(|p| p.pid);
    found
}

/// The process `pid` when one of its uids is `uid`.
fn read(pid: u32, uid: u32) -> Option<Process> {
    let dir = Path::new("/proc").join(pid.to_string());
    let status = fs::read_to_string(dir.join("status")).ok()?;
    if !has_uid(&status, uid) {
        return None;
    }
    let cgroup = cgroup_v2_path(&fs::read_to_string(dir.join("cgroup")).ok()?)?;
    let comm = fs::read_to_string(dir.join("comm"))
        .map(|c| c.trim_end().to_string())
        .unwrap_or_default();
    Some(Process { pid, comm, cgroup })
}

/// Whether the `Uid:` line of a `/proc/<pid>/status` (real, effective,
/// saved, filesystem; proc(5)) names `uid` as real, effective or saved.
fn has_uid(status: &str, uid: u32) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .is_some_and(|ids| {
            ids.split_whitespace()
                .take(3)
                .any(|id| id.parse::<u32>() == Ok(uid))
        })
}

/// The `0::PATH` line of a `/proc/<pid>/cgroup` (cgroups(7)).
fn cgroup_v2_path(cgroup: &str) -> Option<String> {
    cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// `path` is `root` or below it.
fn within(path: &str, root: &str) -> bool {
    path == root
        || path
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// One line naming up to three of `procs`, e.g. `pid 1 (systemd), pid 812
/// (bash) and 4 more`.
pub fn describe(procs: &[Process]) -> String {
    let mut s = procs
        .iter()
        .take(3)
        .map(|p| format!("pid {} ({}) in {}", p.pid, p.comm, p.cgroup))
        .collect::<Vec<_>>()
        .join(", ");
    if procs.len() > 3 {
        s.push_str(&format!(" and {} more", procs.len() - 3));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_real_effective_and_saved_uids() {
        let status = "Name:\tx\nUid:\t1000\t1001\t1002\t1003\n";
        assert!(has_uid(status, 1000));
        assert!(has_uid(status, 1002));
        assert!(!has_uid(status, 1003), "the filesystem uid does not count");
    }

    #[test]
    fn a_cgroup_is_within_itself_and_its_children_only() {
        assert!(within("/sluice/bot", "/sluice/bot"));
        assert!(within("/sluice/bot/job", "/sluice/bot"));
        assert!(!within("/sluice/bot2", "/sluice/bot"));
        assert!(!within("/user.slice", "/sluice/bot"));
    }

    #[test]
    fn finds_this_process_outside_a_cgroup_it_is_not_in() {
        let me = std::process::id();
        let uid = nix::unistd::getuid().as_raw();
        let found = outside(uid, "no/such/agent", 0);
        assert!(found.iter().any(|p| p.pid == me), "{found:?}");
        assert!(!outside(uid, "no/such/agent", me)
            .iter()
            .any(|p| p.pid == me));
        assert_eq!(cgroup_v2_path("0::/a/b\n"), Some("/a/b".into()));
    }
}
