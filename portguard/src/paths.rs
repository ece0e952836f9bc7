//! Every filesystem path portguard uses, in one place.

use std::path::PathBuf;

/// Where bpffs is (or gets) mounted.
pub const BPFFS: &str = "/sys/fs/bpf";
/// portguard's own directory on bpffs.
pub const PIN_ROOT: &str = "/sys/fs/bpf/portguard";
/// Runtime state of running attachments (pid, policy summary), cleared by a reboot.
pub const RUN_DIR: &str = "/run/portguard";
/// State that must survive a reboot: manual blocks, the policy each attachment runs.
pub const STATE_DIR: &str = "/var/lib/portguard";

/// `STATE_DIR`, or `PORTGUARD_STATE_DIR` when set (packaging, and tests that must not share
/// the host's blocks).
pub fn state_dir() -> PathBuf {
    std::env::var_os("PORTGUARD_STATE_DIR").map_or_else(|| PathBuf::from(STATE_DIR), PathBuf::from)
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
    state_dir().join(format!("{iface}.active-policy.json"))
}

/// A change waiting for `portguard confirm` (`--confirm-within`).
pub fn pending_file(iface: &str) -> PathBuf {
    PathBuf::from(RUN_DIR).join(format!("{iface}.pending.json"))
}

/// Pins of one attachment: the shared maps and the links.
pub fn pin_dir(iface: &str) -> PathBuf {
    PathBuf::from(PIN_ROOT).join(iface)
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
    PathBuf::from(RUN_DIR).join(format!("{iface}.json"))
}

/// The loader's control socket (events for `portguard events`, `reload`), root only.
pub fn control_socket(iface: &str) -> PathBuf {
    PathBuf::from(RUN_DIR).join(format!("{iface}.sock"))
}

/// Held (flock) by the loader of an attachment for as long as it runs.
pub fn lock_file(iface: &str) -> PathBuf {
    PathBuf::from(RUN_DIR).join(format!("{iface}.lock"))
}

/// Left by `portguard detach` for a loader started with `--pin`: stop enforcing too.
pub fn detach_request(iface: &str) -> PathBuf {
    PathBuf::from(RUN_DIR).join(format!("{iface}.detach"))
}
