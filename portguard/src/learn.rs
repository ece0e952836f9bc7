//! `learn`: a policy proposed from what the per-port statistics saw (`portstats`). Pure: the
//! statistics, the host's listening sockets and its SSH facts go in, a `Proposal` comes out,
//! and `render` writes it in the policy file's own TOML, with the evidence for every rule.
//!
//! What it proposes, port by port (TCP and UDP):
//! * a port with at least `min_connections` new connections (TCP SYNs, UDP datagrams) and a
//!   socket listening on it is opened, to the source networks that used it regularly (each
//!   with `min_connections` or more) when there are few of them (`max_networks`) and they made
//!   nearly all its connections; otherwise to everyone, saying why;
//! * SSH (where sshd listens) is always opened, narrowed as above but always with the network
//!   of the session `learn` runs in, or to everyone when no network is known: the proposal
//!   never closes the way the host is administered (networks left out are named);
//! * a port that was tried but where nothing listens is left closed (a scan's probes, most
//!   likely), listed; a listening socket that received nothing is listed as one to close.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    time::{Duration, SystemTime},
};

use ipnet::IpNet;
use portguard_common::maps::PORT_SOURCE_V4_PREFIX;
use serde::Serialize;

use crate::{
    durations,
    output::{count, rfc3339},
    policy::Proto,
    portstats::{Snapshot, SourceUse},
};

/// What to make of the statistics.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// New connections that make a port's use (and a network's use of a port) real.
    pub min_connections: u64,
    /// Only sources last seen at or after this time count (`--since`).
    pub since: Option<SystemTime>,
    /// Most networks a rule's `from` lists; a port used from more is opened to everyone.
    pub max_networks: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self { min_connections: 3, since: None, max_networks: 8 }
    }
}

/// Share of a port's connections that may come from networks below `min_connections` (one-off
/// visitors, a scan's single probe) for the rule to be narrowed to the regular networks.
const OCCASIONAL_SHARE: f64 = 0.1;

/// A socket waiting for connections on the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Listener {
    pub protocol: Proto,
    pub port: u16,
    /// Who holds it (`sshd (pid 812)`), when that can be seen.
    pub program: Option<String>,
}

/// What the host says about SSH.
#[derive(Clone, Debug, Default)]
pub struct Ssh {
    /// TCP ports sshd listens on (beyond loopback).
    pub ports: Vec<u16>,
    /// The network of the SSH session `learn` runs in, and the port it came in on.
    pub session: Option<(IpNet, u16)>,
}

/// Why a rule is open to everyone rather than narrowed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpenBecause {
    /// More regular networks than `max_networks`.
    ManyNetworks,
    /// Networks below `min_connections` made more than a tenth of its connections.
    Spread,
    /// The source table forgot entries, so the networks seen may not be all.
    SourcesForgotten,
    /// No source network is known (SSH listening, unused, or its sources forgotten).
    NoSources,
}

/// One proposed `[[allow]]` rule, with its evidence.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProposedRule {
    pub protocol: Proto,
    pub port: u16,
    pub name: String,
    pub program: Option<String>,
    pub ssh: bool,
    /// `None`: every source.
    pub from: Option<Vec<IpNet>>,
    pub open_because: Option<OpenBecause>,
    /// New connections in the evidence (all since counting began; with `--since`, those of
    /// the networks seen since).
    pub connections: u64,
    /// Of which the running policy refused (or would have, in monitor mode).
    pub refused: u64,
    pub networks: usize,
    /// Networks left out of `from`, with their connections.
    pub left_out: Vec<(IpNet, u64)>,
    pub first_seen: Option<SystemTime>,
    pub last_seen: Option<SystemTime>,
    /// The session `learn` runs in came in on this port: its network is in `from`.
    pub keeps_session: bool,
}

/// A port that was not opened, and why.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NotOpened {
    pub protocol: Proto,
    pub port: u16,
    pub connections: u64,
    pub networks: usize,
    /// Something listens there (then it had fewer than `min_connections`).
    pub listening: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Proposal {
    pub rules: Vec<ProposedRule>,
    /// Tried, but nothing listens there: left closed.
    pub probed: Vec<NotOpened>,
    /// Listening, with fewer than `min_connections`: left closed.
    pub little_used: Vec<NotOpened>,
    /// Listening, and nothing arrived: candidates to close.
    pub unused: Vec<Listener>,
    /// What the statistics cannot tell, said in the proposal's header.
    pub caveats: Vec<String>,
}

