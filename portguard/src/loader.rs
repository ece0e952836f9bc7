//! Loading the kernel object for one policy generation, attaching it, pinning it, and taking it
//! away again.
//!
//! Every policy generation is a fresh load: the policy maps are created and filled before the
//! program runs, and the policy's settings are read-only globals the verifier can see. Maps
//! that must outlive a generation (counters, flows, fragments) are pinned under
//! `/sys/fs/bpf/portguard/IFACE/` and reused by every load that names that directory.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader, include_bytes_aligned,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, PerCpuValues, lpm_trie::Key},
    programs::{
        ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
    },
};
use ipnet::IpNet;
use log::{info, warn};
use portguard_common::maps::{
    AutoBlock, Bl6Key, EventBudget, LIMIT_COUNTER_SLOTS, MAP_AUTO_BLOCK, MAP_AUTO_FILTER, MAP_BL4_INDEX,
    MAP_BL4_RANGES, MAP_BL6, MAP_BL6_FILTER, MAP_CONN_SOCKETS, MAP_CONNS, MAP_EVENT_BUDGET, MAP_EVENTS,
    MAP_FLOWS, MAP_FRAGS, MAP_LIMITS, MAP_MANUAL, MAP_NEVER_BLOCK, MAP_OFFENDERS, MAP_PORT_DROPS,
    MAP_PORT_SOURCES, MAP_PORT_STATS, MAP_PORTS, MAP_RULE_LIMITED, MAP_RULE_LIMITS, MAP_RUNTIME, MAP_SCAN,
    MAP_SRC_ALLOW, NetKey, PORT_TABLE_LEN, PortRule, RUNTIME_USER, RuleLimit, Runtime, SHARED_MAPS,
    SrcAllowKey,
};
use serde::{Deserialize, Serialize};

use crate::{
    budget::{Grants, refill_budget},
    links::{Hook, Inspection, ProgramIds},
    paths,
    policy::{Policy, compile::MapImage},
};

/// The kernel object built by build.rs (empty when built with `AYA_BUILD_SKIP=1`).
pub static KERNEL_OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portguard"));

pub const XDP_PROGRAM: &str = "pg_xdp_ingress";
pub const TC_EGRESS_PROGRAM: &str = "pg_tc_egress";

/// How to attach XDP, as asked on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpModeChoice {
    /// Native (driver) mode where the driver supports it, else generic.
    Auto,
    Native,
    Generic,
}

/// How XDP ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachedMode {
    Native,
    Generic,
    /// Adopted from pins without a record of how XDP was attached.
    Unknown,
}

impl fmt::Display for AttachedMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Native => "native",
            Self::Generic => "generic",
            Self::Unknown => "unknown",
        })
    }
}

