//! `portguard status`: every attachment found under /sys/fs/bpf/portguard.

use std::process::ExitCode;

use anyhow::Result;
use portguard::{
    loader,
    state::{RunState, loader_running},
};
use serde_json::json;

use super::format_uptime;

/// Cleans the run files of interfaces with neither pins nor a loader, and says so (stderr:
/// stdout stays what the command prints).
pub fn report_left_behind() {
    for iface in portguard::state::interfaces_with_run_files() {
        let removed = portguard::state::remove_left_behind(&iface);
        if !removed.is_empty() {
            eprintln!("{iface}: not attached; removed left-behind run files: {}", removed.join(", "));
        }
    }
}

pub use portguard::loader::attached_interfaces;

pub fn run(json: bool) -> Result<ExitCode> {
    let interfaces = attached_interfaces();
    let mut rows = Vec::new();
    for iface in &interfaces {
        let enforcing = loader::is_attached(iface);
        let running = loader_running(iface);
        let state = match RunState::read_checked(iface) {
            Ok(state) => state,
            Err(error) if running => {
                eprintln!("warning: {error:#}; its loader rewrites it at the next reload");
                None
            }
            Err(error) => {
                RunState::remove(iface);
                eprintln!(
                    "warning: {error:#}: removed it (`portguard detach {iface}` and attach again restore a full record)"
                );
                None
            }
        };
        rows.push((iface, state, enforcing, running));
    }
    report_left_behind();
    if json {
        let list: Vec<_> = rows
            .iter()
            .map(|(iface, state, enforcing, running)| {
                json!({
                    "interface": iface,
                    "enforcing": enforcing,
                    "loader_running": running,
                    "pid": state.as_ref().map(|s| s.pid),
                    "policy": state.as_ref().map(|s| &s.policy),
                    "summary": state.as_ref().map(|s| &s.summary),
                    "mode": state.as_ref().map(|s| s.mode),
                    "xdp_mode": state.as_ref().map(|s| s.xdp_mode),
                    "generation": state.as_ref().map(|s| s.generation),
                    "uptime_secs": state.as_ref().map(|s| s.uptime_secs()),
                    "netns": state.as_ref().and_then(|s| s.netns.clone()),
                    "pinned": state.as_ref().map(|s| s.pinned),
                    "confirm_seconds_left": portguard::manager::Pending::read(iface).map(|p| p.seconds_left()),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("portguard is not attached anywhere");
        return Ok(ExitCode::SUCCESS);
    }
    for (iface, state, enforcing, running) in rows {
        let loader = match (running, &state) {
            (true, Some(state)) => format!("loader running (pid {})", state.pid),
            (true, None) => "loader running".to_string(),
            (false, _) if enforcing => {
                "loader NOT running: pinned programs still enforce; `portguard detach` removes them"
                    .to_string()
            }
            (false, _) => "left-behind pins, nothing enforcing; `portguard detach` removes them".to_string(),
        };
        println!("{iface}: {loader}");
        if let Some(pending) = portguard::manager::Pending::read(iface) {
            println!(
                "  WAITING FOR CONFIRMATION: rolls back in {} unless `portguard confirm {iface}`",
                format_uptime(pending.seconds_left())
            );
        }
        if let Some(state) = state {
            let netns = state.netns.as_deref().map(|n| format!(", netns {n}")).unwrap_or_default();
            println!(
                "  XDP {} mode{netns}, up {}, policy generation {}",
                state.xdp_mode,
                format_uptime(state.uptime_secs()),
                state.generation
            );
            println!(
                "  policy {}: {}",
                portguard::printable(&state.policy.display().to_string()),
                state.summary
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
