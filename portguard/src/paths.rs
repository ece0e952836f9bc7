//! Every filesystem path portguard uses, in one place: its own (pins, run and state files) and
//! the kernel's it reads (/proc, /sys, /run/netns).

use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::netns::Netns;

/// Where bpffs is (or gets) mounted.
pub const BPFFS: &str = "/sys/fs/bpf";
/// portguard's own directory on bpffs.
pub const PIN_ROOT: &str = "/sys/fs/bpf/portguard";
/// Runtime state of running attachments (pid, policy summary), cleared by a reboot.
pub const RUN_DIR: &str = "/run/portguard";
/// State that must survive a reboot: manual blocks, the policy each attachment runs.
pub const STATE_DIR: &str = "/var/lib/portguard";

/// Named network namespaces, as `ip netns add` creates them.
pub const NETNS_DIR: &str = "/run/netns";
/// procfs: processes (`/proc/PID/...`) and this namespace's sockets (`/proc/net/...`).
pub const PROC: &str = "/proc";
/// Who holds which file lock.
pub const PROC_LOCKS: &str = "/proc/locks";
/// The audit login user id of this process (kept across `su` and `sudo`).
pub const PROC_SELF_LOGINUID: &str = "/proc/self/loginuid";
/// The CPUs the kernel may run, as a list of ranges (`0-3`).
pub const CPUS_POSSIBLE: &str = "/sys/devices/system/cpu/possible";
/// The kernel's own BTF (CO-RE and program metadata need it).
pub const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// A named network namespace's file (`ip netns add NAME`).
pub fn netns_file(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

/// A socket table of this network namespace (`tcp`, `tcp6`, `udp`, `udp6`).
pub fn proc_net(table: &str) -> PathBuf {
    PathBuf::from(PROC).join("net").join(table)
}

/// A file about process `pid` (`stat`, `environ`, ...).
pub fn proc_pid(pid: u32, file: &str) -> PathBuf {
    PathBuf::from(PROC).join(pid.to_string()).join(file)
}

/// What the kernel says about one of this thread's file descriptors.
pub fn fdinfo(fd: i32) -> PathBuf {
    PathBuf::from(PROC).join("thread-self/fdinfo").join(fd.to_string())
}

/// The driver of a network interface (a symlink whose name is the driver's).
pub fn iface_driver(iface: &str) -> PathBuf {
    PathBuf::from(format!("/sys/class/net/{iface}/device/driver"))
}

/// `STATE_DIR`, or `PORTGUARD_STATE_DIR` when set (packaging, and tests that must not share
/// the host's blocks).
pub fn state_dir() -> PathBuf {
    std::env::var_os("PORTGUARD_STATE_DIR").map_or_else(|| PathBuf::from(STATE_DIR), PathBuf::from)
}

/// `root` for the attachments of `netns`: `root` itself for the host's, `root/net:INODE` for
/// another's, so two `eth0`s in two namespaces never share a path.
pub fn scoped_in(root: &str, netns: Netns) -> PathBuf {
    let root = PathBuf::from(root);
    match netns.dir() {
        Some(dir) => root.join(dir),
        None => root,
    }
}

/// The pin directory of this namespace's attachments.
pub fn pin_root() -> PathBuf {
    scoped_in(PIN_ROOT, Netns::current())
}

/// The run directory of this namespace's attachments.
pub fn run_dir() -> PathBuf {
    scoped_in(RUN_DIR, Netns::current())
}

/// Manual blocks (`portguard block`), written atomically, root only.
pub fn blocks_file() -> PathBuf {
    state_dir().join("blocks.json")
}

/// Held while the manual blocks are read, changed and written back.
pub fn blocks_lock() -> PathBuf {
    state_dir().join("blocks.lock")
}

/// The text of the policy an attachment runs now: what a rollback returns to.
pub fn active_policy(iface: &str) -> PathBuf {
    namespace_state_dir().join(format!("{iface}.active-policy.json"))
}

/// The CrowdSec decisions an attachment enforces (`[crowdsec]`), kept across loader restarts.
pub fn crowdsec_decisions(iface: &str) -> PathBuf {
    namespace_state_dir().join(format!("{iface}.crowdsec.json"))
}

/// What is normal for each port of an attachment (`crate::baseline`): it outlives the
/// attachment, so weeks of learning survive a detach.
pub fn baseline_file(iface: &str) -> PathBuf {
    namespace_state_dir().join(format!("{iface}.baseline.json"))
}

/// The state directory of this namespace's attachments: another namespace's under its
/// `net:INODE/`.
fn namespace_state_dir() -> PathBuf {
    match Netns::current().dir() {
        Some(netns) => state_dir().join(netns),
        None => state_dir(),
    }
}

/// What the loader's baselines know, for `stats`.
pub fn baseline_status(iface: &str) -> PathBuf {
    run_dir().join(format!("{iface}.baseline-status.json"))
}

/// How the loader's pulls from the CrowdSec LAPI went, for `stats`.
pub fn crowdsec_status(iface: &str) -> PathBuf {
    run_dir().join(format!("{iface}.crowdsec-status.json"))
}

/// The last good copy of each `[blocklist] urls` feed an attachment enforces, kept across
/// loader restarts and reboots: `ID.list` (the list as served) and `ID.json` (its validators).
pub fn feed_copies(iface: &str) -> PathBuf {
    namespace_state_dir().join("feeds").join(iface)
}

/// How the loader's fetches of its feeds went, for `stats`.
pub fn feeds_status(iface: &str) -> PathBuf {
    run_dir().join(format!("{iface}.feeds-status.json"))
}

/// The journals of this namespace's attachments (`crate::journal`), one directory each.
pub fn journal_root() -> PathBuf {
    namespace_state_dir().join("journal")
}

/// The journal of the attachment of `iface`: it outlives the attachment.
pub fn journal_dir(iface: &str) -> PathBuf {
    journal_root().join(iface)
}

/// A change waiting for `portguard confirm` (`--confirm-within`).
pub fn pending_file(iface: &str) -> PathBuf {
    run_dir().join(format!("{iface}.pending.json"))
}

/// Longest interface name the kernel accepts (`IFNAMSIZ` less its NUL).
pub const IFACE_NAME_MAX: usize = 15;

/// Checks an interface name by the kernel's rules (`dev_valid_name`): 1-15 bytes, not `.` or
/// `..`, no `/`, `:`, whitespace or NUL. Every command checks names with it before a name
/// becomes part of a path, so `detach ../..` cannot reach outside portguard's directories.
pub fn check_iface_name(name: &str) -> Result<(), String> {
    let problem = if name.is_empty() {
        "is empty"
    } else if name.len() > IFACE_NAME_MAX {
        "is longer than 15 bytes"
    } else if name == "." || name == ".." {
        "is `.` or `..`"
    } else if name.bytes().any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace() || b == 0x0b) {
        "contains `/`, `:`, whitespace or NUL"
    } else {
        return Ok(());
    };
    Err(format!(
        "`{}` is not an interface name: it {problem} (names are 1-15 bytes without `/`, `:` or whitespace)",
        name.escape_debug()
    ))
}