/// Loads the kernel object with `image`'s settings and maps, fills the maps and loads the
/// programs into the kernel (running the verifier). Nothing is attached yet.
///
/// With `shared_pins`, the shared maps are taken from (or pinned into) that bpffs directory.
pub fn load(image: &MapImage, policy: &Policy, shared_pins: Option<&Path>) -> Result<Ebpf> {
    let limits = &policy.limits;
    if KERNEL_OBJECT.is_empty() {
        bail!(
            "this portguard was built without its kernel programs (AYA_BUILD_SKIP=1); rebuild it \
             with `cargo xtask build`"
        );
    }
    let pin_paths: Vec<(&str, PathBuf)> = match shared_pins {
        Some(dir) => SHARED_MAPS.iter().map(|name| (*name, dir.join(name))).collect(),
        None => Vec::new(),
    };
    check_pinned_layouts(&pin_paths)?;
    let caps_connections = image.config.has(portguard_common::config::FLAG_CONN_LIMITS);
    let mut config = image.config;
    if caps_connections {
        config.netns_cookie = crate::conns::netns_cookie()?;
    }
    let mut loader = EbpfLoader::new();
    loader
        .override_global("PG_CONFIG", &config, true)
        .map_max_entries(MAP_SRC_ALLOW, size(image.src_allow.len()))
        .map_max_entries(MAP_BL4_RANGES, size(image.bl4_ranges.len()))
        .map_max_entries(MAP_BL6, size(image.bl6.len()))
        .map_max_entries(MAP_BL6_FILTER, 1 << (64 - image.config.bl6_filter_shift - 6))
        .map_max_entries(MAP_NEVER_BLOCK, size(image.never_block.len()))
        .map_max_entries(
            MAP_RULE_LIMITS,
            image.rule_limits.keys().last().map_or(1, |last| u32::from(*last) + 1),
        )
        .map_max_entries(MAP_LIMITS, crate::policy::compile::limit_slots(limits.limited_sources))
        .map_max_entries(MAP_CONNS, limits.connected_sources)
        .map_max_entries(MAP_CONN_SOCKETS, limits.connections)
        .map_max_entries(MAP_FLOWS, limits.flows)
        .map_max_entries(MAP_FRAGS, limits.fragments)
        .map_max_entries(MAP_SCAN, limits.sources)
        .map_max_entries(MAP_AUTO_BLOCK, limits.auto_blocks)
        // Repeat offenders are remembered for as many sources as may be blocked at once.
        .map_max_entries(MAP_OFFENDERS, limits.auto_blocks)
        .map_max_entries(MAP_EVENTS, policy.events.ring_buffer_kib * 1024)
        .map_max_entries(MAP_MANUAL, limits.manual_blocks)
        .map_max_entries(MAP_PORT_DROPS, PORT_TABLE_LEN * image.config.port_drop_shards)
        .map_max_entries(MAP_PORT_STATS, PORT_TABLE_LEN * image.config.port_drop_shards)
        .map_max_entries(MAP_PORT_SOURCES, limits.port_sources);
    for (name, path) in &pin_paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(KERNEL_OBJECT).context("creating the BPF maps failed")?;
    fill(&mut ebpf, image).context("filling the policy maps failed")?;
    reset_rule_limit_counts(&mut ebpf)?;
    crate::conns::reset_refusal_counts(&mut ebpf)?;
    key_scan_detector(&mut ebpf)?;
    crate::portstats::date_new_statistics(&mut ebpf)?;
    lift_automatic_blocks_the_policy_exempts(&mut ebpf, policy)?;
    refill_auto_filter(&ebpf)?;
    // The first second's budget: packets arrive as soon as the program is attached, before
    // the reader's first tick.
    let mut budget: PerCpuArray<&mut MapData, EventBudget> =
        PerCpuArray::try_from(map_data(&mut ebpf, MAP_EVENT_BUDGET)?)?;
    refill_budget(&mut budget, Grants::of(policy)).context(MAP_EVENT_BUDGET)?;

    let xdp: &mut Xdp = program(&mut ebpf, XDP_PROGRAM)?;
    xdp.load().map_err(verifier_error).context("the kernel refused the XDP program")?;
    let tc: &mut SchedClassifier = program(&mut ebpf, TC_EGRESS_PROGRAM)?;
    tc.load().map_err(verifier_error).context("the kernel refused the TC egress program")?;
    if caps_connections {
        crate::conns::load(&mut ebpf)?;
    }
    Ok(ebpf)
}

/// Automatic blocks outlive generations, but the packet path checks `never_block` only when a
/// block was made (and for IPv6 networks wider than a `never_block` entry): a policy that now
/// exempts a blocked source must lift its block here. IPv6 blocks made under another
/// `ipv6_prefix` would no longer be found by the packet path: they are lifted too, and said.
fn lift_automatic_blocks_the_policy_exempts(ebpf: &mut Ebpf, policy: &Policy) -> Result<()> {
    let mut blocks: HashMap<&mut MapData, [u8; 16], AutoBlock> =
        HashMap::try_from(map_data(ebpf, MAP_AUTO_BLOCK)?)?;
    let entries: Vec<([u8; 16], AutoBlock)> = blocks.iter().filter_map(Result::ok).collect();
    let prefix = policy.scan_detection.ipv6_prefix;
    let (mut exempt, mut rekeyed) = (0, 0);
    for (key, block) in entries {
        let address = std::net::Ipv6Addr::from(key);
        let network = match address.to_ipv4_mapped() {
            Some(v4) => IpNet::from(std::net::IpAddr::V4(v4)),
            None if block.prefix_len != prefix => {
                if blocks.remove(&key).is_ok() {
                    rekeyed += 1;
                }
                continue;
            }
            None => IpNet::new(address.into(), prefix).context("an automatic block's prefix")?,
        };
        if policy.never_block.iter().any(|keep| keep.contains(&network)) && blocks.remove(&key).is_ok() {
            exempt += 1;
        }
    }
    if exempt > 0 {
        info!("lifted {exempt} automatic block(s) of sources the policy's never_block now exempts");
    }
    if rekeyed > 0 {
        warn!("lifted {rekeyed} automatic IPv6 block(s) made under another [scan_detection] ipv6_prefix");
    }
    Ok(())
}

