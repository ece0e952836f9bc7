//! An attachment of portguard to one interface, over its lifetime.
//!
//! This module is where the commands come for it: which interfaces a command acts on
//! (`select`).

use anyhow::{Result, bail};

use crate::{loader, netns::Netns, state};

/// Whether a command without an interface may find nothing attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenNone {
    /// Nothing attached is an error (`stats`, `events`, `reload`).
    Refuse,
    /// Nothing attached is an empty list (`block` saves for later attachments, `confirm` says
    /// that nothing waits).
    Accept,
}

/// The interfaces a command acts on, in the network namespace it runs in: `iface`, which must
/// be attached there, or every attachment there. Naming an interface that is not attached
/// also removes the run files a killed loader left for it, and says so.
pub fn select(iface: Option<&str>, when_none: WhenNone) -> Result<Vec<String>> {
    let attached = loader::attached_interfaces()?;
    match iface {
        Some(iface) if attached.iter().any(|a| a == iface) => Ok(vec![iface.to_owned()]),
        Some(iface) => {
            let left_behind = state::remove_left_behind(iface);
            let cleaned = if left_behind.is_empty() {
                String::new()
            } else {
                format!("; removed left-behind run files: {}", left_behind.join(", "))
            };
            bail!(
                "portguard is not attached to {iface} in {} (`portguard status` lists attachments; \
                 --netns NAME acts in another namespace){cleaned}",
                Netns::current()
            )
        }
        None if attached.is_empty() && when_none == WhenNone::Refuse => bail!(
            "portguard is not attached anywhere in {} (`portguard attach IFACE --policy FILE` starts it)",
            Netns::current()
        ),
        None => Ok(attached),
    }
}
