//! Reading captures (pcap and pcapng, as tcpdump, dumpcap and Wireshark write them) one record
//! at a time, as Ethernet frames for the kernel program: other link types get an Ethernet
//! header that says what they carry.
//!
//! Nothing is held beyond the record being read, and nothing in a record stops the reading:
//! a packet that cannot become a frame is reported with its number, a malformed pcapng block
//! is skipped (blocks say their length), and only damage that leaves no way to find the next
//! record (a file cut off inside a record, a length no frame has) ends the reading, after
//! everything before it.

use std::{fs::File, io::Read as _, path::Path};

use anyhow::{Context as _, Result, bail};
use etherparse::{IpNumber, Ipv6ExtensionSlice, LaxNetSlice, LaxSlicedPacket, err::Layer};
use pcap_parser::{
    Block, Linktype, PcapBlockOwned, PcapError, create_reader,
    traits::{PcapNGPacketBlock as _, PcapReaderIterator},
};

/// Which way a captured packet went, when the capture says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    In,
    Out,
    Unknown,
}

/// One packet of the capture, as an Ethernet frame.
#[derive(Clone, Debug)]
pub struct Packet {
    /// 1-based, as Wireshark and `tcpdump -r` number packets.
    pub number: u64,
    /// What the capture kept of the frame (all of it unless cut by the snap length).
    pub frame: Vec<u8>,
    /// The frame's length on the wire (more than `frame.len()` when the capture cut it).
    pub original_len: usize,
    pub direction: Direction,
}

impl Packet {
    /// The capture kept fewer bytes than the packet had (snap length).
    pub fn cut(&self) -> bool {
        self.frame.len() < self.original_len
    }
}

/// Why a packet record could not become an Ethernet frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unusable {
    /// A link type portguard does not replay (USB, 802.11 with radio headers, ...).
    LinkType(String),
    /// The record holds no bytes at all.
    Empty,
    /// Fewer bytes than the link type's own header.
    ShorterThanLinkHeader { link: String, len: usize },
}

impl Unusable {
    /// A short stable name (JSON, grouping).
    pub fn name(&self) -> &'static str {
        match self {
            Self::LinkType(_) => "link_type",
            Self::Empty => "empty_record",
            Self::ShorterThanLinkHeader { .. } => "shorter_than_link_header",
        }
    }

    pub fn detail(&self) -> String {
        match self {
            Self::LinkType(link) => {
                format!("link type {link} is not replayed (Ethernet, raw IP, Linux cooked and loopback are)")
            }
            Self::Empty => "the record holds no bytes".to_string(),
            Self::ShorterThanLinkHeader { link, len } => {
                format!("{}, fewer than a {link} header", crate::output::count(*len as u64, "byte", "bytes"))
            }
        }
    }
}

/// Part of the file that could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// Where the unreadable record or block starts.
    pub offset: u64,
    /// The packet it is (or would have been), when it is a packet record.
    pub packet: Option<u64>,
    pub why: String,
    /// Nothing after it can be read: the reading ends here.
    pub stopped: bool,
}

#[derive(Clone, Debug)]
pub enum Record {
    Packet(Packet),
    Unusable { number: u64, why: Unusable },
    Damage(Damage),
}

/// The read buffer starts at 1 MiB (a 64 KiB BIG TCP aggregate fits many times) and grows for
/// a larger record up to `RECORD_MAX`.
const BUFFER: usize = 1 << 20;
/// No frame is larger (BIG TCP aggregates stop at 512 KiB); a record that claims more is
/// damage, not a packet to wait for.
pub const RECORD_MAX: usize = 16 << 20;

enum Format {
    Pcap { link: Linktype, big_endian: bool, record_header: usize },
    PcapNg { big_endian: bool, links: Vec<Linktype> },
}

/// A capture read record by record.
pub struct Reader {
    inner: Box<dyn PcapReaderIterator + Send>,
    format: Format,
    capacity: usize,
    /// Packet records met so far (read or not).
    packets: u64,
    done: bool,
}

/// What one step of the underlying reader gave.
enum Step {
    Block(usize, Option<Record>),
    End,
    /// More bytes are needed (or the file ended inside a record).
    Short,
    ReadError,
    Malformed(String),
}

