//! `portguard confirm [IFACE]`: keep a change made with `--confirm-within`.

use std::process::ExitCode;

use std::time::SystemTime;

use anyhow::Result;
use portguard::{
    attachment::{self, WhenNone},
    control,
    events::{Actor, EventRecord, EventType},
    inform,
    manager::{self, Rollback},
    state::RunState,
    system,
};

pub fn run(iface: Option<&str>) -> Result<ExitCode> {
    system::require_root("portguard confirm")?;
    let interfaces = attachment::select(iface, WhenNone::Accept)?;
    let mut confirmed = 0;
    for iface in &interfaces {
        let Some(pending) = manager::confirm(iface)? else { continue };
        inform!("{iface}: confirmed, the change stays");
        confirmed += 1;
        let generation = RunState::read(iface).map(|state| state.generation);
        let mut record = EventRecord::new(SystemTime::now(), iface, EventType::Confirmed);
        record.reason = Some(match (&pending.rollback, generation) {
            (Rollback::Restore { .. }, Some(generation)) => {
                format!("the reload to generation {generation} stays")
            }
            (Rollback::Restore { .. }, None) => "the reload stays".into(),
            (Rollback::Detach, _) => "the attach stays".into(),
        });
        record.generation = generation;
        Actor::of_this_process().stamp(&mut record);
        control::tell_loaders(std::slice::from_ref(iface), &record);
    }
    if confirmed == 0 {
        eprintln!("nothing is waiting for confirmation");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
