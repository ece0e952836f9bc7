//! Protection: what guards the host now (attachments, their loaders and modes, the drops they
//! counted, and netfilter rules beside them).

use serde::Serialize;

use super::{Finding, Severity};
use crate::{
    loader,
    maps::{PinnedMaps, PortCount, top_ports},
    policy::Mode,
    state::{RunState, loader_running},
};

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

impl Attachment {
    pub fn mode_text(&self) -> &'static str {
        match self.mode {
            Some(Mode::Enforce) => "enforce",
            Some(Mode::Monitor) => "monitor",
            None => "unknown",
        }
    }
}

pub(super) fn protection(
    only: Option<&str>,
    findings: &mut Vec<Finding>,
) -> (Vec<Attachment>, Vec<PortCount>) {
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
