//! The policy: read from TOML, validated with file/line/column diagnostics, then compiled into
//! exactly what the kernel maps will hold (`compile`). `check`, `attach` and every later policy
//! command go through `load`; only the loader touches the kernel.

pub mod alerts;
pub mod anomaly;
pub mod compile;
pub mod crowdsec;
pub mod diagnostic;
pub mod diff;
pub mod feeds;
mod raw;
pub mod reach;
pub mod sources;
mod validate;

use std::{
    fmt,
    ops::RangeInclusive,
    path::{Path, PathBuf},
    time::Duration,
};

pub use alerts::{Alerts, WebhookFormat};
pub use anomaly::AnomalyDetection;
pub use crowdsec::CrowdSec;
pub use diagnostic::{Diagnostic, PolicyErrors, Severity};
pub use feeds::Feeds;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Drop what the policy denies.
    Enforce,
    /// Count what would be dropped; drop nothing.
    Monitor,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => portguard_common::maps::PROTO_TCP,
            Self::Udp => portguard_common::maps::PROTO_UDP,
        }
    }

    /// The protocol of an IP protocol number, if it is one with ports.
    pub const fn from_number(number: u8) -> Option<Self> {
        match number {
            portguard_common::maps::PROTO_TCP => Some(Self::Tcp),
            portguard_common::maps::PROTO_UDP => Some(Self::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleKind {
    Allow,
    Deny,
}

/// An `[[allow]]` or `[[deny]]` table.
#[derive(Clone, Debug, Serialize)]
pub struct Rule {
    /// 1-based, in file order across allow and deny rules.
    pub number: u16,
    pub kind: RuleKind,
    pub name: Option<String>,
    /// `protocol` in JSON, as everywhere else (`proto` in the policy file).
    #[serde(rename = "protocol")]
    pub proto: Proto,
    pub ports: Vec<RangeInclusive<u16>>,
    /// Sources the rule is limited to (allow rules only); `None` means every source.
    pub from: Option<Vec<IpNet>>,
    /// Per-source limits (allow rules only).
    pub limit: Option<SourceLimit>,
    pub line: usize,
}

/// An allow rule's per-source limits (`limit = { new_per_source = "5/10s", burst = 5,
/// connections_per_source = 4 }`), at least one of the two. A source is an IPv4 address, or
/// an IPv6 network of `[scan_detection] ipv6_prefix` bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SourceLimit {
    /// New connections (TCP SYN) or datagrams (UDP) per source, on average.
    pub new_per_source: Option<Rate>,
    /// How many may come at once: the size of the bucket (default: the rate's count; 0
    /// without a rate).
    pub burst: u32,
    /// Open TCP connections a source may hold at once (TCP rules only).
    pub connections_per_source: Option<u32>,
}

impl SourceLimit {
    /// `at most 5/10s new per source (burst 5), 4 open per source`, for `check` and diffs.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(rate) = self.new_per_source {
            parts.push(format!("at most {rate} new per source (burst {})", self.burst));
        }
        if let Some(connections) = self.connections_per_source {
            parts.push(format!("at most {connections} open per source"));
        }
        parts.join(", ")
    }
}

/// `count` per `per` (`"5/10s"`, `"20/s"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Rate {
    pub count: u32,
    #[serde(rename = "per_secs", with = "secs")]
    pub per: Duration,
}

impl Rate {
    /// The time one attempt's token takes to come back.
    pub fn interval(self) -> Duration {
        self.per / self.count.max(1)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, crate::durations::format(self.per))
    }
}

impl Rule {
    /// How the rule is named in messages: `rule 3 "ssh" (line 12)`.
    pub fn label(&self) -> String {
        match &self.name {
            Some(name) => format!("rule {} \"{name}\" (line {})", self.number, self.line),
            None => format!("rule {} (line {})", self.number, self.line),
        }
    }

    pub fn port_count(&self) -> usize {
        self.ports.iter().map(|r| r.clone().count()).sum()
    }
}

