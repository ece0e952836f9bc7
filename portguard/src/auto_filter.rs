//! The filter in front of the automatic blocks (`PG_AUTO_FILTER`, see
//! `portguard_common::maps::MAP_AUTO_FILTER`): seeded when a generation is loaded, and refilled
//! by the loader now and then so bits of blocks that are gone stop costing lookups.
//!
//! Why a refill never hides a block: the packet path inserts a block, then sets its bit in both
//! halves with an atomic OR. A refill zeroes the half nobody consults, then ORs in (atomically,
//! through a shared mapping) the bit of every block it finds in the table, then makes that half
//! the consulted one. A block inserted before the walk is found by it; one inserted after the
//! zeroing has its bit set by the packet path itself. A program that read the old half number
//! just before the switch may still read the old half, which is why a half is never zeroed
//! within a refill interval of the switch away from it.

use std::{
    borrow::Borrow,
    os::fd::{AsFd as _, AsRawFd as _},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{HashMap, MapData};
use portguard_common::maps::{
    AUTO_FILTER_ENTRIES, AUTO_FILTER_WORDS, AutoBlock, MAP_AUTO_BLOCK, MAP_AUTO_FILTER, addr_words,
    auto_filter_bit, auto_filter_slot,
};

use crate::paths;

/// How often the loader refills the filter; also the least time between switching away from a
/// half and zeroing it (a packet-path program runs for microseconds).
pub const REFILL_INTERVAL: Duration = Duration::from_secs(10);

/// `PG_AUTO_FILTER`, mapped read-write into our memory (the mapping holds the map).
pub struct AutoFilter {
    words: *const AtomicU64,
}

// SAFETY: the mapping is shared memory accessed only through atomics; it lives as long as the
// struct (unmapped on drop), whichever thread holds it.
unsafe impl Send for AutoFilter {}

impl AutoFilter {
    pub fn map(map: &MapData) -> Result<Self> {
        let bytes = AUTO_FILTER_ENTRIES as usize * size_of::<u64>();
        // SAFETY: a shared mapping of an mmapable BPF array of exactly this size.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            bail!("mapping {MAP_AUTO_FILTER} failed: {}", std::io::Error::last_os_error());
        }
        Ok(Self { words: base.cast() })
    }

    /// The filter of the attachment on `iface`, from its pins.
    pub fn from_pins(iface: &str) -> Result<Self> {
        let path = paths::map_pin(iface, MAP_AUTO_FILTER);
        Self::map(&MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?)
    }

    fn word(&self, index: u32) -> &AtomicU64 {
        assert!(index < AUTO_FILTER_ENTRIES);
        // SAFETY: inside the mapping (checked above), which lives as long as `self`.
        unsafe { &*self.words.add(index as usize) }
    }

    fn set(&self, half: u64, addr: &[u8; 16]) {
        let (index, mask) = auto_filter_slot(half, auto_filter_bit(addr_words(addr)));
        self.word(index).fetch_or(mask, Ordering::SeqCst);
    }

    /// ORs the bit of every block in the table into both halves: for tables that outlive the
    /// filter (pins from before it existed), at load. Never clears a bit.
    pub fn seed<T: Borrow<MapData>>(&self, blocks: &HashMap<T, [u8; 16], AutoBlock>) {
        for addr in blocks.keys().filter_map(Result::ok) {
            self.set(0, &addr);
            self.set(1, &addr);
        }
    }

    /// Rebuilds the half nobody consults from the table and switches to it (see the module
    /// comment for why no block goes missing). Call at most every `REFILL_INTERVAL`.
    pub fn refill<T: Borrow<MapData>>(&self, blocks: &HashMap<T, [u8; 16], AutoBlock>) -> Result<()> {
        let consulted = self.word(0).load(Ordering::SeqCst) & 1;
        let other = consulted ^ 1;
        for offset in 0..AUTO_FILTER_WORDS {
            self.word(auto_filter_slot(other, 0).0 + offset).store(0, Ordering::SeqCst);
        }
        for addr in blocks.keys() {
            self.set(other, &addr.context(MAP_AUTO_BLOCK)?);
        }
        self.word(0).store(other, Ordering::SeqCst);
        Ok(())
    }

    /// Bits set in the half consulted now (for tests and `stats`).
    pub fn bits_set(&self) -> u32 {
        let half = self.word(0).load(Ordering::SeqCst) & 1;
        let first = auto_filter_slot(half, 0).0;
        (first..first + AUTO_FILTER_WORDS).map(|i| self.word(i).load(Ordering::Relaxed).count_ones()).sum()
    }
}

/// One refill of the attachment on `iface`, from its pins (the loader's, every
/// `REFILL_INTERVAL`).
pub fn refill_from_pins(iface: &str) -> Result<()> {
    let filter = AutoFilter::from_pins(iface)?;
    let path = paths::map_pin(iface, MAP_AUTO_BLOCK);
    let table = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let blocks: HashMap<MapData, [u8; 16], AutoBlock> = HashMap::try_from(aya::maps::Map::LruHashMap(table))?;
    filter.refill(&blocks)
}

impl Drop for AutoFilter {
    fn drop(&mut self) {
        let bytes = AUTO_FILTER_ENTRIES as usize * size_of::<u64>();
        // SAFETY: the mapping made in `map`, no longer referenced.
        unsafe { libc::munmap(self.words as *mut libc::c_void, bytes) };
    }
}
