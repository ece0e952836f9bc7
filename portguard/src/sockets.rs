//! The host's own sockets, read from /proc/net/{tcp,tcp6,udp,udp6} of the current network
//! namespace, and the programs that hold them (/proc/PID/fd). `attach` seeds the flow table
//! from them so connections that exist before portguard attaches keep working under default
//! deny; doctor and the safety checks ask what listens.

use std::{
    collections::BTreeMap,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
};

use anyhow::{Context as _, Result};

use crate::policy::Proto;

/// TCP states as the kernel numbers them in /proc/net/tcp.
pub const TCP_CLOSE: u8 = 0x07;
pub const TCP_LISTEN: u8 = 0x0a;
/// A connected UDP socket shows as "established".
pub const UDP_ESTABLISHED: u8 = 0x01;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Socket {
    pub proto: Proto,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: u8,
    /// The socket's inode (0 when the table does not show it): what ties it to a process.
    pub inode: u64,
}

impl Socket {
    /// A socket with a peer: an established (or closing) TCP connection, a connected UDP socket.
    pub fn has_peer(&self) -> bool {
        match self.proto {
            Proto::Tcp => self.state != TCP_LISTEN && self.state != TCP_CLOSE,
            Proto::Udp => self.state == UDP_ESTABLISHED && !self.remote.ip().is_unspecified(),
        }
    }

    /// A socket that waits for others: a listening TCP socket, an unconnected bound UDP socket.
    pub fn is_listening(&self) -> bool {
        match self.proto {
            Proto::Tcp => self.state == TCP_LISTEN,
            // Unconnected UDP sockets show the TCP_CLOSE state number.
            Proto::Udp => self.state == TCP_CLOSE && self.local.port() != 0,
        }
    }
}

pub fn read_all() -> Result<Vec<Socket>> {
    let mut sockets = Vec::new();
    for (file, proto) in
        [("tcp", Proto::Tcp), ("tcp6", Proto::Tcp), ("udp", Proto::Udp), ("udp6", Proto::Udp)]
    {
        let path = crate::paths::proc_net(file);
        match fs::read_to_string(&path) {
            Ok(text) => sockets.extend(parse_table(&text, proto)),
            // No IPv6 in this kernel: nothing to read.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
        }
    }
    Ok(sockets)
}

/// A process holding a socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    /// `/proc/PID/comm`: the name the process runs under (15 bytes at most).
    pub comm: String,
    /// The file name of its executable, when it can be read (`mysqld`, `java`).
    pub exe: Option<String>,
    /// Its command line (what tells one `java` from another).
    pub cmdline: Vec<String>,
}

impl Owner {
    /// For people: `mysqld (pid 812)`.
    pub fn label(&self) -> String {
        format!("{} (pid {})", self.comm, self.pid)
    }
}

/// Which process holds each socket, by socket inode: read from every `/proc/PID/fd`. Best
/// effort: without the right to look at other processes (not root, or a sandbox), they are
/// simply not found. Socket inodes are unique across network namespaces, so a process
/// anywhere is found for a socket of this namespace.
pub fn owners() -> BTreeMap<u64, Owner> {
    owners_in(Path::new(crate::paths::PROC))
}

