//! `portguard doctor`: what an operator wants to know at 3 a.m. Is the host ready for
//! portguard, what does it expose (listening sockets against the policy), and what protects it
//! now. Every finding has a severity and a one-line remedy.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::Result;
use ipnet::IpNet;
use serde::Serialize;

pub mod html;

use crate::{
    loader,
    maps::{PinnedMaps, PortCount, top_ports},
    paths,
    policy::{self, Action, LoadOptions, Mode, Policy, Proto, RuleKind},
    sockets::{self, Socket},
    state::{RunState, loader_running},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// `readiness`, `exposure` or `protection`.
    pub category: &'static str,
    pub title: String,
    pub detail: String,
    pub remedy: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// A socket the host listens on, and what the policy makes of it.
#[derive(Clone, Debug, Serialize)]
pub struct Listening {
    pub protocol: Proto,
    pub address: IpAddr,
    pub port: u16,
    /// The program holding the socket, if it can be found.
    pub program: Option<String>,
    /// A well-known service on this port, if any.
    pub service: Option<&'static str>,
    /// Bound to a non-loopback address: reachable from the network.
    pub reachable: bool,
    /// `open`, `open to <networks>`, `blocked`, `trap`, `monitor only`, `no policy`.
    pub policy: String,
    pub severity: Severity,
}

#[derive(Clone, Debug, Serialize)]
pub struct Attachment {
    pub interface: String,
    pub loader_running: bool,
    pub mode: Option<Mode>,
    pub xdp_mode: Option<String>,
    pub generation: Option<u64>,
    pub packets: u64,
    pub dropped: u64,
    pub active_blocks: usize,
}

impl Listening {
    /// Worth a colour in the report: reachable and at least a medium finding.
    pub fn is_concern(&self) -> bool {
        self.reachable && self.severity >= Severity::Medium
    }
}

impl Attachment {
    pub fn mode_text(&self) -> &'static str {
        match self.mode {
            Some(Mode::Enforce) => "enforce",
            Some(Mode::Monitor) => "monitor",
            None => "unknown",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub worst: Severity,
    pub counts: BTreeMap<&'static str, usize>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub host: String,
    pub kernel: String,
    pub generated: String,
    /// The policy the exposure audit used, if any.
    pub policy: Option<PathBuf>,
    /// Whether that policy is the one an attachment runs (else: what it would do once attached).
    pub policy_enforced: bool,
    pub summary: Summary,
    pub findings: Vec<Finding>,
    pub readiness: Vec<Check>,
    pub listening: Vec<Listening>,
    pub attachments: Vec<Attachment>,
    /// Most dropped ports, over every attachment.
    pub drops_by_port: Vec<PortCount>,
}

/// High-risk services: (port, protocol, name, remedy).
const RISKY: &[(u16, Proto, &str, &str)] = &[
    (21, Proto::Tcp, "FTP", "use SFTP; if FTP must stay, allow it only `from` the networks that need it"),
    (23, Proto::Tcp, "telnet", "stop telnetd and use SSH"),
    (111, Proto::Tcp, "rpcbind", "stop rpcbind unless NFS needs it, and never expose it"),
    (135, Proto::Tcp, "MS RPC", "do not expose RPC endpoints"),
    (139, Proto::Tcp, "NetBIOS", "do not expose NetBIOS"),
    (445, Proto::Tcp, "SMB", "never expose SMB to untrusted networks"),
    (1433, Proto::Tcp, "MS SQL Server", "bind the database to localhost or a private network"),
    (2375, Proto::Tcp, "Docker API (plain)", "never expose the Docker API without TLS; bind it to a socket"),
    (2379, Proto::Tcp, "etcd", "bind etcd to private addresses and require client certificates"),
    (3306, Proto::Tcp, "MySQL", "bind MySQL to 127.0.0.1 (bind-address) or allow it only `from` app servers"),
    (3389, Proto::Tcp, "RDP", "reach RDP through a VPN, never directly"),
    (5432, Proto::Tcp, "PostgreSQL", "set listen_addresses to localhost or allow it only `from` app servers"),
    (5900, Proto::Tcp, "VNC", "tunnel VNC over SSH"),
    (5984, Proto::Tcp, "CouchDB", "bind CouchDB to localhost"),
    (6379, Proto::Tcp, "Redis", "bind Redis to 127.0.0.1 and set requirepass"),
    (9092, Proto::Tcp, "Kafka", "bind Kafka listeners to private addresses"),
    (9200, Proto::Tcp, "Elasticsearch", "bind Elasticsearch to localhost (network.host)"),
    (11211, Proto::Tcp, "memcached", "bind memcached to 127.0.0.1 (-l)"),
    (11211, Proto::Udp, "memcached (UDP, amplification)", "disable memcached UDP (-U 0)"),
    (27017, Proto::Tcp, "MongoDB", "bind MongoDB to localhost (bindIp) and enable authentication"),
    (1900, Proto::Udp, "SSDP (amplification)", "disable UPnP/SSDP on servers"),
    (161, Proto::Udp, "SNMP", "allow SNMP only `from` the monitoring network"),
];

/// Well-known, ordinary services: named in the report, not risky by themselves.
const KNOWN: &[(u16, Proto, &str)] = &[
    (22, Proto::Tcp, "SSH"),
    (25, Proto::Tcp, "SMTP"),
    (53, Proto::Udp, "DNS"),
    (53, Proto::Tcp, "DNS"),
    (80, Proto::Tcp, "HTTP"),
    (123, Proto::Udp, "NTP"),
    (443, Proto::Tcp, "HTTPS"),
    (8080, Proto::Tcp, "HTTP (alt)"),
];

fn risky(proto: Proto, port: u16) -> Option<(&'static str, &'static str)> {
    RISKY.iter().find(|(p, pr, _, _)| *p == port && *pr == proto).map(|(_, _, name, remedy)| (*name, *remedy))
}

fn service(proto: Proto, port: u16) -> Option<&'static str> {
    risky(proto, port)
        .map(|(name, _)| name)
        .or_else(|| KNOWN.iter().find(|(p, pr, _)| *p == port && *pr == proto).map(|(_, _, n)| *n))
}

/// What the policy does with a connection attempt to `port` from somewhere on the network.
fn verdict(policy: &Policy, proto: Proto, port: u16) -> Reach {
    let traps = match proto {
        Proto::Tcp => &policy.trap_ports.tcp,
        Proto::Udp => &policy.trap_ports.udp,
    };
    let naming: Vec<_> = policy
        .rules
        .iter()
        .filter(|r| r.proto == proto && r.ports.iter().any(|p| p.contains(&port)))
        .collect();
    let reach = if traps.iter().any(|r| r.contains(&port)) {
        Reach::closed("a trap port (blocked, and whoever tries is blocked)".into())
    } else if let Some(rule) = naming.iter().find(|r| r.kind == RuleKind::Deny) {
        Reach::closed(format!("blocked by {}", rule.label()))
    } else if let Some(rule) = naming.iter().find(|r| r.kind == RuleKind::Allow && r.from.is_none()) {
        Reach::open(format!("open by {}", rule.label()))
    } else if naming.iter().any(|r| r.kind == RuleKind::Allow) {
        let nets: Vec<String> =
            naming.iter().filter_map(|r| r.from.as_ref()).flatten().map(IpNet::to_string).collect();
        Reach { text: format!("open to {}", nets.join(", ")), to_all: false, to_some: true }
    } else if policy.default == Action::Allow {
        Reach::open("open (default allow)".into())
    } else {
        Reach::closed("blocked (default deny)".into())
    };
    if policy.mode == Mode::Monitor && !reach.to_all {
        return Reach::open(format!("{}, but monitor mode drops nothing", reach.text));
    }
    reach
}

/// Who can reach a port under a policy.
#[derive(Clone, Debug)]
struct Reach {
    text: String,
    to_all: bool,
    /// Some sources at least (all of them when `to_all`).
    to_some: bool,
}

impl Reach {
    fn open(text: String) -> Self {
        Self { text, to_all: true, to_some: true }
    }

    fn closed(text: String) -> Self {
        Self { text, to_all: false, to_some: false }
    }
}

/// How bad a listening socket is. Risky services are judged by what reaches them now (the
/// policy in force, or nothing): open to all is critical, open to some networks high, and
/// blocked medium, since only the policy stands between them and the network. Other services
/// are judged by what the audited policy means to do with them.
fn severity(reachable: bool, risky: bool, now: &Reach, intended: Option<&Reach>) -> Severity {
    match (reachable, risky) {
        (false, _) => Severity::Info,
        (true, true) if now.to_all => Severity::Critical,
        (true, true) if now.to_some => Severity::High,
        (true, true) => Severity::Medium,
        (true, false) => match intended {
            Some(reach) if reach.text.starts_with("open (default allow)") => Severity::Medium,
            Some(reach) if reach.to_some => Severity::Info,
            // Something listens that the policy keeps everyone from: likely not needed.
            Some(_) => Severity::Low,
            None => Severity::Low,
        },
    }
}

/// Which program holds each socket inode (reading /proc/*/fd; best effort).
fn programs() -> BTreeMap<u64, String> {
    let mut owners = BTreeMap::new();
    let Ok(processes) = std::fs::read_dir("/proc") else { return owners };
    for process in processes.filter_map(|e| e.ok()) {
        let Ok(pid) = process.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|c| c.trim().to_string())
            .unwrap_or_default();
        for fd in fds.filter_map(|e| e.ok()) {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let target = target.to_string_lossy();
                if let Some(inode) = target.strip_prefix("socket:[").and_then(|t| t.strip_suffix(']')) {
                    if let Ok(inode) = inode.parse() {
                        owners.entry(inode).or_insert_with(|| format!("{name} (pid {pid})"));
                    }
                }
            }
        }
    }
    owners
}

