//! The loader's side of its journal: `record` hands a line to a thread through a bounded queue
//! and never waits; a line that finds the queue full (the disk fell behind), or a batch the
//! disk refused, is counted and the count written as a `lost` marker once writing works again.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    },
    thread::JoinHandle,
    time::SystemTime,
};

use anyhow::{Context as _, Result};
use log::{info, warn};

use super::{Limits, Marker, MarkerKind, Store};
use crate::{events::EventRecord, lock, paths};

/// Lines waiting for the disk at most; the event path never waits for more room.
const QUEUE: usize = 16_384;
/// Lines written in one append (one lock, one write).
const BATCH: usize = 1024;

enum Message {
    Line(String),
    Close(String),
}

/// An open journal, written by a thread of its own.
pub struct Journal {
    queue: Option<SyncSender<Message>>,
    /// Lines the queue had no room for since the writer last said so.
    overflowed: Arc<AtomicU64>,
    /// Every line not journaled since the loader started (queue full or disk error).
    lost_total: Arc<AtomicU64>,
    limits: Arc<Mutex<Limits>>,
    thread: Option<JoinHandle<()>>,
}

impl Journal {
    /// Opens the journal of `iface` (creating it) and starts its writer, which first records
    /// that this loader journals from now on.
    pub fn open(iface: &str, limits: Limits) -> Result<Self> {
        Self::open_in(paths::journal_dir(iface), iface, limits)
    }

