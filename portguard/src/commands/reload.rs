//! `portguard reload [IFACE] [--policy FILE]`: swap in a policy without a gap, through the
//! running loader (or directly, when its loader is gone but its programs are pinned).

use std::{path::Path, process::ExitCode, time::Duration};

use anyhow::{Result, bail};
use portguard::{
    attachment::{self, Reload, Reloaded, WhenNone},
    manager::{self, PolicySource},
    safety::Session,
    state::loader_running,
    system,
};

pub fn run(
    iface: Option<&str>,
    policy: Option<&Path>,
    strict: bool,
    confirm_within: Option<Duration>,
    force: bool,
) -> Result<ExitCode> {
    system::require_root("portguard reload")?;
    // Whose SSH session a lockout check protects: this command's (the loader's says nothing).
    let session = Session::find();
    let interfaces = attachment::select(iface, WhenNone::Refuse)?;
    let mut failed = false;
    for iface in &interfaces {
        // A new generation needs links on the interface to switch.
        if let Some(problem) = portguard::links::Inspection::of(iface)?.problem(iface) {
            eprintln!(
                "{iface}: reload refused: {iface} is NOT PROTECTED: {problem}{}",
                if loader_running(iface) {
                    format!("; its loader attaches again as soon as {iface} exists")
                } else {
                    format!("; `portguard attach {iface} --policy FILE` attaches afresh")
                }
            );
            failed = true;
            continue;
        }
        // Without --policy, the running policy's file: from the record, which must be readable.
        // What runs, also after an interrupted switch.
        let running_policy = match manager::settle(iface, false).map(|(state, _)| state) {
            Ok(state) => state.map(|s| s.policy),
            // The loader knows what it runs, and rewrites its record after the reload.
            Err(error) if loader_running(iface) && policy.is_some() => {
                eprintln!("warning: {error:#}; the running loader rewrites it");
                None
            }
            Err(error) => bail!(
                "{error:#}: with its loader running, `portguard reload {iface} --policy FILE` repairs it; \
                 otherwise `portguard detach {iface}` and attach again"
            ),
        };
        let Some(path) = policy.map(Path::to_path_buf).or(running_policy) else {
            bail!(
                "no record of the policy {iface} runs ({} is missing): name it with --policy FILE",
                portguard::paths::state_file(iface).display()
            );
        };
        // Read here, in the caller's working directory, and sent as text: the loader's own
        // working directory (/ under systemd) says nothing about what a relative path meant.
        let source = match PolicySource::read(&path) {
            Ok(source) => source,
            Err(error) => {
                eprintln!("{iface}: reload refused, the running policy stays:\n{error:#}");
                failed = true;
                continue;
            }
        };
        let reload = Reload {
            source,
            strict,
            confirm_within,
            force,
            session,
            actor: Some(portguard::events::Actor::of_this_process()),
            via: Some("portguard reload".into()),
            rollback: None,
        };
        let answer = attachment::reload(iface, reload)?;
        for warning in &answer.warnings {
            eprintln!("{warning}");
        }
        match answer.outcome {
            Ok(Reloaded::ByLoader { message }) => println!("{message}"),
            Ok(Reloaded::Directly { generation, kept, rolls_back_in }) => {
                println!("reloaded {iface} (no loader running): generation {generation}");
                if let Some(kept) = kept {
                    println!("{kept}");
                }
                if let Some(within) = rolls_back_in {
                    println!(
                        "rolls back in {} unless `portguard confirm {iface}`",
                        portguard::durations::format(within)
                    );
                }
            }
            Err(why) => {
                eprintln!("{iface}: reload refused, the running policy stays:\n{why}");
                failed = true;
            }
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
