//! `portguard doctor`: what an operator wants to know at 3 a.m. Is the host ready for
//! portguard, what does it expose (listening sockets against the policy), and what protects it
//! now. Every finding has a severity and a one-line remedy.
//!
//! Here: the report, its findings and which policies are weighed. Each part of the audit has
//! its own room: `host` (readiness, interfaces), `exposure` (listening sockets against the
//! policy), `protection` (attachments, netfilter); `html` renders the report.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use serde::Serialize;

mod exposure;
mod host;
pub mod html;
mod protection;

pub use exposure::Listening;
pub use host::Check;
pub use protection::Attachment;

use self::{
    exposure::{Policies, listening},
    host::{interfaces, readiness},
    protection::protection,
};
use crate::{
    maps::PortCount,
    policy::{self, LoadOptions, Policy},
    sockets,
    state::RunState,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// `readiness`, `exposure`, `protection`, or `policy` (what `--policy FILE` would change
    /// from what is enforced now).
    pub category: &'static str,
    pub title: String,
    pub detail: String,
    pub remedy: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub worst: Severity,
    pub counts: BTreeMap<&'static str, usize>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub host: String,
    pub kernel: String,
    /// RFC 3339, UTC.
    pub generated_at: String,
    /// The policy the exposure audit used, if any: `--policy`, else the one in force.
    pub policy: Option<PathBuf>,
    /// Whether that policy is the one an attachment runs (else: what it would change).
    pub policy_enforced: bool,
    /// The policy an attachment enforces now, whose effect the findings describe.
    pub policy_in_force: Option<PathBuf>,
    pub summary: Summary,
    pub findings: Vec<Finding>,
    pub readiness: Vec<Check>,
    pub listening: Vec<Listening>,
    pub attachments: Vec<Attachment>,
    /// Most dropped ports, over every attachment.
    pub drops_by_port: Vec<PortCount>,
}

pub struct Options<'a> {
    pub policy: Option<&'a Path>,
    pub iface: Option<&'a str>,
}

/// The policy an attachment (the named one, else the first) enforces now, and `--policy` when
/// it is something else (another file, or the same file changed since it was attached).
struct Audit {
    enforced: Option<(PathBuf, Policy)>,
    audited: Option<(PathBuf, Policy)>,
}

fn audit_policies(options: &Options) -> Result<Audit> {
    let running: Vec<RunState> =
        RunState::all().into_iter().filter(|s| options.iface.is_none_or(|i| i == s.iface)).collect();
    let active = running.iter().find_map(|state| crate::manager::PolicySource::active(&state.iface).ok());
    let enforced = active.as_ref().and_then(|source| {
        source.load(LoadOptions::default()).ok().map(|loaded| (source.path.clone(), loaded.policy))
    });
    let Some(path) = options.policy else {
        return Ok(Audit { enforced, audited: None });
    };
    let text = crate::files::read_text_capped(path, crate::files::POLICY_MAX)
        .with_context(|| format!("reading {}", path.display()))?;
    let canonical = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_owned());
    let same = active.as_ref().is_some_and(|active| {
        enforced.is_some() && active.text == text && canonical(&active.path) == canonical(path)
    });
    if same {
        return Ok(Audit { enforced, audited: None });
    }
    let loaded = policy::parse(&text, path, LoadOptions::default())?;
    Ok(Audit { enforced, audited: Some((path.to_owned(), loaded.policy)) })
}

pub fn run(options: &Options) -> Result<Report> {
    let mut findings = Vec::new();
    let audit = audit_policies(options)?;
    let caps_connections = [&audit.enforced, &audit.audited].into_iter().flatten().any(|(_, policy)| {
        policy.rules.iter().any(|rule| rule.limit.is_some_and(|limit| limit.connections_per_source.is_some()))
    });
    let mut readiness = readiness(&mut findings, caps_connections);
    readiness.extend(interfaces(options.iface, &mut findings));
    let sockets = sockets::read_all()?;
    let policies =
        Policies { enforced: as_ref(audit.enforced.as_ref()), audited: as_ref(audit.audited.as_ref()) };
    let listening = listening(&sockets, policies, &mut findings);
    let (attachments, drops_by_port) = protection(options.iface, &mut findings);
    findings.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.title.cmp(&b.title)));
    let mut counts = BTreeMap::new();
    for severity in [Severity::Critical, Severity::High, Severity::Medium, Severity::Low, Severity::Info] {
        counts.insert(severity.name(), findings.iter().filter(|f| f.severity == severity).count());
    }
    let worst = findings.iter().map(|f| f.severity).max().unwrap_or(Severity::Info);
    Ok(Report {
        host: nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default(),
        kernel: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        generated_at: crate::output::timestamp(),
        policy_enforced: audit.audited.is_none() && audit.enforced.is_some(),
        policy: audit.audited.as_ref().or(audit.enforced.as_ref()).map(|(path, _)| path.clone()),
        policy_in_force: audit.enforced.map(|(path, _)| path),
        summary: Summary { worst, counts },
        findings,
        readiness,
        listening,
        attachments,
        drops_by_port,
    })
}

fn as_ref(policy: Option<&(PathBuf, Policy)>) -> Option<(&Path, &Policy)> {
    policy.map(|(path, policy)| (path.as_path(), policy))
}
