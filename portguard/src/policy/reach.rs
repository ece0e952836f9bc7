//! What a policy does with a new connection to a port: the one decision `compile` writes into
//! the kernel's port table, `verify` names the deciding rule from, and doctor's exposure audit
//! and the lockout check (`Reach`) describe. In the order the kernel judges a new connection
//! (trap ports, deny rules, allow rules and their `from` lists, the default).

use std::{fmt, net::IpAddr};

use ipnet::IpNet;

use super::{Action, Mode, Policy, Proto, Rule, RuleKind};

/// What the rules say about a port (trap ports aside).
#[derive(Clone, Debug)]
pub enum PortAction<'p> {
    /// A deny rule names the port (the first, in file order).
    Denied(&'p Rule),
    /// An allow rule without `from` names it: every source may connect (the first such rule).
    Allowed(&'p Rule),
    /// Only allow rules with `from` lists name it: their sources may connect (file order).
    AllowedFrom(Vec<&'p Rule>),
    /// No rule names it: the policy's default.
    Default(Action),
}

/// The policy's decision for one protocol and port.
#[derive(Clone, Debug)]
pub struct PortDecision<'p> {
    /// A trap port: whoever tries to open it is blocked (before the rules are consulted).
    pub trap: bool,
    pub action: PortAction<'p>,
}

/// The decision for a port from the rules that name it (in file order), whether it is a trap
/// port, and the default. Validation has rejected ports both allowed and denied.
pub fn decide<'p>(
    naming: impl IntoIterator<Item = &'p Rule>,
    trap: bool,
    default: Action,
) -> PortDecision<'p> {
    let mut deny = None;
    let mut open = None;
    let mut from = Vec::new();
    for rule in naming {
        match (rule.kind, &rule.from) {
            (RuleKind::Deny, _) => deny = deny.or(Some(rule)),
            (RuleKind::Allow, None) => open = open.or(Some(rule)),
            (RuleKind::Allow, Some(_)) => from.push(rule),
        }
    }
    let action = match (deny, open) {
        (Some(rule), _) => PortAction::Denied(rule),
        (None, Some(rule)) => PortAction::Allowed(rule),
        (None, None) if !from.is_empty() => PortAction::AllowedFrom(from),
        (None, None) => PortAction::Default(default),
    };
    PortDecision { trap, action }
}

impl<'p> PortDecision<'p> {
    /// The rule that decides a connection from `source` (`None`: a `from` port that does not
    /// admit it is decided by the first of its rules); `None` when the default decides.
    pub fn rule_for(&self, source: Option<IpAddr>) -> Option<&'p Rule> {
        match &self.action {
            PortAction::Denied(rule) | PortAction::Allowed(rule) => Some(rule),
            PortAction::AllowedFrom(rules) => source
                .and_then(|source| {
                    rules.iter().find(|r| r.from.iter().flatten().any(|net| net.contains(&source)))
                })
                .or(rules.first())
                .copied(),
            PortAction::Default(_) => None,
        }
    }

    /// Whether every source the port admits is under a per-source limit: the rule opening it
    /// to everyone carries one, or each of its `from` rules does. False for the default.
    pub fn limited(&self) -> bool {
        match &self.action {
            PortAction::Allowed(rule) => rule.limit.is_some(),
            PortAction::AllowedFrom(rules) => rules.iter().all(|rule| rule.limit.is_some()),
            PortAction::Denied(_) | PortAction::Default(_) => false,
        }
    }

    /// The sources of a `from` port, with the rule admitting each (file order).
    pub fn sources(&self) -> Vec<(&'p Rule, IpNet)> {
        match &self.action {
            PortAction::AllowedFrom(rules) => {
                rules.iter().flat_map(|r| r.from.iter().flatten().map(move |net| (*r, *net))).collect()
            }
            _ => Vec::new(),
        }
    }
}