/// What happens to inbound packets the port rules do not decide.
#[derive(Clone, Debug, Serialize)]
pub struct Inbound {
    /// `pass` or `drop`, as the policy file says it.
    #[serde(serialize_with = "pass_or_drop")]
    pub malformed: Action,
    #[serde(serialize_with = "pass_or_drop")]
    pub fragments_unseen: Action,
    #[serde(rename = "fragment_timeout_secs", with = "secs")]
    pub fragment_timeout: Duration,
    pub icmp: Action,
    pub icmpv6: Action,
    pub other_protocols: Action,
    pub tcp_non_syn: TcpNonSyn,
    #[serde(rename = "udp_reply_window_secs", with = "secs")]
    pub udp_reply_window: Duration,
}

impl Default for Inbound {
    fn default() -> Self {
        Self {
            malformed: Action::Deny,
            fragments_unseen: Action::Deny,
            fragment_timeout: Duration::from_secs(30),
            icmp: Action::Allow,
            icmpv6: Action::Allow,
            other_protocols: Action::Allow,
            tcp_non_syn: TcpNonSyn::Track,
            udp_reply_window: Duration::from_secs(120),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TcpNonSyn {
    /// Segments that cannot open a connection pass to a closed port only for known flows.
    Track,
    /// They always pass (stateless; the kernel answers strays with a RST).
    Pass,
}

/// Sizes of the tables shared by every policy generation.
#[derive(Clone, Debug, Serialize)]
pub struct Limits {
    pub flows: u32,
    pub fragments: u32,
    /// Sources tracked by scan detection (LRU: the least recently seen are forgotten).
    pub sources: u32,
    /// Automatic blocks held at once (LRU: the oldest go first under a flood).
    pub auto_blocks: u32,
    /// Manual blocks (`portguard block`) held at once.
    pub manual_blocks: u32,
    /// Blocklist entries as the kernel holds them (IPv4 ranges after merging, IPv6 prefixes).
    pub blocklist: u32,
    /// Sources (per limited rule) whose budget of new connections is kept (LRU: the least
    /// recently seen are forgotten, and start with a full budget when they come back).
    pub limited_sources: u32,
    /// Sources (per rule with `connections_per_source`) whose open connections are counted;
    /// when full, a new source's connections are not counted (the cap fails open, counted).
    pub connected_sources: u32,
    /// Open connections counted against caps, over every source; when full, a new
    /// connection is not counted (fails open, counted).
    pub connections: u32,
    /// (port, source network) pairs the per-port statistics keep (LRU: the least recently
    /// seen are forgotten, and `learn` says so).
    pub port_sources: u32,
    /// Automatic blocks (scans, trap ports) the packet path may add per second; the rest are
    /// counted as not admitted. Bounds what a flood of forged sources can do to the table.
    pub new_blocks_per_second: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            flows: 65536,
            fragments: 8192,
            sources: 65536,
            auto_blocks: 65536,
            manual_blocks: 65536,
            blocklist: 4_000_000,
            limited_sources: 65536,
            connected_sources: 65536,
            connections: 65536,
            port_sources: 65536,
            new_blocks_per_second: 200,
        }
    }
}

/// What a detector does when it fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Response {
    Off,
    Alert,
    Block,
}

#[derive(Clone, Debug, Serialize)]
pub struct ScanDetection {
    /// Distinct refused destination ports (per source and protocol) in one window that make a
    /// scan.
    pub threshold: u32,
    #[serde(rename = "window_secs", with = "secs")]
    pub window: Duration,
    /// The same over the long window, for slow scans; 0: off.
    pub slow_threshold: u32,
    #[serde(rename = "slow_window_secs", with = "secs")]
    pub slow_window: Duration,
    /// IPv6 sources are counted, and blocked automatically, by their network of this length.
    pub ipv6_prefix: u8,
    pub action: Response,
    #[serde(rename = "block_for_secs", with = "secs")]
    pub block_for: Duration,
}

impl ScanDetection {
    pub const DEFAULT_THRESHOLD: u32 = 20;
    pub const MAX_THRESHOLD: u32 = 256;

    /// The long window's default threshold: twice the short one's, at most the maximum.
    pub fn default_slow_threshold(threshold: u32) -> u32 {
        (2 * threshold).min(Self::MAX_THRESHOLD)
    }
}

