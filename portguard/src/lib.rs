//! portguard: port policy and port-scan defence for edge hosts, enforced in the kernel with XDP.
//!
//! The library holds everything the CLI verbs share, so the integration tests and xtask can
//! drive the same code: `policy` (read, validate, compile), `loader` (load, attach, pin),
//! `maps` (typed access to pinned maps), `system` (privileges, bpffs, namespaces), `paths`.

pub mod alerts;
pub mod blocks;
pub mod capture;
pub mod control;
pub mod doctor;
pub mod durations;
pub mod events;
pub mod files;
pub mod judge;
pub mod loader;
pub mod manager;
pub mod maps;
pub mod metrics;
pub mod paths;
pub mod policy;
pub mod sockets;
pub mod state;
pub mod system;

/// Locks `mutex`, also after a panic elsewhere poisoned it: the counters it guards are still
/// good, and one failed scrape or delivery must not stop the loader.
pub fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Test fixture programs (see portguard-ebpf/src/testkit.rs), for the namespace lab.
#[cfg(feature = "testkit")]
pub static TESTKIT_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portguard-testkit"));
