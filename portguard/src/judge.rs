//! Running the real kernel program on crafted or captured frames with `BPF_PROG_TEST_RUN`:
//! no interface is involved. Used by the tests (parser and verdict checks) and by anything
//! that replays traffic against a policy before it is attached.

use anyhow::{Context as _, Result, bail};
use std::os::fd::AsFd as _;

use aya::{
    Ebpf,
    maps::{Map, PerCpuArray},
    programs::{SchedClassifier, TestRun as _, TestRunOptions, Xdp},
};
use portguard_common::{
    Counter, Reason,
    counters::{
        ALL_REASONS, MONITOR_BASE, OBS_FRAGMENT_FIRST, OBS_FRAGMENT_LATER, OBS_VLAN_SINGLE, OBS_VLAN_STACKED,
    },
    maps::{
        ConnKey, EventBudget, MAP_CONNS, MAP_COUNTERS, MAP_EVENT_BUDGET, MAP_PORT_DROPS,
        MAP_RULE_CONN_LIMITED, MAP_RULE_LIMITED,
    },
};

use crate::{
    events::Grants,
    loader::{self, TC_EGRESS_PROGRAM, XDP_PROGRAM},
    maps::{Counters, PortDrops, read_counters, read_rule_limited},
    policy::{Policy, Proto, compile::MapImage},
};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// What the kernel program did with one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The XDP action returned.
    pub action: u32,
    /// The verdict counted.
    pub reason: Reason,
    /// The verdict was a drop that monitor mode only counted.
    pub monitored: bool,
    pub fragment_first: bool,
    pub fragment_later: bool,
    pub vlan_single: bool,
    pub vlan_stacked: bool,
    /// The frame came back as it went in (portguard never rewrites packets).
    pub unchanged: bool,
}

impl Outcome {
    pub fn dropped(&self) -> bool {
        self.action == XDP_DROP
    }
}

/// One loaded policy generation, not attached anywhere.
pub struct Judge {
    ebpf: Ebpf,
    port_drops: PortDrops,
}

impl Judge {
    pub fn new(image: &MapImage, policy: &Policy) -> Result<Self> {
        let ebpf = loader::load(image, policy, None)?;
        let port_drops = match ebpf.map(MAP_PORT_DROPS) {
            Some(Map::Array(data)) => PortDrops::map(data.fd().as_fd(), data.info()?.max_entries())?,
            _ => bail!("no {MAP_PORT_DROPS} array"),
        };
        let mut judge = Self { ebpf, port_drops };
        // No reader refills the budget here: one second's worth of drop events, and automatic
        // blocks without limit (the limit is per second of real time, which a replay does not
        // have).
        judge
            .grant(Grants { drop_events: policy.events.drop_events_per_second, new_blocks: u32::MAX / 2 })?;
        Ok(judge)
    }

    /// Sets what the packet path may still spend (as the loader's one-second tick would).
    pub fn grant(&mut self, grants: Grants) -> Result<()> {
        let mut budget: PerCpuArray<_, EventBudget> =
            PerCpuArray::try_from(self.ebpf.map_mut(MAP_EVENT_BUDGET).context("no event budget map")?)?;
        crate::events::refill_budget(&mut budget, grants)
    }

    /// Drops counted for a destination port so far.
    pub fn port_drops(&self, proto: Proto, port: u16) -> u64 {
        self.port_drops.get(proto, port)
    }

