//! What the loader checks every second besides its events: that its interface is still
//! protected (attaching again when it comes back), and that expired manual blocks are gone.

use std::time::SystemTime;

use log::warn;

use super::Loader;
use crate::{
    blocks::BlockStore,
    events::{EventRecord, EventType},
    links::Inspection,
    loader,
    state::now_unix,
};

/// Notices that the attachment stopped protecting its interface (deleted, or deleted and
/// created again under the same name, which container runtimes and hot-plug do; a pin removed
/// by hand) and attaches the running generation to the interface that has the name now, as soon
/// as there is one. Returns the events to publish: `unprotected` when protection is lost (again
/// whenever the reason changes), `reattached` when it is back.
pub(super) fn watch_interface(loader: &mut Loader, said: &mut Option<String>) -> Vec<EventRecord> {
    let iface = loader.state.iface.clone();
    let found = match Inspection::of(&iface) {
        Ok(found) => found,
        Err(error) => {
            warn!("checking the links of {iface}: {error:#}");
            return Vec::new();
        }
    };
    let Some(mut problem) = found.problem(&iface) else {
        return watch_connection_caps(loader, said);
    };
    if let Some(ifindex) = found.ifindex_now {
        match loader::adopt(&mut loader.ebpf, &iface, loader.xdp_choice, &found) {
            Ok((mode, repaired)) => {
                loader.state.ifindex = ifindex;
                if let Some(mode) = mode {
                    loader.state.xdp_mode = mode;
                }
                if let Err(error) = loader.state.write() {
                    warn!("recording the attachment: {error:#}");
                }
                *said = None;
                let detail = format!(
                    "{problem}; attached generation {} to {iface} (ifindex {ifindex}) again: {}",
                    loader.state.generation,
                    repaired.join(", ")
                );
                return vec![EventRecord::lifecycle(
                    SystemTime::now(),
                    &iface,
                    EventType::Reattached,
                    detail,
                )];
            }
            Err(error) => problem = format!("{problem}; attaching again failed: {error:#}"),
        }
    } else {
        problem.push_str(&format!("; the loader attaches again when {iface} exists"));
    }
    if said.as_ref() == Some(&problem) {
        return Vec::new();
    }
    *said = Some(problem.clone());
    vec![EventRecord::lifecycle(SystemTime::now(), &iface, EventType::Unprotected, problem)]
}

/// The `sock_ops` link of the connection caps hangs on the cgroup, not on the interface: put
/// right when it is missing or detached (a pin removed by hand, `bpftool link detach`), or
/// counts with no cap, as a reload would. The counts start again from zero: sockets closed
/// while nothing counted would hold theirs for ever, and connections open before are not
/// counted (as after an attach).
fn watch_connection_caps(loader: &mut Loader, said: &mut Option<String>) -> Vec<EventRecord> {
    let iface = loader.state.iface.clone();
    let capped = loader.state.limited_rules.iter().any(|r| r.connections_per_source.is_some());
    let problem = match crate::links::sock_ops(&iface) {
        Ok(link) => crate::links::connection_caps_problem(capped, link),
        Err(error) => Some(format!("{error:#}")),
    };
    let Some(problem) = problem else {
        return Vec::new();
    };
    let repaired = crate::conns::clear_counts(&mut loader.ebpf)
        .and_then(|()| crate::conns::sync(&mut loader.ebpf, &iface));
    let (event, detail) = match repaired {
        Ok(()) if capped => (
            EventType::Reattached,
            format!(
                "{problem}; attached the sock_ops program of generation {} again (counting from now: \
                 connections open before are not counted)",
                loader.state.generation
            ),
        ),
        Ok(()) => (EventType::Reattached, format!("{problem}; removed the sock_ops link")),
        Err(error) => (EventType::Unprotected, format!("{problem}; putting it right failed: {error:#}")),
    };
    if event == EventType::Unprotected && said.as_ref() == Some(&detail) {
        return Vec::new();
    }
    *said = (event == EventType::Unprotected).then(|| detail.clone());
    vec![EventRecord::lifecycle(SystemTime::now(), &iface, event, detail)]
}

/// Drops expired manual blocks from the saved list and from the map (the packet path already
/// ignores them).
pub(super) fn sweep_manual_blocks(iface: &str) {
    let Ok(store) = BlockStore::load() else { return };
    if store.blocks.iter().any(|b| b.expired(now_unix())) {
        let _ = BlockStore::edit(&[iface.to_owned()], |_| Ok(()));
    }
}
