//! Prometheus metrics: read from the kernel maps at scrape time (per-CPU values summed), so a
//! scrape costs the packet path nothing. The text exposition format (0.0.4, what every scraper
//! reads) comes from the `prometheus` crate: each scrape fills a fresh registry.
//!
//! Names follow Prometheus conventions: prefix `portguard_`, counters end in `_total`, an
//! `interface` label, bounded label sets (reasons, kinds, the ports the policy names), never a
//! source address.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
};

use anyhow::Result;
use portguard_common::{
    counters::*,
    events::{SCAN_KINDS, ScanKind},
    maps::{MAP_RUNTIME, Runtime},
};
use prometheus::{Encoder as _, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::{
    blocks::active_blocks,
    events::{EventType, suppressed},
    lock,
    maps::{PinnedMaps, open_pinned},
    policy::{Mode, Policy, Proto},
    state::RunState,
};

/// What the loader itself counts (from events and alert deliveries), shared with the scrape.
#[derive(Clone, Debug, Default)]
pub struct LoaderCounts {
    /// Scans detected, by kind (from the events the loader read).
    pub scans_by_kind: std::collections::BTreeMap<String, u64>,
    /// Every event the loader published, by type and the mode that judged it.
    pub events: std::collections::BTreeMap<(EventType, Mode), u64>,
    pub alerts_delivered: std::collections::BTreeMap<String, u64>,
    pub alerts_failed: std::collections::BTreeMap<String, u64>,
    /// Alerts dropped before delivery (queue full or rate limit).
    pub alerts_dropped: u64,
    /// Seconds since the Unix epoch of the last policy load.
    pub last_load: u64,
    /// How the pulls from the CrowdSec LAPI go (`[crowdsec]`).
    pub crowdsec: Option<crate::crowdsec::PullStatus>,
    /// What the per-port baselines know (`[anomaly]`).
    pub baseline: Option<crate::baseline::Summary>,
    /// How the fetches of the `[blocklist] urls` feeds go, one per feed.
    pub feeds: Vec<crate::feeds::FeedStatus>,
}

/// What a scrape of one attachment reads.
pub struct Source {
    pub iface: String,
    /// Where the metrics are served.
    pub address: std::net::SocketAddr,
    pub maps: PinnedMaps,
    /// The ports the policy names (rules and traps): the only ports with a label.
    pub ports: Mutex<BTreeSet<(Proto, u16)>>,
    pub counts: Arc<Mutex<LoaderCounts>>,
}

impl Source {
    pub fn new(
        iface: &str,
        address: std::net::SocketAddr,
        policy: &Policy,
        counts: Arc<Mutex<LoaderCounts>>,
    ) -> Result<Self> {
        Ok(Self {
            iface: iface.to_owned(),
            address,
            maps: PinnedMaps::open(iface)?,
            ports: Mutex::new(named_ports(policy)),
            counts,
        })
    }

    /// After a reload: the ports the new policy names.
    pub fn set_policy(&self, policy: &Policy) {
        *lock(&self.ports) = named_ports(policy);
    }
}

/// The ports a policy names, bounded by the policy itself (a range counts port by port, up to
/// 1024 ports in all).
pub fn named_ports(policy: &Policy) -> BTreeSet<(Proto, u16)> {
    let mut ports = BTreeSet::new();
    let rules = policy.rules.iter().flat_map(|r| r.ports.iter().map(move |p| (r.proto, p.clone())));
    let traps = policy
        .trap_ports
        .tcp
        .iter()
        .map(|p| (Proto::Tcp, p.clone()))
        .chain(policy.trap_ports.udp.iter().map(|p| (Proto::Udp, p.clone())));
    for (proto, range) in rules.chain(traps) {
        for port in range {
            if ports.len() >= 1024 {
                return ports;
            }
            ports.insert((proto, port));
        }
    }
    ports
}

/// One metric family being filled: its label names come from the first row; every row also
/// gets the `interface` label.
struct Family<'a> {
    name: &'static str,
    help: &'static str,
    iface: &'a str,
    rows: Vec<(Vec<(&'static str, String)>, u64)>,
}

impl<'a> Family<'a> {
    fn new(name: &'static str, help: &'static str, iface: &'a str) -> Self {
        Self { name, help, iface, rows: Vec::new() }
    }

    fn row(mut self, labels: &[(&'static str, &str)], value: u64) -> Self {
        self.push(labels, value);
        self
    }

    fn push(&mut self, labels: &[(&'static str, &str)], value: u64) {
        self.rows.push((labels.iter().map(|(k, v)| (*k, v.to_string())).collect(), value));
    }

    fn label_names(&self) -> Vec<&'static str> {
        let mut names = vec!["interface"];
        names.extend(
            self.rows
                .first()
                .map(|(labels, _)| labels.iter().map(|(k, _)| *k).collect::<Vec<_>>())
                .unwrap_or_default(),
        );
        names
    }

    fn values<'r>(&'r self, labels: &'r [(&'static str, String)]) -> Vec<&'r str> {
        let mut values = vec![self.iface];
        values.extend(labels.iter().map(|(_, v)| v.as_str()));
        values
    }

    fn counter(self, registry: &Registry) -> Result<()> {
        let vec = IntCounterVec::new(
            Opts::new(format!("portguard_{}_total", self.name), self.help),
            &self.label_names(),
        )?;
        for (labels, value) in &self.rows {
            vec.with_label_values(&self.values(labels)).inc_by(*value);
        }
        registry.register(Box::new(vec))?;
        Ok(())
    }

    fn gauge(self, registry: &Registry) -> Result<()> {
        let vec =
            IntGaugeVec::new(Opts::new(format!("portguard_{}", self.name), self.help), &self.label_names())?;
        for (labels, value) in &self.rows {
            vec.with_label_values(&self.values(labels)).set(*value as i64);
        }
        registry.register(Box::new(vec))?;
        Ok(())
    }
}

/// `[anomaly]`: how much the baselines have seen, and the anomalies held back (those reported
/// are in `portguard_events_total{event="anomaly"}`).
fn baseline_families(registry: &Registry, iface: &str, known: &crate::baseline::Summary) -> Result<()> {
    Family::new(
        "baseline_learned_seconds",
        "Time the per-port baselines have learned, in whole minutes.",
        iface,
    )
    .row(&[], known.minutes_observed * 60)
    .gauge(registry)?;
    Family::new(
        "baseline_warming_up",
        "1 while the baselines have seen less than [anomaly] warm_up: no anomaly is reported yet.",
        iface,
    )
    .row(&[], u64::from(known.warming_up))
    .gauge(registry)?;
    Family::new(
        "baseline_ports",
        "Ports with a baseline of their own (tracked), and ports past [anomaly] max_ports (untracked, judged against silence).",
        iface,
    )
    .row(&[("state", "tracked")], known.ports_tracked as u64)
    .row(&[("state", "untracked")], known.ports_untracked)
    .gauge(registry)?;
    Family::new(
        "anomalies_held_back",
        "Anomalies not reported because the same port and measure was reported within [anomaly] alert_every.",
        iface,
    )
    .row(&[], known.anomalies_quiet)
    .counter(registry)?;
    Family::new(
        "baseline_read_failing",
        "1 when the last minute's per-port statistics could not be read.",
        iface,
    )
    .row(&[], u64::from(known.error.is_some()))
    .gauge(registry)
}

/// `[blocklist] urls`: each feed's entries in force and how its fetches go (label `feed`: the
/// URL; at most `policy::feeds::MAX_FEEDS`).
fn feed_families(registry: &Registry, iface: &str, feeds: &[crate::feeds::FeedStatus]) -> Result<()> {
    let mut entries = Family::new("feed_entries", "Entries of the blocklist feed's copy in force.", iface);
    let mut failures = Family::new(
        "feed_fetch_failures",
        "Fetches of the blocklist feed that failed, or lists refused.",
        iface,
    );
    let mut up = Family::new(
        "feed_up",
        "1 when the last fetch of the blocklist feed left its list current, 0 when it failed.",
        iface,
    );
    let mut last = Family::new(
        "feed_last_success_timestamp_seconds",
        "When a fetch of the blocklist feed last left its list current (Unix time).",
        iface,
    );
    for feed in feeds {
        let label = [("feed", feed.url.as_str())];
        entries.push(&label, feed.entries as u64);
        failures.push(&label, feed.failures);
        up.push(&label, u64::from(feed.last_error.is_none() && feed.last_success.is_some()));
        // Absent until a fetch succeeds: a zero would claim one at 1970.
        if let Some(at) = feed.last_success {
            last.push(&label, at);
        }
    }
    entries.gauge(registry)?;
    failures.counter(registry)?;
    up.gauge(registry)?;
    last.gauge(registry)?;
    Ok(())
}

/// `[crowdsec]`: the decisions in force and how the pulls from the LAPI go.
fn crowdsec_families(registry: &Registry, iface: &str, status: &crate::crowdsec::PullStatus) -> Result<()> {
    Family::new("crowdsec_decisions", "CrowdSec ban decisions in force (enforced in the kernel).", iface)
        .row(&[], status.decisions as u64)
        .gauge(registry)?;
    Family::new("crowdsec_pull_errors", "Pulls from the CrowdSec LAPI that failed.", iface)
        .row(&[], status.errors)
        .counter(registry)?;
    Family::new(
        "crowdsec_up",
        "1 when the last pull from the CrowdSec LAPI succeeded, 0 when it failed.",
        iface,
    )
    .row(&[], u64::from(status.last_error.is_none() && status.last_success.is_some()))
    .gauge(registry)?;
    // Absent until a pull succeeds: a zero would claim one at 1970.
    if let Some(at) = status.last_success {
        Family::new(
            "crowdsec_last_pull_timestamp_seconds",
            "When the last pull from the CrowdSec LAPI succeeded (Unix time).",
            iface,
        )
        .row(&[], at)
        .gauge(registry)?;
        Family::new(
            "crowdsec_last_pull_age_seconds",
            "Seconds since the last successful pull from the CrowdSec LAPI.",
            iface,
        )
        .row(&[], status.age(crate::state::now_unix()).unwrap_or(0))
        .gauge(registry)?;
    }
    if let Some(push) = &status.push {
        Family::new(
            "crowdsec_alerts_pushed",
            "portguard's own automatic blocks the CrowdSec LAPI took as alerts.",
            iface,
        )
        .row(&[], push.pushed)
        .counter(registry)?;
        Family::new(
            "crowdsec_alerts_unsent",
            "Alerts for the CrowdSec LAPI dropped unsent (queue full, or unsent at stop).",
            iface,
        )
        .row(&[], push.unsent)
        .counter(registry)?;
        Family::new(
            "crowdsec_alerts_pending",
            "Alerts waiting to be sent (again) to the CrowdSec LAPI.",
            iface,
        )
        .row(&[], push.pending)
        .gauge(registry)?;
        Family::new(
            "crowdsec_push_errors",
            "Requests to send alerts to the CrowdSec LAPI that failed.",
            iface,
        )
        .row(&[], push.errors)
        .counter(registry)?;
    }
    if !status.other_types.is_empty() {
        let mut ignored = Family::new(
            "crowdsec_decisions_ignored",
            "CrowdSec decisions not enforced because their type is not ban, by type.",
            iface,
        );
        for (kind, count) in &status.other_types {
            ignored.push(&[("type", kind)], *count);
        }
        ignored.counter(registry)?;
    }
    Ok(())
}

/// The text exposition of one attachment, read now.
pub fn render(source: &Source) -> Result<String> {
    let registry = Registry::new();
    let iface = source.iface.as_str();
    let counters = source.maps.counters()?;

    let mut packets = Family::new(
        "packets",
        "Packets judged, by action (pass, drop, would_drop in monitor mode) and reason.",
        iface,
    );
    let mut bytes =
        Family::new("bytes", "Bytes of the packets judged (frame length), by action and reason.", iface);
    for reason in ALL_REASONS {
        let (applied, would) = (counters.applied(reason), counters.would_drop(reason));
        let action = if reason.is_drop() { "drop" } else { "pass" };
        packets = packets.row(&[("action", action), ("reason", reason.name())], applied.packets);
        bytes = bytes.row(&[("action", action), ("reason", reason.name())], applied.bytes);
        if reason.is_drop() {
            packets = packets.row(&[("action", "would_drop"), ("reason", reason.name())], would.packets);
            bytes = bytes.row(&[("action", "would_drop"), ("reason", reason.name())], would.bytes);
        }
    }
    packets.counter(&registry)?;
    bytes.counter(&registry)?;

    // Drops by port: the ports the policy names, every other port in one bucket per protocol,
    // so the label set stays bounded.
    let drops = source.maps.port_drops.snapshot();
    let mut port_drops = Family::new(
        "port_drops",
        "Packets dropped (or would be, in monitor mode) by destination port: the ports the policy names, the rest as port=\"other\".",
        iface,
    );
    let named = lock(&source.ports).clone();
    for proto in [Proto::Tcp, Proto::Udp] {
        let index = |port: u16| portguard_common::maps::port_index(proto.number(), port).map(|i| i as usize);
        let mut named_total = 0;
        for (_, port) in named.iter().filter(|(p, _)| *p == proto) {
            let Some(i) = index(*port) else { continue };
            named_total += drops[i];
            port_drops =
                port_drops.row(&[("protocol", &proto.to_string()), ("port", &port.to_string())], drops[i]);
        }
        let all: u64 = (0..=u16::MAX).filter_map(index).map(|i| drops[i]).sum();
        port_drops =
            port_drops.row(&[("protocol", &proto.to_string()), ("port", "other")], all - named_total);
    }
    port_drops.counter(&registry)?;

    // A copy: the lock is not held across the map and file reads below.
    let counts = lock(&source.counts).clone();
    let mut scans = Family::new(
        "scans_detected",
        "Port scans detected, by kind (counted by the loader from the events it reads).",
        iface,
    );
    for kind in (0..SCAN_KINDS as u8).map(|k| ScanKind::from_u8(k).name()) {
        scans = scans.row(&[("kind", kind)], counts.scans_by_kind.get(kind).copied().unwrap_or(0));
    }
    scans.counter(&registry)?;
    let mut events = Family::new(
        "events",
        "Events the loader published (kernel events, its own, the audit trail), by type and by the policy mode that judged them (monitor: what they call dropped or blocked was only counted).",
        iface,
    );
    for ((event, mode), count) in &counts.events {
        events = events.row(&[("event", event.name()), ("mode", mode.name())], *count);
    }
    if !counts.events.is_empty() {
        events.counter(&registry)?;
    }
    // Every observation slot, one row each, grouped into families by the shared table.
    let mut families: Vec<Family> = Vec::new();
    for observation in OBSERVATIONS {
        let mut value = counters.slot(observation.slot).packets;
        if let Some(excluded) = observation.metric_excludes {
            value = value.saturating_sub(counters.slot(excluded).packets);
        }
        let family = match families.iter().position(|f| f.name == observation.family.name) {
            Some(index) => &mut families[index],
            None => {
                families.push(Family::new(observation.family.name, observation.family.help, iface));
                families.last_mut().expect("just pushed")
            }
        };
        let labels: &[(&'static str, &str)] = if observation.family.label.is_empty() {
            &[]
        } else {
            &[(observation.family.label, observation.label_value)]
        };
        family.push(labels, value);
    }
    for family in families {
        family.counter(&registry)?;
    }
    Family::new("events_suppressed", "Drop events held back by the rate limits.", iface)
        .row(&[], suppressed(&source.maps.event_budget))
        .counter(&registry)?;
    let by_sink = |name, help, map: &std::collections::BTreeMap<String, u64>| {
        ["webhook", "exec"].into_iter().fold(Family::new(name, help, iface), |family, sink| {
            family.row(&[("sink", sink)], map.get(sink).copied().unwrap_or(0))
        })
    };
    by_sink("alerts_delivered", "Alerts delivered to a sink.", &counts.alerts_delivered)
        .counter(&registry)?;
    by_sink("alerts_failed", "Alert deliveries that failed (after retries).", &counts.alerts_failed)
        .counter(&registry)?;
    Family::new("alerts_dropped", "Alerts dropped before delivery (queue full or rate limit).", iface)
        .row(&[], counts.alerts_dropped)
        .counter(&registry)?;

    let state = RunState::read(iface);
    let manual = open_pinned(iface, MAP_RUNTIME)
        .ok()
        .and_then(|m| aya::maps::Array::<_, Runtime>::try_from(m).ok())
        .and_then(|a| a.get(&0, 0).ok())
        .map_or(0, |r| u64::from(r.manual_blocks));
    let policy_entries: u64 =
        state.as_ref().map_or(0, |s| s.blocklist_sources.iter().map(|b| b.entries as u64).sum());
    let automatic = active_blocks(&source.maps.auto_blocks);
    let mut by_cause = Family::new("active_automatic_blocks", "Automatic blocks in force, by cause.", iface);
    for cause in crate::events::BLOCK_CAUSES.map(crate::events::cause_name) {
        by_cause =
            by_cause.row(&[("cause", cause)], automatic.iter().filter(|b| b.cause == cause).count() as u64);
    }
    by_cause.gauge(&registry)?;
    Family::new("active_blocks", "Blocks in force, by origin (policy: blocklist entries as written).", iface)
        .row(&[("origin", "automatic")], automatic.len() as u64)
        .row(&[("origin", "manual")], manual)
        .row(&[("origin", "policy")], policy_entries)
        .gauge(&registry)?;
    // Absent (rather than zero) when the limiter's maps cannot be read: a zero would be a claim.
    if let Some(report) =
        state.as_ref().and_then(|s| crate::limits::report(iface, &s.limited_rules, s.generation).ok())
    {
        let mut limited = Family::new(
            "rate_limited",
            "New connections refused (or that would be, in monitor mode) by a rule's per-source limit, since the policy generation was loaded.",
            iface,
        );
        for rule in &report.rules {
            let number = rule.rule.rule.to_string();
            limited
                .push(&[("rule", &number), ("name", rule.rule.name.as_deref().unwrap_or(""))], rule.limited);
        }
        limited.counter(&registry)?;
        Family::new(
            "rate_limited_sources",
            "(source, rule) budgets the kernel holds for the running policy's rate limits.",
            iface,
        )
        .row(&[], report.tracked_sources)
        .gauge(&registry)?;
        if let Some(sources) = report.sources_connected {
            let mut refused = Family::new(
                "connection_limited",
                "New connections refused (or that would be, in monitor mode) because the source held its rule's connections_per_source, since the policy generation was loaded.",
                iface,
            );
            let mut open = Family::new(
                "connections_open",
                "Open connections counted against a rule's connections_per_source (accepted since the cap was attached).",
                iface,
            );
            for rule in &report.rules {
                let (Some(count), Some(held)) = (rule.connection_limited, rule.connections_open) else {
                    continue;
                };
                let number = rule.rule.rule.to_string();
                let labels = [("rule", number.as_str()), ("name", rule.rule.name.as_deref().unwrap_or(""))];
                refused.push(&labels, count);
                open.push(&labels, held);
            }
            refused.counter(&registry)?;
            open.gauge(&registry)?;
            Family::new(
                "connected_sources",
                "(source, rule) pairs holding open connections on the rules that cap them.",
                iface,
            )
            .row(&[], sources)
            .gauge(&registry)?;
        }
    }
    if let Some(status) = &counts.crowdsec {
        crowdsec_families(&registry, iface, status)?;
    }
    if let Some(known) = &counts.baseline {
        baseline_families(&registry, iface, known)?;
    }
    if !counts.feeds.is_empty() {
        feed_families(&registry, iface, &counts.feeds)?;
    }
    Family::new("policy_generation", "The running policy generation (1 at attach, +1 per reload).", iface)
        .row(&[], state.as_ref().map_or(0, |s| s.generation))
        .gauge(&registry)?;
    Family::new(
        "policy_last_load_timestamp_seconds",
        "When the running policy was loaded (Unix time).",
        iface,
    )
    .row(&[], counts.last_load)
    .gauge(&registry)?;
    let xdp_mode = state.as_ref().map_or("unknown".into(), |s| s.xdp_mode.to_string());
    let mode =
        state.as_ref().map_or("unknown", |s| if s.mode == Mode::Monitor { "monitor" } else { "enforce" });
    Family::new("attached", "1 while portguard is attached; its XDP mode and policy mode as labels.", iface)
        .row(&[("xdp_mode", &xdp_mode), ("mode", mode)], 1)
        .gauge(&registry)?;

    let build =
        IntGaugeVec::new(Opts::new("portguard_build_info", "portguard's version (always 1)."), &["version"])?;
    build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    registry.register(Box::new(build))?;

    let mut text = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut text)?;
    Ok(String::from_utf8(text)?)
}

/// The content type of `render`'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Connections held open at once. A new one past it closes the connection that has been
/// waiting for a request the longest (or, if every one is being answered, the oldest): a
/// crowd of idle or half-sent connections cannot keep a scraper out. Also bounds the file
/// descriptors `/metrics` takes from the loader.
pub const CONNECTIONS_MAX: usize = 256;
/// A client must send a whole request head within this: the first, and each next one on a
/// kept-alive connection (an idle connection is closed after it). Prometheus sends its
/// request at once and reconnects when it finds a connection closed.
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// No connection lasts longer, whatever it does.
pub const CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(10);
/// Expositions rendered at once (each reads every map, on a blocking thread); more requests
/// wait their turn.
const RENDERS_MAX: usize = 4;

/// An open connection, as the accept loop knows it.
struct Open {
    /// Dropping it closes the connection.
    _close: tokio::sync::oneshot::Sender<()>,
    /// A request is being answered on it.
    answering: Arc<std::sync::atomic::AtomicBool>,
}

type OpenConnections = Arc<Mutex<std::collections::BTreeMap<u64, Open>>>;

/// Takes a connection off the table when it ends, however it ends.
struct Leave {
    id: u64,
    open: OpenConnections,
}

impl Drop for Leave {
    fn drop(&mut self) {
        lock(&self.open).remove(&self.id);
    }
}

/// Serves `GET /metrics` in the Prometheus text format on `listener` (anything else is a 404)
/// until the runtime stops. HTTP is hyper's; what is added here is the bound on connections
/// and who gives way.
pub async fn serve(listener: tokio::net::TcpListener, source: Arc<Source>) {
    let open: OpenConnections = Arc::default();
    let renders = Arc::new(tokio::sync::Semaphore::new(RENDERS_MAX));
    for id in 0u64.. {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors and the like: keep serving once it passes.
                log::warn!("metrics: accepting a connection: {error}");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                continue;
            }
        };
        let (close, closed) = tokio::sync::oneshot::channel();
        let answering = Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            let mut table = lock(&open);
            if table.len() >= CONNECTIONS_MAX {
                let waiting =
                    table.iter().find(|(_, c)| !c.answering.load(std::sync::atomic::Ordering::Relaxed));
                let victim = waiting.or(table.iter().next()).map(|(id, _)| *id);
                if let Some(victim) = victim {
                    table.remove(&victim);
                }
            }
            table.insert(id, Open { _close: close, answering: answering.clone() });
        }
        let leave = Leave { id, open: open.clone() };
        tokio::spawn(connection(stream, source.clone(), renders.clone(), answering, closed, leave));
    }
}