/// The per-rule counts of limited attempts start at zero with every generation: its rules
/// may be numbered and counted in other slots than the last one's.
fn reset_rule_limit_counts(ebpf: &mut Ebpf) -> Result<()> {
    let mut counts: PerCpuArray<&mut MapData, u64> =
        PerCpuArray::try_from(map_data(ebpf, MAP_RULE_LIMITED)?)?;
    let cpus = crate::system::possible_cpus() as usize;
    for slot in 0..LIMIT_COUNTER_SLOTS {
        let zeros = PerCpuValues::try_from(vec![0u64; cpus])?;
        counts.set(slot, zeros, 0).context(MAP_RULE_LIMITED)?;
    }
    Ok(())
}

/// Gives the scan detector its random hash key, once per set of shared maps: reloads and
/// restarts that adopt the pins keep it, so per-source state stays valid.
fn key_scan_detector(ebpf: &mut Ebpf) -> Result<()> {
    let mut runtime: Array<&mut MapData, Runtime> = Array::try_from(map_data(ebpf, MAP_RUNTIME)?)?;
    let current = runtime.get(&RUNTIME_USER, 0).context(MAP_RUNTIME)?;
    if current.scan_key != [0, 0] {
        return Ok(());
    }
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|error| anyhow!("no random key for the scan detector: {error}"))?;
    let scan_key = [
        u64::from_ne_bytes(bytes[..8].try_into().expect("8 bytes")),
        u64::from_ne_bytes(bytes[8..].try_into().expect("8 bytes")),
    ];
    runtime.set(RUNTIME_USER, Runtime { scan_key, ..current }, 0).context(MAP_RUNTIME)?;
    Ok(())
}

/// Refills the automatic blocks' filter from the table before the programs run: it is sized
/// for the blocks there are (the table may come from pins, even pins older than the filter).
/// Skipped while the running loader refills it (that refill sizes it too). Through the
/// object's own maps (opening maps by id would need CAP_SYS_ADMIN).
fn refill_auto_filter(ebpf: &Ebpf) -> Result<()> {
    let Some(aya::maps::Map::Array(filter)) = ebpf.map(MAP_AUTO_FILTER) else {
        bail!("the kernel object has no array `{MAP_AUTO_FILTER}`");
    };
    let filter = crate::auto_filter::AutoFilter::map(filter)?;
    let blocks: HashMap<&MapData, [u8; 16], AutoBlock> =
        HashMap::try_from(ebpf.map(MAP_AUTO_BLOCK).context(MAP_AUTO_BLOCK)?)?;
    filter.refill(&blocks)?;
    Ok(())
}

/// A map needs at least one entry even when the policy has none.
fn size(entries: usize) -> u32 {
    u32::try_from(entries.max(1)).unwrap_or(u32::MAX)
}

pub fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("the kernel object has no program `{name}` (a build mismatch?)"))?;
    program.try_into().with_context(|| format!("program `{name}` has an unexpected type"))
}

/// Refuses pinned shared maps whose keys or values differ in size from this build's
/// definitions: a portguard whose layout changed (an upgrade) would otherwise take them over,
/// and the verifier would refuse its programs with a log that names no map. Their state cannot
/// be carried over; the operator detaches and attaches again.
pub fn check_pinned_layouts(pins: &[(&str, PathBuf)]) -> Result<()> {
    if !pins.iter().any(|(_, path)| path.exists()) {
        return Ok(());
    }
    let object = aya_obj::Object::parse(KERNEL_OBJECT).context("reading this build's kernel object")?;
    for (name, path) in pins {
        let (Some(definition), true) = (object.maps.get(*name), path.exists()) else {
            continue;
        };
        let info = MapData::from_pin(path)
            .and_then(|map| map.info())
            .with_context(|| format!("opening {}", path.display()))?;
        let (key, value) = (info.key_size(), info.value_size());
        if (key, value) != (definition.key_size(), definition.value_size()) {
            bail!(
                "{} was pinned by another portguard build: its entries have {key}-byte keys and                  {value}-byte values, this build's {name} has {} and {}, so its state cannot be                  carried over; run `portguard detach` for this interface (nothing is protected                  until the attach that follows) and attach again",
                path.display(),
                definition.key_size(),
                definition.value_size()
            );
        }
    }
    Ok(())
}

