//! The host: whether it can run portguard (kernel, BPF, bpffs, memlock) and how its interfaces
//! take XDP.

use std::path::Path;

use serde::Serialize;

use super::{Finding, Severity};
use crate::{loader, paths};

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// `bpf_xdp`, `btf`, `bpffs`, `kernel`, `memlock`, `cgroup2`, `interface`.
    pub name: &'static str,
    /// The same for people: `BPF and XDP`.
    #[serde(skip)]
    pub label: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// `caps_connections`: the policy in force or the one audited caps open connections
/// (`connections_per_source`), which needs a cgroup v2 hierarchy.
pub(super) fn readiness(findings: &mut Vec<Finding>, caps_connections: bool) -> Vec<Check> {
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
        .map_or(0, |(soft, _)| soft);
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
    let root = crate::conns::cgroup2_root().ok();
    let (ok, detail, severity) = cgroup2(root.as_deref(), caps_connections);
    check(
        ("cgroup2", "cgroup v2"),
        ok,
        detail,
        severity,
        "mount one (`mount -t cgroup2 none /sys/fs/cgroup`, or /sys/fs/cgroup/unified on hybrid hosts)",
    );
    checks
}

/// The cgroup v2 check: the connection caps' `sock_ops` program hangs on its root. Missing, it
/// matters only to a policy that caps connections (attach and reload refuse it): high then, a
/// note otherwise.
fn cgroup2(root: Option<&Path>, caps_connections: bool) -> (bool, String, Severity) {
    match root {
        Some(root) => (
            true,
            format!("mounted at {} (connections_per_source can count)", root.display()),
            Severity::Info,
        ),
        None => (
            false,
            "no cgroup v2 hierarchy is mounted: a policy with connections_per_source cannot be attached"
                .into(),
            if caps_connections { Severity::High } else { Severity::Info },
        ),
    }
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

pub(super) fn interfaces(only: Option<&str>, findings: &mut Vec<Finding>) -> Vec<Check> {
    // `ip -j -d link` answers for the current network namespace (sysfs may show another one).
    let listed = std::process::Command::new("ip")
        .args(["-j", "-d", "link", "show"])
        .output()
        .map_err(|error| format!("`ip` could not run ({error}); is iproute2 installed?"))
        .and_then(|output| {
            serde_json::from_slice::<Vec<serde_json::Value>>(&output.stdout).map_err(|_| {
                format!("`ip -j -d link show` failed: {}", String::from_utf8_lossy(&output.stderr).trim())
            })
        });
    let links = match listed {
        Ok(links) => links,
        // Say so rather than list no interface (a container image without iproute2).
        Err(why) => {
            return vec![Check {
                name: "interface",
                label: "interface",
                ok: false,
                detail: format!("not checked: {why}"),
            }];
        }
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_cgroup2_is_a_note_unless_the_policy_caps_connections() {
        assert_eq!(cgroup2(None, false).2, Severity::Info);
        assert_eq!(cgroup2(None, true).2, Severity::High);
        assert!(!cgroup2(None, true).0);
        assert!(cgroup2(None, false).1.contains("connections_per_source cannot be attached"));
        let (ok, detail, _) = cgroup2(Some(Path::new("/sys/fs/cgroup")), true);
        assert!(ok && detail.starts_with("mounted at /sys/fs/cgroup"), "{detail}");
        // This host: the check is there and a finding exactly when it fails.
        let mut findings = Vec::new();
        let checks = readiness(&mut findings, true);
        let check = checks.iter().find(|c| c.name == "cgroup2").expect("a cgroup2 check");
        assert_eq!(check.ok, crate::conns::cgroup2_root().is_ok());
        assert_eq!(findings.iter().any(|f| f.title.starts_with("cgroup v2")), !check.ok);
    }
}
