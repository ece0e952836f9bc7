//! `portguard learn IFACE [--min-connections N] [--since WHEN] [--max-networks N]`: a policy
//! proposed from the attachment's per-port statistics (`portguard::learn`), printed as a policy
//! file (`--json`: the same proposal as one JSON document, the file in it); `--reset` starts the
//! statistics afresh instead.

use std::{process::ExitCode, time::SystemTime};

use anyhow::{Context as _, Result};
use portguard::{
    inform,
    learn::{self, Options},
    portstats::PortStatsMaps,
    system,
};

pub fn run(iface: &str, options: Options, reset: bool, json: bool) -> Result<ExitCode> {
    system::require_root_to_look("portguard learn")?;
    let mut maps = PortStatsMaps::open(iface).context(
        "the per-port statistics are kept by attachments made by this version of portguard; an older \
         attachment has none until it is detached and attached again",
    )?;
    if reset {
        maps.reset()?;
        inform!(
            "the per-port statistics of {iface} start again from now ({})",
            portguard::output::timestamp()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let snapshot = maps.snapshot()?;
    if options.since.is_some_and(|since| since > SystemTime::now()) {
        anyhow::bail!("--since is in the future: nothing would count");
    }
    // Sources are cut as the statistics cut them (the policy's ipv6_prefix; /64 until one is seen).
    let ipv6_prefix =
        snapshot.sources.iter().find(|s| s.network.addr().is_ipv6()).map_or(64, |s| s.network.prefix_len());
    let (listeners, ssh) = learn::host_facts(ipv6_prefix)?;
    let proposal = learn::propose(&snapshot, &listeners, &ssh, &options);
    let policy = learn::render(&proposal, iface, &snapshot, &options);
    if json {
        let document = learn::to_json(&proposal, &policy, iface, &snapshot, &options);
        portguard::output::emit(&serde_json::to_string_pretty(&document)?);
    } else {
        print!("{policy}");
    }
    Ok(ExitCode::SUCCESS)
}
