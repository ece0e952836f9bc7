//! Floods of IPv6 TCP SYNs made in the kernel: the testkit's live-frames XDP_TX senders
//! (portguard-ebpf/src/testkit.rs), one thread pinned to each CPU, for the benchmark and the
//! lab tests. Bounded in frames and in time.

use std::{
    net::Ipv6Addr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp},
};
use etherparse::TcpHeader;

use crate::{
    Netns,
    packets::{Ip, TCP, frame},
};

/// Where the floods come from and go: documentation addresses only. The target is the lab's
/// server address.
pub const FLOOD_SOURCE: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 5, 0, 0, 0, 0, 1);
pub const FLOOD_TARGET: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
pub const FLOOD_PORT: u16 = 445;
/// The MAC addresses `packets::ethernet` writes (source, destination).
pub const SENDER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
pub const RECEIVER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

/// Length of one BPF_PROG_TEST_RUN call of the sender. Each call sets up its own page pool and
/// swaps the XDP dispatcher (tens of milliseconds), so short calls would measure that setup.
pub const CALL: Duration = Duration::from_millis(250);
/// Frames in the first call, from which the others are sized.
pub const FIRST_CALL_FRAMES: u32 = 250_000;
/// Frames per batch in a live-frames call (the kernel allows up to 256).
pub const LIVE_BATCH: u32 = 64;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Flood {
    /// SYNs from FLOOD_SOURCE, another source port each.
    OneSource,
    /// SYNs from a random source in 2001:db8::/32 each (bits 32-127 random).
    Spoofed,
}

impl Flood {
    pub const ALL: [Self; 2] = [Self::OneSource, Self::Spoofed];

    pub fn title(self) -> String {
        match self {
            Self::OneSource => format!("one source: {FLOOD_SOURCE}, a new source port each frame"),
            Self::Spoofed => {
                "spoofed: a random source in 2001:db8::/32 each frame (bits 32-127 random)".to_string()
            }
        }
    }

    /// The testkit program that sends it.
    pub fn program(self) -> &'static str {
        match self {
            Self::OneSource => "pg_test_tx_syn6",
            Self::Spoofed => "pg_test_tx_syn6_spoofed",
        }
    }
}

/// How long a flood lasts: until `frames` are sent or `duration` has passed, whichever first.
#[derive(Clone, Copy, Debug)]
pub struct Bound {
    pub frames: u64,
    pub duration: Duration,
}

impl Bound {
    pub fn frames(frames: u64, at_most: Duration) -> Self {
        Self { frames, duration: at_most }
    }

    pub fn duration(duration: Duration) -> Self {
        Self { frames: u64::MAX, duration }
    }
}

/// What the senders did in one flood.
#[derive(Clone, Copy, Debug)]
pub struct Blast {
    /// Frames the sender programs transmitted (XDP_TX); the receiving end may still drop some
    /// (a full queue).
    pub frames: u64,
    /// From the start signal until the last sender returned (no frame is in flight outside).
    pub seconds: f64,
    /// The share of that time (on every CPU) the kernel spent in the senders' calls: the rest
    /// went to the calls' setup and to other processes.
    pub in_calls: f64,
}

pub fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// The frame every sender starts from: Ethernet (`from` -> `to`), IPv6, a TCP SYN from
/// FLOOD_SOURCE to [FLOOD_TARGET]:FLOOD_PORT with a valid checksum. The sender programs change
/// the source port (and address) per frame and update the checksum.
pub fn flood_frame_between(from: [u8; 6], to: [u8; 6]) -> Vec<u8> {
    let mut syn = TcpHeader::new(40000, FLOOD_PORT, 1000, 64240);
    syn.syn = true;
    syn.checksum =
        syn.calc_checksum_ipv6_raw(FLOOD_SOURCE.octets(), FLOOD_TARGET.octets(), &[]).expect("a bare header");
    let mut frame = frame(&Ip::new(FLOOD_SOURCE.into(), FLOOD_TARGET.into(), TCP), &syn.to_bytes());
    frame[0..6].copy_from_slice(&to);
    frame[6..12].copy_from_slice(&from);
    frame
}

/// `flood_frame_between(SENDER_MAC, RECEIVER_MAC)`.
pub fn flood_frame() -> Vec<u8> {
    flood_frame_between(SENDER_MAC, RECEIVER_MAC)
}

/// The MAC address of `iface` in `netns`.
pub fn mac(netns: &Netns, iface: &str) -> Result<[u8; 6]> {
    let output = netns.ip(&["-j", "link", "show", "dev", iface])?;
    let link: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let text = link[0]["address"].as_str().context("no MAC address in `ip -j link`")?;
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .context("a MAC address")?;
    bytes.try_into().map_err(|_| anyhow::anyhow!("{text}: not a MAC address"))
}

/// The testkit, loaded as the senders need it.
pub fn testkit() -> Result<Ebpf> {
    EbpfLoader::new().load(portguard::TESTKIT_OBJECT).context("loading the testkit")
}

