//! The loader's control socket, `/run/portguard/IFACE.sock` (root only): one JSON request
//! per connection. `events` streams events (one JSON object per line) until the client goes;
//! `reload` swaps in a policy and answers once; `audit` hands the loader a change another
//! command made (a block, an unblock, a confirmation), which it publishes as an event. The
//! loader takes the user id of each request from the socket's peer credentials.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
};

use crate::{
    events::{Actor, EventRecord, EventType},
    paths,
};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Events,
    Reload(ReloadRequest),
    Audit(AuditRequest),
}

/// A change made by another command, for the loader to publish.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditRequest {
    pub record: Box<EventRecord>,
}

impl AuditRequest {
    /// The events other commands may hand in: the loader makes the others itself.
    pub const TYPES: [EventType; 3] = [EventType::Blocked, EventType::Unblocked, EventType::Confirmed];
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ReloadRequest {
    /// A new policy file; `None`: the one running now, read again.
    #[serde(default)]
    pub policy: Option<PathBuf>,
    /// The policy's text, when it must not be read from `policy` (a rollback to a snapshot,
    /// or `portguard reload`, which reads the file in its own working directory); `policy`
    /// then names it and anchors relative blocklist paths.
    #[serde(default)]
    pub policy_text: Option<String>,
    #[serde(default)]
    pub strict: bool,
    /// Roll back unless `portguard confirm` runs within this many seconds.
    #[serde(default)]
    pub confirm_within_secs: Option<u64>,
    /// `--force`: go ahead although the policy would lock the host out (see `safety`).
    #[serde(default)]
    pub force: bool,
    /// The SSH session of whoever asked (the loader's own environment says nothing about it).
    #[serde(default)]
    pub session: Option<crate::safety::Session>,
    /// Who asked (the loader sets the user id from the socket's peer).
    #[serde(default)]
    pub actor: Option<Actor>,
    /// How it was asked (`portguard reload`, `SIGHUP`), for the audit trail.
    #[serde(default)]
    pub via: Option<String>,
    /// This reload undoes a change nobody confirmed: why. Published as `rolled_back`.
    #[serde(default)]
    pub rollback: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    pub message: String,
    /// The new policy's warnings, for the person who asked (not only the loader's output).
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// Connects to `iface`'s loader and sends `request`.
async fn send(iface: &str, request: &Request) -> Result<UnixStream> {
    let path = paths::control_socket(iface);
    let mut stream = UnixStream::connect(&path)
        .await
        .with_context(|| format!("connecting to the loader of {iface} ({})", path.display()))?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    stream.write_all(line.as_bytes()).await?;
    Ok(stream)
}

/// Asks `iface`'s loader for its events: it sends them, one JSON object per line, until it
/// stops.
pub async fn subscribe(iface: &str) -> Result<UnixStream> {
    send(iface, &Request::Events).await
}

/// Sends a request to `iface`'s loader and returns its reply.
pub async fn request(iface: &str, request: &Request) -> Result<Reply> {
    let (read, _write) = send(iface, request).await?.into_split();
    let mut lines = BufReader::new(read).lines();
    match lines.next_line().await? {
        Some(reply) => Ok(serde_json::from_str(&reply).context("a reply the loader should not send")?),
        None => bail!("the loader of {iface} closed the connection without answering"),
    }
}

/// Hands the loader of each of `interfaces` that runs an audit record of what this command
/// did (the loader prints it, sends it to the alert sinks, counts it and journals it); where
/// none runs, appends it to the journal itself. Best effort: the change is made either way, so
/// a loader that cannot be reached is only warned about.
pub fn tell_loaders(interfaces: &[String], record: &EventRecord) {
    let Ok(runtime) = crate::runtime::new() else {
        return;
    };
    for iface in interfaces {
        if !crate::state::loader_running(iface) {
            // No loader to tell: into the journal it left, so the change is on record.
            let record = EventRecord { interface: iface.clone(), ..record.clone() };
            if let Err(error) = crate::journal::append_directly(iface, &record) {
                eprintln!("warning: this is not in the journal of {iface}: {error:#}");
            }
            continue;
        }
        let request = Request::Audit(AuditRequest {
            record: Box::new(EventRecord { interface: iface.clone(), ..record.clone() }),
        });
        let told = runtime.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(3), self::request(iface, &request)).await
        });
        match told {
            Ok(Ok(reply)) if reply.ok => {}
            Ok(Ok(reply)) => {
                eprintln!("warning: the loader of {iface} did not record this: {}", reply.message);
            }
            Ok(Err(error)) => eprintln!("warning: the loader of {iface} did not record this: {error:#}"),
            Err(_) => eprintln!(
                "warning: the loader of {iface} did not answer within 3 s; this is not in its events"
            ),
        }
    }
}
