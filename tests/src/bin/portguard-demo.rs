//! `cargo xtask demo`: portguard on a namespace lab. Two network namespaces joined by a veth
//! pair stand in for "the internet" and "your server"; no real interface is touched, and
//! everything is deleted at the end (or on Ctrl-C, by the guards' Drop). With `--walkthrough`,
//! the README's walkthrough from monitor mode to an incident report (about four minutes).

use std::{
    net::{IpAddr, SocketAddr},
    process::ExitCode,
};

use portguard_tests::{
    ADMIN_V4, ADMIN_V6, Attached, BLOCKED_V4, BLOCKED_V6, CLIENT_V4, CLIENT_V6, INTRUDER_V4, Lab, SCANNER_V4,
    SERVER_V4, SERVER_V6,
    portguard_cli::portguard,
    traffic::{Servers, tcp_connects, udp_echoes},
};

const POLICY: &str = include_str!("../../../examples/edge-host.toml");
const POLICY_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/edge-host.toml");
const WALKTHROUGH_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/walkthrough");

struct Probe {
    proto: &'static str,
    source: IpAddr,
    target: IpAddr,
    port: u16,
    expect_open: bool,
    why: &'static str,
}

fn main() -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("the demo needs root (network namespaces, XDP): sudo -E cargo xtask demo");
        return ExitCode::FAILURE;
    }
    let result = match std::env::args().nth(1).as_deref() {
        None => run(),
        Some("--walkthrough") => walkthrough(),
        Some(other) => {
            eprintln!("unknown argument {other:?}: the demo takes none, or --walkthrough");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("demo failed: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<bool> {
    println!("== portguard demo: a namespace lab, no real interface touched ==\n");
    let lab = Lab::new()?;
    println!(
        "lab: namespace {} (the internet) <-veth-> namespace {} (your server)",
        lab.client.name, lab.server.name
    );
    println!(
        "  server {SERVER_V4} / {SERVER_V6} on {}: services on tcp 22, 23, 80, 443, 3306, udp 53, 5353",
        lab.server_if
    );
    println!(
        "  client {CLIENT_V4} / {CLIENT_V6}, admin {ADMIN_V4} / {ADMIN_V6}, attacker {BLOCKED_V4} / {BLOCKED_V6}\n"
    );
    let _services = Servers::start(&lab.server, &[22, 23, 80, 443, 3306], &[53, 5353]);

    println!("policy (examples/edge-host.toml):");
    for line in POLICY.lines().filter(|l| !l.trim().is_empty()) {
        println!("  | {line}");
    }
    println!(
        "\n$ portguard --netns {} attach {} --policy examples/edge-host.toml",
        lab.server.name, lab.server_if
    );
    let mut attached = Attached::start_file(&lab.server, &lab.server_if, POLICY_PATH, &[], None)?;
    for line in attached.banner.lines() {
        println!("  {line}");
    }

    let server: IpAddr = SERVER_V4.into();
    let client: IpAddr = CLIENT_V4.into();
    let probes = probes();
    println!("\ntraffic from the client namespace:");
    let mut all_as_expected = true;
    for probe in &probes {
        let target = SocketAddr::new(probe.target, probe.port);
        let open = match probe.proto {
            "tcp" => tcp_connects(&lab.client, Some(probe.source), target),
            _ => udp_echoes(&lab.client, Some(probe.source), target),
        };
        let mark = if open == probe.expect_open { "" } else { "   <-- UNEXPECTED" };
        all_as_expected &= open == probe.expect_open;
        println!(
            "  {} {:>15} -> {:<22} {:<10} {}{mark}",
            probe.proto,
            probe.source.to_string(),
            target.to_string(),
            if open { "open" } else { "blocked" },
            probe.why
        );
    }

    println!("portguard's output meanwhile (drop events, sampled per source):");
    print_new_lines(&mut attached);

    println!("\n== a port scan: nmap -sS -p 1000-1300 from {SCANNER_V4} ==");
    let scanner = SCANNER_V4.to_string();
    let nmap = lab.nmap_output(
        SERVER_V4.into(),
        &["-sS", "-T5", "-p", "1000-1300", "-S", &scanner, "-e", &lab.client_if],
    )?;
    let summary = String::from_utf8_lossy(&nmap.stdout);
    for line in
        summary.lines().filter(|l| l.contains("/tcp") || l.starts_with("Not shown") || l.contains("done"))
    {
        println!("  nmap| {line}");
    }
    println!("portguard's alerts while it ran (scan detected and blocked in the kernel):");
    print_new_lines(&mut attached);
    let web = SocketAddr::new(server, 80);
    let scanner_blocked = !tcp_connects(&lab.client, Some(SCANNER_V4.into()), web);
    let client_fine = tcp_connects(&lab.client, Some(client), web);
    println!(
        "  the scanner can reach the web port now: {}",
        if scanner_blocked { "no (blocked)" } else { "YES   <-- UNEXPECTED" }
    );
    println!("  other clients still can: {}", if client_fine { "yes" } else { "NO   <-- UNEXPECTED" });
    all_as_expected &= scanner_blocked && client_fine;

    println!("\n== a trap port: one connection attempt to tcp/23 from {INTRUDER_V4} ==");
    let _ = tcp_connects(&lab.client, Some(INTRUDER_V4.into()), SocketAddr::new(server, 23));
    print_new_lines(&mut attached);
    let intruder_blocked = !tcp_connects(&lab.client, Some(INTRUDER_V4.into()), web);
    println!(
        "  the intruder can reach the web port now: {}",
        if intruder_blocked { "no (blocked for 1h)" } else { "YES   <-- UNEXPECTED" }
    );
    all_as_expected &= intruder_blocked;

    println!("\n$ portguard stats {}", lab.server_if);
    let stats = portguard(Some(&lab.server), &["stats", &lab.server_if]);
    print!("{}", String::from_utf8_lossy(&stats.stdout));
    eprint!("{}", String::from_utf8_lossy(&stats.stderr));

    println!("\n$ portguard status");
    let status = portguard(Some(&lab.server), &["status"]);
    print!("{}", String::from_utf8_lossy(&status.stdout));

    println!("\nstopping portguard (SIGTERM), which detaches and removes its pins");
    let (clean, stderr) = attached.stop();
    if !clean {
        eprintln!("portguard did not exit cleanly: {stderr}");
        all_as_expected = false;
    }
    drop(lab);
    println!("lab deleted");
    if all_as_expected {
        println!("\ndemo: every probe behaved as the policy says");
    } else {
        println!("\ndemo: some probes did not behave as the policy says (see UNEXPECTED above)");
    }
    Ok(all_as_expected)
}

/// The README's walkthrough (`portguard_tests::walkthrough`), its files left in
/// target/walkthrough/ for the reader.
fn walkthrough() -> anyhow::Result<bool> {
    let dir = std::path::Path::new(WALKTHROUGH_DIR);
    // Only what an earlier walkthrough left: its policies, report and state directories.
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    let dir = &dir.canonicalize()?;
    println!("== portguard walkthrough: a first week in ten minutes, on a namespace lab ==");
    let outcome = portguard_tests::walkthrough::run(dir)?;
    if outcome.unexpected.is_empty() {
        println!("\nwalkthrough: every step did what the README says");
        Ok(true)
    } else {
        println!("\nwalkthrough: {} step(s) did not do what the README says:", outcome.unexpected.len());
        for what in &outcome.unexpected {
            println!("  - {what}");
        }
        Ok(false)
    }
}

/// Prints what `attach` printed (its alerts) since the last call.
fn print_new_lines(attached: &mut Attached) {
    let already = attached.output.len();
    let lines = attached.collect(std::time::Duration::from_millis(700));
    for line in &lines[already..] {
        println!("  | {line}");
    }
}

fn probes() -> Vec<Probe> {
    let client: IpAddr = CLIENT_V4.into();
    let client6: IpAddr = CLIENT_V6.into();
    let server: IpAddr = SERVER_V4.into();
    let server6: IpAddr = SERVER_V6.into();
    let probe = |proto, source, target, port, expect_open, why| Probe {
        proto,
        source,
        target,
        port,
        expect_open,
        why,
    };
    vec![
        probe("tcp", client, server, 80, true, "allowed (rule 1: web)"),
        probe("tcp", client, server, 443, true, "allowed (rule 1: web)"),
        probe("tcp", client, server, 5900, false, "denied (rule 4: legacy remote access)"),
        probe("tcp", client, server, 3306, false, "no rule names it: default deny"),
        probe("tcp", client, server, 22, false, "SSH only from the admin network"),
        probe("tcp", ADMIN_V4.into(), server, 22, true, "SSH from the admin network (rule 2)"),
        probe("tcp", BLOCKED_V4.into(), server, 80, false, "source in the blocklist"),
        probe("udp", client, server, 53, true, "allowed (rule 3: DNS)"),
        probe("udp", client, server, 5353, false, "default deny"),
        probe("tcp", client6, server6, 443, true, "allowed, IPv6"),
        probe("tcp", client6, server6, 3306, false, "default deny, IPv6"),
        probe("tcp", ADMIN_V6.into(), server6, 22, true, "SSH from the IPv6 admin network"),
        probe("tcp", BLOCKED_V6.into(), server6, 443, false, "IPv6 source in the blocklist"),
    ]
}
