//! `portguard reload [IFACE] [--policy FILE]`: swap in a policy without a gap, through the
//! running loader (or directly, when its loader is gone but its programs are pinned).

use std::{path::Path, process::ExitCode, time::Duration};

use anyhow::Result;
use portguard::{
    attachment::{self, Reload, Reloaded, WhenNone},
    inform,
    safety::Session,
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
        let source = match attachment::reload_source(iface, policy)? {
            Ok(source) => source,
            Err(why) => {
                eprintln!("{iface}: reload refused{why}");
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
        // What was done: left out with -q (the policy's warnings above and refusals stay).
        match answer.outcome {
            Ok(Reloaded::ByLoader { message }) => inform!("{message}"),
            Ok(Reloaded::Directly { generation, kept, rolls_back_in }) => {
                inform!("reloaded {iface} (no loader running): generation {generation}");
                if let Some(kept) = kept {
                    inform!("{kept}");
                }
                if let Some(within) = rolls_back_in {
                    inform!(
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
