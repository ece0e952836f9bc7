//! One event as people and programs see it: its type, the record `--json` prints (one object
//! per line, the schema the README documents) and the human line rendered from it.

use std::{net::IpAddr, time::SystemTime};

use serde::{Deserialize, Serialize};

use portguard_common::events::EventKind;

use crate::output::{Tone, paint};
use crate::policy::Mode;

/// What happened. The serde names are the `event` values on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    // From the kernel.
    /// A packet was dropped (sampled), or would have been in monitor mode.
    Drop,
    ScanDetected,
    AutoBlocked,
    BlockExpired,
    TrapHit,
    /// A rule's per-source limit refused a source (the first refusal of a window).
    Limited,
    // From the loader about itself.
    /// The ring buffer had no room for some events.
    EventsLost,
    /// The interface went away, or the programs are not on it.
    Unprotected,
    /// They are again.
    Reattached,
    /// A blocklist feed could not be fetched, or its new list was refused: the list in force stays.
    FeedFailed,
    /// An `events` client read too slowly and missed some lines.
    ClientLagged,
    // The audit trail: what people (and the rollback guard) did.
    /// `portguard block`.
    Blocked,
    /// `portguard unblock`.
    Unblocked,
    /// A new policy generation (`reload`, SIGHUP).
    Reloaded,
    /// `portguard confirm` kept a change made with `--confirm-within`.
    Confirmed,
    /// A change made with `--confirm-within` was not confirmed in time and was undone.
    RolledBack,
    /// The loader detached and removed its pins.
    Detached,
    // From the loader's baselines.
    /// A port's minute departed from its baseline (`crate::baseline`).
    Anomaly,
    /// A type this build does not know (a newer loader's).
    #[serde(other)]
    Unknown,
}

impl EventType {
    /// Every type a policy can name (`[alerts] events`).
    pub const ALL: [Self; 18] = [
        Self::Drop,
        Self::ScanDetected,
        Self::AutoBlocked,
        Self::BlockExpired,
        Self::TrapHit,
        Self::Limited,
        Self::EventsLost,
        Self::Unprotected,
        Self::Reattached,
        Self::FeedFailed,
        Self::ClientLagged,
        Self::Blocked,
        Self::Unblocked,
        Self::Reloaded,
        Self::Confirmed,
        Self::RolledBack,
        Self::Detached,
        Self::Anomaly,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            // The kernel's kinds keep the names portguard-common gives them.
            Self::Drop => EventKind::Drop.name(),
            Self::ScanDetected => EventKind::ScanDetected.name(),
            Self::AutoBlocked => EventKind::AutoBlocked.name(),
            Self::BlockExpired => EventKind::BlockExpired.name(),
            Self::TrapHit => EventKind::TrapHit.name(),
            Self::Limited => EventKind::Limited.name(),
            Self::EventsLost => "events_lost",
            Self::Unprotected => "unprotected",
            Self::Reattached => "reattached",
            Self::FeedFailed => "feed_failed",
            Self::ClientLagged => "client_lagged",
            Self::Blocked => "blocked",
            Self::Unblocked => "unblocked",
            Self::Reloaded => "reloaded",
            Self::Confirmed => "confirmed",
            Self::RolledBack => "rolled_back",
            Self::Detached => "detached",
            Self::Anomaly => "anomaly",
            Self::Unknown => "unknown",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    pub const fn of_kernel(kind: EventKind) -> Self {
        use portguard_common::events::EventKind as K;
        match kind {
            K::Drop => Self::Drop,
            K::ScanDetected => Self::ScanDetected,
            K::AutoBlocked => Self::AutoBlocked,
            K::BlockExpired => Self::BlockExpired,
            K::TrapHit => Self::TrapHit,
            K::Limited => Self::Limited,
        }
    }

    /// Raised by the kernel programs (and judged in the mode they ran in).
    pub const fn is_kernel(self) -> bool {
        matches!(
            self,
            Self::Drop
                | Self::ScanDetected
                | Self::AutoBlocked
                | Self::BlockExpired
                | Self::TrapHit
                | Self::Limited
        )
    }

    /// Alerts: what needs a person's attention (drops are sampled telemetry).
    pub const fn is_alert(self) -> bool {
        matches!(
            self,
            Self::ScanDetected
                | Self::AutoBlocked
                | Self::TrapHit
                | Self::BlockExpired
                | Self::Unprotected
                | Self::Reattached
                | Self::FeedFailed
                | Self::Anomaly
        )
    }

    /// The audit trail: changes people made (or a rollback made for them).
    pub const fn is_audit(self) -> bool {
        matches!(
            self,
            Self::Blocked
                | Self::Unblocked
                | Self::Reloaded
                | Self::Confirmed
                | Self::RolledBack
                | Self::Detached
        )
    }

    /// The word that starts its human line.
    fn label(self, monitor: bool) -> &'static str {
        match self {
            Self::Drop if monitor => "WOULD-DROP",
            Self::Drop => "DROP",
            Self::ScanDetected => "SCAN",
            Self::AutoBlocked if monitor => "WOULD-BLOCK",
            Self::AutoBlocked => "BLOCK",
            Self::TrapHit => "TRAP",
            Self::Limited if monitor => "WOULD-LIMIT",
            Self::Limited => "LIMIT",
            Self::BlockExpired => "UNBLOCK",
            Self::EventsLost => "LOST",
            Self::Unprotected | Self::Reattached => "IFACE",
            Self::FeedFailed => "FEED",
            Self::ClientLagged => "LAGGED",
            Self::Blocked => "MANUAL-BLOCK",
            Self::Unblocked => "MANUAL-UNBLOCK",
            Self::Reloaded => "RELOAD",
            Self::Confirmed => "CONFIRM",
            Self::RolledBack => "ROLLBACK",
            Self::Detached => "DETACH",
            Self::Anomaly => "ANOMALY",
            Self::Unknown => "EVENT",
        }
    }
}

