//! `portguard status`: every attachment found under /sys/fs/bpf/portguard, and whether its
//! connection caps are enforced (the `sock_ops` link on the cgroup, checked apart from the
//! interface's links).

use std::process::ExitCode;

use anyhow::Result;
use portguard::{
    attachment::{self, Standing},
    durations,
    exit::Exit,
    links,
    loader::attached_interfaces,
    manager::Pending,
    note,
    output::{self, Tone, paint},
    state::RunState,
    system,
};
use serde_json::json;

/// Cleans the run files of interfaces with neither pins nor a loader, and says so (stderr:
/// stdout stays what the command prints).
fn report_left_behind() {
    for iface in portguard::state::interfaces_with_run_files() {
        let removed = portguard::state::remove_left_behind(&iface);
        if !removed.is_empty() {
            note!("{iface}: not attached; removed left-behind run files: {}", removed.join(", "));
        }
    }
}

/// Whether the running policy caps open connections (`None`: no record says), and why the
/// caps are not enforced (the `sock_ops` link on the cgroup, which the interface's links say
/// nothing about).
fn connection_caps(iface: &str, state: Option<&RunState>) -> (Option<bool>, Option<String>) {
    let capped = state.map(|s| s.limited_rules.iter().any(|r| r.connections_per_source.is_some()));
    let problem = match links::sock_ops(iface) {
        Ok(link) => capped.and_then(|capped| links::connection_caps_problem(capped, link)),
        Err(error) => capped.unwrap_or(true).then(|| format!("{error:#}")),
    };
    (capped, problem)
}

pub fn run(json: bool) -> Result<ExitCode> {
    system::require_root_to_look("portguard status")?;
    let rows: Vec<Standing> =
        attached_interfaces()?.iter().map(|iface| attachment::standing(iface)).collect();
    report_left_behind();
    let caps: Vec<(Option<bool>, Option<String>)> =
        rows.iter().map(|row| connection_caps(&row.iface, row.state.as_ref())).collect();
    // Caps not enforced are protection missing, as an interface not protected is: 3 before 5.
    let exit = match attachment::exit_of(&rows) {
        Exit::Ok | Exit::ConfirmationPending if caps.iter().any(|(_, problem)| problem.is_some()) => {
            Exit::NotRunning
        }
        exit => exit,
    };
    if json {
        let list: Vec<_> = rows
            .iter()
            .zip(&caps)
            .map(|(Standing { iface, state, problem, note, running, pending }, (capped, caps_problem))| {
                json!({
                    "interface": iface,
                    "enforcing": problem.is_none(),
                    "problem": problem,
                    "note": note,
                    "loader_running": running,
                    "pid": state.as_ref().map(|s| s.pid),
                    "policy": state.as_ref().map(|s| &s.policy),
                    "summary": state.as_ref().map(|s| &s.summary),
                    "mode": state.as_ref().map(|s| s.mode),
                    "xdp_mode": state.as_ref().map(|s| s.xdp_mode),
                    "generation": state.as_ref().map(|s| s.generation),
                    "attached_at": state.as_ref().and_then(|s| output::rfc3339_unix(s.attached_at)),
                    "uptime_secs": state.as_ref().map(RunState::uptime_secs),
                    "netns": state.as_ref().and_then(|s| s.netns.clone()),
                    "pinned": state.as_ref().map(|s| s.pinned),
                    "rollback_at": pending.as_ref().and_then(|p| output::rfc3339_unix(p.deadline)),
                    "rollback_remaining_secs": pending.as_ref().map(Pending::seconds_left),
                    "connection_caps": capped,
                    "connection_caps_problem": caps_problem,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(exit.into());
    }
    let elsewhere = portguard::loader::attachments_elsewhere();
    if !elsewhere.is_empty() {
        let list: Vec<String> =
            elsewhere.iter().map(|(netns, iface)| format!("{iface} in {netns}")).collect();
        note!(
            "also attached in other network namespaces (`portguard --netns NAME status` shows them): {}",
            list.join(", ")
        );
    }
    if rows.is_empty() {
        println!("portguard is not attached anywhere in {}", portguard::netns::Netns::current());
        return Ok(exit.into());
    }
    for (Standing { iface, state, problem, note, running, pending }, (_, caps_problem)) in
        rows.into_iter().zip(caps)
    {
        let loader = match (running, &state) {
            (true, Some(state)) => format!("{} (pid {})", paint(Tone::Good, "loader running"), state.pid),
            (true, None) => paint(Tone::Good, "loader running").to_string(),
            (false, _) if problem.is_none() => format!(
                "{}: pinned programs still enforce; `portguard detach` removes them",
                paint(Tone::Bad, "loader NOT running")
            ),
            (false, _) => paint(Tone::Bad, "loader NOT running").to_string(),
        };
        println!("{iface}: {loader}");
        if let Some(problem) = &problem {
            let remedy = if running {
                format!("its loader attaches again as soon as {iface} exists")
            } else {
                format!(
                    "`portguard attach {iface} --policy FILE` attaches afresh, `portguard detach {iface}` cleans up"
                )
            };
            println!("  {}: {problem}; {remedy}", paint(Tone::Bad, "NOT PROTECTED"));
        }
        if let Some(caps_problem) = &caps_problem {
            println!(
                "  {}: {caps_problem}; `portguard reload {iface}` puts the sock_ops link right{}",
                paint(Tone::Bad, "CONNECTION CAPS NOT ENFORCED"),
                if running { "" } else { " (or `portguard attach` adopting the attachment)" }
            );
        }
        if let Some(note) = note {
            println!("  note: {note}");
        }
        if let Some(pending) = pending {
            println!(
                "  {}: rolls back in {} unless `portguard confirm {iface}`",
                paint(Tone::Caution, "WAITING FOR CONFIRMATION"),
                durations::format_secs(pending.seconds_left())
            );
        }
        if let Some(state) = state {
            let netns = state.netns.as_deref().map(|n| format!(", netns {n}")).unwrap_or_default();
            println!(
                "  XDP {} mode{netns}, up {}, policy generation {}",
                state.xdp_mode,
                durations::format_secs(state.uptime_secs()),
                state.generation
            );
            println!(
                "  policy {}: {}",
                portguard::printable(&state.policy.display().to_string()),
                state.summary
            );
        }
    }
    Ok(exit.into())
}