impl Reader {
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        // The first read must hold the whole file header (a pcapng section header with its
        // options can be long): a pipe may hand over less at a time.
        let mut head = Vec::new();
        (&mut file)
            .take(64 * 1024)
            .read_to_end(&mut head)
            .with_context(|| format!("reading {}", path.display()))?;
        if head.is_empty() {
            bail!("{} is empty", path.display());
        }
        let input = std::io::Cursor::new(head).chain(file);
        let mut inner = match create_reader(BUFFER, input) {
            Ok(reader) => reader,
            Err(PcapError::HeaderNotRecognized | PcapError::NomError(..) | PcapError::OwnedNomError(..)) => {
                bail!("{} is neither pcap nor pcapng (tcpdump -w writes pcap)", path.display())
            }
            Err(error) => {
                bail!("{} is not a readable capture: its file header is cut short ({error})", path.display())
            }
        };
        let format = match inner.next() {
            Ok((len, PcapBlockOwned::LegacyHeader(header))) => {
                let format = Format::Pcap {
                    link: header.network,
                    big_endian: header.is_bigendian(),
                    record_header: if header.is_modified_format() { 24 } else { 16 },
                };
                inner.consume(len);
                format
            }
            // The section header is read again as the first block.
            Ok(_) => Format::PcapNg { big_endian: false, links: Vec::new() },
            Err(error) => bail!("{} is not a readable capture: {error}", path.display()),
        };
        Ok(Self { inner, format, capacity: BUFFER, packets: 0, done: false })
    }

    /// The length the record or block at the start of the buffer says it has, when its header
    /// is there.
    fn claimed(&self) -> Option<usize> {
        let data = self.inner.data();
        let u32_at = |at: usize, big_endian: bool| -> Option<u32> {
            let bytes: [u8; 4] = data.get(at..at + 4)?.try_into().ok()?;
            Some(if big_endian { u32::from_be_bytes(bytes) } else { u32::from_le_bytes(bytes) })
        };
        match &self.format {
            Format::Pcap { big_endian, record_header, .. } => {
                Some(record_header + u32_at(8, *big_endian)? as usize)
            }
            Format::PcapNg { big_endian, .. } => {
                // A section header says its own byte order.
                let big_endian = if u32_at(0, false)? == 0x0a0d_0d0a {
                    u32_at(8, false)? != 0x1a2b_3c4d
                } else {
                    *big_endian
                };
                Some(u32_at(4, big_endian)? as usize)
            }
        }
    }

    /// Whether the block at the start of the buffer is a packet block (pcap: every record).
    fn next_is_packet(&self) -> bool {
        match &self.format {
            Format::Pcap { .. } => true,
            Format::PcapNg { big_endian, .. } => {
                let Some(bytes) = self.inner.data().get(..4) else { return false };
                let bytes: [u8; 4] = bytes.try_into().expect("4 bytes");
                let kind = if *big_endian { u32::from_be_bytes(bytes) } else { u32::from_le_bytes(bytes) };
                // Enhanced, simple, and the obsolete packet block.
                matches!(kind, 6 | 3 | 2)
            }
        }
    }

    /// Ends the reading with `why` about the record at the start of the buffer.
    fn stop(&mut self, why: String) -> Record {
        self.done = true;
        // A packet record that cannot be read still counts (and numbers) as a packet met.
        let packet = self.next_is_packet().then(|| {
            self.packets += 1;
            self.packets
        });
        Record::Damage(Damage { offset: self.inner.consumed() as u64, packet, why, stopped: true })
    }

    fn step(&mut self) -> Step {
        let format = &mut self.format;
        let packets = &mut self.packets;
        let offset = self.inner.consumed() as u64;
        match self.inner.next() {
            Ok((len, block)) => Step::Block(len, take(format, packets, offset, block)),
            Err(PcapError::Eof) => Step::End,
            Err(PcapError::Incomplete(_) | PcapError::BufferTooSmall | PcapError::UnexpectedEof) => {
                Step::Short
            }
            Err(PcapError::ReadError) => Step::ReadError,
            Err(error) => Step::Malformed(error.to_string()),
        }
    }

    fn next_record(&mut self) -> Option<Record> {
        while !self.done {
            match self.step() {
                Step::Block(len, record) => {
                    self.inner.consume(len);
                    if record.is_some() {
                        return record;
                    }
                }
                Step::End => self.done = true,
                Step::ReadError => return Some(self.stop("reading the file failed".to_string())),
                Step::Short => {
                    let available = self.inner.data().len();
                    let exhausted = self.inner.reader_exhausted();
                    if available == 0 && exhausted {
                        self.done = true;
                        continue;
                    }
                    match self.claimed() {
                        // All of it is there and still not whole: its inner lengths disagree.
                        Some(claimed) if claimed <= available => {
                            if let Some(record) = self.malformed("its lengths disagree".to_string()) {
                                return Some(record);
                            }
                        }
                        Some(claimed) if claimed > RECORD_MAX => {
                            return Some(self.stop(format!(
                                "it claims {claimed} bytes, more than any frame ({} MiB): the file is damaged here",
                                RECORD_MAX >> 20
                            )));
                        }
                        claimed if exhausted => {
                            let of = claimed.map_or(String::new(), |c| format!(" of {c}"));
                            return Some(self.stop(format!(
                                "the file ends inside it ({available}{of} bytes there): the capture was cut off"
                            )));
                        }
                        claimed => {
                            if let Some(claimed) = claimed.filter(|c| *c > self.capacity) {
                                let size = claimed.next_power_of_two().min(RECORD_MAX + 64);
                                self.inner.grow(size);
                                self.capacity = size;
                            }
                            if self.inner.refill().is_err() {
                                return Some(self.stop("reading the file failed".to_string()));
                            }
                        }
                    }
                }
                Step::Malformed(why) => {
                    if let Some(record) = self.malformed(why) {
                        return Some(record);
                    }
                }
            }
        }
        None
    }

    /// A block that cannot be parsed: pcapng blocks say their length, so it is skipped;
    /// a pcap record cannot be stepped over.
    fn malformed(&mut self, why: String) -> Option<Record> {
        let skip = match self.format {
            Format::PcapNg { .. } => {
                self.claimed().filter(|len| *len >= 12 && len % 4 == 0 && *len <= self.inner.data().len())
            }
            Format::Pcap { .. } => None,
        };
        let Some(len) = skip else {
            return Some(
                self.stop(format!(
                    "it cannot be read ({why}), and nothing says where the next record starts"
                )),
            );
        };
        let offset = self.inner.consumed() as u64;
        let packet = self.next_is_packet().then(|| {
            self.packets += 1;
            self.packets
        });
        self.inner.consume(len);
        Some(Record::Damage(Damage {
            offset,
            packet,
            why: format!("malformed block ({why}): skipped"),
            stopped: false,
        }))
    }

    /// Packet records met so far.
    pub fn packets(&self) -> u64 {
        self.packets
    }
}

