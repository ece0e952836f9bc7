//! Exposure: the sockets the host listens on, weighed against what the policy in force (and
//! `--policy FILE`) lets reach them.

use std::{net::IpAddr, path::Path};

use serde::Serialize;

use super::{Finding, Severity};
use crate::{
    policy::{Policy, Proto, reach::Reach},
    services::{self, Kind, Recognised},
    sockets::{self, Socket},
};

/// A socket the host listens on, and what the policy makes of it.
#[derive(Clone, Debug, Serialize)]
pub struct Listening {
    pub protocol: Proto,
    pub address: IpAddr,
    pub port: u16,
    /// The program holding the socket, if it can be found.
    pub program: Option<String>,
    /// The service listening: known by its program, else by its port.
    pub service: Option<&'static str>,
    /// How `service` was recognised.
    pub recognised_by: Option<Recognised>,
    /// Bound to a non-loopback address: reachable from the network.
    pub reachable: bool,
    /// Whom what filters it now lets open a connection: `all`, `some` (sources the policy
    /// names) or `none` (monitor mode drops nothing: `all`).
    pub open_to: &'static str,
    /// What the policy in force does with connections from the network (`open`, `open to
    /// <networks>`, `blocked ...`, a trap); with nothing attached, what the audited policy would
    /// do once attached.
    pub policy: String,
    /// What `--policy FILE` would do instead, when it is not the policy in force.
    pub with_audited_policy: Option<String>,
    pub severity: Severity,
}

impl Listening {
    /// Worth a colour in the report: reachable and at least a medium finding.
    pub fn is_concern(&self) -> bool {
        self.reachable && self.severity >= Severity::Medium
    }
}

/// What a listener's severity is judged by: what reaches it now (the policy in force, or
/// nothing) and what the policy means to do with it (the policy in force, or the audited one
/// when nothing is attached).
///
/// Risky services are judged by what reaches them now: open to all is critical, open to some
/// networks high, and blocked medium, since only the policy stands between them and the
/// network. Remote login (SSH) closed to everyone is high: new sessions are refused, remote
/// administrators are locked out. Other services are judged by what the policy means to do:
/// open by intent is fine, open only by `default = "allow"` medium, closed low (something
/// listens that nobody may reach: probably not needed).
fn severity(reachable: bool, kind: Option<Kind>, now: &Reach, intended: Option<&Reach>) -> Severity {
    if !reachable {
        return Severity::Info;
    }
    match (kind, intended) {
        (Some(Kind::Risky), _) if now.to_all => Severity::Critical,
        (Some(Kind::Risky), _) if now.to_some => Severity::High,
        (Some(Kind::Risky), _) => Severity::Medium,
        (Some(Kind::RemoteLogin), Some(reach)) if !reach.to_some => Severity::High,
        (_, Some(reach)) if reach.by_default_allow => Severity::Medium,
        (_, Some(reach)) if reach.to_some => Severity::Info,
        (_, Some(_) | None) => Severity::Low,
    }
}

/// The policies the exposure audit weighs.
#[derive(Clone, Copy, Default)]
pub(super) struct Policies<'a> {
    /// What an attachment enforces now, and its file.
    pub(super) enforced: Option<(&'a Path, &'a Policy)>,
    /// `--policy FILE` when it is not what is enforced: shown as what it would change.
    pub(super) audited: Option<(&'a Path, &'a Policy)>,
}