    fn open_in(dir: std::path::PathBuf, iface: &str, limits: Limits) -> Result<Self> {
        let store = Store::create(dir, limits)?;
        let (queue, lines) = sync_channel(QUEUE);
        let overflowed = Arc::new(AtomicU64::new(0));
        let lost_total = Arc::new(AtomicU64::new(0));
        let shared_limits = Arc::new(Mutex::new(limits));
        let writer = Writer {
            store,
            iface: iface.to_owned(),
            overflowed: overflowed.clone(),
            lost_total: lost_total.clone(),
            limits: shared_limits.clone(),
            failing: None,
            enabled: limits.enabled(),
        };
        let thread = std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || writer.run(&lines))
            .context("starting the journal writer")?;
        let journal =
            Self { queue: Some(queue), overflowed, lost_total, limits: shared_limits, thread: Some(thread) };
        if limits.enabled() {
            let mut opened = Marker::new(SystemTime::now(), iface, MarkerKind::Opened);
            opened.reason = Some("the loader started".into());
            journal.push(opened.json());
        }
        Ok(journal)
    }

    /// Queues one event; never waits.
    pub fn record(&self, record: &EventRecord) {
        self.push(record.json());
    }

    fn push(&self, line: String) {
        let Some(queue) = &self.queue else { return };
        match queue.try_send(Message::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.overflowed.fetch_add(1, Ordering::Relaxed);
                self.lost_total.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The policy's new limits (a reload), taken at the next write.
    pub fn set_limits(&self, limits: Limits) {
        *lock(&self.limits) = limits;
    }

    /// Events not journaled since the loader started.
    pub fn lost(&self) -> u64 {
        self.lost_total.load(Ordering::Relaxed)
    }

    /// Writes what is queued and a `closed` marker saying `reason`, then stops the writer.
    pub fn close(&mut self, reason: &str) {
        if let Some(queue) = self.queue.take() {
            // Waits for room: the loader is stopping, and the writer drains the queue.
            let _ = queue.send(Message::Close(reason.to_owned()));
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.close("the loader stopped");
    }
}

struct Writer {
    store: Store,
    iface: String,
    overflowed: Arc<AtomicU64>,
    lost_total: Arc<AtomicU64>,
    limits: Arc<Mutex<Limits>>,
    /// Lines the disk refused since it last worked, and why.
    failing: Option<(u64, String)>,
    enabled: bool,
}

impl Writer {
    fn run(mut self, lines: &Receiver<Message>) {
        while let Ok(first) = lines.recv() {
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match lines.try_recv() {
                    Ok(message) => batch.push(message),
                    Err(_) => break,
                }
            }
            if self.write(batch) {
                return;
            }
        }
    }

    /// Writes one batch; `true` once the journal is closed.
    fn write(&mut self, batch: Vec<Message>) -> bool {
        let mut text = self.take_limits();
        let overflowed = self.overflowed.swap(0, Ordering::Relaxed);
        if overflowed > 0 {
            text.push_str(
                &self.lost_line(overflowed, "the journal's queue was full: the disk did not keep up"),
            );
        }
        if let Some((count, why)) = &self.failing {
            text.push_str(&self.lost_line(*count, &format!("the journal could not be written: {why}")));
        }
        let mut events = 0;
        let mut closing = false;
        for message in batch {
            match message {
                Message::Line(line) => {
                    events += 1;
                    text.push_str(&line);
                    text.push('\n');
                }
                Message::Close(reason) => {
                    let mut closed = Marker::new(SystemTime::now(), &self.iface, MarkerKind::Closed);
                    closed.reason = Some(reason);
                    text.push_str(&closed.json());
                    text.push('\n');
                    closing = true;
                }
            }
        }
        if !self.enabled || text.is_empty() {
            return closing;
        }
        match self.store.append(&text) {
            Ok(()) => {
                if self.failing.take().is_some() {
                    info!("the journal in {} is written again", self.store.dir().display());
                }
            }
            Err(error) => {
                // Counted in `lost_total` as they come; the queue's overflow, as it came.
                self.lost_total.fetch_add(events, Ordering::Relaxed);
                let events = events + overflowed;
                match &mut self.failing {
                    Some((count, _)) => *count += events,
                    None => {
                        warn!(
                            "writing the journal in {}: {error}; events are counted as lost until it works again",
                            self.store.dir().display()
                        );
                        self.failing = Some((events, error.to_string()));
                    }
                }
            }
        }
        closing
    }

    /// Takes new limits from a reload: the lines that say the journal was turned off or on.
    fn take_limits(&mut self) -> String {
        let wanted = *lock(&self.limits);
        if wanted == self.store.limits() {
            return String::new();
        }
        if let Err(error) = self.store.set_limits(wanted) {
            warn!("recording the journal's new limits: {error:#}");
        }
        let mut text = String::new();
        if self.enabled != wanted.enabled() {
            let (kind, reason) = if wanted.enabled() {
                (MarkerKind::Opened, "a reload turned the journal on")
            } else {
                (MarkerKind::Closed, "a reload turned the journal off (journal_kib = 0)")
            };
            let mut marker = Marker::new(SystemTime::now(), &self.iface, kind);
            marker.reason = Some(reason.into());
            if self.enabled {
                // The last line written before it goes off.
                let _ = self.store.append(&format!("{}\n", marker.json()));
            } else {
                text = format!("{}\n", marker.json());
            }
            self.enabled = wanted.enabled();
        }
        text
    }

    fn lost_line(&self, count: u64, why: &str) -> String {
        let mut lost = Marker::new(SystemTime::now(), &self.iface, MarkerKind::Lost);
        lost.count = Some(count);
        lost.reason = Some(why.to_owned());
        format!("{}\n", lost.json())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventType;
    use crate::journal::{Line, read_dir};

    fn lines(dir: &std::path::Path) -> Vec<Line> {
        let text = std::fs::read_to_string(dir.join("events.jsonl")).unwrap();
        text.lines().map(|line| Line::parse(line).expect(line)).collect()
    }

    fn kinds(lines: &[Line]) -> Vec<String> {
        lines
            .iter()
            .map(|line| match line {
                Line::Marker(marker) => format!("{:?}", marker.journal),
                Line::Event(record) => record.event.to_string(),
            })
            .collect()
    }

    #[test]
    fn a_loader_session_is_opened_recorded_and_closed() {
        let dir = tempfile::tempdir().unwrap();
        let journal_dir = dir.path().join("eth0");
        let mut journal = Journal::open_in(journal_dir.clone(), "eth0", Limits::default()).unwrap();
        for event in [EventType::ScanDetected, EventType::AutoBlocked, EventType::Blocked] {
            journal.record(&EventRecord::new(SystemTime::now(), "eth0", event));
        }
        journal.close("the loader detached");
        let lines = lines(&journal_dir);
        assert_eq!(kinds(&lines), ["Opened", "scan_detected", "auto_blocked", "blocked", "Closed"]);
        assert_eq!(journal.lost(), 0);
        // Closed and no loader since: the time after it is a gap, and says why.
        let reading =
            read_dir(&journal_dir, "eth0", SystemTime::UNIX_EPOCH, SystemTime::now(), false).unwrap();
        assert_eq!(reading.records.len(), 3);
        let last = reading.gaps.last().unwrap();
        assert!(last.reason.starts_with("the loader detached; no loader has journaled since"), "{last:?}");
    }

    #[test]
    fn what_the_disk_refused_is_counted_and_said_once_it_works_again() {
        let dir = tempfile::tempdir().unwrap();
        let journal_dir = dir.path().join("eth0");
        let store = Store::create(journal_dir.clone(), Limits::default()).unwrap();
        let mut writer = Writer {
            store,
            iface: "eth0".into(),
            overflowed: Arc::new(AtomicU64::new(2)),
            lost_total: Arc::new(AtomicU64::new(2)),
            limits: Arc::new(Mutex::new(Limits::default())),
            failing: None,
            enabled: true,
        };
        let line = || Message::Line(EventRecord::new(SystemTime::now(), "eth0", EventType::Drop).json());
        // The directory goes away: the batch and the queue's overflow are lost, and counted.
        std::fs::remove_dir_all(&journal_dir).unwrap();
        assert!(!writer.write(vec![line(), line(), line()]));
        assert_eq!(writer.lost_total.load(Ordering::Relaxed), 5);
        std::fs::create_dir(&journal_dir).unwrap();
        assert!(writer.write(vec![line(), Message::Close("stopping".into())]));
        let lines = lines(&journal_dir);
        assert_eq!(kinds(&lines), ["Lost", "drop", "Closed"]);
        let Line::Marker(lost) = &lines[0] else { unreachable!() };
        assert_eq!(lost.count, Some(5));
        assert!(
            lost.reason.as_deref().unwrap().starts_with("the journal could not be written: "),
            "{lost:?}"
        );
        assert!(writer.failing.is_none());
    }
}
