//! `portguard doctor`: what an operator wants to know at 3 a.m. Is the host ready for
//! portguard, what does it expose (listening sockets against the policy), and what protects it
//! now. Every finding has a severity and a one-line remedy.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use serde::Serialize;

pub mod html;

use crate::{
    loader,
    maps::{PinnedMaps, PortCount, top_ports},
    paths,
    policy::{self, LoadOptions, Mode, Policy, Proto, reach::Reach},
    services::{self, Kind, Recognised},
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
    /// `readiness`, `exposure`, `protection`, or `policy` (what `--policy FILE` would change
    /// from what is enforced now).
    pub category: &'static str,
    pub title: String,
    pub detail: String,
    pub remedy: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// `bpf_xdp`, `btf`, `bpffs`, `kernel`, `memlock`, `interface`.
    pub name: &'static str,
    /// The same for people: `BPF and XDP`.
    #[serde(skip)]
    pub label: &'static str,
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
    /// The service listening: known by its program, else by its port.
    pub service: Option<&'static str>,
    /// How `service` was recognised.
    pub recognised_by: Option<Recognised>,
    /// Bound to a non-loopback address: reachable from the network.
    pub reachable: bool,
    /// Whom what filters it now lets open a connection: `all`, `some` (sources the policy
    /// names) or `none` (monitor mode drops nothing: `all`).
    pub open_to: &'static str,
    /// What the policy in force does with connections from the network (`open`, `open to
    /// <networks>`, `blocked ...`, a trap); with nothing attached, what the audited policy would
    /// do once attached.
    pub policy: String,
    /// What `--policy FILE` would do instead, when it is not the policy in force.
    pub with_audited_policy: Option<String>,
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
    /// RFC 3339, UTC.
    pub generated_at: String,
    /// The policy the exposure audit used, if any: `--policy`, else the one in force.
    pub policy: Option<PathBuf>,
    /// Whether that policy is the one an attachment runs (else: what it would change).
    pub policy_enforced: bool,
    /// The policy an attachment enforces now, whose effect the findings describe.
    pub policy_in_force: Option<PathBuf>,
    pub summary: Summary,
    pub findings: Vec<Finding>,
    pub readiness: Vec<Check>,
    pub listening: Vec<Listening>,
    pub attachments: Vec<Attachment>,
    /// Most dropped ports, over every attachment.
    pub drops_by_port: Vec<PortCount>,
}

/// What a listener's severity is judged by: what reaches it now (the policy in force, or
/// nothing) and what the policy means to do with it (the policy in force, or the audited one
/// when nothing is attached).
///
/// Risky services are judged by what reaches them now: open to all is critical, open to some
/// networks high, and blocked medium, since only the policy stands between them and the
/// network. Remote login (SSH) closed to everyone is high: new sessions are refused, remote
/// administrators are locked out. Other services are judged by what the policy means to do:
/// open by intent is fine, open only by `default = "allow"` medium, closed low (something
/// listens that nobody may reach: probably not needed).
fn severity(reachable: bool, kind: Option<Kind>, now: &Reach, intended: Option<&Reach>) -> Severity {
    if !reachable {
        return Severity::Info;
    }
    match (kind, intended) {
        (Some(Kind::Risky), _) if now.to_all => Severity::Critical,
        (Some(Kind::Risky), _) if now.to_some => Severity::High,
        (Some(Kind::Risky), _) => Severity::Medium,
        (Some(Kind::RemoteLogin), Some(reach)) if !reach.to_some => Severity::High,
        (_, Some(reach)) if reach.by_default_allow => Severity::Medium,
        (_, Some(reach)) if reach.to_some => Severity::Info,
        (_, Some(_)) | (_, None) => Severity::Low,
    }
}

/// The policies the exposure audit weighs.
#[derive(Clone, Copy, Default)]
struct Policies<'a> {
    /// What an attachment enforces now, and its file.
    enforced: Option<(&'a Path, &'a Policy)>,
    /// `--policy FILE` when it is not what is enforced: shown as what it would change.
    audited: Option<(&'a Path, &'a Policy)>,
}

