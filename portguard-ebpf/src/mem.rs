//! Memory access LLVM's BPF backend does badly: reads at any alignment, and zeroing.
//!
//! Packet headers sit at any offset, and LLVM's BPF backend splits a misaligned read into one
//! load per byte (several times the instructions, on every packet); the kernel allows
//! misaligned packet and map-value reads where the CPU does them well (x86-64, arm64), but
//! never misaligned stack access. Written as the instruction itself: a misaligned typed read
//! would be undefined in Rust. Callers check the bytes are inside the frame (or a map value).

use core::arch::asm;

/// The u16 at address `at`, bytes in memory order.
///
/// # Safety
/// `at..at + u16::BITS / 8` must be readable: checked against the frame end, or inside a
/// map value or an aligned stack slot.
#[inline(always)]
pub unsafe fn u16_at(at: usize) -> u16 {
    let value: u64;
    unsafe {
        asm!("{0} = *(u16 *)({1} + 0)", lateout(reg) value, in(reg) at, options(readonly, nostack, pure))
    };
    value as u16
}

/// The u32 at address `at`, bytes in memory order.
///
/// # Safety
/// `at..at + u32::BITS / 8` must be readable: checked against the frame end, or inside a
/// map value or an aligned stack slot.
#[inline(always)]
pub unsafe fn u32_at(at: usize) -> u32 {
    let value: u64;
    unsafe {
        asm!("{0} = *(u32 *)({1} + 0)", lateout(reg) value, in(reg) at, options(readonly, nostack, pure))
    };
    value as u32
}

/// The u64 at address `at`, bytes in memory order.
///
/// # Safety
/// `at..at + u64::BITS / 8` must be readable: checked against the frame end, or inside a
/// map value or an aligned stack slot.
#[inline(always)]
pub unsafe fn u64_at(at: usize) -> u64 {
    let value: u64;
    unsafe {
        asm!("{0} = *(u64 *)({1} + 0)", lateout(reg) value, in(reg) at, options(readonly, nostack, pure))
    };
    value
}

/// An address's 16 bytes as two words in memory order
/// (`portguard_common::maps::addr_words`). `addr` must not be on the stack unless 8-aligned:
/// every address the packet path passes around lives in a map slot (`Packet`, `ScanKey`) or an
/// 8-aligned struct (`QuotedProbe`).
#[inline(always)]
pub fn addr_words(addr: &[u8; 16]) -> [u64; 2] {
    let at = addr.as_ptr() as usize;
    unsafe { [u64_at(at), u64_at(at + 8)] }
}

/// Zeroes `count` words from `words`. Volatile stores: LLVM would otherwise merge them into a
/// call to a byte-by-byte `memset` (the BPF backend emits one for anything but a small
/// power-of-two run), which costs a loop iteration per byte and, for the verifier, a path.
#[inline(always)]
pub fn zero_words(words: *mut u64, count: usize) {
    for i in 0..count {
        // SAFETY: the caller's words, 8-aligned (map memory or an aligned struct).
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
}
