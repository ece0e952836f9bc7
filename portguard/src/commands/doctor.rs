//! `portguard doctor`: host readiness, exposed listening ports against the policy, and the
//! state of the protection, as text, JSON or a self-contained HTML page. The exit code says
//! whether findings at or above `--fail-on` exist, for cron and CI.

use std::{path::Path, process::ExitCode};

use anyhow::{Context as _, Result};
use portguard::{
    doctor::{self, Report, Severity},
    exit::Exit,
    inform,
    output::{Tone, count, group, paint},
};

pub struct Options<'a> {
    pub policy: Option<&'a Path>,
    pub iface: Option<&'a str>,
    pub json: bool,
    pub html: Option<&'a Path>,
    pub fail_on: Option<Severity>,
}

pub fn run(options: Options) -> Result<ExitCode> {
    // Without root, the BPF checks fail for want of privileges and other processes' sockets
    // cannot be seen: the report would blame the kernel and miss listeners.
    portguard::system::require_root("portguard doctor")?;
    let report = doctor::run(&doctor::Options { policy: options.policy, iface: options.iface })?;
    if let Some(path) = options.html {
        let page = doctor::html::render(&report).context("rendering the HTML report")?;
        std::fs::write(path, page.as_bytes())
            .with_context(|| format!("writing {} (is the directory writable?)", path.display()))?;
    }
    if options.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_human(&report);
        if let Some(path) = options.html {
            inform!("\nHTML report: {}", path.display());
        }
    }
    let failing =
        options.fail_on.is_some_and(|threshold| report.findings.iter().any(|f| f.severity >= threshold));
    Ok(if failing { Exit::Findings } else { Exit::Ok }.into())
}

/// Severities in the colour of what they ask for: critical and high now, medium soon.
fn tone(severity: Severity) -> Tone {
    match severity {
        Severity::Critical | Severity::High => Tone::Bad,
        Severity::Medium => Tone::Caution,
        Severity::Low => Tone::Heading,
        Severity::Info => Tone::Faint,
    }
}

fn print_human(report: &Report) {
    let counts: Vec<String> = report
        .summary
        .counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(severity, n)| format!("{n} {severity}"))
        .collect();
    println!(
        "portguard doctor: {} (kernel {}), worst finding: {}{}",
        report.host,
        report.kernel,
        report.summary.worst.name(),
        if counts.is_empty() { String::new() } else { format!(" ({})", counts.join(", ")) }
    );
    match (&report.policy, &report.policy_in_force) {
        (Some(policy), _) if report.policy_enforced => {
            println!("policy audited: {} (enforced)", policy.display());
        }
        (Some(policy), Some(in_force)) => println!(
            "policy audited: {} (not in force: shown as what it would change; in force: {})",
            policy.display(),
            in_force.display()
        ),
        (Some(policy), None) => {
            println!("policy audited: {} (not attached: what it would do)", policy.display());
        }
        (None, _) => {}
    }

    println!("\nFINDINGS");
    if report.findings.is_empty() {
        println!("  none");
    }
    for finding in &report.findings {
        println!(
            "  {:<9}{:<11}{}",
            paint(tone(finding.severity), finding.severity.name().to_uppercase()),
            finding.category,
            finding.title
        );
        println!("  {:20}{}", "", finding.detail);
        println!("  {:20}fix: {}", "", finding.remedy);
    }

    println!("\nLISTENING");
    if report.listening.is_empty() {
        println!("  nothing listens");
    }
    let service_width =
        report.listening.iter().filter_map(|s| s.service).map(str::len).max().unwrap_or(0) + 2;
    for socket in &report.listening {
        let port = format!("{}/{}", socket.protocol, socket.port);
        let service = socket.service.unwrap_or("");
        let reach = if socket.reachable { "network" } else { "loopback" };
        let program = socket.program.as_deref().unwrap_or("-");
        let change = match (&socket.with_audited_policy, &report.policy_in_force, &report.policy) {
            (Some(with), Some(_), Some(audited)) if *with != socket.policy => {
                format!("; with {}: {with}", audited.display())
            }
            _ => String::new(),
        };
        println!(
            "  {:<9}{port:<12}{:<26}{service:<service_width$}{reach:<9}{program:<22}{}{change}",
            paint(tone(socket.severity), socket.severity.name()),
            socket.address.to_string(),
            socket.policy
        );
    }

    println!("\nPROTECTION");
    if report.attachments.is_empty() {
        println!("  not attached anywhere");
    }
    for a in &report.attachments {
        println!(
            "  {}: {} mode, XDP {}, generation {}, loader {}; {}, {} dropped, {}",
            a.interface,
            a.mode_text(),
            a.xdp_mode.as_deref().unwrap_or("?"),
            a.generation.map_or("?".into(), |g| g.to_string()),
            if a.loader_running { paint(Tone::Good, "running") } else { paint(Tone::Bad, "NOT running") },
            count(a.packets, "packet", "packets"),
            group(a.dropped),
            count(a.active_blocks as u64, "automatic block", "automatic blocks")
        );
    }
    if !report.drops_by_port.is_empty() {
        let top: Vec<String> = report
            .drops_by_port
            .iter()
            .map(|p| format!("{}/{} {}", p.protocol, p.port, group(p.drops)))
            .collect();
        println!("  most dropped: {}", top.join(", "));
    }

    println!("\nREADINESS");
    for check in &report.readiness {
        let verdict = if check.ok { paint(Tone::Good, "ok") } else { paint(Tone::Bad, "FIX") };
        println!("  {verdict:<5}{:<12}{}", check.label, check.detail);
    }
}
