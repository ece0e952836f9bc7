//! CrowdSec decisions as the LAPI's stream sends them, and as portguard keeps them: by the
//! LAPI's decision id, with the network, the scenario and the end (wall-clock seconds), in the
//! state directory so they stay in force across loader restarts. The kernel holds them in the
//! manual-block table (`crate::blocks` merges the two when it syncs it).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Duration,
};

use anyhow::{Context as _, Result};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{
    blocks::ManualEntry,
    files,
    netns::Netns,
    paths,
    policy::{CrowdSec, crowdsec::Scope},
    state::write_atomically,
};

/// One answer of `/v1/decisions/stream`: decisions new since the last pull (all of them with
/// `startup=true`) and those deleted or expired since. The LAPI sends `null` for an empty list.
#[derive(Debug, Default, Deserialize)]
pub struct StreamAnswer {
    #[serde(default)]
    pub new: Option<Vec<WireDecision>>,
    #[serde(default)]
    pub deleted: Option<Vec<WireDecision>>,
}

/// A decision as the LAPI sends it (fields portguard does not use are ignored).
#[derive(Clone, Debug, Deserialize)]
pub struct WireDecision {
    #[serde(default)]
    pub id: i64,
    /// Time left, as Go prints a duration (`3h59m56.9s`; negative once expired).
    #[serde(default)]
    pub duration: String,
    #[serde(default)]
    pub origin: String,
    #[serde(default)]
    pub scenario: String,
    #[serde(default)]
    pub scope: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub value: String,
}

/// A ban portguard enforces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub net: IpNet,
    pub scenario: String,
    pub origin: String,
    /// Seconds since the Unix epoch.
    pub added: u64,
    /// Seconds since the Unix epoch (from the decision's duration when it arrived).
    pub expires: u64,
}

impl Decision {
    pub fn seconds_left(&self, now: u64) -> u64 {
        self.expires.saturating_sub(now)
    }
}

/// The decisions in force on one attachment, by LAPI decision id.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DecisionStore {
    pub decisions: BTreeMap<i64, Decision>,
}

/// What one answer changed, and what it held that portguard does not enforce.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: usize,
    pub removed: usize,
    /// Decisions of types other than `ban` (`captcha`, `throttle`, ...), by type.
    pub other_types: BTreeMap<String, u64>,
    /// Decisions left out by the policy's `scopes` or `origins`.
    pub filtered: u64,
    /// Decisions whose value or duration could not be read (with one example).
    pub unreadable: u64,
    pub example_unreadable: Option<String>,
}

impl Changes {
    pub fn changed(&self) -> bool {
        self.added + self.removed > 0
    }
}

/// Largest decisions file read back.
const FILE_MAX: u64 = 512 << 20;

impl DecisionStore {
    /// The decisions saved for `iface` of this network namespace (none if there is no file).
    pub fn load(iface: &str) -> Result<Self> {
        let path = paths::crowdsec_decisions(iface);
        match files::read_text_capped(&path, FILE_MAX) {
            Ok(text) => serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is damaged; remove it (the LAPI sends every decision again at the next start)",
                    path.display()
                )
            }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn save(&self, iface: &str) -> Result<()> {
        write_atomically(&paths::crowdsec_decisions(iface), serde_json::to_string(self)?.as_bytes())
    }

    /// Forgets the saved decisions of `iface` (its policy has no `[crowdsec]` any more);
    /// returns how many there were.
    pub fn forget(iface: &str) -> Result<usize> {
        let had = Self::load(iface).map_or(0, |store| store.decisions.len());
        match std::fs::remove_file(paths::crowdsec_decisions(iface)) {
            Ok(()) => Ok(had),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(error) => Err(error).context("removing the saved CrowdSec decisions"),
        }
    }

    /// Takes one answer of the stream: with `startup`, it is every decision in force and
    /// replaces what was kept; otherwise new decisions are added and deleted ones removed.
    pub fn apply(&mut self, answer: StreamAnswer, startup: bool, config: &CrowdSec, now: u64) -> Changes {
        let mut changes = Changes::default();
        let mut fresh = if startup { BTreeMap::new() } else { std::mem::take(&mut self.decisions) };
        for wire in answer.deleted.unwrap_or_default() {
            if fresh.remove(&wire.id).is_some() {
                changes.removed += 1;
            }
        }
        for wire in answer.new.unwrap_or_default() {
            let Some(scope) = scope_of(&wire.scope) else {
                changes.filtered += 1;
                continue;
            };
            if !config.scopes.contains(&scope)
                || !(config.origins.is_empty()
                    || config.origins.iter().any(|o| o.eq_ignore_ascii_case(&wire.origin)))
            {
                changes.filtered += 1;
                continue;
            }
            if !wire.kind.eq_ignore_ascii_case("ban") {
                *changes.other_types.entry(wire.kind.clone()).or_default() += 1;
                continue;
            }
            let (net, left) = match (parse_value(scope, &wire.value), parse_go_duration(&wire.duration)) {
                (Ok(net), Ok(left)) => (net, left),
                (Err(problem), _) | (_, Err(problem)) => {
                    changes.unreadable += 1;
                    changes.example_unreadable.get_or_insert(format!("decision {}: {problem}", wire.id));
                    continue;
                }
            };
            // An expired decision (negative duration) is not enforced.
            let Some(left) = left.filter(|left| !left.is_zero()) else { continue };
            let expires = now.saturating_add(left.as_secs_f64().ceil() as u64).max(now + 1);
            let decision =
                Decision { net, scenario: wire.scenario, origin: wire.origin, added: now, expires };
            if fresh.insert(wire.id, decision).is_none() {
                changes.added += 1;
            }
        }
        if startup {
            let kept: BTreeSet<&i64> = fresh.keys().collect();
            changes.removed += self.decisions.keys().filter(|id| !kept.contains(id)).count();
            changes.added = fresh.keys().filter(|id| !self.decisions.contains_key(id)).count();
        }
        self.decisions = fresh;
        changes.removed += self.prune(now);
        changes
    }