impl EventType {
    /// The colour of its label on a terminal: what went wrong or was stopped, what would have
    /// been, what was lifted or came back.
    fn tone(self, monitor: bool) -> Option<Tone> {
        match self {
            Self::Drop | Self::AutoBlocked | Self::Limited if monitor => Some(Tone::Caution),
            Self::Drop
            | Self::Limited
            | Self::ScanDetected
            | Self::AutoBlocked
            | Self::TrapHit
            | Self::EventsLost
            | Self::Unprotected
            | Self::FeedFailed
            | Self::Blocked
            | Self::RolledBack => Some(Tone::Bad),
            Self::Anomaly => Some(Tone::Caution),
            Self::BlockExpired | Self::Reattached | Self::Unblocked | Self::Confirmed => Some(Tone::Good),
            Self::ClientLagged | Self::Reloaded | Self::Detached | Self::Unknown => None,
        }
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Who made a change, as far as can be known: the account behind `sudo` (or the login a
/// session started as), and the user id the command ran as (from the control socket's peer
/// credentials when it came through the socket).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
}

impl Actor {
    /// Whoever runs this process: `SUDO_USER` under sudo, else the login the session started
    /// as (`/proc/self/loginuid`, kept across `su`), else the account of the user id.
    pub fn of_this_process() -> Self {
        let uid = nix::unistd::getuid().as_raw();
        let sudo = std::env::var("SUDO_USER").ok().filter(|u| !u.is_empty());
        let login = std::fs::read_to_string(crate::paths::PROC_SELF_LOGINUID)
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok())
            // (uid_t)-1: no login recorded (a daemon, or no audit support).
            .filter(|&login| login != u32::MAX && login != uid)
            .and_then(user_name);
        Self { user: sudo.or(login).or_else(|| user_name(uid)), uid: Some(uid) }
    }

    /// The same, with the user id the kernel vouches for (a control socket peer's) if known.
    #[must_use]
    pub fn with_uid_of(self, uid: Option<u32>) -> Self {
        Self { uid: uid.or(self.uid), ..self }
    }

    pub fn stamp(&self, record: &mut EventRecord) {
        record.user.clone_from(&self.user);
        record.uid = self.uid;
    }
}

fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten().map(|u| u.name)
}