/// `policy`: the audited policy and whether an attachment enforces it.
fn listening(
    sockets: &[Socket],
    policy: Option<(&Policy, bool)>,
    findings: &mut Vec<Finding>,
) -> Vec<Listening> {
    let owners = programs();
    let mut seen = std::collections::BTreeSet::new();
    let mut rows = Vec::new();
    for socket in sockets.iter().filter(|s| s.is_listening()) {
        let (proto, address, port) = (socket.proto, socket.local.ip(), socket.local.port());
        if !seen.insert((proto, address, port)) {
            continue;
        }
        let reachable = !address.is_loopback();
        let program = owners.get(&socket.inode).cloned();
        let risk = risky(proto, port);
        let intended = policy.map(|(policy, _)| verdict(policy, proto, port));
        let enforced = policy.is_some_and(|(_, enforced)| enforced);
        let nothing = Reach::open("nothing filters it (portguard is not attached)".into());
        let now = if enforced { intended.clone().unwrap_or(nothing) } else { nothing };
        let severity = severity(reachable, risk.is_some(), &now, intended.as_ref());
        let policy_text = match (&intended, enforced) {
            (Some(reach), true) => reach.text.clone(),
            (Some(reach), false) => format!("{} once attached; nothing filters it now", reach.text),
            (None, _) => now.text.clone(),
        };
        let who = program.as_deref().map(|p| format!(" ({p})")).unwrap_or_default();
        let name = service(proto, port).map(|s| format!("{s} ")).unwrap_or_default();
        if reachable && severity >= Severity::Medium {
            let remedy = match risk {
                Some((_, remedy)) => remedy.to_string(),
                None => format!("close {proto}/{port} in the policy if nobody outside needs it"),
            };
            findings.push(Finding {
                severity,
                category: "exposure",
                title: format!("{name}{proto}/{port} listens on {address}{who}"),
                detail: format!("reachable from the network; policy: {policy_text}"),
                remedy,
            });
        }
        rows.push(Listening {
            protocol: proto,
            address,
            port,
            program,
            service: service(proto, port),
            reachable,
            policy: policy_text,
            severity,
        });
    }
    rows.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.port.cmp(&b.port)));
    rows
}

