//! The README's walkthrough, "A first week in ten minutes", run on a namespace lab: attach in
//! monitor mode while clients use the lab's services and a scanner probes them, `learn` a
//! policy, `check` it, enforce it with `reload`, watch it admit every client and block the
//! scanner (keeping the scanner's first packets as evidence), push a DNS-tunnel-like burst
//! through UDP/53 until the baselines report it, and write the incident report.
//!
//! Every step runs the real `portguard` binary with the command line the README shows (with
//! `--netns` for the lab), and prints the command and what it printed. `cargo xtask demo
//! --walkthrough` runs it for a reader; `lab_walkthrough` runs it in the tests, so the
//! README's walkthrough cannot drift from what the tool does. What did not behave as the
//! README says is collected in `Outcome::unexpected`.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::{
    ADMIN_V4, ADMIN_V6, Attached, CLIENT_V4, Lab, SERVER_V4, SERVER_V6,
    traffic::{Servers, tcp_connect_here, tcp_connects, udp_echoes},
};

/// The scanner: the lab's address on a network no client uses (no blocklist here).
pub const SCANNER: std::net::Ipv4Addr = crate::BLOCKED_V4;
/// The lab's database: it listens, and nobody uses it.
pub const DATABASE_PORT: u16 = 5432;

/// Day one: every port open, nothing dropped, the kernel counting who uses what.
pub const MONITOR_POLICY: &str = r#"# Day one: every port open, nothing dropped; the kernel counts who uses what.
mode = "monitor"
default = "allow"

[anomaly]
# The lab's baselines compare after one minute; on a host keep the default hour.
warm_up = "1m"
"#;

/// What the proposal leaves to the operator (it proposes ports only), added by hand: the
/// admins' network, which no detector may block (scan detection blocking warns without one)...
pub const NEVER_BLOCK: &str = r#"never_block = ["192.0.2.0/24"]"#;
/// ... and, at the end, the detection settings.
pub const ADDED_BY_HAND: &str = r#"
# Added by hand: learn proposes ports only.
[scan_detection]
action = "block"

[anomaly]
# The lab's baselines compare after one minute; on a host keep the default hour.
warm_up = "1m"
"#;

/// The burst through UDP/53: 1,500 datagrams of 1,400 bytes (2.1 MB) within seconds, where the
/// client's normal questions are 60 bytes a second.
const TUNNEL_DATAGRAMS: usize = 1500;
const TUNNEL_DATAGRAM_BYTES: usize = 1400;

/// Bounds on the waits: the first baseline minute, the anomaly's minute, the clients' thread.
const FIRST_MINUTE_WITHIN: Duration = Duration::from_secs(150);
const ANOMALY_WITHIN: Duration = Duration::from_secs(150);
const CLIENTS_AT_MOST: Duration = Duration::from_secs(900);

pub struct Outcome {
    /// Steps that did not do what the README says (empty: the walkthrough holds).
    pub unexpected: Vec<String>,
    /// Where the files are: policies, report, and the attachment's state (journal, evidence).
    pub dir: PathBuf,
    pub proposal: String,
    pub report_html: PathBuf,
    pub evidence: Option<PathBuf>,
    pub anomaly: Option<Value>,
}