impl Policy {
    /// The decision for `port`: the one place that reads the rules for it.
    pub fn port_decision(&self, proto: Proto, port: u16) -> PortDecision<'_> {
        let naming =
            self.rules.iter().filter(|r| r.proto == proto && r.ports.iter().any(|p| p.contains(&port)));
        decide(naming, self.trap_ports.of(proto).iter().any(|r| r.contains(&port)), self.default)
    }

    /// What the policy does with a new connection to `port` from the network, for people.
    pub fn reach(&self, proto: Proto, port: u16) -> Reach {
        let decision = self.port_decision(proto, port);
        let reach = Reach::of(&decision);
        if self.mode == Mode::Monitor && !reach.to_all {
            return Reach::open(format!("{}, but monitor mode drops nothing", reach.text));
        }
        reach
    }
}

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

    /// Who a decision lets through (monitor mode aside).
    pub fn of(decision: &PortDecision) -> Self {
        if decision.trap {
            return Reach::closed("a trap port (blocked, and whoever tries is blocked)".into());
        }
        match &decision.action {
            PortAction::Denied(rule) => Reach::closed(format!("blocked by {}", rule.label())),
            PortAction::Allowed(rule) => Reach::open(format!("open by {}", rule.label())),
            PortAction::AllowedFrom(_) => {
                let only_from: Vec<IpNet> = decision.sources().into_iter().map(|(_, net)| net).collect();
                let text = only_from.iter().map(IpNet::to_string).collect::<Vec<_>>().join(", ");
                Reach {
                    text: format!("open to {text}"),
                    to_all: false,
                    to_some: true,
                    only_from,
                    by_default_allow: false,
                }
            }
            PortAction::Default(Action::Allow) => {
                Reach { by_default_allow: true, ..Reach::open("open (default allow)".into()) }
            }
            PortAction::Default(Action::Deny) => Reach::closed("blocked (default deny)".into()),
        }
    }

    /// Whether a new connection from `source` gets through.
    pub fn admits(&self, source: IpAddr) -> bool {
        self.to_all || self.only_from.iter().any(|net| net.contains(&source))
    }
}

impl fmt::Display for Reach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
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

    #[test]
    fn one_decision_names_the_rule_for_each_source() {
        let p = policy(
            "default = \"deny\"\n[[allow]]\nproto = \"tcp\"\nports = [22]\nfrom = [\"198.51.100.0/24\"]\n\
             [[allow]]\nproto = \"tcp\"\nports = [22]\nfrom = [\"203.0.113.0/24\"]\n\
             [[allow]]\nproto = \"udp\"\nports = [53]\n[trap_ports]\ntcp = [23]\n",
        );
        let ssh = p.port_decision(Proto::Tcp, 22);
        assert!(matches!(&ssh.action, PortAction::AllowedFrom(rules) if rules.len() == 2));
        let rule = |source: &str| ssh.rule_for(Some(source.parse().unwrap())).map(|r| r.number);
        assert_eq!(rule("198.51.100.7"), Some(1));
        assert_eq!(rule("203.0.113.7"), Some(2));
        assert_eq!(rule("192.0.2.7"), Some(1), "a refused source: the first rule naming the port");
        assert_eq!(ssh.sources().len(), 2);
        assert!(matches!(p.port_decision(Proto::Udp, 53).action, PortAction::Allowed(r) if r.number == 3));
        assert!(matches!(p.port_decision(Proto::Udp, 54).action, PortAction::Default(Action::Deny)));
        let trap = p.port_decision(Proto::Tcp, 23);
        assert!(trap.trap && matches!(trap.action, PortAction::Default(Action::Deny)));
        assert_eq!(trap.rule_for(None).map(|r| r.number), None);
        // An open allow takes the port over from `from` allows, wherever it stands.
        let open = policy(
            "[[allow]]\nproto = \"tcp\"\nports = [22]\nfrom = [\"198.51.100.0/24\"]\n\
             [[allow]]\nproto = \"tcp\"\nports = [22]\n",
        );
        assert!(matches!(open.port_decision(Proto::Tcp, 22).action, PortAction::Allowed(r) if r.number == 2));
        assert!(open.port_decision(Proto::Tcp, 22).sources().is_empty());
    }
}
