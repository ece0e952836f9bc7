//! Protocol numbers and TCP flags, as the packet path reads them from headers and the loader
//! names them in events, metrics and reports.

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// TCP header flag bits (byte 13).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_URG: u8 = 0x20;

/// The flags by name, in the order people list them (`SYN|ACK`).
pub const TCP_FLAG_NAMES: [(u8, &str); 6] = [
    (TCP_SYN, "SYN"),
    (TCP_ACK, "ACK"),
    (TCP_FIN, "FIN"),
    (TCP_RST, "RST"),
    (TCP_PSH, "PSH"),
    (TCP_URG, "URG"),
];

/// The lowercase name of an IP protocol portguard knows, as events and JSON print it.
pub const fn protocol_name(proto: u8) -> Option<&'static str> {
    match proto {
        PROTO_TCP => Some("tcp"),
        PROTO_UDP => Some("udp"),
        PROTO_ICMP => Some("icmp"),
        PROTO_ICMPV6 => Some("icmpv6"),
        _ => None,
    }
}

/// Whether the protocol has ports (TCP and UDP: the ones the port policy judges).
pub const fn has_ports(proto: u8) -> bool {
    matches!(proto, PROTO_TCP | PROTO_UDP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_names_cover_each_flag_once() {
        let mut all = 0u8;
        for (bit, _) in TCP_FLAG_NAMES {
            assert_eq!(bit.count_ones(), 1);
            assert_eq!(all & bit, 0, "flag {bit:#x} listed twice");
            all |= bit;
        }
        assert_eq!(all, TCP_FIN | TCP_SYN | TCP_RST | TCP_PSH | TCP_ACK | TCP_URG);
    }

    #[test]
    fn protocols_are_named_and_only_tcp_and_udp_have_ports() {
        assert_eq!(protocol_name(6), Some("tcp"));
        assert_eq!(protocol_name(17), Some("udp"));
        assert_eq!(protocol_name(1), Some("icmp"));
        assert_eq!(protocol_name(58), Some("icmpv6"));
        assert_eq!(protocol_name(47), None);
        assert!(has_ports(PROTO_TCP) && has_ports(PROTO_UDP));
        assert!(!has_ports(PROTO_ICMP) && !has_ports(PROTO_ICMPV6));
    }
}
