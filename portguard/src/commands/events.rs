//! `portguard events [IFACE]`: follow an attachment's events from another terminal, from its
//! loader or, when the loader is gone but its pinned programs still enforce, from the kernel
//! (`daemon::pump::follow`).

use std::process::ExitCode;

use anyhow::Result;
use portguard::{
    attachment::{self, WhenNone},
    daemon::pump::{self, Output},
    system,
};

pub fn run(iface: Option<&str>, json: bool) -> Result<ExitCode> {
    system::require_root("portguard events")?;
    let interfaces = attachment::select(iface, WhenNone::Refuse)?;
    portguard::runtime::block_on(async move {
        let mut followers = tokio::task::JoinSet::new();
        for iface in interfaces {
            followers.spawn(pump::follow(iface, Output { json }));
        }
        let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        loop {
            tokio::select! {
                done = followers.join_next() => match done {
                    Some(Ok(Err(error))) => return Err(error),
                    Some(_) => {}
                    None => return Ok(ExitCode::SUCCESS),
                },
                _ = interrupt.recv() => return Ok(ExitCode::SUCCESS),
            }
        }
    })?
}
