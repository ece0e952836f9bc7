//! Just enough HTTP for the tests: scrape a `/metrics` page, receive webhook posts and serve a
//! blocklist feed, each inside a lab namespace and bounded in time.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::Netns;

/// `GET path` from inside `netns`: the status code and the body.
pub fn get(netns: &Netns, address: SocketAddr, path: &str) -> Result<(u16, String)> {
    let path = path.to_owned();
    netns.run(move || {
        let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))
            .with_context(|| format!("connecting to {address}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let (head, body) = response.split_once("\r\n\r\n").context("no end of headers")?;
        let status = head.split_whitespace().nth(1).context("no status")?.parse()?;
        Ok((status, body.to_owned()))
    })
}

/// How a `Receiver` treats a post.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Answer 204 at once.
    Accept,
    /// Read the request and never answer (a receiver that hangs).
    Hang,
}

/// One request a `Receiver` was sent.
#[derive(Clone, Debug)]
pub struct Received {
    /// The request target: path and query.
    pub target: String,
    /// Header names lowercased, in the order sent.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Received {
    /// The value of header `name` (any case), if it was sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// The value of query parameter `name`, as sent (still URL-encoded).
    pub fn query(&self, name: &str) -> Option<&str> {
        let (_, query) = self.target.split_once('?')?;
        query.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
    }
}

