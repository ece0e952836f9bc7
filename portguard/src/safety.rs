//! Checks that need the host, not only the policy: would enforcing this lock the operator out?
//! Two hazards, each named to the person who runs the command and refused unless they say so:
//!
//! * a policy that closes SSH where SSH listens, or that no longer admits the SSH session the
//!   command runs in (refused without `--confirm-within` or `--force`);
//! * a blocklist entry (inline, from a file, `portguard block`, any future feed: all go through
//!   `blocklist_hits`) covering the host's own addresses, the attached interface's networks,
//!   its default gateway or the SSH session's address (refused without `--force`, unless
//!   `never_block` covers them; the message gives the `never_block` line).
//!
//! The host is the network namespace the command runs in (`--netns`), where the interface is.

use std::{collections::BTreeSet, fmt, net::IpAddr};

use anyhow::Result;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{
    hostnet::HostNetworks,
    netns::Netns,
    policy::{Diagnostic, Loaded, Mode, Policy, Proto, Severity, sources::unmap_v4},
    services::{self, Kind},
    sockets,
};

/// The SSH session a command runs in, from `SSH_CONNECTION` (`client port server port`) or
/// `SSH_CLIENT` (`client port port`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub client: IpAddr,
    /// The address the session came in on (`SSH_CONNECTION` only).
    #[serde(default)]
    pub server: Option<IpAddr>,
    /// The port sshd accepted it on.
    #[serde(default)]
    pub server_port: Option<u16>,
}

const ANCESTORS_LOOKED_AT: usize = 64;

impl Session {
    /// The session of this process: its own `SSH_CONNECTION`/`SSH_CLIENT` or, when it has
    /// neither (sudo drops them), the nearest ancestor's. A variable set but empty in this
    /// process means "no session" and stops the search.
    pub fn find() -> Option<Self> {
        let own = |name| std::env::var(name).ok();
        if own("SSH_CONNECTION").is_some() || own("SSH_CLIENT").is_some() {
            return Self::from_vars(own("SSH_CONNECTION").as_deref(), own("SSH_CLIENT").as_deref());
        }
        let mut pid = parent_of(std::process::id())?;
        for _ in 0..ANCESTORS_LOOKED_AT {
            if pid <= 1 {
                return None;
            }
            if let Ok(environ) = std::fs::read(crate::paths::proc_pid(pid, "environ")) {
                let var = |name: &str| {
                    let prefix = format!("{name}=");
                    environ
                        .split(|b| *b == 0)
                        .find_map(|entry| entry.strip_prefix(prefix.as_bytes()))
                        .map(|value| String::from_utf8_lossy(value).into_owned())
                };
                let (connection, client) = (var("SSH_CONNECTION"), var("SSH_CLIENT"));
                if connection.is_some() || client.is_some() {
                    return Self::from_vars(connection.as_deref(), client.as_deref());
                }
            }
            pid = parent_of(pid)?;
        }
        None
    }

