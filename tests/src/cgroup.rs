//! cgroup v2 helpers: finding the mount, creating and removing the test's
//! own agent cgroups, and asking bpftool what is attached to them.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::{poll, process};

/// The cgroup2 mount point from `/proc/mounts` (e.g. `/sys/fs/cgroup` or,
/// on hybrid hosts, `/sys/fs/cgroup/unified`).
pub fn cgroup2_mount() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("read /proc/mounts")?;
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == "cgroup2")
        .map(|f| PathBuf::from(f[1]))
        .context("no cgroup2 filesystem mounted")
}

/// Creates `<mount>/<rel>` (retrying: a parallel test may be removing the
/// shared parent at the same moment) and returns its absolute path.
pub fn create(rel: &str) -> Result<PathBuf> {
    assert!(!rel.trim_matches('/').is_empty(), "never the cgroup2 root");
    let path = cgroup2_mount()?.join(rel);
    let mut last = None;
    for _ in 0..20 {
        match std::fs::create_dir_all(&path) {
            Ok(()) => return Ok(path),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("tried")).with_context(|| format!("mkdir {}", path.display()))
}

/// The PIDs in `cgroup`'s `cgroup.procs`.
pub fn procs(cgroup: &Path) -> Vec<u32> {
    std::fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// The cgroup id (the directory's inode number), as bpftool reports it.
pub fn id(cgroup: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(cgroup).ok().map(|m| m.ino())
}

/// Kills every process left in `cgroup` (all of them were started by the
/// test through `sluice exec`), then removes the directory, and its parent
/// when that is `sluice-test`-style scaffolding that is now empty.
pub fn remove(cgroup: &Path, remove_parent: bool) -> Result<()> {
    if !cgroup.exists() {
        return Ok(());
    }
    let emptied = poll("test cgroup to empty", Duration::from_secs(10), || {
        let pids = procs(cgroup);
        pids.iter()
            .for_each(|&pid| process::signal(pid, libc::SIGKILL));
        pids.is_empty().then_some(())
    });
    emptied?;
    poll(
        "rmdir of the test cgroup",
        Duration::from_secs(10),
        || match std::fs::remove_dir(cgroup) {
            Ok(()) => Some(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(()),
            Err(_) => None,
        },
    )?;
    if remove_parent {
        if let Some(parent) = cgroup.parent() {
            // Fails harmlessly while another test still has a cgroup there.
            let _ = std::fs::remove_dir(parent);
        }
    }
    if cgroup.exists() {
        bail!("{} still exists", cgroup.display());
    }
    Ok(())
}

/// Removes `cgroup` when it holds no process and no child (rmdir(2));
/// a missing one is fine, one still in use stays and is an error.
pub fn remove_empty(cgroup: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir(cgroup) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// `bpftool cgroup show <path>`: the programs attached to exactly this
/// cgroup (empty when none).
pub fn attached_programs(cgroup: &Path) -> Result<String> {
    let out = process::output_with_timeout(
        std::process::Command::new("bpftool")
            .arg("cgroup")
            .arg("show")
            .arg(cgroup),
        None,
        Duration::from_secs(20),
    )?;
    if !out.status.success() {
        bail!(
            "bpftool cgroup show {}: {}",
            cgroup.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The ids of BPF links that are attached to the cgroup with id `cgroup_id`
/// (`bpftool link show --json`).
pub fn links_for_cgroup_id(cgroup_id: u64) -> Result<Vec<u64>> {
    let out = process::output_with_timeout(
        std::process::Command::new("bpftool").args(["--json", "link", "show"]),
        None,
        Duration::from_secs(20),
    )?;
    if !out.status.success() {
        bail!(
            "bpftool link show: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let links: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("bpftool link show --json")?;
    Ok(links
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["cgroup_id"].as_u64() == Some(cgroup_id))
        .filter_map(|l| l["id"].as_u64())
        .collect())
}
