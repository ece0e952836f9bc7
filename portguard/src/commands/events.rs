//! `portguard events [IFACE]`: follow an attachment's events from another terminal, from its
//! loader or, when the loader is gone but its pinned programs still enforce, from the kernel
//! (`daemon::pump::follow`); with `--since`, read back what its journal kept (`journal`).

use std::{process::ExitCode, time::SystemTime};

use anyhow::Result;
use portguard::{
    attachment::{self, WhenNone},
    daemon::pump::{self, Output},
    journal::{self, Reading},
    netns::Netns,
    output, system,
};

pub fn run(iface: Option<&str>, json: bool, since: Option<SystemTime>) -> Result<ExitCode> {
    system::require_root("portguard events")?;
    if let Some(since) = since {
        return read_back(iface, json, since);
    }
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

/// The journals of `iface` (default: every interface with one in this namespace) since
/// `since`, merged by time; where a journal cannot vouch for the window, said on stderr.
fn read_back(iface: Option<&str>, json: bool, since: SystemTime) -> Result<ExitCode> {
    let now = SystemTime::now();
    let interfaces = match iface {
        Some(iface) => vec![iface.to_owned()],
        None => journal::journals()?,
    };
    if interfaces.is_empty() {
        anyhow::bail!(
            "no journal in {} yet: a loader keeps one from its first attach (in {})",
            Netns::current(),
            portguard::paths::journal_root().display()
        );
    }
    let readings: Vec<Reading> =
        interfaces.iter().map(|iface| journal::read(iface, since, now)).collect::<Result<_>>()?;
    let mut records: Vec<_> = readings.iter().flat_map(|reading| &reading.records).collect();
    records.sort_by(|a, b| a.time.cmp(&b.time));
    let print = Output { json };
    for record in &records {
        print.print(record);
    }
    if records.is_empty() {
        eprintln!("no events journaled since {}", output::rfc3339(since));
    }
    for reading in &readings {
        for gap in &reading.gaps {
            eprintln!("note: the journal of {} has a gap: {}", reading.interface, gap.describe());
        }
        if reading.unreadable_lines > 0 {
            eprintln!(
                "note: the journal of {} has {} it cannot read (cut short by a crash?)",
                reading.interface,
                output::count(reading.unreadable_lines, "line", "lines")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
