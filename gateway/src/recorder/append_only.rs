//! The append-only inode flag (`FS_APPEND_FL`, what `chattr +a` sets; see
//! ioctl_iflags(2)) on session files while their session is open.
//!
//! With the flag the kernel refuses, even to root without first clearing
//! it: opening the file for writing without `O_APPEND`, truncating,
//! renaming, unlinking and changing its mode or owner. The daemon's own
//! `O_APPEND` writes go on. Setting and clearing it needs
//! `CAP_LINUX_IMMUTABLE`, so it is tried only as root; filesystems without
//! inode flags (tmpfs before Linux 6.0, some network filesystems) answer
//! `ENOTTY`/`EOPNOTSUPP` and the file simply stays a plain 0640 file
//! (logged at debug level). Kernel: any Linux with ext2/3/4, XFS or Btrfs.
//!
//! The flag is cleared when the session closes, so retention tools can
//! delete closed sessions; a daemon that crashed leaves it on the sessions
//! it had open, and the next [`super::Recorder::open_with`] clears those
//! ([`clear_stale`]). `audit.jsonl` never gets the flag, because the rename
//! of rotation would fail ([`super::audit`]).
use std::{
    fs::{self, File},
    os::fd::AsRawFd,
    path::Path,
};

/// `FS_APPEND_FL` from `linux/fs.h`.
const FS_APPEND_FL: libc::c_int = 0x0000_0020;

/// The inode flags of `file` (`FS_IOC_GETFLAGS`).
fn flags(file: &File) -> std::io::Result<libc::c_int> {
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one int (the kernel's type, despite
    // the `long` in the request's definition) to the pointer we pass.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) };
    if rc == 0 {
        Ok(flags)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Sets or clears `FS_APPEND_FL` on `file`; returns whether the flag is now
/// as asked. Not root, or a filesystem without inode flags: `false`, and a
/// debug log line.
pub fn set(file: &File, path: &Path, on: bool) -> bool {
    if !nix::unistd::geteuid().is_root() {
        return false;
    }
    let result = flags(file).and_then(|old| {
        let new = if on {
            old | FS_APPEND_FL
        } else {
            old & !FS_APPEND_FL
        };
        if new == old {
            return Ok(());
        }
        // SAFETY: FS_IOC_SETFLAGS reads one int from the pointer we pass.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::FS_IOC_SETFLAGS, &new) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    });
    match result {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, on, "append-only flag not changed");
            false
        }
    }
}

/// Whether `path` carries the append-only flag (`false` when it cannot be
/// read).
pub fn is_set(path: &Path) -> bool {
    File::open(path)
        .and_then(|f| flags(&f))
        .is_ok_and(|f| f & FS_APPEND_FL != 0)
}

/// Clears the flag on every `*.jsonl` and `*.cast` in `sessions_dir` that has it: at
/// start-up no session is open, so these are left by a daemon that died.
/// Only as root; errors are logged at debug level.
pub fn clear_stale(sessions_dir: &Path) {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let Ok(entries) = fs::read_dir(sessions_dir) else {
        return;
    };
    let mut cleared = 0usize;
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_file())
            || path.extension().is_none_or(|e| e != "jsonl" && e != "cast")
        {
            continue;
        }
        let Ok(file) = File::open(&path) else {
            continue;
        };
        if flags(&file).is_ok_and(|f| f & FS_APPEND_FL != 0) && set(&file, &path, false) {
            cleared += 1;
        }
    }
    if cleared > 0 {
        tracing::info!(count = cleared, dir = %sessions_dir.display(), "cleared the append-only flag of sessions a previous run left open");
    }
}