/// Runs the walkthrough, leaving its files in `dir` (which must exist).
pub fn run(dir: &Path) -> Result<Outcome> {
    let mut walk = Walk { unexpected: Vec::new() };
    let lab = Lab::new()?;
    let iface = lab.server_if.clone();
    let ns = lab.server.name.clone();
    let _services = Servers::start_for(&lab.server, &[22, 80, 443, DATABASE_PORT], &[53], CLIENTS_AT_MOST);

    say(&format!(
        "lab: namespace {} (the internet) <-veth-> namespace {ns} (your server, interface {iface})",
        lab.client.name
    ));
    say(&format!(
        "  the server {SERVER_V4} / {SERVER_V6} listens on tcp 22 (SSH), 80, 443 (web), \
         {DATABASE_PORT} (a database) and udp 53 (DNS)"
    ));
    say(&format!(
        "  clients, every second: web users {ADMIN_V4} and {ADMIN_V6} on tcp 80 and 443;\n  \
         {CLIENT_V4} asks DNS questions on udp 53, and opens SSH every 3 s; nobody uses the database"
    ));

    let monitor = dir.join("monitor.toml");
    std::fs::write(&monitor, MONITOR_POLICY)?;
    step(
        "1. Attach in monitor mode: every port open, every packet counted",
        &[&format!(
            "portguard --netns {ns} attach {iface} --policy monitor.toml      # on a host: sudo portguard attach eth0 --policy monitor.toml"
        )],
    );
    for line in MONITOR_POLICY.lines() {
        say(&format!("  | {line}"));
    }
    let mut pg = Attached::start_keeping_state(&lab.server, &iface, path_str(&monitor)?, dir)?;
    let state_dir = pg.state_dir.path().to_owned();
    for line in pg.banner.lines() {
        say(&format!("  {line}"));
    }
    let clients = Clients::start(&lab);

    step(
        "2. Let the clients run; meanwhile a scanner probes ports 1-1024",
        &[&format!("nmap -sS -T5 -p 1-1024 -S {SCANNER} {SERVER_V4}      # from the client namespace")],
    );
    nmap(&lab, 1024)?;
    say("portguard's output meanwhile (monitor mode drops nothing; scan detection only alerts):");
    print_alerts(&mut pg, Duration::from_secs(1));

    say("\nwaiting for the baselines to learn their first minute (a baseline's unit is a minute)...");
    let learned = wait_until(FIRST_MINUTE_WITHIN, || {
        baselines(&pg).filter(|b| b["minutes_observed"].as_u64() >= Some(1))
    });
    match &learned {
        Some(known) => say(&format!(
            "  learned: {} minute(s), {} port(s) with a baseline",
            known["minutes_observed"], known["ports_tracked"]
        )),
        None => walk.unexpected("the baselines learned no minute within 150 s"),
    }

    step("3. Ask for a policy", &[&format!("portguard --netns {ns} learn {iface} > proposed.toml")]);
    let learn = pg.run(&["learn", &iface]);
    let proposal = String::from_utf8_lossy(&learn.stdout).into_owned();
    print_indented(&proposal);
    walk.expect(learn.status.success(), &format!("learn failed: {}", String::from_utf8_lossy(&learn.stderr)));
    walk.check_proposal(&proposal);
    let proposed = dir.join("proposed.toml");
    std::fs::write(&proposed, &proposal)?;

    step("4. Check it", &["portguard check proposed.toml"]);
    let check = pg.run(&["check", path_str(&proposed)?, "--deny-warnings"]);
    print_output(&check);
    walk.expect(check.status.success(), "check refused the proposal");

    step(
        "5. Add what the proposal leaves to you (it proposes ports only)",
        &["$EDITOR proposed.toml      # under `default = \"deny\"`, and at the end:"],
    );
    say(&format!("  | {NEVER_BLOCK}"));
    say("  | ...");
    for line in ADDED_BY_HAND.lines().skip(1) {
        say(&format!("  | {line}"));
    }
    let edited = add_by_hand(&proposal);
    walk.expect(edited.is_some(), "the proposal has no `default = \"deny\"` line to add under");
    std::fs::write(&proposed, edited.as_deref().unwrap_or(&proposal))?;

    step(
        "6. Enforce it, with a way back",
        &[&format!("portguard --netns {ns} reload {iface} --policy proposed.toml --confirm-within 5m")],
    );
    let reload = pg.run(&["reload", &iface, "--policy", path_str(&proposed)?, "--confirm-within", "5m"]);
    print_output(&reload);
    walk.expect(reload.status.success(), "reload refused the proposal");
    walk.expect(
        !String::from_utf8_lossy(&reload.stderr).contains("warning"),
        "reload warned about the edited proposal",
    );
    step("", &[&format!("portguard --netns {ns} confirm {iface}      # once SSH still works")]);
    let confirm = pg.run(&["confirm", &iface]);
    print_output(&confirm);
    walk.expect(confirm.status.success(), "confirm failed");

    step("7. Every client still gets in; the idle database and the scanner do not", &[]);
    walk.probe(&lab, "tcp", ADMIN_V4.into(), 80, true, "web user");
    walk.probe(&lab, "tcp", ADMIN_V4.into(), 443, true, "web user");
    walk.probe(&lab, "tcp", ADMIN_V6.into(), 443, true, "web user, IPv6");
    walk.probe(&lab, "udp", CLIENT_V4.into(), 53, true, "DNS");
    walk.probe(&lab, "tcp", CLIENT_V4.into(), 22, true, "SSH, from where it was used");
    walk.probe(&lab, "tcp", ADMIN_V4.into(), DATABASE_PORT, false, "the database nobody used");
    walk.probe(&lab, "tcp", SCANNER.into(), 80, false, "the scanner's network is left out");

    step("8. The scanner comes back", &[&format!("nmap -sS -T5 -p 1-1024 -S {SCANNER} {SERVER_V4}")]);
    let scan_started = Instant::now();
    nmap(&lab, 1024)?;
    print_alerts(&mut pg, Duration::from_secs(1));
    let block = wait_until(Duration::from_secs(10), || {
        events(&pg).into_iter().find(|e| e["event"] == "auto_blocked" && e["source"] == SCANNER.to_string())
    });
    let evidence = block.as_ref().and_then(|b| b["evidence"].as_str()).map(PathBuf::from);
    walk.expect(block.is_some(), "the scanner was not blocked");
    if let Some(path) = &evidence {
        // The evidence fills for `[evidence] capture_for` (10 s) after the block.
        let filled = scan_started + Duration::from_secs(12);
        std::thread::sleep(filled.saturating_duration_since(Instant::now()));
        say(&format!("  the scanner's first packets, kept as evidence: {}", path.display()));
        step(
            "9. Replay them against the policy",
            &[&format!("portguard verify --policy proposed.toml --pcap {}", path.display())],
        );
        let verify = pg.run(&["verify", "--policy", path_str(&proposed)?, "--pcap", path_str(path)?]);
        print_output(&verify);
        walk.expect(verify.status.success(), "verify could not replay the evidence");
        walk.expect(
            String::from_utf8_lossy(&verify.stdout).contains("drop"),
            "verify shows no dropped probe in the evidence",
        );
    } else {
        walk.unexpected("the block names no evidence file");
    }

    step("10. A DNS tunnel: 2.1 MB through udp/53 from 192.0.2.1 within seconds", &[]);
    say("  (its normal questions are 60 bytes a second; the anomaly comes with the minute's end)");
    let dns = SocketAddr::new(SERVER_V4.into(), 53);
    lab.client.run(move || -> std::io::Result<()> {
        let socket = UdpSocket::bind(SocketAddr::new(CLIENT_V4.into(), 0))?;
        for _ in 0..TUNNEL_DATAGRAMS {
            socket.send_to(&[0x54; TUNNEL_DATAGRAM_BYTES], dns)?;
        }
        Ok(())
    })?;
    let anomaly = wait_until(ANOMALY_WITHIN, || {
        events(&pg).into_iter().find(|e| e["event"] == "anomaly" && e["reason"] == "source_bytes")
    });
    print_alerts(&mut pg, Duration::from_secs(1));
    match &anomaly {
        Some(found) => {
            walk.expect(
                found["destination_port"] == 53 && found["source"] == "192.0.2.0",
                &format!("the anomaly does not name udp/53 and 192.0.2.0/24: {found}"),
            );
            // The baseline is the client's questions (a few kB a minute), the threshold at
            // least the floor (1 MB).
            walk.expect(
                found["expected"].as_u64().is_some_and(|e| e > 1000)
                    && found["threshold"].as_u64() >= Some(1_000_000),
                &format!("the anomaly's baseline is not the questions': {found}"),
            );
        }
        None => walk.unexpected("no anomaly for the DNS tunnel within 150 s"),
    }

    let report_html = dir.join("report.html");
    step(
        "11. The incident report",
        &[&format!("portguard --netns {ns} report {iface} --since 10m --html report.html")],
    );
    let report = pg.run(&["report", &iface, "--since", "10m", "--html", path_str(&report_html)?]);
    print_output(&report);
    // Exit 8 says the journal did not cover all of the window (it began minutes ago), as the
    // report's coverage line does; anything else is a failure.
    let incomplete = String::from_utf8_lossy(&report.stdout).contains("Coverage: INCOMPLETE");
    walk.expect(
        report.status.success() || (incomplete && report.status.code() == Some(8)),
        &format!("report failed ({})", report.status),
    );
    walk.check_report(&String::from_utf8_lossy(&report.stdout), &report_html, evidence.as_deref());

    let (answered, failed) = clients.stop();
    say(&format!(
        "\nthe clients' own traffic meanwhile: {answered} connections and questions answered, {failed} not"
    ));
    let (clean, stderr) = pg.stop();
    walk.expect(clean, &format!("portguard did not exit cleanly: {stderr}"));
    drop(lab);
    say(&format!("lab deleted; the files are in {}:", dir.display()));
    say("  monitor.toml, proposed.toml, report.html (open it in a browser)");
    say(&format!("  {} (the journal, the baselines and the evidence)", state_dir.display()));
    Ok(Outcome { unexpected: walk.unexpected, dir: dir.to_owned(), proposal, report_html, evidence, anomaly })
}