async fn connection(
    stream: tokio::net::TcpStream,
    source: Arc<Source>,
    renders: Arc<tokio::sync::Semaphore>,
    answering: Arc<std::sync::atomic::AtomicBool>,
    closed: tokio::sync::oneshot::Receiver<()>,
    _leave: Leave,
) {
    use hyper::{Request, body::Incoming, server::conn::http1, service::service_fn};
    use hyper_util::rt::{TokioIo, TokioTimer};
    let service = service_fn(move |request: Request<Incoming>| {
        let (source, renders, answering) = (source.clone(), renders.clone(), answering.clone());
        async move {
            answering.store(true, std::sync::atomic::Ordering::Relaxed);
            let response = respond(request.uri().path(), source, renders).await;
            answering.store(false, std::sync::atomic::Ordering::Relaxed);
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = tokio::time::timeout(CONNECTION_LIFETIME, connection) => {}
        // Closed to make room for a newer connection.
        _ = closed => {}
    }
}

async fn respond(
    path: &str,
    source: Arc<Source>,
    renders: Arc<tokio::sync::Semaphore>,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    use http_body_util::Full;
    use hyper::Response;
    let response = if path == "/metrics" {
        let Ok(permit) = renders.acquire_owned().await else {
            return Response::new(Full::new(bytes::Bytes::from_static(b"shutting down\n")));
        };
        // Reading the maps is blocking work, off the loader's event thread; the permit goes
        // with it, so a connection closed meanwhile does not free a render slot early.
        let rendered = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            render(&source)
        })
        .await;
        match rendered {
            Ok(Ok(text)) => {
                Response::builder().header("content-type", CONTENT_TYPE).body(Full::new(text.into()))
            }
            Ok(Err(error)) => Response::builder()
                .status(500)
                .body(Full::new(format!("reading the counters: {error:#}\n").into())),
            Err(error) => Response::builder().status(500).body(Full::new(format!("{error}\n").into())),
        }
    } else {
        Response::builder().status(404).body(Full::new(bytes::Bytes::from_static(b"try /metrics\n")))
    };
    response.expect("a valid response")
}
