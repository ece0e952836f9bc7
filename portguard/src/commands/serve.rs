//! What a running loader does in the foreground: print events as they happen, report lost
//! events, sweep expired automatic blocks, and stream events to `portguard events` clients.

use std::{os::unix::fs::PermissionsExt as _, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use log::{info, warn};
use portguard::{
    events::{EventRecord, EventSource},
    paths,
};
use tokio::{
    io::AsyncWriteExt as _,
    net::UnixListener,
    signal::unix::{SignalKind, signal},
    sync::broadcast,
};

/// Lines kept for slow `events` clients before they are told they missed some.
const CLIENT_BACKLOG: usize = 4096;

pub struct Output {
    pub json: bool,
}

impl Output {
    pub fn print(&self, record: &EventRecord) {
        if self.json {
            println!("{}", record.json());
        } else {
            println!("{}", record.human());
        }
    }
}

/// Runs until SIGINT or SIGTERM.
pub fn run(iface: &str, source: EventSource, output: Output) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(iface, source, output))
}

async fn serve(iface: &str, source: EventSource, output: Output) -> Result<()> {
    let mut source = source.watch()?;
    let (lines, _) = broadcast::channel::<Arc<str>>(CLIENT_BACKLOG);
    let socket_path = paths::event_socket(iface);
    let _ = std::fs::remove_file(&socket_path);
    let listener = UnixListener::bind(&socket_path)
        .with_context(|| format!("listening on {}", socket_path.display()))?;
    std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(0o600))?;
    let clients = tokio::spawn(accept_clients(listener, lines.clone()));

    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let publish = |record: &EventRecord| {
        output.print(record);
        let _ = lines.send(Arc::from(record.json()));
    };
    loop {
        tokio::select! {
            ready = source.readable_mut() => {
                let mut guard = ready?;
                for record in guard.get_inner_mut().drain() {
                    publish(&record);
                }
                guard.clear_ready();
            }
            _ = tick.tick() => {
                let inner = source.get_mut();
                match inner.newly_lost() {
                    Ok(Some(record)) => publish(&record),
                    Ok(None) => {}
                    Err(error) => warn!("reading the lost-event counter: {error:#}"),
                }
                match inner.sweep_expired() {
                    Ok(records) => records.iter().for_each(&publish),
                    Err(error) => warn!("sweeping expired blocks: {error:#}"),
                }
            }
            _ = interrupt.recv() => { info!("SIGINT: detaching"); break; }
            _ = terminate.recv() => { info!("SIGTERM: detaching"); break; }
        }
    }
    clients.abort();
    let _ = std::fs::remove_file(&socket_path);
    Ok(())
}

async fn accept_clients(listener: UnixListener, lines: broadcast::Sender<Arc<str>>) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let mut receiver = lines.subscribe();
        tokio::spawn(async move {
            loop {
                let line = match receiver.recv().await {
                    Ok(line) => format!("{line}\n"),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        format!("{{\"event\":\"client_lagged\",\"count\":{missed}}}\n")
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                if stream.write_all(line.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}
