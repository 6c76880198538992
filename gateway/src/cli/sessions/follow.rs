//! `sluice sessions tail [-f]`: the latest events of the audit log, then
//! (with `-f`) every new one, across rotations.
//!
//! Following survives rotation without losing a line ([`AuditFollower`]):
//! the open file is kept when `audit.jsonl` is renamed away, read to its
//! end, and then the next file in rotation order is opened: the next
//! `audit.jsonl.<UTC time>` if more rotations happened in between, else the
//! new `audit.jsonl`. The recorder renames only under its lock and never
//! writes to a renamed file ([`crate::recorder::audit`]), so a renamed file
//! read to its end is complete.
use std::{
    collections::VecDeque,
    fs::{self, File},
    io::{self, Read, Seek, SeekFrom},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::Duration,
};

use super::{print_line, read_error, render::tail_line, CliError, Filter, Record};
use crate::recorder::audit::{rotated_files, AUDIT_FILE};

/// How many events `tail` shows before following.
const TAIL_LINES: usize = 20;
/// How often `tail -f` checks the audit log for growth or rotation.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// Prints the last [`TAIL_LINES`] matching events of `log_dir/audit.jsonl`,
/// then, with `follow`, each new one until interrupted.
pub(super) async fn tail(
    log_dir: &Path,
    filter: &Filter,
    follow: bool,
    json: bool,
) -> Result<(), CliError> {
    let render = |r: &Record| {
        if json {
            r.raw.clone()
        } else {
            tail_line(&r.value)
        }
    };
    let mut reader = AuditFollower::new(log_dir);
    let mut last = VecDeque::with_capacity(TAIL_LINES);
    reader.poll(&mut |r| {
        if filter.matches(&r.value) {
            if last.len() == TAIL_LINES {
                last.pop_front();
            }
            last.push_back(render(&r));
        }
        Ok(())
    })?;
    last.iter().try_for_each(|l| print_line(l))?;
    if !follow {
        return Ok(());
    }
    loop {
        tokio::time::sleep(FOLLOW_POLL).await;
        reader.poll(&mut |r| {
            if filter.matches(&r.value) {
                print_line(&render(&r))
            } else {
                Ok(())
            }
        })?;
    }
}

/// `(st_dev, st_ino)`: which file an open descriptor or a name refers to.
type FileId = (u64, u64);

/// The file being read and how far.
struct Current {
    file: File,
    id: FileId,
    pos: u64,
}

/// Reads complete new lines of `audit.jsonl` as it grows and rotates.
pub(super) struct AuditFollower {
    dir: PathBuf,
    path: PathBuf,
    current: Option<Current>,
    partial: Vec<u8>,
}

impl AuditFollower {
    /// Follows `log_dir/audit.jsonl`, starting at the beginning of the live
    /// file (which may not exist yet).
    pub(super) fn new(log_dir: &Path) -> Self {
        AuditFollower {
            dir: log_dir.to_path_buf(),
            path: log_dir.join(AUDIT_FILE),
            current: None,
            partial: Vec::new(),
        }
    }

    /// Feeds every new complete, parseable line to `each`, walking through
    /// any rotations since the last call.
    pub(super) fn poll(
        &mut self,
        each: &mut dyn FnMut(Record) -> Result<(), CliError>,
    ) -> Result<(), CliError> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |e| read_error(&path, e)
        };
        if let Some(cur) = &mut self.current {
            if cur.file.metadata().map_err(err(&self.path))?.len() < cur.pos {
                // Truncated in place (logrotate copytruncate): start over.
                cur.pos = 0;
                self.partial.clear();
            }
        }
        loop {
            self.drain(each)?;
            let live = match fs::metadata(&self.path) {
                Ok(m) => (m.dev(), m.ino()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(read_error(&self.path, e)),
            };
            let next = match &self.current {
                None => open(&self.path).map_err(err(&self.path))?,
                Some(cur) if cur.id == live => return Ok(()),
                Some(cur) => {
                    let id = cur.id;
                    // Renamed away: lines written before the rename are
                    // all in it now.
                    self.drain(each)?;
                    self.successor(id).map_err(err(&self.dir))?
                }
            };
            if !self.partial.is_empty() {
                tracing::warn!(
                    "{} ended inside a line; the fragment is skipped",
                    self.path.display()
                );
                self.partial.clear();
            }
            self.current = Some(next);
        }
    }

    /// The file that follows `id` in rotation order: the next rotated file,
    /// or the live one. When `id` is among neither (deleted, or renamed
    /// outside the recorder's scheme), the live file from its start.
    fn successor(&self, id: FileId) -> io::Result<Current> {
        loop {
            let ids = rotated_ids(&self.dir)?;
            let Some(i) = ids.iter().position(|(_, f)| *f == id) else {
                return open(&self.path);
            };
            if let Some((path, _)) = ids.get(i + 1) {
                match open(path) {
                    Ok(next) => return Ok(next),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
            }
            let live = open(&self.path)?;
            // Another rotation between listing and opening would make the
            // live file skip one: check nothing came in between.
            let again = rotated_ids(&self.dir)?;
            let after = again
                .iter()
                .position(|(_, f)| *f == id)
                .and_then(|i| again.get(i + 1));
            if after.is_none_or(|(_, f)| *f == live.id) {
                return Ok(live);
            }
        }
    }

    /// Reads from the current position to the end of the current file.
    fn drain(
        &mut self,
        each: &mut dyn FnMut(Record) -> Result<(), CliError>,
    ) -> Result<(), CliError> {
        let Some(cur) = &mut self.current else {
            return Ok(());
        };
        let err = |e| read_error(&self.path, e);
        cur.file.seek(SeekFrom::Start(cur.pos)).map_err(err)?;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = cur.file.read(&mut chunk).map_err(err)?;
            if n == 0 {
                return Ok(());
            }
            cur.pos += n as u64;
            self.partial.extend_from_slice(&chunk[..n]);
            let complete = self
                .partial
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            let rest = self.partial.split_off(complete);
            let lines = std::mem::replace(&mut self.partial, rest);
            for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                let Ok(raw) = String::from_utf8(line.to_vec()) else {
                    continue;
                };
                if let Ok(value) = serde_json::from_str(&raw) {
                    each(Record { raw, value })?;
                }
            }
        }
    }
}

fn open(path: &Path) -> io::Result<Current> {
    let file = File::open(path)?;
    let m = file.metadata()?;
    Ok(Current {
        file,
        id: (m.dev(), m.ino()),
        pos: 0,
    })
}

/// The rotated files, oldest first, with their ids; files that vanish
/// while listing are left out.
fn rotated_ids(dir: &Path) -> io::Result<Vec<(PathBuf, FileId)>> {
    Ok(rotated_files(dir)?
        .into_iter()
        .filter_map(|p| {
            let m = fs::metadata(&p).ok()?;
            Some((p, (m.dev(), m.ino())))
        })
        .collect())
}

#[cfg(test)]
mod tests;
