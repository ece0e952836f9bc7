//! What a running loader tells other portguard commands about its attachment:
//! `/run/portguard/IFACE.json`, written atomically and readable by root only.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::{
    files,
    loader::AttachedMode,
    paths,
    policy::{Mode, Policy},
    system,
};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunState {
    pub iface: String,
    pub ifindex: u32,
    /// The loader process; enforcement outlives it (pins), `status` tells which is the case.
    pub pid: u32,
    pub policy: PathBuf,
    pub summary: String,
    pub mode: Mode,
    pub xdp_mode: AttachedMode,
    /// Seconds since the Unix epoch.
    pub attached_at: u64,
    pub generation: u64,
    pub netns: Option<String>,
    /// The policy's `never_block` networks (so `block` can warn about them).
    #[serde(default)]
    pub never_block: Vec<ipnet::IpNet>,
    /// Where the policy's blocklist came from, for `blocks`.
    #[serde(default)]
    pub blocklist_sources: Vec<crate::policy::BlocklistSource>,
    /// Leave enforcement in place when the loader exits (`attach --pin`).
    #[serde(default)]
    pub pinned: bool,
    /// The kernel's ids of this generation's programs, to check the record against what the
    /// pinned links run.
    #[serde(default)]
    pub programs: Option<crate::links::ProgramIds>,
    /// The policy's rules that carry a per-source limit, with their kernel counter slots.
    #[serde(default)]
    pub limited_rules: Vec<crate::limits::LimitedRule>,
}

/// Who records an attachment as it attaches: this process, on this interface.
pub struct Loading<'a> {
    pub iface: &'a str,
    pub ifindex: u32,
    pub netns: Option<&'a str>,
    /// `attach --pin`.
    pub pinned: bool,
}

impl RunState {
    /// The record of an attach by this process, running `policy` (read from `path`): the first
    /// generation, or the one after `adopted` (whose XDP mode and start time carry over until
    /// the attach says otherwise).
    pub fn attaching(loading: Loading, adopted: Option<&Self>, policy: &Policy, path: &Path) -> Self {
        let Loading { iface, ifindex, netns, pinned } = loading;
        let base = adopted.cloned().unwrap_or_else(|| Self {
            iface: iface.to_owned(),
            ifindex,
            pid: std::process::id(),
            policy: PathBuf::new(),
            summary: String::new(),
            mode: policy.mode,
            xdp_mode: AttachedMode::Unknown,
            attached_at: now_unix(),
            generation: 0,
            netns: None,
            never_block: Vec::new(),
            blocklist_sources: Vec::new(),
            pinned,
            programs: None,
            limited_rules: Vec::new(),
        });
        Self {
            iface: iface.to_owned(),
            ifindex,
            pid: std::process::id(),
            netns: netns.map(str::to_owned),
            pinned,
            ..base.next(policy, path, None)
        }
    }

    /// The generation after this one, running `policy` (read from `path`) with `programs`;
    /// everything else (loader, interface, mode, start) stays.
    #[must_use]
    pub fn next(&self, policy: &Policy, path: &Path, programs: Option<crate::links::ProgramIds>) -> Self {
        Self {
            generation: self.generation + 1,
            policy: path.to_path_buf(),
            summary: policy.summary(),
            mode: policy.mode,
            never_block: policy.never_block.clone(),
            blocklist_sources: policy.blocklist_sources.clone(),
            programs,
            limited_rules: crate::limits::limited_rules(policy),
            ..self.clone()
        }
    }

    pub fn write(&self) -> Result<()> {
        write_atomically(&paths::state_file(&self.iface), serde_json::to_string_pretty(self)?.as_bytes())
    }

    pub fn read(iface: &str) -> Option<Self> {
        Self::read_checked(iface).ok().flatten()
    }

    /// `None` if there is no record; an error saying why if there is one that cannot be read.
    pub fn read_checked(iface: &str) -> Result<Option<Self>> {
        let path = paths::state_file(iface);
        let text = match files::read_text_capped(&path, files::STATE_FILE_MAX) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error).with_context(|| format!("{} is damaged", path.display())),
        };
        serde_json::from_str(&text).map(Some).with_context(|| format!("{} is damaged", path.display()))
    }

    pub fn all() -> Vec<Self> {
        let Ok(entries) = fs::read_dir(paths::run_dir()) else {
            return Vec::new();
        };
        let mut states: Vec<Self> = entries
            .filter_map(std::result::Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let iface = name.strip_suffix(".json")?;
                (!iface.contains('.')).then(|| Self::read(iface)).flatten()
            })
            .collect();
        states.sort_by(|a, b| a.iface.cmp(&b.iface));
        states
    }

    pub fn remove(iface: &str) {
        let _ = fs::remove_file(paths::state_file(iface));
    }

    pub fn uptime_secs(&self) -> u64 {
        now_unix().saturating_sub(self.attached_at)
    }
}

/// The loader's hold on its interface: an exclusive flock on `/run/portguard/IFACE.lock`,
/// released by the kernel however the loader ends (even SIGKILL).
pub struct LoaderLock {
    _lock: Flock<fs::File>,
    path: PathBuf,
}

impl LoaderLock {
    /// Takes the lock if nobody holds it: no loader runs, and none starts while it is held.
    pub fn try_acquire(iface: &str) -> Option<Self> {
        Self::acquire(iface).ok()
    }

