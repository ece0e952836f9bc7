//! Evidence (`[evidence]`): the first packets of each source blocked automatically, kept as one
//! pcap file per block beside the attachment's journal, so "show me" has an answer a reviewer
//! can open in Wireshark or replay with `portguard verify`.
//!
//! The kernel copies a block's packets (the one that caused it first, headers and up to
//! `snaplen` bytes of payload each) into their own ring buffer, `PG_EVIDENCE`
//! (`portguard-ebpf/src/evidence.rs`). The loader reads it (`EvidenceSource`) and writes the
//! files (`Evidence`): a block's file is made when its `auto_blocked` event is published, which
//! then names it (`evidence`), and it takes that block's packets as they come, at most
//! `packets_per_source`, until `capture_for` after the block. The files live in
//! `JOURNAL_DIR/evidence/`, the directory 0700 and each file 0600 (they hold attackers' payload
//! bytes), and the oldest are deleted to keep them all within `total_kib`.

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::maps::{Map, MapData, RingBuf};
use pcap_file::{
    DataLink, Endianness, TsResolution,
    pcap::{PcapHeader, PcapPacket, PcapWriter},
};
use portguard_common::{
    events::{EVIDENCE_FRAME_BYTES, Event, EvidencePacket},
    maps::MAP_EVIDENCE,
};

use crate::{
    events::{Clock, EventRecord, EventType, ip_of},
    paths, system,
};

/// The directory of an attachment's evidence files.
pub fn dir(iface: &str) -> PathBuf {
    paths::journal_dir(iface).join("evidence")
}

/// Which block a packet is evidence for: the blocked network and the block's expiry (both in
/// the block's `auto_blocked` event and in each `EvidencePacket`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct BlockId {
    net: [u8; 16],
    expires_ns: u64,
}

/// One block's file while it takes packets.
struct Capture {
    writer: PcapWriter<fs::File>,
    packets: u32,
    opened: Instant,
}

/// Reads the kernel's evidence ring buffer (`PG_EVIDENCE`) of a running attachment.
pub struct EvidenceSource {
    ring: RingBuf<MapData>,
}

impl EvidenceSource {
    pub fn from_pins(iface: &str) -> Result<Self> {
        let path = paths::map_pin(iface, MAP_EVIDENCE);
        let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        Ok(Self { ring: RingBuf::try_from(Map::from_map_data(data)?)? })
    }

    /// Every packet waiting in the ring buffer.
    pub fn drain(&mut self) -> Vec<EvidencePacket> {
        let mut packets = Vec::new();
        while let Some(item) = self.ring.next() {
            if item.len() >= size_of::<EvidencePacket>() {
                // SAFETY: the kernel wrote an `EvidencePacket` (repr(C), plain data).
                packets.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) });
            }
        }
        packets
    }

    /// Registers the ring buffer with the tokio reactor: readable when packets wait.
    pub fn watch(self) -> Result<tokio::io::unix::AsyncFd<Self>> {
        // SAFETY: the fd is the ring buffer's, owned by `self.ring` for as long as the
        // `AsyncFd` owns `self`, and `as_raw_fd` always returns that same fd.
        unsafe { tokio::io::unix::AsyncFd::register_with_interest(self, tokio::io::Interest::READABLE) }
            .map_err(|error| anyhow::anyhow!("watching the evidence ring buffer: {error}"))
    }
}

impl std::os::fd::AsRawFd for EvidenceSource {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd as _;
        self.ring.as_fd().as_raw_fd()
    }
}

/// The loader's evidence files for one attachment.
pub struct Evidence {
    dir: PathBuf,
    settings: crate::policy::Evidence,
    open: HashMap<BlockId, Capture>,
}

impl Evidence {
    /// For the attachment of `iface`, with the policy's `[evidence]`; `None` when it keeps none.
    pub fn create(iface: &str, settings: &crate::policy::Evidence) -> Result<Option<Self>> {
        if !settings.enabled() {
            return Ok(None);
        }
        let dir = dir(iface);
        system::create_private_dir(&dir)?;
        Ok(Some(Self { dir, settings: settings.clone(), open: HashMap::new() }))
    }

    /// A reload's `[evidence]`: open files keep going under the new bounds.
    pub fn set_settings(&mut self, settings: &crate::policy::Evidence) {
        self.settings = settings.clone();
    }

    /// An `auto_blocked` event about to be published: its file is made now and named in it.
    /// Other events pass untouched.
    pub fn on_event(&mut self, event: &Event, record: &mut EventRecord) {
        if record.event != EventType::AutoBlocked {
            return;
        }
        let id = BlockId { net: event.src, expires_ns: event.expires_ns };
        match self.open_capture(id, &record.time, event.prefix_len) {
            Ok(path) => record.evidence = Some(path.display().to_string()),
            Err(error) => log::warn!("no evidence file for the block of {}: {error:#}", record.who()),
        }
    }

