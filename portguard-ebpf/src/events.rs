//! Events to userspace through the `PG_EVENTS` ring buffer. A full ring is never silent: the
//! event is counted in `OBS_EVENTS_LOST`, which the reader reports.

use portguard_common::{
    Config,
    config::FLAG_MONITOR,
    counters::OBS_EVENTS_LOST,
    events::{EVENT_FLAG_MONITOR, Event, EventKind},
};

pub use crate::types::{Details, Subject};
use crate::{
    counters,
    maps::{PG_EVENT_BUDGET, PG_EVENT_DRAFT, PG_EVENTS},
    mem,
    time::now_ns,
};

/// This CPU's scratch `Details`, reset: events raised deep in a call chain build their details
/// in map memory, because the BPF stack is 512 bytes for the whole chain.
#[inline(always)]
pub fn draft() -> Option<&'static mut Details> {
    // This CPU's slot; XDP and TC egress do not interleave on one CPU.
    let details = PG_EVENT_DRAFT.get_ptr_mut(0)?;
    mem::zero_words(details as *mut u64, size_of::<Details>() / 8);
    // SAFETY: this CPU's slot, zeroed: every field's valid value.
    Some(unsafe { &mut *details })
}

/// A BPF-to-BPF call: emitted from several places, verified and stored once each. Every event
/// says whether the program that sent it only monitors (`cfg` is read-only: the verifier
/// keeps one of the two branches).
#[inline(never)]
pub fn emit(kind: EventKind, subject: &Subject, details: &Details, cfg: &Config) {
    let Some(mut entry) = PG_EVENTS.reserve::<Event>(0) else {
        counters::add(OBS_EVENTS_LOST, 0);
        return;
    };
    // Written field by field into the ring: an Event on the stack would not fit beside the
    // parser's state.
    let event = entry.as_mut_ptr();
    unsafe {
        (*event).time_ns = now_ns();
        (*event).expires_ns = details.expires_ns;
        (*event).src = *subject.src;
        (*event).dst = *subject.dst;
        (*event).ifindex = subject.ifindex;
        (*event).count = details.count;
        (*event).sport = subject.sport;
        (*event).dport = subject.dport;
        (*event).kind = kind as u8;
        (*event).reason = details.reason;
        (*event).proto = subject.proto;
        (*event).scan_kind = details.scan_kind;
        (*event).tcp_flags = subject.tcp_flags;
        (*event).samples = details.samples;
        (*event).prefix_len = details.prefix_len;
        (*event).flags = details.flags | if cfg.has(FLAG_MONITOR) { EVENT_FLAG_MONITOR } else { 0 };
        (*event).sample_ports = details.sample_ports;
    }
    entry.submit(0);
}

/// Spends one of this CPU's drop-event tokens, or counts the drop as suppressed: a flood
/// cannot drown the reader, and nothing is dropped silently.
#[inline(always)]
pub fn drop_event_allowed() -> bool {
    let Some(budget) = PG_EVENT_BUDGET.get_ptr_mut(0) else {
        return false;
    };
    unsafe {
        if (*budget).tokens > 0 {
            (*budget).tokens -= 1;
            return true;
        }
        (*budget).suppressed += 1;
    }
    false
}
