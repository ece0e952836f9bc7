//! Blocklist feeds (`[blocklist] urls`): published lists the loader fetches, keeps current and
//! enforces with the policy's blocklist. `fetch` asks a feed whether it changed (conditional
//! requests, bounded in time and size) and reads its body exactly as a local blocklist file
//! (`policy::sources::parse_source_list`, one parser for both); `follow` is the loader's task
//! that refreshes every feed and has a changed one switched in as a new generation. This file
//! holds the saved copies: the last good copy of each feed, under the state directory, is what
//! every generation enforces (so a loader restarted without network enforces it too).

pub mod fetch;
pub mod follow;

use std::{fs, path::PathBuf};

use anyhow::{Context as _, Result};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use self::follow::{FeedStatus, Follower};
use crate::{
    files, paths,
    policy::{BlocklistSource, Policy, sources::read_source_file},
    state::write_atomically,
};

/// What a feed's server said about the copy it sent, to ask next time whether it changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validators {
    /// `ETag`, sent back as `If-None-Match`.
    pub etag: Option<String>,
    /// `Last-Modified`, sent back as `If-Modified-Since`.
    pub last_modified: Option<String>,
}

/// What is saved next to a copy (`ID.json`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CopyInfo {
    pub url: String,
    pub validators: Validators,
    /// Unix seconds when this copy was fetched.
    pub fetched_at: u64,
    pub entries: usize,
}

/// A feed's list as fetched and parsed: what a new generation enforces for it, and what is
/// saved once that generation runs.
#[derive(Clone, Debug)]
pub struct FeedList {
    pub info: CopyInfo,
    /// The body as served (it parsed without a bad line).
    pub body: Vec<u8>,
    pub entries: Vec<IpNet>,
}

/// The two files of the copy of `url` for `iface`: the list and what is known of it.
fn copy_paths(iface: &str, url: &str) -> (PathBuf, PathBuf) {
    let digest = ring::digest::digest(&ring::digest::SHA256, url.as_bytes());
    let id: String = digest.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
    let dir = paths::feed_copies(iface);
    (dir.join(format!("{id}.list")), dir.join(format!("{id}.json")))
}

impl FeedList {
    /// Saves it as the last good copy: the list first, then its validators (a copy with the
    /// validators of an older one is fetched again in full, never the other way round).
    pub fn save(&self, iface: &str) -> Result<()> {
        let (list, info) = copy_paths(iface, &self.info.url);
        write_atomically(&list, &self.body)?;
        write_atomically(&info, &serde_json::to_vec_pretty(&self.info)?)
    }
}

/// What is known of the saved copy of `url` for `iface`; `None`: there is none.
pub fn saved_info(iface: &str, url: &str) -> Option<CopyInfo> {
    let (_, info) = copy_paths(iface, url);
    let text = files::read_text_capped(&info, files::STATE_FILE_MAX).ok()?;
    serde_json::from_str::<CopyInfo>(&text).ok().filter(|info| info.url == url)
}

/// The entries of the saved copy of `url`; none without a copy. Read with the local files' reader.
pub fn saved_entries(iface: &str, url: &str) -> Result<Vec<IpNet>> {
    let (list, _) = copy_paths(iface, url);
    match read_source_file(&list) {
        Ok(parsed) => Ok(parsed.entries),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(error) => Err(error).with_context(|| format!("reading the saved copy {}", list.display())),
    }
}

/// Adds the feeds' entries to `policy`'s blocklist, for the generation the loader of `iface`
/// builds: `fresh`'s list for its feed, the saved copy for every other one (none for a feed
/// never fetched yet). Each feed becomes a `blocklist_sources` row of its own.
pub fn add_to(policy: &mut Policy, iface: &str, fresh: Option<&FeedList>) -> Result<()> {
    let Some(feeds) = policy.feeds.clone() else { return Ok(()) };
    for url in &feeds.urls {
        let entries = match fresh.filter(|list| list.info.url == *url) {
            Some(list) => list.entries.clone(),
            None => saved_entries(iface, url)?,
        };
        policy.blocklist_sources.push(BlocklistSource {
            file: None,
            feed: Some(url.clone()),
            entries: entries.len(),
            bad_lines: 0,
        });
        policy.blocklist.extend(entries);
    }
    Ok(())
}

/// Removes the copies of feeds `policy` no longer follows (all of them without `[blocklist] urls`).
pub fn forget_others(iface: &str, policy: &Policy) {
    let keep: Vec<PathBuf> = policy
        .feeds
        .iter()
        .flat_map(|feeds| &feeds.urls)
        .flat_map(|url| {
            let (list, info) = copy_paths(iface, url);
            [list, info]
        })
        .collect();
    let dir = paths::feed_copies(iface);
    let Ok(entries) = fs::read_dir(&dir) else { return };
    for entry in entries.flatten() {
        if !keep.contains(&entry.path()) {
            let _ = fs::remove_file(entry.path());
        }
    }
    let _ = fs::remove_dir(&dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_url_has_its_own_copy() {
        let (a, a_info) = copy_paths("eth0", "https://www.spamhaus.org/drop/drop.txt");
        let (b, _) = copy_paths("eth0", "https://www.spamhaus.org/drop/edrop.txt");
        assert_ne!(a, b);
        assert_eq!(a.with_extension("json"), a_info);
        assert!(a.starts_with(paths::feed_copies("eth0")), "{}", a.display());
    }
}