fn owners_in(proc: &Path) -> BTreeMap<u64, Owner> {
    let mut owners = BTreeMap::new();
    let Ok(processes) = fs::read_dir(proc) else { return owners };
    for process in processes.filter_map(Result::ok) {
        let Ok(pid) = process.file_name().to_string_lossy().parse::<u32>() else { continue };
        let dir = process.path();
        let Ok(fds) = fs::read_dir(dir.join("fd")) else { continue };
        let inodes: Vec<u64> = fds
            .filter_map(Result::ok)
            .filter_map(|fd| fs::read_link(fd.path()).ok())
            .filter_map(|target| socket_inode(&target.to_string_lossy()))
            .collect();
        if inodes.is_empty() {
            continue;
        }
        let owner = Owner {
            pid,
            comm: fs::read_to_string(dir.join("comm")).map(|c| c.trim_end().to_owned()).unwrap_or_default(),
            exe: fs::read_link(dir.join("exe"))
                .ok()
                .and_then(|exe| exe.file_name().map(|n| n.to_string_lossy().into_owned())),
            cmdline: fs::read(dir.join("cmdline"))
                .map(|raw| {
                    raw.split(|b| *b == 0)
                        .filter(|arg| !arg.is_empty())
                        .map(|arg| String::from_utf8_lossy(arg).into_owned())
                        .collect()
                })
                .unwrap_or_default(),
        };
        for inode in inodes {
            // The first process found keeps it (a forked server's children share the socket).
            owners.entry(inode).or_insert_with(|| owner.clone());
        }
    }
    owners
}

/// `socket:[12345]` -> 12345.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

pub fn parse_table(text: &str, proto: Proto) -> Vec<Socket> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace().skip(1);
            let local = parse_endpoint(fields.next()?)?;
            let remote = parse_endpoint(fields.next()?)?;
            let state = u8::from_str_radix(fields.next()?, 16).ok()?;
            // tx/rx queue, timer, retransmits, uid, timeout, then the inode.
            let inode = fields.nth(5).and_then(|f| f.parse().ok()).unwrap_or(0);
            Some(Socket { proto, local, remote, state, inode })
        })
        .collect()
}

/// `0100007F:0016` or 32 hex digits + port: each 32-bit word is in host byte order.
fn parse_endpoint(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok()?.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut octets = [0u8; 16];
            for i in 0..4 {
                octets[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_process_holding_a_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let socket = read_all()
            .unwrap()
            .into_iter()
            .find(|s| s.proto == Proto::Tcp && s.local.port() == port && s.is_listening())
            .expect("our listener is in /proc/net/tcp");
        let owner = owners().remove(&socket.inode).expect("our own fds are readable");
        assert_eq!(owner.pid, std::process::id());
        assert!(!owner.comm.is_empty() && owner.exe.is_some() && !owner.cmdline.is_empty(), "{owner:?}");
        assert_eq!(socket_inode("socket:[4026]"), Some(4026));
        assert_eq!(socket_inode("pipe:[4026]"), None);
    }

    #[test]
    fn parses_proc_net_tables() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 020200C0:C350 010200C0:01BB 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1
";
        let sockets = parse_table(tcp, Proto::Tcp);
        assert_eq!(sockets.len(), 2);
        assert_eq!(sockets[0].local, "127.0.0.1:22".parse().unwrap());
        assert!(!sockets[0].has_peer());
        assert!(sockets[0].is_listening());
        assert_eq!(sockets[0].inode, 1);
        assert_eq!(sockets[1].inode, 2);
        assert!(!sockets[1].is_listening());
        assert_eq!(sockets[1].local, "192.0.2.2:50000".parse().unwrap());
        assert_eq!(sockets[1].remote, "192.0.2.1:443".parse().unwrap());
        assert!(sockets[1].has_peer());

        let tcp6 = "  sl  local_address                         remote_address                        st
   0: B80D0120000000000000000002000000:0016 B80D0120000000000000000001000000:D431 01 0
";
        let sockets = parse_table(tcp6, Proto::Tcp);
        assert_eq!(sockets[0].local, "[2001:db8::2]:22".parse().unwrap());
        assert_eq!(sockets[0].remote, "[2001:db8::1]:54321".parse().unwrap());

        let udp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  10: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 777 2 0000000000000000 0
  11: 0100007F:D6F1 0100007F:0035 01 00000000:00000000 00:00000000 00000000     0        0 778 2 0000000000000000 0
";
        let sockets = parse_table(udp, Proto::Udp);
        assert!(sockets[0].is_listening());
        assert_eq!(sockets[0].inode, 777);
        assert!(!sockets[1].is_listening());
        assert!(sockets[1].has_peer());
    }
}