impl Iterator for Reader {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        self.next_record()
    }
}

/// Turns one block into a record, keeping what later blocks need (link types, byte order).
fn take(format: &mut Format, packets: &mut u64, offset: u64, block: PcapBlockOwned<'_>) -> Option<Record> {
    let (link, data, original_len) = match (format, block) {
        (Format::Pcap { link, .. }, PcapBlockOwned::Legacy(record)) => (*link, record.data, record.origlen),
        (Format::PcapNg { big_endian, links }, PcapBlockOwned::NG(block)) => match block {
            Block::SectionHeader(section) => {
                *big_endian = section.big_endian();
                links.clear();
                return None;
            }
            Block::InterfaceDescription(interface) => {
                links.push(interface.linktype);
                return None;
            }
            Block::EnhancedPacket(packet) => {
                let link = links.get(packet.if_id as usize).copied();
                *packets += 1;
                let Some(link) = link else {
                    return Some(Record::Damage(Damage {
                        offset,
                        packet: Some(*packets),
                        why: format!(
                            "it names interface {}, which no interface block describes",
                            packet.if_id
                        ),
                        stopped: false,
                    }));
                };
                return Some(packet_record(*packets, link, packet.packet_data(), packet.orig_len()));
            }
            Block::SimplePacket(packet) => {
                *packets += 1;
                let link = links.first().copied().unwrap_or(Linktype::ETHERNET);
                return Some(packet_record(*packets, link, packet.packet_data(), packet.orig_len()));
            }
            // Statistics, name resolution, decryption secrets, custom and unknown blocks.
            _ => return None,
        },
        _ => return None,
    };
    *packets += 1;
    Some(packet_record(*packets, link, data, original_len))
}

fn packet_record(number: u64, link: Linktype, data: &[u8], original_len: u32) -> Record {
    if data.is_empty() {
        return Record::Unusable { number, why: Unusable::Empty };
    }
    match to_ethernet(link, data) {
        Converted::Frame { frame, direction, header_change } => {
            // The original length counts the capture's own link header; make it the frame's.
            let original_len = (original_len as usize).saturating_add_signed(header_change).max(frame.len());
            Record::Packet(Packet { number, frame, original_len, direction })
        }
        Converted::Short => Record::Unusable {
            number,
            why: Unusable::ShorterThanLinkHeader { link: link_name(link), len: data.len() },
        },
        Converted::Other => Record::Unusable { number, why: Unusable::LinkType(link_name(link)) },
    }
}