fn readiness(findings: &mut Vec<Finding>) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut check = |name: &'static str, ok: bool, detail: String, severity: Severity, remedy: &str| {
        if !ok {
            findings.push(Finding {
                severity,
                category: "readiness",
                title: format!("{name}: {detail}"),
                detail: detail.clone(),
                remedy: remedy.into(),
            });
        }
        checks.push(Check { name, ok, detail });
    };
    let bpf = aya::sys::is_program_supported(aya::programs::ProgramType::Xdp).unwrap_or(false);
    check(
        "BPF and XDP",
        bpf,
        if bpf { "the kernel loads XDP programs".into() } else { "the kernel refuses XDP programs".into() },
        Severity::Critical,
        "run a kernel with CONFIG_BPF_SYSCALL and XDP, as root",
    );
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    check(
        "BTF",
        btf,
        if btf { "/sys/kernel/btf/vmlinux present".into() } else { "no kernel BTF".into() },
        Severity::Low,
        "build the kernel with CONFIG_DEBUG_INFO_BTF",
    );
    let bpffs = nix::sys::statfs::statfs(paths::BPFFS).is_ok_and(|fs| fs.filesystem_type().0 == 0xcafe_4a11);
    check(
        "bpffs",
        bpffs,
        if bpffs {
            format!("mounted at {}", paths::BPFFS)
        } else {
            format!("not mounted at {} (attach mounts it)", paths::BPFFS)
        },
        Severity::Info,
        "mount -t bpf bpf /sys/fs/bpf",
    );
    let kernel =
        nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    let version: Vec<u32> = kernel.split(['.', '-']).take(2).filter_map(|p| p.parse().ok()).collect();
    let tcx = version.len() == 2 && (version[0], version[1]) >= (6, 6);
    check(
        "kernel",
        tcx,
        if tcx {
            format!("{kernel} (TCX links: yes)")
        } else {
            format!("{kernel}: older than 6.6, no TCX links for the egress program")
        },
        Severity::High,
        "run Linux 6.6 or newer",
    );
    let memlock = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK)
        .map(|(soft, _)| soft)
        .unwrap_or(0);
    let memlock_ok =
        memlock == libc::RLIM_INFINITY || version.len() == 2 && (version[0], version[1]) >= (5, 11);
    check(
        "memlock",
        memlock_ok,
        if memlock == libc::RLIM_INFINITY {
            "unlimited".into()
        } else {
            format!("{memlock} bytes (kernels >= 5.11 do not charge BPF maps to it)")
        },
        Severity::Medium,
        "LimitMEMLOCK=infinity in the service",
    );
    checks
}

