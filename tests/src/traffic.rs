//! Real traffic through real sockets, bounded in count and time.

use std::{
    collections::HashMap,
    io::ErrorKind,
    net::{IpAddr, SocketAddr, TcpListener, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::Netns;

/// How long a connection attempt or request waits before it counts as blocked.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(700);
/// Time for the servers' poll loop (2 ms) to take what already arrived.
const SETTLE: Duration = Duration::from_millis(150);
/// No server runs longer than this, whatever the test does.
const SERVER_LIFETIME: Duration = Duration::from_secs(300);

/// TCP listeners and UDP echo sockets in a namespace, on `[::]` (IPv4 and IPv6), counting
/// what arrives per port. Stopped on drop.
pub struct Servers {
    stop: Arc<AtomicBool>,
    accepted: Arc<Mutex<HashMap<u16, u64>>>,
    echoed: Arc<Mutex<HashMap<u16, u64>>>,
    thread: Option<JoinHandle<()>>,
}

impl Servers {
    pub fn start(netns: &Netns, tcp_ports: &[u16], udp_ports: &[u16]) -> Self {
        Self::start_for(netns, tcp_ports, udp_ports, SERVER_LIFETIME)
    }

    /// Like `start`, for up to `lifetime` instead of the tests' five minutes.
    pub fn start_for(netns: &Netns, tcp_ports: &[u16], udp_ports: &[u16], lifetime: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(Mutex::new(HashMap::new()));
        let echoed = Arc::new(Mutex::new(HashMap::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (tcp_ports, udp_ports) = (tcp_ports.to_vec(), udp_ports.to_vec());
        let thread = {
            let (stop, accepted, echoed) = (stop.clone(), accepted.clone(), echoed.clone());
            netns.spawn(move || {
                let listeners: Vec<(u16, TcpListener)> =
                    tcp_ports.iter().map(|&p| (p, tcp_listener(p))).collect();
                let sockets: Vec<(u16, UdpSocket)> = udp_ports.iter().map(|&p| (p, udp_socket(p))).collect();
                ready_tx.send(()).unwrap();
                let started = Instant::now();
                let mut buffer = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) && started.elapsed() < lifetime {
                    let mut idle = true;
                    for (port, listener) in &listeners {
                        // Accept and close: the handshake is what the tests look at.
                        while let Ok((_stream, _)) = listener.accept() {
                            idle = false;
                            *accepted.lock().unwrap().entry(*port).or_default() += 1;
                        }
                    }
                    for (port, socket) in &sockets {
                        while let Ok((n, peer)) = socket.recv_from(&mut buffer) {
                            idle = false;
                            *echoed.lock().unwrap().entry(*port).or_default() += 1;
                            let _ = socket.send_to(&buffer[..n], peer);
                        }
                    }
                    if idle {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
            })
        };
        ready_rx.recv_timeout(Duration::from_secs(10)).expect("servers did not start");
        Self { stop, accepted, echoed, thread: Some(thread) }
    }

    /// TCP connections accepted on `port` so far (after letting the accept loop catch up
    /// with handshakes the kernel already completed).
    pub fn accepted(&self, port: u16) -> u64 {
        std::thread::sleep(SETTLE);
        self.accepted.lock().unwrap().get(&port).copied().unwrap_or(0)
    }

    /// UDP datagrams received on `port` so far.
    pub fn received(&self, port: u16) -> u64 {
        std::thread::sleep(SETTLE);
        self.echoed.lock().unwrap().get(&port).copied().unwrap_or(0)
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn tcp_listener(port: u16) -> TcpListener {
    let socket = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP)).unwrap();
    socket.set_only_v6(false).unwrap();
    socket.set_reuse_address(true).unwrap();
    socket.bind(&SockAddr::from(SocketAddr::new(IpAddr::from([0u16; 8]), port))).unwrap();
    socket.listen(1024).unwrap();
    socket.set_nonblocking(true).unwrap();
    socket.into()
}

fn udp_socket(port: u16) -> UdpSocket {
    let socket = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    socket.set_only_v6(false).unwrap();
    socket.bind(&SockAddr::from(SocketAddr::new(IpAddr::from([0u16; 8]), port))).unwrap();
    socket.set_nonblocking(true).unwrap();
    socket.into()
}

/// Whether a TCP connection from `source` (an address of this namespace, or the default)
/// to `target` completes within `ATTEMPT_TIMEOUT`. Runs in `netns`.
pub fn tcp_connects(netns: &Netns, source: Option<IpAddr>, target: SocketAddr) -> bool {
    netns.run(move || tcp_connect_here(source, target))
}

pub fn tcp_connect_here(source: Option<IpAddr>, target: SocketAddr) -> bool {
    let domain = if target.is_ipv6() { Domain::IPV6 } else { Domain::IPV4 };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP)).unwrap();
    if let Some(source) = source {
        socket.bind(&SockAddr::from(SocketAddr::new(source, 0))).unwrap();
    }
    socket.connect_timeout(&SockAddr::from(target), ATTEMPT_TIMEOUT).is_ok()
}

/// Sends one datagram from `source` to `target` and waits for the echo. Runs in `netns`.
pub fn udp_echoes(netns: &Netns, source: Option<IpAddr>, target: SocketAddr) -> bool {
    netns.run(move || {
        let bind = match (source, target.is_ipv6()) {
            (Some(source), _) => SocketAddr::new(source, 0),
            (None, true) => "[::]:0".parse().unwrap(),
            (None, false) => "0.0.0.0:0".parse().unwrap(),
        };
        let socket = UdpSocket::bind(bind).unwrap();
        socket.set_read_timeout(Some(ATTEMPT_TIMEOUT)).unwrap();
        socket.send_to(b"portguard", target).unwrap();
        let mut buffer = [0u8; 64];
        match socket.recv_from(&mut buffer) {
            Ok((n, from)) => from == target && &buffer[..n] == b"portguard",
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
            Err(e) => panic!("udp receive: {e}"),
        }
    })
}

/// `count` TCP connection attempts; returns how many completed.
pub fn tcp_connect_many(netns: &Netns, source: Option<IpAddr>, target: SocketAddr, count: usize) -> usize {
    netns.run(move || (0..count).filter(|_| tcp_connect_here(source, target)).count())
}

/// Opens a connection attempt (one SYN) from `source` to each target in turn and gives up on
/// it at once: what a connect() scanner does against filtered ports. Runs in `netns`.
pub fn syn_probes(netns: &Netns, source: Option<IpAddr>, targets: Vec<SocketAddr>) {
    netns.run(move || {
        for target in targets {
            let domain = if target.is_ipv6() { Domain::IPV6 } else { Domain::IPV4 };
            let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP)).unwrap();
            if let Some(source) = source {
                socket.bind(&SockAddr::from(SocketAddr::new(source, 0))).unwrap();
            }
            socket.set_nonblocking(true).unwrap();
            // EINPROGRESS: the SYN is on its way; closing a half-open socket sends nothing.
            let _ = socket.connect(&SockAddr::from(target));
            std::thread::sleep(Duration::from_millis(2));
        }
    });
}

/// `count` connections from this namespace to `target`, each closed with a RST (SO_LINGER 0,
/// as many HTTP clients and pools do to shed a connection); returns how many connected. Runs
/// in `netns`.
pub fn tcp_connections_reset(netns: &Netns, target: SocketAddr, count: usize) -> usize {
    netns.run(move || {
        (0..count)
            .filter(|_| {
                let domain = if target.is_ipv6() { Domain::IPV6 } else { Domain::IPV4 };
                let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP)).unwrap();
                if socket.connect_timeout(&SockAddr::from(target), ATTEMPT_TIMEOUT).is_err() {
                    return false;
                }
                let _ = socket.send(b"GET / HTTP/1.0\r\n\r\n");
                socket.set_linger(Some(Duration::ZERO)).unwrap();
                true
            })
            .count()
    })
}