    /// Takes the lock, or says who holds it.
    pub fn acquire(iface: &str) -> Result<Self> {
        system::create_private_dir(&paths::run_dir())?;
        let path = paths::lock_file(iface);
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Self { _lock: lock, path }),
            Err((_, _)) => {
                let pid = RunState::read(iface).map(|s| format!(" (pid {})", s.pid)).unwrap_or_default();
                bail!(
                    "portguard is already attached to {iface}: its loader is running{pid}; \
                     `portguard detach {iface}` removes it"
                )
            }
        }
    }
}

impl Drop for LoaderLock {
    /// Deletes the lock file while still holding it: a racing attach fails on the held lock
    /// instead of locking a file that is about to disappear.
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Removes the run files of an interface that has no attachment and no loader (a loader that
/// was killed, pins removed by hand): its state, socket, lock, pending change and detach
/// request. Returns the names of the files removed, to be reported.
pub fn remove_left_behind(iface: &str) -> Vec<String> {
    if loader_running(iface) || paths::pin_dir(iface).exists() {
        return Vec::new();
    }
    [
        paths::state_file(iface),
        paths::control_socket(iface),
        paths::lock_file(iface),
        paths::pending_file(iface),
        paths::detach_request(iface),
        paths::next_file(iface),
    ]
    .into_iter()
    .filter(|path| fs::remove_file(path).is_ok())
    .filter_map(|path| path.file_name().map(|name| name.to_string_lossy().into_owned()))
    .collect()
}

/// Removes this namespace's run and state directories once they are empty: another network
/// namespace's last attachment is gone.
pub fn remove_empty_netns_dirs() {
    if let Some(dir) = crate::netns::Netns::current().dir() {
        let _ = fs::remove_dir(paths::run_dir());
        let _ = fs::remove_dir(paths::state_dir().join(dir));
    }
}

/// Interfaces of this network namespace with files in the run directory.
pub fn interfaces_with_run_files() -> Vec<String> {
    let Ok(entries) = fs::read_dir(paths::run_dir()) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(std::result::Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|name| name.split_once('.').map(|(iface, _)| iface.to_owned()))
        .filter(|iface| paths::check_iface_name(iface).is_ok())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Removes a lock file nobody holds (after a loader that was killed).
pub fn remove_stale_lock(iface: &str) {
    if !loader_running(iface) {
        let _ = fs::remove_file(paths::lock_file(iface));
    }
}

/// The process holding `iface`'s loader lock, from /proc/locks: how to find a running loader
/// whose state file is gone or damaged.
pub fn lock_holder(iface: &str) -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let metadata = fs::metadata(paths::lock_file(iface)).ok()?;
    let (major, minor) = (libc::major(metadata.dev()), libc::minor(metadata.dev()));
    let file = format!("{major:02x}:{minor:02x}:{}", metadata.ino());
    let locks = fs::read_to_string(paths::PROC_LOCKS).ok()?;
    holder_in(&locks, &file)
}

/// The pid holding (not waiting for) the FLOCK on `file` (`MAJOR:MINOR:INODE`) in /proc/locks.
fn holder_in(locks: &str, file: &str) -> Option<u32> {
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // `1: FLOCK ADVISORY WRITE PID DEV:INODE START END`; waiters have `->` after the number.
        match fields.as_slice() {
            [_, "FLOCK", _, _, pid, device, ..] if *device == file => pid.parse().ok(),
            _ => None,
        }
    })
}

/// Whether a loader holds `iface`'s lock right now.
pub fn loader_running(iface: &str) -> bool {
    let Ok(file) = fs::File::open(paths::lock_file(iface)) else {
        return false;
    };
    // A shared lock is refused only while the loader holds its exclusive one.
    Flock::lock(file, FlockArg::LockSharedNonblock).is_err()
}

/// Writes a root-only file so that readers see the old or the new content, never a mix, even
/// across a crash: a temporary file, flushed, then renamed over the old one.
pub fn write_atomically(path: &Path, content: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        system::create_private_dir(dir)?;
    }
    let temporary = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .with_context(|| format!("writing {}", temporary.display()))?;
    file.write_all(content)?;
    file.sync_all()?;
    fs::rename(&temporary, path).with_context(|| format!("replacing {}", path.display()))?;
    if let Some(dir) = path.parent() {
        // The rename itself must reach the disk too.
        fs::File::open(dir).and_then(|d| d.sync_all()).ok();
    }
    Ok(())
}

/// A status file the loader keeps for other commands (`stats`): `value` as JSON, written
/// atomically. A failure is a warning naming `what`; it never stops the loader.
pub fn record_status(path: &Path, value: &impl Serialize, what: &str) {
    if let Err(error) =
        serde_json::to_vec(value).map_err(anyhow::Error::from).and_then(|json| write_atomically(path, &json))
    {
        log::warn!("recording {what}: {error:#}");
    }
}

/// What `record_status` last wrote at `path`; `None` without one (no running loader).
pub fn read_status<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    let text = files::read_text_capped(path, 1 << 20).ok()?;
    serde_json::from_str(&text).ok()
}

pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_lock_holder_is_found_in_proc_locks() {
        let locks = "1: FLOCK  ADVISORY  WRITE 3326 fe:00:10011201 0 EOF\n\
                     1: -> FLOCK  ADVISORY  WRITE 5737 fe:00:10011201 0 EOF\n\
                     2: POSIX  ADVISORY  WRITE 77 fe:00:42 0 EOF\n";
        assert_eq!(super::holder_in(locks, "fe:00:10011201"), Some(3326));
        assert_eq!(super::holder_in(locks, "fe:00:42"), None, "not a flock");
        assert_eq!(super::holder_in(locks, "fe:00:1"), None);
    }
}