fn link_name(link: Linktype) -> String {
    format!("{link}")
}

fn ethernet(ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1]);
    frame.extend_from_slice(&ether_type.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

fn ip_ether_type(packet: &[u8]) -> Option<u16> {
    match packet.first()? >> 4 {
        4 => Some(0x0800),
        6 => Some(0x86dd),
        _ => None,
    }
}

enum Converted {
    Frame {
        frame: Vec<u8>,
        direction: Direction,
        /// Bytes the frame's header has more (or fewer) than the capture's link header.
        header_change: isize,
    },
    /// Too short for the link type's header.
    Short,
    /// A link type that is not replayed.
    Other,
}

fn to_ethernet(link: Linktype, data: &[u8]) -> Converted {
    let frame = |ether_type: u16, link_header: usize, direction| match data.get(link_header..) {
        Some(payload) => Converted::Frame {
            frame: ethernet(ether_type, payload),
            direction,
            header_change: 14 - link_header as isize,
        },
        None => Converted::Short,
    };
    let u16_at = |at: usize| data.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    match link {
        Linktype::ETHERNET if data.len() < 14 => Converted::Short,
        Linktype::ETHERNET => {
            Converted::Frame { frame: data.to_vec(), direction: Direction::Unknown, header_change: 0 }
        }
        Linktype::RAW | Linktype::IPV4 | Linktype::IPV6 => match ip_ether_type(data) {
            Some(ether_type) => frame(ether_type, 0, Direction::Unknown),
            None => Converted::Short,
        },
        // Linux "any" captures: packet type 4 is outgoing.
        Linktype::LINUX_SLL => match (u16_at(0), u16_at(14)) {
            (Some(kind), Some(protocol)) if data.len() >= 16 => {
                frame(protocol, 16, if kind == 4 { Direction::Out } else { Direction::In })
            }
            _ => Converted::Short,
        },
        Linktype::LINUX_SLL2 => match (u16_at(0), data.get(10)) {
            (Some(protocol), Some(kind)) if data.len() >= 20 => {
                frame(protocol, 20, if *kind == 4 { Direction::Out } else { Direction::In })
            }
            _ => Converted::Short,
        },
        Linktype::NULL | Linktype::LOOP => {
            let Some(bytes) = data.get(..4) else { return Converted::Short };
            // NULL is in the capturing host's byte order, LOOP in network order.
            let family = if link == Linktype::LOOP {
                u32::from_be_bytes(bytes.try_into().expect("4 bytes"))
            } else {
                u32::from_ne_bytes(bytes.try_into().expect("4 bytes"))
            };
            match family {
                2 => frame(0x0800, 4, Direction::Unknown),
                24 | 28 | 30 => frame(0x86dd, 4, Direction::Unknown),
                _ => Converted::Other,
            }
        }
        _ => Converted::Other,
    }
}

/// Frames up to this length are replayed whole. A larger one (jumbo frames, GRO/TSO aggregates
/// a host captures) would reach a program without multi-buffer support cut at the end of its
/// first page, and be judged malformed: it is replayed with its payload shortened to this
/// length and its IP length fields shortened to match. 2048 is below the room
/// BPF_PROG_TEST_RUN gives one page on every architecture, for XDP and for TC.
pub const WHOLE_FRAME_MAX: usize = 2048;

/// How a replayed frame differs from the packet on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fidelity {
    /// Byte for byte the packet.
    Exact,
    /// Cut by the snap length after its headers: padded back to its length with zeros.
    CutPadded,
    /// Longer than `WHOLE_FRAME_MAX`: its payload shortened (and maybe cut and padded too).
    Shortened,
}

/// Why a packet cannot be replayed: its headers are not all there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotReplayable {
    /// A short stable name (JSON, grouping).
    pub reason: &'static str,
    pub detail: String,
}