impl Default for ScanDetection {
    fn default() -> Self {
        Self {
            threshold: Self::DEFAULT_THRESHOLD,
            window: Duration::from_secs(5),
            slow_threshold: Self::default_slow_threshold(Self::DEFAULT_THRESHOLD),
            slow_window: Duration::from_secs(5 * 60),
            ipv6_prefix: 64,
            action: Response::Alert,
            block_for: Duration::from_secs(15 * 60),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct TrapPorts {
    pub tcp: Vec<RangeInclusive<u16>>,
    pub udp: Vec<RangeInclusive<u16>>,
    #[serde(rename = "block_for_secs", with = "secs")]
    pub block_for: Duration,
}

impl Default for TrapPorts {
    fn default() -> Self {
        Self { tcp: Vec::new(), udp: Vec::new(), block_for: Duration::from_secs(3600) }
    }
}

impl TrapPorts {
    pub fn is_empty(&self) -> bool {
        self.tcp.is_empty() && self.udp.is_empty()
    }

    /// The trap ports of one protocol.
    pub fn of(&self, proto: Proto) -> &[RangeInclusive<u16>] {
        match proto {
            Proto::Tcp => &self.tcp,
            Proto::Udp => &self.udp,
        }
    }
}

/// `[brute_force]`: a source that a rule's per-source limit keeps refusing is blocked, and a
/// repeat offender for longer each time (fail2ban's recidive).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BruteForce {
    /// Refused attempts (by one source, on one rule, in one window) that block the source.
    pub after: u32,
    #[serde(rename = "within_secs", with = "secs")]
    pub within: Duration,
    /// A first block's length.
    #[serde(rename = "block_for_secs", with = "secs")]
    pub block_for: Duration,
    /// A block that starts within this time of the end of the source's last one lasts twice
    /// as long as that one ...
    #[serde(rename = "recidive_within_secs", with = "secs")]
    pub recidive_within: Duration,
    /// ... up to this.
    #[serde(rename = "max_block_for_secs", with = "secs")]
    pub max_block_for: Duration,
}

impl Default for BruteForce {
    fn default() -> Self {
        Self {
            after: 10,
            within: Duration::from_secs(60),
            block_for: Duration::from_secs(10 * 60),
            recidive_within: Duration::from_secs(24 * 3600),
            max_block_for: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Events {
    /// Drop events each CPU may send per second; the rest are counted as suppressed.
    pub drop_events_per_second: u32,
    /// Size of the kernel's event ring buffer.
    pub ring_buffer_kib: u32,
    /// The journal's files together (`crate::journal`); 0: no journal.
    pub journal_kib: u32,
    /// One journal file, rotated when it reaches this size.
    pub journal_file_kib: u32,
}

impl Default for Events {
    fn default() -> Self {
        Self { drop_events_per_second: 20, ring_buffer_kib: 256, journal_kib: 65536, journal_file_kib: 8192 }
    }
}

/// Where the blocklist entries came from, for summaries.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BlocklistSource {
    /// The file they were read from; `None` (and no `feed`): the policy's own `[blocklist] sources`.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// The feed (`[blocklist] urls`) they came from: its last good copy.
    #[serde(default)]
    pub feed: Option<String>,
    pub entries: usize,
    pub bad_lines: usize,
}

impl BlocklistSource {
    /// For people: `policy`, the file's path, or `feed URL`.
    pub fn origin(&self) -> String {
        match (&self.file, &self.feed) {
            (Some(file), _) => file.display().to_string(),
            (None, Some(url)) => format!("feed {url}"),
            (None, None) => "policy".to_string(),
        }
    }
}

/// `[evidence]`: the first packets of each source blocked automatically, kept as a pcap file
/// per block beside the journal (`crate::evidence`).
#[derive(Clone, Debug, Serialize)]
pub struct Evidence {
    /// Packets copied per block, the one that caused it first; 0: none.
    pub packets_per_source: u32,
    /// Payload bytes kept after each packet's headers.
    pub snaplen: u32,
    /// How long after the block its packets are still copied.
    #[serde(rename = "capture_for_secs", with = "secs")]
    pub capture_for: Duration,
    /// The capture files together; the oldest are deleted to stay within it.
    pub total_kib: u32,
}

impl Default for Evidence {
    fn default() -> Self {
        Self { packets_per_source: 16, snaplen: 128, capture_for: Duration::from_secs(10), total_kib: 16384 }
    }
}

impl Evidence {
    /// Whether anything is captured: packets to copy, and room to keep them.
    pub fn enabled(&self) -> bool {
        self.packets_per_source != 0 && self.total_kib != 0
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Policy {
    pub path: PathBuf,
    pub mode: Mode,
    pub default: Action,
    pub rules: Vec<Rule>,
    pub never_block: Vec<IpNet>,
    pub blocklist: Vec<IpNet>,
    pub blocklist_sources: Vec<BlocklistSource>,
    /// `[blocklist] urls`: lists the loader fetches; their entries join `blocklist` in the
    /// loader only (`crate::feeds::add_saved`), never in `check`.
    pub feeds: Option<Feeds>,
    pub inbound: Inbound,
    pub limits: Limits,
    pub scan_detection: ScanDetection,
    pub trap_ports: TrapPorts,
    /// `[brute_force]`; `None`: limits refuse, nothing more.
    pub brute_force: Option<BruteForce>,
    pub events: Events,
    pub evidence: Evidence,
    pub alerts: Alerts,
    /// `[metrics] listen`: where to serve Prometheus metrics (`attach --metrics` overrides).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `[crowdsec]`: the Local API whose decisions are enforced.
    pub crowdsec: Option<CrowdSec>,
    /// `[anomaly]`: when a port departs from its baseline (`crate::baseline`).
    pub anomaly: AnomalyDetection,
}

impl Mode {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Monitor => "monitor",
        }
    }
}

impl Policy {
    pub fn allow_rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().filter(|r| r.kind == RuleKind::Allow)
    }

    pub fn deny_rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().filter(|r| r.kind == RuleKind::Deny)
    }

    pub fn rule(&self, number: u16) -> Option<&Rule> {
        self.rules.iter().find(|r| r.number == number)
    }

    /// One line for humans: `enforce, default deny, 3 allow / 1 deny rules, 2 blocklist entries`.
    pub fn summary(&self) -> String {
        use crate::output::count;
        let (allow, deny) = (self.allow_rules().count() as u64, self.deny_rules().count() as u64);
        format!(
            "{}, default {}, {allow} allow / {deny} deny {}, {}, {} never_block",
            match self.mode {
                Mode::Enforce => "enforce",
                Mode::Monitor => "monitor",
            },
            match self.default {
                Action::Allow => "allow",
                Action::Deny => "deny",
            },
            crate::output::noun(allow + deny, "rule", "rules"),
            count(self.blocklist.len() as u64, "blocklist entry", "blocklist entries"),
            self.never_block.len(),
        )
    }
}

/// Options that change how strictly a policy is read.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadOptions {
    /// Bad lines in blocklist files are errors, not warnings, and so is an empty policy.
    pub strict: bool,
}

/// A valid policy and the warnings found on the way.
#[derive(Debug)]
pub struct Loaded {
    pub policy: Policy,
    pub warnings: Vec<Diagnostic>,
}

/// Reads and validates a policy file (and the blocklist files it names).
pub fn load(path: &Path, options: LoadOptions) -> Result<Loaded, PolicyErrors> {
    let text =
        crate::files::read_text_capped(path, crate::files::POLICY_MAX).map_err(|error| PolicyErrors {
            diagnostics: vec![Diagnostic {
                severity: Severity::Error,
                file: path.to_owned(),
                line: 0,
                column: 0,
                message: format!("cannot read the policy file: {error}"),
            }],
        })?;
    parse(&text, path, options)
}

/// Validates policy text; `path` names it in messages and anchors relative blocklist files.
pub fn parse(text: &str, path: &Path, options: LoadOptions) -> Result<Loaded, PolicyErrors> {
    let mut loaded = validate::validate(text, path, options)?;
    // An empty file (a failed deploy, a truncated copy) is a valid policy that opens every port.
    if toml::from_str::<toml::Table>(text).is_ok_and(|table| table.is_empty()) {
        let empty = Diagnostic {
            severity: if options.strict { Severity::Error } else { Severity::Warning },
            file: path.to_owned(),
            line: 0,
            column: 0,
            message: "THE POLICY IS EMPTY: every port is open and nothing is blocked; if that is \
                      not what you meant, check the file (--strict refuses an empty policy)"
                .into(),
        };
        if options.strict {
            return Err(PolicyErrors { diagnostics: vec![empty] });
        }
        loaded.warnings.insert(0, empty);
    }
    // ::ffff:0:0/96 arrives here as 0.0.0.0/0.
    if let Some(all) = loaded.policy.blocklist.iter().find(|net| net.prefix_len() == 0) {
        let confirmed = toml::from_str::<raw::RawPolicy>(text)
            .ok()
            .and_then(|raw| raw.blocklist)
            .is_some_and(|blocklist| blocklist.everything);
        if !confirmed {
            let whom = if all.addr().is_ipv4() { "every IPv4 source" } else { "every IPv6 source" };
            return Err(PolicyErrors {
                diagnostics: vec![Diagnostic {
                    severity: Severity::Error,
                    file: path.to_owned(),
                    line: 0,
                    column: 0,
                    message: format!(
                        "the blocklist holds {all}, which blocks {whom}; write `everything = true` \
                         under [blocklist] if that is what you mean"
                    ),
                }],
            });
        }
    }
    Ok(loaded)
}

/// Durations in JSON are seconds (the key ends in `_secs`): a whole number, as nearly every
/// duration is; a policy may also write one with a fraction (`window = "500ms"`), said back
/// as such (0.5) rather than rounded into something the policy does not say.
pub(crate) mod secs {
    use std::time::Duration;

