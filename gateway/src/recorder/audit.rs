//! `log_dir/audit.jsonl`: every line of every session, in the order written,
//! rotated by size.
//!
//! Rotation. Before a line would take the file past `audit_rotate_bytes`
//! (`[gateway]`, default [`DEFAULT_ROTATE_BYTES`]), the file is renamed to
//! `audit.jsonl.<UTC time>`, e.g. `audit.jsonl.20261129T085000.123456Z`, and
//! a new `audit.jsonl` is started with that line. Rotated names sort in
//! rotation order: each is strictly later than every existing one (bumped by
//! a microsecond if the clock says otherwise), so [`rotated_files`] lists
//! them oldest first and a follower can walk from one to the next.
//! A line larger than the limit still goes, whole, into a file of its own.
//!
//! Writers. Each append happens under an in-process mutex and an exclusive
//! `flock(2)` on `log_dir/audit.lock`: check the path still names the open
//! file (reopen if someone else rotated it), rotate if needed, write the
//! line in one `write(2)`. So no line is split, none lands in a file after
//! it was renamed away, and a reader that saw the rename and then read the
//! old file to its end has every line of it. If the rename fails the line
//! is appended to the current file anyway: rotation never loses a line.
//!
//! `audit.jsonl` does not get the append-only inode flag: the kernel
//! refuses to rename such a file, which would break rotation (ours and
//! logrotate's). Session files carry the flag instead ([`super::append_only`]).
use std::{
    fs::{self, File},
    io,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    sync::Mutex,
};

use chrono::{NaiveDateTime, Utc};

use super::{annotate, open_append, write_line};

/// 100 MiB.
pub const DEFAULT_ROTATE_BYTES: u64 = 100 * 1024 * 1024;
/// The live audit log's file name.
pub const AUDIT_FILE: &str = "audit.jsonl";
/// The lock file writers hold while appending or rotating.
pub const LOCK_FILE: &str = "audit.lock";
/// `strftime` format of the suffix of rotated files.
const ROTATED_FORMAT: &str = "%Y%m%dT%H%M%S%.6fZ";

/// The audit log writer.
#[derive(Debug)]
pub struct AuditLog {
    dir: PathBuf,
    path: PathBuf,
    rotate_bytes: u64,
    group: Option<u32>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    file: File,
    lock: File,
    /// `(st_dev, st_ino)` of `file`, to see with one `stat(2)` of the path
    /// whether it still names the open file.
    id: (u64, u64),
}

impl AuditLog {
    /// Opens (creating 0640) `dir/audit.jsonl` and `dir/audit.lock`.
    /// `rotate_bytes` of 0 is taken as 1: every line gets its own file.
    ///
    /// # Errors
    /// I/O errors opening either file.
    pub fn open(dir: &Path, rotate_bytes: u64, group: Option<u32>) -> io::Result<AuditLog> {
        let path = dir.join(AUDIT_FILE);
        let lock = open_append(&dir.join(LOCK_FILE), group, false)?;
        let file = open_append(&path, group, false)?;
        Ok(AuditLog {
            dir: dir.to_path_buf(),
            path,
            rotate_bytes: rotate_bytes.max(1),
            group,
            state: Mutex::new(State {
                id: file_id(&file)?,
                file,
                lock,
            }),
        })
    }

    /// Appends `lines` (whole JSON lines, each with its newline) under one
    /// lock, in as few `write(2)` calls as rotation allows: one when they
    /// fit, else one per file, rotating before the line that would not fit.
    ///
    /// # Errors
    /// I/O errors locking, reopening or writing; a failed rotation is only
    /// logged.
    pub fn append(&self, lines: &[u8]) -> io::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let State { file, lock, id } = &mut *state;
        let _flock = ExclusiveLock::take(lock, &self.dir)?;
        // One stat of the path: whether it still names the open file and,
        // if so, that file's size.
        let mut size = match fs::metadata(&self.path) {
            Ok(on_disk) if (on_disk.dev(), on_disk.ino()) == *id => on_disk.len(),
            Ok(_) => {
                // Rotated by another writer, or by hand: follow the name.
                *file = open_append(&self.path, self.group, false)?;
                *id = file_id(file)?;
                file.metadata()?.len()
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                *file = open_append(&self.path, self.group, false)?;
                *id = file_id(file)?;
                0
            }
            Err(e) => return Err(annotate(e, "stat", &self.path)),
        };
        if size.saturating_add(lines.len() as u64) <= self.rotate_bytes {
            return write_line(file, &self.path, lines);
        }
        let mut rest = lines;
        while !rest.is_empty() {
            // The longest run of whole lines that fits; at least one line.
            let mut take = 0;
            for line in rest.split_inclusive(|&b| b == b'\n') {
                let fits = size.saturating_add((take + line.len()) as u64) <= self.rotate_bytes;
                if !fits && (take > 0 || size > 0) {
                    break;
                }
                take += line.len();
            }
            if take == 0 {
                // Not even one line fits after what the file holds.
                match self.rotate().and_then(|new| Ok((file_id(&new)?, new))) {
                    Ok((new_id, new)) => (*file, *id) = (new, new_id),
                    Err(e) => {
                        tracing::warn!(path = %self.path.display(), error = %e, "cannot rotate the audit log; appending to it instead");
                        take = rest.len();
                    }
                }
                size = 0;
                if take == 0 {
                    continue;
                }
            }
            write_line(file, &self.path, &rest[..take])?;
            size += take as u64;
            rest = &rest[take..];
        }
        Ok(())
    }

    /// Renames `audit.jsonl` to its rotated name and opens a new one.
    /// Called with the lock held.
    fn rotate(&self) -> io::Result<File> {
        let target = self.dir.join(next_rotated_name(&self.dir)?);
        fs::rename(&self.path, &target).map_err(|e| annotate(e, "rename", &self.path))?;
        tracing::info!(to = %target.display(), "rotated the audit log");
        open_append(&self.path, self.group, false)
    }
}

