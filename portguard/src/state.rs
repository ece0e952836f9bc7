//! What a running loader tells other portguard commands about its attachment:
//! `/run/portguard/IFACE.json`, written atomically and readable by root only.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::PathBuf,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::{loader::AttachedMode, paths, policy::Mode, system};

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
}

impl RunState {
    pub fn write(&self) -> Result<()> {
        system::create_private_dir(&PathBuf::from(paths::RUN_DIR))?;
        let path = paths::state_file(&self.iface);
        let temporary = path.with_extension("json.tmp");
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)
            .with_context(|| format!("writing {}", temporary.display()))?;
        file.write_all(serde_json::to_string_pretty(self)?.as_bytes())?;
        file.sync_all()?;
        fs::rename(&temporary, &path).with_context(|| format!("replacing {}", path.display()))
    }

    pub fn read(iface: &str) -> Option<Self> {
        let text = fs::read_to_string(paths::state_file(iface)).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn remove(iface: &str) {
        let _ = fs::remove_file(paths::state_file(iface));
    }

    /// Whether the loader that wrote this is still running.
    pub fn loader_alive(&self) -> bool {
        loader_running(&self.iface)
    }

    pub fn uptime_secs(&self) -> u64 {
        now_unix().saturating_sub(self.attached_at)
    }
}

/// The loader's hold on its interface: an exclusive flock on `/run/portguard/IFACE.lock`,
/// released by the kernel however the loader ends (even SIGKILL).
pub struct LoaderLock {
    _lock: Flock<fs::File>,
}

impl LoaderLock {
    /// Takes the lock, or says who holds it.
    pub fn acquire(iface: &str) -> Result<Self> {
        system::create_private_dir(&PathBuf::from(paths::RUN_DIR))?;
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
            Ok(lock) => Ok(Self { _lock: lock }),
            Err((_, _)) => {
                let pid = RunState::read(iface)
                    .map(|s| format!(" (pid {})", s.pid))
                    .unwrap_or_default();
                bail!(
                    "portguard is already attached to {iface}: its loader is running{pid}; \
                     `portguard detach {iface}` removes it"
                )
            }
        }
    }
}

impl LoaderLock {
    /// Releases the lock and deletes its file (the loader is done with the interface).
    pub fn release(self, iface: &str) {
        // Unlink while still holding it: a racing attach fails on the held lock instead of
        // locking a file that is about to disappear.
        let _ = fs::remove_file(paths::lock_file(iface));
        drop(self);
    }
}

/// Removes a lock file nobody holds (after a loader that was killed).
pub fn remove_stale_lock(iface: &str) {
    if !loader_running(iface) {
        let _ = fs::remove_file(paths::lock_file(iface));
    }
}

/// Whether a loader holds `iface`'s lock right now.
pub fn loader_running(iface: &str) -> bool {
    let Ok(file) = fs::File::open(paths::lock_file(iface)) else {
        return false;
    };
    // A shared lock is refused only while the loader holds its exclusive one.
    Flock::lock(file, FlockArg::LockSharedNonblock).is_err()
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