/// Floods out of `iface` (in `netns`) towards the MAC address `to` (the other end of the wire,
/// where the receiver under test sits): one live-frames sender pinned to each CPU, calls of
/// about CALL, until `bound`.
pub fn flood(netns: &Netns, iface: &str, to: [u8; 6], flood: Flood, bound: Bound) -> Result<Blast> {
    let from = mac(netns, iface)?;
    let ifindex = {
        let name = iface.to_string();
        netns.run(move || nix::net::if_::if_nametoindex(name.as_str()).map_err(anyhow::Error::from))?
    };
    let (ready_tx, ready_rx) = mpsc::channel();
    let go = Arc::new(AtomicBool::new(false));
    let abort = Arc::new(AtomicBool::new(false));
    let threads = num_cpus();
    let mut senders = Vec::new();
    for cpu in 0..threads {
        let (ready, go, abort) = (ready_tx.clone(), go.clone(), abort.clone());
        // Every thread its share; the first takes the remainder.
        let frames = bound.frames / threads as u64 + if cpu == 0 { bound.frames % threads as u64 } else { 0 };
        let bound = Bound { frames, duration: bound.duration };
        senders.push(netns.spawn(move || -> Result<(u64, Duration)> {
            let prepared = prepare_sender(cpu, flood);
            let _ = ready.send(());
            let waiting = Instant::now();
            while !go.load(Ordering::Acquire) {
                if abort.load(Ordering::Acquire) || waiting.elapsed() > Duration::from_secs(30) {
                    bail!("the flood did not start");
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let kit = prepared?;
            let tx: &Xdp = kit.program(flood.program()).context("sender program")?.try_into()?;
            send(tx, ifindex, &flood_frame_between(from, to), bound)
        }));
    }
    for _ in 0..senders.len() {
        if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
            abort.store(true, Ordering::Release);
            break;
        }
    }
    go.store(true, Ordering::Release);
    let started = Instant::now();
    let (mut frames, mut in_calls) = (0, Duration::ZERO);
    let mut failure = None;
    for sender in senders {
        match sender.join().expect("sender thread") {
            Ok((sent, busy)) => (frames, in_calls) = (frames + sent, in_calls + busy),
            Err(error) => failure = Some(error),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    match failure {
        Some(error) => Err(error),
        None => Ok(Blast { frames, seconds, in_calls: in_calls.as_secs_f64() / (seconds * threads as f64) }),
    }
}

/// Pins the calling thread to `cpu` and loads the flood's sender program there.
fn prepare_sender(cpu: usize, flood: Flood) -> Result<Ebpf> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?;
    let mut kit = testkit()?;
    let tx: &mut Xdp = kit.program_mut(flood.program()).context("sender program")?.try_into()?;
    tx.load()?;
    Ok(kit)
}

/// Transmits `frame` (rewritten per frame by the program) from the calling thread until
/// `bound`, in calls of about CALL each, sized from the rate of the call before. Returns the
/// frames sent and the time the kernel spent sending (and, on this CPU, receiving) them,
/// without the calls' setup and without the time other processes had the CPU.
fn send(tx: &Xdp, ifindex: u32, frame: &[u8], bound: Bound) -> Result<(u64, Duration)> {
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    let deadline = Instant::now() + bound.duration;
    let mut repeat = u64::from(FIRST_CALL_FRAMES).min(bound.frames) as u32;
    let (mut sent, mut in_calls) = (0u64, Duration::ZERO);
    // Bounded: each call lasts at least a few milliseconds, and the loop ends at the deadline
    // or when the frames are sent.
    for _ in 0..10_000 {
        if repeat == 0 {
            break;
        }
        let call = Instant::now();
        let result = tx.test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat,
            attrs: TestRunAttrs::new().xdp_live_frames(LIVE_BATCH),
            ..Default::default()
        })?;
        sent += u64::from(repeat);
        // For live frames the kernel reports its time per frame.
        in_calls += result.duration * repeat;
        let per_second = f64::from(repeat) / call.elapsed().as_secs_f64();
        let left = deadline.saturating_duration_since(Instant::now());
        if left < CALL / 4 {
            break;
        }
        let frames_left = bound.frames - sent;
        repeat = (per_second * left.min(CALL).as_secs_f64())
            .clamp(10_000.0, f64::from(u32::MAX))
            .min(frames_left as f64) as u32;
    }
    Ok((sent, in_calls))
}

/// Frames through a receiver's XDP hook and frames its program dropped, all queues (the
/// veth driver's own counters).
#[derive(Clone, Copy, Debug, Default)]
pub struct Hook {
    pub packets: u64,
    pub drops: u64,
}

pub fn hook_counters(netns: &Netns, iface: &str) -> Result<Hook> {
    let stats = ethtool_stats(netns, iface)?;
    Ok(Hook {
        packets: sum(&stats, "rx_queue_", "_xdp_packets"),
        drops: sum(&stats, "rx_queue_", "_xdp_drops"),
    })
}

/// Frames a sender's end of a veth handed to its peer's queues (XDP_TX), and those it could
/// not because the queue was full: together, every frame the sender programs transmitted.
#[derive(Clone, Copy, Debug, Default)]
pub struct Xmit {
    pub frames: u64,
    pub queue_full: u64,
}

pub fn xmit_counters(netns: &Netns, iface: &str) -> Result<Xmit> {
    let stats = ethtool_stats(netns, iface)?;
    Ok(Xmit {
        frames: sum(&stats, "tx_queue_", "_xdp_xmit"),
        queue_full: sum(&stats, "tx_queue_", "_xdp_xmit_errors"),
    })
}

fn ethtool_stats(netns: &Netns, iface: &str) -> Result<Vec<(String, u64)>> {
    let stats = netns.exec("ethtool", &["-S", iface])?;
    Ok(String::from_utf8_lossy(&stats.stdout)
        .lines()
        .filter_map(|line| {
            let (name, value) = line.trim().split_once(':')?;
            Some((name.to_string(), value.trim().parse().ok()?))
        })
        .collect())
}

fn sum(stats: &[(String, u64)], prefix: &str, suffix: &str) -> u64 {
    stats.iter().filter(|(name, _)| name.starts_with(prefix) && name.ends_with(suffix)).map(|(_, v)| v).sum()
}
