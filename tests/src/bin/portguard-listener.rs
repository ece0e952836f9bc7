//! A stand-in service for the doctor and lockout tests: listens on the TCP and UDP ports it is
//! given (on `[::]`, IPv4 and IPv6) and does nothing else. Copied under the name of the program
//! it stands in for (`redis-server`, `sshd`), it is that program to anyone who looks at
//! /proc, as a real one would be. Exits after `--seconds` (default 120) whatever happens.
//!
//! portguard-listener [--tcp PORT]... [--udp PORT]... [--seconds N]

use std::{
    net::{TcpListener, UdpSocket},
    time::Duration,
};

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut tcp, mut udp, mut seconds) = (Vec::new(), Vec::new(), 120u64);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--tcp" => tcp.push(value.parse::<u16>().expect("a port")),
            "--udp" => udp.push(value.parse::<u16>().expect("a port")),
            "--seconds" => seconds = value.parse().expect("seconds"),
            other => panic!("unknown argument {other}"),
        }
    }
    let _tcp: Vec<TcpListener> =
        tcp.iter().map(|port| TcpListener::bind(("::", *port)).expect("binding a TCP port")).collect();
    let _udp: Vec<UdpSocket> =
        udp.iter().map(|port| UdpSocket::bind(("::", *port)).expect("binding a UDP port")).collect();
    println!("listening");
    std::thread::sleep(Duration::from_secs(seconds));
}