/// Surfaces the verifier log, which is what explains a refused program.
pub(crate) fn verifier_error(error: ProgramError) -> anyhow::Error {
    match error {
        ProgramError::LoadError { io_error, verifier_log } => {
            anyhow!("{io_error}\nverifier log:\n{verifier_log}")
        }
        other => other.into(),
    }
}

fn map_data<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name).ok_or_else(|| anyhow!("the kernel object has no map `{name}`"))
}

/// A progress bar on a terminal for blocklists big enough to take a moment (one syscall per
/// entry: about a million a second).
fn progress(entries: usize) -> indicatif::ProgressBar {
    use std::io::IsTerminal as _;
    if entries < 100_000 || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(entries as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "loading the blocklist {bar:40} {pos}/{len} entries ({eta} left)",
        )
        .expect("valid template"),
    );
    bar
}

fn fill(ebpf: &mut Ebpf, image: &MapImage) -> Result<()> {
    let bar = progress(image.bl4_ranges.len() + image.bl6.len());
    let mut ports: Array<&mut MapData, PortRule> = Array::try_from(map_data(ebpf, MAP_PORTS)?)?;
    for (index, rule) in &image.ports {
        ports.set(*index, rule, 0).with_context(|| format!("writing {MAP_PORTS}[{index}]"))?;
    }
    let mut src_allow: LpmTrie<&mut MapData, SrcAllowKey, u16> =
        LpmTrie::try_from(map_data(ebpf, MAP_SRC_ALLOW)?)?;
    for (prefix_len, key, rule) in &image.src_allow {
        src_allow.insert(&Key::new(*prefix_len, *key), rule, 0).context(MAP_SRC_ALLOW)?;
    }
    // Ranges before the index entries that point at them.
    let mut ranges: Array<&mut MapData, u32> = Array::try_from(map_data(ebpf, MAP_BL4_RANGES)?)?;
    for (index, range) in image.bl4_ranges.iter().enumerate() {
        ranges.set(index as u32, range, 0).context(MAP_BL4_RANGES)?;
        bar.inc(1);
    }
    let mut bl4_index: Array<&mut MapData, u64> = Array::try_from(map_data(ebpf, MAP_BL4_INDEX)?)?;
    for (slash16, entry) in &image.bl4_index {
        bl4_index.set(*slash16, entry, 0).context(MAP_BL4_INDEX)?;
    }
    let mut bl6: HashMap<&mut MapData, Bl6Key, u8> = HashMap::try_from(map_data(ebpf, MAP_BL6)?)?;
    for key in &image.bl6 {
        bl6.insert(key, 1, 0).context(MAP_BL6)?;
        bar.inc(1);
    }
    // After the keys, so a set bit never points at a missing key (a miss would only cost a
    // lookup, but the program is not attached yet anyway).
    let mut filter: Array<&mut MapData, u64> = Array::try_from(map_data(ebpf, MAP_BL6_FILTER)?)?;
    for (word, bits) in &image.bl6_filter {
        filter.set(*word, bits, 0).context(MAP_BL6_FILTER)?;
    }
    bar.finish_and_clear();
    let mut rule_limits: Array<&mut MapData, RuleLimit> = Array::try_from(map_data(ebpf, MAP_RULE_LIMITS)?)?;
    for (rule, limit) in &image.rule_limits {
        rule_limits.set(u32::from(*rule), limit, 0).context(MAP_RULE_LIMITS)?;
    }
    let mut never: LpmTrie<&mut MapData, NetKey, u8> = LpmTrie::try_from(map_data(ebpf, MAP_NEVER_BLOCK)?)?;
    for (prefix_len, addr) in &image.never_block {
        never.insert(&Key::new(*prefix_len, *addr), 1, 0).context(MAP_NEVER_BLOCK)?;
    }
    Ok(())
}

