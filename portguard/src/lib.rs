//! portguard: port policy and port-scan defence for edge hosts, enforced in the kernel with XDP.
//!
//! The library holds everything the CLI verbs share, so the integration tests and xtask can
//! drive the same code: `policy` (read, validate, compile), `loader` (load, attach, pin),
//! `maps` (typed access to pinned maps), `system` (privileges, bpffs, namespaces), `paths`,
//! `output` (how things are printed for people) and `exit` (the exit codes). An attachment's
//! lifecycle is `attachment` (what the commands call) over `manager` (its records and
//! generations); the loader's event loop is `daemon`.

pub mod alerts;
pub mod attachment;
pub mod auto_filter;
pub mod baseline;
pub mod blocks;
pub mod budget;
pub mod capture;
pub mod conns;
pub mod control;
pub mod crowdsec;
pub mod daemon;
pub mod doctor;
pub mod durations;
pub mod events;
pub mod evidence;
pub mod exit;
pub mod feeds;
pub mod files;
pub mod hostnet;
pub mod journal;
pub mod judge;
pub mod learn;
pub mod limits;
pub mod links;
pub mod loader;
pub mod manager;
pub mod maps;
pub mod metrics;
pub mod netns;
pub mod output;
pub mod paths;
pub mod policy;
pub mod portstats;
pub mod report;
pub mod runtime;
pub mod safety;
pub mod services;
pub mod sockets;
pub mod state;
pub mod system;

/// Locks `mutex`, also after a panic elsewhere poisoned it: the counters it guards are still
/// good, and one failed scrape or delivery must not stop the loader.
pub fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `text` for a terminal or a line-based log: control characters (newlines, escape
/// sequences) and the invisible marks that reorder text are shown escaped (`\n`, `\u{1b}`), so
/// text from a file or a command line can neither forge an output line nor move the cursor.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let hidden = |c: char| {
        c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(hidden) {
        return text.into();
    }
    text.chars().map(|c| if hidden(c) { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// Test fixture programs (see portguard-ebpf/src/testkit.rs), for the namespace lab.
#[cfg(feature = "testkit")]
pub static TESTKIT_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portguard-testkit"));

#[cfg(test)]
mod tests {
    #[test]
    fn printable_escapes_what_could_forge_a_line() {
        assert_eq!(super::printable("ssh brute force"), "ssh brute force");
        assert_eq!(
            super::printable("x\n2026-01-01 eth0 UNBLOCK 1.2.3.4"),
            "x\\n2026-01-01 eth0 UNBLOCK 1.2.3.4"
        );
        assert_eq!(super::printable("\u{1b}[2Jred\r\t\u{7f}\u{9b}"), "\\u{1b}[2Jred\\r\\t\\u{7f}\\u{9b}");
        assert_eq!(super::printable("a\u{202e}b é"), "a\\u{202e}b é");
    }
}