    pub fn from_vars(connection: Option<&str>, client: Option<&str>) -> Option<Self> {
        let address = |text: &str| text.parse::<IpAddr>().ok().map(|ip| unmap_v4(ip.into()).addr());
        if let Some(connection) = connection {
            let fields: Vec<&str> = connection.split_whitespace().collect();
            if let [client, _, server, port] = fields[..] {
                return Some(Self {
                    client: address(client)?,
                    server: address(server),
                    server_port: port.parse().ok(),
                });
            }
        }
        let fields: Vec<&str> = client?.split_whitespace().collect();
        match fields[..] {
            [client, _, port] => {
                Some(Self { client: address(client)?, server: None, server_port: port.parse().ok() })
            }
            _ => None,
        }
    }
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(crate::paths::proc_pid(pid, "stat")).ok()?;
    // `pid (comm) state ppid ...`: comm may hold spaces and parentheses.
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// What the checks know about the host.
#[derive(Clone, Debug, Default)]
pub struct Host {
    pub networks: HostNetworks,
    /// TCP ports where SSH listens beyond loopback, with who holds them (`sshd (pid 812)`, or
    /// `port 22` when the program cannot be seen).
    pub ssh_ports: Vec<(u16, String)>,
    /// The operator's SSH session, when it came in to this namespace.
    pub session: Option<Session>,
}

impl Host {
    /// Reads the namespace's networks and listeners. `session` counts when it came in on one
    /// of this namespace's addresses (with only `SSH_CLIENT`, when this is the host's
    /// namespace): a session into the host says nothing about a lab namespace.
    pub fn gather(session: Option<Session>) -> Result<Self> {
        let networks = HostNetworks::read()?;
        let session = session.filter(|s| match s.server {
            Some(server) => networks.is_own(server),
            None => Netns::current().is_host(),
        });
        let owners = sockets::owners();
        let mut ssh_ports: Vec<(u16, String)> = Vec::new();
        for socket in sockets::read_all()? {
            let port = socket.local.port();
            if socket.proto != Proto::Tcp
                || !socket.is_listening()
                || socket.local.ip().is_loopback()
                || ssh_ports.iter().any(|(p, _)| *p == port)
            {
                continue;
            }
            let owner = owners.get(&socket.inode);
            if services::identify(Proto::Tcp, port, owner).is_some_and(|(s, _)| s.kind == Kind::RemoteLogin) {
                ssh_ports.push((port, owner.map_or_else(|| format!("port {port}"), sockets::Owner::label)));
            }
        }
        if let Some(port) = session.and_then(|s| s.server_port) {
            if !ssh_ports.iter().any(|(p, _)| *p == port) {
                ssh_ports.push((port, "your SSH session's".into()));
            }
        }
        Ok(Self { networks, ssh_ports, session })
    }
}

/// What the person running the command allowed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Operator {
    /// The SSH session the command runs in.
    pub session: Option<Session>,
    /// `--confirm-within`: a lockout undoes itself.
    pub confirm_within: bool,
    /// `--force`: they know.
    pub force: bool,
}

