//! Concurrent connections per source on the rules that cap them (`connections_per_source`).
//!
//! Counted from the host's own TCP state changes, which a `sock_ops` program attached to the
//! root cgroup sees exactly: a connection the host accepted (passive established) adds one to
//! its source's count on the deciding rule, and remembers per socket what it added to; the
//! socket's move to TCP_CLOSE (a close, a reset, a timeout, the hand-over to TIME_WAIT) takes
//! exactly that away. The packet path (`at_cap`) refuses a SYN from a source holding the cap.
//!
//! The counts are keyed by the rule's `conn_rule`, which stays the same across reloads for the
//! same rule, and each socket carries its own key: a reload neither loses nor counts twice.
//! Two generations' programs may both run for a moment (multi-attach): the per-socket entry
//! decides which one counts (the one whose insert succeeds) and which one releases (the one
//! whose delete succeeds).

use core::intrinsics::{AtomicOrdering, atomic_cxchg};

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_NOEXIST, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_TCP_CLOSE,
    },
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    maps::lpm_trie::Key,
    programs::SockOpsContext,
};
use portguard_common::{
    Config,
    counters::OBS_CONNECTIONS_UNTRACKED,
    maps::{
        CONNS_RETIRED, ConnKey, FAMILY_V4, FAMILY_V6, PORT_ALLOW, PORT_ALLOW_FROM, PORT_FLAG_LIMITED,
        PROTO_TCP, RuleLimit, SRC_ALLOW_FIXED_BITS, SrcAllowKey, family_of, port_index, v4_mapped,
    },
};

use crate::{
    blocks, counters,
    maps::{
        PG_CONN_KEY, PG_CONN_SOCKETS, PG_CONNS, PG_PORTS, PG_RULE_CONN_LIMITED, PG_RULE_LIMITS, PG_SRC_ALLOW,
    },
    parse::Packet,
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
/// Compare-and-swap attempts on one count before giving up (only other CPUs changing the same
/// source's count at the same instant make one fail).
const CAS_ATTEMPTS: u32 = 16;

// --- The packet path -----------------------------------------------------------------------

/// Whether a SYN from `packet.src` to a port that rule `rule` opens comes from a source that
/// already holds the rule's cap of connections. Such a refusal is counted for the rule (as
/// "would limit" in monitor mode: the verdict decides); `never_block` sources are never
/// refused.
#[inline(always)]
pub fn at_cap(packet: &Packet, rule: u16, cfg: &Config) -> bool {
    let Some(limit) = PG_RULE_LIMITS.get(u32::from(rule)) else {
        return false;
    };
    if limit.max_connections == 0 {
        return false;
    }
    let Some(key) = PG_CONN_KEY.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot; only the XDP program uses it.
    let key = unsafe { &mut *key };
    // SAFETY: `ConnKey` is 8-aligned and starts with the address.
    unsafe {
        *(key.addr.as_mut_ptr() as *mut [u64; 2]) = blocks::source_words(&packet.src, packet.is_v6, cfg)
    };
    key.conn_rule = limit.conn_rule;
    key._pad = 0;
    let Some(count) = PG_CONNS.get_ptr(&*key) else {
        return false;
    };
    // SAFETY: a value of the map, changed by other CPUs with atomic instructions.
    let held = unsafe { core::ptr::read_volatile(count) };
    if held == CONNS_RETIRED || held < u64::from(limit.max_connections) {
        return false;
    }
    refused(packet, limit, cfg)
}

/// A connection attempt over the cap: refused unless the source is exempt, counted for its
/// rule. The one place a connection-limit refusal is decided and accounted.
#[inline(always)]
fn refused(packet: &Packet, limit: &RuleLimit, cfg: &Config) -> bool {
    if blocks::exempt(cfg, &packet.src) {
        return false;
    }
    if let Some(count) = PG_RULE_CONN_LIMITED.get_ptr_mut(limit.slot) {
        // Per-CPU: a plain add.
        unsafe { *count += 1 };
    }
    true
}

// --- The host's TCP state changes (sock_ops) -------------------------------------------------

/// One `sock_ops` callback.
#[inline(always)]
pub fn sock_op(ctx: &SockOpsContext, cfg: &Config) {
    match ctx.op() {
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => established(ctx, cfg),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => closed(ctx),
        _ => {}
    }
}

/// A connection the host accepted: counted if it is in the attachment's namespace and the
/// rule that admitted its source to its port caps connections.
#[inline(always)]
fn established(ctx: &SockOpsContext, cfg: &Config) {
    // SAFETY: helpers taking the program's context.
    if unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } != cfg.netns_cookie {
        return;
    }
    let Some(addr) = remote_address(ctx) else { return };
    let Ok(local_port) = u16::try_from(ctx.local_port()) else { return };
    let Some(limit) = capping_rule(&addr, local_port) else { return };
    let is_v6 = family_of(&addr) == FAMILY_V6;
    let mut key = ConnKey { addr: [0; 16], conn_rule: limit.conn_rule, _pad: 0 };
    // SAFETY: `ConnKey` is 8-aligned and starts with the address.
    unsafe { *(key.addr.as_mut_ptr() as *mut [u64; 2]) = blocks::source_words(&addr, is_v6, cfg) };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Err(error) = PG_CONN_SOCKETS.insert(&cookie, &key, u64::from(BPF_NOEXIST)) {
        // Already counted (by the other generation's program, during a reload), or no room:
        // the cap fails open for this connection, and says so.
        if error != -EEXIST {
            counters::add(OBS_CONNECTIONS_UNTRACKED, 0);
        }
        return;
    }
    if !add_one(&key) {
        let _ = PG_CONN_SOCKETS.remove(&cookie);
        counters::add(OBS_CONNECTIONS_UNTRACKED, 0);
        return;
    }
    // Keeps the flags other programs set.
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
}