    /// Packets from the kernel, each into its block's file. A packet whose block's event was
    /// not seen (lost, or raised while no loader ran) gets a file named from the packet itself.
    pub fn add(&mut self, packets: &[EvidencePacket], clock: &Clock) {
        for packet in packets {
            let id = BlockId { net: packet.net, expires_ns: packet.block_expires_ns };
            let time = clock.wall(packet.time_ns);
            if !self.open.contains_key(&id) {
                let named = humantime::format_rfc3339_millis(time).to_string();
                if let Err(error) = self.open_capture(id, &named, packet.prefix_len) {
                    log::warn!("no evidence file for the block of {}: {error:#}", ip_of(packet.net));
                    continue;
                }
            }
            let limit = self.settings.packets_per_source;
            let Some(capture) = self.open.get_mut(&id) else { continue };
            // The kernel may send a few more than the limit (CPUs racing on one block).
            if capture.packets >= limit {
                continue;
            }
            let since_epoch = time.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let len = (packet.cap_len as usize).min(EVIDENCE_FRAME_BYTES);
            let pcap = PcapPacket::new(since_epoch, packet.frame_len, &packet.frame[..len]);
            match capture.writer.write_packet(&pcap) {
                Ok(_) => capture.packets += 1,
                Err(error) => log::warn!("writing evidence of {}: {error}", ip_of(packet.net)),
            }
        }
    }

    /// Closes the files whose block is past `capture_for` (or that hold all their packets),
    /// then deletes the oldest files beyond `total_kib`. Called every second.
    pub fn upkeep(&mut self) {
        // A little longer than the kernel copies, for packets still in the ring.
        let keep_open = self.settings.capture_for + Duration::from_secs(2);
        let limit = self.settings.packets_per_source;
        self.open.retain(|_, capture| capture.packets < limit && capture.opened.elapsed() < keep_open);
        if let Err(error) = prune(&self.dir, u64::from(self.settings.total_kib) << 10) {
            log::warn!("keeping the evidence files within [evidence] total_kib: {error:#}");
        }
    }

    /// Makes the file of block `id`, named from `time` (RFC 3339) and the blocked network.
    fn open_capture(&mut self, id: BlockId, time: &str, prefix_len: u8) -> Result<PathBuf> {
        let path = self.dir.join(file_name(time, id.net, prefix_len));
        let file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        let header = PcapHeader {
            snaplen: EVIDENCE_FRAME_BYTES as u32,
            datalink: DataLink::ETHERNET,
            ts_resolution: TsResolution::MicroSecond,
            endianness: Endianness::native(),
            ..PcapHeader::default()
        };
        // Unbuffered: the file is whole after every packet, for whoever reads it meanwhile.
        let writer = PcapWriter::with_header(file, header).context("writing the pcap header")?;
        self.open.insert(id, Capture { writer, packets: 0, opened: Instant::now() });
        Ok(path)
    }
}

/// `20261202T081512.345Z-203.0.113.7.pcap`, `...-2001.db8.._64.pcap` for an IPv6 network:
/// sorted by time, and no characters a shell or another system's file names trip on.
fn file_name(time: &str, net: [u8; 16], prefix_len: u8) -> String {
    let stamp: String = time.chars().filter(|c| !matches!(c, '-' | ':')).collect();
    let who = match ip_of(net) {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) if prefix_len != 0 && prefix_len < 128 => {
            format!("{}_{prefix_len}", v6.to_string().replace(':', "."))
        }
        std::net::IpAddr::V6(v6) => v6.to_string().replace(':', "."),
    };
    format!("{stamp}-{who}.pcap")
}

/// Deletes the oldest evidence files (by name: by time) until all of them fit in `total`.
fn prune(dir: &Path, total: u64) -> Result<()> {
    let mut files: Vec<(PathBuf, u64)> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "pcap"))
        .map(|path| {
            let size = fs::metadata(&path).map_or(0, |m| m.len());
            (path, size)
        })
        .collect();
    files.sort();
    let mut used: u64 = files.iter().map(|(_, size)| size).sum();
    for (path, size) in files {
        if used <= total {
            break;
        }
        fs::remove_file(&path).with_context(|| format!("deleting {}", path.display()))?;
        used = used.saturating_sub(size);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_sort_by_time_and_name_the_network() {
        let v4 = crate::loader::addr16("203.0.113.7".parse().unwrap());
        assert_eq!(file_name("2026-12-02T08:15:12.345Z", v4, 32), "20261202T081512.345Z-203.0.113.7.pcap");
        let v6 = crate::loader::addr16("2001:db8:1:2::".parse().unwrap());
        assert_eq!(
            file_name("2026-12-02T08:15:12.345Z", v6, 64),
            "20261202T081512.345Z-2001.db8.1.2.._64.pcap"
        );
    }

    #[test]
    fn pruning_deletes_the_oldest_files_first() {
        let dir = tempfile::tempdir().unwrap();
        for name in
            ["20261202T080000.000Z-a.pcap", "20261202T090000.000Z-b.pcap", "20261202T100000.000Z-c.pcap"]
        {
            fs::write(dir.path().join(name), [0u8; 1000]).unwrap();
        }
        fs::write(dir.path().join("unrelated.txt"), [0u8; 5000]).unwrap();
        prune(dir.path(), 2000).unwrap();
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["20261202T090000.000Z-b.pcap", "20261202T100000.000Z-c.pcap", "unrelated.txt"]);
    }
}
