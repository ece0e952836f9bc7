//! `portguard attach IFACE --policy FILE`: load, attach (or adopt what a previous loader left
//! pinned), then stay in the foreground until Ctrl-C or SIGTERM.

use std::process::ExitCode;

use anyhow::Result;
use portguard::{
    attachment::{self, AttachOptions, Ended},
    output::say,
    system,
};

pub fn run(options: AttachOptions) -> Result<ExitCode> {
    system::require_root("portguard attach")?;
    let iface = options.iface;
    let ended = attachment::attach(&options)?.run()?;
    Ok(match ended {
        Ended::Left => {
            say(&format!(
                "portguard: loader stopped; enforcement stays pinned on {iface} (`portguard detach {iface}` removes it)"
            ));
            ExitCode::SUCCESS
        }
        Ended::Detached { rolled_back } => {
            say(&format!("portguard: detached from {iface}"));
            // An attach undone for want of a confirmation did not do what was asked.
            if rolled_back { portguard::exit::Exit::RolledBack.into() } else { ExitCode::SUCCESS }
        }
    })
}