/// A process that listens under a program's name (`redis-server`, `sshd`): the test binary
/// `portguard-listener` copied under that name and run in a namespace, so /proc shows the
/// name as it would for the real program. Killed on drop.
pub struct NamedService {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl NamedService {
    /// `listener`: the path of `portguard-listener` (`env!("CARGO_BIN_EXE_portguard-listener")`).
    pub fn start(
        netns: &Netns,
        listener: &str,
        name: &str,
        tcp: &[u16],
        udp: &[u16],
    ) -> anyhow::Result<Self> {
        use std::io::BufRead as _;
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::Builder::new().prefix("pgt-service-").tempdir()?;
        let program = dir.path().join(name);
        std::fs::copy(listener, &program)?;
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755))?;
        let mut command = netns.command(program.to_str().expect("a UTF-8 path"));
        for port in tcp {
            command.args(["--tcp", &port.to_string()]);
        }
        for port in udp {
            command.args(["--udp", &port.to_string()]);
        }
        let mut child = command
            .args(["--seconds", "300"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let first = std::io::BufReader::new(stdout).lines().next();
            let _ = tx.send(first.and_then(Result::ok));
        });
        let mut service = Self { child, _dir: dir };
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Some(line)) if line == "listening" => Ok(service),
            other => {
                let _ = service.child.kill();
                anyhow::bail!("{name} did not start listening: {other:?}")
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for NamedService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `count` connection attempts from `source` to `target`, one SYN each, sent in turn within a
/// fraction of a second; after `wait` (shorter than the kernel's first SYN retransmission, one
/// second) says which completed, and closes them all. Runs in `netns`.
pub fn tcp_connect_burst(
    netns: &Netns,
    source: Option<IpAddr>,
    target: SocketAddr,
    count: usize,
    wait: Duration,
) -> Vec<bool> {
    assert!(wait < Duration::from_millis(900), "a retransmitted SYN would blur the answer");
    netns.run(move || {
        let sockets: Vec<Socket> = (0..count)
            .map(|_| {
                let domain = if target.is_ipv6() { Domain::IPV6 } else { Domain::IPV4 };
                let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP)).unwrap();
                if let Some(source) = source {
                    socket.bind(&SockAddr::from(SocketAddr::new(source, 0))).unwrap();
                }
                socket.set_nonblocking(true).unwrap();
                // EINPROGRESS: the SYN is on its way.
                let _ = socket.connect(&SockAddr::from(target));
                socket
            })
            .collect();
        std::thread::sleep(wait);
        sockets.iter().map(|socket| socket.peer_addr().is_ok()).collect()
    })
}