/// One event, decoded: what `--json` prints (one object per line), what the sinks receive, and
/// what the human line is rendered from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    /// The host's name (`uname -n`), so alerts from many hosts can be told apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub interface: String,
    pub event: EventType,
    /// `monitor` on events the kernel raised while the policy only monitored: what they call
    /// dropped or blocked was counted, not dropped. Absent: enforced (or not a verdict).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<IpAddr>,
    /// `source` is the address of a network of this length: IPv6 scans and automatic blocks
    /// (the policy's `[scan_detection] ipv6_prefix`, counted and blocked as one), and manual
    /// blocks of networks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_len: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<u16>,
    /// `tcp`, `udp`, `icmp`, `icmpv6`, or the IP protocol number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Drops: the verdict reason (`port_denied`, `blocklist`, ...). Scans and blocks: `scan`,
    /// `slow_scan` (the long window's threshold) or `trap`. The loader's own events and the
    /// audit trail: what happened, or why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// TCP flags of the packet, e.g. `SYN` or `FIN|PSH|URG`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_flags: Option<String>,
    /// `syn`, `connect`, `fin`, `null`, `xmas`, `ack`, `udp`, `other`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan_kind: Option<String>,
    /// Scans: distinct refused ports in the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distinct_ports: Option<u32>,
    /// Scans: the first ports tried in the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports_sample: Option<Vec<u16>>,
    /// `blocked` or `alert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Limit events, and blocks for a limit: which limit refused (`rate_limit`,
    /// `connection_limit`); a `recidive` block names the limit here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    /// Limit events: the number of the rule whose limit refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<u16>,
    /// Blocks: how long the block lasts, in seconds.
    #[serde(rename = "block_secs", default, skip_serializing_if = "Option::is_none")]
    pub block_seconds: Option<u64>,
    /// Blocks: when it ends (RFC 3339).
    #[serde(rename = "expires_at", default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// `events_lost`: how many events the ring buffer could not hold; `client_lagged`: lines
    /// the client missed; blocks for a limit: the attempts refused in the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// The audit trail: who (see `Actor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Reloads and rollbacks: the generation that runs now; confirmations: the one kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// Reloads and rollbacks: the policy file of that generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// `feed_failed`, and reloads that switched a feed's new list in: the feed's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feed: Option<String>,
    /// Reloads and rollbacks: rules and entries the new generation has and the old did not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added: Vec<String>,
    /// ... and the other way round.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
    /// ... and settings that changed (`mode enforce -> monitor`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<String>,
    /// A change made with `--confirm-within`: rolled back at this time (RFC 3339) unless
    /// `portguard confirm` runs first. Named as `status` names the same moment.
    #[serde(rename = "rollback_at", default, skip_serializing_if = "Option::is_none")]
    pub confirm_by: Option<String>,
    /// Anomalies (`reason` names the measure): its value in the minute, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<u64>,
    /// ... the baseline's mean for that minute, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<u64>,
    /// ... the least value that departs from it, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u64>,
    /// ... and which baseline: `Mon 09:00-10:00` (that hour of earlier weeks) or `all hours`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compared_with: Option<String>,
    /// Automatic blocks: the pcap file that keeps the source's first packets (`[evidence]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
}

/// A limit's name on a human line.
fn limit_text(limit: Option<&str>) -> &'static str {
    match limit {
        Some("connection_limit") => "the per-source connection cap",
        _ => "the per-source rate limit",
    }
}

/// Changes listed on a human line at most; the rest are counted (JSON has them all).
const CHANGES_SHOWN: usize = 8;

impl EventRecord {
    pub fn new(time: SystemTime, interface: &str, event: EventType) -> Self {
        Self {
            time: humantime::format_rfc3339_millis(time).to_string(),
            host: crate::system::host_name(),
            interface: interface.to_owned(),
            event,
            mode: None,
            source: None,
            prefix_len: None,
            destination: None,
            source_port: None,
            destination_port: None,
            protocol: None,
            reason: None,
            tcp_flags: None,
            scan_kind: None,
            distinct_ports: None,
            ports_sample: None,
            action: None,
            limit: None,
            rule: None,
            block_seconds: None,
            expires: None,
            count: None,
            user: None,
            uid: None,
            generation: None,
            policy: None,
            feed: None,
            added: Vec::new(),
            removed: Vec::new(),
            changed: Vec::new(),
            evidence: None,
            confirm_by: None,
            observed: None,
            expected: None,
            threshold: None,
            compared_with: None,
        }
    }

