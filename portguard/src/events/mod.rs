//! Events: what the kernel reports (drops, scans, blocks), what the loader says about its
//! attachment, and the audit trail of what people changed. `record` is the typed event and its
//! two renderings (one human line, one JSON object: the schema the README documents),
//! `decode` turns the kernel's bytes into one, `source` reads an attachment's ring buffer.

mod decode;
mod record;
mod source;

pub(crate) use decode::{BLOCK_CAUSES, block_scan_ports, cause_name, is_limit_cause, network_prefix};
pub use decode::{Clock, decode, ip_of, protocol_name, tcp_flags};
pub use record::{Actor, EventRecord, EventType};
pub use source::EventSource;

pub use crate::budget::{Grants, refill_budget, suppressed};
