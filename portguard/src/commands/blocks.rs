//! `portguard block`, `unblock` and `blocks`: emergency blocklisting on live attachments.

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use ipnet::IpNet;
use portguard::{
    blocks::{self, BlockStore, ManualEntry},
    control,
    crowdsec::DecisionStore,
    durations,
    events::{Actor, EventRecord, EventType},
    inform,
    links::Inspection,
    netns::Netns,
    output::{self, count},
    policy::sources::parse_net_strict,
    safety,
    state::{RunState, now_unix},
    system,
};
use serde::Serialize;

use portguard::attachment::{self, WhenNone};

fn parse_nets(items: &[String]) -> Result<Vec<IpNet>> {
    let mut nets = Vec::new();
    let mut errors = Vec::new();
    for item in items {
        match parse_net_strict(item) {
            Ok(net) => nets.push(net),
            Err(reason) => errors.push(reason),
        }
    }
    if !errors.is_empty() {
        bail!("{}; nothing was changed", errors.join("; "));
    }
    Ok(nets)
}

/// What a command acted on, for its output: `eth0, eth1 in the host's network namespace`.
fn acted_on(interfaces: &[&str]) -> String {
    format!("{} in {}", interfaces.join(", "), Netns::current())
}

pub fn block(
    items: &[String],
    duration: Option<Duration>,
    reason: Option<String>,
    everything: bool,
    force: bool,
    iface: Option<&str>,
) -> Result<ExitCode> {
    system::require_root("portguard block")?;
    let started = Instant::now();
    let nets = parse_nets(items)?;
    // ::ffff:0:0/96 arrives here as 0.0.0.0/0.
    match nets.iter().find(|net| net.prefix_len() == 0) {
        Some(all) if !everything => {
            let whom = if all.addr().is_ipv4() { "every IPv4 source" } else { "every IPv6 source" };
            bail!("{all} blocks {whom}; add --everything if that is what you mean; nothing was changed");
        }
        _ => {}
    }
    let interfaces = attachment::select(iface, WhenNone::Accept)?;
    refuse_blocking_the_host(&nets, &interfaces, force)?;
    // Applied to the maps under the same lock that guards the saved list, so two commands at
    // once leave both the file and the maps with both changes.
    BlockStore::edit(&interfaces, |store| {
        for net in &nets {
            store.add(blocks::entry(*net, iface.map(str::to_owned), reason.clone(), duration));
        }
        Ok(())
    })?;
    let took = started.elapsed();
    // What is enforced: whole seconds.
    let how_long = duration
        .map_or("until unblocked".to_string(), |d| format!("for {}", durations::format_secs(d.as_secs())));
    for net in &nets {
        inform!(
            "blocked {net} {how_long}{}",
            reason.as_deref().map(|r| format!(" ({})", portguard::printable(r))).unwrap_or_default()
        );
    }
    audit(&interfaces, &nets, EventType::Blocked, |record| {
        record.reason.clone_from(&reason);
        if let Some(duration) = duration {
            let secs = duration.as_secs();
            record.block_seconds = Some(secs);
            record.expires = output::rfc3339_unix(now_unix().saturating_add(secs));
        }
    });
    // A block written into the maps of an attachment that protects nothing is not in effect.
    let (enforcing, unprotected): (Vec<_>, Vec<_>) = interfaces
        .iter()
        .map(|iface| {
            (iface, Inspection::of(iface).map_or_else(|e| Some(format!("{e:#}")), |f| f.problem(iface)))
        })
        .partition(|(_, problem)| problem.is_none());
    if interfaces.is_empty() {
        inform!(
            "portguard is not attached anywhere in {}: saved in {}, enforced from the next attach there",
            Netns::current(),
            portguard::paths::blocks_file().display()
        );
    }
    if !enforcing.is_empty() {
        let names: Vec<&str> = enforcing.iter().map(|(iface, _)| iface.as_str()).collect();
        inform!(
            "in effect on {} from the next packet ({} after this command started){}",
            acted_on(&names),
            match took.as_millis() {
                0 => "under 1ms".to_string(),
                millis => durations::format(Duration::from_millis(millis as u64)),
            },
            if iface.is_none() { "; also on interfaces attached there later" } else { "" }
        );
    }
    for (iface, problem) in &unprotected {
        eprintln!(
            "NOT in effect on {iface}: it is NOT PROTECTED ({}); saved, and enforced once {iface} is attached again",
            problem.as_deref().unwrap_or_default()
        );
    }
    for state in RunState::all() {
        for net in &nets {
            if let Some(keep) = state.never_block.iter().find(|k| k.contains(net) || net.contains(*k)) {
                eprintln!(
                    "warning: {net} overlaps never_block {keep} of {}: those sources are not dropped there",
                    state.iface
                );
            }
        }
    }
    Ok(if unprotected.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// A block that covers the host itself (its addresses, the attached interfaces' networks and
/// gateways, the SSH session running this) is refused without `--force`, as a blocklist is;
/// each attachment's `never_block` exempts what it covers. Said as a warning when forced.
fn refuse_blocking_the_host(nets: &[IpNet], interfaces: &[String], force: bool) -> Result<()> {
    let host = match safety::Host::gather(safety::Session::find()) {
        Ok(host) => host,
        Err(error) => {
            eprintln!("warning: could not check whether the block covers this host ({error:#})");
            return Ok(());
        }
    };
    let scopes: Vec<(String, Vec<IpNet>)> = interfaces
        .iter()
        .map(|iface| (iface.clone(), RunState::read(iface).map(|s| s.never_block).unwrap_or_default()))
        .collect();
    let hazards = safety::block_hazards(nets, &scopes, &host);
    if force {
        for hazard in &hazards {
            eprintln!("warning: {hazard}");
        }
    }
    safety::gate(hazards, &safety::Operator { force, ..Default::default() }, "block")?;
    Ok(())
}

pub fn unblock(items: &[String], iface: Option<&str>) -> Result<ExitCode> {
    system::require_root("portguard unblock")?;
    let nets = parse_nets(items)?;
    let interfaces = attachment::select(iface, WhenNone::Accept)?;
    let netns = Netns::current();
    // CrowdSec decisions are lifted with the manual blocks, under the same lock.
    let mut from_crowdsec: Vec<Vec<(String, Vec<portguard::crowdsec::Decision>)>> =
        vec![Vec::new(); nets.len()];
    let manual: Vec<(usize, bool)> = BlockStore::edit(&interfaces, |store| {
        for iface in &interfaces {
            let mut decisions = DecisionStore::load(iface)?;
            let mut changed = false;
            for (net, lifted) in nets.iter().zip(&mut from_crowdsec) {
                let here = decisions.lift(net);
                if !here.is_empty() {
                    changed = true;
                    lifted.push((iface.clone(), here));
                }
            }
            if changed {
                decisions.save(iface)?;
            }
        }
        Ok(nets.iter().map(|net| store.remove(net, netns, iface)).collect())
    })?;
    let names: Vec<&str> = interfaces.iter().map(String::as_str).collect();
    // Automatic blocks are in the kernel only: lifted once the saved list agrees.
    let mut missing = Vec::new();
    for ((net, (manual, stays)), crowdsec) in nets.iter().zip(manual).zip(&from_crowdsec) {
        let automatic = blocks::lift_automatic(net, &interfaces)?;
        for (on, decisions) in crowdsec {
            for decision in decisions {
                inform!(
                    "lifted the CrowdSec decision on {} on {on} ({}): the LAPI sends it again (at the loader's next \
                     start, or when it is made again) unless it is deleted there: cscli decisions delete {} {}",
                    decision.net,
                    portguard::printable(&decision.scenario),
                    if decision.net.prefix_len() == decision.net.max_prefix_len() {
                        "--ip"
                    } else {
                        "--range"
                    },
                    if decision.net.prefix_len() == decision.net.max_prefix_len() {
                        decision.net.addr().to_string()
                    } else {
                        decision.net.to_string()
                    }
                );
            }
        }
        let crowdsec: usize = crowdsec.iter().map(|(_, d)| d.len()).sum();
        if manual + automatic + crowdsec == 0 {
            missing.push(*net);
            continue;
        }
        let on = if names.is_empty() { format!("in {netns}") } else { format!("on {}", acted_on(&names)) };
        inform!("unblocked {net} {on} ({manual} manual, {automatic} automatic, {crowdsec} CrowdSec)");
        audit(&interfaces, std::slice::from_ref(net), EventType::Unblocked, |record| {
            // CrowdSec named only where it had a share (most hosts have no `[crowdsec]`).
            record.reason = Some(if crowdsec == 0 {
                format!("lifted {manual} manual and {automatic} automatic blocks")
            } else {
                format!("lifted {manual} manual, {automatic} automatic and {crowdsec} CrowdSec blocks")
            });
        });
        if stays {
            inform!("{net} was blocked on every attachment there: it stays blocked on the others");
        }
    }
    for net in &missing {
        let in_policy = RunState::all().iter().any(|s| !s.blocklist_sources.is_empty());
        eprintln!(
            "{net} was not blocked by hand, automatically or by CrowdSec{}",
            if in_policy {
                " (if it is in a policy blocklist: edit the policy, then `portguard reload`; a feed's \
                 entries change with the feed)"
            } else {
                ""
            }
        );
    }
    Ok(if missing.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Tells the running loaders of `interfaces` what was done to each of `nets`, for their
/// events, alerts and metrics (the audit trail).
fn audit(interfaces: &[String], nets: &[IpNet], event: EventType, details: impl Fn(&mut EventRecord)) {
    let actor = Actor::of_this_process();
    for net in nets {
        let mut record = EventRecord::new(std::time::SystemTime::now(), "", event);
        record.source = Some(net.addr());
        record.prefix_len = (net.prefix_len() < net.max_prefix_len()).then_some(net.prefix_len());
        actor.stamp(&mut record);
        details(&mut record);
        control::tell_loaders(interfaces, &record);
    }
}

/// One active block as `blocks` lists it; `--json` prints these (docs/schemas/blocks.schema.json).
#[derive(Serialize)]
struct Row {
    /// `manual`, `automatic`, `crowdsec` or `policy_blocklist`.
    origin: &'static str,
    /// The blocked network; `None` for a policy blocklist, counted in `entries`.
    network: Option<IpNet>,
    /// Networks the row stands for: 1, or a policy blocklist's entries.
    entries: u64,
    /// A policy blocklist read from a file: the file (`None`, and no `feed`: the policy's own
    /// `sources`).
    file: Option<std::path::PathBuf>,
    /// A policy blocklist fetched from a feed (`[blocklist] urls`): its URL.
    feed: Option<String>,
    /// The attachments it applies to now.
    interfaces: Vec<String>,
    /// A manual block without `--iface`: every attachment of the namespace, later ones too.
    every_interface: bool,
    /// Manual blocks: the `--reason` given.
    reason: Option<String>,
    /// CrowdSec decisions: the scenario that made the decision.
    scenario: Option<String>,
    /// Automatic blocks: what made them (`scan`, `slow_scan`, `trap`, `rate_limit`,
    /// `connection_limit`, `recidive`), and the details.
    cause: Option<&'static str>,
    scan_kind: Option<&'static str>,
    distinct_ports: Option<u32>,
    protocol: Option<String>,
    port: Option<u16>,
    /// RFC 3339, UTC; `None` when not known (a policy blocklist: it is in force as long as
    /// the policy is) or past year 9999.
    added_at: Option<String>,
    /// `None`: until unblocked (or the policy changes), or past year 9999.
    expires_at: Option<String>,
    remaining_secs: Option<u64>,
    /// The text column for people: the reason, or what made an automatic block.
    #[serde(skip)]
    shown_reason: String,
}

impl Row {
    fn new(origin: &'static str, interfaces: Vec<String>) -> Self {
        Self {
            origin,
            network: None,
            entries: 1,
            feed: None,
            file: None,
            interfaces,
            every_interface: false,
            reason: None,
            scenario: None,
            cause: None,
            scan_kind: None,
            distinct_ports: None,
            protocol: None,
            port: None,
            added_at: None,
            expires_at: None,
            remaining_secs: None,
            shown_reason: String::new(),
        }
    }
}

pub fn list(json: bool, iface: Option<&str>) -> Result<ExitCode> {
    system::require_root("portguard blocks")?;
    let interfaces = attachment::select(iface, WhenNone::Accept)?;
    let now = now_unix();
    let mut rows = Vec::new();
    let store = BlockStore::load()?;
    let netns = Netns::current();
    for entry in store.blocks.iter().filter(|b| !b.expired(now) && b.netns == netns) {
        if let Some(only) = iface {
            if !entry.applies_to(only) {
                continue;
            }
        }
        rows.push(manual_row(entry, &interfaces, now));
    }
    for iface in &interfaces {
        for block in blocks::automatic_blocks_on(iface)? {
            rows.push(Row {
                network: Some(block.network),
                shown_reason: format!("{}: {}", block.cause, block.detail()),
                cause: Some(block.cause),
                scan_kind: block.scan_kind,
                distinct_ports: block.distinct_ports,
                protocol: block.protocol,
                port: block.port,
                added_at: Some(block.added_at),
                expires_at: Some(block.expires_at),
                remaining_secs: Some(block.remaining_secs),
                ..Row::new("automatic", vec![iface.clone()])
            });
        }
    }
    for iface in &interfaces {
        for decision in DecisionStore::load(iface)?.decisions.into_values().filter(|d| d.expires > now) {
            rows.push(Row {
                network: Some(decision.net),
                shown_reason: format!("{} (origin {})", decision.scenario, decision.origin),
                scenario: Some(decision.scenario.clone()),
                added_at: output::rfc3339_unix(decision.added),
                expires_at: output::rfc3339_unix(decision.expires),
                remaining_secs: Some(decision.seconds_left(now)),
                ..Row::new("crowdsec", vec![iface.clone()])
            });
        }
    }
    for state in RunState::all().into_iter().filter(|s| interfaces.contains(&s.iface)) {
        for source in &state.blocklist_sources {
            rows.push(Row {
                entries: source.entries as u64,
                file: source.file.clone(),
                feed: source.feed.clone(),
                shown_reason: format!("blocklist {}", source.origin()),
                ..Row::new("policy_blocklist", vec![state.iface.clone()])
            });
        }
    }
    if json {
        println!("{}", serde_json::to_string(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("no active blocks");
        return Ok(ExitCode::SUCCESS);
    }
    let cells: Vec<Vec<String>> = rows
        .into_iter()
        .map(|row| {
            vec![
                match row.network {
                    Some(net) if row.origin != "manual" && net.prefix_len() == net.max_prefix_len() => {
                        net.addr().to_string()
                    }
                    Some(net) => net.to_string(),
                    None => count(row.entries, "entry", "entries"),
                },
                match row.origin {
                    "policy_blocklist" => "policy".to_string(),
                    origin => origin.to_string(),
                },
                if row.every_interface && row.interfaces.is_empty() {
                    "(all, none attached)".to_string()
                } else {
                    row.interfaces.join(",")
                },
                row.added_at.unwrap_or_else(|| "-".into()),
                match (row.remaining_secs, row.origin) {
                    (Some(secs), _) => durations::format_secs(secs),
                    (None, "policy_blocklist") => "while in the policy".into(),
                    (None, _) => "permanent".into(),
                },
                portguard::printable(&row.shown_reason).into_owned(),
            ]
        })
        .collect();
    for line in output::table(&["source", "origin", "interfaces", "added", "time left", "reason"], &cells) {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

fn manual_row(entry: &ManualEntry, interfaces: &[String], now: u64) -> Row {
    Row {
        network: Some(entry.net),
        every_interface: entry.iface.is_none(),
        reason: entry.reason.clone(),
        shown_reason: entry.reason.clone().unwrap_or_default(),
        added_at: output::rfc3339_unix(entry.added),
        expires_at: entry.expires.and_then(output::rfc3339_unix),
        remaining_secs: entry.seconds_left(now),
        ..Row::new(
            "manual",
            match &entry.iface {
                Some(iface) => vec![iface.clone()],
                None => interfaces.iter().filter(|i| !entry.except.contains(i)).cloned().collect(),
            },
        )
    }
}