/// Proposes a policy from `snapshot`; `listeners` are the host's listening sockets.
pub fn propose(snapshot: &Snapshot, listeners: &[Listener], ssh: &Ssh, options: &Options) -> Proposal {
    let recent = |s: &&SourceUse| options.since.is_none_or(|since| s.last_seen >= since);
    let forgotten = snapshot.sources_forgotten();
    let mut proposal = Proposal {
        rules: Vec::new(),
        probed: Vec::new(),
        little_used: Vec::new(),
        unused: Vec::new(),
        caveats: caveats(snapshot, options),
    };
    let mut ports: BTreeSet<(Proto, u16)> = snapshot.ports.iter().map(|p| (p.protocol, p.port)).collect();
    ports.extend(ssh.ports.iter().map(|port| (Proto::Tcp, *port)));
    for (protocol, port) in ports {
        let sources: Vec<&SourceUse> = snapshot.sources_of(protocol, port).filter(recent).collect();
        let connections = match (options.since, snapshot.port(protocol, port)) {
            (Some(_), _) => sources.iter().map(|s| s.connections).sum(),
            (None, Some(usage)) => usage.connections(),
            (None, None) => 0,
        };
        let refused = match (options.since, snapshot.port(protocol, port)) {
            (Some(_), _) => sources.iter().map(|s| s.refused).sum(),
            (None, Some(usage)) => usage.refused.connections,
            (None, None) => 0,
        };
        let listener = listeners.iter().find(|l| l.protocol == protocol && l.port == port);
        let is_ssh = protocol == Proto::Tcp && ssh.ports.contains(&port);
        let not_opened =
            NotOpened { protocol, port, connections, networks: sources.len(), listening: listener.is_some() };
        if !is_ssh && listener.is_none() {
            if connections > 0 {
                proposal.probed.push(not_opened);
            }
            continue;
        }
        if !is_ssh && connections < options.min_connections.max(1) {
            if connections > 0 {
                proposal.little_used.push(not_opened);
            }
            continue;
        }
        let session =
            ssh.session.filter(|(_, session_port)| is_ssh && *session_port == port).map(|(net, _)| net);
        let (from, open_because, left_out) =
            sources_to_allow(&sources, connections, session, forgotten > 0, options);
        proposal.rules.push(ProposedRule {
            protocol,
            port,
            name: if is_ssh { format!("ssh-{port}") } else { format!("{protocol}-{port}") },
            program: listener.and_then(|l| l.program.clone()),
            ssh: is_ssh,
            keeps_session: session.is_some() && from.is_some(),
            from,
            open_because,
            connections,
            refused,
            networks: sources.len(),
            left_out,
            first_seen: sources.iter().map(|s| s.first_seen).min(),
            last_seen: sources.iter().map(|s| s.last_seen).max(),
        });
    }
    proposal.unused = listeners
        .iter()
        .filter(|l| {
            !proposal.rules.iter().any(|r| r.protocol == l.protocol && r.port == l.port)
                && snapshot.port(l.protocol, l.port).is_none_or(|usage| usage.connections() == 0)
        })
        .cloned()
        .collect();
    proposal
}

type Narrowing = (Option<Vec<IpNet>>, Option<OpenBecause>, Vec<(IpNet, u64)>);

/// The networks a port's rule admits: `None` for everyone, with the reason.
fn sources_to_allow(
    sources: &[&SourceUse],
    connections: u64,
    session: Option<IpNet>,
    forgotten: bool,
    options: &Options,
) -> Narrowing {
    if forgotten {
        return (None, Some(OpenBecause::SourcesForgotten), Vec::new());
    }
    let mut from: Vec<IpNet> = Vec::new();
    let mut left_out = Vec::new();
    for source in sources {
        if source.connections >= options.min_connections {
            from.push(source.network);
        } else {
            left_out.push((source.network, source.connections));
        }
    }
    from.extend(session.filter(|net| !from.contains(net)));
    if from.is_empty() {
        return (None, Some(OpenBecause::NoSources), Vec::new());
    }
    if from.len() > options.max_networks {
        return (None, Some(OpenBecause::ManyNetworks), Vec::new());
    }
    let occasional: u64 = left_out.iter().map(|(_, n)| n).sum();
    if occasional as f64 > OCCASIONAL_SHARE * connections.max(1) as f64 {
        return (None, Some(OpenBecause::Spread), Vec::new());
    }
    from.sort();
    (Some(from), None, left_out)
}

