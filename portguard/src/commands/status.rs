//! `portguard status`: every attachment found under /sys/fs/bpf/portguard.

use std::process::ExitCode;

use anyhow::Result;
use portguard::{
    durations,
    exit::Exit,
    links::Inspection,
    loader::attached_interfaces,
    manager::{self, Pending},
    note,
    output::{self, Tone, paint},
    state::{LoaderLock, RunState, loader_running},
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

/// One attachment as `status` reports it.
struct Row {
    iface: String,
    state: Option<RunState>,
    /// Why it protects nothing (or only half), from the links and the interface now.
    problem: Option<String>,
    /// What was found about an interrupted switch.
    note: Option<String>,
    running: bool,
    /// A change made with --confirm-within that waits for `portguard confirm`.
    pending: Option<Pending>,
}

impl Row {
    /// What this attachment adds to the exit status (as `systemctl is-active`: a loader that
    /// is not running, or an interface not protected, is "not running").
    fn exit(&self) -> Exit {
        if !self.running || self.problem.is_some() {
            Exit::NotRunning
        } else if self.pending.is_some() {
            Exit::ConfirmationPending
        } else {
            Exit::Ok
        }
    }
}

/// The exit status of `status`: the worst of its attachments; nothing attached is "not
/// running".
fn exit_of(rows: &[Row]) -> Exit {
    let exits: Vec<Exit> = rows.iter().map(Row::exit).collect();
    if rows.is_empty() || exits.contains(&Exit::NotRunning) {
        Exit::NotRunning
    } else if exits.contains(&Exit::ConfirmationPending) {
        Exit::ConfirmationPending
    } else {
        Exit::Ok
    }
}

fn inspect(iface: &str) -> Row {
    let running = loader_running(iface);
    // With nobody else able to change it (no loader, and the lock held), the record is made to
    // agree with what runs; the lock is taken only then, so an attach starting meanwhile is
    // not turned away for nothing.
    let interrupted = portguard::paths::next_file(iface).exists();
    let lock = if running || !interrupted { None } else { LoaderLock::try_acquire(iface) };
    let (state, note) = match manager::settle(iface, lock.is_some()) {
        Ok(settled) => settled,
        Err(error) if running => {
            eprintln!("warning: {error:#}; its loader rewrites it at the next reload");
            (None, None)
        }
        Err(error) => {
            RunState::remove(iface);
            eprintln!(
                "warning: {error:#}: removed it (`portguard detach {iface}` and attach again restore a full record)"
            );
            (None, None)
        }
    };
    drop(lock);
    let problem = match Inspection::of(iface) {
        Ok(found) => found.problem(iface),
        Err(error) => Some(format!("{error:#}")),
    };
    let pending = Pending::read(iface);
    Row { iface: iface.to_owned(), state, problem, note, running: running || loader_running(iface), pending }
}

pub fn run(json: bool) -> Result<ExitCode> {
    system::require_root_to_look("portguard status")?;
    let rows: Vec<Row> = attached_interfaces()?.iter().map(|iface| inspect(iface)).collect();
    report_left_behind();
    let exit = exit_of(&rows);
    if json {
        let list: Vec<_> = rows
            .iter()
            .map(|Row { iface, state, problem, note, running, pending }| {
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
    for Row { iface, state, problem, note, running, pending } in rows {
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