/// A webhook receiver on 127.0.0.1 in a namespace: keeps every request it was posted.
pub struct Receiver {
    pub address: SocketAddr,
    requests: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Longest a receiver lives, whatever the test does.
const LIFETIME: Duration = Duration::from_secs(120);

impl Receiver {
    pub fn start(netns: &Netns, port: u16, behaviour: Behaviour) -> Self {
        let address: SocketAddr = ([127, 0, 0, 1], port).into();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let (requests, stop) = (requests.clone(), stop.clone());
            netns.spawn(move || {
                let listener = TcpListener::bind(address).expect("binding the webhook receiver");
                listener.set_nonblocking(true).unwrap();
                ready_tx.send(()).unwrap();
                let started = Instant::now();
                // Held open, unanswered, in `Hang` mode.
                let mut hung = Vec::new();
                while !stop.load(Ordering::Relaxed) && started.elapsed() < LIFETIME {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            stream.set_nonblocking(false).unwrap();
                            stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                            if let Ok(request) = read_request(&stream) {
                                requests.lock().unwrap().push(request);
                            }
                            match behaviour {
                                Behaviour::Accept => {
                                    let _ = (&stream).write_all(
                                        b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                                    );
                                }
                                Behaviour::Hang => hung.push(stream),
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        ready_rx.recv_timeout(Duration::from_secs(10)).expect("the webhook receiver did not start");
        Self { address, requests, stop, thread: Some(thread) }
    }

    pub fn url(&self) -> String {
        format!("http://{}/portguard", self.address)
    }

    /// The bodies received so far.
    pub fn bodies(&self) -> Vec<String> {
        self.requests().into_iter().map(|r| r.body).collect()
    }

    /// The requests received so far.
    pub fn requests(&self) -> Vec<Received> {
        self.requests.lock().unwrap().clone()
    }

    /// Waits up to `wait` until `done` holds for the requests received; returns them.
    pub fn wait_for_requests(&self, wait: Duration, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        poll(wait, || self.requests(), |requests| done(requests))
    }

    /// Waits up to `wait` until `done` holds for the bodies received; returns them.
    pub fn wait_for(&self, wait: Duration, done: impl Fn(&[String]) -> bool) -> Vec<String> {
        poll(wait, || self.bodies(), |bodies| done(bodies))
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads one request: the request line, headers, then `Content-Length` bytes of body.
fn read_request(stream: &TcpStream) -> Result<Received> {
    let mut reader = BufReader::new(stream);
    let mut length = 0usize;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let target = line.split_whitespace().nth(1).context("no request target")?.to_owned();
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            bail!("connection closed in the headers");
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse()?;
            }
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    Ok(Received { target, headers, body: String::from_utf8(body)? })
}

/// What a `FeedServer` answers.
#[derive(Clone, Debug)]
pub enum Feed {
    /// A list with its `ETag` (quoted as sent) and `Last-Modified`; a request whose
    /// `If-None-Match` names that tag gets 304 Not Modified.
    List { body: String, etag: String, last_modified: String },
    /// This status and a short body, whatever is asked.
    Status(u16),
}

/// One request a `FeedServer` answered: its headers and the status it got.
#[derive(Clone, Debug)]
pub struct Answered {
    pub request: Received,
    pub status: u16,
}

/// A blocklist feed on 127.0.0.1 in a namespace (a real HTTP/1.1 server on a real socket):
/// serves one list at any path, with validators, honouring `If-None-Match`; what it serves
/// can be changed while it runs, and stopping it (drop) closes its port.
pub struct FeedServer {
    pub address: SocketAddr,
    serving: Arc<Mutex<Feed>>,
    answered: Arc<Mutex<Vec<Answered>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FeedServer {
    pub fn start(netns: &Netns, port: u16, first: Feed) -> Self {
        let address: SocketAddr = ([127, 0, 0, 1], port).into();
        let serving = Arc::new(Mutex::new(first));
        let answered = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let (serving, answered, stop) = (serving.clone(), answered.clone(), stop.clone());
            netns.spawn(move || {
                let listener = TcpListener::bind(address).expect("binding the feed server");
                listener.set_nonblocking(true).unwrap();
                ready_tx.send(()).unwrap();
                let started = Instant::now();
                while !stop.load(Ordering::Relaxed) && started.elapsed() < FEED_LIFETIME {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            stream.set_nonblocking(false).unwrap();
                            stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                            let Ok(request) = read_request(&stream) else { continue };
                            let feed = serving.lock().unwrap().clone();
                            let (status, head, body) = answer(&feed, &request);
                            let _ = (&stream).write_all(
                                format!(
                                    "HTTP/1.1 {status} {}\r\n{head}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                    if status == 200 { "OK" } else { "Status" },
                                    body.len()
                                )
                                .as_bytes(),
                            );
                            answered.lock().unwrap().push(Answered { request, status });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        ready_rx.recv_timeout(Duration::from_secs(10)).expect("the feed server did not start");
        Self { address, serving, answered, stop, thread: Some(thread) }
    }

    pub fn url(&self) -> String {
        format!("http://{}/drop.txt", self.address)
    }

    /// Serves `feed` from now on.
    pub fn serve(&self, feed: Feed) {
        *self.serving.lock().unwrap() = feed;
    }

    /// The requests answered so far.
    pub fn answered(&self) -> Vec<Answered> {
        self.answered.lock().unwrap().clone()
    }

    /// Waits up to `wait` until `done` holds for the requests answered; returns them.
    pub fn wait_for(&self, wait: Duration, done: impl Fn(&[Answered]) -> bool) -> Vec<Answered> {
        poll(wait, || self.answered(), |answered| done(answered))
    }
}

/// Reads `read` every 50 ms until `done` holds for what it read or `wait` has passed; the
/// last reading.
fn poll<T>(wait: Duration, read: impl Fn() -> T, done: impl Fn(&T) -> bool) -> T {
    let deadline = Instant::now() + wait;
    loop {
        let seen = read();
        if done(&seen) || Instant::now() >= deadline {
            return seen;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Longest a feed server lives, whatever the test does.
const FEED_LIFETIME: Duration = Duration::from_secs(300);

/// Status, extra header lines and body for `request`.
fn answer(feed: &Feed, request: &Received) -> (u16, String, String) {
    match feed {
        Feed::List { body, etag, last_modified } => {
            let head =
                format!("ETag: {etag}\r\nLast-Modified: {last_modified}\r\nContent-Type: text/plain\r\n");
            if request.header("if-none-match") == Some(etag.as_str()) {
                (304, head, String::new())
            } else {
                (200, head, body.clone())
            }
        }
        Feed::Status(status) => (*status, String::new(), format!("status {status}\n")),
    }
}

impl Drop for FeedServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One sample of a text exposition: name, labels, value.
#[derive(Clone, Debug)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// The samples of a Prometheus text exposition (comments skipped; label values without
/// escaped quotes, which portguard never writes).
pub fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|l| !l.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').expect("label has a value");
                    (k.to_owned(), v.trim_matches('"').to_owned())
                })
                .collect();
            Sample { name: name.to_owned(), labels, value: value.parse().expect("numeric value") }
        })
        .collect()
}

/// The value of the one sample named `name` whose labels include `labels`.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name && labels.iter().all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
        .collect();
    assert_eq!(matching.len(), 1, "expected one {name}{labels:?}, found {matching:?}");
    matching[0].value
}
