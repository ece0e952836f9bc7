//! The loader's control socket, `/run/portguard/IFACE.sock` (root only): one JSON request
//! per connection. `events` streams events (one JSON object per line) until the client goes;
//! `reload` swaps in a policy and answers once.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
};

use crate::paths;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Events,
    Reload(ReloadRequest),
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
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    pub message: String,
    /// The new policy's warnings, for the person who asked (not only the loader's output).
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// Sends a request to `iface`'s loader and returns its reply.
pub async fn request(iface: &str, request: &Request) -> Result<Reply> {
    let path = paths::control_socket(iface);
    let stream = UnixStream::connect(&path)
        .await
        .with_context(|| format!("connecting to the loader of {iface} ({})", path.display()))?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    write.write_all(line.as_bytes()).await?;
    let mut lines = BufReader::new(read).lines();
    match lines.next_line().await? {
        Some(reply) => Ok(serde_json::from_str(&reply).context("a reply the loader should not send")?),
        None => bail!("the loader of {iface} closed the connection without answering"),
    }
}
