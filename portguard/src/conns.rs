//! Connection caps per source (`connections_per_source`): the `sock_ops` program that counts
//! the host's accepted connections, attached to the root of the cgroup v2 hierarchy while a
//! policy caps connections, and what the counts are as the operator sees them.
//!
//! The program sees the sockets of every namespace; it counts only those of the attachment's
//! namespace, which it knows by the namespace's cookie (`SO_NETNS_COOKIE`, read here on a
//! socket made in it). Connections that existed before it was attached are not counted.

use std::{borrow::Borrow, collections::BTreeMap, fs::File, os::fd::AsRawFd as _, path::PathBuf};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray, PerCpuValues},
    programs::{CgroupAttachMode, SockOps, links::FdLink},
};
use portguard_common::maps::{
    CONNS_RETIRED, ConnKey, LIMIT_COUNTER_SLOTS, MAP_CONN_SOCKETS, MAP_CONNS, MAP_RULE_CONN_LIMITED,
};

use crate::paths;

pub const SOCK_OPS_PROGRAM: &str = "pg_sock_ops";
/// The pinned link of the `sock_ops` program, beside the XDP and TC links.
pub const SOCK_OPS_LINK: &str = "sock_ops_link";

/// The cookie of the calling thread's network namespace.
pub fn netns_cookie() -> Result<u64> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")
        .or_else(|_| std::net::UdpSocket::bind("[::1]:0"))
        .context("making a socket to read this network namespace's cookie")?;
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .context("reading the network namespace's cookie (SO_NETNS_COOKIE, Linux 5.14 or later)");
    }
    Ok(cookie)
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on
/// hybrid systems), from /proc/mounts.
pub fn cgroup2_root() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    cgroup2_in(&mounts).ok_or_else(|| {
        anyhow!(
            "no cgroup v2 hierarchy is mounted (connections_per_source counts connections with a \
             sock_ops program on its root): mount one, e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`"
        )
    })
}

fn cgroup2_in(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, at, kind) = (fields.next()?, fields.next()?, fields.next()?);
        // /proc/mounts escapes spaces and the like as octal.
        (kind == "cgroup2").then(|| PathBuf::from(at.replace("\\040", " ")))
    })
}

/// Loads the `sock_ops` program of a generation whose policy caps connections.
pub fn load(ebpf: &mut Ebpf) -> Result<()> {
    let program: &mut SockOps = ebpf
        .program_mut(SOCK_OPS_PROGRAM)
        .context("the kernel object has no sock_ops program")?
        .try_into()
        .context("pg_sock_ops is not a sock_ops program")?;
    program.load().map_err(crate::loader::verifier_error).context("the kernel refused the sock_ops program")
}

/// Makes the attachment `iface` count connections with this generation's program if it has
/// one loaded (the policy caps connections), or stop counting if not. A new link is attached
/// beside the old one and pinned over it: both count for a moment, which the per-socket
/// entries make harmless (each socket is counted once and released once). Without a cap any
/// more, the counts are dropped: nothing would release them.
pub fn sync(ebpf: &mut Ebpf, iface: &str) -> Result<()> {
    let pin = paths::link_pin(iface, SOCK_OPS_LINK);
    let program: Option<&mut SockOps> = ebpf
        .program_mut(SOCK_OPS_PROGRAM)
        .and_then(|p| p.try_into().ok())
        .filter(|p: &&mut SockOps| p.fd().is_ok());
    let Some(program) = program else {
        if pin.exists() {
            std::fs::remove_file(&pin).with_context(|| format!("unpinning {}", pin.display()))?;
            clear_counts(ebpf)?;
        }
        return Ok(());
    };
    let root = cgroup2_root()?;
    let cgroup = File::open(&root).with_context(|| format!("opening the cgroup {}", root.display()))?;
    // A bpf_link takes no attach flags (`Single` is none): the kernel always attaches links
    // as one of many, beside other programs and other attachments' links.
    let id = program
        .attach(&cgroup, CgroupAttachMode::Single)
        .with_context(|| format!("attaching the sock_ops program to the cgroup {}", root.display()))?;
    let link = FdLink::try_from(program.take_link(id)?)
        .map_err(|_| anyhow!("the kernel attached sock_ops without a bpf_link (kernel older than 5.7?)"))?;
    // bpffs takes no `.` in a name.
    let fresh = paths::link_pin(iface, &format!("{SOCK_OPS_LINK}_new"));
    let _ = std::fs::remove_file(&fresh);
    link.pin(&fresh).with_context(|| format!("pinning {}", fresh.display()))?;
    // Replaces the old pin in one step: its link, held by nothing else, is detached.
    std::fs::rename(&fresh, &pin)
        .with_context(|| format!("renaming {} to {}", fresh.display(), pin.display()))
}

/// Forgets every count and every counted socket.
pub fn clear_counts(ebpf: &mut Ebpf) -> Result<()> {
    let mut sockets: HashMap<&mut MapData, u64, ConnKey> =
        HashMap::try_from(ebpf.map_mut(MAP_CONN_SOCKETS).context(MAP_CONN_SOCKETS)?)?;
    let cookies: Vec<u64> = sockets.keys().filter_map(Result::ok).collect();
    for cookie in cookies {
        let _ = sockets.remove(&cookie);
    }
    let mut counts: HashMap<&mut MapData, ConnKey, u64> =
        HashMap::try_from(ebpf.map_mut(MAP_CONNS).context(MAP_CONNS)?)?;
    let keys: Vec<ConnKey> = counts.keys().filter_map(Result::ok).collect();
    for key in keys {
        let _ = counts.remove(&key);
    }
    Ok(())
}

/// The refusals per rule start at zero with every generation (slots are given anew).
pub fn reset_refusal_counts(ebpf: &mut Ebpf) -> Result<()> {
    let mut counts: PerCpuArray<&mut MapData, u64> =
        PerCpuArray::try_from(ebpf.map_mut(MAP_RULE_CONN_LIMITED).context(MAP_RULE_CONN_LIMITED)?)?;
    let cpus = crate::system::possible_cpus() as usize;
    for slot in 0..LIMIT_COUNTER_SLOTS {
        counts.set(slot, PerCpuValues::try_from(vec![0u64; cpus])?, 0).context(MAP_RULE_CONN_LIMITED)?;
    }
    Ok(())
}

/// Open connections counted per rule identity (`RuleLimit::conn_rule`): (sources holding
/// some, connections).
pub fn held<T: Borrow<MapData>>(counts: &HashMap<T, ConnKey, u64>) -> Result<BTreeMap<u32, (u64, u64)>> {
    let mut held: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    for entry in counts {
        let (key, count) = entry.context(MAP_CONNS)?;
        if count == 0 || count == CONNS_RETIRED {
            continue;
        }
        let row = held.entry(key.conn_rule).or_default();
        row.0 += 1;
        row.1 += count;
    }
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_is_found_in_hybrid_and_unified_layouts() {
        let hybrid = "sysfs /sys sysfs rw 0 0\ntmpfs /sys/fs/cgroup tmpfs ro 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw,nsdelegate 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n";
        assert_eq!(cgroup2_in(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let unified = "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n";
        assert_eq!(cgroup2_in(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(cgroup2_in("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n"), None);
        assert_eq!(cgroup2_in("none /mnt/my\\040cg cgroup2 rw 0 0\n"), Some(PathBuf::from("/mnt/my cg")));
    }

    #[test]
    fn this_namespace_has_a_cookie() {
        let cookie = netns_cookie().unwrap();
        assert_ne!(cookie, 0);
        assert_eq!(netns_cookie().unwrap(), cookie);
    }
}