/// Attaches a loaded generation to `iface` for the first time: XDP on ingress, TC on egress,
/// both links pinned beside the shared maps. The pins hold the links: the loader keeps no link
/// of its own, so enforcement survives it (SIGKILL included) until `detach` unpins them.
///
/// `before_pinning` runs once XDP is attached and its mode known, before anything is pinned:
/// the caller records the attachment there, so a process killed after the first pin leaves a
/// record an adopting `attach` can repair from.
pub fn attach_new(
    ebpf: &mut Ebpf,
    iface: &str,
    choice: XdpModeChoice,
    before_pinning: impl FnOnce(AttachedMode) -> Result<()>,
) -> Result<AttachedMode> {
    let (xdp_link, mode) = attach_xdp(ebpf, iface, choice)?;
    before_pinning(mode)?;
    pin_link(xdp_link, iface, Hook::Xdp)?;
    if let Err(error) = attach_tc_egress(ebpf, iface).and_then(|link| pin_link(link, iface, Hook::TcEgress)) {
        let _ = unpin_link(iface, Hook::Xdp);
        return Err(error);
    }
    if let Err(error) = crate::conns::sync(ebpf, iface) {
        let _ = unpin_link(iface, Hook::TcEgress);
        let _ = unpin_link(iface, Hook::Xdp);
        return Err(error);
    }
    Ok(mode)
}

/// Takes over, with a loaded generation, what is pinned on `iface`: each link still attached
/// to the interface switches to the new program without a gap; a link that is missing or not on
/// the interface (a loader killed half-way through attaching or detaching, an interface deleted
/// and created again) is attached anew. Returns the XDP mode if XDP was attached anew, and what
/// was attached anew and why, to be said.
pub fn adopt(
    ebpf: &mut Ebpf,
    iface: &str,
    choice: XdpModeChoice,
    found: &Inspection,
) -> Result<(Option<AttachedMode>, Vec<String>)> {
    let mut mode = None;
    let mut repaired = Vec::new();
    for hook in Hook::BOTH {
        let link = found.link(hook);
        if found.on_interface(link) {
            replace_link(ebpf, iface, hook)?;
            continue;
        }
        // A link on no interface, or on another, protects nothing here.
        unpin_link(iface, hook)?;
        let fresh = match hook {
            Hook::Xdp => {
                let (link, attached) = attach_xdp(ebpf, iface, choice)?;
                mode = Some(attached);
                link
            }
            Hook::TcEgress => attach_tc_egress(ebpf, iface)?,
        };
        pin_link(fresh, iface, hook)?;
        let why = if link.is_none() { "its link was missing" } else { "its link was not on the interface" };
        repaired.push(format!("attached {} anew ({why})", hook.what()));
    }
    crate::conns::sync(ebpf, iface)?;
    Ok((mode, repaired))
}

fn pin_link(link: FdLink, iface: &str, hook: Hook) -> Result<()> {
    let path = paths::link_pin(iface, hook.pin_name());
    // Dropping the PinnedLink closes our fd; the pin keeps the link.
    link.pin(&path).with_context(|| format!("pinning {}", path.display()))?;
    Ok(())
}

/// Unpins a link; with no other holder, the kernel detaches its program.
fn unpin_link(iface: &str, hook: Hook) -> Result<()> {
    let path = paths::link_pin(iface, hook.pin_name());
    match PinnedLink::from_pin(&path) {
        Ok(link) => {
            link.unpin().with_context(|| format!("unpinning {}", path.display()))?;
            Ok(())
        }
        Err(_) if !path.exists() => Ok(()),
        Err(error) => Err(error).with_context(|| format!("opening {}", path.display())),
    }
}

/// Swaps a loaded generation in for the running one, through the pinned links
/// (`bpf_link_update`): each packet is judged entirely by the old program or entirely by the
/// new one, never by a mix, and there is no moment without a program.
pub fn replace(ebpf: &mut Ebpf, iface: &str) -> Result<()> {
    Hook::BOTH.into_iter().try_for_each(|hook| replace_link(ebpf, iface, hook))?;
    crate::conns::sync(ebpf, iface)
}

fn replace_link(ebpf: &mut Ebpf, iface: &str, hook: Hook) -> Result<()> {
    let pin = paths::link_pin(iface, hook.pin_name());
    let link = PinnedLink::from_pin(&pin).with_context(|| format!("opening {}", pin.display()))?;
    match hook {
        Hook::Xdp => {
            let link = XdpLink::try_from(FdLink::from(link))
                .map_err(|e| anyhow!("{} is not an XDP link: {e}", pin.display()))?;
            let xdp: &mut Xdp = program(ebpf, XDP_PROGRAM)?;
            let id = xdp.attach_to_link(link).context("switching the XDP program")?;
            drop(xdp.take_link(id)?);
        }
        Hook::TcEgress => {
            let link = SchedClassifierLink::try_from(FdLink::from(link))
                .map_err(|e| anyhow!("{} is not a TC link: {e}", pin.display()))?;
            let tc: &mut SchedClassifier = program(ebpf, TC_EGRESS_PROGRAM)?;
            let id = tc.attach_to_link(link).context("switching the TC egress program")?;
            drop(tc.take_link(id)?);
        }
    }
    Ok(())
}