pub(super) fn listening(
    sockets: &[Socket],
    policies: Policies,
    findings: &mut Vec<Finding>,
) -> Vec<Listening> {
    let owners = sockets::owners();
    let mut seen = std::collections::BTreeSet::new();
    let mut rows = Vec::new();
    for socket in sockets.iter().filter(|s| s.is_listening()) {
        let (proto, address, port) = (socket.proto, socket.local.ip(), socket.local.port());
        if !seen.insert((proto, address, port)) {
            continue;
        }
        let reachable = !address.is_loopback();
        let owner = owners.get(&socket.inode);
        let identified = services::identify(proto, port, owner);
        let kind = identified.map(|(service, _)| service.kind);
        let now = match policies.enforced {
            Some((_, policy)) => policy.reach(proto, port),
            None => Reach::open("nothing filters it (portguard is not attached)".into()),
        };
        let audited = policies.audited.map(|(_, policy)| policy.reach(proto, port));
        let intended = policies.enforced.map(|(_, policy)| policy.reach(proto, port)).or(audited.clone());
        let severity = severity(reachable, kind, &now, intended.as_ref());
        let policy_text = match (policies.enforced, &audited) {
            (None, Some(reach)) => format!("{} once attached; nothing filters it now", reach.text),
            _ => now.text.clone(),
        };
        let who = owner.map(|o| format!(" ({})", o.label())).unwrap_or_default();
        let name = identified.map(|(s, _)| format!("{} ", s.name)).unwrap_or_default();
        let title = format!("{name}{proto}/{port} listens on {address}{who}");
        let remedy = |closed_ssh: bool| match identified {
            Some((service, _))
                if service.kind != Kind::Ordinary && (closed_ssh || service.kind == Kind::Risky) =>
            {
                service.remedy.to_string()
            }
            _ => format!("close {proto}/{port} in the policy if nobody outside needs it"),
        };
        let lockout = |reach: &Reach| kind == Some(Kind::RemoteLogin) && !reach.to_some;
        if reachable && severity >= Severity::Medium {
            let closed_ssh = intended.as_ref().is_some_and(lockout);
            let consequence = if closed_ssh {
                ": new SSH connections are refused, remote administrators are locked out"
            } else {
                ""
            };
            findings.push(Finding {
                severity,
                category: "exposure",
                title: title.clone(),
                detail: format!("reachable from the network; policy: {policy_text}{consequence}"),
                remedy: remedy(closed_ssh),
            });
        }
        // Open without a per-source limit: new connections from one source come as fast as it
        // sends them. Worth a medium finding for SSH open to the world (password guessing).
        if let (true, Some((_, policy))) = (reachable && now.to_some, policies.enforced.or(policies.audited))
        {
            if !policy.port_decision(proto, port).limited() {
                let ssh_to_all = kind == Some(Kind::RemoteLogin) && now.to_all;
                findings.push(Finding {
                    severity: if ssh_to_all { Severity::Medium } else { Severity::Info },
                    category: "exposure",
                    title: format!("{title}: no rate limit"),
                    detail: if ssh_to_all {
                        "open to every source with no limit on new connections per source: password guessing runs as fast as the attacker sends".into()
                    } else {
                        "open with no limit on new connections per source".into()
                    },
                    remedy: "add limit = { new_per_source = \"5/10s\", burst = 5 } (or what the service bears) to the rule that opens it".into(),
                });
            }
        }
        // What the audited policy would change, where it would make things worse.
        if let (Some((path, _)), Some(reach), true) =
            (policies.audited, &audited, policies.enforced.is_some())
        {
            let would = self::severity(reachable, kind, reach, Some(reach));
            if would > severity && would >= Severity::Medium {
                let consequence = if lockout(reach) {
                    ": new SSH connections would be refused, remote administrators locked out"
                } else {
                    ""
                };
                findings.push(Finding {
                    severity: would,
                    category: "policy",
                    title: format!("with {}: {title}", path.display()),
                    detail: format!(
                        "now: {}; with {}: {}{consequence}",
                        now.text,
                        path.display(),
                        reach.text
                    ),
                    remedy: remedy(lockout(reach)),
                });
            }
        }
        rows.push(Listening {
            protocol: proto,
            address,
            port,
            program: owner.map(sockets::Owner::label),
            service: identified.map(|(s, _)| s.name),
            recognised_by: identified.map(|(_, by)| by),
            reachable,
            open_to: match (now.to_all, now.to_some) {
                (true, _) => "all",
                (false, true) => "some",
                (false, false) => "none",
            },
            policy: policy_text,
            with_audited_policy: audited.map(|reach| reach.text),
            severity,
        });
    }
    rows.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.port.cmp(&b.port)));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severities() {
        let all = Reach::open("open".into());
        let some = Reach { to_all: false, ..Reach::open("open to".into()) };
        let none = Reach::closed("blocked".into());
        let by_default = Reach { by_default_allow: true, ..Reach::open("open (default allow)".into()) };
        let risky = Some(Kind::Risky);
        // Risky services: by what reaches them now.
        assert_eq!(severity(true, risky, &all, Some(&none)), Severity::Critical);
        assert_eq!(severity(true, risky, &some, Some(&some)), Severity::High);
        assert_eq!(severity(true, risky, &none, Some(&none)), Severity::Medium);
        assert_eq!(severity(false, risky, &all, None), Severity::Info);
        // Others: by what the policy means to do.
        assert_eq!(severity(true, None, &all, Some(&all)), Severity::Info);
        assert_eq!(severity(true, Some(Kind::Ordinary), &all, Some(&by_default)), Severity::Medium);
        assert_eq!(severity(true, None, &none, Some(&none)), Severity::Low);
        assert_eq!(severity(true, None, &all, None), Severity::Low);
        // SSH closed to everyone locks administrators out; open to some is what it should be.
        let ssh = Some(Kind::RemoteLogin);
        assert_eq!(severity(true, ssh, &none, Some(&none)), Severity::High);
        assert_eq!(
            severity(true, ssh, &all, Some(&none)),
            Severity::High,
            "closed by the policy about to be attached"
        );
        assert_eq!(severity(true, ssh, &some, Some(&some)), Severity::Info);
        assert_eq!(severity(false, ssh, &none, Some(&none)), Severity::Info);
    }
}
