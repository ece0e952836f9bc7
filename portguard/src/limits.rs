//! Per-source limits as the operator sees them: which rules carry one (recorded with the
//! attachment, so `stats` and `/metrics` can name them), how many attempts each refused, how
//! many sources the kernel keeps a budget for, and how many hold connections on a capped rule.

use std::os::fd::AsFd as _;

use anyhow::{Context as _, Result, bail};
use aya::maps::{HashMap, Map, MapData, PerCpuArray};
use portguard_common::maps::{
    ConnKey, LimitState, MAP_CONNS, MAP_LIMITS, MAP_RULE_CONN_LIMITED, MAP_RULE_LIMITED, limit_owner,
};
use serde::{Deserialize, Serialize};

use crate::{
    maps::{MappedArray, open_pinned, read_rule_limited},
    policy::Policy,
};

/// A rule that carries a limit, with its counter slot in the kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitedRule {
    /// `RuleLimit::slot`: the limited rules in file order.
    pub slot: u32,
    pub rule: u16,
    pub name: Option<String>,
    pub line: usize,
    /// `"5/10s"`, as the policy wrote it (normalised); none: the rule caps only connections.
    pub new_per_source: Option<String>,
    /// 0 without a rate.
    pub burst: u32,
    /// The cap of open connections per source, if the rule has one.
    #[serde(default)]
    pub connections_per_source: Option<u32>,
    /// `RuleLimit::conn_rule`: the rule's key in the connection counts (0: no cap).
    #[serde(default)]
    pub conn_rule: u32,
}

impl LimitedRule {
    /// `rule 2 "ssh"`, as `stats` names it.
    pub fn label(&self) -> String {
        match &self.name {
            Some(name) => format!("rule {} \"{}\"", self.rule, crate::printable(name)),
            None => format!("rule {}", self.rule),
        }
    }
}

/// The rules of `policy` that carry a limit, in the slots `compile` gives them.
pub fn limited_rules(policy: &Policy) -> Vec<LimitedRule> {
    let conn_rules = crate::policy::compile::conn_rules(policy);
    policy
        .rules
        .iter()
        .filter_map(|rule| Some((rule, rule.limit?)))
        .enumerate()
        .map(|(slot, (rule, limit))| LimitedRule {
            slot: slot as u32,
            rule: rule.number,
            name: rule.name.clone(),
            line: rule.line,
            new_per_source: limit.new_per_source.map(|rate| rate.to_string()),
            burst: limit.burst,
            connections_per_source: limit.connections_per_source,
            conn_rule: conn_rules.get(&rule.number).copied().unwrap_or(0),
        })
        .collect()
}

/// One limited rule's refusals since its generation was loaded.
#[derive(Clone, Debug, Serialize)]
pub struct RuleCount {
    #[serde(flatten)]
    pub rule: LimitedRule,
    /// Attempts refused by the rate (in monitor mode: that would have been).
    pub limited: u64,
    /// Connection attempts refused by the cap (in monitor mode: that would have been); none
    /// without a cap.
    pub connection_limited: Option<u64>,
    /// Sources holding open connections on the rule, and how many they hold (none without a
    /// cap).
    pub sources_connected: Option<u64>,
    pub connections_open: Option<u64>,
}

/// What the kernel's limiter holds for an attachment.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LimitReport {
    pub rules: Vec<RuleCount>,
    /// (source, rule) budgets of the running generation in the LRU table (a source counts
    /// once per limited rule it tried).
    pub tracked_sources: u64,
    /// (source, rule) pairs holding open connections on the capped rules (none: no rule caps
    /// connections).
    pub sources_connected: Option<u64>,
}

/// Reads the limiter's pinned maps of `iface`, for the rules `rules` of generation
/// `generation`. An attachment made by a portguard without rate limits has no such maps: an
/// empty report.
pub fn report(iface: &str, rules: &[LimitedRule], generation: u64) -> Result<LimitReport> {
    if rules.is_empty() {
        return Ok(LimitReport::default());
    }
    let counts: PerCpuArray<MapData, u64> = PerCpuArray::try_from(open_pinned(iface, MAP_RULE_LIMITED)?)?;
    let counts = read_rule_limited(&counts)?;
    let Map::Array(table) = open_pinned(iface, MAP_LIMITS)? else {
        bail!("{MAP_LIMITS} of {iface} is not an array (pinned by another portguard build?)");
    };
    let entries = table.info().context(MAP_LIMITS)?.max_entries();
    let state: MappedArray<LimitState> = MappedArray::map(table.fd().as_fd(), entries, MAP_LIMITS)?;
    let capped = rules.iter().any(|rule| rule.connections_per_source.is_some());
    let (refused, held) = if capped {
        let refused: PerCpuArray<MapData, u64> =
            PerCpuArray::try_from(open_pinned(iface, MAP_RULE_CONN_LIMITED)?)?;
        let held: HashMap<MapData, ConnKey, u64> = HashMap::try_from(open_pinned(iface, MAP_CONNS)?)?;
        (read_rule_limited(&refused)?, crate::conns::held(&held)?)
    } else {
        (Vec::new(), std::collections::BTreeMap::new())
    };
    Ok(LimitReport {
        rules: rules
            .iter()
            .map(|rule| {
                let capped = rule.connections_per_source.is_some();
                let (sources, connections) = held.get(&rule.conn_rule).copied().unwrap_or_default();
                RuleCount {
                    rule: rule.clone(),
                    limited: counts.get(rule.slot as usize).copied().unwrap_or(0),
                    connection_limited: capped.then(|| refused.get(rule.slot as usize).copied().unwrap_or(0)),
                    sources_connected: capped.then_some(sources),
                    connections_open: capped.then_some(connections),
                }
            })
            .collect(),
        tracked_sources: tracked_sources(state.values(), generation),
        sources_connected: capped.then(|| held.values().map(|(sources, _)| sources).sum()),
    })
}

/// Budgets of generation `generation` in the limiter's table (older ones wait for a source of
/// the running generation to take their slot).
pub fn tracked_sources(table: &[LimitState], generation: u64) -> u64 {
    let current = limit_owner(0, generation);
    table.iter().filter(|state| state.owner & 0xffff != 0 && state.owner & !0xffff == current).count() as u64
}