    /// The loader about its attachment: `unprotected` (the interface went away, or the programs
    /// are not on it) or `reattached` (they are again); `reason` says what happened.
    pub fn lifecycle(time: SystemTime, interface: &str, event: EventType, detail: String) -> Self {
        Self { reason: Some(detail), ..Self::new(time, interface, event) }
    }

    /// Ring buffer overflow, reported by the reader from the kernel's counter.
    pub fn events_lost(time: SystemTime, interface: &str, count: u64) -> Self {
        Self { count: Some(count), ..Self::new(time, interface, EventType::EventsLost) }
    }

    /// Whether the program that raised it only monitored.
    pub fn monitored(&self) -> bool {
        self.mode == Some(Mode::Monitor)
    }

    /// The source, or the network it stands for.
    pub fn who(&self) -> String {
        match (self.source, self.prefix_len) {
            (Some(source), Some(len)) => format!("{source}/{len}"),
            (Some(source), None) => source.to_string(),
            _ => String::new(),
        }
    }

    /// What it says, without time and interface: the text of a human line, and of a chat
    /// message.
    pub fn summary(&self) -> String {
        let who = self.who();
        let target = match (self.destination, self.destination_port) {
            (Some(dst), Some(port)) if port != 0 => format!("{}:{port}", bracket(dst)),
            (Some(dst), _) => dst.to_string(),
            _ => String::new(),
        };
        let proto = self.protocol.as_deref().unwrap_or("");
        let kind = self.scan_kind.as_deref().unwrap_or("");
        let block = match self.block_seconds {
            Some(secs) => format!("for {}", crate::durations::format_secs(secs)),
            None => "until unblocked".to_string(),
        };
        let monitor = self.monitored();
        let reason = self.reason.as_deref().unwrap_or("?");
        let details = match self.event {
            EventType::Drop => format!(
                "{who} -> {target} {proto}{} {}: {reason}",
                self.tcp_flags.as_deref().map(|f| format!(" {f}")).unwrap_or_default(),
                if monitor { "would be dropped (monitor mode: passed)" } else { "dropped" }
            ),
            EventType::ScanDetected => format!(
                "{who} -> {} {kind} {}: {} distinct {proto} ports refused (sample {}){}",
                self.destination.map(|d| d.to_string()).unwrap_or_default(),
                if self.reason.as_deref() == Some("slow_scan") { "slow scan" } else { "scan" },
                self.distinct_ports.unwrap_or(0),
                self.ports_sample.as_deref().map(ports_list).unwrap_or_default(),
                match (self.action.as_deref() == Some("blocked"), monitor) {
                    (true, true) => "; would block (monitor mode)",
                    (true, false) => "; blocking",
                    (false, _) => "; alert only",
                }
            ),
            EventType::AutoBlocked => format!(
                "{who} {} {block} ({}){}",
                if monitor { "would be blocked (monitor mode: counted, not dropped)" } else { "blocked" },
                match self.reason.as_deref() {
                    Some("trap") =>
                        format!("touched trap port {proto}/{}", self.destination_port.unwrap_or(0)),
                    Some("slow_scan") =>
                        format!("{kind} slow scan of {} ports", self.distinct_ports.unwrap_or(0)),
                    Some(cause @ ("rate_limit" | "connection_limit" | "recidive")) => format!(
                        "{}{} of {proto}/{} refused {} attempts within the window",
                        if cause == "recidive" { "again, a longer block: " } else { "" },
                        limit_text(self.limit.as_deref()),
                        self.destination_port.unwrap_or(0),
                        self.count.unwrap_or(0)
                    ),
                    _ => format!("{kind} scan of {} ports", self.distinct_ports.unwrap_or(0)),
                },
                self.evidence
                    .as_deref()
                    .map(|path| format!("; its first packets: {path}"))
                    .unwrap_or_default()
            ),
            EventType::Limited => format!(
                "{who} -> {target} {proto}: {} of rule {} {}",
                limit_text(self.limit.as_deref()),
                self.rule.unwrap_or(0),
                if monitor { "would refuse it (monitor mode: passed)" } else { "refused it" }
            ),
            EventType::TrapHit => format!(
                "{who} -> {target} {proto} trap port{}",
                match (self.action.as_deref() == Some("blocked"), monitor) {
                    (true, true) => format!(": would block {block} (monitor mode)"),
                    (true, false) => format!(": blocked {block}"),
                    (false, _) => ": never_block source, not blocked".to_string(),
                }
            ),
            EventType::BlockExpired => format!(
                "{who} unblocked: its {} block expired",
                self.reason.as_deref().unwrap_or("automatic")
            ),
            EventType::EventsLost => format!(
                "{} lost: the ring buffer was full (raise [events] ring_buffer_kib)",
                crate::output::count(self.count.unwrap_or(0), "event", "events")
            ),
            EventType::Unprotected => format!("NOT PROTECTED: {reason}"),
            EventType::Reattached => format!("protected again: {reason}"),
            EventType::FeedFailed => format!("feed {}: {reason}", self.feed.as_deref().unwrap_or("?")),
            EventType::ClientLagged => {
                format!("{} events missed: this client read too slowly", self.count.unwrap_or(0))
            }
            EventType::Blocked => format!(
                "{who} blocked {block}{}{}",
                self.by(),
                self.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
            ),
            EventType::Unblocked => format!("{who} unblocked{}: {reason}", self.by()),
            EventType::Reloaded => format!(
                "generation {}{}{}{}: {}{}",
                self.generation.unwrap_or(0),
                self.policy.as_deref().map(|p| format!(" ({p})")).unwrap_or_default(),
                self.by(),
                self.reason.as_deref().map(|r| format!(" via {r}")).unwrap_or_default(),
                self.changes(),
                self.confirm_by
                    .as_deref()
                    .map(|t| format!("; rolls back at {t} unless confirmed"))
                    .unwrap_or_default()
            ),
            EventType::Confirmed | EventType::Detached => format!("{reason}{}", self.by()),
            EventType::RolledBack => match self.generation {
                Some(generation) => format!(
                    "{reason}: back to the previous policy, generation {generation}{}: {}",
                    self.policy.as_deref().map(|p| format!(" ({p})")).unwrap_or_default(),
                    self.changes()
                ),
                None => format!("{reason}: detached"),
            },
            EventType::Anomaly => format!(
                "{}/{}: {reason} {} per minute{}, normally {} ({}; departs above {})",
                proto,
                self.destination_port.unwrap_or(0),
                crate::output::group(self.observed.unwrap_or(0)),
                if who.is_empty() { String::new() } else { format!(" from {who}") },
                crate::output::group(self.expected.unwrap_or(0)),
                self.compared_with.as_deref().unwrap_or("?"),
                crate::output::group(self.threshold.unwrap_or(0)),
            ),
            EventType::Unknown => String::new(),
        };
        format!("{} {details}", self.event.label(monitor))
    }

