//! A journal's files: appends under a lock (the loader's writer and a command writing while no
//! loader runs never interleave), rotation at `file_bytes`, and pruning of the oldest rotated
//! files to stay within `total_bytes`.

use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use nix::fcntl::{Flock, FlockArg};

use super::Limits;
use crate::{events::EventRecord, files, paths, system};

/// The file being written.
const CURRENT: &str = "events.jsonl";
const LOCK: &str = "lock";
/// The limits the last loader was given, for commands that append while none runs.
const LIMITS: &str = "limits.json";

/// One attachment's journal directory.
pub struct Store {
    dir: PathBuf,
    limits: Limits,
}

impl Store {
    /// Creates the directory (root only) if needed and records `limits` in it.
    pub fn create(dir: PathBuf, limits: Limits) -> Result<Self> {
        system::create_private_dir(&dir)?;
        let store = Self { dir, limits };
        store.save_limits()?;
        Ok(store)
    }

    /// The journal a loader left in `dir`, with the limits it was given; `None` when there is
    /// none.
    pub fn existing(dir: PathBuf) -> Option<Self> {
        let text = files::read_capped(&dir.join(LIMITS), 4096).ok()?;
        let limits = serde_json::from_slice(&text).ok()?;
        Some(Self { dir, limits })
    }

    pub const fn limits(&self) -> Limits {
        self.limits
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn set_limits(&mut self, limits: Limits) -> Result<()> {
        self.limits = limits;
        self.save_limits()
    }

    fn save_limits(&self) -> Result<()> {
        let text = serde_json::to_string(&self.limits)?;
        crate::state::write_atomically(&self.dir.join(LIMITS), text.as_bytes())
    }

    /// Appends `text` (whole lines), rotating the file whenever it reaches `file_bytes` (files
    /// are cut between lines: one ends with the line that reaches that size) and pruning the
    /// oldest rotated files.
    pub fn append(&self, text: &str) -> io::Result<()> {
        let lock = fs::OpenOptions::new().create(true).append(true).mode(0o600).open(self.dir.join(LOCK))?;
        let _held =
            Flock::lock(lock, FlockArg::LockExclusive).map_err(|(_, errno)| io::Error::from(errno))?;
        let current = self.dir.join(CURRENT);
        let open = || -> io::Result<fs::File> {
            let file = fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&current)?;
            // A file made by hand, or before the modes were kept: root only all the same.
            if file.metadata()?.permissions().mode() & 0o077 != 0 {
                file.set_permissions(fs::Permissions::from_mode(0o600))?;
            }
            Ok(file)
        };
        let mut file = open()?;
        let mut size = file.metadata()?.len();
        let mut pending = text;
        while !pending.is_empty() {
            let room = usize::try_from(self.limits.file_bytes.saturating_sub(size)).unwrap_or(usize::MAX);
            let cut = cut_within(pending, room);
            file.write_all(&pending.as_bytes()[..cut])?;
            size += cut as u64;
            pending = &pending[cut..];
            if size >= self.limits.file_bytes {
                drop(file);
                let next = rotated(&self.dir)?.last().map_or(1, |(number, _)| number + 1);
                fs::rename(&current, self.dir.join(format!("events.{next:010}.jsonl")))?;
                self.prune()?;
                file = open()?;
                size = 0;
            }
        }
        Ok(())
    }

    /// Removes the oldest rotated files until they fit in `total_bytes` with room left for a
    /// full file being written.
    fn prune(&self) -> io::Result<()> {
        let size = |path: &Path| fs::metadata(path).map_or(0, |m| m.len());
        let old = rotated(&self.dir)?;
        let budget = self.limits.total_bytes.saturating_sub(self.limits.file_bytes);
        let mut total: u64 = old.iter().map(|(_, path)| size(path)).sum();
        for (_, path) in old {
            if total <= budget {
                break;
            }
            total = total.saturating_sub(size(&path));
            fs::remove_file(&path)?;
        }
        Ok(())
    }
}

