//! `cargo xtask bench`: portguard measured beside the alternatives, in one run.
//!
//! 1. Per-packet cost in the kernel (BPF_PROG_TEST_RUN, large repeat counts, median of runs)
//!    for each packet class and blocklist size, beside an empty XDP_PASS program, a plain LPM
//!    trie blocklist, and xdp-filter (Debian's xdp-tools) with equivalent rules.
//! 2. Drop throughput on a veth pair between namespaces, with a live-frames sender (one thread
//!    per CPU), for portguard and the filters a user would pick instead.
//! 3. Blocklist load time and memory, and the time from `portguard block` to enforcement.
//!
//! Prints a markdown report and writes it to the path given (docs/BENCHMARKS.md).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{LpmTrie, lpm_trie::Key},
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
};
use portguard::{
    judge::Judge,
    loader::seed_flows,
    policy::{LoadOptions, Proto, compile::compile, parse},
    sockets::{Socket, UDP_ESTABLISHED},
};
use portguard_tests::{Attached, Lab, Netns, packets::*, portguard_cli::portguard, run, unique};

const REPEAT: u32 = 200_000;
const RUNS: usize = 9;

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("the benchmark needs root (BPF, namespaces): sudo -E cargo xtask bench");
        std::process::exit(1);
    }
    let out = std::env::args().nth(1).unwrap_or_else(|| "docs/BENCHMARKS.md".into());
    match bench() {
        Ok(report) => {
            println!("{report}");
            if let Some(dir) = std::path::Path::new(&out).parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            std::fs::write(&out, &report).expect("writing the report");
            eprintln!("written to {out}");
        }
        Err(error) => {
            eprintln!("benchmark failed: {error:#}");
            std::process::exit(1);
        }
    }
}