    /// Drops decisions that have ended; returns how many.
    pub fn prune(&mut self, now: u64) -> usize {
        let before = self.decisions.len();
        self.decisions.retain(|_, d| d.expires > now);
        before - self.decisions.len()
    }

    pub fn any_expired(&self, now: u64) -> bool {
        self.decisions.values().any(|d| d.expires <= now)
    }

    /// Lifts the decisions whose network lies inside `net` (`portguard unblock`); returns them.
    pub fn lift(&mut self, net: &IpNet) -> Vec<Decision> {
        let (lifted, kept): (BTreeMap<_, _>, BTreeMap<_, _>) =
            std::mem::take(&mut self.decisions).into_iter().partition(|(_, d)| net.contains(&d.net));
        self.decisions = kept;
        lifted.into_values().collect()
    }

    /// The decisions in force as kernel blocks of `iface` (for `crate::blocks::sync_iface`).
    pub fn kernel_entries(&self, iface: &str, now: u64) -> Vec<ManualEntry> {
        self.decisions
            .values()
            .filter(|d| d.expires > now)
            .map(|d| ManualEntry {
                net: d.net,
                netns: Netns::current(),
                iface: Some(iface.to_owned()),
                except: Vec::new(),
                reason: None,
                added: d.added,
                expires: Some(d.expires),
            })
            .collect()
    }
}

fn scope_of(scope: &str) -> Option<Scope> {
    match scope.to_ascii_lowercase().as_str() {
        "ip" => Some(Scope::Ip),
        "range" => Some(Scope::Range),
        _ => None,
    }
}

/// The network of an `Ip` (an address) or `Range` (a CIDR) decision. A range's host bits are
/// cleared (`192.0.2.7/24` is `192.0.2.0/24`), as the LAPI matches it.
pub fn parse_value(scope: Scope, value: &str) -> Result<IpNet, String> {
    let value = value.trim();
    let net = match scope {
        Scope::Ip => {
            value.parse::<IpAddr>().map(IpNet::from).map_err(|_| format!("\"{value}\" is not an address"))
        }
        Scope::Range => {
            value.parse::<IpNet>().map(|n| n.trunc()).map_err(|_| format!("\"{value}\" is not a CIDR range"))
        }
    }?;
    // IPv4-mapped IPv6 is the IPv4 source the kernel sees.
    Ok(match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).unwrap_or(net),
            None => net,
        },
        other => other,
    })
}