struct Walk {
    unexpected: Vec<String>,
}

impl Walk {
    fn unexpected(&mut self, what: &str) {
        say(&format!("  <-- UNEXPECTED: {what}"));
        self.unexpected.push(what.to_owned());
    }

    fn expect(&mut self, holds: bool, otherwise: &str) {
        if !holds {
            self.unexpected(otherwise);
        }
    }

    fn probe(&mut self, lab: &Lab, proto: &str, source: IpAddr, port: u16, expect_open: bool, who: &str) {
        let target = SocketAddr::new(Lab::server_addr(source.is_ipv6()), port);
        let open = match proto {
            "tcp" => tcp_connects(&lab.client, Some(source), target),
            _ => udp_echoes(&lab.client, Some(source), target),
        };
        let mark = if open == expect_open { "" } else { "   <-- UNEXPECTED" };
        say(&format!(
            "  {proto} {:>16} -> {:<22} {:<8} {who}{mark}",
            source.to_string(),
            target.to_string(),
            if open { "open" } else { "blocked" }
        ));
        if open != expect_open {
            self.unexpected.push(format!("{proto} from {source} to {target}: {who}"));
        }
    }

    /// The proposal opens the clients' ports to their networks and nothing else.
    fn check_proposal(&mut self, proposal: &str) {
        use portguard::policy::{LoadOptions, Proto, RuleKind, parse};
        let Ok(loaded) = parse(proposal, Path::new("proposed.toml"), LoadOptions::default()) else {
            return self.unexpected("the proposal does not parse");
        };
        let opened = |proto: Proto, port: u16| {
            loaded.policy.rules.iter().find(|r| {
                r.kind == RuleKind::Allow && r.proto == proto && r.ports.iter().any(|p| p.contains(&port))
            })
        };
        for (proto, port) in [(Proto::Tcp, 80), (Proto::Tcp, 443), (Proto::Tcp, 22), (Proto::Udp, 53)] {
            match opened(proto, port) {
                Some(rule) => {
                    let from = rule.from.as_ref().map(|nets| nets.iter().map(ToString::to_string).collect());
                    let from: Option<Vec<String>> = from;
                    let scanner_in =
                        from.as_ref().is_none_or(|nets| nets.iter().any(|n| n == "203.0.113.0/24"));
                    self.expect(!scanner_in, &format!("{proto}/{port} is opened to the scanner's network"));
                }
                None => self.unexpected(&format!("the proposal does not open {proto}/{port}")),
            }
        }
        self.expect(opened(Proto::Tcp, DATABASE_PORT).is_none(), "the proposal opens the idle database");
        self.expect(
            proposal.contains(&format!("tcp/{DATABASE_PORT}")),
            "the proposal does not name the idle database as a candidate to close",
        );
    }