fn caveats(snapshot: &Snapshot, options: &Options) -> Vec<String> {
    let mut caveats = Vec::new();
    match snapshot.since {
        Some(since) => caveats.push(format!(
            "the statistics go back to {} ({} ago): traffic before that is not in them",
            rfc3339(since),
            durations::format(round_secs(snapshot.taken_at.duration_since(since).unwrap_or_default()))
        )),
        None => caveats.push("the statistics do not say when they began".to_owned()),
    }
    if let Some(since) = options.since {
        caveats.push(format!(
            "--since {}: only source networks last seen since then count, with every connection \
             they made since the statistics began (the counts are not kept by time)",
            rfc3339(since)
        ));
        if snapshot.since.is_some_and(|began| began > since) {
            caveats.push("--since reaches back further than the statistics: they cover less".to_owned());
        }
    }
    let forgotten = snapshot.sources_forgotten();
    if forgotten > 0 {
        caveats.push(format!(
            "the source table ({} entries, [limits] port_sources) forgot {} (port, network) {}: \
             no rule is narrowed to networks, since those seen may not be all",
            snapshot.source_capacity,
            forgotten,
            if forgotten == 1 { "entry" } else { "entries" }
        ));
    }
    caveats
}

fn round_secs(duration: Duration) -> Duration {
    Duration::from_secs(duration.as_secs())
}

/// The proposal as a policy file (TOML, as `check` and `attach` read it), every rule with its
/// evidence in comments.
pub fn render(proposal: &Proposal, iface: &str, snapshot: &Snapshot, options: &Options) -> String {
    let mut out = String::new();
    let line = |out: &mut String, text: &str| {
        out.push_str(text);
        out.push('\n');
    };
    line(&mut out, &format!("# Proposed by `portguard learn {iface}` at {}.", rfc3339(snapshot.taken_at)));
    line(
        &mut out,
        &format!(
            "# Evidence: new connections per port (TCP SYNs, UDP datagrams), admitted or refused, and the\n\
             # source networks (IPv4 /24, IPv6 by ipv6_prefix) that made them. A port is opened when\n\
             # something listens on it and it had at least {} (--min-connections).",
            count(options.min_connections, "new connection", "new connections")
        ),
    );
    for caveat in &proposal.caveats {
        line(&mut out, &format!("# Note: {caveat}."));
    }
    line(
        &mut out,
        "# Only ports are proposed: add back the blocklist, limits and detection settings you use.",
    );
    line(
        &mut out,
        &format!("# Try it with a way back: portguard reload {iface} --policy FILE --confirm-within 5m"),
    );
    line(&mut out, "mode = \"enforce\"");
    line(&mut out, "default = \"deny\"");
    for rule in &proposal.rules {
        out.push('\n');
        line(&mut out, &format!("# {}", evidence(rule)));
        if let Some(why) = narrowing_note(rule, options) {
            line(&mut out, &format!("# {why}"));
        }
        line(&mut out, "[[allow]]");
        line(&mut out, &format!("name = \"{}\"", rule.name));
        line(&mut out, &format!("proto = \"{}\"", rule.protocol));
        line(&mut out, &format!("ports = [{}]", rule.port));
        if let Some(from) = &rule.from {
            let list: Vec<String> = from.iter().map(|net| format!("\"{net}\"")).collect();
            line(&mut out, &format!("from = [{}]", list.join(", ")));
        }
    }
    out.push('\n');
    line(
        &mut out,
        "# ICMP, ICMPv6 and other protocols pass as before; say so, or `check` warns that default deny leaves them open.",
    );
    line(&mut out, "[inbound]");
    line(&mut out, "other_protocols = \"allow\"");
    if !proposal.unused.is_empty() {
        out.push('\n');
        line(
            &mut out,
            "# Listening, but nothing arrived while the statistics ran: candidates to close (left closed here):",
        );
        for listener in &proposal.unused {
            let program =
                listener.program.as_deref().map(|p| format!(" ({})", comment_text(p))).unwrap_or_default();
            line(&mut out, &format!("#   {}/{}{program}", listener.protocol, listener.port));
        }
    }
    for (list, heading) in [
        (&proposal.little_used, "Listening, but used less than --min-connections (left closed):"),
        (&proposal.probed, "Tried, but nothing listens there (left closed; probes of a scan, most likely):"),
    ] {
        if list.is_empty() {
            continue;
        }
        out.push('\n');
        line(&mut out, &format!("# {heading}"));
        let mut shown: Vec<&NotOpened> = list.iter().collect();
        shown.sort_by(|a, b| {
            b.connections.cmp(&a.connections).then((a.protocol, a.port).cmp(&(b.protocol, b.port)))
        });
        let rest = shown.split_off(shown.len().min(PORTS_LISTED));
        shown.sort_by_key(|p| (p.protocol, p.port));
        for port in shown {
            line(
                &mut out,
                &format!(
                    "#   {}/{}: {} from {}",
                    port.protocol,
                    port.port,
                    count(port.connections, "new connection", "new connections"),
                    count(port.networks as u64, "network", "networks")
                ),
            );
        }
        if !rest.is_empty() {
            let connections: u64 = rest.iter().map(|p| p.connections).sum();
            line(
                &mut out,
                &format!(
                    "#   and {} more {} ({} in all, at most {} each)",
                    crate::output::group(rest.len() as u64),
                    crate::output::noun(rest.len() as u64, "port", "ports"),
                    count(connections, "new connection", "new connections"),
                    rest.iter().map(|p| p.connections).max().unwrap_or(0)
                ),
            );
        }
    }
    out
}

