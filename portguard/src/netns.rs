//! Network namespaces, as portguard tells attachments apart. An interface name means the
//! interface of that name in the namespace a command runs in (as for `ip link`), so `eth0` in
//! one namespace and `eth0` in another are two attachments with their own pins, run files and
//! manual blocks, and a command acts on the attachments of its own namespace.

use std::{fmt, os::unix::fs::MetadataExt as _, path::Path};

use serde::{Deserialize, Serialize};

/// A network namespace: the host's (PID 1's), or another by its inode number, which is how the
/// kernel identifies it while it exists (`ls -l /proc/PID/ns/net`, `lsns -t net`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Netns {
    #[default]
    Host,
    Inode(u64),
}

/// The host's namespace: PID 1's or, where PID 1 cannot be looked at (some sandboxes deny it
/// even to root), kthreadd's (PID 2), which runs in the initial namespace.
fn host() -> Option<(u64, u64)> {
    identity(Path::new("/proc/1/ns/net")).or_else(|| identity(Path::new("/proc/2/ns/net")))
}

/// The inode of the initial network namespace on kernels that give it a fixed one (6.x; the
/// other initial namespaces have had theirs since 3.8).
const INITIAL_NETNS_INODE: u64 = 0xEFFF_FFF9;

/// Whether the namespace `own` is the host's. Looking at PID 1 and 2 needs the capabilities
/// they have: a loader confined to a few (the systemd unit's CAP_BPF, CAP_PERFMON,
/// CAP_NET_ADMIN) is refused, and would take the host's namespace for another one and keep its
/// pins where root's commands never look. Then the fixed inode tells, where the kernel has one.
fn is_host(own: (u64, u64), host: Option<(u64, u64)>) -> bool {
    match host {
        Some(host) => host == own,
        None => own.1 == INITIAL_NETNS_INODE,
    }
}

/// Device and inode of a namespace file.
fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl Netns {
    /// The namespace of the calling thread (`--netns` moves the whole process before anything
    /// else runs). Without /proc nothing tells namespaces apart: taken as the host's.
    pub fn current() -> Self {
        Self::of_file(Path::new("/proc/thread-self/ns/net")).unwrap_or(Self::Host)
    }

    /// The namespace a namespace file (`/run/netns/NAME`, `/proc/PID/ns/net`) refers to.
    pub fn of_file(path: &Path) -> Option<Self> {
        let own = identity(path)?;
        Some(if is_host(own, host()) { Self::Host } else { Self::Inode(own.1) })
    }

    pub fn is_host(&self) -> bool {
        *self == Self::Host
    }

    /// The directory of its attachments under portguard's pin, run and state directories: the
    /// host's are those directories themselves (the paths portguard always had), another's
    /// `net:INODE` in them (no interface name has a `:`, so the two never meet).
    pub fn dir(&self) -> Option<String> {
        match self {
            Self::Host => None,
            Self::Inode(inode) => Some(format!("net:{inode}")),
        }
    }

    /// The namespace whose directory is `name` (see `dir`).
    pub fn from_dir(name: &str) -> Option<Self> {
        name.strip_prefix("net:")?.parse().ok().map(Self::Inode)
    }

    /// Its name under /run/netns (`ip netns`), if it has one.
    pub fn name(&self) -> Option<String> {
        let Self::Inode(inode) = self else { return None };
        std::fs::read_dir("/run/netns").ok()?.filter_map(Result::ok).find_map(|entry| {
            let named = identity(&entry.path()).is_some_and(|(_, ino)| ino == *inode);
            named.then(|| entry.file_name().to_string_lossy().into_owned())
        })
    }
}

/// For people: `host`, `netns NAME` (named under /run/netns) or `netns net:[INODE]`.
impl fmt::Display for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self, self.name()) {
            (Self::Host, _) => f.write_str("the host's network namespace"),
            (_, Some(name)) => write!(f, "network namespace {}", crate::printable(&name)),
            (Self::Inode(inode), None) => write!(f, "network namespace net:[{inode}]"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_is_known_also_where_pid_1_cannot_be_looked_at() {
        let (nsfs, initial, other) = (4, INITIAL_NETNS_INODE, 4_026_532_281);
        assert!(is_host((nsfs, initial), Some((nsfs, initial))));
        assert!(!is_host((nsfs, other), Some((nsfs, initial))));
        // Older kernels number the initial namespace like any other: PID 1 decides.
        assert!(is_host((nsfs, other), Some((nsfs, other))));
        // PID 1 and 2 refused (a confined loader): the fixed inode decides.
        assert!(is_host((nsfs, initial), None));
        assert!(!is_host((nsfs, other), None));
    }

    #[test]
    fn directories_name_namespaces_and_never_an_interface() {
        assert_eq!(Netns::Host.dir(), None);
        let other = Netns::Inode(4_026_532_281);
        assert_eq!(other.dir().as_deref(), Some("net:4026532281"));
        assert_eq!(Netns::from_dir("net:4026532281"), Some(other));
        assert_eq!(Netns::from_dir("eth0"), None);
        assert!(crate::paths::check_iface_name(&other.dir().unwrap()).is_err());
        assert_eq!(serde_json::to_string(&other).unwrap(), r#"{"inode":4026532281}"#);
        assert_eq!(serde_json::to_string(&Netns::Host).unwrap(), r#""host""#);
    }
}
