//! cgroup v2: locating the unified hierarchy and the agents' cgroups.
//!
//! The cgroup2 mount is read from `/proc/self/mounts` (it is `/sys/fs/cgroup` on
//! most hosts and `/sys/fs/cgroup/unified` on hybrid ones). A cgroup's id, as
//! returned by `bpf_get_current_cgroup_id()`, is the inode number of its
//! directory. Kernel ≥ 4.5 for cgroup v2; see cgroups(7).
use std::{
    fs, io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// Returns the mount point of the cgroup2 filesystem.
///
/// # Errors
/// `NotFound` when no `cgroup2` line is in `/proc/self/mounts`.
pub fn cgroup2_mount() -> io::Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts")?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (_dev, dir, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_path(dir)))
        })
        .next()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "no cgroup2 filesystem in /proc/self/mounts; mount it with `mount -t cgroup2 none /sys/fs/cgroup`",
            )
        })
}

/// `/proc/self/mounts` escapes spaces and the like as octal (`\040`).
fn unescape_mount_path(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            out.push(
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0'),
            );
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The absolute directory of an agent cgroup given as a path relative to the
/// cgroup2 mount (`sluice/ci-bot`).
///
/// A systemd slice name such as `sluice-agents-myagent.slice` is expanded to
/// its nested path (`sluice.slice/sluice-agents.slice/sluice-agents-myagent.slice`),
/// as systemd.slice(5) describes.
pub fn agent_dir(mount: &Path, relative: &str) -> PathBuf {
    let rel = relative.trim_matches('/');
    if !rel.contains('/') && rel.ends_with(".slice") {
        return mount.join(slice_path(rel));
    }
    mount.join(rel)
}

/// Expands `a-b-c.slice` to `a.slice/a-b.slice/a-b-c.slice`.
fn slice_path(name: &str) -> PathBuf {
    let stem = name.trim_end_matches(".slice");
    let mut path = PathBuf::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
    }
    path
}

/// Creates the cgroup directory (and parents) if missing.
///
/// # Errors
/// Any `mkdir` failure, e.g. `PermissionDenied` when not root.
pub fn ensure(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)
}

/// The cgroup id (directory inode) of `dir`.
///
/// # Errors
/// `NotFound` when the cgroup does not exist.
pub fn id(dir: &Path) -> io::Result<u64> {
    Ok(fs::metadata(dir)?.ino())
}

/// The agent cgroup that contains a cgroup, and where that cgroup is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Index into the `roots` searched.
    pub root: usize,
    /// The cgroup's directory: the root itself or a descendant, such as a
    /// container's cgroup created below the agent cgroup.
    pub dir: PathBuf,
}

/// Finds which of `roots` contains the cgroup with id `target` (the root
/// itself or any descendant).
pub fn owner_of(roots: &[PathBuf], target: u64) -> Option<Owner> {
    roots
        .iter()
        .enumerate()
        .find_map(|(root, dir)| find_id(dir, target, 0).map(|dir| Owner { root, dir }))
}

/// How many cgroup ids an [`OwnerCache`] remembers before it starts over.
pub const OWNER_CACHE_MAX: usize = 4096;

/// [`owner_of`] answers per cgroup id, so the tree is walked once per cgroup
/// rather than on every accepted connection. Bounded (cleared when
/// [`OWNER_CACHE_MAX`] ids are held); build a new one when the roots change
/// (a config reload). Cgroup ids are not reused while the host runs, and a
/// cgroup cannot move, so an answer stays true.
#[derive(Debug, Default)]
pub struct OwnerCache {
    known: std::sync::Mutex<std::collections::HashMap<u64, Option<Owner>>>,
}

impl OwnerCache {
    /// [`owner_of`]`(roots, target)`, from the cache when known. `roots` must
    /// be the same for every call on one cache.
    pub fn owner_of(&self, roots: &[PathBuf], target: u64) -> Option<Owner> {
        let lock = || self.known.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(hit) = lock().get(&target) {
            return hit.clone();
        }
        let found = owner_of(roots, target);
        let mut known = lock();
        if known.len() >= OWNER_CACHE_MAX {
            known.clear();
        }
        known.insert(target, found.clone());
        found
    }
}

/// The directory below `dir` (or `dir` itself) whose cgroup id is `target`.
fn find_id(dir: &Path, target: u64, depth: u32) -> Option<PathBuf> {
    if depth > 16 {
        return None;
    }
    if id(dir).ok() == Some(target) {
        return Some(dir.to_path_buf());
    }
    fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .find_map(|e| find_id(&e.path(), target, depth + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_names_expand_like_systemd() {
        assert_eq!(
            agent_dir(Path::new("/cg"), "sluice-agents-myagent.slice"),
            PathBuf::from("/cg/sluice.slice/sluice-agents.slice/sluice-agents-myagent.slice")
        );
        assert_eq!(
            agent_dir(Path::new("/cg"), "sluice/ci-bot"),
            PathBuf::from("/cg/sluice/ci-bot")
        );
    }

    #[test]
    fn owners_are_cached_per_cgroup_id_and_the_cache_is_bounded() {
        let root = tempfile::tempdir().unwrap();
        let child = root.path().join("job");
        fs::create_dir(&child).unwrap();
        let child_id = id(&child).unwrap();
        let roots = vec![root.path().to_path_buf()];
        let cache = OwnerCache::default();
        let owner = Owner {
            root: 0,
            dir: child.clone(),
        };
        assert_eq!(cache.owner_of(&roots, child_id), Some(owner.clone()));
        // Answered without walking the tree again.
        fs::remove_dir(&child).unwrap();
        assert_eq!(owner_of(&roots, child_id), None);
        assert_eq!(cache.owner_of(&roots, child_id), Some(owner));
        for fake in 0..OWNER_CACHE_MAX as u64 + 5 {
            cache.owner_of(&roots, u64::MAX - fake);
        }
        assert!(cache.known.lock().unwrap().len() <= OWNER_CACHE_MAX);
    }

    #[test]
    fn mount_paths_unescape() {
        assert_eq!(unescape_mount_path("/a\\040b"), "/a b");
    }

    #[test]
    fn finds_the_cgroup2_mount() {
        let m = cgroup2_mount().expect("cgroup2 mounted on test hosts");
        assert!(m.join("cgroup.procs").exists());
    }
}