/// The proposal as one JSON document (`learn --json`, docs/schemas/learn.schema.json): the
/// policy file `render` wrote from the same proposal (`policy`), and as data what its comments
/// say: every rule with its evidence, every port left closed (all of them, where the text
/// lists the most tried), the idle listeners and what the statistics cover.
pub fn to_json(
    proposal: &Proposal,
    policy: &str,
    iface: &str,
    snapshot: &Snapshot,
    options: &Options,
) -> serde_json::Value {
    use serde_json::json;
    let time = |t: Option<SystemTime>| t.map(rfc3339);
    let rules: Vec<serde_json::Value> = proposal
        .rules
        .iter()
        .map(|rule| {
            json!({
                "name": rule.name,
                "protocol": rule.protocol,
                "port": rule.port,
                "program": rule.program,
                "ssh": rule.ssh,
                "from": rule.from.as_ref().map(|from| from.iter().map(ToString::to_string).collect::<Vec<_>>()),
                "open_because": rule.open_because,
                "keeps_session": rule.keeps_session,
                "note": narrowing_note(rule, options),
                "connections": rule.connections,
                "refused": rule.refused,
                "networks": rule.networks,
                "first_seen_at": time(rule.first_seen),
                "last_seen_at": time(rule.last_seen),
                "left_out": rule
                    .left_out
                    .iter()
                    .map(|(network, connections)| json!({ "network": network.to_string(), "connections": connections }))
                    .collect::<Vec<_>>(),
            })
        })
        .collect();
    let closed = |list: &[NotOpened]| -> Vec<serde_json::Value> {
        let mut list: Vec<&NotOpened> = list.iter().collect();
        list.sort_by_key(|p| (p.protocol, p.port));
        list.iter()
            .map(|p| {
                json!({
                    "protocol": p.protocol,
                    "port": p.port,
                    "connections": p.connections,
                    "networks": p.networks,
                })
            })
            .collect()
    };
    let began = snapshot.since;
    json!({
        "interface": iface,
        "generated_at": rfc3339(snapshot.taken_at),
        "min_connections": options.min_connections,
        "max_networks": options.max_networks,
        "policy": policy,
        "coverage": {
            "counting_since_at": time(began),
            "counted_secs": began.map(|began| snapshot.taken_at.duration_since(began).unwrap_or_default().as_secs()),
            "since_at": time(options.since),
            "since_before_counting": options.since.and_then(|since| began.map(|began| began > since)),
            "source_capacity": snapshot.source_capacity,
            "sources_added": snapshot.sources_added,
            "sources_forgotten": snapshot.sources_forgotten(),
        },
        "notes": proposal.caveats,
        "rules": rules,
        "tried_without_listener": closed(&proposal.probed),
        "little_used": closed(&proposal.little_used),
        "idle_listeners": proposal
            .unused
            .iter()
            .map(|l| json!({ "protocol": l.protocol, "port": l.port, "program": l.program }))
            .collect::<Vec<_>>(),
    })
}

/// Ports listed one by one under a heading of ports left closed (those with the most
/// connections); the rest are counted.
const PORTS_LISTED: usize = 20;

fn evidence(rule: &ProposedRule) -> String {
    let what = match (&rule.program, rule.ssh) {
        (Some(program), _) => format!(" ({})", comment_text(program)),
        (None, true) => " (ssh)".to_owned(),
        (None, false) => String::new(),
    };
    let mut text = format!(
        "{}/{}{what}: {} from {}",
        rule.protocol,
        rule.port,
        count(rule.connections, "new connection", "new connections"),
        count(rule.networks as u64, "source network", "source networks"),
    );
    if rule.refused > 0 {
        text += &format!(", {} refused by the running policy (or would be, in monitor mode)", rule.refused);
    }
    if let (Some(first), Some(last)) = (rule.first_seen, rule.last_seen) {
        text += &format!(", first seen {}, last seen {}", rfc3339(first), rfc3339(last));
    }
    text
}

