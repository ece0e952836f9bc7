//! Reading captures (pcap and pcapng, as tcpdump and Wireshark write them) as Ethernet frames
//! for the kernel program: other link types get an Ethernet header that says what they carry.

use std::{fs::File, io::BufReader, path::Path};

use anyhow::{Context as _, Result, bail};
use pcap_file::{
    DataLink,
    pcap::PcapReader,
    pcapng::{Block, PcapNgReader},
};

/// Which way a captured packet went, when the capture says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    In,
    Out,
    Unknown,
}

#[derive(Clone, Debug)]
pub struct Captured {
    /// An Ethernet frame.
    pub frame: Vec<u8>,
    pub direction: Direction,
    /// The capture kept fewer bytes than the packet had (snap length).
    pub truncated: bool,
}

/// Why a packet of the capture could not be replayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skipped {
    LinkType,
    Unknown,
}

/// Every packet of `path`, converted; packets of other link types are counted, not returned.
pub fn read(path: &Path) -> Result<(Vec<Captured>, Vec<Skipped>)> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut magic = [0u8; 4];
    std::io::Read::read_exact(&mut file, &mut magic)
        .with_context(|| format!("{} is empty", path.display()))?;
    let file = BufReader::new(File::open(path)?);
    let (mut packets, mut skipped) = (Vec::new(), Vec::new());
    let mut keep = |link: DataLink, data: &[u8], original_len: u32| match to_ethernet(link, data) {
        Some((frame, direction)) => {
            packets.push(Captured { frame, direction, truncated: (data.len() as u32) < original_len })
        }
        None => skipped.push(Skipped::LinkType),
    };
    match u32::from_le_bytes(magic) {
        0x0a0d_0d0a => {
            let mut reader = PcapNgReader::new(file)
                .with_context(|| format!("{} is not a valid pcapng file", path.display()))?;
            let mut links = Vec::new();
            while let Some(block) = reader.next_block() {
                match block.with_context(|| format!("reading {}", path.display()))? {
                    Block::InterfaceDescription(interface) => links.push(interface.linktype),
                    Block::EnhancedPacket(packet) => {
                        let link =
                            links.get(packet.interface_id as usize).copied().unwrap_or(DataLink::ETHERNET);
                        keep(link, &packet.data, packet.original_len);
                    }
                    Block::SimplePacket(packet) => {
                        let link = links.first().copied().unwrap_or(DataLink::ETHERNET);
                        keep(link, &packet.data, packet.original_len);
                    }
                    _ => {}
                }
            }
        }
        0xa1b2_c3d4 | 0xd4c3_b2a1 | 0xa1b2_3c4d | 0x4d3c_b2a1 => {
            let mut reader = PcapReader::new(file)
                .with_context(|| format!("{} is not a valid pcap file", path.display()))?;
            let link = reader.header().datalink;
            while let Some(packet) = reader.next_packet() {
                let packet = packet.with_context(|| format!("reading {}", path.display()))?;
                keep(link, &packet.data, packet.orig_len);
            }
        }
        _ => bail!("{} is neither pcap nor pcapng (tcpdump -w writes pcap)", path.display()),
    }
    Ok((packets, skipped))
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

fn to_ethernet(link: DataLink, data: &[u8]) -> Option<(Vec<u8>, Direction)> {
    match link {
        DataLink::ETHERNET => Some((data.to_vec(), Direction::Unknown)),
        DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => {
            Some((ethernet(ip_ether_type(data)?, data), Direction::Unknown))
        }
        // Linux "any" captures: packet type 4 is outgoing.
        DataLink::LINUX_SLL => {
            let direction = if u16::from_be_bytes([*data.first()?, *data.get(1)?]) == 4 {
                Direction::Out
            } else {
                Direction::In
            };
            let protocol = u16::from_be_bytes([*data.get(14)?, *data.get(15)?]);
            Some((ethernet(protocol, data.get(16..)?), direction))
        }
        DataLink::LINUX_SLL2 => {
            let direction = if *data.get(10)? == 4 { Direction::Out } else { Direction::In };
            let protocol = u16::from_be_bytes([*data.first()?, *data.get(1)?]);
            Some((ethernet(protocol, data.get(20..)?), direction))
        }
        DataLink::NULL | DataLink::LOOP => {
            let family = u32::from_ne_bytes(data.get(..4)?.try_into().ok()?);
            let ether_type = match family {
                2 => 0x0800,
                24 | 28 | 30 => 0x86dd,
                _ => return None,
            };
            Some((ethernet(ether_type, data.get(4..)?), Direction::Unknown))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_types_become_ethernet() {
        let ip = [0x45u8, 0, 0, 20, 0, 0, 0, 0, 64, 6, 0, 0, 192, 0, 2, 1, 192, 0, 2, 2];
        let (frame, _) = to_ethernet(DataLink::RAW, &ip).unwrap();
        assert_eq!(&frame[12..14], &[0x08, 0x00]);
        assert_eq!(&frame[14..], &ip);
        let mut sll = vec![0, 4, 0, 1, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0x86, 0xdd];
        sll.extend_from_slice(&[0x60, 0, 0, 0]);
        let (frame, direction) = to_ethernet(DataLink::LINUX_SLL, &sll).unwrap();
        assert_eq!(direction, Direction::Out);
        assert_eq!(&frame[12..14], &[0x86, 0xdd]);
        assert!(to_ethernet(DataLink::USB_LINUX, &ip).is_none());
    }
}