/// The frame to replay for `packet`: the packet itself, or a stand-in with the same headers
/// and lengths that agree with them. Errs when the headers themselves are not all there,
/// which no stand-in can make up for.
pub fn replayable(packet: &Packet) -> Result<(Vec<u8>, Fidelity), NotReplayable> {
    let frame = &packet.frame;
    if !packet.cut() && frame.len() <= WHOLE_FRAME_MAX {
        return Ok((frame.clone(), Fidelity::Exact));
    }
    let headers = headers_end(frame).map_err(|why| {
        if packet.cut() {
            NotReplayable {
                reason: "cut_in_headers",
                detail: format!(
                    "cut by the snap length inside {why} ({} of {} bytes kept): capture with a larger -s (-s 128 keeps nearly every packet's headers)",
                    frame.len(),
                    packet.original_len
                ),
            }
        } else {
            NotReplayable { reason: "headers_unreadable", detail: format!("{why} cannot be read") }
        }
    })?;
    let length = packet.original_len.min(WHOLE_FRAME_MAX);
    if headers > length {
        return Err(NotReplayable {
            reason: "headers_too_long",
            detail: format!("its headers run past {WHOLE_FRAME_MAX} bytes, more than a test run takes whole"),
        });
    }
    let mut stand_in = frame[..frame.len().min(length)].to_vec();
    stand_in.resize(length, 0);
    let fidelity = if length < packet.original_len {
        shorten_ip_lengths(&mut stand_in, frame).map_err(|why| NotReplayable {
            reason: "headers_unreadable",
            detail: format!("{why}: it cannot be shortened to {WHOLE_FRAME_MAX} bytes for the test run"),
        })?;
        Fidelity::Shortened
    } else {
        Fidelity::CutPadded
    };
    Ok((stand_in, fidelity))
}

/// Where the headers the kernel program reads end: the link header and its VLAN tags, the IP
/// header and its extensions, and the fixed part of the layer-4 header (TCP 20 bytes, UDP 8,
/// ICMP and ICMPv6 4; none in a later fragment). Errs with the header that is not all there.
/// (On egress the program also reads the datagram an ICMP error quotes; a cut quote reads as
/// zeros, so that refusal is not learnt.)
fn headers_end(frame: &[u8]) -> Result<usize, String> {
    let sliced = LaxSlicedPacket::from_ethernet(frame).map_err(|_| "the Ethernet header".to_string())?;
    let offset = |slice: &[u8]| slice.as_ptr() as usize - frame.as_ptr() as usize;
    let (payload, later_fragment) = match &sliced.net {
        Some(LaxNetSlice::Ipv4(ip)) => (ip.payload(), ip.header().fragments_offset().value() != 0),
        Some(LaxNetSlice::Ipv6(ip)) => {
            let later = ip.extensions().clone().into_iter().any(|header| {
                matches!(header, Ipv6ExtensionSlice::Fragment(f) if f.fragment_offset().value() != 0)
            });
            (ip.payload(), later)
        }
        Some(LaxNetSlice::Arp(arp)) if sliced.stop_err.is_none() => {
            return Ok(offset(arp.slice()) + arp.slice().len());
        }
        _ => {
            if let Some((_, layer)) = &sliced.stop_err {
                return Err(format!("its {layer}"));
            }
            let payload = sliced.ether_payload().ok_or("its Ethernet header")?;
            // An IP or VLAN type here means headers the parser could not walk (too many tags).
            if [0x0800, 0x86dd, 0x8100, 0x88a8].contains(&u16::from(payload.ether_type)) {
                return Err("its VLAN tags (more than can be walked)".to_string());
            }
            return Ok(offset(payload.payload));
        }
    };
    // The IP headers are whole when the parse got to the layer-4 payload; the layer-4 header
    // itself is checked here, for the part the program reads (TCP options may be cut).
    if let Some((_, layer)) = &sliced.stop_err {
        let layer_4 = matches!(
            layer,
            Layer::TcpHeader
                | Layer::UdpHeader
                | Layer::UdpPayload
                | Layer::Icmpv4
                | Layer::Icmpv4Timestamp
                | Layer::Icmpv4TimestampReply
                | Layer::Icmpv6
                | Layer::Igmp
        );
        if !layer_4 {
            return Err(format!("its {layer}"));
        }
    }
    let start = offset(payload.payload);
    let (needed, name) = match payload.ip_number {
        _ if later_fragment => (0, ""),
        IpNumber::TCP => (20, "TCP header"),
        IpNumber::UDP => (8, "UDP header"),
        IpNumber::ICMP | IpNumber::IPV6_ICMP => (4, "ICMP header"),
        _ => (0, ""),
    };
    if start + needed > frame.len() {
        return Err(format!("its {name}"));
    }
    Ok(start + needed)
}

