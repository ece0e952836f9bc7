//! Types shared by the kernel programs (`portguard-ebpf`) and the loader (`portguard`).
//!
//! Everything here is `#[repr(C)]` with explicit padding, because both sides read the same bytes
//! out of BPF maps. Size assertions at the bottom of each module catch accidental layout changes.
#![no_std]

pub mod config;
pub mod counters;
pub mod events;
pub mod maps;
pub mod net;

pub use config::Config;
pub use counters::{Counter, Reason};