/// A duration as Go prints it (`time.Duration.String`): `3h59m56.919404s`, `1.5s`, `450ms`,
/// `-2.1s`. `None`: zero or negative (ended).
pub fn parse_go_duration(text: &str) -> Result<Option<Duration>, String> {
    let bad = || format!("duration \"{text}\" is not a Go duration");
    let (negative, mut rest) = match text.trim() {
        t if t.starts_with('-') => (true, &t[1..]),
        t => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    if rest == "0" {
        return Ok(None);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let number: f64 = rest[..number_end].parse().map_err(|_| bad())?;
        rest = &rest[number_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let seconds = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad()),
        };
        total += number * seconds;
        rest = &rest[unit_end..];
    }
    if negative || total <= 0.0 {
        return Ok(None);
    }
    Duration::try_from_secs_f64(total).map(Some).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CrowdSec {
        CrowdSec {
            lapi: "http://127.0.0.1:8080".into(),
            api_key_file: "k".into(),
            api_key: crate::policy::alerts::Secret::new(b"k".to_vec()),
            update_every: Duration::from_secs(10),
            scopes: vec![Scope::Ip, Scope::Range],
            origins: Vec::new(),
            machine: None,
        }
    }

    fn wire(id: i64, kind: &str, scope: &str, value: &str, duration: &str) -> WireDecision {
        WireDecision {
            id,
            duration: duration.into(),
            origin: "cscli".into(),
            scenario: "manual 'ban' from 'x'".into(),
            scope: scope.into(),
            kind: kind.into(),
            value: value.into(),
        }
    }

    #[test]
    fn go_durations_are_read() {
        let secs = |t: &str| parse_go_duration(t).unwrap().map(|d| d.as_secs_f64());
        assert_eq!(secs("3h59m56.5s"), Some(14_396.5));
        assert_eq!(secs("1h"), Some(3600.0));
        assert_eq!(secs("450ms"), Some(0.45));
        assert_eq!(secs("1m0.000001s"), Some(60.000_001));
        assert_eq!(secs("-2.1s"), None);
        assert_eq!(secs("0s"), None);
        assert_eq!(secs("0"), None);
        for bad in ["", "5", "5x", "h", "1h-2m"] {
            assert!(parse_go_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn values_become_networks() {
        assert_eq!(parse_value(Scope::Ip, "203.0.113.7").unwrap().to_string(), "203.0.113.7/32");
        assert_eq!(parse_value(Scope::Ip, "2001:db8::7").unwrap().to_string(), "2001:db8::7/128");
        assert_eq!(parse_value(Scope::Ip, "::ffff:203.0.113.7").unwrap().to_string(), "203.0.113.7/32");
        assert_eq!(parse_value(Scope::Range, "198.51.100.9/24").unwrap().to_string(), "198.51.100.0/24");
        assert_eq!(parse_value(Scope::Range, "2001:db8:bad::/48").unwrap().to_string(), "2001:db8:bad::/48");
        assert!(parse_value(Scope::Ip, "203.0.113.0/24").is_err());
        assert!(parse_value(Scope::Range, "example").is_err());
    }

    #[test]
    fn startup_replaces_and_deltas_add_and_delete() {
        let mut store = DecisionStore::default();
        store.decisions.insert(
            99,
            Decision {
                net: "192.0.2.99/32".parse().unwrap(),
                scenario: String::new(),
                origin: String::new(),
                added: 0,
                expires: 10_000,
            },
        );
        let answer = StreamAnswer {
            new: Some(vec![
                wire(1, "ban", "Ip", "203.0.113.7", "1h"),
                wire(2, "ban", "Range", "2001:db8:bad::/48", "4h"),
                wire(3, "captcha", "Ip", "203.0.113.8", "1h"),
                wire(4, "ban", "Country", "FR", "1h"),
                wire(5, "ban", "Ip", "not-an-ip", "1h"),
                wire(6, "ban", "Ip", "203.0.113.9", "-3s"),
            ]),
            deleted: None,
        };
        let changes = store.apply(answer, true, &config(), 1000);
        assert_eq!((changes.added, changes.removed), (2, 1), "99 was not in the startup answer");
        assert_eq!(changes.other_types, BTreeMap::from([("captcha".to_string(), 1)]));
        assert_eq!((changes.filtered, changes.unreadable), (1, 1));
        assert!(changes.example_unreadable.unwrap().contains("not-an-ip"));
        assert_eq!(store.decisions[&1].expires, 4600);
        assert_eq!(store.kernel_entries("eth0", 1000).len(), 2);
        let delta = StreamAnswer {
            new: Some(vec![wire(7, "ban", "Ip", "198.51.100.1", "5s")]),
            deleted: Some(vec![
                wire(1, "ban", "Ip", "203.0.113.7", "-1s"),
                wire(50, "ban", "Ip", "192.0.2.1", "0s"),
            ]),
        };
        let changes = store.apply(delta, false, &config(), 1001);
        assert_eq!((changes.added, changes.removed), (1, 1));
        assert_eq!(store.decisions.keys().copied().collect::<Vec<_>>(), [2, 7]);
        assert!(!store.any_expired(1005) && store.any_expired(1006));
        let changes = store.apply(StreamAnswer::default(), false, &config(), 1006);
        assert_eq!(changes.removed, 1, "the 5 s decision ended");
        let lifted = store.lift(&"2001:db8::/32".parse().unwrap());
        assert_eq!(lifted.len(), 1);
        assert!(store.decisions.is_empty());
    }

    #[test]
    fn scopes_and_origins_filter() {
        let mut only = config();
        only.scopes = vec![Scope::Ip];
        only.origins = vec!["crowdsec".into()];
        let mut store = DecisionStore::default();
        let mut from_engine = wire(1, "ban", "Ip", "203.0.113.7", "1h");
        from_engine.origin = "CrowdSec".into();
        let answer = StreamAnswer {
            new: Some(vec![
                from_engine,
                wire(2, "ban", "Ip", "203.0.113.8", "1h"),
                wire(3, "ban", "Range", "198.51.100.0/24", "1h"),
            ]),
            deleted: None,
        };
        let changes = store.apply(answer, false, &only, 0);
        assert_eq!((changes.added, changes.filtered), (1, 2));
    }
}
