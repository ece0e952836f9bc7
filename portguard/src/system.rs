//! The host facts portguard depends on, each checked with an error that says what to do:
//! root, the memlock limit, bpffs, interfaces and network namespaces.

use std::{
    fs,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::Path,
};

use anyhow::{Context as _, Result, bail};
use log::{debug, info};
use nix::{
    mount::{MsFlags, mount},
    sched::{CloneFlags, setns},
    sys::{
        resource::{Resource, setrlimit},
        statfs::statfs,
    },
};

use crate::paths;

/// A command lacks the privileges it needs: it says so, changes nothing and ends with its own
/// exit code (`exit::Exit::NeedsPrivileges`), never with an answer it could not know.
#[derive(Debug)]
pub struct NeedsPrivileges {
    what: String,
    why: String,
}

impl NeedsPrivileges {
    /// `what` needs root, because of `why` (the capability, or what only root can read).
    pub fn new(what: impl Into<String>, why: impl Into<String>) -> Self {
        Self { what: what.into(), why: why.into() }
    }
}

impl std::fmt::Display for NeedsPrivileges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} needs root ({}): run it with sudo", self.what, self.why)
    }
}

impl std::error::Error for NeedsPrivileges {}

pub fn require_root(what: &str) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Err(NeedsPrivileges::new(what, "CAP_BPF and CAP_NET_ADMIN").into());
    }
    Ok(())
}

/// For the commands that only look (`status`, `stats`): the pins and run files that tell what
/// is attached are root's only, so without root "nothing is attached" would be a guess.
pub fn require_root_to_look(what: &str) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Err(NeedsPrivileges::new(
            what,
            format!(
                "only root can read {} and {}, where attachments are recorded, so it cannot tell what is attached",
                paths::PIN_ROOT,
                paths::RUN_DIR
            ),
        )
        .into());
    }
    Ok(())
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; newer ones ignore it.
pub fn raise_memlock() {
    if let Err(error) = setrlimit(Resource::RLIMIT_MEMLOCK, libc::RLIM_INFINITY, libc::RLIM_INFINITY) {
        debug!("could not lift the memlock limit ({error}); kernels >= 5.11 do not need it");
    }
}

/// Mounts bpffs at /sys/fs/bpf when it is missing (fresh machines often lack it).
pub fn ensure_bpffs() -> Result<()> {
    let mounted = statfs(paths::BPFFS).is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC);
    if mounted {
        return Ok(());
    }
    fs::create_dir_all(paths::BPFFS).with_context(|| format!("creating {}", paths::BPFFS))?;
    mount(
        Some("bpf"),
        paths::BPFFS,
        Some("bpf"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .with_context(|| {
        format!(
            "bpffs is not mounted at {0} and mounting it failed; mount it yourself with \
                 `mount -t bpf bpf {0}`",
            paths::BPFFS
        )
    })?;
    info!("mounted bpffs at {}", paths::BPFFS);
    Ok(())
}

/// Creates a directory (and parents) readable by root only.
pub fn create_private_dir(path: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .with_context(|| format!("creating {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {} to root", path.display()))
}

pub fn ifindex(iface: &str) -> Result<u32> {
    match nix::net::if_::if_nametoindex(iface) {
        Ok(index) => Ok(index),
        Err(_) => bail!(
            "interface `{iface}` does not exist in this network namespace (`ip link` lists them; \
             use --netns NAME for an interface in another namespace)"
        ),
    }
}

/// Moves the calling thread into the network namespace `/run/netns/NAME` (as `ip netns exec`
/// does, but without its private mount namespace, so pins stay visible to everyone). Call it
/// before starting any other thread: new threads inherit the namespace of their creator.
pub fn enter_netns(name: &str) -> Result<()> {
    let path = paths::netns_file(name);
    let file = fs::File::open(&path).with_context(|| {
        format!(
            "network namespace `{name}` not found ({} is missing; `ip netns list` lists them)",
            path.display()
        )
    })?;
    match setns(file, CloneFlags::CLONE_NEWNET) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EPERM) => Err(NeedsPrivileges::new(
            format!("entering network namespace `{name}` (--netns)"),
            "CAP_SYS_ADMIN, which the kernel's setns requires; it refused with EPERM",
        )
        .into()),
        Err(error) => Err(error).with_context(|| format!("entering network namespace `{name}`")),
    }
}

/// This host's name (`uname -n`), read once: events and alerts carry it, so a receiver that
/// hears from many hosts can tell them apart. `None` if the kernel will not say.
pub fn host_name() -> Option<String> {
    static NAME: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    NAME.get_or_init(|| nix::unistd::gethostname().ok().and_then(|name| name.into_string().ok())).clone()
}

/// CPUs the kernel may run (what per-CPU maps and `bpf_get_smp_processor_id` range over).
pub fn possible_cpus() -> u32 {
    fs::read_to_string(paths::CPUS_POSSIBLE)
        .ok()
        .and_then(|text| text.trim().rsplit(['-', ',']).next().and_then(|last| last.parse::<u32>().ok()))
        .map_or(1, |last| last + 1)
}
