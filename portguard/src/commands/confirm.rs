//! `portguard confirm [IFACE]`: keep a change made with `--confirm-within`.

use std::process::ExitCode;

use anyhow::Result;
use portguard::{inform, manager, system};

use super::status::attached_interfaces;

pub fn run(iface: Option<&str>) -> Result<ExitCode> {
    system::require_root("portguard confirm")?;
    let interfaces = match iface {
        Some(iface) => vec![iface.to_owned()],
        None => attached_interfaces()?,
    };
    let mut confirmed = 0;
    for iface in &interfaces {
        if manager::confirm(iface)? {
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