    /// The report names the block, its evidence and the anomaly, as text and as HTML.
    fn check_report(&mut self, text: &str, html_path: &Path, evidence: Option<&Path>) {
        let html = std::fs::read_to_string(html_path).unwrap_or_default();
        self.expect(html.contains("<svg"), "the HTML report has no chart");
        if let Some(path) = evidence {
            let path = path.display().to_string();
            self.expect(text.contains(&path), "the report does not name the evidence file");
            self.expect(html.contains(&path), "the HTML report does not name the evidence file");
        }
        self.expect(text.contains(&SCANNER.to_string()), "the report does not name the scanner");
        self.expect(text.contains("udp/53"), "the report does not name udp/53's anomaly");
        self.expect(html.to_lowercase().contains("anomal"), "the HTML report shows no anomaly");
    }
}

/// The lab's clients, in the background until stopped (bounded by `CLIENTS_AT_MOST`): what
/// the baselines and `learn` see as normal use.
struct Clients {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Clients {
    fn start(lab: &Lab) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let (until, answered_, failed_, stop_) =
            (Instant::now() + CLIENTS_AT_MOST, answered.clone(), failed.clone(), stop.clone());
        let thread = lab.client.spawn(move || {
            let web = [
                (IpAddr::from(ADMIN_V4), SocketAddr::new(SERVER_V4.into(), 80)),
                (IpAddr::from(ADMIN_V4), SocketAddr::new(SERVER_V4.into(), 443)),
                (IpAddr::from(ADMIN_V6), SocketAddr::new(SERVER_V6.into(), 80)),
                (IpAddr::from(ADMIN_V6), SocketAddr::new(SERVER_V6.into(), 443)),
            ];
            let Ok(questions) = UdpSocket::bind(SocketAddr::new(CLIENT_V4.into(), 0)) else { return };
            let dns = SocketAddr::new(SERVER_V4.into(), 53);
            let mut second = 0u64;
            while !stop_.load(Ordering::Relaxed) && Instant::now() < until {
                let tally = |ok: bool| {
                    let counter = if ok { &answered_ } else { &failed_ };
                    counter.fetch_add(1, Ordering::Relaxed);
                };
                for (source, target) in web {
                    tally(tcp_connect_here(Some(source), target));
                }
                tally(questions.send_to(&[0x41; 60], dns).is_ok());
                if second.is_multiple_of(3) {
                    tally(tcp_connect_here(Some(CLIENT_V4.into()), SocketAddr::new(SERVER_V4.into(), 22)));
                }
                second += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        Self { stop, answered, failed, thread: Some(thread) }
    }

    fn stop(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        (self.answered.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn nmap(lab: &Lab, last_port: u16) -> Result<()> {
    let ports = format!("1-{last_port}");
    let scanner = SCANNER.to_string();
    let output = lab
        .nmap_output(SERVER_V4.into(), &["-sS", "-T5", "-p", &ports, "-S", &scanner, "-e", &lab.client_if])?;
    anyhow::ensure!(output.status.success(), "nmap failed: {}", String::from_utf8_lossy(&output.stderr));
    for line in
        String::from_utf8_lossy(&output.stdout).lines().filter(|l| l.contains("/tcp") || l.contains("done"))
    {
        say(&format!("  nmap| {line}"));
    }
    Ok(())
}

/// The proposal with `NEVER_BLOCK` under its `default` line (top-level keys come before the
/// first table) and `ADDED_BY_HAND` at the end.
fn add_by_hand(proposal: &str) -> Option<String> {
    let at = proposal.find("default = \"deny\"\n")? + "default = \"deny\"\n".len();
    Some(format!("{}{NEVER_BLOCK}\n{}{ADDED_BY_HAND}", &proposal[..at], &proposal[at..]))
}

fn baselines(pg: &Attached) -> Option<Value> {
    let output = pg.run(&["stats", &pg.iface, "--json"]);
    let stats: Value = serde_json::from_slice(&output.stdout).ok()?;
    let first = stats.as_array().and_then(|all| all.first()).unwrap_or(&stats);
    Some(first["baselines"].clone()).filter(|b| !b.is_null())
}

/// The journal's events of the last hour.
fn events(pg: &Attached) -> Vec<Value> {
    let output = pg.run(&["events", &pg.iface, "--since", "1h", "--json"]);
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// Polls `found` every second until it gives something or `within` passes.
fn wait_until<T>(within: Duration, mut found: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = found() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// What the loader printed since the last call, drop events left out (sampled per source,
/// they would bury the alerts).
fn print_alerts(pg: &mut Attached, wait: Duration) {
    let already = pg.output.len();
    let lines = pg.collect(wait);
    let new = &lines[already..];
    let drops = new.iter().filter(|l| l.contains(" DROP ")).count();
    for line in new.iter().filter(|l| !l.contains(" DROP ")) {
        say(&format!("  | {line}"));
    }
    if drops > 0 {
        say(&format!("  | ... and {drops} drop event line(s), sampled per source"));
    }
}

fn step(title: &str, commands: &[&str]) {
    if !title.is_empty() {
        say(&format!("\n== {title} =="));
    }
    for command in commands {
        say(&format!("$ {command}"));
    }
}

fn print_output(output: &std::process::Output) {
    print_indented(&String::from_utf8_lossy(&output.stdout));
    print_indented(&String::from_utf8_lossy(&output.stderr));
}

fn print_indented(text: &str) {
    for line in text.lines() {
        say(&format!("  {line}"));
    }
}

fn say(line: &str) {
    println!("{line}");
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str().with_context(|| format!("{} is not UTF-8", path.display()))
}