fn narrowing_note(rule: &ProposedRule, options: &Options) -> Option<String> {
    let note = match (&rule.from, &rule.open_because) {
        (Some(from), _) => {
            let mut note = format!(
                "Narrowed: the sources are concentrated in {} with at least {} each",
                count(from.len() as u64, "network", "networks"),
                count(options.min_connections, "connection", "connections")
            );
            if rule.keeps_session {
                note += ", and the network of the SSH session this ran in";
            }
            if !rule.left_out.is_empty() {
                let left: Vec<String> = rule.left_out.iter().map(|(net, n)| format!("{net} ({n})")).collect();
                note += &format!("; left out, with fewer: {}", left.join(", "));
                if rule.ssh {
                    note += " (add those that are yours: SSH from them would be refused)";
                }
            }
            note
        }
        (None, Some(OpenBecause::ManyNetworks)) => format!(
            "Open to everyone: used from more than {} networks (--max-networks)",
            options.max_networks
        ),
        (None, Some(OpenBecause::Spread)) => format!(
            "Open to everyone: networks with fewer than {} made over a tenth of its connections",
            count(options.min_connections, "connection", "connections")
        ),
        (None, Some(OpenBecause::SourcesForgotten)) => {
            "Open to everyone: the source table forgot entries, so its networks may not all be known"
                .to_owned()
        }
        (None, Some(OpenBecause::NoSources)) => {
            "Open to everyone: SSH listens here, and no network that used it is known".to_owned()
        }
        (None, None) => return None,
    };
    Some(note)
}

/// Text from the host (a program's name) as one comment line.
fn comment_text(text: &str) -> String {
    crate::printable(text).into_owned()
}

/// The network the kernel summarises a source address by: an IPv4 address's /24, an IPv6
/// address's network of `ipv6_prefix` bits.
pub fn network_of(ip: IpAddr, ipv6_prefix: u8) -> IpNet {
    match ip {
        IpAddr::V4(_) => IpNet::new(ip, PORT_SOURCE_V4_PREFIX).expect("24 <= 32").trunc(),
        IpAddr::V6(_) => IpNet::new(ip, ipv6_prefix.min(128)).expect("<= 128").trunc(),
    }
}