/// Shortens the IPv4 total length or IPv6 payload length of `stand_in` (a prefix of
/// `original`, padded) so the datagram ends where the stand-in does, as the kernel program
/// checks. The checksum is left: the program does not verify it.
fn shorten_ip_lengths(stand_in: &mut [u8], original: &[u8]) -> Result<(), String> {
    let sliced = LaxSlicedPacket::from_ethernet(original).map_err(|e| e.to_string())?;
    let end = stand_in.len();
    let (at, header, datagram_end) = match &sliced.net {
        Some(LaxNetSlice::Ipv4(ip)) => {
            let header = ip.header();
            let at = header.slice().as_ptr() as usize - original.as_ptr() as usize;
            (at + 2, 0, at + header.total_len() as usize)
        }
        Some(LaxNetSlice::Ipv6(ip)) => {
            let header = ip.header();
            let at = header.slice().as_ptr() as usize - original.as_ptr() as usize;
            if header.payload_length() == 0 {
                // A jumbogram: the frame gives the length.
                return Ok(());
            }
            (at + 4, 40, at + 40 + header.payload_length() as usize)
        }
        // Not IP: nothing declares a length.
        _ => return Ok(()),
    };
    if datagram_end <= end {
        return Ok(());
    }
    let shortened = datagram_end - end;
    let field = u16::from_be_bytes([stand_in[at], stand_in[at + 1]]) as usize;
    let value =
        field.checked_sub(shortened).filter(|v| *v >= header).ok_or("its IP length is inconsistent")?;
    stand_in[at..at + 2].copy_from_slice(&(value as u16).to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{borrow::Cow, time::Duration};

    use etherparse::PacketBuilder;
    use pcap_file::{
        DataLink,
        pcap::{PcapHeader, PcapPacket, PcapWriter},
        pcapng::{Block as NgBlock, PcapNgWriter, blocks::unknown::UnknownBlock},
    };

    use super::*;

    fn udp_frame(payload: usize) -> Vec<u8> {
        let mut frame = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([198, 51, 100, 1], [192, 0, 2, 2], 64)
            .udp(40000, 53)
            .write(&mut frame, &vec![0xab; payload])
            .unwrap();
        frame
    }

    fn tcp_frame_v6(payload: usize) -> Vec<u8> {
        let mut frame = Vec::new();
        let (src, dst) = (
            [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
        );
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv6(src, dst, 64)
            .tcp(40000, 443, 1, 65535)
            .syn()
            .write(&mut frame, &vec![0xcd; payload])
            .unwrap();
        frame
    }

    /// A SYN with 20 bytes of TCP options, as Linux sends them.
    fn syn_with_options() -> Vec<u8> {
        use etherparse::TcpOptionElement::*;
        let mut frame = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([198, 51, 100, 1], [192, 0, 2, 2], 64)
            .tcp(40000, 5900, 1, 64240)
            .syn()
            .options(&[
                MaximumSegmentSize(1460),
                SelectiveAcknowledgementPermitted,
                Timestamp(1, 0),
                Noop,
                WindowScale(7),
            ])
            .unwrap()
            .write(&mut frame, &[])
            .unwrap();
        frame
    }

    /// A pcap with `snaplen`: each record keeps at most that many bytes of its frame.
    fn pcap(path: &Path, snaplen: u32, frames: &[Vec<u8>]) {
        let header = PcapHeader { datalink: DataLink::ETHERNET, snaplen, ..Default::default() };
        let mut writer = PcapWriter::with_header(File::create(path).unwrap(), header).unwrap();
        for (i, frame) in frames.iter().enumerate() {
            let kept = &frame[..frame.len().min(snaplen as usize)];
            writer
                .write_packet(&PcapPacket::new(Duration::from_millis(i as u64), frame.len() as u32, kept))
                .unwrap();
        }
    }

    fn read_all(path: &Path) -> Vec<Record> {
        Reader::open(path).unwrap().collect()
    }

    fn packet(record: &Record) -> &Packet {
        match record {
            Record::Packet(packet) => packet,
            other => panic!("not a packet: {other:?}"),
        }
    }

    #[test]
    fn snap_length_cuts_are_read_and_judged_on_their_headers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s64.pcap");
        // tcpdump -s 64: the file header says 64, every record keeps 64 bytes of more.
        pcap(&path, 64, &[udp_frame(1000), tcp_frame_v6(1000), udp_frame(4), syn_with_options()]);
        let records = read_all(&path);
        assert_eq!(records.len(), 4);
        let cut = packet(&records[0]);
        assert_eq!((cut.number, cut.frame.len(), cut.original_len), (1, 64, 1042));
        let (frame, fidelity) = replayable(cut).unwrap();
        assert_eq!(fidelity, Fidelity::CutPadded);
        assert_eq!(frame.len(), 1042);
        assert_eq!(&frame[..64], &cut.frame[..]);
        // IPv6 (40) and TCP (20) after Ethernet (14) do not fit in 64 bytes.
        let refused = replayable(packet(&records[1])).unwrap_err();
        assert_eq!(refused.reason, "cut_in_headers");
        assert!(
            refused.detail.contains("inside its TCP header (64 of 1074 bytes kept)"),
            "{}",
            refused.detail
        );
        let whole = packet(&records[2]);
        assert!(!whole.cut());
        assert_eq!(replayable(whole).unwrap().1, Fidelity::Exact);
        // Cut inside its TCP options, after the fixed header the program reads.
        let syn = packet(&records[3]);
        assert_eq!((syn.frame.len(), syn.original_len), (64, 74));
        assert_eq!(replayable(syn).unwrap().1, Fidelity::CutPadded);
    }

    #[test]
    fn jumbo_frames_are_shortened_with_lengths_that_agree() {
        let frame = udp_frame(9000);
        let packet = Packet { number: 1, original_len: frame.len(), frame, direction: Direction::Unknown };
        let (stand_in, fidelity) = replayable(&packet).unwrap();
        assert_eq!(fidelity, Fidelity::Shortened);
        assert_eq!(stand_in.len(), WHOLE_FRAME_MAX);
        // The IPv4 total length fits the frame (the UDP length, which the program does not
        // read, is left).
        let sliced = LaxSlicedPacket::from_ethernet(&stand_in).unwrap();
        let Some(LaxNetSlice::Ipv4(ip)) = sliced.net else { panic!("IPv4") };
        assert_eq!(ip.header().total_len() as usize, WHOLE_FRAME_MAX - 14);
        assert!(sliced.stop_err.is_none());
        // Every other header byte as it was.
        assert_eq!((&stand_in[..16], &stand_in[18..42]), (&packet.frame[..16], &packet.frame[18..42]));

        let frame = tcp_frame_v6(60_000);
        let packet = Packet { number: 1, original_len: frame.len(), frame, direction: Direction::Unknown };
        let (stand_in, _) = replayable(&packet).unwrap();
        assert_eq!(u16::from_be_bytes([stand_in[18], stand_in[19]]) as usize, WHOLE_FRAME_MAX - 14 - 40);
    }

    #[test]
    fn empty_records_and_a_truncated_last_record_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.pcap");
        let header = PcapHeader { datalink: DataLink::ETHERNET, ..Default::default() };
        let mut writer = PcapWriter::with_header(File::create(&path).unwrap(), header).unwrap();
        let frame = udp_frame(100);
        writer.write_packet(&PcapPacket::new(Duration::ZERO, frame.len() as u32, &frame)).unwrap();
        writer.write_packet(&PcapPacket::new(Duration::ZERO, 0, &[])).unwrap();
        writer.write_packet(&PcapPacket::new(Duration::ZERO, frame.len() as u32, &frame)).unwrap();
        writer.write_packet(&PcapPacket::new(Duration::ZERO, frame.len() as u32, &frame)).unwrap();
        drop(writer);
        // Cut off 30 bytes into the last record's data, as a copy of a file being written.
        let length = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(length - frame.len() as u64 + 30)
            .unwrap();
        let records = read_all(&path);
        assert_eq!(records.len(), 4, "{records:?}");
        assert_eq!(packet(&records[0]).number, 1);
        assert!(matches!(records[1], Record::Unusable { number: 2, why: Unusable::Empty }));
        assert_eq!(packet(&records[2]).number, 3);
        let Record::Damage(damage) = &records[3] else { panic!("{:?}", records[3]) };
        assert_eq!(damage.packet, Some(4));
        assert!(damage.stopped);
        assert!(damage.why.contains("the file ends inside it (46 of 158 bytes there)"), "{}", damage.why);
    }

    #[test]
    fn a_record_longer_than_any_frame_stops_the_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.pcap");
        pcap(&path, 65535, &[udp_frame(10)]);
        let mut bytes = std::fs::read(&path).unwrap();
        let mut record = vec![0u8; 16];
        record[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        record[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        bytes.extend_from_slice(&record);
        bytes.extend_from_slice(&[0; 100]);
        std::fs::write(&path, bytes).unwrap();
        let records = read_all(&path);
        assert_eq!(records.len(), 2);
        let Record::Damage(damage) = &records[1] else { panic!() };
        assert!(damage.stopped && damage.why.contains("more than any frame"), "{damage:?}");
    }

    #[test]
    fn pcapng_options_unknown_blocks_and_a_malformed_block_do_not_stop_the_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("odd.pcapng");
        let mut writer = PcapNgWriter::new(File::create(&path).unwrap()).unwrap();
        let frame = udp_frame(100);
        // Blocks written from their bodies: the writer has no way to name options it does
        // not know, and these are what the test is about.
        let mut raw = |kind: u32, body: Vec<u8>| {
            writer
                .write_block(&NgBlock::Unknown(UnknownBlock {
                    type_: kind,
                    length: 0,
                    value: Cow::Owned(body),
                }))
                .unwrap();
        };
        let option = |code: u16, value: &[u8]| {
            let mut bytes = code.to_le_bytes().to_vec();
            bytes.extend_from_slice(&(value.len() as u16).to_le_bytes());
            bytes.extend_from_slice(value);
            bytes.resize(bytes.len().next_multiple_of(4), 0);
            bytes
        };
        let epb = |caplen: u32, data: &[u8], options: &[Vec<u8>]| {
            let mut body = vec![0u8; 12];
            body.extend_from_slice(&caplen.to_le_bytes());
            body.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            body.extend_from_slice(data);
            body.resize(body.len().next_multiple_of(4), 0);
            for option in options {
                body.extend_from_slice(option);
            }
            body
        };
        // Ethernet, with if_tzone as the standard has it (4 bytes), a custom option and one
        // no reader knows; no end-of-options marker.
        let mut idb = vec![1, 0, 0, 0, 0, 0, 0, 0];
        idb.extend(option(10, &[0, 0, 0, 0]));
        idb.extend(option(2989, &[0, 0, 0x7e, 0xd5, 1, 2]));
        idb.extend(option(0x7777, &[1, 2, 3]));
        raw(1, idb);
        raw(6, epb(frame.len() as u32, &frame, &[option(5, &[0; 8]), option(0x4242, &[9]), option(0, &[])]));
        raw(0x0bad_cafe, vec![1, 2, 3, 4]);
        // An enhanced packet block whose captured length runs past its end.
        raw(6, epb(5000, &[0; 40], &[]));
        raw(6, epb(frame.len() as u32, &frame, &[]));
        drop(writer);

        let records = read_all(&path);
        assert_eq!(records.len(), 3, "{records:?}");
        assert_eq!(packet(&records[0]).number, 1);
        let Record::Damage(damage) = &records[1] else { panic!("{:?}", records[1]) };
        assert_eq!(damage.packet, Some(2));
        assert!(!damage.stopped && damage.why.contains("skipped"), "{damage:?}");
        assert_eq!(packet(&records[2]).number, 3);
        assert_eq!(packet(&records[2]).frame, frame);
    }

    #[test]
    fn link_types_become_ethernet() {
        let ip = [0x45u8, 0, 0, 20, 0, 0, 0, 0, 64, 6, 0, 0, 192, 0, 2, 1, 192, 0, 2, 2];
        let Converted::Frame { frame, header_change, .. } = to_ethernet(Linktype::RAW, &ip) else { panic!() };
        assert_eq!(&frame[12..14], &[0x08, 0x00]);
        assert_eq!(&frame[14..], &ip);
        assert_eq!(header_change, 14);
        let mut sll = vec![0, 4, 0, 1, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0x86, 0xdd];
        sll.extend_from_slice(&[0x60, 0, 0, 0]);
        let Converted::Frame { frame, direction, header_change } = to_ethernet(Linktype::LINUX_SLL, &sll)
        else {
            panic!()
        };
        assert_eq!(direction, Direction::Out);
        assert_eq!(&frame[12..14], &[0x86, 0xdd]);
        assert_eq!(header_change, -2);
        assert!(matches!(to_ethernet(Linktype::LINUX_SLL, &sll[..10]), Converted::Short));
        assert!(matches!(to_ethernet(Linktype(189), &ip), Converted::Other));
        assert!(matches!(to_ethernet(Linktype::ETHERNET, &ip[..10]), Converted::Short));
    }
}
