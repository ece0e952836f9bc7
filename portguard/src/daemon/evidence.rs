//! The loader's side of `[evidence]`: the evidence ring buffer beside the event ring buffer,
//! and the files `crate::evidence` writes from them.

use log::warn;
use tokio::io::unix::{AsyncFd, AsyncFdReadyMutGuard};

use crate::{
    events::{EventRecord, EventSource},
    evidence::{Evidence, EvidenceSource},
    policy::Policy,
};

/// The evidence files of `iface` and the ring buffer they are written from. Either may be
/// missing (said once): evidence is off, the directory cannot be made, or the attachment was
/// made by a portguard without evidence (its pins have no `PG_EVIDENCE`).
pub fn open(iface: &str, policy: &Policy) -> (Option<Evidence>, Option<AsyncFd<EvidenceSource>>) {
    let source = match EvidenceSource::from_pins(iface).and_then(EvidenceSource::watch) {
        Ok(source) => Some(source),
        Err(error) => {
            warn!("no evidence is kept for {iface}: {error:#}");
            None
        }
    };
    let evidence = Evidence::create(iface, &policy.evidence).unwrap_or_else(|error| {
        warn!("no evidence is kept for {iface}: {error:#}");
        None
    });
    (evidence, source)
}

/// A reload's `[evidence]`: new bounds for the files, or none kept any more, or a start.
pub fn reconfigure(iface: &str, policy: &Policy, evidence: &mut Option<Evidence>) {
    match evidence {
        Some(kept) if policy.evidence.enabled() => kept.set_settings(&policy.evidence),
        _ => *evidence = open(iface, policy).0,
    }
}

/// The events waiting in `source`, each automatic block's with its evidence file made and named.
pub fn name_files(source: &mut EventSource, mut evidence: Option<&mut Evidence>) -> Vec<EventRecord> {
    let mut records = Vec::new();
    for (event, mut record) in source.drain_with_kernel_events() {
        if let Some(evidence) = evidence.as_deref_mut() {
            evidence.on_event(&event, &mut record);
        }
        records.push(record);
    }
    records
}

/// Readable when evidence waits; never, without an evidence ring buffer.
pub async fn readable(
    source: Option<&mut AsyncFd<EvidenceSource>>,
) -> std::io::Result<AsyncFdReadyMutGuard<'_, EvidenceSource>> {
    match source {
        Some(source) => source.readable_mut().await,
        None => std::future::pending().await,
    }
}
