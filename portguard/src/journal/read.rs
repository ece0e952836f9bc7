//! Reading a journal back for a time window: its events, and where it cannot vouch for the
//! window (`Gap`): before its oldest line, while no loader journaled (stopped, killed, turned
//! off), and events known lost (the journal's queue or disk, the kernel's ring buffer).

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::Path,
    time::SystemTime,
};

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::{Line, MarkerKind, Store, store};
use crate::{events::EventRecord, events::EventType, output::rfc3339, paths};

/// What kind of hole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GapKind {
    /// The journal holds nothing before `to`.
    Begins,
    /// No loader journaled from `from` to `to` (`to` absent: until now).
    Unwatched,
    /// `count` events around `from` are not in the journal.
    Lost,
}

/// A part of the window the journal cannot vouch for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Gap {
    pub kind: GapKind,
    /// RFC 3339, UTC.
    pub from: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    pub reason: String,
    #[serde(skip)]
    pub start: SystemTime,
    /// `None`: until now.
    #[serde(skip)]
    pub end: Option<SystemTime>,
}

impl Gap {
    fn new(kind: GapKind, start: SystemTime, end: Option<SystemTime>, reason: String) -> Self {
        Self { kind, from: rfc3339(start), to: end.map(rfc3339), count: None, reason, start, end }
    }

    /// One line for people.
    pub fn describe(&self) -> String {
        let reason = crate::printable(&self.reason).into_owned();
        match self.kind {
            GapKind::Begins => {
                format!("nothing journaled before {}: {reason}", self.to.as_deref().unwrap_or("?"))
            }
            GapKind::Unwatched => {
                format!("{} to {}: not journaled: {reason}", self.from, self.to.as_deref().unwrap_or("now"))
            }
            GapKind::Lost => format!(
                "{}: {} not journaled: {reason}",
                self.from,
                crate::output::count(self.count.unwrap_or(0), "event", "events")
            ),
        }
    }
}

/// A journal's events in a window, and its gaps there.
#[derive(Debug, Default)]
pub struct Reading {
    pub interface: String,
    pub records: Vec<EventRecord>,
    pub gaps: Vec<Gap>,
    /// The oldest line the journal holds.
    pub oldest: Option<SystemTime>,
    /// Lines that are neither an event nor a marker (a line cut short by a crash).
    pub unreadable_lines: u64,
}

/// The interfaces of this namespace that have a journal.
pub fn journals() -> Result<Vec<String>> {
    let root = paths::journal_root();
    let entries = match fs::read_dir(&root) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error).with_context(|| format!("reading {}", root.display())),
    };
    let mut found: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|entry| entry.path().is_dir())
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    found.sort();
    Ok(found)
}

/// The journal of `iface` in this namespace, from `since` to `until`.
pub fn read(iface: &str, since: SystemTime, until: SystemTime) -> Result<Reading> {
    let dir = paths::journal_dir(iface);
    if !dir.is_dir() {
        anyhow::bail!(
            "{iface} has no journal in {} (its loader keeps one in {} from the first attach)",
            crate::netns::Netns::current(),
            dir.display()
        );
    }
    read_dir(&dir, iface, since, until, crate::state::loader_running(iface))
}

