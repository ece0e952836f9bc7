//! The loader's side of its control socket (`control` has the protocol and the client side):
//! streams events to `events` clients, hands reload requests to the event loop, and takes in
//! the audit records other commands send.

use std::{sync::Arc, time::SystemTime};

use anyhow::Result;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{broadcast, mpsc, oneshot},
};

use super::reload::ReloadCall;
use crate::{
    control::{AuditRequest, Reply, Request},
    events::{Actor, EventRecord, EventType},
};

/// Where control socket clients reach the loader.
#[derive(Clone)]
pub(super) struct Channels {
    pub iface: String,
    /// Every event, as a JSON line, for `events` clients.
    pub lines: broadcast::Sender<Arc<str>>,
    pub reloads: mpsc::Sender<ReloadCall>,
    /// Audit records other commands hand in, to publish.
    pub audits: mpsc::Sender<EventRecord>,
}

pub(super) async fn accept_clients(listener: UnixListener, channels: Channels) {
    while let Ok((stream, _)) = listener.accept().await {
        let channels = channels.clone();
        tokio::spawn(async move {
            let _ = client(stream, channels).await;
        });
    }
}

async fn client(stream: UnixStream, channels: Channels) -> Result<()> {
    // Who is asking, as the kernel tells it (not as the request says).
    let peer_uid = stream.peer_cred().ok().map(|cred| cred.uid());
    let (read, mut write) = stream.into_split();
    let mut input = BufReader::new(read).lines();
    let Some(first) = input.next_line().await? else { return Ok(()) };
    let reply = match serde_json::from_str::<Request>(&first) {
        Ok(Request::Events) => {
            let mut receiver = channels.lines.subscribe();
            loop {
                let line = match receiver.recv().await {
                    Ok(line) => format!("{line}\n"),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        let mut lagged =
                            EventRecord::new(SystemTime::now(), &channels.iface, EventType::ClientLagged);
                        lagged.count = Some(missed);
                        format!("{}\n", lagged.json())
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                write.write_all(line.as_bytes()).await?;
            }
            return Ok(());
        }
        Ok(Request::Reload(mut request)) => {
            request.actor = Some(vouched(request.actor.take(), peer_uid));
            let (reply_tx, reply_rx) = oneshot::channel();
            channels.reloads.send((request, reply_tx)).await?;
            reply_rx.await?
        }
        Ok(Request::Audit(AuditRequest { mut record })) if AuditRequest::TYPES.contains(&record.event) => {
            Actor { user: record.user.take(), uid: record.uid }.with_uid_of(peer_uid).stamp(&mut record);
            record.host = crate::system::host_name();
            record.interface.clone_from(&channels.iface);
            channels.audits.send(*record).await?;
            Reply { ok: true, message: "recorded".into(), warnings: Vec::new() }
        }
        Ok(Request::Audit(AuditRequest { record })) => Reply {
            ok: false,
            message: format!("{} events are the loader's own to record", record.event),
            warnings: Vec::new(),
        },
        Err(error) => Reply { ok: false, message: format!("bad request: {error}"), warnings: Vec::new() },
    };
    write.write_all(format!("{}\n", serde_json::to_string(&reply)?).as_bytes()).await?;
    Ok(())
}

/// The actor a request names, with the user id its socket peer has.
fn vouched(actor: Option<Actor>, peer_uid: Option<u32>) -> Actor {
    actor.unwrap_or_default().with_uid_of(peer_uid)
}