    /// One line for people: time, interface, what, who, details.
    pub fn human(&self) -> String {
        let line = self.summary();
        let (label, details) = line.split_once(' ').unwrap_or((&line, ""));
        crate::printable(&format!("{} {} {label:<7} {details}", self.time, self.interface)).into_owned()
    }

    /// `human`, its label coloured by what it means when stdout takes colour (a terminal,
    /// without NO_COLOR): for the loader's and `events`' output, never for files or alerts.
    pub fn human_painted(&self) -> String {
        let line = self.summary();
        let (label, details) = line.split_once(' ').unwrap_or((&line, ""));
        let label = crate::printable(label);
        let label = match self.event.tone(self.monitored()) {
            Some(tone) => format!("{:<7}", paint(tone, label)),
            None => format!("{label:<7}"),
        };
        let head = crate::printable(&format!("{} {}", self.time, self.interface)).into_owned();
        format!("{head} {label} {}", crate::printable(details))
    }

    pub fn json(&self) -> String {
        serde_json::to_string(self).expect("event serializes")
    }

    /// ` by alice (uid 0)`, or nothing when nobody is known.
    fn by(&self) -> String {
        match (&self.user, self.uid) {
            (Some(user), Some(uid)) => format!(" by {user} (uid {uid})"),
            (Some(user), None) => format!(" by {user}"),
            (None, Some(uid)) => format!(" by uid {uid}"),
            (None, None) => String::new(),
        }
    }