/// Pins of one attachment: the shared maps and the links.
pub fn pin_dir(iface: &str) -> PathBuf {
    pin_root().join(iface)
}

/// `pin_dir`, for code about to delete in it: refuses a name that is not an interface name or
/// a directory that is not directly under this namespace's pin directory.
pub fn owned_pin_dir(iface: &str) -> Result<PathBuf> {
    if let Err(problem) = check_iface_name(iface) {
        bail!("{problem}");
    }
    let (root, dir) = (pin_root(), pin_dir(iface));
    if dir.parent() != Some(root.as_path()) || !root.starts_with(PIN_ROOT) {
        bail!("{} is not inside {}: not touching it", dir.display(), root.display());
    }
    Ok(dir)
}

pub fn map_pin(iface: &str, map: &str) -> PathBuf {
    pin_dir(iface).join(map)
}

pub const XDP_LINK: &str = "link_xdp";
pub const TC_EGRESS_LINK: &str = "link_tc_egress";

pub fn link_pin(iface: &str, link: &str) -> PathBuf {
    pin_dir(iface).join(link)
}

/// What `status` reads about an attachment.
pub fn state_file(iface: &str) -> PathBuf {
    run_dir().join(format!("{iface}.json"))
}

/// A generation about to be switched in, written before the switch and removed once it is
/// recorded: after a crash in between, it and the pinned links tell which generation runs.
pub fn next_file(iface: &str) -> PathBuf {
    run_dir().join(format!("{iface}.next.json"))
}

/// The loader's control socket (events for `portguard events`, `reload`), root only.
pub fn control_socket(iface: &str) -> PathBuf {
    run_dir().join(format!("{iface}.sock"))
}

/// Held (flock) by the loader of an attachment for as long as it runs.
pub fn lock_file(iface: &str) -> PathBuf {
    run_dir().join(format!("{iface}.lock"))
}

/// Left by `portguard detach` for a loader started with `--pin`: stop enforcing too.
pub fn detach_request(iface: &str) -> PathBuf {
    run_dir().join(format!("{iface}.detach"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_follow_the_kernel_rules() {
        for good in ["eth0", "a", "veth-1.100", "enp0s31f6", "wg_0", "123456789012345"] {
            assert_eq!(check_iface_name(good), Ok(()), "{good}");
            assert_eq!(owned_pin_dir(good).unwrap(), pin_root().join(good));
        }
        for bad in [
            "",
            ".",
            "..",
            "../..",
            "../../../../var/tmp/x",
            "a/b",
            "/",
            "eth0:1",
            "eth 0",
            "eth0\n",
            "tab\t",
            "nul\0",
            "1234567890123456",
            "\u{b}",
        ] {
            assert!(check_iface_name(bad).is_err(), "{bad:?} accepted");
            assert!(owned_pin_dir(bad).is_err(), "{bad:?} accepted");
        }
        let message = check_iface_name("../..").unwrap_err();
        assert!(message.contains("`../..` is not an interface name"), "{message}");
    }
}
