//! `portguard check POLICY`: validate and compile, never touching the kernel.

use std::{path::Path, process::ExitCode};

use anyhow::Result;
use portguard::policy::{self, LoadOptions, compile::compile};
use serde_json::json;

pub fn run(path: &Path, strict: bool, json: bool, deny_warnings: bool) -> Result<ExitCode> {
    let loaded = match policy::load(path, LoadOptions { strict }) {
        Ok(loaded) => loaded,
        Err(errors) => {
            if json {
                print_invalid(&errors.diagnostics);
            } else {
                eprintln!("{errors}");
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    let image = match compile(&loaded.policy, 1) {
        Ok(image) => image,
        Err(error) => {
            let diagnostic = policy::Diagnostic {
                severity: policy::Severity::Error,
                file: path.to_owned(),
                line: 0,
                column: 0,
                message: format!("{error:#}"),
            };
            if json {
                print_invalid(&[diagnostic]);
            } else {
                eprintln!("{diagnostic}");
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    let policy = &loaded.policy;
    // `--deny-warnings`: a policy with warnings fails the check, as compilers' -D warnings.
    let denied = deny_warnings && !loaded.warnings.is_empty();
    let exit = if denied { ExitCode::FAILURE } else { ExitCode::SUCCESS };
    if json {
        let diagnostics: Vec<_> = loaded.warnings.iter().map(diagnostic_json).collect();
        println!(
            "{}",
            json!({
                "valid": true,
                "denied_by_warnings": denied,
                "diagnostics": diagnostics,
                "summary": policy.summary(),
                "policy": policy,
                "kernel_entries": {
                    "ports": image.ports.len(),
                    "source_rules": image.src_allow.len(),
                    "blocklist_v4_whole_16s": image.bl4_whole_16s(),
                    "blocklist_v4_ranges": image.bl4_ranges.len(),
                    "blocklist_v6": image.bl6.len(),
                    "never_block": image.never_block.len(),
                },
            })
        );
        return Ok(exit);
    }
    portguard::output::warnings(&loaded.warnings);
    println!("{}: valid: {}", path.display(), policy.summary());
    for rule in &policy.rules {
        let ports = describe_ports(&rule.ports);
        let from = match &rule.from {
            None => String::new(),
            Some(nets) => {
                format!(" from {}", nets.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))
            }
        };
        let kind = match rule.kind {
            policy::RuleKind::Allow => "allow",
            policy::RuleKind::Deny => "deny",
        };
        let limit = rule.limit.map(|limit| format!(", {}", limit.describe())).unwrap_or_default();
        println!("  {}: {kind} {} {ports}{from}{limit}", portguard::printable(&rule.label()), rule.proto);
    }
    for source in &policy.blocklist_sources {
        println!(
            "  blocklist {}: {}{}",
            portguard::printable(&source.origin()),
            portguard::output::count(source.entries as u64, "entry", "entries"),
            if source.bad_lines > 0 {
                format!(
                    ", {} skipped",
                    portguard::output::count(source.bad_lines as u64, "bad line", "bad lines")
                )
            } else {
                String::new()
            }
        );
    }
    if let Some(feeds) = &policy.feeds {
        for url in &feeds.urls {
            println!(
                "  blocklist feed {}: fetched by the loader every {} (not counted here)",
                portguard::printable(url),
                portguard::durations::format(feeds.refresh)
            );
        }
    }
    println!(
        "  kernel entries: {} ports, {} source rules, {} blocked IPv4 /16s, {} IPv4 ranges, {} IPv6 prefixes",
        image.ports.len(),
        image.src_allow.len(),
        image.bl4_whole_16s(),
        image.bl4_ranges.len(),
        image.bl6.len()
    );
    if denied {
        let count = loaded.warnings.len();
        eprintln!(
            "{}: {count} warning{} and --deny-warnings: treated as errors",
            path.display(),
            if count == 1 { "" } else { "s" }
        );
    }
    Ok(exit)
}

/// Ranges shown for one rule at most; the rest are counted.
const RANGES_SHOWN: usize = 32;

/// A rule's ports for people: merged into ranges in order (a rule may list all 65,535 ports one
/// by one), and at most `RANGES_SHOWN` ranges.
fn describe_ports(ports: &[std::ops::RangeInclusive<u16>]) -> String {
    let mut sorted: Vec<(u16, u16)> = ports.iter().map(|r| (*r.start(), *r.end())).collect();
    sorted.sort_unstable();
    let mut merged: Vec<(u16, u16)> = Vec::new();
    for (start, end) in sorted {
        match merged.last_mut() {
            Some((_, last)) if u32::from(start) <= u32::from(*last) + 1 => *last = (*last).max(end),
            _ => merged.push((start, end)),
        }
    }
    let mut parts: Vec<String> = merged
        .iter()
        .take(RANGES_SHOWN)
        .map(|&(start, end)| if start == end { start.to_string() } else { format!("{start}-{end}") })
        .collect();
    if merged.len() > RANGES_SHOWN {
        let count: u32 = merged.iter().map(|&(start, end)| u32::from(end - start) + 1).sum();
        parts.push(format!("and {} more ranges ({count} ports in all)", merged.len() - RANGES_SHOWN));
    }
    parts.join(", ")
}

/// A rejected policy in JSON: the same keys as a valid one, `null` where there is nothing.
fn print_invalid(diagnostics: &[policy::Diagnostic]) {
    let diagnostics: Vec<_> = diagnostics.iter().map(diagnostic_json).collect();
    println!(
        "{}",
        json!({
            "valid": false,
            "denied_by_warnings": false,
            "diagnostics": diagnostics,
            "summary": null,
            "policy": null,
            "kernel_entries": null,
        })
    );
}

fn diagnostic_json(d: &policy::Diagnostic) -> serde_json::Value {
    // Line and column 0: the message is about the whole file (it cannot be read, say).
    let place = |n: usize| (n > 0).then_some(n);
    json!({
        "severity": match d.severity { policy::Severity::Error => "error", policy::Severity::Warning => "warning" },
        "file": d.file,
        "line": place(d.line),
        "column": place(d.column),
        "message": d.message,
    })
}

#[cfg(test)]
mod tests {
    use super::describe_ports;

    #[test]
    fn ports_are_summarised_as_ranges() {
        assert_eq!(describe_ports(&[80..=80, 443..=443, 8000..=8100]), "80, 443, 8000-8100");
        let every: Vec<_> = (1..=65535u16).map(|p| p..=p).collect();
        assert_eq!(describe_ports(&every), "1-65535");
        let odd: Vec<_> = (1..=65535u16).step_by(2).map(|p| p..=p).collect();
        let text = describe_ports(&odd);
        assert!(text.len() < 300, "{}", text.len());
        assert!(text.ends_with("and 32736 more ranges (32768 ports in all)"), "{text}");
        assert_eq!(describe_ports(&[10..=20, 15..=30, 31..=31, 40..=40]), "10-31, 40");
    }
}
