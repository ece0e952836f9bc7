//! Who a policy lets reach a port: for doctor's exposure audit and the lockout check, in the
//! order the kernel judges a new connection (trap ports, deny rules, allow rules and their
//! `from` lists, the default), and with monitor mode dropping nothing.

use std::net::IpAddr;

use ipnet::IpNet;

use super::{Action, Mode, Policy, Proto, RuleKind};

/// Who can open a connection to a port under a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reach {
    /// For people: `open by rule 1 (line 4)`, `open to 198.51.100.0/24`, `blocked (default deny)`.
    pub text: String,
    /// Every source.
    pub to_all: bool,
    /// Some sources at least (all of them when `to_all`).
    pub to_some: bool,
    /// Only these sources, when the port is open to some but not all.
    pub only_from: Vec<IpNet>,
    /// Open only because nothing names the port and the default allows.
    pub by_default_allow: bool,
}

impl Reach {
    pub fn open(text: String) -> Self {
        Self { text, to_all: true, to_some: true, only_from: Vec::new(), by_default_allow: false }
    }

    pub fn closed(text: String) -> Self {
        Self { text, to_all: false, to_some: false, only_from: Vec::new(), by_default_allow: false }
    }

    /// Whether a new connection from `source` gets through.
    pub fn admits(&self, source: IpAddr) -> bool {
        self.to_all || self.only_from.iter().any(|net| net.contains(&source))
    }
}

impl Policy {
    /// What the policy does with a new connection to `port` from the network.
    pub fn reach(&self, proto: Proto, port: u16) -> Reach {
        let traps = match proto {
            Proto::Tcp => &self.trap_ports.tcp,
            Proto::Udp => &self.trap_ports.udp,
        };
        let naming: Vec<_> = self
            .rules
            .iter()
            .filter(|r| r.proto == proto && r.ports.iter().any(|p| p.contains(&port)))
            .collect();
        let reach = if traps.iter().any(|r| r.contains(&port)) {
            Reach::closed("a trap port (blocked, and whoever tries is blocked)".into())
        } else if let Some(rule) = naming.iter().find(|r| r.kind == RuleKind::Deny) {
            Reach::closed(format!("blocked by {}", rule.label()))
        } else if let Some(rule) = naming.iter().find(|r| r.kind == RuleKind::Allow && r.from.is_none()) {
            Reach::open(format!("open by {}", rule.label()))
        } else if naming.iter().any(|r| r.kind == RuleKind::Allow) {
            let only_from: Vec<IpNet> =
                naming.iter().filter_map(|r| r.from.as_ref()).flatten().copied().collect();
            let text = only_from.iter().map(IpNet::to_string).collect::<Vec<_>>().join(", ");
            Reach {
                text: format!("open to {text}"),
                to_all: false,
                to_some: true,
                only_from,
                by_default_allow: false,
            }
        } else if self.default == Action::Allow {
            Reach { by_default_allow: true, ..Reach::open("open (default allow)".into()) }
        } else {
            Reach::closed("blocked (default deny)".into())
        };
        if self.mode == Mode::Monitor && !reach.to_all {
            return Reach::open(format!("{}, but monitor mode drops nothing", reach.text));
        }
        reach
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::policy::{LoadOptions, parse};

    fn policy(text: &str) -> Policy {
        parse(text, Path::new("p.toml"), LoadOptions::default()).unwrap().policy
    }

    #[test]
    fn what_the_policy_does_with_a_port() {
        let p = policy(
            "default = \"deny\"\n[[allow]]\nproto = \"tcp\"\nports = [8080]\n[[allow]]\nproto = \"tcp\"\nports = [22]\nfrom = [\"198.51.100.0/24\"]\n[trap_ports]\ntcp = [23]\n",
        );
        let reach = |port| p.reach(Proto::Tcp, port);
        assert!(reach(8080).to_all && reach(8080).text.starts_with("open by rule 1"));
        assert!(!reach(22).to_all && reach(22).to_some && reach(22).text == "open to 198.51.100.0/24");
        assert!(reach(22).admits("198.51.100.9".parse().unwrap()));
        assert!(!reach(22).admits("203.0.113.9".parse().unwrap()));
        assert!(!reach(23).to_some && reach(23).text.contains("trap port"));
        assert!(!reach(3306).to_some && reach(3306).text == "blocked (default deny)");
        assert!(!reach(3306).admits("198.51.100.9".parse().unwrap()));
        assert!(p.reach(Proto::Udp, 8080).text == "blocked (default deny)");

        let monitor = policy("mode = \"monitor\"\ndefault = \"deny\"\n[trap_ports]\ntcp = [23]\n");
        let trap = monitor.reach(Proto::Tcp, 23);
        assert!(trap.to_all && trap.text.ends_with("but monitor mode drops nothing"), "{trap:?}");
        let open = policy("default = \"allow\"\n[[deny]]\nproto = \"tcp\"\nports = [23]\n");
        assert!(open.reach(Proto::Tcp, 3306).to_all && open.reach(Proto::Tcp, 3306).by_default_allow);
        assert!(open.reach(Proto::Tcp, 23).text.starts_with("blocked by rule 1"));
    }
}