/// A TCP server in a namespace that keeps every connection it accepts open until the peer
/// closes it (end of stream or reset) or the test closes one (`close_oldest`): for the caps on
/// open connections. Listens on `[::]` (IPv4 and IPv6); stopped on drop.
pub struct HoldingServer {
    stop: Arc<AtomicBool>,
    close: std::sync::mpsc::Sender<()>,
    open: Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl HoldingServer {
    pub fn start(netns: &Netns, port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (close, closes) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let (stop, open) = (stop.clone(), open.clone());
            netns.spawn(move || {
                let listener = tcp_listener(port);
                ready_tx.send(()).unwrap();
                let started = Instant::now();
                let mut held: Vec<std::net::TcpStream> = Vec::new();
                let mut buffer = [0u8; 512];
                while !stop.load(Ordering::Relaxed) && started.elapsed() < SERVER_LIFETIME {
                    while let Ok((stream, _)) = listener.accept() {
                        stream.set_nonblocking(true).unwrap();
                        held.push(stream);
                    }
                    // Keep what is still open; a closed or reset peer is let go.
                    held.retain_mut(|stream| match std::io::Read::read(stream, &mut buffer) {
                        Ok(0) => false,
                        Ok(_) => true,
                        Err(error) => error.kind() == ErrorKind::WouldBlock,
                    });
                    while closes.try_recv().is_ok() {
                        if !held.is_empty() {
                            held.remove(0);
                        }
                    }
                    open.store(held.len(), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        ready_rx.recv_timeout(Duration::from_secs(10)).expect("the holding server did not start");
        Self { stop, close, open, thread: Some(thread) }
    }

    /// Connections the server holds open now (after letting its loop catch up).
    pub fn open(&self) -> usize {
        std::thread::sleep(SETTLE);
        self.open.load(Ordering::Relaxed)
    }

    /// Closes the connection it accepted first (the server's side: a FIN).
    pub fn close_oldest(&self) {
        self.close.send(()).unwrap();
        std::thread::sleep(SETTLE);
    }
}

impl Drop for HoldingServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A TCP connection from `source` to `target`, made in `netns` and kept open (a socket
/// belongs to the namespace it was made in), or none if it did not complete within
/// `ATTEMPT_TIMEOUT`.
pub fn tcp_open(netns: &Netns, source: Option<IpAddr>, target: SocketAddr) -> Option<Socket> {
    netns.run(move || {
        let domain = if target.is_ipv6() { Domain::IPV6 } else { Domain::IPV4 };
        let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP)).unwrap();
        if let Some(source) = source {
            socket.bind(&SockAddr::from(SocketAddr::new(source, 0))).unwrap();
        }
        socket.connect_timeout(&SockAddr::from(target), ATTEMPT_TIMEOUT).ok()?;
        Some(socket)
    })
}
