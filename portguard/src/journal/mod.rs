//! The journal: every event an attachment's loader publishes (and every change a command made
//! while no loader ran), kept as JSON lines under the state directory so `events --since` and
//! `report` can tell what happened after the fact.
//!
//! One directory per attachment (`paths::journal_dir`), root only: `events.jsonl` is written,
//! `events.NNNNNNNNNN.jsonl` are the rotated files (oldest first), `lock` serialises writers and
//! `limits.json` keeps the sizes the loader was given. `store` appends, rotates and prunes,
//! `writer` is the loader's side (a thread behind a bounded queue: publishing never waits for
//! the disk, and what does not fit is counted and said), `read` reads a time window back and
//! says where the journal cannot vouch for it (`Gap`).
//!
//! Besides events, the journal holds markers (`Marker`): when a loader opened and closed it,
//! and how many events it could not keep. They are what lets a reader tell "nothing happened"
//! from "nobody was looking".

mod read;
mod store;
mod writer;

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

pub use read::{Gap, GapKind, Reading, journals, read, read_dir};
pub use store::{Store, append_directly};
pub use writer::Journal;

use crate::{events::EventRecord, policy::Events};

/// How much the journal keeps, from the policy's `[events]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// All files together; 0: no journal.
    pub total_bytes: u64,
    /// The file being written is rotated at this size.
    pub file_bytes: u64,
}

impl Limits {
    pub fn of(events: &Events) -> Self {
        Self {
            total_bytes: u64::from(events.journal_kib) << 10,
            file_bytes: u64::from(events.journal_file_kib) << 10,
        }
    }

    pub const fn enabled(self) -> bool {
        self.total_bytes > 0
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::of(&Events::default())
    }
}

/// What a marker line records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MarkerKind {
    /// A loader started journaling.
    Opened,
    /// It stopped; `reason` says why (and whether enforcement goes on without it).
    Closed,
    /// `count` events were not journaled; `reason` says why.
    Lost,
}

/// A line about the journal itself, not an event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Marker {
    /// RFC 3339, UTC, milliseconds (as events).
    pub time: String,
    pub journal: MarkerKind,
    pub interface: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Marker {
    pub fn new(time: SystemTime, interface: &str, journal: MarkerKind) -> Self {
        Self {
            time: humantime::format_rfc3339_millis(time).to_string(),
            journal,
            interface: interface.to_owned(),
            pid: Some(std::process::id()),
            count: None,
            reason: None,
        }
    }

    pub fn json(&self) -> String {
        serde_json::to_string(self).expect("a marker serializes")
    }
}

/// One line of a journal file.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Line {
    Marker(Marker),
    Event(Box<EventRecord>),
}

impl Line {
    pub fn parse(text: &str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }

    pub fn time(&self) -> Option<SystemTime> {
        let text = match self {
            Self::Marker(marker) => &marker.time,
            Self::Event(record) => &record.time,
        };
        parse_time(text)
    }
}

/// `--since`: a duration back from now (`2h`, `30m`, `7d`) or an RFC 3339 time
/// (`2026-11-30T02:00:00Z`).
pub fn parse_since(text: &str, now: SystemTime) -> Result<SystemTime, String> {
    if let Some(time) = parse_time(text) {
        return Ok(time);
    }
    match crate::durations::parse(text, std::time::Duration::from_secs(1)) {
        Ok(ago) => Ok(now.checked_sub(ago).unwrap_or(SystemTime::UNIX_EPOCH)),
        Err(error) => Err(format!(
            "`{text}` is neither a duration back from now (2h, 30m, 7d) nor an RFC 3339 time \
             (2026-11-30T02:00:00Z): as a duration it {error}"
        )),
    }
}

/// An RFC 3339 time as events carry it.
pub fn parse_time(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventType;

    #[test]
    fn lines_are_told_apart_and_times_read_back() {
        let time = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_800_000_000_123);
        let mut marker = Marker::new(time, "eth0", MarkerKind::Lost);
        marker.count = Some(7);
        let Some(Line::Marker(back)) = Line::parse(&marker.json()) else { panic!("{}", marker.json()) };
        assert_eq!(back, marker);
        let record = EventRecord::new(time, "eth0", EventType::ScanDetected);
        let line = Line::parse(&record.json()).expect("an event line");
        assert!(matches!(&line, Line::Event(event) if **event == record));
        assert_eq!(line.time(), Some(time));
        assert!(Line::parse("{\"half\":").is_none());
    }

    #[test]
    fn since_is_a_duration_back_or_a_time() {
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        assert_eq!(parse_since("2h", now), Ok(now - std::time::Duration::from_secs(7200)));
        assert_eq!(parse_since("2027-01-15T06:00:00Z", now), Ok(now - std::time::Duration::from_secs(7200)));
        let error = parse_since("yesterday", now).unwrap_err();
        assert!(error.starts_with("`yesterday` is neither a duration"), "{error}");
    }
}