    /// Drops counted over every port so far.
    pub fn port_drops_total(&self) -> u64 {
        self.port_drops.total()
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    pub fn counters(&self) -> Result<Counters> {
        let map = self.ebpf.map(MAP_COUNTERS).context("no counter map")?;
        read_counters(&PerCpuArray::<_, Counter>::try_from(map)?)
    }

    /// Attempts each limited rule refused so far, by counter slot.
    pub fn rule_limited(&self) -> Result<Vec<u64>> {
        let map = self.ebpf.map(MAP_RULE_LIMITED).context("no per-rule limit counters")?;
        read_rule_limited(&PerCpuArray::<_, u64>::try_from(map)?)
    }

    /// Says that the source network `addr` (an IPv4-mapped address, or an IPv6 network's
    /// address cut to the policy's `ipv6_prefix`) holds `count` open connections on the capped
    /// rule whose `RuleLimit::conn_rule` is `conn_rule`: what the `sock_ops` program would have
    /// counted (nothing runs it here).
    pub fn hold_connections(&mut self, addr: [u8; 16], conn_rule: u32, count: u64) -> Result<()> {
        let mut counts: aya::maps::HashMap<_, ConnKey, u64> =
            aya::maps::HashMap::try_from(self.ebpf.map_mut(MAP_CONNS).context("no connection counts")?)?;
        counts.insert(ConnKey { addr, conn_rule, _pad: 0 }, count, 0).context(MAP_CONNS)?;
        Ok(())
    }

    /// Connection attempts each capped rule refused so far, by counter slot.
    pub fn rule_connection_limited(&self) -> Result<Vec<u64>> {
        let map = self.ebpf.map(MAP_RULE_CONN_LIMITED).context("no per-rule connection cap counters")?;
        read_rule_limited(&PerCpuArray::<_, u64>::try_from(map)?)
    }

    /// The per-port statistics so far, as `learn` and the baselines read them.
    pub fn port_statistics(&self) -> Result<crate::portstats::Snapshot> {
        crate::portstats::PortStatsMaps::of(&self.ebpf)?.snapshot()
    }

    /// Runs the program once on `frame` (at least 14 bytes: the kernel's minimum for XDP).
    pub fn run(&mut self, frame: &[u8]) -> Result<Outcome> {
        let before = self.counters()?;
        let mut out = vec![0u8; frame.len()];
        let xdp: &mut Xdp = loader::program(&mut self.ebpf, XDP_PROGRAM)?;
        let result = xdp
            .test_run(TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), ..Default::default() })
            .context("BPF_PROG_TEST_RUN failed")?;
        let unchanged = result.data_size_out as usize == frame.len() && out == frame;
        let delta = self.counters()?.since(&before);
        let mut outcome = outcome_from(result.return_value, &delta)?;
        outcome.unchanged = unchanged;
        Ok(outcome)
    }

    /// Runs the TC egress program on a frame the host sends (it learns flows and refusals).
    pub fn run_egress(&mut self, frame: &[u8]) -> Result<()> {
        let tc: &mut SchedClassifier = loader::program(&mut self.ebpf, TC_EGRESS_PROGRAM)?;
        tc.test_run(TestRunOptions { data_in: Some(frame), ..Default::default() })
            .context("BPF_PROG_TEST_RUN of the egress program failed")?;
        Ok(())
    }

    /// Runs `frame` `repeat` times; returns the action and the kernel's average time per run.
    pub fn run_raw(&mut self, frame: &[u8], repeat: u32) -> Result<(u32, std::time::Duration)> {
        let xdp: &mut Xdp = loader::program(&mut self.ebpf, XDP_PROGRAM)?;
        let result = xdp
            .test_run(TestRunOptions { data_in: Some(frame), repeat, ..Default::default() })
            .context("BPF_PROG_TEST_RUN failed")?;
        Ok((result.return_value, result.duration))
    }
}

fn outcome_from(action: u32, delta: &Counters) -> Result<Outcome> {
    let mut found = None;
    for reason in ALL_REASONS {
        for (slot, monitored) in [(reason as u32, false), (MONITOR_BASE + reason as u32, true)] {
            match delta.slot(slot).packets {
                0 => {}
                1 if found.is_none() => found = Some((reason, monitored)),
                n => bail!("verdict counters moved by {n} more than one packet (slot {slot})"),
            }
        }
    }
    let Some((reason, monitored)) = found else {
        bail!("no verdict counter moved: the program did not count the frame");
    };
    Ok(Outcome {
        action,
        reason,
        monitored,
        fragment_first: delta.slot(OBS_FRAGMENT_FIRST).packets == 1,
        fragment_later: delta.slot(OBS_FRAGMENT_LATER).packets == 1,
        vlan_single: delta.slot(OBS_VLAN_SINGLE).packets == 1,
        vlan_stacked: delta.slot(OBS_VLAN_STACKED).packets == 1,
        unchanged: true,
    })
}