const EEXIST: i32 = 17;

/// A counted connection closed: its count loses exactly what it added, once.
#[inline(always)]
fn closed(ctx: &SockOpsContext) {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: copied out at once.
    let Some(key) = (unsafe { PG_CONN_SOCKETS.get(&cookie) }).copied() else {
        return;
    };
    // Whoever deletes the socket's entry releases it (see the module's comment).
    if PG_CONN_SOCKETS.remove(&cookie).is_err() {
        return;
    }
    take_one(&key);
}

/// One connection more for `key`: false if it could not be counted (no room, or the count
/// kept changing under us).
#[inline(always)]
fn add_one(key: &ConnKey) -> bool {
    for _ in 0..CAS_ATTEMPTS {
        let Some(count) = PG_CONNS.get_ptr_mut(key) else {
            match PG_CONNS.insert(key, &1u64, u64::from(BPF_NOEXIST)) {
                Ok(()) => return true,
                // Inserted by another CPU meanwhile: add to it.
                Err(error) if error == -EEXIST => continue,
                Err(_) => return false,
            }
        };
        // SAFETY: a value of the map; every writer uses atomic instructions.
        let held = unsafe { core::ptr::read_volatile(count) };
        if held == CONNS_RETIRED {
            // Being deleted: once it is gone, the insert above starts it afresh.
            continue;
        }
        let (_, swapped) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(count, held, held + 1)
        };
        if swapped {
            return true;
        }
    }
    false
}

/// One connection fewer for `key`; the entry is deleted when it reaches zero (retired first,
/// so a connection established meanwhile never adds to an entry about to go).
#[inline(always)]
fn take_one(key: &ConnKey) {
    for _ in 0..CAS_ATTEMPTS {
        let Some(count) = PG_CONNS.get_ptr_mut(key) else { return };
        // SAFETY: as in `add_one`.
        let held = unsafe { core::ptr::read_volatile(count) };
        if held == 0 || held == CONNS_RETIRED {
            return;
        }
        let next = if held == 1 { CONNS_RETIRED } else { held - 1 };
        let (_, swapped) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(count, held, next)
        };
        if swapped {
            if next == CONNS_RETIRED {
                let _ = PG_CONNS.remove(key);
            }
            return;
        }
    }
}

/// The peer's address as the packet path stores it (IPv4-mapped for IPv4, also for IPv4
/// peers of a dual-stack socket).
#[inline(always)]
fn remote_address(ctx: &SockOpsContext) -> Option<[u8; 16]> {
    // The verifier takes context fields only as loads at constant offsets: each is read once,
    // as it is, before anything branches on them (so the compiler cannot merge the reads of
    // the two families into one computed pointer).
    let ops = ctx.ops;
    // SAFETY: fields of the program's context.
    let (family, v4, v6) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*ops).family),
            core::ptr::read_volatile(&raw const (*ops).remote_ip4),
            [
                core::ptr::read_volatile(&raw const (*ops).remote_ip6[0]),
                core::ptr::read_volatile(&raw const (*ops).remote_ip6[1]),
                core::ptr::read_volatile(&raw const (*ops).remote_ip6[2]),
                core::ptr::read_volatile(&raw const (*ops).remote_ip6[3]),
            ],
        )
    };
    match family {
        AF_INET => Some(v4_mapped(v4.to_ne_bytes())),
        AF_INET6 => {
            let mut addr = [0u8; 16];
            // SAFETY: four words are sixteen bytes.
            unsafe { core::ptr::write_unaligned(addr.as_mut_ptr() as *mut [u32; 4], v6) };
            Some(addr)
        }
        _ => None,
    }
}

/// The limits of the rule that admits `addr` to local TCP port `port`, if it caps
/// connections: the same rule the packet path decides by (`verdict::port_decision`).
#[inline(always)]
fn capping_rule(addr: &[u8; 16], port: u16) -> Option<&'static RuleLimit> {
    let entry = PG_PORTS.get(port_index(PROTO_TCP, port)?)?;
    if entry.flags & PORT_FLAG_LIMITED == 0 {
        return None;
    }
    let rule = match entry.action {
        PORT_ALLOW => entry.rule,
        PORT_ALLOW_FROM => {
            let key = SrcAllowKey {
                proto: PROTO_TCP,
                family: if family_of(addr) == FAMILY_V4 { FAMILY_V4 } else { FAMILY_V6 },
                port_be: port.to_be_bytes(),
                addr: *addr,
            };
            *PG_SRC_ALLOW.get(Key::new(SRC_ALLOW_FIXED_BITS + 128, key))?
        }
        _ => return None,
    };
    let limit = PG_RULE_LIMITS.get(u32::from(rule))?;
    (limit.max_connections != 0).then_some(limit)
}