fn listening(sockets: &[Socket], policies: Policies, findings: &mut Vec<Finding>) -> Vec<Listening> {
    let owners = sockets::owners();
    let mut seen = std::collections::BTreeSet::new();
    let mut rows = Vec::new();
    for socket in sockets.iter().filter(|s| s.is_listening()) {
        let (proto, address, port) = (socket.proto, socket.local.ip(), socket.local.port());
        if !seen.insert((proto, address, port)) {
            continue;
        }
        let reachable = !address.is_loopback();
        let owner = owners.get(&socket.inode);
        let identified = services::identify(proto, port, owner);
        let kind = identified.map(|(service, _)| service.kind);
        let now = match policies.enforced {
            Some((_, policy)) => policy.reach(proto, port),
            None => Reach::open("nothing filters it (portguard is not attached)".into()),
        };
        let audited = policies.audited.map(|(_, policy)| policy.reach(proto, port));
        let intended = policies.enforced.map(|(_, policy)| policy.reach(proto, port)).or(audited.clone());
        let severity = severity(reachable, kind, &now, intended.as_ref());
        let policy_text = match (policies.enforced, &audited) {
            (None, Some(reach)) => format!("{} once attached; nothing filters it now", reach.text),
            _ => now.text.clone(),
        };
        let who = owner.map(|o| format!(" ({})", o.label())).unwrap_or_default();
        let name = identified.map(|(s, _)| format!("{} ", s.name)).unwrap_or_default();
        let title = format!("{name}{proto}/{port} listens on {address}{who}");
        let remedy = |closed_ssh: bool| match identified {
            Some((service, _))
                if service.kind != Kind::Ordinary && (closed_ssh || service.kind == Kind::Risky) =>
            {
                service.remedy.to_string()
            }
            _ => format!("close {proto}/{port} in the policy if nobody outside needs it"),
        };
        let lockout = |reach: &Reach| kind == Some(Kind::RemoteLogin) && !reach.to_some;
        if reachable && severity >= Severity::Medium {
            let closed_ssh = intended.as_ref().is_some_and(lockout);
            let consequence = if closed_ssh {
                ": new SSH connections are refused, remote administrators are locked out"
            } else {
                ""
            };
            findings.push(Finding {
                severity,
                category: "exposure",
                title: title.clone(),
                detail: format!("reachable from the network; policy: {policy_text}{consequence}"),
                remedy: remedy(closed_ssh),
            });
        }
        // What the audited policy would change, where it would make things worse.
        if let (Some((path, _)), Some(reach), true) =
            (policies.audited, &audited, policies.enforced.is_some())
        {
            let would = self::severity(reachable, kind, reach, Some(reach));
            if would > severity && would >= Severity::Medium {
                let consequence = if lockout(reach) {
                    ": new SSH connections would be refused, remote administrators locked out"
                } else {
                    ""
                };
                findings.push(Finding {
                    severity: would,
                    category: "policy",
                    title: format!("with {}: {title}", path.display()),
                    detail: format!(
                        "now: {}; with {}: {}{consequence}",
                        now.text,
                        path.display(),
                        reach.text
                    ),
                    remedy: remedy(lockout(reach)),
                });
            }
        }
        rows.push(Listening {
            protocol: proto,
            address,
            port,
            program: owner.map(sockets::Owner::label),
            service: identified.map(|(s, _)| s.name),
            recognised_by: identified.map(|(_, by)| by),
            reachable,
            open_to: match (now.to_all, now.to_some) {
                (true, _) => "all",
                (false, true) => "some",
                (false, false) => "none",
            },
            policy: policy_text,
            with_audited_policy: audited.map(|reach| reach.text),
            severity,
        });
    }
    rows.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.port.cmp(&b.port)));
    rows
}