/// Drivers with native XDP support (the common ones).
const NATIVE_XDP: &[&str] = &[
    "veth",
    "virtio_net",
    "mlx5_core",
    "mlx4_en",
    "i40e",
    "ice",
    "ixgbe",
    "igb",
    "igc",
    "bnxt_en",
    "ena",
    "nfp",
    "qede",
    "tun",
    "xen-netfront",
    "hv_netvsc",
    "gve",
    "idpf",
    "stmmac",
    "fec",
    "mvneta",
    "mvpp2",
    "sfc",
    "thunder",
    "bond",
    "netdevsim",
];

fn interfaces(only: Option<&str>, findings: &mut Vec<Finding>) -> Vec<Check> {
    // `ip -j -d link` answers for the current network namespace (sysfs may show another one).
    let links: Vec<serde_json::Value> = std::process::Command::new("ip")
        .args(["-j", "-d", "link", "show"])
        .output()
        .ok()
        .and_then(|output| serde_json::from_slice(&output.stdout).ok())
        .unwrap_or_default();
    let mut checks = Vec::new();
    for link in &links {
        let Some(name) = link["ifname"].as_str() else { continue };
        if name == "lo" || only.is_some_and(|o| o != name) {
            continue;
        }
        let driver = link["linkinfo"]["info_kind"]
            .as_str()
            .map(str::to_string)
            .or_else(|| {
                let path = std::fs::read_link(format!("/sys/class/net/{name}/device/driver")).ok()?;
                Some(path.file_name()?.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let native = NATIVE_XDP.contains(&driver.as_str());
        let mut detail =
            format!("driver {driver}: {}", if native { "native XDP" } else { "generic XDP only (slower)" });
        let other = attached_xdp_program(link).filter(|_| !loader::is_attached(name));
        if let Some(program) = &other {
            detail.push_str(&format!("; another XDP program ({program}) is attached"));
            findings.push(Finding {
                severity: Severity::Medium,
                category: "readiness",
                title: format!("{name} already has an XDP program ({program})"),
                detail: "portguard cannot attach beside it (one XDP slot per interface)".into(),
                remedy: format!("remove it (`ip link set dev {name} xdp off`) or attach portguard elsewhere"),
            });
        }
        if !native {
            findings.push(Finding {
                severity: Severity::Info,
                category: "readiness",
                title: format!("{name}: generic XDP only ({driver})"),
                detail: "portguard works in generic mode, at a lower packet rate".into(),
                remedy: "use a NIC and driver with native XDP for line rate".into(),
            });
        }
        checks.push(Check { name: "interface", ok: other.is_none(), detail: format!("{name}: {detail}") });
    }
    checks
}

/// The XDP program on a link (from `ip -j -d link`), if any: name and id.
fn attached_xdp_program(link: &serde_json::Value) -> Option<String> {
    let xdp = &link["xdp"];
    let prog = if xdp["prog"].is_object() { &xdp["prog"] } else { &xdp["attached"][0]["prog"] };
    let id = prog["id"].as_u64()?;
    Some(format!("{} id {id}", prog["name"].as_str().unwrap_or("?")))
}

fn protection(only: Option<&str>, findings: &mut Vec<Finding>) -> (Vec<Attachment>, Vec<PortCount>) {
    let mut attachments = Vec::new();
    let mut drops = vec![0u64; portguard_common::maps::PORT_TABLE_LEN as usize];
    let names = loader::attached_interfaces();
    for iface in names.into_iter().filter(|n| only.is_none_or(|o| o == n)) {
        let state = RunState::read(&iface);
        let running = loader_running(&iface);
        let maps = PinnedMaps::open(&iface).ok();
        let counters = maps.as_ref().and_then(|m| m.counters().ok());
        if let Some(maps) = &maps {
            for (sum, value) in drops.iter_mut().zip(maps.port_drops.snapshot()) {
                *sum += value;
            }
        }
        let blocks = maps.as_ref().map_or(0, |m| crate::blocks::active_blocks(&m.auto_blocks).len());
        let problem = crate::links::Inspection::of(&iface)
            .map_or_else(|error| Some(format!("{error:#}")), |found| found.problem(&iface));
        if let Some(problem) = problem {
            findings.push(Finding {
                severity: Severity::High,
                category: "protection",
                title: format!("{iface}: NOT PROTECTED"),
                detail: problem,
                remedy: if running {
                    format!("its loader attaches again as soon as {iface} exists")
                } else {
                    format!("`portguard attach {iface} --policy FILE` attaches afresh")
                },
            });
        } else if !running {
            findings.push(Finding {
                severity: Severity::Medium,
                category: "protection",
                title: format!("{iface}: the loader is not running"),
                detail: "the pinned programs still enforce, but nobody reads events, sweeps blocks or serves metrics".into(),
                remedy: format!("start it again (`portguard attach {iface} ...` adopts the programs) or `systemctl restart portguard@{iface}`"),
            });
        }
        if state.as_ref().is_some_and(|s| s.mode == Mode::Monitor) {
            findings.push(Finding {
                severity: Severity::Medium,
                category: "protection",
                title: format!("{iface}: monitor mode"),
                detail: "the policy is counted, nothing is dropped".into(),
                remedy: "set mode = \"enforce\" once the counters look right".into(),
            });
        }
        attachments.push(Attachment {
            interface: iface,
            loader_running: running,
            mode: state.as_ref().map(|s| s.mode),
            xdp_mode: state.as_ref().map(|s| s.xdp_mode.to_string()),
            generation: state.as_ref().map(|s| s.generation),
            packets: counters.as_ref().map_or(0, |c| c.total().packets),
            dropped: counters.as_ref().map_or(0, |c| c.dropped().packets),
            active_blocks: blocks,
        });
    }
    if attachments.is_empty() {
        findings.push(Finding {
            severity: Severity::Medium,
            category: "protection",
            title: "portguard is not attached".into(),
            detail: "nothing filters inbound traffic at XDP on this host".into(),
            remedy: "portguard attach IFACE --policy FILE (or systemctl enable --now portguard@IFACE)".into(),
        });
    }
    for (tool, args, pattern) in
        [("nft", &["list", "ruleset"][..], "chain "), ("iptables-save", &[][..], "-A ")]
    {
        let Ok(output) = std::process::Command::new(tool).args(args).output() else { continue };
        let rules = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| l.trim_start().starts_with(pattern))
            .count();
        if rules > 0 {
            findings.push(Finding {
                severity: Severity::Info,
                category: "protection",
                title: format!("{tool}: {rules} {} present", if tool == "nft" { "chains" } else { "rules" }),
                detail: "netfilter sees what portguard passes, after it: its rules can shadow or duplicate the policy".into(),
                remedy: "keep one source of truth for the port policy".into(),
            });
        }
    }
    (attachments, top_ports(&drops, 10))
}

pub struct Options<'a> {
    pub policy: Option<&'a Path>,
    pub iface: Option<&'a str>,
}

/// The policy to audit against: the one given, or the one the (named) attachment runs; and
/// whether an attachment runs it.
fn audit_policy(options: &Options) -> Result<Option<(PathBuf, Policy, bool)>> {
    let running: Vec<RunState> =
        RunState::all().into_iter().filter(|s| options.iface.is_none_or(|i| i == s.iface)).collect();
    if let Some(path) = options.policy {
        let loaded = policy::load(path, LoadOptions::default())?;
        let canonical = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_owned());
        let enforced = running.iter().any(|s| canonical(&s.policy) == canonical(path));
        return Ok(Some((path.to_owned(), loaded.policy, enforced)));
    }
    for state in running {
        if let Ok(source) = crate::manager::PolicySource::active(&state.iface) {
            if let Ok(loaded) = source.load(LoadOptions::default()) {
                return Ok(Some((source.path, loaded.policy, true)));
            }
        }
    }
    Ok(None)
}

