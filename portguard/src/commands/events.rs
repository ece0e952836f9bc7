//! `portguard events [IFACE]`: follow an attachment's events from another terminal.
//!
//! A running loader is the only reader of its ring buffer (two readers would split the
//! events between them), so this connects to the loader's event socket. When the loader is
//! gone but its pinned programs still enforce, this reads the ring buffer itself.

use std::{process::ExitCode, time::Duration};

use anyhow::Result;
use portguard::{
    attachment::{self, WhenNone},
    events::{EventRecord, EventSource},
    paths,
    state::loader_running,
    system,
};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
};

use super::serve::Output;

pub fn run(iface: Option<&str>, json: bool) -> Result<ExitCode> {
    system::require_root("portguard events")?;
    let interfaces = attachment::select(iface, WhenNone::Refuse)?;
    portguard::runtime::block_on(async move {
        let mut followers = tokio::task::JoinSet::new();
        for iface in interfaces {
            followers.spawn(follow(iface, json));
        }
        let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        loop {
            tokio::select! {
                done = followers.join_next() => match done {
                    Some(Ok(Err(error))) => return Err(error),
                    Some(_) => continue,
                    None => return Ok(ExitCode::SUCCESS),
                },
                _ = interrupt.recv() => return Ok(ExitCode::SUCCESS),
            }
        }
    })?
}

async fn follow(iface: String, json: bool) -> Result<()> {
    let output = Output { json };
    if loader_running(&iface) {
        let mut stream = UnixStream::connect(paths::control_socket(&iface)).await?;
        stream.write_all(b"{\"cmd\":\"events\"}\n").await?;
        eprintln!("following the events of {iface} (from its loader)");
        let mut lines = BufReader::new(stream).lines();
        while let Some(line) = lines.next_line().await? {
            if json {
                println!("{line}");
            } else if let Ok(record) = serde_json::from_str::<EventRecord>(&line) {
                output.print(&record);
            } else {
                println!("{line}");
            }
        }
        eprintln!("{iface}: the loader stopped");
        return Ok(());
    }
    eprintln!("following the events of {iface} (its loader is not running: reading the kernel directly)");
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
                source.get_mut().refill(portguard::events::Grants::defaults())?;
                if let Some(record) = source.get_mut().newly_lost()? {
                    output.print(&record);
                }
                for record in source.get_mut().sweep_expired()? {
                    output.print(&record);
                }
                if !paths::pin_dir(&iface).exists() {
                    eprintln!("{iface}: detached");
                    return Ok(());
                }
            }
        }
    }
}