fn readiness(findings: &mut Vec<Finding>) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut check = |(name, label): (&'static str, &'static str),
                     ok: bool,
                     detail: String,
                     severity: Severity,
                     remedy: &str| {
        if !ok {
            findings.push(Finding {
                severity,
                category: "readiness",
                title: format!("{label}: {detail}"),
                detail: detail.clone(),
                remedy: remedy.into(),
            });
        }
        checks.push(Check { name, label, ok, detail });
    };
    let bpf = aya::sys::is_program_supported(aya::programs::ProgramType::Xdp).unwrap_or(false);
    check(
        ("bpf_xdp", "BPF and XDP"),
        bpf,
        if bpf { "the kernel loads XDP programs".into() } else { "the kernel refuses XDP programs".into() },
        Severity::Critical,
        "run a kernel with CONFIG_BPF_SYSCALL and XDP, as root",
    );
    let btf = Path::new(paths::KERNEL_BTF).exists();
    check(
        ("btf", "BTF"),
        btf,
        if btf { format!("{} present", paths::KERNEL_BTF) } else { "no kernel BTF".into() },
        Severity::Low,
        "build the kernel with CONFIG_DEBUG_INFO_BTF",
    );
    let bpffs = nix::sys::statfs::statfs(paths::BPFFS).is_ok_and(|fs| fs.filesystem_type().0 == 0xcafe_4a11);
    check(
        ("bpffs", "bpffs"),
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
        ("kernel", "kernel"),
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
        ("memlock", "memlock"),
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
                let path = std::fs::read_link(paths::iface_driver(name)).ok()?;
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
        checks.push(Check {
            name: "interface",
            label: "interface",
            ok: other.is_none(),
            detail: format!("{name}: {detail}"),
        });
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
    let names = loader::attached_interfaces().unwrap_or_default();
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

/// The policy an attachment (the named one, else the first) enforces now, and `--policy` when
/// it is something else (another file, or the same file changed since it was attached).
struct Audit {
    enforced: Option<(PathBuf, Policy)>,
    audited: Option<(PathBuf, Policy)>,
}

fn audit_policies(options: &Options) -> Result<Audit> {
    let running: Vec<RunState> =
        RunState::all().into_iter().filter(|s| options.iface.is_none_or(|i| i == s.iface)).collect();
    let active = running.iter().find_map(|state| crate::manager::PolicySource::active(&state.iface).ok());
    let enforced = active.as_ref().and_then(|source| {
        source.load(LoadOptions::default()).ok().map(|loaded| (source.path.clone(), loaded.policy))
    });
    let Some(path) = options.policy else {
        return Ok(Audit { enforced, audited: None });
    };
    let text = crate::files::read_text_capped(path, crate::files::POLICY_MAX)
        .with_context(|| format!("reading {}", path.display()))?;
    let canonical = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_owned());
    let same = active.as_ref().is_some_and(|active| {
        enforced.is_some() && active.text == text && canonical(&active.path) == canonical(path)
    });
    if same {
        return Ok(Audit { enforced, audited: None });
    }
    let loaded = policy::parse(&text, path, LoadOptions::default())?;
    Ok(Audit { enforced, audited: Some((path.to_owned(), loaded.policy)) })
}

pub fn run(options: &Options) -> Result<Report> {
    let mut findings = Vec::new();
    let mut readiness = readiness(&mut findings);
    readiness.extend(interfaces(options.iface, &mut findings));
    let audit = audit_policies(options)?;
    let sockets = sockets::read_all()?;
    let policies = Policies { enforced: as_ref(&audit.enforced), audited: as_ref(&audit.audited) };
    let listening = listening(&sockets, policies, &mut findings);
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
        generated_at: crate::output::timestamp(),
        policy_enforced: audit.audited.is_none() && audit.enforced.is_some(),
        policy: audit.audited.as_ref().or(audit.enforced.as_ref()).map(|(path, _)| path.clone()),
        policy_in_force: audit.enforced.map(|(path, _)| path),
        summary: Summary { worst, counts },
        findings,
        readiness,
        listening,
        attachments,
        drops_by_port,
    })
}

fn as_ref(policy: &Option<(PathBuf, Policy)>) -> Option<(&Path, &Policy)> {
    policy.as_ref().map(|(path, policy)| (path.as_path(), policy))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severities() {
        let all = Reach::open("open".into());
        let some = Reach { to_all: false, ..Reach::open("open to".into()) };
        let none = Reach::closed("blocked".into());
        let by_default = Reach { by_default_allow: true, ..Reach::open("open (default allow)".into()) };
        let risky = Some(Kind::Risky);
        // Risky services: by what reaches them now.
        assert_eq!(severity(true, risky, &all, Some(&none)), Severity::Critical);
        assert_eq!(severity(true, risky, &some, Some(&some)), Severity::High);
        assert_eq!(severity(true, risky, &none, Some(&none)), Severity::Medium);
        assert_eq!(severity(false, risky, &all, None), Severity::Info);
        // Others: by what the policy means to do.
        assert_eq!(severity(true, None, &all, Some(&all)), Severity::Info);
        assert_eq!(severity(true, Some(Kind::Ordinary), &all, Some(&by_default)), Severity::Medium);
        assert_eq!(severity(true, None, &none, Some(&none)), Severity::Low);
        assert_eq!(severity(true, None, &all, None), Severity::Low);
        // SSH closed to everyone locks administrators out; open to some is what it should be.
        let ssh = Some(Kind::RemoteLogin);
        assert_eq!(severity(true, ssh, &none, Some(&none)), Severity::High);
        assert_eq!(
            severity(true, ssh, &all, Some(&none)),
            Severity::High,
            "closed by the policy about to be attached"
        );
        assert_eq!(severity(true, ssh, &some, Some(&some)), Severity::Info);
        assert_eq!(severity(false, ssh, &none, Some(&none)), Severity::Info);
    }
}
