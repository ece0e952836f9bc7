//! One module per verb. Each returns the process exit code or an error for main to print.

mod attach;
mod check;
mod detach;
mod events;
mod serve;
mod stats;
mod status;

use std::process::ExitCode;

use anyhow::Result;
use portguard::system;

use crate::cli::{Cli, Command};

pub fn run(cli: Cli) -> Result<ExitCode> {
    // Before anything starts a thread: threads inherit the namespace of their creator.
    if let Some(netns) = &cli.netns {
        system::enter_netns(netns)?;
    }
    match cli.command {
        Command::Attach {
            iface,
            policy,
            xdp_mode,
            strict,
            json,
        } => attach::run(
            &iface,
            &policy,
            xdp_mode,
            strict,
            json,
            cli.netns.as_deref(),
        ),
        Command::Events { iface, json } => events::run(iface.as_deref(), json),
        Command::Check {
            policy,
            strict,
            json,
        } => check::run(&policy, strict, json),
        Command::Status { json } => status::run(json),
        Command::Stats {
            iface,
            json,
            watch,
            top,
        } => stats::run(iface.as_deref(), json, watch, top),
        Command::Detach { iface, all } => detach::run(iface.as_deref(), all),
    }
}

/// Prints policy warnings to stderr (errors come back as the `PolicyErrors` error).
pub fn print_warnings(warnings: &[portguard::policy::Diagnostic]) {
    for warning in warnings {
        eprintln!("{warning}");
    }
}

/// `1h 2m 3s` from seconds.
pub fn format_uptime(secs: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

/// Thousands separators for counts people read.
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