    /// `+allow tcp 8080; -allow tcp 22; mode enforce -> monitor`, the first few.
    fn changes(&self) -> String {
        let all: Vec<String> = self
            .added
            .iter()
            .map(|a| format!("+{a}"))
            .chain(self.removed.iter().map(|r| format!("-{r}")))
            .chain(self.changed.iter().cloned())
            .collect();
        if all.is_empty() {
            return "no change to the policy".into();
        }
        let mut shown = all.iter().take(CHANGES_SHOWN).cloned().collect::<Vec<_>>().join("; ");
        if all.len() > CHANGES_SHOWN {
            shown.push_str(&format!("; and {} more", all.len() - CHANGES_SHOWN));
        }
        shown
    }
}

fn bracket(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    }
}

fn ports_list(ports: &[u16]) -> String {
    ports.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_keep_their_wire_names() {
        for kind in EventType::ALL {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.name()));
            assert_eq!(serde_json::from_str::<EventType>(&json).unwrap(), kind);
            assert_eq!(EventType::from_name(kind.name()), Some(kind));
        }
        assert_eq!(serde_json::from_str::<EventType>("\"from_the_future\"").unwrap(), EventType::Unknown);
        assert!(EventType::ScanDetected.is_alert() && !EventType::Drop.is_alert());
        assert!(EventType::RolledBack.is_audit() && !EventType::RolledBack.is_alert());
    }

    #[test]
    fn audit_lines() {
        let time = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let mut reload = EventRecord::new(time, "eth0", EventType::Reloaded);
        reload.host = Some("gw1".into());
        reload.generation = Some(3);
        reload.policy = Some("/etc/portguard/p.toml".into());
        Actor { user: Some("alice".into()), uid: Some(0) }.stamp(&mut reload);
        reload.reason = Some("portguard reload".into());
        reload.added = vec!["allow tcp 8080".into()];
        reload.removed = vec!["deny tcp 23".into()];
        reload.changed = vec!["mode enforce -> monitor".into()];
        assert_eq!(
            reload.human(),
            "2027-01-15T08:00:00.000Z eth0 RELOAD  generation 3 (/etc/portguard/p.toml) by alice (uid 0) \
             via portguard reload: +allow tcp 8080; -deny tcp 23; mode enforce -> monitor"
        );
        assert_eq!(
            reload.json(),
            r#"{"time":"2027-01-15T08:00:00.000Z","host":"gw1","interface":"eth0","event":"reloaded","reason":"portguard reload","user":"alice","uid":0,"generation":3,"policy":"/etc/portguard/p.toml","added":["allow tcp 8080"],"removed":["deny tcp 23"],"changed":["mode enforce -> monitor"]}"#
        );
        assert_eq!(serde_json::from_str::<EventRecord>(&reload.json()).unwrap(), reload);

        // Without a terminal (as under `cargo test`), the painted line is the plain one.
        assert_eq!(reload.human_painted(), reload.human());
        let mut rollback = EventRecord::new(time, "eth0", EventType::RolledBack);
        rollback.reason = Some("not confirmed within 2m".into());
        assert!(
            rollback.human().ends_with("eth0 ROLLBACK not confirmed within 2m: detached"),
            "{}",
            rollback.human()
        );

        let mut block = EventRecord::new(time, "eth0", EventType::Blocked);
        block.source = Some("203.0.113.0".parse().unwrap());
        block.prefix_len = Some(24);
        block.block_seconds = Some(3600);
        block.reason = Some("ssh brute force\nforged line".into());
        Actor { user: Some("bob".into()), uid: Some(0) }.stamp(&mut block);
        assert!(
            block.human().ends_with(
                "MANUAL-BLOCK 203.0.113.0/24 blocked for 1h by bob (uid 0): ssh brute force\\nforged line"
            ),
            "{}",
            block.human()
        );
    }
}