pub fn run(options: &Options) -> Result<Report> {
    let mut findings = Vec::new();
    let mut readiness = readiness(&mut findings);
    readiness.extend(interfaces(options.iface, &mut findings));
    let policy = audit_policy(options)?;
    let sockets = sockets::read_all()?;
    let listening =
        listening(&sockets, policy.as_ref().map(|(_, p, enforced)| (p, *enforced)), &mut findings);
    let (attachments, drops_by_port) = protection(options.iface, &mut findings);
    findings.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.title.cmp(&b.title)));
    let mut counts = BTreeMap::new();
    for severity in [Severity::Critical, Severity::High, Severity::Medium, Severity::Low, Severity::Info] {
        counts.insert(severity.name(), findings.iter().filter(|f| f.severity == severity).count());
    }
    let worst = findings.iter().map(|f| f.severity).max().unwrap_or(Severity::Info);
    Ok(Report {
        host: nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default(),
        kernel: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        generated: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        policy_enforced: policy.as_ref().is_some_and(|(_, _, enforced)| *enforced),
        policy: policy.map(|(path, _, _)| path),
        summary: Summary { worst, counts },
        findings,
        readiness,
        listening,
        attachments,
        drops_by_port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> Policy {
        policy::parse(text, Path::new("p.toml"), LoadOptions::default()).unwrap().policy
    }

    #[test]
    fn what_the_policy_does_with_a_port() {
        let p = policy(
            "default = \"deny\"\n[[allow]]\nproto = \"tcp\"\nports = [8080]\n[[allow]]\nproto = \"tcp\"\nports = [22]\nfrom = [\"198.51.100.0/24\"]\n[trap_ports]\ntcp = [23]\n",
        );
        let reach = |port| verdict(&p, Proto::Tcp, port);
        assert!(reach(8080).to_all && reach(8080).text.starts_with("open by rule 1"));
        assert!(!reach(22).to_all && reach(22).to_some && reach(22).text == "open to 198.51.100.0/24");
        assert!(!reach(23).to_some && reach(23).text.contains("trap port"));
        assert!(!reach(3306).to_some && reach(3306).text == "blocked (default deny)");
        assert!(verdict(&p, Proto::Udp, 8080).text == "blocked (default deny)");

        let monitor = policy("mode = \"monitor\"\ndefault = \"deny\"\n[trap_ports]\ntcp = [23]\n");
        let trap = verdict(&monitor, Proto::Tcp, 23);
        assert!(trap.to_all && trap.text.ends_with("but monitor mode drops nothing"), "{trap:?}");
        let open = policy("default = \"allow\"\n[[deny]]\nproto = \"tcp\"\nports = [23]\n");
        assert!(verdict(&open, Proto::Tcp, 3306).to_all);
        assert!(verdict(&open, Proto::Tcp, 23).text.starts_with("blocked by rule 1"));
    }

    #[test]
    fn severities() {
        let (all, some, none) = (
            Reach::open("open".into()),
            Reach { text: "open to".into(), to_all: false, to_some: true },
            Reach::closed("blocked".into()),
        );
        // Risky services: by what reaches them now.
        assert_eq!(severity(true, true, &all, Some(&none)), Severity::Critical);
        assert_eq!(severity(true, true, &some, Some(&some)), Severity::High);
        assert_eq!(severity(true, true, &none, Some(&none)), Severity::Medium);
        assert_eq!(severity(false, true, &all, None), Severity::Info);
        // Others: by what the policy means to do.
        assert_eq!(severity(true, false, &all, Some(&all)), Severity::Info);
        assert_eq!(
            severity(true, false, &all, Some(&Reach::open("open (default allow)".into()))),
            Severity::Medium
        );
        assert_eq!(severity(true, false, &none, Some(&none)), Severity::Low);
        assert_eq!(severity(true, false, &all, None), Severity::Low);
    }
}
