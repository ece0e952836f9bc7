//! The filter in front of the automatic blocks (`PG_AUTO_FILTER`, see
//! `portguard_common::maps::MAP_AUTO_FILTER`): refilled when a generation is loaded, and by
//! the loader now and then, so bits of blocks that are gone stop costing lookups and each half
//! is sized for the blocks there are (a small filter stays in the cache under a flood of
//! forged sources).
//!
//! Why a refill never hides a block: the packet path inserts a block, then reads the header
//! and sets the block's bits in both halves, at the places the header's sizes say, with an
//! atomic OR. A refill first writes the new size of the half nobody consults into the header,
//! then zeroes that half, then ORs in (atomically, through a shared mapping) the bits of every
//! block it finds in the table, then makes that half the consulted one. A block whose bits were
//! set before the zeroing, or at the old size, was in the table before the walk, which finds
//! it; any other has its bits set by the packet path itself after the zeroing, at the new size.
//! A program that read the old header just before a switch may still read the old half, which
//! is why a half is never zeroed within `SWITCH_GRACE` of the switch away from it.

use std::{
    borrow::Borrow,
    os::fd::{AsFd as _, AsRawFd as _},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{HashMap, MapData};
use portguard_common::maps::{
    AUTO_FILTER_ENTRIES, AUTO_FILTER_HEADROOM, AUTO_FILTER_MAX_LOG2, AutoBlock, MAP_AUTO_BLOCK,
    MAP_AUTO_FILTER, addr_words, auto_filter_half, auto_filter_probe, auto_filter_shrink,
    auto_filter_shrink_for, auto_filter_slot, auto_filter_with_shrink,
};

use crate::paths;

/// How often the loader refills the filter.
pub const REFILL_INTERVAL: Duration = Duration::from_secs(10);

/// Blocks added since the last refill sized a half for `sized_for` after which the loader
/// refills before `REFILL_INTERVAL` is up: half the room that sizing left (see
/// `auto_filter_shrink_for`), so a flood of trap hits admitted at `new_blocks_per_second` never
/// fills the filter past its sized share of unblocked sources let through.
pub const fn early_refill_after(sized_for: u64) -> u64 {
    sized_for.saturating_add(AUTO_FILTER_HEADROOM) / 2
}

/// The least time between switching away from a half and zeroing it: a packet-path program
/// that read the header before the switch runs for microseconds, not a second.
pub const SWITCH_GRACE: Duration = Duration::from_secs(1);

/// The header bit of a refill under way (the packet path ignores it), and the age past which
/// its claim counts as left behind by a loader that died in the middle.
const REFILLING: u64 = 2;
const STALE_REFILL: Duration = Duration::from_secs(60);
/// The header bits the packet path reads (the rest is the loader's bookkeeping).
const LAYOUT_BITS: u64 = 0xffff_ffff & !REFILLING;

/// CLOCK_BOOTTIME in whole seconds, the clock of the header's switch time.
fn boottime_secs() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &raw mut now) };
    now.tv_sec as u64
}

/// Words a half shrunk by `shrink` uses.
fn words_in_use(shrink: u32) -> u32 {
    (1u32 << (AUTO_FILTER_MAX_LOG2 - shrink)) / 64
}

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

    /// Sizes the half nobody consults for the table, rebuilds it from the table and switches
    /// to it (see the module comment for why no block goes missing). Waits out what is left of
    /// `SWITCH_GRACE` since the last switch (at most a second). Returns the number of blocks
    /// the half was sized for, or None, having changed nothing, when another refill is under
    /// way (a reload's beside the loader's own).
    pub fn refill<T: Borrow<MapData>>(
        &self,
        blocks: &HashMap<T, [u8; 16], AutoBlock>,
    ) -> Result<Option<u64>> {
        let header = self.word(0).load(Ordering::SeqCst);
        let now = boottime_secs();
        let since = now.saturating_sub(header >> 32);
        if header & REFILLING != 0 && since < STALE_REFILL.as_secs() {
            return Ok(None);
        }
        let claimed = (header & LAYOUT_BITS) | REFILLING | (now << 32);
        if self.word(0).compare_exchange(header, claimed, Ordering::SeqCst, Ordering::SeqCst).is_err() {
            return Ok(None);
        }
        if header >> 32 != 0 && since <= SWITCH_GRACE.as_secs() {
            // The switch time is in whole seconds: a full grace from now is always enough.
            std::thread::sleep(SWITCH_GRACE);
        }
        let result = self.rebuild_other_half(claimed, blocks);
        let released = match result {
            Ok((switched, _)) => switched | (boottime_secs() << 32),
            // The consulted half is untouched; the other one is rebuilt by the next refill.
            Err(_) => (self.word(0).load(Ordering::SeqCst) & LAYOUT_BITS) | (header & !LAYOUT_BITS),
        };
        self.word(0).store(released & !REFILLING, Ordering::SeqCst);
        result.map(|(_, sized_for)| Some(sized_for))
    }

    /// The refill's work, under its claim: returns the header's layout bits after the switch,
    /// and the number of blocks the half was sized for.
    fn rebuild_other_half<T: Borrow<MapData>>(
        &self,
        claimed: u64,
        blocks: &HashMap<T, [u8; 16], AutoBlock>,
    ) -> Result<(u64, u64)> {
        let other = auto_filter_half(claimed) ^ 1;
        // A first walk only to size the half: blocks added meanwhile fit in the headroom.
        let sized_for = blocks.keys().count() as u64;
        let shrink = auto_filter_shrink_for(sized_for);
        let sized = auto_filter_with_shrink(claimed, other, shrink);
        self.word(0).store(sized, Ordering::SeqCst);
        let first = auto_filter_slot(other, 0);
        for index in first..first + words_in_use(shrink) {
            self.word(index).store(0, Ordering::SeqCst);
        }
        for addr in blocks.keys() {
            let addr = addr.context(MAP_AUTO_BLOCK)?;
            let (word, mask) = auto_filter_probe(addr_words(&addr), shrink);
            self.word(auto_filter_slot(other, word)).fetch_or(mask, Ordering::SeqCst);
        }
        Ok(((sized & LAYOUT_BITS & !1) | other, sized_for))
    }

    /// Bits set in the half consulted now, and the bits it uses (for tests and `stats`).
    pub fn bits_set(&self) -> (u32, u32) {
        let header = self.word(0).load(Ordering::SeqCst);
        let half = auto_filter_half(header);
        let shrink = auto_filter_shrink(header, half);
        let first = auto_filter_slot(half, 0);
        let set = (first..first + words_in_use(shrink))
            .map(|i| self.word(i).load(Ordering::Relaxed).count_ones())
            .sum();
        (set, words_in_use(shrink) * 64)
    }
}
/// One refill of the attachment on `iface`, from its pins (the loader's, every
/// `REFILL_INTERVAL`).
pub fn refill_from_pins(iface: &str) -> Result<Option<u64>> {
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