fn bench() -> Result<String> {
    let mut report = String::new();
    let kernel =
        String::from_utf8_lossy(&Command::new("uname").arg("-r").output()?.stdout).trim().to_string();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")?
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string();
    writeln!(report, "# portguard benchmarks\n")?;
    writeln!(
        report,
        "Produced by `cargo xtask bench` (`{}`), on {}.",
        std::env::args().collect::<Vec<_>>().join(" "),
        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
    )?;
    writeln!(
        report,
        "Kernel {kernel}, {} CPUs ({cpu}). Every number below comes from the same run.\n",
        num_cpus()
    )?;
    // PORTGUARD_BENCH=throughput (say) runs one section, for working on it.
    let only = std::env::var("PORTGUARD_BENCH").unwrap_or_default();
    let wanted = |section: &str| only.is_empty() || only == section;
    if wanted("per-packet") {
        eprintln!("== per-packet cost");
        per_packet(&mut report)?;
    }
    if wanted("throughput") {
        eprintln!("== throughput");
        throughput(&mut report)?;
    }
    if wanted("operations") {
        eprintln!("== load time, memory, block latency");
        operations(&mut report)?;
    }
    // What bounds the numbers: written by people, kept beside the generator.
    report.push('\n');
    report.push_str(include_str!("../../../docs/benchmarks-reading.md"));
    Ok(report)
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// A realistic blocklist of `n` entries: mostly single IPv4 addresses, some /24s and shorter,
/// some IPv6 prefixes. Deterministic. The sources the packet classes use are never in it,
/// except the blocklisted one.
fn blocklist(n: usize) -> String {
    let mut text = String::from("203.0.113.66\n");
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for i in 1..n {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let r = state;
        let a = 1 + (r >> 8) % 180;
        let line = match i % 50 {
            0 => format!("{a}.{}.{}.0/24", (r >> 16) % 256, (r >> 24) % 256),
            1 => format!("{a}.{}.0.0/{}", (r >> 16) % 256, 16 + (r >> 40) % 7),
            2 | 3 => format!("2001:db8:{:x}::/48", (r >> 16) & 0xffff),
            _ => format!("{a}.{}.{}.{}", (r >> 16) % 256, (r >> 24) % 256, (r >> 32) % 256),
        };
        text.push_str(&line);
        text.push('\n');
    }
    text
}

const POLICY: &str = r#"
mode = "enforce"
default = "deny"
[[allow]]
proto = "tcp"
ports = [22, 80, 443]
[[allow]]
proto = "udp"
ports = [53]
[[deny]]
proto = "tcp"
ports = [23, 445, 3389]
[blocklist]
files = ["blocklist.txt"]
"#;

struct Class {
    name: &'static str,
    frame: Vec<u8>,
}

fn classes() -> Vec<Class> {
    let (client, server) = (ip("198.51.100.20"), ip("192.0.2.2"));
    let mut later = Ip::new(client, server, TCP);
    later.fragment = Some((7, 5, false));
    let mut malformed = tcp(client, server, 40000, 80, SYN);
    malformed.truncate(40);
    vec![
        Class { name: "allowed TCP", frame: tcp(client, server, 40000, 80, SYN) },
        Class { name: "denied TCP", frame: tcp(client, server, 40000, 3306, SYN) },
        Class { name: "blocklisted source", frame: tcp(ip("203.0.113.66"), server, 40000, 80, SYN) },
        Class {
            name: "IPv6 allowed TCP",
            frame: tcp(ip("2001:db8:1::20"), ip("2001:db8::2"), 40000, 443, SYN),
        },
        Class { name: "UDP reply (flow)", frame: udp(ip("198.51.100.53"), server, 53, 41000) },
        Class { name: "later fragment", frame: frame(&later, &[0u8; 24]) },
        Class { name: "malformed", frame: malformed },
    ]
}

/// Nanoseconds per run of `frame` in one test run of `REPEAT` repetitions.
fn once(xdp: &Xdp, frame: &[u8]) -> Result<f64> {
    let result =
        xdp.test_run(TestRunOptions { data_in: Some(frame), repeat: REPEAT, ..Default::default() })?;
    Ok(result.duration.as_nanos() as f64)
}

fn testkit() -> Result<Ebpf> {
    Ok(EbpfLoader::new().map_max_entries("PG_TEST_LPM", 2_000_000).load(portguard::TESTKIT_OBJECT)?)
}

fn xdp_of<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a Xdp> {
    let program = ebpf.program(name).with_context(|| format!("no program {name}"))?;
    Ok(<&Xdp>::try_from(program)?)
}

/// A portguard generation with a blocklist of `size`, ready for every packet class.
fn portguard_judge(dir: &std::path::Path, size: usize, scan: &str) -> Result<Judge> {
    std::fs::write(dir.join("blocklist.txt"), blocklist(size))?;
    let text = format!("{POLICY}[scan_detection]\naction = \"{scan}\"\nthreshold = 256\n");
    let loaded = parse(&text, &dir.join("policy.toml"), LoadOptions::default())?;
    let mut judge = Judge::new(&compile(&loaded.policy, 1)?, &loaded.policy)?;
    let flow = Socket {
        proto: Proto::Udp,
        local: "192.0.2.2:41000".parse()?,
        remote: "198.51.100.53:53".parse()?,
        state: UDP_ESTABLISHED,
        inode: 0,
    };
    seed_flows(judge.ebpf_mut(), &[flow])?;
    // The later fragment's first fragment, so it is a tracked datagram.
    let mut first = Ip::new(ip("198.51.100.20"), ip("192.0.2.2"), TCP);
    first.fragment = Some((7, 0, true));
    judge.run(&frame(&first, &tcp_header(40000, 80, SYN)))?;
    Ok(judge)
}

fn per_packet(report: &mut String) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let sizes = [1usize, 10_000, 100_000, 1_000_000];
    let classes = classes();
    // Everything is loaded first, then measured round by round, each program in turn, so a
    // noisy moment of this machine hits every column alike. Each cell is the fastest round.
    let mut judges = Vec::new();
    for &size in &sizes {
        eprintln!("  loading portguard with a blocklist of {size}");
        judges.push(portguard_judge(dir.path(), size, "off")?);
    }
    let scanning = portguard_judge(dir.path(), 1, "alert")?;
    let mut empty_kit = testkit()?;
    let pass: &mut Xdp = empty_kit.program_mut("pg_test_pass").context("pass")?.try_into()?;
    pass.load()?;
    let mut lpm_kits = Vec::new();
    for &size in &sizes {
        let mut kit = testkit()?;
        {
            let mut trie: LpmTrie<_, [u8; 4], u8> =
                LpmTrie::try_from(kit.map_mut("PG_TEST_LPM").context("trie")?)?;
            for line in blocklist(size).lines() {
                if let Ok(net) = line.parse::<ipnet::Ipv4Net>() {
                    trie.insert(&Key::new(net.prefix_len() as u32, net.network().octets()), 1, 0)?;
                } else if let Ok(addr) = line.parse::<Ipv4Addr>() {
                    trie.insert(&Key::new(32, addr.octets()), 1, 0)?;
                }
            }
        }
        let lpm: &mut Xdp = kit.program_mut("pg_test_lpm").context("lpm")?.try_into()?;
        lpm.load()?;
        lpm_kits.push(kit);
    }
    let xdp_filter =
        XdpFilter::load().map_err(|error| eprintln!("  xdp-filter not measured: {error:#}")).ok();

    let mut table: BTreeMap<(String, &'static str), f64> = BTreeMap::new();
    let best =
        |table: &mut BTreeMap<(String, &'static str), f64>, column: String, class: &'static str, ns: f64| {
            let cell = table.entry((column, class)).or_insert(f64::MAX);
            *cell = cell.min(ns);
        };
    for round in 0..RUNS {
        eprintln!("  round {}/{RUNS}", round + 1);
        for class in &classes {
            for (judge, size) in judges.iter().zip(sizes) {
                let ns = once(xdp_of(judge.ebpf(), "pg_xdp_ingress")?, &class.frame)?;
                best(&mut table, format!("portguard {size}"), class.name, ns);
            }
            if let Some(filter) = &xdp_filter {
                if filter.handles(class.name) {
                    best(&mut table, "xdp-filter".into(), class.name, once(&filter.program, &class.frame)?);
                }
            }
        }
        best(
            &mut table,
            "scan".into(),
            classes[1].name,
            once(xdp_of(scanning.ebpf(), "pg_xdp_ingress")?, &classes[1].frame)?,
        );
        best(
            &mut table,
            "empty".into(),
            classes[0].name,
            once(xdp_of(&empty_kit, "pg_test_pass")?, &classes[0].frame)?,
        );
        for (kit, size) in lpm_kits.iter().zip(sizes) {
            best(
                &mut table,
                format!("lpm {size}"),
                classes[0].name,
                once(xdp_of(kit, "pg_test_lpm")?, &classes[0].frame)?,
            );
        }
    }
    let cell = |column: &str, class: &str| {
        table.iter().find(|((c, k), _)| c == column && *k == class).map(|(_, v)| *v)
    };

    writeln!(report, "## 1. Per-packet cost in the kernel\n")?;
    writeln!(
        report,
        "BPF_PROG_TEST_RUN, {REPEAT} repetitions per run, the fastest of {RUNS} rounds (every column measured in each round, in turn), ns per packet, gross: the test loop itself costs what the empty program shows. Policy: default deny, 3 allow and 1 deny rule, a blocklist of N entries (96% single IPv4 addresses, 2% /24s, 2% /16-/22, 4% IPv6 /48s). xdp-filter: default allow, the same ports and the blocklisted address denied (it has no flow tracking, fragment tracking or malformed-packet policy).\n"
    )?;
    write!(report, "| packet class |")?;
    for size in sizes {
        write!(report, " portguard, {size} entries |")?;
    }
    writeln!(report, " xdp-filter |")?;
    writeln!(report, "|---|{}---|", "---|".repeat(sizes.len()))?;
    for class in &classes {
        write!(report, "| {} |", class.name)?;
        for size in sizes {
            write!(report, " {:.0} |", cell(&format!("portguard {size}"), class.name).unwrap_or(f64::NAN))?;
        }
        match cell("xdp-filter", class.name) {
            Some(ns) => writeln!(report, " {ns:.0} |")?,
            None => writeln!(report, " - |")?,
        }
    }
    let empty = cell("empty", classes[0].name).unwrap_or(f64::NAN);
    writeln!(report, "| empty XDP_PASS program | {empty:.0} | | | | |")?;
    write!(report, "| plain LPM trie blocklist, allowed TCP (contrast) |")?;
    let lpm: Vec<f64> =
        sizes.iter().map(|s| cell(&format!("lpm {s}"), classes[0].name).unwrap_or(f64::NAN)).collect();
    for ns in &lpm {
        write!(report, " {ns:.0} |")?;
    }
    writeln!(report, " |\n")?;
    let allowed: Vec<f64> =
        sizes.iter().map(|s| cell(&format!("portguard {s}"), "allowed TCP").unwrap_or(f64::NAN)).collect();
    let blocked: Vec<f64> = sizes
        .iter()
        .map(|s| cell(&format!("portguard {s}"), "blocklisted source").unwrap_or(f64::NAN))
        .collect();
    writeln!(
        report,
        "- Blocklist growth from 1 to 1,000,000 entries: portguard x{:.2} for allowed TCP and x{:.2} for a blocklisted source (target: within 20%); the plain LPM trie x{:.2} here (this loop repeats one address, so the trie walk stays in cache: the published 18-fold growth is for varied addresses).",
        allowed[3] / allowed[0],
        blocked[3] / blocked[0],
        lpm[3] / lpm[0]
    )?;
    if let (Some(scan), Some(plain)) = (cell("scan", classes[1].name), cell("portguard 1", classes[1].name)) {
        writeln!(
            report,
            "- Scan detection (alert) adds {:.0} ns to a refused attempt (denied TCP: {plain:.0} -> {scan:.0} ns); it costs nothing on packets the policy passes.",
            scan - plain
        )?;
    }
    if xdp_filter.is_some() {
        for class in &classes {
            if let (Some(ours), Some(theirs)) =
                (cell("portguard 1", class.name), cell("xdp-filter", class.name))
            {
                writeln!(
                    report,
                    "- {}: portguard {ours:.0} ns vs xdp-filter {theirs:.0} ns ({:+.0} ns, net of the {empty:.0} ns loop: x{:.2}).",
                    class.name,
                    ours - theirs,
                    (ours - empty) / (theirs - empty)
                )?;
            }
        }
    }
    writeln!(report)?;
    Ok(())
}

/// xdp-filter loaded on a veth in its own namespace, with its program pinned open.
struct XdpFilter {
    program: Xdp,
    _unload: Unload,
    _netns: Netns,
}

/// Unloads xdp-filter (and its pins under /sys/fs/bpf) from an interface when dropped.
struct Unload {
    netns: String,
    iface: String,
}

impl Drop for Unload {
    fn drop(&mut self) {
        let _ = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .args(["xdp-filter", "unload", "--all", &self.iface])
            .output();
        // libxdp leaves its (now empty) directory behind; nothing else of ours is in it.
        let _ = std::fs::remove_dir("/sys/fs/bpf/xdp");
    }
}

impl XdpFilter {
    fn handles(&self, class: &str) -> bool {
        !matches!(class, "UDP reply (flow)" | "later fragment")
    }

    /// xdp-filter (libxdp dispatcher + xdp-filter program) with rules equivalent to the
    /// policy: allow by default, deny TCP 23, 445, 3389 and 3306, deny the blocklisted address.
    fn load() -> Result<Self> {
        if Command::new("xdp-filter").arg("--help").output().is_err() {
            bail!("xdp-filter is not installed (apt-get install xdp-tools)");
        }
        let netns = Netns::new("xf")?;
        let (a, b) = (unique("xa"), unique("xb"));
        netns.ip(&["link", "add", &a, "type", "veth", "peer", "name", &b])?;
        netns.ip(&["link", "set", &a, "up"])?;
        netns.ip(&["link", "set", &b, "up"])?;
        netns.exec("xdp-filter", &["load", "--mode", "native", "--policy", "allow", &a])?;
        let unload = Unload { netns: netns.name.clone(), iface: a.clone() };
        for port in ["23", "445", "3389", "3306"] {
            netns.exec("xdp-filter", &["port", "--proto", "tcp", port])?;
        }
        netns.exec("xdp-filter", &["ip", "--mode", "src", "203.0.113.66"])?;
        let link = netns.exec("ip", &["-j", "-d", "link", "show", "dev", &a])?;
        let link: serde_json::Value = serde_json::from_slice(&link.stdout)?;
        let id = link[0]["xdp"]["prog"]["id"]
            .as_u64()
            .or_else(|| link[0]["xdp"]["attached"][0]["prog"]["id"].as_u64())
            .context("xdp-filter's program id")?;
        let pin = format!("/sys/fs/bpf/pgbench-xdpfilter-{}", std::process::id());
        run("bpftool", &["prog", "pin", "id", &id.to_string(), &pin])?;
        let program = Xdp::from_pin(&pin, aya_obj::programs::XdpAttachType::Interface);
        let _ = std::fs::remove_file(&pin);
        Ok(Self { program: program?, _unload: unload, _netns: netns })
    }
}

/// Frames on the receiver's XDP hook (all queues) so far.
fn xdp_packets(netns: &Netns, iface: &str) -> Result<u64> {
    let stats = netns.exec("ethtool", &["-S", iface])?;
    Ok(String::from_utf8_lossy(&stats.stdout)
        .lines()
        .filter(|l| l.trim_start().starts_with("rx_queue_") && l.contains("_xdp_packets:"))
        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<u64>().ok())
        .sum())
}

/// A sender namespace and a receiver namespace joined by a veth pair with one queue per CPU.
struct Wire {
    sender: Netns,
    receiver: Netns,
    tx: String,
    rx: String,
}

impl Wire {
    fn new() -> Result<Self> {
        let (sender, receiver) = (Netns::new("snd")?, Netns::new("rcv")?);
        let (tx, rx) = (unique("t"), unique("r"));
        let queues = num_cpus().to_string();
        run(
            "ip",
            &[
                "link",
                "add",
                &tx,
                "netns",
                &sender.name,
                "numtxqueues",
                &queues,
                "numrxqueues",
                &queues,
                "type",
                "veth",
                "peer",
                "name",
                &rx,
                "netns",
                &receiver.name,
                "numtxqueues",
                &queues,
                "numrxqueues",
                &queues,
            ],
        )?;
        sender.ip(&["link", "set", &tx, "up"])?;
        receiver.ip(&["link", "set", &rx, "up"])?;
        sender.ip(&["addr", "add", "198.51.100.1/24", "dev", &tx])?;
        receiver.ip(&["addr", "add", "198.51.100.2/24", "dev", &rx])?;
        Ok(Self { sender, receiver, tx, rx })
    }

    /// The frame every sender transmits (its source address and port vary per frame).
    fn frame(&self) -> Vec<u8> {
        let mut l4 = udp_header(40000, 9, 18);
        l4.extend_from_slice(&[0u8; 18]);
        frame(&Ip::new(ip("198.51.100.1"), ip("198.51.100.2"), UDP), &l4)
    }

    /// Live-frames senders, one per CPU, for `duration`; returns the receiver's XDP rate.
    fn blast(&self, duration: Duration) -> Result<f64> {
        let ifindex = {
            let name = self.tx.clone();
            self.sender
                .run(move || nix::net::if_::if_nametoindex(name.as_str()).map_err(anyhow::Error::from))?
        };
        let before = xdp_packets(&self.receiver, &self.rx)?;
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let mut senders = Vec::new();
        for cpu in 0..num_cpus() {
            let (stop, frame) = (stop.clone(), self.frame());
            senders.push(self.sender.spawn(move || -> Result<()> {
                let mut set = nix::sched::CpuSet::new();
                set.set(cpu)?;
                nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?;
                let mut kit = testkit()?;
                let tx: &mut Xdp = kit.program_mut("pg_test_tx").context("tx")?.try_into()?;
                tx.load()?;
                // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
                let mut ctx = [0u8; 24];
                ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
                ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
                while !stop.load(Ordering::Relaxed) {
                    tx.test_run(TestRunOptions {
                        data_in: Some(&frame),
                        ctx_in: Some(&ctx),
                        repeat: 200_000,
                        attrs: TestRunAttrs::new().xdp_live_frames(64),
                        ..Default::default()
                    })?;
                }
                Ok(())
            }));
        }
        std::thread::sleep(duration);
        stop.store(true, Ordering::Relaxed);
        let elapsed = started.elapsed();
        for sender in senders {
            sender.join().expect("sender thread")?;
        }
        let after = xdp_packets(&self.receiver, &self.rx)?;
        // Frames that arrived after `elapsed` are few (one test run each); count them anyway.
        Ok((after - before) as f64 / elapsed.as_secs_f64())
    }

    /// A plain program on the receiver's XDP hook (native mode).
    fn attach_testkit(&self, program: &str) -> Result<Ebpf> {
        let (name, rx) = (program.to_string(), self.rx.clone());
        self.receiver.run(move || -> Result<Ebpf> {
            let mut kit = testkit()?;
            let xdp: &mut Xdp = kit.program_mut(&name).context("program")?.try_into()?;
            xdp.load()?;
            xdp.attach(&rx, XdpMode::Driver)?;
            Ok(kit)
        })
    }

    /// An AF_PACKET sender (frames arrive as skbs), one thread per CPU; returns frames/s
    /// judged by portguard (its counters) on the receiver.
    fn skb_blast(&self, duration: Duration, counter: impl Fn() -> Result<u64>) -> Result<f64> {
        let before = counter()?;
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let sent = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        for _ in 0..num_cpus() {
            let (stop, sent, frame, tx) = (stop.clone(), sent.clone(), self.frame(), self.tx.clone());
            threads.push(self.sender.spawn(move || -> Result<()> {
                let socket = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
                if socket < 0 {
                    bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
                }
                let ifindex = nix::net::if_::if_nametoindex(tx.as_str())?;
                let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                address.sll_family = libc::AF_PACKET as u16;
                address.sll_ifindex = ifindex as i32;
                address.sll_halen = 6;
                let mut frame = frame;
                let mut n = 0u16;
                while !stop.load(Ordering::Relaxed) {
                    n = n.wrapping_add(1);
                    frame[14 + 14..14 + 16].copy_from_slice(&n.to_be_bytes());
                    let result = unsafe {
                        libc::sendto(
                            socket,
                            frame.as_ptr().cast(),
                            frame.len(),
                            0,
                            (&address as *const libc::sockaddr_ll).cast(),
                            size_of::<libc::sockaddr_ll>() as u32,
                        )
                    };
                    if result > 0 {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
                unsafe { libc::close(socket) };
                Ok(())
            }));
        }
        std::thread::sleep(duration);
        stop.store(true, Ordering::Relaxed);
        let elapsed = started.elapsed();
        for thread in threads {
            thread.join().expect("sender")?;
        }
        Ok((counter()? - before) as f64 / elapsed.as_secs_f64())
    }
}

fn nft(netns: &Netns, script: &str) -> Result<()> {
    let mut file = tempfile::NamedTempFile::new()?;
    std::io::Write::write_all(&mut file, script.as_bytes())?;
    netns.exec("nft", &["-f", file.path().to_str().unwrap()])?;
    Ok(())
}

const DROP_POLICY: &str = "mode = \"enforce\"\ndefault = \"deny\"\n[[allow]]\nproto = \"tcp\"\nports = [22]\n[scan_detection]\naction = \"off\"\n";

fn throughput(report: &mut String) -> Result<()> {
    const SECONDS: Duration = Duration::from_secs(4);
    let mut rows: Vec<(String, f64, &str)> = Vec::new();
    let mut measure = |name: &str,
                       note: &'static str,
                       setup: &dyn Fn(&Wire) -> Result<Box<dyn std::any::Any>>|
     -> Result<()> {
        eprintln!("  {name}");
        let wire = Wire::new()?;
        let guard = setup(&wire)?;
        let rate = wire.blast(SECONDS)?;
        drop(guard);
        rows.push((name.to_string(), rate, note));
        Ok(())
    };
    measure("no filter (XDP_PASS, the stack takes the datagrams)", "", &|w| {
        Ok(Box::new(w.attach_testkit("pg_test_pass")?))
    })?;
    measure("floor: XDP_DROP", "", &|w| Ok(Box::new(w.attach_testkit("pg_test_drop")?)))?;
    measure("portguard native (default deny)", "", &|w| {
        Ok(Box::new(Attached::start(&w.receiver, &w.rx, DROP_POLICY, &["--xdp-mode", "native"])?))
    })?;
    measure("XDP_PASS + nftables netdev ingress drop", "", &|w| {
        let kit = w.attach_testkit("pg_test_pass")?;
        nft(
            &w.receiver,
            &format!(
                "table netdev pgbench {{\n chain ingress {{\n  type filter hook ingress device \"{}\" priority 0;\n  udp dport 9 drop\n }}\n}}\n",
                w.rx
            ),
        )?;
        Ok(Box::new(kit))
    })?;
    measure("XDP_PASS + nftables inet input drop", "", &|w| {
        let kit = w.attach_testkit("pg_test_pass")?;
        nft(
            &w.receiver,
            "table inet pgbench {\n chain input {\n  type filter hook input priority 0;\n  udp dport 9 drop\n }\n}\n",
        )?;
        Ok(Box::new(kit))
    })?;
    measure("XDP_PASS + iptables raw PREROUTING drop", "", &|w| {
        let kit = w.attach_testkit("pg_test_pass")?;
        w.receiver.exec(
            "iptables",
            &["-t", "raw", "-A", "PREROUTING", "-p", "udp", "--dport", "9", "-j", "DROP"],
        )?;
        Ok(Box::new(kit))
    })?;
    let xdp_filter = Command::new("xdp-filter").arg("--help").output().is_ok();
    if xdp_filter {
        measure("xdp-filter native (port 9 denied)", "", &|w| {
            w.receiver.exec("xdp-filter", &["load", "--mode", "native", "--policy", "allow", &w.rx])?;
            let unload = Unload { netns: w.receiver.name.clone(), iface: w.rx.clone() };
            w.receiver.exec("xdp-filter", &["port", "--proto", "udp", "9"])?;
            Ok(Box::new(unload))
        })?;
    }
    // Generic mode: only an skb sender reaches it (live frames need native XDP on the peer).
    eprintln!("  portguard generic (AF_PACKET sender)");
    let wire = Wire::new()?;
    let attached = Attached::start(&wire.receiver, &wire.rx, DROP_POLICY, &["--xdp-mode", "generic"])?;
    let generic = wire.skb_blast(SECONDS, || Ok(attached.stats()["packets"].as_u64().unwrap_or(0)))?;
    drop(attached);
    let wire = Wire::new()?;
    let attached = Attached::start(&wire.receiver, &wire.rx, DROP_POLICY, &["--xdp-mode", "native"])?;
    let native_skb = wire.skb_blast(SECONDS, || Ok(attached.stats()["packets"].as_u64().unwrap_or(0)))?;
    drop(attached);

    let floor = rows.iter().find(|r| r.0.starts_with("floor")).map(|r| r.1).unwrap_or(1.0);
    let nft_ingress = rows.iter().find(|r| r.0.contains("netdev ingress")).map(|r| r.1).unwrap_or(1.0);
    let portguard = rows.iter().find(|r| r.0.starts_with("portguard native")).map(|r| r.1).unwrap_or(0.0);
    writeln!(report, "## 2. Drop throughput on a veth pair\n")?;
    writeln!(
        report,
        "UDP datagrams to a port the filter drops, varying source address and port per frame. Sender: BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES on an XDP_TX program, one thread per CPU, pinned; the veth has one queue per CPU; {} s per row. Rate: frames through the receiver's XDP hook per second (ethtool `rx_queue_*_xdp_packets`).\n",
        SECONDS.as_secs()
    )?;
    writeln!(report, "| receiver | Mpps | vs floor | vs nftables ingress |")?;
    writeln!(report, "|---|---|---|---|")?;
    for (name, rate, _) in &rows {
        writeln!(report, "| {name} | {:.2} | {:.2} | {:.2} |", rate / 1e6, rate / floor, rate / nft_ingress)?;
    }
    writeln!(report)?;
    writeln!(
        report,
        "With an AF_PACKET sender (frames arrive as skbs and veth copies each into a page): portguard generic {:.2} Mpps, portguard native {:.2} Mpps, as its counters saw.\n",
        generic / 1e6,
        native_skb / 1e6
    )?;
    if let Some(filter) = rows.iter().find(|r| r.0.starts_with("xdp-filter")) {
        writeln!(
            report,
            "- portguard native vs xdp-filter: x{:.2}; vs nftables netdev ingress: x{:.2} (target: above xdp-filter, at least x2.5).",
            portguard / filter.1,
            portguard / nft_ingress
        )?;
    } else {
        writeln!(
            report,
            "- portguard native vs nftables netdev ingress: x{:.2} (xdp-filter not installed).",
            portguard / nft_ingress
        )?;
    }
    writeln!(report)?;
    Ok(())
}

fn operations(report: &mut String) -> Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("blocklist.txt"), blocklist(1_000_000))?;
    let policy_path = dir.path().join("policy.toml");
    std::fs::write(&policy_path, format!("{POLICY}[scan_detection]\naction = \"off\"\n"))?;
    let started = Instant::now();
    let loaded = portguard::policy::load(&policy_path, LoadOptions::default())?;
    let parsed = started.elapsed();
    let image = compile(&loaded.policy, 1)?;
    let compiled = started.elapsed();
    let judge = Judge::new(&image, &loaded.policy)?;
    let loaded_in = started.elapsed();
    let memory: u64 = judge.ebpf().maps().filter_map(|(_, map)| map_memlock(map)).sum();
    drop(judge);

    // From `portguard block` to the first packet it drops.
    let lab = Lab::new()?;
    let pg = Attached::start(
        &lab.server,
        &lab.server_if,
        "default = \"allow\"\n[scan_detection]\naction = \"off\"\n",
        &[],
    )?;
    let mut latencies = Vec::new();
    for _ in 0..10 {
        let stop = Arc::new(AtomicBool::new(false));
        let sender = {
            let stop = stop.clone();
            lab.client.spawn(move || {
                let socket = std::net::UdpSocket::bind("192.0.2.1:0").unwrap();
                let target = SocketAddr::new(Ipv4Addr::new(192, 0, 2, 2).into(), 9);
                let started = Instant::now();
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(10) {
                    let _ = socket.send_to(b"x", target);
                    std::thread::sleep(Duration::from_micros(50));
                }
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        let manual = |pg: &Attached| -> u64 {
            pg.stats()["reasons"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["reason"] == "manual-block" && r["counted_as"] == "applied")
                .map(|r| r["packets"].as_u64().unwrap())
                .sum()
        };
        let before = manual(&pg);
        let t0 = Instant::now();
        let out = pg.run(&["block", "192.0.2.1", "--iface", &lab.server_if]);
        let command = t0.elapsed();
        if !out.status.success() {
            bail!("block failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        while manual(&pg) == before && t0.elapsed() < Duration::from_secs(5) {}
        latencies.push((command, t0.elapsed()));
        stop.store(true, Ordering::Relaxed);
        sender.join().unwrap();
        pg.run(&["unblock", "192.0.2.1", "--iface", &lab.server_if]);
    }
    latencies.sort();
    let (command, enforced) = latencies[latencies.len() / 2];
    drop(pg);
    let _ = portguard(None, &["status"]);

    writeln!(report, "## 3. Operations\n")?;
    writeln!(report, "| what | result |")?;
    writeln!(report, "|---|---|")?;
    writeln!(report, "| 1,000,000-entry blocklist: read and validate | {:.2} s |", parsed.as_secs_f64())?;
    writeln!(
        report,
        "| ... compile ({} IPv4 /24 buckets, {} IPv6 prefixes) | {:.2} s |",
        image.bl4.len(),
        image.bl6.len(),
        (compiled - parsed).as_secs_f64()
    )?;
    writeln!(
        report,
        "| ... create and fill the maps, verify the program | {:.2} s |",
        (loaded_in - compiled).as_secs_f64()
    )?;
    writeln!(report, "| kernel memory of all maps (memlock) | {:.0} MiB |", memory as f64 / 1048576.0)?;
    writeln!(
        report,
        "| `portguard block` command (process start to exit), median of 10 | {:.1} ms |",
        command.as_secs_f64() * 1e3
    )?;
    writeln!(
        report,
        "| from `portguard block` starting to the first packet dropped, median of 10 (sender every 50 us) | {:.1} ms |",
        enforced.as_secs_f64() * 1e3
    )?;
    writeln!(report)?;
    let _ = (Ipv6Addr::LOCALHOST, IpAddr::from([0u8; 4]));
    Ok(())
}

/// `memlock` of a map, from its fd's /proc entry.
fn map_memlock(map: &aya::maps::Map) -> Option<u64> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let data = match map {
        aya::maps::Map::Array(d)
        | aya::maps::Map::HashMap(d)
        | aya::maps::Map::LpmTrie(d)
        | aya::maps::Map::LruHashMap(d)
        | aya::maps::Map::PerCpuArray(d)
        | aya::maps::Map::RingBuf(d) => d,
        _ => return None,
    };
    let fd = data.fd().as_fd().as_raw_fd();
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    text.lines().find_map(|l| l.strip_prefix("memlock:").map(|v| v.trim().parse().ok()))?
}