impl Operator {
    /// A change nobody is asked about: a rollback to what ran before.
    pub fn trusted() -> Self {
        Self { force: true, ..Self::default() }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HazardKind {
    /// SSH listens and the policy closes it, or no longer admits the operator's session.
    Lockout,
    /// A blocklist entry covers the host's own networks.
    BlocksHost,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hazard {
    pub kind: HazardKind,
    pub message: String,
    /// What to change (one line).
    pub fix: String,
}

impl Hazard {
    /// Whether going ahead needs the operator's word.
    fn needs(&self, operator: &Operator) -> bool {
        match self.kind {
            HazardKind::Lockout => !operator.force && !operator.confirm_within,
            HazardKind::BlocksHost => !operator.force,
        }
    }
}

impl fmt::Display for Hazard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (fix: {})", self.message, self.fix)
    }
}

/// Something `block_hits` found a blocklist entry to cover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Covered {
    /// `eth0's network 192.0.2.0/24`, `your SSH session's address 198.51.100.7`.
    pub what: String,
    /// What `never_block` needs to hold to keep it reachable.
    pub net: IpNet,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hit {
    pub entry: IpNet,
    pub covers: Vec<Covered>,
}

/// The blocklist entries that cover the host: its own addresses (any interface of the
/// namespace), the networks and default gateways of `interfaces`, the operator's SSH session.
/// What `never_block` holds is exempt (those sources are never dropped). The one check every
/// way into a blocklist goes through: policy, blocklist files, `portguard block`.
pub fn blocklist_hits(
    entries: &[IpNet],
    never_block: &[IpNet],
    interfaces: &[&str],
    host: &Host,
) -> Vec<Hit> {
    let mut guarded: Vec<Covered> = Vec::new();
    for address in &host.networks.addresses {
        guarded.push(Covered {
            what: format!("this host's address {} ({})", address.address, address.iface),
            net: IpNet::from(address.address),
        });
    }
    for iface in interfaces {
        for address in host.networks.of(iface) {
            let covered =
                Covered { what: format!("{iface}'s network {}", address.network), net: address.network };
            if !guarded.contains(&covered) {
                guarded.push(covered);
            }
        }
        for gateway in host.networks.gateways_of(iface) {
            guarded.push(Covered {
                what: format!("{iface}'s default gateway {}", gateway.address),
                net: IpNet::from(gateway.address),
            });
        }
    }
    if let Some(session) = host.session {
        guarded.push(Covered {
            what: format!("your SSH session's address {}", session.client),
            net: IpNet::from(session.client),
        });
    }
    guarded.retain(|g| !never_block.iter().any(|keep| keep.contains(&g.net)));
    if guarded.is_empty() {
        return Vec::new();
    }
    entries
        .iter()
        .filter_map(|entry| {
            let covers: Vec<Covered> = guarded.iter().filter(|g| entry.contains(&g.net)).cloned().collect();
            (!covers.is_empty()).then_some(Hit { entry: *entry, covers })
        })
        .collect()
}

/// Entries named in a message at most; the rest are counted.
const ENTRIES_NAMED: usize = 10;

/// The hazard of blocklist entries that cover the host, with the `never_block` line that
/// keeps what they cover reachable (`never_block` as it is, plus what is missing).
pub fn blocks_host_hazard(hits: &[Hit], never_block: &[IpNet], what: &str) -> Option<Hazard> {
    if hits.is_empty() {
        return None;
    }
    let mut named: Vec<String> = hits
        .iter()
        .take(ENTRIES_NAMED)
        .map(|hit| {
            let covers: Vec<&str> = hit.covers.iter().map(|c| c.what.as_str()).collect();
            format!("{} covers {}", hit.entry, covers.join(", "))
        })
        .collect();
    if hits.len() > ENTRIES_NAMED {
        named.push(format!("and {} more entries", hits.len() - ENTRIES_NAMED));
    }
    // The fewest networks that keep every covered thing reachable: an address inside a
    // covered network needs no line of its own.
    let needed: BTreeSet<IpNet> = hits.iter().flat_map(|h| h.covers.iter().map(|c| c.net)).collect();
    let minimal: Vec<IpNet> = needed
        .iter()
        .filter(|net| !needed.iter().any(|other| other != *net && other.contains(*net)))
        .copied()
        .collect();
    let line: Vec<String> =
        never_block.iter().chain(&minimal).map(|net| format!("\"{}\"", short(net))).collect();
    Some(Hazard {
        kind: HazardKind::BlocksHost,
        message: format!("{what} covers this host's own networks: {}", named.join("; ")),
        fix: format!("never_block = [{}] in the policy keeps them reachable", line.join(", ")),
    })
}

/// `198.51.100.7` for a host prefix, the network otherwise.
fn short(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() { net.addr().to_string() } else { net.to_string() }
}

/// Whether `policy` closes SSH where it listens, or shuts out the operator's session.
pub fn lockout_hazards(policy: &Policy, host: &Host) -> Vec<Hazard> {
    let mut hazards = Vec::new();
    for (port, who) in &host.ssh_ports {
        let reach = policy.reach(Proto::Tcp, *port);
        if !reach.to_some {
            hazards.push(Hazard {
                kind: HazardKind::Lockout,
                message: format!(
                    "SSH listens on tcp/{port} ({who}) and the policy closes it ({}): new SSH connections would be refused",
                    reach.text
                ),
                fix: format!("allow tcp port {port} `from` your admin networks in an [[allow]] rule"),
            });
            continue;
        }
        let Some(session) = host.session.filter(|s| s.server_port == Some(*port)) else { continue };
        if !reach.admits(session.client) {
            hazards.push(Hazard {
                kind: HazardKind::Lockout,
                message: format!(
                    "your SSH session comes from {} to tcp/{port}, which the policy opens to {} only: your next SSH connection would be refused (this one keeps working)",
                    session.client,
                    reach.only_from.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                ),
                fix: format!("add {} to the `from` list of tcp port {port}", session.client),
            });
        }
    }
    hazards
}

/// What a policy about to be enforced on `iface` would do to the host.
pub fn policy_hazards(policy: &Policy, iface: &str, host: &Host) -> Vec<Hazard> {
    let mut hazards = lockout_hazards(policy, host);
    let hits = blocklist_hits(&policy.blocklist, &policy.never_block, &[iface], host);
    hazards.extend(blocks_host_hazard(&hits, &policy.never_block, "the blocklist"));
    hazards
}

/// A change refused because of its hazards; nothing was changed.
#[derive(Debug)]
pub struct Refused {
    pub hazards: Vec<Hazard>,
    /// `attach`, `reload`, `block`: what to run again.
    pub verb: &'static str,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "refused: this would cut the host off (nothing was changed):")?;
        for hazard in &self.hazards {
            writeln!(f, "  - {}", hazard.message)?;
            writeln!(f, "    fix: {}", hazard.fix)?;
        }
        if self.hazards.iter().all(|h| h.kind == HazardKind::Lockout) && self.verb != "block" {
            write!(
                f,
                "to {} it anyway: --confirm-within 2m (rolls back by itself unless `portguard confirm` follows) or --force",
                self.verb
            )
        } else {
            write!(f, "to {} it anyway: --force", self.verb)
        }
    }
}

