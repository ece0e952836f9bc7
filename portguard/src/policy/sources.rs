//! Addresses and networks: inline policy values (strict) and blocklist files (lenient, line by
//! line, in the formats public lists use).

use std::{net::IpAddr, path::Path, str::FromStr};

use ipnet::{IpNet, Ipv4Net};

/// Parses `198.51.100.0/24`, `2001:db8::/32` or a single address (a host prefix).
/// Host bits past the prefix are an error: `198.51.100.7/24` is ambiguous intent.
pub fn parse_net_strict(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    let net = parse_net(text)?;
    let network = net.trunc();
    if network != net {
        return Err(format!("`{text}` has bits set past its prefix length; the network is {network}"));
    }
    Ok(net)
}

/// Like `parse_net_strict` but clears host bits, as published lists expect.
pub fn parse_net_lenient(text: &str) -> Result<IpNet, String> {
    parse_net(text).map(|net| net.trunc())
}

fn parse_net(text: &str) -> Result<IpNet, String> {
    let net = if text.contains('/') {
        IpNet::from_str(text).map_err(|_| {
            format!("`{text}` is not a network (expected e.g. 198.51.100.0/24 or 2001:db8::/32)")
        })?
    } else {
        IpAddr::from_str(text).map(IpNet::from).map_err(|_| {
            format!("`{text}` is not an IP address or network (e.g. 203.0.113.7 or 2001:db8::/32)")
        })?
    };
    Ok(unmap_v4(net))
}

/// `::ffff:a.b.c.d/96+n` means the IPv4 network `a.b.c.d/n`: packets carry it as IPv4.
pub fn unmap_v4(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        _ => net,
    }
}

/// A bad line of a blocklist file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadLine {
    pub line: usize,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct SourceList {
    pub entries: Vec<IpNet>,
    pub bad_lines: Vec<BadLine>,
}

/// Parses a blocklist file. Accepted, one entry per line:
/// - `203.0.113.7`, `203.0.113.0/24`, `2001:db8::/32`
/// - comments after `#` or `;` (Spamhaus DROP: `203.0.113.0/24 ; SBL000`), blank lines
/// - anything after the first word (FireHOL netsets, lists with extra columns)
/// - a UTF-8 byte order mark at the start
///
/// A line that is not UTF-8 is a bad line like any other: one stray byte in a downloaded list
/// costs that line, not the list.
pub fn parse_source_list(bytes: &[u8]) -> SourceList {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut list = SourceList::default();
    // As `str::lines`: `\n` or `\r\n` ends a line, and a last `\n` starts none.
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    for (number, line) in bytes.split(|b| *b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let line = match std::str::from_utf8(line) {
            Ok(line) => line,
            Err(error) => {
                let reason = format!("not UTF-8 text (byte {} of the line)", error.valid_up_to() + 1);
                list.bad_lines.push(BadLine { line: number + 1, reason });
                continue;
            }
        };
        let content = line.split(['#', ';']).next().unwrap_or("").trim();
        let Some(word) = content.split_whitespace().next() else {
            continue;
        };
        match parse_net_lenient(word) {
            Ok(net) => list.entries.push(net),
            Err(reason) => list.bad_lines.push(BadLine { line: number + 1, reason }),
        }
    }
    list
}

pub fn read_source_file(path: &Path) -> std::io::Result<SourceList> {
    let bytes = crate::files::read_capped(path, crate::files::BLOCKLIST_FILE_MAX)?;
    Ok(parse_source_list(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_accepts_networks_and_addresses() {
        assert_eq!(parse_net_strict("198.51.100.0/24").unwrap().to_string(), "198.51.100.0/24");
        assert_eq!(parse_net_strict("203.0.113.7").unwrap().to_string(), "203.0.113.7/32");
        assert_eq!(parse_net_strict("2001:db8:1::/48").unwrap().to_string(), "2001:db8:1::/48");
        assert_eq!(parse_net_strict("2001:db8::1").unwrap().to_string(), "2001:db8::1/128");
        assert_eq!(parse_net_strict(" 192.0.2.0/24 ").unwrap().to_string(), "192.0.2.0/24");
    }

    #[test]
    fn strict_rejects_host_bits_and_garbage() {
        let err = parse_net_strict("198.51.100.7/24").unwrap_err();
        assert!(err.contains("198.51.100.0/24"), "{err}");
        assert!(parse_net_strict("198.51.100.0/33").is_err());
        assert!(parse_net_strict("300.1.1.1").is_err());
        assert!(parse_net_strict("example.com").is_err());
        assert!(parse_net_strict("").is_err());
    }

    #[test]
    fn v4_mapped_networks_become_v4() {
        assert_eq!(parse_net_strict("::ffff:203.0.113.0/120").unwrap().to_string(), "203.0.113.0/24");
        assert_eq!(parse_net_strict("::ffff:203.0.113.9").unwrap().to_string(), "203.0.113.9/32");
    }

    #[test]
    fn lists_accept_public_formats() {
        let text = "\
# FireHOL-style header
203.0.113.0/24 ; SBL000001
198.51.100.7
198.51.100.9/24   extra columns ignored

  2001:db8:bad::/48 # comment
; only a comment
not-an-address
10.0.0.0/99
";
        let list = parse_source_list(text.as_bytes());
        let entries: Vec<String> = list.entries.iter().map(ToString::to_string).collect();
        assert_eq!(entries, ["203.0.113.0/24", "198.51.100.7/32", "198.51.100.0/24", "2001:db8:bad::/48"]);
        assert_eq!(list.bad_lines.iter().map(|b| b.line).collect::<Vec<_>>(), [8, 9]);
    }

    #[test]
    fn lists_are_read_as_bytes_line_by_line() {
        let list =
            parse_source_list(b"\xEF\xBB\xBF203.0.113.1\r\n198.51.100.\xff\n2001:db8::1\n\xc3\n203.0.113.2");
        let entries: Vec<String> = list.entries.iter().map(ToString::to_string).collect();
        assert_eq!(
            entries,
            ["203.0.113.1/32", "2001:db8::1/128", "203.0.113.2/32"],
            "the BOM is not part of line 1"
        );
        assert_eq!(list.bad_lines.iter().map(|b| b.line).collect::<Vec<_>>(), [2, 4]);
        assert_eq!(list.bad_lines[0].reason, "not UTF-8 text (byte 12 of the line)");
        assert!(parse_source_list(b"").entries.is_empty() && parse_source_list(b"\n\n").bad_lines.is_empty());
    }
}
