//! The policy file as written: every value keeps its byte span so validation can point at the
//! line that is wrong. Unknown keys are rejected by serde (with their span).

use serde::Deserialize;
use toml::{Spanned, Value};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub mode: Option<Spanned<String>>,
    pub default: Option<Spanned<String>>,
    #[serde(default)]
    pub never_block: Vec<Spanned<String>>,
    #[serde(default)]
    pub allow: Vec<Spanned<RawRule>>,
    #[serde(default)]
    pub deny: Vec<Spanned<RawRule>>,
    pub blocklist: Option<RawBlocklist>,
    pub inbound: Option<RawInbound>,
    pub limits: Option<RawLimits>,
    pub scan_detection: Option<RawScanDetection>,
    pub trap_ports: Option<RawTrapPorts>,
    pub brute_force: Option<RawBruteForce>,
    pub events: Option<RawEvents>,
    pub evidence: Option<RawEvidence>,
    pub alerts: Option<RawAlerts>,
    pub metrics: Option<RawMetrics>,
    pub crowdsec: Option<Spanned<super::crowdsec::RawCrowdSec>>,
    pub anomaly: Option<super::anomaly::RawAnomaly>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlerts {
    pub webhook: Option<Spanned<String>>,
    pub format: Option<Spanned<String>>,
    pub headers: Option<Spanned<std::collections::BTreeMap<String, Spanned<String>>>>,
    pub hmac_secret_file: Option<Spanned<String>>,
    pub exec: Option<Spanned<String>>,
    pub events: Option<Spanned<Vec<Spanned<String>>>>,
    pub timeout: Option<Spanned<String>>,
    pub retries: Option<Spanned<i64>>,
    pub max_per_minute: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub listen: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScanDetection {
    pub threshold: Option<Spanned<i64>>,
    pub window: Option<Spanned<String>>,
    pub slow_threshold: Option<Spanned<i64>>,
    pub slow_window: Option<Spanned<String>>,
    pub ipv6_prefix: Option<Spanned<i64>>,
    pub action: Option<Spanned<String>>,
    pub block_for: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrapPorts {
    #[serde(default)]
    pub tcp: Vec<Spanned<Value>>,
    #[serde(default)]
    pub udp: Vec<Spanned<Value>>,
    pub block_for: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBruteForce {
    pub after: Option<Spanned<i64>>,
    pub within: Option<Spanned<String>>,
    pub block_for: Option<Spanned<String>>,
    pub recidive_within: Option<Spanned<String>>,
    pub max_block_for: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEvents {
    pub drop_events_per_second: Option<Spanned<i64>>,
    pub ring_buffer_kib: Option<Spanned<i64>>,
    pub journal_kib: Option<Spanned<i64>>,
    pub journal_file_kib: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEvidence {
    pub packets_per_source: Option<Spanned<i64>>,
    pub snaplen: Option<Spanned<i64>>,
    pub capture_for: Option<Spanned<String>>,
    pub total_kib: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: Option<Spanned<String>>,
    pub proto: Spanned<String>,
    /// Numbers and `"low-high"` strings; checked one by one in validation.
    pub ports: Spanned<Vec<Spanned<Value>>>,
    pub from: Option<Spanned<Vec<Spanned<String>>>>,
    pub limit: Option<Spanned<RawSourceLimit>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSourceLimit {
    pub new_per_source: Option<Spanned<String>>,
    pub burst: Option<Spanned<i64>>,
    pub connections_per_source: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBlocklist {
    #[serde(default)]
    pub sources: Vec<Spanned<String>>,
    #[serde(default)]
    pub files: Vec<Spanned<String>>,
    /// Published lists the loader fetches (`super::feeds`).
    #[serde(default)]
    pub urls: Vec<Spanned<String>>,
    pub refresh: Option<Spanned<String>>,
    /// Confirms entries that cover a whole address family (checked in `policy::parse`).
    #[serde(default)]
    pub everything: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInbound {
    pub malformed: Option<Spanned<String>>,
    pub fragments_unseen: Option<Spanned<String>>,
    pub fragment_timeout: Option<Spanned<String>>,
    pub icmp: Option<Spanned<String>>,
    pub icmpv6: Option<Spanned<String>>,
    pub other_protocols: Option<Spanned<String>>,
    pub tcp_non_syn: Option<Spanned<String>>,
    pub udp_reply_window: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub flows: Option<Spanned<i64>>,
    pub fragments: Option<Spanned<i64>>,
    pub sources: Option<Spanned<i64>>,
    pub auto_blocks: Option<Spanned<i64>>,
    pub manual_blocks: Option<Spanned<i64>>,
    pub blocklist: Option<Spanned<i64>>,
    pub limited_sources: Option<Spanned<i64>>,
    pub connected_sources: Option<Spanned<i64>>,
    pub connections: Option<Spanned<i64>>,
    pub port_sources: Option<Spanned<i64>>,
    pub new_blocks_per_second: Option<Spanned<i64>>,
}
