//! `portguard check POLICY`: validate and compile, never touching the kernel.

use std::{path::Path, process::ExitCode};

use anyhow::Result;
use portguard::policy::{self, LoadOptions, compile::compile};
use serde_json::json;

use super::print_warnings;

pub fn run(path: &Path, strict: bool, json: bool) -> Result<ExitCode> {
    let loaded = match policy::load(path, LoadOptions { strict }) {
        Ok(loaded) => loaded,
        Err(errors) => {
            if json {
                let diagnostics: Vec<_> = errors.diagnostics.iter().map(diagnostic_json).collect();
                println!("{}", json!({ "valid": false, "diagnostics": diagnostics }));
            } else {
                eprintln!("{errors}");
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    let image = match compile(&loaded.policy, 1) {
        Ok(image) => image,
        Err(error) => {
            eprintln!("{}: error: {error:#}", path.display());
            return Ok(ExitCode::FAILURE);
        }
    };
    let policy = &loaded.policy;
    if json {
        let diagnostics: Vec<_> = loaded.warnings.iter().map(diagnostic_json).collect();
        println!(
            "{}",
            json!({
                "valid": true,
                "diagnostics": diagnostics,
                "summary": policy.summary(),
                "policy": policy,
                "kernel_entries": {
                    "ports": image.ports.len(),
                    "source_rules": image.src_allow.len(),
                    "blocklist_v4_wide": image.bl4_wide.len(),
                    "blocklist_v4_buckets": image.bl4.len(),
                    "blocklist_v6": image.bl6.len(),
                    "never_block": image.never_block.len(),
                },
            })
        );
        return Ok(ExitCode::SUCCESS);
    }
    print_warnings(&loaded.warnings);
    println!("{}: valid: {}", path.display(), policy.summary());
    for rule in &policy.rules {
        let ports: Vec<String> = rule
            .ports
            .iter()
            .map(|r| {
                if r.start() == r.end() {
                    r.start().to_string()
                } else {
                    format!("{}-{}", r.start(), r.end())
                }
            })
            .collect();
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
        println!(
            "  {}: {kind} {} {}{from}",
            portguard::printable(&rule.label()),
            rule.proto,
            ports.join(", ")
        );
    }
    for source in &policy.blocklist_sources {
        println!(
            "  blocklist {}: {} entries{}",
            portguard::printable(&source.origin),
            source.entries,
            if source.bad_lines > 0 {
                format!(", {} bad lines skipped", source.bad_lines)
            } else {
                String::new()
            }
        );
    }
    println!(
        "  kernel entries: {} ports, {} source rules, {} blocked IPv4 /16s, {} IPv4 /24 buckets, {} IPv6 prefixes",
        image.ports.len(),
        image.src_allow.len(),
        image.bl4_wide.len(),
        image.bl4.len(),
        image.bl6.len()
    );
    Ok(ExitCode::SUCCESS)
}

fn diagnostic_json(d: &policy::Diagnostic) -> serde_json::Value {
    json!({
        "severity": match d.severity { policy::Severity::Error => "error", policy::Severity::Warning => "warning" },
        "file": d.file,
        "line": d.line,
        "column": d.column,
        "message": d.message,
    })
}