/// `(st_dev, st_ino)` of an open file.
fn file_id(file: &File) -> io::Result<(u64, u64)> {
    let m = file.metadata()?;
    Ok((m.dev(), m.ino()))
}

/// The rotated audit logs in `dir` (`audit.jsonl.<UTC time>`), oldest
/// first. Other files (`audit.jsonl.1.gz`, …) are not listed.
///
/// # Errors
/// I/O errors reading the directory.
pub fn rotated_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut names: Vec<String> = fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| rotated_time(n).is_some())
        .collect();
    names.sort();
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

/// The rotation time in a rotated file's name.
fn rotated_time(name: &str) -> Option<NaiveDateTime> {
    let suffix = name.strip_prefix(AUDIT_FILE)?.strip_prefix('.')?;
    NaiveDateTime::parse_from_str(suffix, ROTATED_FORMAT).ok()
}

/// `audit.jsonl.<now>`, or a microsecond after the latest rotated file when
/// that is not earlier than now.
fn next_rotated_name(dir: &Path) -> io::Result<String> {
    let latest = rotated_files(dir)?
        .last()
        .and_then(|p| rotated_time(&p.file_name()?.to_string_lossy()));
    let mut at = Utc::now().naive_utc();
    if let Some(latest) = latest.filter(|l| *l >= at) {
        at = latest + chrono::Duration::microseconds(1);
    }
    Ok(format!("{AUDIT_FILE}.{}", at.format(ROTATED_FORMAT)))
}

/// An exclusive `flock(2)` on a file, released on drop.
struct ExclusiveLock<'a>(&'a File);

impl<'a> ExclusiveLock<'a> {
    /// Locks `file`, the lock file in `dir` (named in the error).
    fn take(file: &'a File, dir: &Path) -> io::Result<ExclusiveLock<'a>> {
        loop {
            // SAFETY: flock on a file descriptor we own; no memory involved.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(ExclusiveLock(file));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(annotate(e, "lock", &dir.join(LOCK_FILE)));
            }
        }
    }
}

impl Drop for ExclusiveLock<'_> {
    fn drop(&mut self) {
        // SAFETY: as above; unlocking cannot fail on a valid descriptor.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_in(dir: &Path) -> Vec<String> {
        let mut files = rotated_files(dir).unwrap();
        files.push(dir.join(AUDIT_FILE));
        files
            .iter()
            .flat_map(|f| {
                fs::read_to_string(f)
                    .unwrap()
                    .lines()
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn a_line_that_would_not_fit_goes_to_a_fresh_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), 100, None).unwrap();
        let line = |n: usize| format!("{{\"n\":{n},\"pad\":\"{}\"}}\n", "x".repeat(30));
        for n in 0..7 {
            log.append(line(n).as_bytes()).unwrap();
        }
        let rotated = rotated_files(dir.path()).unwrap();
        assert_eq!(rotated.len(), 3, "two 43-byte lines fit in 100 bytes");
        for f in &rotated {
            assert!(fs::metadata(f).unwrap().len() <= 100);
        }
        let all = lines_in(dir.path());
        assert_eq!(
            all,
            (0..7)
                .map(|n| line(n).trim_end().to_string())
                .collect::<Vec<_>>()
        );
        let big = format!("{{\"big\":\"{}\"}}\n", "y".repeat(500));
        log.append(big.as_bytes()).unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join(AUDIT_FILE)).unwrap(),
            big,
            "an oversized line is never split"
        );
    }

    #[test]
    fn rotated_names_sort_in_rotation_order_even_when_the_clock_disagrees() {
        let dir = tempfile::tempdir().unwrap();
        let future = format!("{AUDIT_FILE}.29991231T235959.999999Z");
        fs::write(dir.path().join(&future), "").unwrap();
        fs::write(dir.path().join(format!("{AUDIT_FILE}.1.gz")), "").unwrap();
        let next = next_rotated_name(dir.path()).unwrap();
        assert!(next > future, "{next} sorts after {future}");
        assert_eq!(
            rotated_files(dir.path()).unwrap(),
            [dir.path().join(&future)],
            "foreign names are not listed"
        );
    }

    #[test]
    fn a_rotation_by_another_writer_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), 1 << 20, None).unwrap();
        log.append(b"{\"n\":1}\n").unwrap();
        fs::rename(
            dir.path().join(AUDIT_FILE),
            dir.path().join("audit.jsonl.old"),
        )
        .unwrap();
        log.append(b"{\"n\":2}\n").unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join(AUDIT_FILE)).unwrap(),
            "{\"n\":2}\n"
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("audit.jsonl.old")).unwrap(),
            "{\"n\":1}\n"
        );
    }
}