impl std::error::Error for Refused {}

/// Refuses when a hazard needs a word the operator did not give.
pub fn gate(hazards: Vec<Hazard>, operator: &Operator, verb: &'static str) -> Result<(), Refused> {
    if hazards.iter().any(|h| h.needs(operator)) {
        return Err(Refused { hazards, verb });
    }
    Ok(())
}

/// Reviews a policy about to be enforced on `iface` (attach, reload): its hazards join the
/// policy's warnings, which the operator is shown, and a hazard that needs their word and did
/// not get it refuses the change. In monitor mode nothing is dropped, so nothing is refused;
/// the warnings still say what enforcing would do. When the host cannot be read, that is a
/// warning too, and the policy is not held up by it.
pub fn review(
    loaded: &mut Loaded,
    iface: &str,
    operator: &Operator,
    verb: &'static str,
) -> Result<(), Refused> {
    let policy = &loaded.policy;
    let warn = |message: String| Diagnostic {
        severity: Severity::Warning,
        file: policy.path.clone(),
        line: 0,
        column: 0,
        message,
    };
    let host = match Host::gather(operator.session) {
        Ok(host) => host,
        Err(error) => {
            let message = format!("could not check what this policy does to {iface}'s host ({error:#})");
            loaded.warnings.push(warn(message));
            return Ok(());
        }
    };
    let hazards = policy_hazards(policy, iface, &host);
    let monitor = policy.mode == Mode::Monitor;
    let warnings: Vec<Diagnostic> = hazards
        .iter()
        .map(|h| {
            let note = if monitor { " (monitor mode drops nothing yet; enforce mode would)" } else { "" };
            warn(format!("{}{note}; fix: {}", h.message, h.fix))
        })
        .collect();
    loaded.warnings.extend(warnings);
    if monitor {
        return Ok(());
    }
    gate(hazards, operator, verb)
}

