//! `portguard confirm [IFACE]`: keep a change made with `--confirm-within`.

use std::process::ExitCode;

use anyhow::Result;
use portguard::{
    attachment::{self, WhenNone},
    inform, system,
};

pub fn run(iface: Option<&str>) -> Result<ExitCode> {
    system::require_root("portguard confirm")?;
    let mut confirmed = 0;
    for iface in &attachment::select(iface, WhenNone::Accept)? {
        if attachment::confirm(iface)? {
            inform!("{iface}: confirmed, the change stays");
            confirmed += 1;
        }
    }
    if confirmed == 0 {
        eprintln!("nothing is waiting for confirmation");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
