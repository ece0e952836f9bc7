//! Events to userspace through the `PG_EVENTS` ring buffer. A full ring is never silent: the
//! event is counted in `OBS_EVENTS_LOST`, which the reader reports.

use portguard_common::{
    counters::OBS_EVENTS_LOST,
    events::{Event, EventKind, SAMPLE_PORTS},
};

use crate::{
    counters,
    flows::now_ns,
    maps::{PG_EVENT_BUDGET, PG_EVENTS},
};

/// Who and what an event is about.
pub struct Subject<'a> {
    pub src: &'a [u8; 16],
    pub dst: &'a [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub tcp_flags: u8,
    pub ifindex: u32,
}

/// Details that depend on the kind of event (plain values: the verifier loses track of
/// pointers passed through a struct to a BPF-to-BPF call).
#[derive(Default)]
pub struct Details {
    pub reason: u8,
    pub scan_kind: u8,
    pub count: u32,
    pub expires_ns: u64,
    pub samples: u8,
    pub sample_ports: [u16; SAMPLE_PORTS],
}

/// A BPF-to-BPF call: emitted from several places, verified and stored once each.
#[inline(never)]
pub fn emit(kind: EventKind, subject: &Subject, details: &Details) {
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
        (*event)._pad = [0; 2];
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
