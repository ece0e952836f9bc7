//! One module per verb. Each returns the process exit code or an error for main to print.

mod attach;
mod blocks;
mod check;
mod confirm;
mod detach;
mod docs;
mod doctor;
mod events;
mod learn;
mod reload;
mod report;
mod stats;
mod status;
mod verify;

use std::process::ExitCode;

use anyhow::Result;
use portguard::system;

use crate::cli::{Cli, Command};

pub fn run(cli: Cli) -> Result<ExitCode> {
    portguard::output::set_json_stdout(cli.command.json());
    // Before anything starts a thread: threads inherit the namespace of their creator.
    if let Some(netns) = &cli.netns {
        system::enter_netns(netns)?;
    }
    match cli.command {
        Command::Attach { iface, policy, xdp_mode, strict, json, pin, confirm_within, metrics, force } => {
            attach::run(portguard::attachment::AttachOptions {
                iface: &iface,
                policy: &policy,
                xdp_mode,
                strict,
                json,
                pin,
                confirm_within,
                metrics,
                force,
                netns: cli.netns.as_deref(),
            })
        }
        Command::Reload { iface, policy, strict, confirm_within, force } => {
            reload::run(iface.as_deref(), policy.as_deref(), strict, confirm_within, force)
        }
        Command::Confirm { iface } => confirm::run(iface.as_deref()),
        Command::Block { sources, duration, reason, everything, force, iface } => {
            blocks::block(&sources, duration, reason, everything, force, iface.as_deref())
        }
        Command::Unblock { sources, iface } => blocks::unblock(&sources, iface.as_deref()),
        Command::Blocks { json, iface } => blocks::list(json, iface.as_deref()),
        Command::RollbackGuard { iface, token } => {
            portguard::attachment::guard(&iface, &token)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Events { iface, json, since } => events::run(iface.as_deref(), json, since),
        Command::Report { iface, since, html, json } => {
            report::run(iface.as_deref(), since, html.as_deref(), json)
        }
        Command::Verify { policy, pcap, hosts, strict, json } => {
            verify::run(&policy, &pcap, &hosts, strict, json)
        }
        Command::Check { policy, strict, json, deny_warnings } => {
            check::run(&policy, strict, json, deny_warnings)
        }
        Command::Status { json } => status::run(json),
        Command::Learn { iface, min_connections, since, max_networks, reset, json } => learn::run(
            &iface,
            portguard::learn::Options { min_connections, since, max_networks: max_networks as usize },
            reset,
            json,
        ),
        Command::Stats { iface, json, watch, top } => stats::run(iface.as_deref(), json, watch, top),
        Command::Doctor { policy, iface, json, html, fail_on } => doctor::run(doctor::Options {
            policy: policy.as_deref(),
            iface: iface.as_deref(),
            json,
            html: html.as_deref(),
            fail_on,
        }),
        Command::Detach { iface, all } => detach::run(iface.as_deref(), all),
        Command::GenerateDocs { dir } => docs::generate(&dir),
    }
}
