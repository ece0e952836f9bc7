//! Manual blocks (`portguard block`): kept in `/var/lib/portguard/blocks.json` so they survive
//! loader restarts and reboots, and mirrored into each attachment's `PG_MANUAL` map, where the
//! next packet sees them. Also the automatic blocks in force, as `stats` and `blocks` list them.

use std::{
    borrow::BorrowMut,
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use aya::maps::{Array, HashMap, LpmTrie, MapData, lpm_trie::Key};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use portguard_common::{
    events::ScanKind,
    maps::{
        AutoBlock, CAUSE_TRAP, FAMILY_V4, FAMILY_V6, MAP_AUTO_BLOCK, MAP_MANUAL, MAP_OFFENDERS, MAP_RUNTIME,
        ManualBlock, NET_KEY_FIXED_BITS, NetKey, Offender, RUNTIME_USER, Runtime,
    },
};
use serde::{Deserialize, Serialize};

use crate::{
    durations,
    events::{Clock, block_scan_ports, cause_name, ip_of, is_limit_cause, network_prefix, protocol_name},
    files,
    loader::kernel_now_ns,
    maps::open_pinned,
    netns::Netns,
    paths,
    policy::compile::net_key,
    state::{now_unix, write_atomically},
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManualEntry {
    pub net: IpNet,
    /// The network namespace whose attachments it applies to (the one `block` ran in).
    #[serde(default, skip_serializing_if = "Netns::is_host")]
    pub netns: Netns,
    /// Only this interface; `None`: every attachment of the namespace, future ones too.
    #[serde(default)]
    pub iface: Option<String>,
    /// Interfaces a block of every attachment was lifted on (`unblock --iface`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
    #[serde(default)]
    pub reason: Option<String>,
    /// Seconds since the Unix epoch.
    pub added: u64,
    /// Seconds since the Unix epoch; `None`: until unblocked. Wall-clock time, so a block
    /// for 30 s ends 30 s later whatever restarts or reboots happen in between.
    #[serde(default)]
    pub expires: Option<u64>,
}

impl ManualEntry {
    /// Whether it applies to `iface` of this network namespace.
    pub fn applies_to(&self, iface: &str) -> bool {
        self.applies_in(Netns::current(), iface)
    }

    pub fn applies_in(&self, netns: Netns, iface: &str) -> bool {
        self.netns == netns
            && self.iface.as_deref().is_none_or(|i| i == iface)
            && !self.except.iter().any(|e| e == iface)
    }

    pub fn expired(&self, now: u64) -> bool {
        self.expires.is_some_and(|e| e <= now)
    }

    pub fn seconds_left(&self, now: u64) -> Option<u64> {
        self.expires.map(|e| e.saturating_sub(now))
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BlockStore {
    pub blocks: Vec<ManualEntry>,
}

impl BlockStore {
    /// The saved blocks (none if the file does not exist yet).
    pub fn load() -> Result<Self> {
        Ok(Self::load_if_present()?.unwrap_or_default())
    }

    /// The saved blocks; `None` if the file is missing (or a symlink to nothing).
    fn load_if_present() -> Result<Option<Self>> {
        let path = paths::blocks_file();
        match files::read_text_capped(&path, files::STATE_FILE_MAX) {
            Ok(text) => serde_json::from_str(&text).map(Some).with_context(|| {
                format!("{} is damaged; fix or remove it (it holds the manual blocks)", path.display())
            }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn save(&self) -> Result<()> {
        write_atomically(&paths::blocks_file(), serde_json::to_string_pretty(self)?.as_bytes())
    }

    /// Changes the saved blocks and makes the `PG_MANUAL` maps of `interfaces` hold them, under
    /// a lock, so two commands at once cannot lose each other's changes. Expired blocks are
    /// dropped on the way. The file is written first, and if the kernel cannot follow, the file
    /// and the maps are put back: the file and the kernel always agree. A missing file while
    /// the kernel enforces manual blocks is rebuilt from the kernel first (and said so), never
    /// taken for "no blocks".
    pub fn edit<T>(interfaces: &[String], change: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let path = paths::blocks_lock();
        if let Some(dir) = path.parent() {
            crate::system::create_private_dir(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let _lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, error)| error)
            .with_context(|| format!("locking {}", path.display()))?;
        let before = match Self::load_if_present()? {
            Some(store) => store,
            None => Self::rebuilt_from_kernel(interfaces)?,
        };
        let mut store = before.clone();
        store.prune(now_unix());
        let result = change(&mut store)?;
        store.save().context("saving the manual blocks failed; nothing was changed")?;
        if let Err(error) = sync_all(&store, interfaces) {
            let put_back = before.save().and_then(|()| sync_all(&before, interfaces));
            return Err(match put_back {
                Ok(()) => error.context("nothing was changed"),
                Err(also) => error.context(format!(
                    "putting the previous blocks back failed too ({also:#}): `portguard blocks` shows what {} holds",
                    paths::blocks_file().display()
                )),
            });
        }
        Ok(result)
    }

    /// The manual blocks the maps of `interfaces` hold, as a store (each kept for the interface
    /// it was found on; reasons are not in the kernel). Empty when they hold none.
    fn rebuilt_from_kernel(interfaces: &[String]) -> Result<Self> {
        let now = now_unix();
        let now_wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let now_kernel = kernel_now_ns();
        let mut store = Self::default();
        for iface in interfaces {
            let manual: LpmTrie<MapData, NetKey, ManualBlock> =
                LpmTrie::try_from(open_pinned(iface, MAP_MANUAL)?)?;
            for item in &manual {
                let (key, block) = item.context("reading the manual blocks")?;
                let Some(net) = net_of(key.prefix_len(), &key.data()) else { continue };
                let expires = match block.expires_ns {
                    0 => None,
                    ns if ns <= now_kernel => continue,
                    ns => Some(wall_secs(ns - now_kernel, now_wall)),
                };
                let reason =
                    Some(format!("rebuilt from the kernel: {} was missing", paths::blocks_file().display()));
                store.blocks.push(ManualEntry {
                    net,
                    netns: Netns::current(),
                    iface: Some(iface.clone()),
                    except: Vec::new(),
                    reason,
                    added: now,
                    expires,
                });
            }
        }
        if !store.blocks.is_empty() {
            eprintln!(
                "warning: {} was missing while the kernel enforced {} manual blocks on {}: rebuilt it from \
                 the kernel (each kept for its interface; the reasons were lost)",
                paths::blocks_file().display(),
                store.blocks.len(),
                interfaces.join(", ")
            );
        }
        Ok(store)
    }

    /// Drops expired blocks; returns them.
    pub fn prune(&mut self, now: u64) -> Vec<ManualEntry> {
        let (expired, active): (Vec<_>, Vec<_>) = self.blocks.drain(..).partition(|b| b.expired(now));
        self.blocks = active;
        expired
    }

    /// Adds a block, replacing one for the same network and scope.
    pub fn add(&mut self, entry: ManualEntry) {
        self.blocks.retain(|b| !(b.net == entry.net && b.netns == entry.netns && b.iface == entry.iface));
        self.blocks.push(entry);
    }

    /// Lifts the blocks of `net` in `netns`: every one, or those that apply to `iface` (a block
    /// of every attachment stays for the others). Returns how many were lifted, and whether
    /// one of them stays for other attachments.
    pub fn remove(&mut self, net: &IpNet, netns: Netns, iface: Option<&str>) -> (usize, bool) {
        let before = self.blocks.len();
        let (mut lifted, mut stays) = (0, false);
        self.blocks.retain(|b| {
            let ours = b.net == *net && b.netns == netns;
            let drop = ours && (iface.is_none() || b.iface.as_deref() == iface);
            !drop
        });
        lifted += before - self.blocks.len();
        if let Some(iface) = iface {
            for block in
                self.blocks.iter_mut().filter(|b| b.net == *net && b.netns == netns && b.iface.is_none())
            {
                if !block.except.iter().any(|e| e == iface) {
                    block.except.push(iface.to_owned());
                    lifted += 1;
                    stays = true;
                }
            }
        }
        (lifted, stays)
    }

    /// The blocks that apply to `iface` of this network namespace.
    pub fn for_iface<'a>(&'a self, iface: &'a str) -> impl Iterator<Item = &'a ManualEntry> {
        let netns = Netns::current();
        self.blocks.iter().filter(move |b| b.applies_in(netns, iface))
    }
}

pub fn entry(
    net: IpNet,
    iface: Option<String>,
    reason: Option<String>,
    duration: Option<Duration>,
) -> ManualEntry {
    let added = now_unix();
    ManualEntry {
        net,
        netns: Netns::current(),
        iface,
        except: Vec::new(),
        reason,
        added,
        expires: duration.map(|d| added.saturating_add(d.as_secs().max(1))),
    }
}

/// When a block ending at `expires` (Unix seconds) ends on the kernel's clock; `None` if it
/// has ended. Stored state may hold any number: an end past what the kernel's clock can count
/// (only a hand-edited file has one) becomes the last instant it can.
fn kernel_expiry(expires: u64, now_wall: Duration, now_kernel_ns: u64) -> Option<u64> {
    let left = Duration::from_secs(expires).checked_sub(now_wall).filter(|left| !left.is_zero())?;
    Some(durations::as_kernel_ns(left).and_then(|left| now_kernel_ns.checked_add(left)).unwrap_or(u64::MAX))
}

/// Unix seconds `left_ns` after `now_wall`, rounded up: a rebuilt block never ends early.
fn wall_secs(left_ns: u64, now_wall: Duration) -> u64 {
    (now_wall + Duration::from_nanos(left_ns)).as_secs() + 1
}

/// The network of a `PG_MANUAL` key (the inverse of `net_key`).
fn net_of(prefix_len: u32, key: &NetKey) -> Option<IpNet> {
    let len = u8::try_from(prefix_len.checked_sub(NET_KEY_FIXED_BITS)?).ok()?;
    match key.family {
        FAMILY_V4 => {
            let v4 = std::net::Ipv6Addr::from(key.addr).to_ipv4_mapped()?;
            Ipv4Net::new(v4, len.checked_sub(96)?).ok().map(IpNet::V4)
        }
        FAMILY_V6 => Ipv6Net::new(key.addr.into(), len).ok().map(IpNet::V6),
        _ => None,
    }
}

/// The kernel's key for a network.
fn key_of(net: &IpNet) -> Key<NetKey> {
    let (prefix_len, key) = net_key(net);
    Key::new(prefix_len, key)
}

/// Makes `iface`'s `PG_MANUAL` hold exactly `entries` (expired ones left out), and tells the
/// packet path how many there are. Entries are written before the count goes up and removed
/// after it goes down, so no packet misses a block that is meant to be there.
pub fn sync_iface(iface: &str, entries: &[&ManualEntry]) -> Result<usize> {
    let mut manual: LpmTrie<MapData, NetKey, ManualBlock> =
        LpmTrie::try_from(open_pinned(iface, MAP_MANUAL)?)?;
    let mut runtime: Array<MapData, Runtime> = Array::try_from(open_pinned(iface, MAP_RUNTIME)?)?;
    let now_wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let now_kernel = kernel_now_ns();
    let mut wanted: BTreeMap<(u32, NetKey), ManualBlock> = BTreeMap::new();
    for entry in entries {
        let expires_ns = match entry.expires {
            None => 0,
            Some(expires) => match kernel_expiry(expires, now_wall, now_kernel) {
                Some(expires_ns) => expires_ns,
                None => continue,
            },
        };
        let key = key_of(&entry.net);
        // A network blocked twice (by hand and by CrowdSec) is blocked until the later end.
        let block = wanted
            .entry((key.prefix_len(), key.data()))
            .or_insert(ManualBlock { expires_ns, last_event_ns: 0 });
        if block.expires_ns != 0 && (expires_ns == 0 || expires_ns > block.expires_ns) {
            block.expires_ns = expires_ns;
        }
    }
    // Only what differs is written: CrowdSec brings tens of thousands of entries, and most
    // syncs change a few. An end within a second of the wanted one is the same end (the two
    // clocks are read a little apart each time).
    let present: BTreeMap<(u32, NetKey), u64> = manual
        .iter()
        .filter_map(Result::ok)
        .map(|(key, block)| ((key.prefix_len(), key.data()), block.expires_ns))
        .collect();
    for ((prefix_len, addr), block) in &wanted {
        let same = present.get(&(*prefix_len, *addr)).is_some_and(|&expires_ns| {
            (expires_ns == 0) == (block.expires_ns == 0)
                && expires_ns.abs_diff(block.expires_ns) < 1_000_000_000
        });
        if !same {
            manual.insert(&Key::new(*prefix_len, *addr), block, 0).context("adding a manual block")?;
        }
    }
    let count = wanted.len() as u32;
    let current = runtime.get(&RUNTIME_USER, 0)?;
    runtime.set(RUNTIME_USER, Runtime { manual_blocks: count.max(current.manual_blocks), ..current }, 0)?;
    for (prefix_len, addr) in present.keys() {
        if !wanted.contains_key(&(*prefix_len, *addr)) {
            manual.remove(&Key::new(*prefix_len, *addr)).context("removing a manual block")?;
        }
    }
    runtime.set(RUNTIME_USER, Runtime { manual_blocks: count, ..current }, 0)?;
    Ok(wanted.len())
}

/// Re-applies the saved blocks to every running attachment (and prunes expired ones), with
/// the CrowdSec decisions each enforces: the kernel holds both in `PG_MANUAL`.
pub fn sync_all(store: &BlockStore, interfaces: &[String]) -> Result<()> {
    for iface in interfaces {
        let decisions = crate::crowdsec::DecisionStore::load(iface)?.kernel_entries(iface, now_unix());
        let entries: Vec<&ManualEntry> = store.for_iface(iface).chain(&decisions).collect();
        sync_iface(iface, &entries).with_context(|| format!("applying manual blocks to {iface}"))?;
    }
    Ok(())
}

/// An automatic block in force (the kernel adds them for scans and trap ports, `unblock`
/// lifts them), as `stats` and `blocks` show it. Serialized as both print it in `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct ActiveBlock {
    /// The blocked address (a /32 or /128), or the IPv6 network blocked as one
    /// (`[scan_detection] ipv6_prefix`).
    pub network: IpNet,
    /// `scan`, `slow_scan`, `trap`, or for `[brute_force]` `rate_limit`, `connection_limit`
    /// and `recidive` (a repeat offender's longer block).
    pub cause: &'static str,
    /// Scans: how the source probed (`syn`, `udp`, ...).
    pub scan_kind: Option<&'static str>,
    /// Scans: the distinct refused ports that made the scan (estimated past the exact count).
    pub distinct_ports: Option<u32>,
    /// Trap ports: the one touched; limits: the limited one.
    pub protocol: Option<String>,
    pub port: Option<u16>,
    /// RFC 3339, UTC.
    pub added_at: String,
    pub expires_at: String,
    pub remaining_secs: u64,
}

impl ActiveBlock {
    /// The blocked address, or network (`2001:db8:5::/64`), for people.
    pub fn shown(&self) -> String {
        if self.network.prefix_len() == self.network.max_prefix_len() {
            self.network.addr().to_string()
        } else {
            self.network.to_string()
        }
    }

    /// What made it, for people: `syn scan, 20 ports`, `tcp/23`.
    pub fn detail(&self) -> String {
        match (&self.protocol, self.port) {
            (Some(protocol), Some(port)) => format!("{protocol}/{port}"),
            _ => format!(
                "{} {}, {} ports",
                self.scan_kind.unwrap_or("other"),
                if self.cause == "slow_scan" { "slow scan" } else { "scan" },
                self.distinct_ports.unwrap_or(0)
            ),
        }
    }
}

/// The network an automatic block's key and prefix length stand for.
pub fn auto_block_network(addr: [u8; 16], block: &AutoBlock) -> IpNet {
    network_of(addr, block.prefix_len)
}

/// The network a key of the automatic block tables and its prefix length stand for.
fn network_of(addr: [u8; 16], prefix_len: u8) -> IpNet {
    let ip = ip_of(addr);
    let len = match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => network_prefix(addr, prefix_len).unwrap_or(128),
    };
    IpNet::new(ip, len).expect("a valid prefix length")
}

/// Lifts the automatic blocks of `interfaces` that cover, or lie inside, `net` (a false
/// positive, say); returns how many. An IPv6 network blocked as one is lifted by naming any
/// address in it. `[brute_force]`'s memory of those sources goes too: an operator who lifts
/// a block does not want the next one doubled for it.
pub fn lift_automatic(net: &IpNet, interfaces: &[String]) -> Result<usize> {
    let mut lifted = 0;
    for iface in interfaces {
        let mut blocks: HashMap<MapData, [u8; 16], AutoBlock> =
            HashMap::try_from(open_pinned(iface, MAP_AUTO_BLOCK)?)?;
        let mut runtime: Array<MapData, Runtime> = Array::try_from(open_pinned(iface, MAP_RUNTIME)?)?;
        lifted += lift_automatic_in(&mut blocks, &mut runtime, net)?;
        let mut offenders: HashMap<MapData, [u8; 16], Offender> =
            HashMap::try_from(open_pinned(iface, MAP_OFFENDERS)?)?;
        forget_offenders_in(&mut offenders, net);
    }
    Ok(lifted)
}

/// Forgets the repeat offenders in `offenders` (keyed like automatic blocks) inside `net`.
pub fn forget_offenders_in<T: BorrowMut<MapData>>(
    offenders: &mut HashMap<T, [u8; 16], Offender>,
    net: &IpNet,
) {
    let entries: Vec<([u8; 16], Offender)> = offenders.iter().filter_map(Result::ok).collect();
    for (key, offender) in entries {
        let remembered = network_of(key, offender.prefix_len);
        if net.contains(&remembered) || remembered.contains(net) {
            let _ = offenders.remove(&key);
        }
    }
}

/// Lifts the automatic blocks in `blocks` that overlap `net` (one attachment's maps), and
/// tells the packet path so through `runtime`.
pub fn lift_automatic_in<T: BorrowMut<MapData>, U: BorrowMut<MapData>>(
    blocks: &mut HashMap<T, [u8; 16], AutoBlock>,
    runtime: &mut Array<U, Runtime>,
    net: &IpNet,
) -> Result<usize> {
    let entries: Vec<([u8; 16], AutoBlock)> = blocks.iter().filter_map(Result::ok).collect();
    let mut lifted = 0;
    for (key, block) in entries {
        let blocked = auto_block_network(key, &block);
        if (net.contains(&blocked) || blocked.contains(net)) && blocks.remove(&key).is_ok() {
            lifted += 1;
        }
    }
    if lifted > 0 {
        // The packet path's memo of a blocked source must not outlive its block.
        let current = runtime.get(&RUNTIME_USER, 0)?;
        let bumped = Runtime { auto_blocks_lifted: current.auto_blocks_lifted.wrapping_add(1), ..current };
        runtime.set(RUNTIME_USER, bumped, 0)?;
    }
    Ok(lifted)
}

/// The automatic blocks in force on `iface` (its pinned table), the soonest to end first.
pub fn automatic_blocks_on(iface: &str) -> Result<Vec<ActiveBlock>> {
    let map: HashMap<MapData, [u8; 16], AutoBlock> = HashMap::try_from(open_pinned(iface, MAP_AUTO_BLOCK)?)?;
    Ok(active_blocks(&map))
}

/// The automatic blocks in force in `map`, the soonest to end first.
pub fn active_blocks<T: std::borrow::Borrow<MapData>>(
    map: &HashMap<T, [u8; 16], AutoBlock>,
) -> Vec<ActiveBlock> {
    let clock = Clock::now();
    let now = kernel_now_ns();
    let at = |ns: u64| crate::output::rfc3339(clock.wall(ns));
    let mut blocks: Vec<ActiveBlock> = map
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, b)| b.expires_ns > now)
        .map(|(addr, b)| {
            // Trap and limit blocks name a port; scan blocks how the scan went.
            let trap = b.cause == CAUSE_TRAP || is_limit_cause(b.cause);
            ActiveBlock {
                network: auto_block_network(addr, &b),
                cause: cause_name(b.cause),
                scan_kind: (!trap).then(|| ScanKind::from_u8(b.kind).name()),
                distinct_ports: (!trap).then(|| block_scan_ports(b.port)),
                protocol: trap.then(|| protocol_name(b.kind)),
                port: trap.then_some(b.port),
                added_at: at(b.added_ns),
                expires_at: at(b.expires_ns),
                remaining_secs: (b.expires_ns - now).div_ceil(1_000_000_000),
            }
        })
        .collect();
    blocks.sort_by_key(|b| b.remaining_secs);
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automatic_blocks_are_structured_in_json_and_read_as_before_by_people() {
        let scan = ActiveBlock {
            network: "2001:db8:5::/64".parse().unwrap(),
            cause: "slow_scan",
            scan_kind: Some("syn"),
            distinct_ports: Some(39),
            protocol: None,
            port: None,
            added_at: "2027-01-15T08:00:00Z".into(),
            expires_at: "2027-01-15T08:15:00Z".into(),
            remaining_secs: 900,
        };
        assert_eq!(
            (scan.shown(), scan.detail()),
            ("2001:db8:5::/64".into(), "syn slow scan, 39 ports".into())
        );
        let trap = ActiveBlock {
            network: "192.0.2.66/32".parse().unwrap(),
            cause: "trap",
            scan_kind: None,
            distinct_ports: None,
            protocol: Some("tcp".into()),
            port: Some(23),
            ..scan
        };
        assert_eq!((trap.shown(), trap.detail()), ("192.0.2.66".into(), "tcp/23".into()));
        assert_eq!(
            serde_json::to_string(&trap).unwrap(),
            r#"{"network":"192.0.2.66/32","cause":"trap","scan_kind":null,"distinct_ports":null,"protocol":"tcp","port":23,"added_at":"2027-01-15T08:00:00Z","expires_at":"2027-01-15T08:15:00Z","remaining_secs":900}"#
        );
    }

    #[test]
    fn store_adds_replaces_removes_and_prunes() {
        let mut store = BlockStore::default();
        let net: IpNet = "203.0.113.0/24".parse().unwrap();
        let here = Netns::current();
        let block = |iface: Option<&str>, reason: Option<&str>, added, expires| ManualEntry {
            net,
            netns: here,
            iface: iface.map(str::to_owned),
            except: Vec::new(),
            reason: reason.map(str::to_owned),
            added,
            expires,
        };
        store.add(block(None, Some("a"), 1, Some(100)));
        store.add(block(None, Some("b"), 2, None));
        store.add(block(Some("eth1"), None, 3, Some(50)));
        assert_eq!(store.blocks.len(), 2);
        assert_eq!(store.blocks[0].reason.as_deref(), Some("b"));
        assert_eq!(store.for_iface("eth0").count(), 1);
        assert_eq!(store.for_iface("eth1").count(), 2);
        let expired = store.prune(60);
        assert_eq!(expired.len(), 1);
        // Lifted on one interface only: the block of every attachment stays for the others.
        assert_eq!(store.remove(&net, here, Some("eth9")), (1, true));
        assert_eq!(store.for_iface("eth9").count(), 0);
        assert_eq!(store.for_iface("eth0").count(), 1);
        assert_eq!(store.remove(&net, here, Some("eth9")), (0, false), "already lifted there");
        assert_eq!(store.remove(&net, here, None), (1, false));
        assert!(store.blocks.is_empty());
        let text = serde_json::to_string(&BlockStore {
            blocks: vec![entry(net, None, None, Some(Duration::from_secs(30)))],
        })
        .unwrap();
        let back: BlockStore = serde_json::from_str(&text).unwrap();
        assert_eq!(back.blocks[0].expires.unwrap() - back.blocks[0].added, 30);
    }

    #[test]
    fn blocks_stay_in_their_network_namespace() {
        let net: IpNet = "203.0.113.7/32".parse().unwrap();
        let other = Netns::Inode(4_026_532_999);
        let mut elsewhere = entry(net, None, None, None);
        elsewhere.netns = other;
        assert!(elsewhere.applies_in(other, "eth0"));
        assert!(!elsewhere.applies_in(Netns::Host, "eth0"), "not in another namespace");
        // Files written before namespaces were told apart hold the host's blocks.
        let old: ManualEntry = serde_json::from_str(r#"{"net":"203.0.113.7/32","added":1}"#).unwrap();
        assert!(old.applies_in(Netns::Host, "eth0") && !old.applies_in(other, "eth0"));
        let text = serde_json::to_string(&elsewhere).unwrap();
        assert!(text.contains(r#""netns":{"inode":4026532999}"#), "{text}");
        let mut store = BlockStore { blocks: vec![elsewhere, old] };
        assert_eq!(store.remove(&net, other, None), (1, false));
        assert_eq!(store.blocks.len(), 1, "the host's block stays");
    }

    #[test]
    fn kernel_keys_map_back_to_networks() {
        for text in
            ["203.0.113.0/24", "198.51.100.7/32", "0.0.0.0/0", "2001:db8:bad::/48", "::/0", "2001:db8::1/128"]
        {
            let net: IpNet = text.parse().unwrap();
            let (prefix_len, key) = net_key(&net);
            assert_eq!(net_of(prefix_len, &key), Some(net), "{text}");
        }
        assert_eq!(net_of(3, &NetKey::default()), None);
        assert_eq!(wall_secs(1_500_000_000, Duration::from_secs(100)), 102);
    }

    #[test]
    fn kernel_expiry_never_wraps() {
        let now = Duration::from_secs(1_800_000_000);
        assert_eq!(kernel_expiry(1_800_000_030, now, 5), Some(30_000_000_005));
        assert_eq!(kernel_expiry(1_800_000_000, now, 5), None, "ends now");
        assert_eq!(kernel_expiry(1, now, 5), None, "ended long ago");
        assert_eq!(kernel_expiry(u64::MAX, now, 5), Some(u64::MAX));
        let longest = now + durations::MAX;
        let expiry = kernel_expiry(longest.as_secs(), now, u64::MAX / 2).unwrap();
        assert_eq!(expiry, u64::MAX / 2 + durations::MAX.as_nanos() as u64);
        assert_eq!(kernel_expiry(longest.as_secs(), now, u64::MAX - 1), Some(u64::MAX));
        let entry = entry("203.0.113.0/24".parse().unwrap(), None, None, Some(durations::MAX));
        assert_eq!(entry.expires.unwrap() - entry.added, durations::MAX.as_secs());
    }
}