    use serde::Serializer;

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        if value.subsec_nanos() == 0 {
            serializer.serialize_u64(value.as_secs())
        } else {
            serializer.serialize_f64(value.as_secs_f64())
        }
    }
}

/// `[inbound] malformed` and `fragments_unseen` take `pass` and `drop` in the policy file, and
/// JSON says them back in the same words.
#[allow(clippy::trivially_copy_pass_by_ref, reason = "serde's serialize_with passes a reference")]
fn pass_or_drop<S: serde::Serializer>(action: &Action, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(match action {
        Action::Allow => "pass",
        Action::Deny => "drop",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_policy_warns_loudly_and_strict_refuses_it() {
        for text in ["", "\n# only a comment\n   \n"] {
            let loaded = parse(text, Path::new("p.toml"), LoadOptions::default()).unwrap();
            assert!(
                loaded.warnings[0].to_string().contains("p.toml: warning: THE POLICY IS EMPTY"),
                "{:?}",
                loaded.warnings
            );
            let refused = parse(text, Path::new("p.toml"), LoadOptions { strict: true }).unwrap_err();
            assert!(refused.to_string().contains("p.toml: error: THE POLICY IS EMPTY"), "{refused}");
        }
        let loaded =
            parse("default = \"allow\"\n", Path::new("p.toml"), LoadOptions { strict: true }).unwrap();
        assert!(loaded.warnings.iter().all(|w| !w.message.contains("EMPTY")));
    }

    #[test]
    fn a_blocklist_of_a_whole_family_needs_confirming() {
        for (net, whom) in [("0.0.0.0/0", "IPv4"), ("::ffff:0:0/96", "IPv4"), ("::/0", "IPv6")] {
            let text = format!("default = \"allow\"\n[blocklist]\nsources = [\"{net}\"]\n");
            let refused = parse(&text, Path::new("p.toml"), LoadOptions::default()).unwrap_err().to_string();
            assert!(
                refused.contains(&format!("blocks every {whom} source; write `everything = true`")),
                "{refused}"
            );
            let confirmed = text.replace("[blocklist]\n", "[blocklist]\neverything = true\n");
            assert_eq!(
                parse(&confirmed, Path::new("p.toml"), LoadOptions::default())
                    .unwrap()
                    .policy
                    .blocklist
                    .len(),
                1
            );
        }
        let text = "default = \"allow\"\n[blocklist]\nsources = [\"0.0.0.0/1\"]\n";
        assert!(parse(text, Path::new("p.toml"), LoadOptions::default()).is_ok());
    }
}