/// How much of `text` to write into `room` bytes: whole lines, at least one.
fn cut_within(text: &str, room: usize) -> usize {
    let first_line = text.find('\n').map_or(text.len(), |end| end + 1);
    if first_line >= room {
        return first_line;
    }
    let window = &text[..room.min(text.len())];
    window.rfind('\n').map_or(first_line, |end| end + 1)
}

/// The rotated files of a journal, oldest first, with their numbers.
fn rotated(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let number = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_prefix("events.")?.strip_suffix(".jsonl")?.parse::<u64>().ok());
        if let Some(number) = number {
            found.push((number, path));
        }
    }
    found.sort();
    Ok(found)
}

/// Every file of a journal, oldest first: the rotated ones, then the one being written.
pub(super) fn files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut all: Vec<PathBuf> = rotated(dir)?.into_iter().map(|(_, path)| path).collect();
    let current = dir.join(CURRENT);
    if current.exists() {
        all.push(current);
    }
    Ok(all)
}

/// Appends what a command did to the journal of `iface` when no loader runs to do it: with the
/// limits its last loader had. `false`: there is no journal (never attached, or it is off).
pub fn append_directly(iface: &str, record: &EventRecord) -> Result<bool> {
    let Some(store) = Store::existing(paths::journal_dir(iface)) else {
        return Ok(false);
    };
    if !store.limits.enabled() {
        return Ok(false);
    }
    store
        .append(&format!("{}\n", record.json()))
        .with_context(|| format!("appending to {}", store.dir.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(dir: &Path) -> Vec<u64> {
        files(dir).unwrap().iter().map(|path| fs::metadata(path).unwrap().len()).collect()
    }

    #[test]
    fn rotates_by_size_and_keeps_the_total_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("eth0");
        let store = Store::create(journal.clone(), Limits { total_bytes: 4000, file_bytes: 1000 }).unwrap();
        let line = format!("{{\"pad\":\"{}\"}}\n", "x".repeat(90));
        assert_eq!(line.len(), 101);
        for _ in 0..205 {
            store.append(&line).unwrap();
        }
        let kept = sizes(&journal);
        // 20.7 kB written; each rotated file holds 10 lines (rotated on reaching 1000 bytes).
        assert!(kept.iter().sum::<u64>() <= 4000, "{kept:?}");
        assert!(kept.len() >= 3, "{kept:?}");
        assert!(kept.iter().all(|&size| size <= 1010), "{kept:?}");
        let names: Vec<String> = files(&journal)
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into())
            .collect();
        // The newest rotated ones stay, in order, and the current file comes last.
        assert_eq!(names.last().map(String::as_str), Some(CURRENT), "{names:?}");
        assert!(names.contains(&"events.0000000020.jsonl".to_string()), "{names:?}");
        assert!(!names.contains(&"events.0000000001.jsonl".to_string()), "{names:?}");
        for path in files(&journal).unwrap() {
            assert_eq!(
                fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600,
                "{}",
                path.display()
            );
        }
        assert_eq!(fs::metadata(&journal).unwrap().permissions().mode() & 0o777, 0o700);
        // One large batch is cut into files of the same size, and still bounded.
        store.append(&line.repeat(100)).unwrap();
        let kept = sizes(&journal);
        assert!(kept.iter().sum::<u64>() <= 4000, "{kept:?}");
        assert!(kept.iter().all(|&size| size <= 1010), "{kept:?}");
        assert!(kept.len() >= 3, "{kept:?}");
        assert_eq!(cut_within("ab\ncd\n", 4), 3);
        assert_eq!(cut_within("abcdef\ncd\n", 4), 7);
        assert_eq!(cut_within("ab\ncd\n", 100), 6);
        // The limits are kept for commands that write while no loader runs.
        let again = Store::existing(journal).unwrap();
        assert_eq!(again.limits(), Limits { total_bytes: 4000, file_bytes: 1000 });
        assert!(Store::existing(dir.path().join("eth1")).is_none());
    }
}
