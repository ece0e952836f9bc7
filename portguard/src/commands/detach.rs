//! `portguard detach IFACE`: stop the loader if it runs, then remove what is left.

use std::process::ExitCode;

use anyhow::Result;
use portguard::{
    attachment::{self, WhenNone},
    blocks::BlockStore,
    inform,
    manager::DetachRequest,
    output::count,
    system,
};

pub fn run(iface: Option<&str>, all: bool) -> Result<ExitCode> {
    system::require_root("portguard detach")?;
    let targets: Vec<String> = if all {
        attachment::select(None, WhenNone::Accept)?
    } else {
        vec![iface.expect("clap requires IFACE without --all").to_owned()]
    };
    if targets.is_empty() {
        println!("portguard is not attached anywhere in {}", portguard::netns::Netns::current());
        return Ok(ExitCode::SUCCESS);
    }
    for iface in &targets {
        let left_behind = portguard::state::remove_left_behind(iface);
        if !left_behind.is_empty() {
            inform!(
                "portguard: {iface} was not attached; removed left-behind run files: {}",
                left_behind.join(", ")
            );
            continue;
        }
        attachment::detach(iface, &DetachRequest::by_command())?;
        inform!("portguard: detached from {iface}");
    }
    let kept = BlockStore::load().map_or(0, |s| s.blocks.len()) as u64;
    if kept > 0 {
        inform!(
            "{} kept in {}: enforced again at the next attach (`portguard unblock` removes them)",
            count(kept, "manual block is", "manual blocks are"),
            portguard::paths::blocks_file().display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