/// The journal in `dir` from `since` to `until`; `running`: its loader runs now (an open
/// journal vouches for the time up to now).
pub fn read_dir(
    dir: &Path,
    iface: &str,
    since: SystemTime,
    until: SystemTime,
    running: bool,
) -> Result<Reading> {
    let mut reading = Reading { interface: iface.to_owned(), ..Reading::default() };
    let mut gaps = Vec::new();
    // Whether a loader journals (an `opened` not yet `closed`), and the last line's time.
    let mut open = false;
    let mut closed: Option<(SystemTime, String)> = None;
    let mut last: Option<SystemTime> = None;
    for path in store::files(dir).with_context(|| format!("reading {}", dir.display()))? {
        let file = match fs::File::open(&path) {
            Ok(file) => file,
            // Rotated away while we read: its lines are older than the next file's.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
        };
        for text in BufReader::new(file).lines() {
            let text = text.with_context(|| format!("reading {}", path.display()))?;
            let parsed = Line::parse(&text).and_then(|line| line.time().map(|time| (line, time)));
            let Some((line, time)) = parsed else {
                reading.unreadable_lines += 1;
                continue;
            };
            reading.oldest.get_or_insert(time);
            let from_a_command = matches!(
                &line,
                Line::Event(record) if matches!(record.event, EventType::Blocked | EventType::Unblocked | EventType::Confirmed)
            );
            match line {
                Line::Marker(marker) => match marker.journal {
                    MarkerKind::Opened => {
                        if open {
                            let from = last.unwrap_or(time);
                            let why = "the loader stopped without closing the journal (killed, or the host went down)";
                            gaps.push(Gap::new(GapKind::Unwatched, from, Some(time), why.into()));
                        } else if let Some((from, why)) = closed.take() {
                            gaps.push(Gap::new(GapKind::Unwatched, from, Some(time), why));
                        }
                        open = true;
                    }
                    MarkerKind::Closed => {
                        open = false;
                        closed = Some((time, marker.reason.unwrap_or_else(|| "the loader stopped".into())));
                    }
                    MarkerKind::Lost => {
                        let mut gap = Gap::new(
                            GapKind::Lost,
                            time,
                            None,
                            marker.reason.unwrap_or_else(|| "unknown".into()),
                        );
                        gap.count = marker.count;
                        gaps.push(gap);
                    }
                },
                Line::Event(record) => {
                    if record.event == EventType::EventsLost {
                        let mut gap = Gap::new(
                            GapKind::Lost,
                            time,
                            None,
                            "the kernel's event ring buffer was full ([events] ring_buffer_kib)".into(),
                        );
                        gap.count = record.count;
                        gaps.push(gap);
                    }
                    if time >= since && time <= until {
                        reading.records.push(*record);
                    }
                }
            }
            // What a command appended while no loader ran says nothing about the loader: a
            // gap after a crash starts at the loader's own last line.
            if !from_a_command {
                last = Some(last.map_or(time, |l| l.max(time)));
            }
        }
    }
    let disabled = Store::existing(dir.to_path_buf()).is_some_and(|store| !store.limits().enabled());
    match (open, closed) {
        (true, _) if running => {}
        (true, _) => gaps.push(Gap::new(
            GapKind::Unwatched,
            last.unwrap_or(since),
            None,
            "its loader is not running and did not close the journal (killed, or the host went down)".into(),
        )),
        (false, Some((from, why))) => {
            let since_then = if running && disabled {
                "; the journal is off (journal_kib = 0)"
            } else {
                "; no loader has journaled since"
            };
            gaps.push(Gap::new(GapKind::Unwatched, from, None, format!("{why}{since_then}")));
        }
        (false, None) => {}
    }
    match reading.oldest {
        Some(oldest) if oldest > since => gaps.insert(
            0,
            Gap::new(
                GapKind::Begins,
                since,
                Some(oldest),
                "the journal starts there (the first attach, or older files were rotated away to stay \
                 within [events] journal_kib)"
                    .into(),
            ),
        ),
        Some(_) => {}
        None => gaps.push(Gap::new(GapKind::Unwatched, since, None, "the journal is empty".into())),
    }
    reading.gaps = gaps
        .into_iter()
        .filter(|gap| {
            // A loss is a moment; an open-ended gap lasts until now.
            let end = gap.end.unwrap_or(if gap.kind == GapKind::Lost { gap.start } else { until });
            end >= since && gap.start <= until
        })
        .collect();
    reading.records.sort_by(|a, b| a.time.cmp(&b.time));
    Ok(reading)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::journal::{Limits, Marker};

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn marker(secs: u64, kind: MarkerKind, reason: &str) -> String {
        let mut marker = Marker::new(at(secs), "eth0", kind);
        marker.reason = Some(reason.into());
        marker.json()
    }

    fn event(secs: u64, kind: EventType) -> String {
        EventRecord::new(at(secs), "eth0", kind).json()
    }

    fn journal(lines: &[String]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path().to_path_buf(), Limits::default()).unwrap();
        store.append(&lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
        dir
    }

    #[test]
    fn a_watched_window_has_no_gaps() {
        let dir = journal(&[
            marker(0, MarkerKind::Opened, "the loader started"),
            event(10, EventType::ScanDetected),
            event(20, EventType::AutoBlocked),
        ]);
        let reading = read_dir(dir.path(), "eth0", at(5), at(100), true).unwrap();
        assert_eq!(reading.records.len(), 2);
        assert_eq!(reading.gaps, vec![]);
        // Not running and never closed: from the last line on, nobody was looking.
        let reading = read_dir(dir.path(), "eth0", at(5), at(100), false).unwrap();
        assert_eq!(reading.gaps.len(), 1, "{:?}", reading.gaps);
        assert_eq!(reading.gaps[0].kind, GapKind::Unwatched);
        assert_eq!(reading.gaps[0].start, at(20));
        assert!(
            reading.gaps[0].describe().contains("to now: not journaled"),
            "{}",
            reading.gaps[0].describe()
        );
    }

    #[test]
    fn restarts_crashes_losses_and_the_start_are_gaps() {
        let mut lost = Marker::new(at(45), "eth0", MarkerKind::Lost);
        lost.count = Some(12);
        lost.reason = Some("the journal's queue was full".into());
        let mut ring = EventRecord::new(at(46), "eth0", EventType::EventsLost);
        ring.count = Some(3);
        let dir = journal(&[
            marker(0, MarkerKind::Opened, "the loader started"),
            event(10, EventType::Drop),
            marker(20, MarkerKind::Closed, "the loader detached (SIGTERM)"),
            marker(30, MarkerKind::Opened, "the loader started"),
            event(40, EventType::Drop),
            lost.json(),
            ring.json(),
            // Killed: no `closed` before the next start.
            marker(60, MarkerKind::Opened, "the loader started"),
            event(70, EventType::TrapHit),
            "{\"time\":\"2027-01-15T08:0".into(),
        ]);
        let reading = read_dir(dir.path(), "eth0", at(0) - Duration::from_secs(60), at(100), true).unwrap();
        let kinds: Vec<(GapKind, SystemTime, Option<SystemTime>, Option<u64>)> =
            reading.gaps.iter().map(|g| (g.kind, g.start, g.end, g.count)).collect();
        assert_eq!(
            kinds,
            vec![
                (GapKind::Begins, at(0) - Duration::from_secs(60), Some(at(0)), None),
                (GapKind::Unwatched, at(20), Some(at(30)), None),
                (GapKind::Lost, at(45), None, Some(12)),
                (GapKind::Lost, at(46), None, Some(3)),
                (GapKind::Unwatched, at(46), Some(at(60)), None),
            ]
        );
        assert_eq!(reading.unreadable_lines, 1);
        assert_eq!(reading.records.len(), 4);
        assert!(reading.gaps[1].reason.contains("SIGTERM"));
        assert!(reading.gaps[4].reason.contains("without closing"));
        // A window after the restart sees none of the earlier gaps.
        let later = read_dir(dir.path(), "eth0", at(65), at(100), true).unwrap();
        assert_eq!(later.gaps, vec![]);
        assert_eq!(later.records.len(), 1);
    }
}