/// The kernel's ids of a loaded generation's programs: what the pinned links report once it
/// runs, so a record can be checked against what really runs.
pub fn program_ids(ebpf: &mut Ebpf) -> Result<ProgramIds> {
    let xdp = program::<Xdp>(ebpf, XDP_PROGRAM)?.info().context("reading the XDP program's id")?.id();
    let tc = program::<SchedClassifier>(ebpf, TC_EGRESS_PROGRAM)?
        .info()
        .context("reading the TC egress program's id")?
        .id();
    Ok(ProgramIds { xdp, tc })
}

/// Detaches both programs (by unpinning their links) and removes every pin of `iface`.
pub fn detach(iface: &str) -> Result<()> {
    paths::owned_pin_dir(iface)?;
    unpin_link(iface, Hook::Xdp)?;
    unpin_link(iface, Hook::TcEgress)?;
    remove_pins(iface)
}

fn attach_xdp(ebpf: &mut Ebpf, iface: &str, choice: XdpModeChoice) -> Result<(FdLink, AttachedMode)> {
    let xdp: &mut Xdp = program(ebpf, XDP_PROGRAM)?;
    let attempts: &[(XdpMode, AttachedMode)] = match choice {
        XdpModeChoice::Auto => {
            &[(XdpMode::Driver, AttachedMode::Native), (XdpMode::Skb, AttachedMode::Generic)]
        }
        XdpModeChoice::Native => &[(XdpMode::Driver, AttachedMode::Native)],
        XdpModeChoice::Generic => &[(XdpMode::Skb, AttachedMode::Generic)],
    };
    let mut last_error = None;
    for (xdp_mode, attached) in attempts {
        match xdp.attach(iface, *xdp_mode) {
            Ok(id) => {
                let link = xdp.take_link(id)?;
                let link = FdLink::try_from(link).map_err(|_| {
                    anyhow!("the kernel attached XDP without a bpf_link (kernel older than 5.9?); portguard needs bpf_link to pin it")
                })?;
                return Ok((link, *attached));
            }
            Err(error) => {
                if choice == XdpModeChoice::Auto && *attached == AttachedMode::Native {
                    warn!("native XDP is not available on {iface} ({error}); falling back to generic mode");
                }
                last_error = Some(error);
            }
        }
    }
    let error = last_error.expect("at least one attempt");
    let busy =
        matches!(&error, ProgramError::SyscallError(e) if e.io_error.raw_os_error() == Some(libc::EBUSY));
    if busy {
        bail!(
            "{iface} already has an XDP program (another tool's, or a left-behind portguard one): \
             `ip link show {iface}` shows it; `portguard detach {iface}` removes portguard's"
        );
    }
    Err(anyhow::Error::new(error)).with_context(|| match choice {
        XdpModeChoice::Native => format!("attaching XDP to {iface} in native mode failed; the driver may not support it: try --xdp-mode generic"),
        _ => format!("attaching XDP to {iface} failed"),
    })
}

fn attach_tc_egress(ebpf: &mut Ebpf, iface: &str) -> Result<FdLink> {
    // Kernels before 6.6 need a clsact qdisc (TCX does not); it may already exist.
    if let Err(error) = aya::programs::tc::qdisc_add_clsact(iface) {
        log::debug!("clsact on {iface}: {error} (fine if it exists or TCX is used)");
    }
    let tc: &mut SchedClassifier = program(ebpf, TC_EGRESS_PROGRAM)?;
    let id = tc
        .attach(iface, TcAttachType::Egress)
        .with_context(|| format!("attaching the TC egress program to {iface} failed"))?;
    let link = tc.take_link(id)?;
    FdLink::try_from(link).map_err(|_| {
        anyhow!("TC egress was attached through netlink (kernel older than 6.6); portguard needs TCX links to pin it")
    })
}