/// The host's side of the evidence, read in the network namespace `learn` runs in: its
/// listening sockets (loopback-only ones left out: nothing arrives there from an interface),
/// where sshd listens, and the SSH session `learn` runs in if it came in to this namespace.
/// `ipv6_prefix` cuts the session's address as the statistics cut sources.
pub fn host_facts(ipv6_prefix: u8) -> anyhow::Result<(Vec<Listener>, Ssh)> {
    let sockets = crate::sockets::read_all()?;
    let owners = crate::sockets::owners();
    let mut listeners: Vec<Listener> = sockets
        .iter()
        .filter(|s| s.is_listening() && !s.local.ip().is_loopback())
        .map(|s| Listener {
            protocol: s.proto,
            port: s.local.port(),
            program: owners.get(&s.inode).map(crate::sockets::Owner::label),
        })
        .collect();
    listeners.sort_by_key(|l| (l.protocol, l.port));
    // One line per port (a socket per address family, or per address).
    listeners.dedup_by(|a, b| a.protocol == b.protocol && a.port == b.port);
    let host = crate::safety::Host::gather(crate::safety::Session::find())?;
    let session = host.session.and_then(|session| {
        let port = session.server_port?;
        Some((network_of(session.client, ipv6_prefix), port))
    });
    Ok((listeners, Ssh { ports: host.ssh_ports.iter().map(|(port, _)| *port).collect(), session }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::portstats::{PortUse, Traffic};

    const T0: Duration = Duration::from_secs(1_800_000_000);

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + T0 + Duration::from_secs(secs)
    }

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    /// Statistics where each `(protocol, port, network, connections, last seen)` made that
    /// many connections, all admitted.
    fn snapshot(uses: &[(Proto, u16, &str, u64, u64)]) -> Snapshot {
        let mut ports: Vec<PortUse> = Vec::new();
        for (protocol, port, _, connections, _) in uses {
            let traffic =
                Traffic { packets: *connections, bytes: 60 * connections, connections: *connections };
            match ports.iter_mut().find(|p| p.protocol == *protocol && p.port == *port) {
                Some(p) => {
                    p.accepted.packets += traffic.packets;
                    p.accepted.connections += traffic.connections;
                }
                None => ports.push(PortUse {
                    protocol: *protocol,
                    port: *port,
                    accepted: traffic,
                    refused: Traffic::default(),
                }),
            }
        }
        let sources: Vec<SourceUse> = uses
            .iter()
            .map(|(protocol, port, network, connections, last)| SourceUse {
                protocol: *protocol,
                port: *port,
                network: net(network),
                connections: *connections,
                refused: 0,
                bytes: 60 * connections,
                first_seen: at(0),
                last_seen: at(*last),
            })
            .collect();
        Snapshot {
            taken_at: at(3600),
            since: Some(at(0)),
            ports,
            sources_added: sources.len() as u64,
            sources,
            source_capacity: 65536,
        }
    }

    fn listening(ports: &[(Proto, u16)]) -> Vec<Listener> {
        ports
            .iter()
            .map(|(protocol, port)| Listener { protocol: *protocol, port: *port, program: None })
            .collect()
    }

    fn rule(proposal: &Proposal, protocol: Proto, port: u16) -> &ProposedRule {
        proposal.rules.iter().find(|r| r.protocol == protocol && r.port == port).expect("a rule")
    }

    #[test]
    fn a_port_used_from_few_networks_is_narrowed_and_one_offs_are_named() {
        let stats = snapshot(&[
            (Proto::Tcp, 443, "198.51.100.0/24", 40, 10),
            (Proto::Tcp, 443, "2001:db8:1::/64", 10, 10),
            (Proto::Tcp, 443, "203.0.113.0/24", 1, 10),
        ]);
        let proposal =
            propose(&stats, &listening(&[(Proto::Tcp, 443)]), &Ssh::default(), &Options::default());
        let web = rule(&proposal, Proto::Tcp, 443);
        assert_eq!(web.from, Some(vec![net("198.51.100.0/24"), net("2001:db8:1::/64")]));
        assert_eq!(web.left_out, vec![(net("203.0.113.0/24"), 1)]);
        assert_eq!((web.connections, web.networks), (51, 3));
        let text = render(&proposal, "eth0", &stats, &Options::default());
        assert!(text.contains("from = [\"198.51.100.0/24\", \"2001:db8:1::/64\"]"), "{text}");
        assert!(text.contains("left out, with fewer: 203.0.113.0/24 (1)"), "{text}");
    }

    #[test]
    fn spread_many_or_forgotten_sources_leave_the_port_open_and_say_why() {
        let open = |stats: &Snapshot, options: &Options| {
            let proposal = propose(stats, &listening(&[(Proto::Tcp, 80)]), &Ssh::default(), options);
            let web = rule(&proposal, Proto::Tcp, 80).clone();
            assert_eq!(web.from, None);
            (web.open_because, proposal.caveats)
        };
        // Many one-off visitors: a public service.
        let spread = snapshot(&[
            (Proto::Tcp, 80, "198.51.100.0/24", 10, 1),
            (Proto::Tcp, 80, "203.0.113.0/24", 2, 1),
            (Proto::Tcp, 80, "192.0.2.0/24", 2, 1),
        ]);
        assert_eq!(open(&spread, &Options::default()).0, Some(OpenBecause::Spread));
        // More regular networks than --max-networks.
        let options = Options { max_networks: 1, ..Options::default() };
        let two =
            snapshot(&[(Proto::Tcp, 80, "198.51.100.0/24", 10, 1), (Proto::Tcp, 80, "192.0.2.0/24", 10, 1)]);
        assert_eq!(open(&two, &options).0, Some(OpenBecause::ManyNetworks));
        // The source table lost entries: the networks seen may not be all.
        let mut forgot = snapshot(&[(Proto::Tcp, 80, "198.51.100.0/24", 10, 1)]);
        forgot.sources_added = 70_000;
        let (why, caveats) = open(&forgot, &Options::default());
        assert_eq!(why, Some(OpenBecause::SourcesForgotten));
        assert!(caveats.iter().any(|c| c.contains("forgot 69999")), "{caveats:?}");
    }

    #[test]
    fn ports_without_a_listener_or_real_use_stay_closed_and_idle_listeners_are_named() {
        let stats =
            snapshot(&[(Proto::Tcp, 23, "203.0.113.0/24", 5, 1), (Proto::Udp, 161, "203.0.113.0/24", 2, 1)]);
        let listeners = listening(&[(Proto::Udp, 161), (Proto::Tcp, 3306)]);
        let proposal = propose(&stats, &listeners, &Ssh::default(), &Options::default());
        assert!(proposal.rules.is_empty(), "{proposal:?}");
        assert_eq!(proposal.probed.len(), 1);
        assert_eq!((proposal.probed[0].port, proposal.probed[0].listening), (23, false));
        assert_eq!((proposal.little_used[0].port, proposal.little_used[0].connections), (161, 2));
        assert_eq!(proposal.unused, listening(&[(Proto::Tcp, 3306)]));
    }

    #[test]
    fn ssh_is_always_proposed_with_the_session_network() {
        let ssh = Ssh { ports: vec![22], session: Some((net("198.51.100.0/24"), 22)) };
        // Unused: open to the session's network.
        let quiet = snapshot(&[]);
        let proposal = propose(&quiet, &listening(&[(Proto::Tcp, 22)]), &ssh, &Options::default());
        let rule22 = rule(&proposal, Proto::Tcp, 22);
        assert_eq!((rule22.from.clone(), rule22.keeps_session), (Some(vec![net("198.51.100.0/24")]), true));
        // Used from elsewhere too: both.
        let used = snapshot(&[(Proto::Tcp, 22, "192.0.2.0/24", 30, 1)]);
        let proposal = propose(&used, &[], &ssh, &Options::default());
        assert_eq!(
            rule(&proposal, Proto::Tcp, 22).from,
            Some(vec![net("192.0.2.0/24"), net("198.51.100.0/24")])
        );
        // No session, no known network: open to everyone, never closed.
        let proposal = propose(&quiet, &[], &Ssh { ports: vec![22], session: None }, &Options::default());
        let rule22 = rule(&proposal, Proto::Tcp, 22);
        assert_eq!((rule22.from.clone(), rule22.open_because.clone()), (None, Some(OpenBecause::NoSources)));
    }

    #[test]
    fn since_keeps_the_networks_seen_since_and_says_what_it_cannot_filter() {
        let stats = snapshot(&[
            (Proto::Tcp, 80, "198.51.100.0/24", 10, 3000),
            (Proto::Tcp, 80, "192.0.2.0/24", 50, 100),
            (Proto::Tcp, 8080, "192.0.2.0/24", 50, 100),
        ]);
        let options = Options { since: Some(at(2000)), ..Options::default() };
        let listeners = listening(&[(Proto::Tcp, 80), (Proto::Tcp, 8080)]);
        let proposal = propose(&stats, &listeners, &Ssh::default(), &options);
        let web = rule(&proposal, Proto::Tcp, 80);
        assert_eq!((web.from.clone(), web.connections), (Some(vec![net("198.51.100.0/24")]), 10));
        assert!(proposal.rules.iter().all(|r| r.port != 8080), "8080 was not used since: {proposal:?}");
        assert!(proposal.caveats.iter().any(|c| c.contains("the counts are not kept by time")));
    }

    #[test]
    fn the_json_carries_the_rendered_policy_and_its_evidence_as_data() {
        let mut uses = vec![
            (Proto::Tcp, 443, "198.51.100.0/24", 40, 10),
            (Proto::Tcp, 443, "203.0.113.0/24", 1, 20),
            (Proto::Tcp, 80, "198.51.100.0/24", 10, 1),
            (Proto::Tcp, 80, "203.0.113.0/24", 5, 1),
            (Proto::Udp, 161, "203.0.113.0/24", 2, 1),
        ];
        // More ports tried than the text lists one by one: the JSON lists them all.
        let probes: Vec<u16> = (1000..1000 + PORTS_LISTED as u16 + 5).collect();
        uses.extend(probes.iter().map(|port| (Proto::Tcp, *port, "203.0.113.0/24", 1, 30)));
        let stats = snapshot(&uses);
        let mut listeners =
            listening(&[(Proto::Tcp, 443), (Proto::Tcp, 80), (Proto::Udp, 161), (Proto::Tcp, 3306)]);
        listeners[3].program = Some("mysqld (pid 7)".to_owned());
        let options = Options { since: Some(at(0)), max_networks: 1, ..Options::default() };
        let proposal = propose(&stats, &listeners, &Ssh::default(), &options);
        let text = render(&proposal, "eth0", &stats, &options);
        let json = to_json(&proposal, &text, "eth0", &stats, &options);

        assert_eq!(json["policy"], text.as_str(), "the file as `learn` prints it");
        assert_eq!(json["interface"], "eth0");
        assert_eq!(json["generated_at"], rfc3339(at(3600)));
        assert_eq!((json["min_connections"].as_u64(), json["max_networks"].as_u64()), (Some(3), Some(1)));
        let coverage = &json["coverage"];
        assert_eq!(coverage["counting_since_at"], rfc3339(at(0)));
        assert_eq!(coverage["counted_secs"], 3600);
        assert_eq!(coverage["since_at"], rfc3339(at(0)));
        assert_eq!(coverage["since_before_counting"], false);
        assert_eq!(coverage["sources_forgotten"], 0);
        assert_eq!(coverage["source_capacity"], 65536);
        assert_eq!(json["notes"].as_array().map(Vec::len), Some(proposal.caveats.len()));

        let rules = json["rules"].as_array().expect("rules");
        assert_eq!(rules.len(), 2, "{json:#}");
        let web = rules.iter().find(|r| r["port"] == 443).expect("tcp/443");
        assert_eq!(web["protocol"], "tcp");
        assert_eq!(web["name"], "tcp-443");
        assert_eq!(web["from"], serde_json::json!(["198.51.100.0/24"]));
        assert_eq!(web["open_because"], serde_json::Value::Null);
        assert_eq!(web["left_out"], serde_json::json!([{ "network": "203.0.113.0/24", "connections": 1 }]));
        assert_eq!((web["connections"].as_u64(), web["networks"].as_u64()), (Some(41), Some(2)));
        assert_eq!(web["refused"], 0);
        assert_eq!(
            (web["first_seen_at"].as_str(), web["last_seen_at"].as_str()),
            (Some(&*rfc3339(at(0))), Some(&*rfc3339(at(20))))
        );
        assert!(web["note"].as_str().is_some_and(|n| n.starts_with("Narrowed")), "{web}");
        let plain = rules.iter().find(|r| r["port"] == 80).expect("tcp/80");
        assert_eq!(
            (&plain["from"], &plain["open_because"]),
            (&serde_json::Value::Null, &serde_json::json!("many_networks"))
        );
        assert!(plain["note"].as_str().is_some_and(|n| n.contains("--max-networks")), "{plain}");

        let tried = json["tried_without_listener"].as_array().expect("tried");
        let ports: Vec<u64> = tried.iter().filter_map(|p| p["port"].as_u64()).collect();
        assert_eq!(ports, probes.iter().map(|p| u64::from(*p)).collect::<Vec<_>>(), "every one, by port");
        assert_eq!(
            tried[0],
            serde_json::json!({ "protocol": "tcp", "port": 1000, "connections": 1, "networks": 1 })
        );
        assert!(text.contains("and 5 more ports"), "while the text counts the rest:\n{text}");
        assert_eq!(
            json["little_used"],
            serde_json::json!([{ "protocol": "udp", "port": 161, "connections": 2, "networks": 1 }])
        );
        assert_eq!(
            json["idle_listeners"],
            serde_json::json!([{ "protocol": "tcp", "port": 3306, "program": "mysqld (pid 7)" }])
        );
    }

    #[test]
    fn the_json_says_what_is_not_known_with_nulls() {
        let mut stats = snapshot(&[]);
        stats.since = None;
        stats.sources_added = 70_000;
        let options = Options { since: Some(at(10)), ..Options::default() };
        let proposal = propose(&stats, &[], &Ssh { ports: vec![22], session: None }, &options);
        let json = to_json(&proposal, "", "eth0", &stats, &options);
        let coverage = &json["coverage"];
        assert_eq!(coverage["counting_since_at"], serde_json::Value::Null);
        assert_eq!(coverage["counted_secs"], serde_json::Value::Null);
        assert_eq!(coverage["since_before_counting"], serde_json::Value::Null, "unknown, not false");
        assert_eq!(coverage["sources_forgotten"], 70_000, "none held, all added forgotten");
        let ssh = &json["rules"][0];
        assert_eq!((ssh["ssh"].as_bool(), ssh["name"].as_str()), (Some(true), Some("ssh-22")));
        assert_eq!(
            (&ssh["from"], &ssh["open_because"]),
            (&serde_json::Value::Null, &serde_json::json!("sources_forgotten"))
        );
        assert_eq!(
            (&ssh["first_seen_at"], &ssh["last_seen_at"]),
            (&serde_json::Value::Null, &serde_json::Value::Null)
        );
        // Without --since, and with counting begun after it: said apart.
        let json = to_json(&proposal, "", "eth0", &snapshot(&[]), &Options::default());
        assert_eq!(
            (&json["coverage"]["since_at"], &json["coverage"]["since_before_counting"]),
            (&serde_json::Value::Null, &serde_json::Value::Null)
        );
        let later = Options { since: Some(at(0) - Duration::from_secs(60)), ..Options::default() };
        assert_eq!(
            to_json(&proposal, "", "eth0", &snapshot(&[]), &later)["coverage"]["since_before_counting"],
            true
        );
    }

    #[test]
    fn the_rendering_is_a_policy_check_accepts_without_warnings() {
        let stats = snapshot(&[
            (Proto::Tcp, 22, "192.0.2.0/24", 30, 1),
            (Proto::Tcp, 443, "198.51.100.0/24", 40, 1),
            (Proto::Udp, 53, "2001:db8:1::/64", 12, 1),
            (Proto::Tcp, 23, "203.0.113.0/24", 1, 1),
        ]);
        let listeners = listening(&[(Proto::Tcp, 443), (Proto::Udp, 53), (Proto::Tcp, 3306)]);
        let ssh = Ssh { ports: vec![22], session: None };
        let text = render(
            &propose(&stats, &listeners, &ssh, &Options::default()),
            "eth0",
            &stats,
            &Options::default(),
        );
        let loaded = crate::policy::parse(
            &text,
            std::path::Path::new("proposed.toml"),
            crate::policy::LoadOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{e:?}\n{text}"));
        assert!(loaded.warnings.is_empty(), "{:?}\n{text}", loaded.warnings);
        assert_eq!(loaded.policy.rules.len(), 3, "{text}");
        assert!(loaded.policy.rules.iter().all(|r| r.from.is_some()), "{text}");
    }
}
