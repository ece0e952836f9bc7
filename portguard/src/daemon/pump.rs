//! The event pump: what comes out of the kernel's ring buffer, and what the loader adds to it
//! every second (lost events, expired blocks), printed for people or as JSON lines. Shared by
//! the loader and by `portguard events` when it reads a loader-less attachment itself.

use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncBufReadExt as _, BufReader};

use crate::{
    control,
    events::{EventRecord, EventSource, Grants},
    paths,
    state::loader_running,
};

/// How events are printed on stdout.
#[derive(Clone, Copy, Debug)]
pub struct Output {
    pub json: bool,
}

impl Output {
    /// Events are what stdout carries, as JSON lines or as lines for people.
    pub fn print(&self, record: &EventRecord) {
        crate::output::emit(&if self.json { record.json() } else { record.human_painted() });
    }
}

/// What one second's upkeep of an event source found: events to publish, and what failed
/// (each step runs whatever the others did).
pub struct Upkeep {
    pub records: Vec<EventRecord>,
    pub errors: Vec<anyhow::Error>,
}

/// Refills the packet path's budgets from `grants`, reports events the ring buffer lost and
/// sweeps automatic blocks that expired.
pub fn upkeep(source: &mut EventSource, grants: Grants) -> Upkeep {
    let mut found = Upkeep { records: Vec::new(), errors: Vec::new() };
    if let Err(error) = source.refill(grants) {
        found.errors.push(error.context("refilling the drop-event and new-block budget"));
    }
    match source.newly_lost() {
        Ok(lost) => found.records.extend(lost),
        Err(error) => found.errors.push(error.context("reading the lost-event counter")),
    }
    match source.sweep_expired() {
        Ok(swept) => found.records.extend(swept),
        Err(error) => found.errors.push(error.context("sweeping expired blocks")),
    }
    found
}

/// Follows the events of `iface` until its loader stops or it is detached: from the loader
/// (the only reader of its ring buffer while it runs), else from the kernel directly.
pub async fn follow(iface: String, output: Output) -> Result<()> {
    if loader_running(&iface) {
        let stream = control::subscribe(&iface).await?;
        crate::note!("following the events of {iface} (from its loader)");
        let mut lines = BufReader::new(stream).lines();
        while let Some(line) = lines.next_line().await? {
            if output.json {
                println!("{line}");
            } else if let Ok(record) = serde_json::from_str::<EventRecord>(&line) {
                output.print(&record);
            } else {
                println!("{line}");
            }
        }
        crate::note!("{iface}: the loader stopped");
        return Ok(());
    }
    crate::note!("following the events of {iface} (its loader is not running: reading the kernel directly)");
    let mut source = EventSource::from_pins(&iface)?.watch()?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            ready = source.readable_mut() => {
                let mut guard = ready?;
                for record in guard.get_inner_mut().drain() {
                    output.print(&record);
                }
                guard.clear_ready();
            }
            _ = tick.tick() => {
                let Upkeep { records, mut errors } = upkeep(source.get_mut(), Grants::defaults());
                for record in &records {
                    output.print(record);
                }
                if !errors.is_empty() {
                    return Err(errors.swap_remove(0));
                }
                if !paths::pin_dir(&iface).exists() {
                    crate::note!("{iface}: detached");
                    return Ok(());
                }
            }
        }
    }
}