/// Removes an attachment's pins (links and shared maps) and its directory. Missing pins are
/// fine: this also cleans up after a loader that was killed half-way.
pub fn remove_pins(iface: &str) -> Result<()> {
    let dir = paths::owned_pin_dir(iface)?;
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in entries {
        let path = entry?.path();
        std::fs::remove_file(&path).with_context(|| format!("removing pin {}", path.display()))?;
    }
    std::fs::remove_dir(&dir).with_context(|| format!("removing {}", dir.display()))?;
    info!("removed {}", dir.display());
    // Leave no empty portguard directory behind once the last attachment (of this namespace,
    // then of all) is gone.
    let _ = std::fs::remove_dir(paths::pin_root());
    let _ = std::fs::remove_dir(paths::PIN_ROOT);
    Ok(())
}

/// Interfaces of this network namespace with a pin directory (attached, or left half-way by a
/// dead loader), sorted.
pub fn attached_interfaces() -> Result<Vec<String>> {
    let root = paths::pin_root();
    match interfaces_in(&root) {
        Ok(names) => Ok(names),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        // An unreadable directory is not an empty one: say so rather than "not attached".
        Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
            Err(crate::system::NeedsPrivileges::new(
                "listing portguard's attachments",
                format!("{} is readable by root only: {error}", root.display()),
            )
            .into())
        }
        Err(error) => {
            Err(error).with_context(|| format!("listing portguard's attachments in {}", root.display()))
        }
    }
}

/// Attachments in other network namespaces than this one, sorted.
pub fn attachments_elsewhere() -> Vec<(crate::netns::Netns, String)> {
    use crate::netns::Netns;
    let here = Netns::current();
    let mut namespaces: Vec<Netns> = std::fs::read_dir(paths::PIN_ROOT)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str().and_then(Netns::from_dir))
                .collect()
        })
        .unwrap_or_default();
    namespaces.push(Netns::Host);
    namespaces.sort();
    namespaces
        .into_iter()
        .filter(|netns| *netns != here)
        .flat_map(|netns| {
            interfaces_in(&paths::scoped_in(paths::PIN_ROOT, netns))
                .unwrap_or_default()
                .into_iter()
                .map(move |iface| (netns, iface))
        })
        .collect()
}

fn interfaces_in(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(std::result::Result::ok)
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| paths::check_iface_name(name).is_ok())
        .collect();
    names.sort();
    Ok(names)
}

/// Whether `iface` has a pinned link: an attachment to act on, loader alive or not (whether it
/// protects anything is for `links::Inspection` to say).
pub fn is_attached(iface: &str) -> bool {
    Hook::BOTH.iter().any(|hook| paths::link_pin(iface, hook.pin_name()).exists())
}

/// `bpf_ktime_get_coarse_ns` as userspace sees it (CLOCK_MONOTONIC_COARSE).
pub fn kernel_now_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &raw mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

pub fn addr16(ip: std::net::IpAddr) -> [u8; 16] {
    match ip {
        std::net::IpAddr::V4(v4) => portguard_common::maps::v4_mapped(v4.octets()),
        std::net::IpAddr::V6(v6) => v6.octets(),
    }
}

/// Records the host's existing connections as flows, so attaching under default deny does not
/// cut them (their packets are not connection attempts, and they are now known flows).
pub fn seed_flows(ebpf: &mut Ebpf, sockets: &[crate::sockets::Socket]) -> Result<usize> {
    let mut flows: HashMap<&mut MapData, portguard_common::maps::FlowKey, u64> =
        HashMap::try_from(map_data(ebpf, MAP_FLOWS)?)?;
    let now = kernel_now_ns();
    let mut seeded = 0;
    let mut ports: Vec<(u32, u64)> = Vec::new();
    for socket in sockets.iter().filter(|s| s.has_peer()) {
        ports.push(portguard_common::maps::flow_port_bit(socket.proto.number(), socket.local.port()));
        let key = portguard_common::maps::FlowKey {
            remote: addr16(socket.remote.ip()),
            local: addr16(socket.local.ip()),
            remote_port: socket.remote.port(),
            local_port: socket.local.port(),
            proto: socket.proto.number(),
            _pad: [0; 3],
        };
        flows.insert(key, now, 0).context(MAP_FLOWS)?;
        seeded += 1;
    }
    let mut bits: Array<&mut MapData, u64> =
        Array::try_from(map_data(ebpf, portguard_common::maps::MAP_FLOW_PORTS)?)?;
    for (word, bit) in ports {
        let value = bits.get(&word, 0)?;
        bits.set(word, value | bit, 0)?;
    }
    Ok(seeded)
}