/// The blocklist entry hazards for `portguard block`: checked against every interface it
/// applies to, each with its policy's `never_block`.
pub fn block_hazards(entries: &[IpNet], interfaces: &[(String, Vec<IpNet>)], host: &Host) -> Vec<Hazard> {
    let mut hazards = Vec::new();
    if interfaces.is_empty() {
        let all: Vec<&str> = host.networks.addresses.iter().map(|a| a.iface.as_str()).collect();
        let hits = blocklist_hits(entries, &[], &all, host);
        hazards.extend(blocks_host_hazard(&hits, &[], "the block"));
    }
    for (iface, never_block) in interfaces {
        let hits = blocklist_hits(entries, never_block, &[iface.as_str()], host);
        hazards.extend(blocks_host_hazard(&hits, never_block, &format!("the block on {iface}")));
    }
    hazards
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{
        hostnet::{Gateway, InterfaceAddress},
        policy::{LoadOptions, parse},
    };

    fn policy(text: &str) -> Policy {
        parse(text, Path::new("p.toml"), LoadOptions::default()).unwrap().policy
    }

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    /// eth0 192.0.2.2/24 and 2001:db8::2/64, gateway 192.0.2.1; eth1 198.51.100.2/24.
    fn host() -> Host {
        let address = |iface: &str, address: &str, network: &str| InterfaceAddress {
            iface: iface.into(),
            address: address.parse().unwrap(),
            network: net(network),
        };
        Host {
            networks: HostNetworks {
                addresses: vec![
                    address("eth0", "192.0.2.2", "192.0.2.0/24"),
                    address("eth0", "2001:db8::2", "2001:db8::/64"),
                    address("eth1", "198.51.100.2", "198.51.100.0/24"),
                ],
                gateways: vec![Gateway { iface: "eth0".into(), address: "192.0.2.1".parse().unwrap() }],
            },
            ssh_ports: vec![(22, "sshd (pid 812)".into())],
            session: None,
        }
    }

    #[test]
    fn blocklist_entries_that_cover_the_host_are_named() {
        let host = host();
        let entries =
            [net("192.0.2.0/24"), net("203.0.113.0/24"), net("192.0.2.1/32"), net("198.51.100.0/24")];
        let hits = blocklist_hits(&entries, &[], &["eth0"], &host);
        let named: Vec<(String, Vec<String>)> = hits
            .iter()
            .map(|h| (h.entry.to_string(), h.covers.iter().map(|c| c.what.clone()).collect()))
            .collect();
        assert_eq!(
            named,
            [
                (
                    "192.0.2.0/24".to_string(),
                    vec![
                        "this host's address 192.0.2.2 (eth0)".to_string(),
                        "eth0's network 192.0.2.0/24".to_string(),
                        "eth0's default gateway 192.0.2.1".to_string()
                    ]
                ),
                ("192.0.2.1/32".to_string(), vec!["eth0's default gateway 192.0.2.1".to_string()]),
                // eth1 is not the attached interface: its network is not guarded, its address is.
                ("198.51.100.0/24".to_string(), vec!["this host's address 198.51.100.2 (eth1)".to_string()]),
            ]
        );
        // A wide list, as the bogons in public lists: 192.0.0.0/8 covers the whole LAN.
        let hazard = blocks_host_hazard(
            &blocklist_hits(&[net("192.0.0.0/8")], &[net("203.0.113.0/24")], &["eth0"], &host),
            &[net("203.0.113.0/24")],
            "the blocklist",
        )
        .unwrap();
        assert_eq!(hazard.kind, HazardKind::BlocksHost);
        assert!(
            hazard.message.contains(
                "192.0.0.0/8 covers this host's address 192.0.2.2 (eth0), eth0's network 192.0.2.0/24"
            ),
            "{}",
            hazard.message
        );
        // The suggested line keeps what is there and adds the fewest networks needed.
        assert_eq!(
            hazard.fix,
            "never_block = [\"203.0.113.0/24\", \"192.0.2.0/24\"] in the policy keeps them reachable"
        );
        // never_block exempts what it covers.
        assert!(blocklist_hits(&entries[..1], &[net("192.0.2.0/24")], &["eth0"], &host).is_empty());
        let partly = blocklist_hits(&entries[..1], &[net("192.0.2.0/28")], &["eth0"], &host);
        assert_eq!(partly[0].covers.len(), 1, "only the network is left: {partly:?}");
        // Entries inside the network that miss the host, its gateway and the session are fine.
        assert!(
            blocklist_hits(&[net("192.0.2.77/32"), net("192.0.2.128/25")], &[], &["eth0"], &host).is_empty()
        );
        // IPv6 too.
        assert_eq!(blocklist_hits(&[net("2001:db8::/32")], &[], &["eth0"], &host)[0].covers.len(), 2);
    }

    #[test]
    fn the_operators_session_is_guarded() {
        let mut host = host();
        host.session =
            Some(Session { client: "203.0.113.9".parse().unwrap(), server: None, server_port: Some(22) });
        let hits = blocklist_hits(&[net("203.0.113.0/24")], &[], &["eth0"], &host);
        assert_eq!(hits[0].covers[0].what, "your SSH session's address 203.0.113.9");
        let hazard = blocks_host_hazard(&hits, &[], "the block").unwrap();
        assert_eq!(hazard.fix, "never_block = [\"203.0.113.9\"] in the policy keeps them reachable");

        // SSH open only to other networks: the session's next connection is cut.
        let admins = policy(
            "default = \"deny\"\n[[allow]]\nproto = \"tcp\"\nports = [22]\nfrom = [\"198.51.100.0/24\"]\n",
        );
        let hazards = lockout_hazards(&admins, &host);
        assert_eq!(hazards.len(), 1);
        assert!(hazards[0].message.starts_with("your SSH session comes from 203.0.113.9 to tcp/22, which the policy opens to 198.51.100.0/24 only"), "{}", hazards[0].message);
        host.session =
            Some(Session { client: "198.51.100.9".parse().unwrap(), server: None, server_port: Some(22) });
        assert!(lockout_hazards(&admins, &host).is_empty());
    }

    #[test]
    fn closing_ssh_where_it_listens_is_a_lockout() {
        let host = host();
        let closed = policy("default = \"deny\"\n[[allow]]\nproto = \"tcp\"\nports = [80]\n");
        let hazards = lockout_hazards(&closed, &host);
        assert_eq!(hazards.len(), 1);
        assert!(hazards[0].message.contains(
            "SSH listens on tcp/22 (sshd (pid 812)) and the policy closes it (blocked (default deny))"
        ));
        let denied = policy("default = \"allow\"\n[[deny]]\nproto = \"tcp\"\nports = [22]\n");
        assert_eq!(lockout_hazards(&denied, &host).len(), 1, "a deny rule closes it as well");
        let trapped = policy("default = \"allow\"\n[trap_ports]\ntcp = [22]\n");
        assert_eq!(lockout_hazards(&trapped, &host).len(), 1, "and a trap port");
        let open = policy(
            "default = \"deny\"\n[[allow]]\nproto = \"tcp\"\nports = [22]\nfrom = [\"198.51.100.0/24\"]\n",
        );
        assert!(lockout_hazards(&open, &host).is_empty());
        let monitor = policy("mode = \"monitor\"\ndefault = \"deny\"\n");
        assert!(lockout_hazards(&monitor, &host).is_empty(), "monitor mode drops nothing");
        assert!(
            lockout_hazards(&closed, &Host { ssh_ports: vec![], ..host.clone() }).is_empty(),
            "no SSH, no lockout"
        );

        // The gate: a lockout gives way to --confirm-within or --force, a blocked host to --force only.
        let lockout = lockout_hazards(&closed, &host);
        let refused = gate(lockout.clone(), &Operator::default(), "attach").unwrap_err().to_string();
        assert!(refused.contains("--confirm-within 2m") && refused.contains("--force"), "{refused}");
        assert!(
            gate(lockout.clone(), &Operator { confirm_within: true, ..Operator::default() }, "attach")
                .is_ok()
        );
        assert!(gate(lockout, &Operator { force: true, ..Operator::default() }, "attach").is_ok());
        let blocks = vec![
            blocks_host_hazard(&blocklist_hits(&[net("192.0.2.0/24")], &[], &["eth0"], &host), &[], "x")
                .unwrap(),
        ];
        let refused =
            gate(blocks.clone(), &Operator { confirm_within: true, ..Operator::default() }, "reload");
        assert!(refused.unwrap_err().to_string().ends_with("to reload it anyway: --force"));
        assert!(gate(blocks, &Operator::trusted(), "reload").is_ok());
    }

    #[test]
    fn sessions_are_read_from_the_ssh_variables() {
        let session = Session::from_vars(Some("198.51.100.7 50022 192.0.2.2 22"), None).unwrap();
        assert_eq!(session.client, "198.51.100.7".parse::<IpAddr>().unwrap());
        assert_eq!(session.server, Some("192.0.2.2".parse().unwrap()));
        assert_eq!(session.server_port, Some(22));
        let v6 = Session::from_vars(Some("2001:db8:1::7 50022 2001:db8::2 2222"), None).unwrap();
        assert_eq!(v6.server_port, Some(2222));
        let mapped = Session::from_vars(None, Some("::ffff:203.0.113.9 50022 22")).unwrap();
        assert_eq!(mapped.client, "203.0.113.9".parse::<IpAddr>().unwrap());
        assert_eq!(mapped.server, None);
        assert_eq!(Session::from_vars(Some(""), Some("")), None);
        assert_eq!(Session::from_vars(Some("nonsense"), None), None);
        assert!(parent_of(std::process::id()).is_some_and(|ppid| ppid > 0));
    }
}
