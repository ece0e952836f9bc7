//! Live operations on a running attachment: emergency blocks, expiry across restarts, a
//! 1,000,000-entry blocklist, reloads without a gap, SIGKILL and adoption, and changes that
//! roll back unless confirmed.

use std::{
    io::Write as _,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use portguard::{
    exit::Exit,
    judge::Judge,
    policy::{LoadOptions, compile::compile},
};
use portguard_common::Reason;
use portguard_tests::{
    ADMIN_V4, ADMIN_V6, Attached, CLIENT_V4, CLIENT_V6, Lab, SERVER_V4, SERVER_V6, packets,
    portguard_cli::{Killer, applied, exited},
    require_root,
    traffic::{Servers, tcp_connects},
};
use serde_json::Value;

use portguard_tests::portguard_cli::succeeded as ok;
const WEB: &str = portguard_tests::portguard_cli::WEB_POLICY;

fn web(v6: bool) -> SocketAddr {
    SocketAddr::new(if v6 { SERVER_V6.into() } else { SERVER_V4.into() }, 80)
}

#[test]
fn block_and_unblock_take_effect_on_the_next_connection() {
    require_root!();
    let lab = Lab::new().unwrap();
    let _servers = Servers::start(&lab.server, &[80], &[]);
    let pg = Attached::start(&lab.server, &lab.server_if, WEB, &[]).unwrap();
    let iface = lab.server_if.as_str();
    let cases: [(&str, IpAddr, bool); 4] = [
        ("192.0.2.1", CLIENT_V4.into(), false),
        ("192.0.2.0/28", CLIENT_V4.into(), false),
        ("2001:db8::1", CLIENT_V6.into(), true),
        ("2001:db8::/120", CLIENT_V6.into(), true),
    ];
    for (target, source, v6) in cases {
        assert!(tcp_connects(&lab.client, Some(source), web(v6)), "{target}: open before");
        let mut args = vec!["block", target, "--for", "1h", "--reason", "test", "--iface", iface];
        // The networks cover the server's own address too: refused unless forced.
        if target.contains('/') {
            let refused = pg.run(&args);
            assert!(!refused.status.success());
            let said = String::from_utf8_lossy(&refused.stderr);
            assert!(said.contains("covers this host's address"), "{target}: {said}");
            assert!(tcp_connects(&lab.client, Some(source), web(v6)), "{target}: refused, nothing blocked");
            args.push("--force");
        }
        let out = ok(pg.run(&args));
        assert!(out.contains("in effect on"), "{out}");
        assert!(!tcp_connects(&lab.client, Some(source), web(v6)), "{target}: blocked right after `block`");
        // Other sources are untouched.
        let other: IpAddr = if v6 { ADMIN_V6.into() } else { ADMIN_V4.into() };
        assert!(tcp_connects(&lab.client, Some(other), web(v6)), "{target}: others still pass");

        let list: Value = serde_json::from_str(&ok(pg.run(&["blocks", "--json", "--iface", iface]))).unwrap();
        let row = list.as_array().unwrap().iter().find(|r| r["origin"] == "manual").expect("listed");
        assert_eq!(row["reason"], "test");
        assert!(row["remaining_secs"].as_u64().unwrap() > 3500);

        ok(pg.run(&["unblock", target, "--iface", iface]));
        assert!(tcp_connects(&lab.client, Some(source), web(v6)), "{target}: open right after `unblock`");
    }
    assert!(applied(&pg.stats(), "manual_block") >= 4);
    // Bad input changes nothing and says why.
    let bad = pg.run(&["block", "192.0.2.1", "300.1.1.1", "--iface", iface]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("300.1.1.1"));
    assert!(tcp_connects(&lab.client, None, web(false)));
}

#[test]
fn expiry_is_exact_across_a_loader_restart() {
    require_root!();
    let lab = Lab::new().unwrap();
    let _servers = Servers::start(&lab.server, &[80], &[]);
    let mut pg = Attached::start(&lab.server, &lab.server_if, WEB, &[]).unwrap();
    let blocked_at = Instant::now();
    ok(pg.run(&["block", "192.0.2.1", "--for", "6s", "--iface", &lab.server_if]));
    assert!(!tcp_connects(&lab.client, None, web(false)));
    // The loader dies hard; the pinned programs keep enforcing the block.
    pg.kill();
    assert!(!tcp_connects(&lab.client, None, web(false)), "enforced with no loader");
    // A new loader adopts the attachment and keeps the block's end time.
    let mut policy = tempfile::NamedTempFile::new().unwrap();
    policy.write_all(WEB.as_bytes()).unwrap();
    let restarted = pg
        .command(&["attach", &lab.server_if, "--policy", policy.path().to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let restarted = Killer(restarted);
    std::thread::sleep(Duration::from_secs(1));
    assert!(!tcp_connects(&lab.client, None, web(false)), "still blocked after the restart");
    while blocked_at.elapsed() < Duration::from_millis(6300) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(tcp_connects(&lab.client, None, web(false)), "the block ended 6 s after it started");
    drop(restarted);
}

/// A blocklist like the public ones: mostly single addresses, some networks, IPv6, comments,
/// blank lines, duplicates, overlaps, and a few bad lines. Returns the text, the bad line
/// numbers and some listed addresses.
fn million_entry_list() -> (String, Vec<usize>, Vec<IpAddr>) {
    let mut text = String::with_capacity(20_000_000);
    let mut bad = Vec::new();
    let mut sample = Vec::new();
    let mut line = 0usize;
    let push = |text: &mut String, entry: &str| {
        text.push_str(entry);
        text.push('\n');
    };
    // A deterministic generator: the same list on every run.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    push(&mut text, "# portguard test blocklist: 1,000,000 entries");
    line += 1;
    let mut entries = 0;
    while entries < 1_000_000 {
        line += 1;
        let r = next();
        let entry = match entries % 100 {
            0 => format!(
                "{}.{}.{}.0/24 ; SBL{}",
                1 + (r >> 8) % 220,
                (r >> 16) % 256,
                (r >> 24) % 256,
                entries
            ),
            1 => format!("{}.{}.0.0/{}", 1 + (r >> 8) % 220, (r >> 16) % 256, 16 + (r >> 32) % 7),
            2..=5 => format!("2001:db8:{:x}:{:x}::/64", (r >> 8) & 0xffff, (r >> 24) & 0xffff),
            6 => format!("2001:db8:{:x}::{:x}", (r >> 8) & 0xffff, (r >> 24) & 0xffff),
            _ => {
                let addr = format!(
                    "{}.{}.{}.{}",
                    1 + (r >> 8) % 220,
                    (r >> 16) % 256,
                    (r >> 24) % 256,
                    (r >> 32) % 256
                );
                if entries % 997 == 0 {
                    sample.push(addr.parse().unwrap());
                }
                addr
            }
        };
        push(&mut text, &entry);
        entries += 1;
        if entries % 250_000 == 0 {
            line += 1;
            push(&mut text, "not.an.address");
            bad.push(line);
        }
        if entries % 50_000 == 0 {
            line += 3;
            push(&mut text, "");
            push(&mut text, "# a comment line");
            push(&mut text, &entry); // a duplicate
        }
    }
    assert_eq!(bad.len(), 4);
    // The lab's admin addresses are in it; the client's are not.
    push(&mut text, "198.51.100.7");
    push(&mut text, "2001:db8:1::7");
    sample.push(ADMIN_V4.into());
    sample.push(ADMIN_V6.into());
    (text, bad, sample)
}

#[test]
fn a_million_entry_blocklist_loads_and_enforces() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let (text, bad_lines, sample) = million_entry_list();
    std::fs::write(dir.path().join("blocklist.txt"), text).unwrap();
    let policy_text = "mode = \"enforce\"\ndefault = \"deny\"\n[[allow]]\nproto = \"tcp\"\nports = [80]\n[blocklist]\nfiles = [\"blocklist.txt\"]\n";
    let policy_path = dir.path().join("policy.toml");
    std::fs::write(&policy_path, policy_text).unwrap();

    // check names every bad line and goes on with the good ones.
    let check = portguard_tests::portguard_cli::portguard(None, &["check", policy_path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{stderr}");
    for line in &bad_lines {
        assert!(
            stderr.contains(&format!("blocklist.txt:{line}:1: warning: `not.an.address`")),
            "line {line}: {stderr}"
        );
    }
    let strict = portguard_tests::portguard_cli::portguard(
        None,
        &["check", "--strict", policy_path.to_str().unwrap()],
    );
    assert!(
        !strict.status.success(),
        "--strict must refuse bad lines: {}{}",
        String::from_utf8_lossy(&strict.stdout),
        String::from_utf8_lossy(&strict.stderr)
    );

    // Attach it to a live lab.
    let lab = Lab::new().unwrap();
    let _servers = Servers::start(&lab.server, &[80], &[]);
    let started = Instant::now();
    let pg =
        Attached::start_file(&lab.server, &lab.server_if, policy_path.to_str().unwrap(), &[], None).unwrap();
    eprintln!("attach with a 1,000,000-entry blocklist took {:?}", started.elapsed());
    assert!(!tcp_connects(&lab.client, Some(ADMIN_V4.into()), web(false)), "listed v4 source dropped");
    assert!(!tcp_connects(&lab.client, Some(ADMIN_V6.into()), web(true)), "listed v6 source dropped");
    assert!(tcp_connects(&lab.client, Some(CLIENT_V4.into()), web(false)), "unlisted source passes");
    assert!(tcp_connects(&lab.client, Some(CLIENT_V6.into()), web(true)), "unlisted v6 source passes");
    drop(pg);

    // And in the kernel, without an interface: a sample of listed addresses and unlisted ones.
    let loaded = portguard::policy::load(&policy_path, LoadOptions::default()).unwrap();
    let image = compile(&loaded.policy, 1).unwrap();
    let mut judge = Judge::new(&image, &loaded.policy).unwrap();
    for source in &sample {
        let dst: IpAddr = if source.is_ipv6() { SERVER_V6.into() } else { SERVER_V4.into() };
        let outcome = judge.run(&packets::tcp(*source, dst, 1234, 80, packets::SYN)).unwrap();
        assert_eq!(outcome.reason, Reason::DropBlocklist, "{source}");
    }
    for unlisted in ["192.0.2.1", "203.0.113.9", "2001:db8:ffff:ffff::1", "224.1.2.3"] {
        let source: IpAddr = unlisted.parse().unwrap();
        let dst: IpAddr = if source.is_ipv6() { SERVER_V6.into() } else { SERVER_V4.into() };
        let outcome = judge.run(&packets::tcp(source, dst, 1234, 80, packets::SYN)).unwrap();
        assert_eq!(outcome.reason, Reason::PassPortAllowed, "{source}");
    }
}

/// Two policies that agree on one thing: UDP to port 5000 from 192.0.2.1 passes. A packet
/// judged by a mix of them (the port table of one, the source list of the other) is dropped
/// as `source_not_allowed`. A reload that is not atomic shows up as such drops.
const GAP_A: &str = r#"
mode = "enforce"
default = "deny"
[[allow]]
proto = "udp"
ports = [5000]
from = ["192.0.2.0/28"]
[[allow]]
proto = "tcp"
ports = [22]
"#;
const GAP_B: &str = r#"
mode = "enforce"
default = "deny"
[[allow]]
proto = "udp"
ports = [5000]
[[allow]]
proto = "tcp"
ports = [22]
"#;

#[test]
fn a_hundred_reloads_under_traffic_without_a_gap() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.toml"), dir.path().join("b.toml"));
    std::fs::write(&a, GAP_A).unwrap();
    std::fs::write(&b, GAP_B).unwrap();
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "default = \"deny\"\n[[allow]]\nproto = \"udp\"\nports = [70000]\n").unwrap();

    let lab = Lab::new().unwrap();
    let pg = Attached::start_file(&lab.server, &lab.server_if, a.to_str().unwrap(), &[], None).unwrap();
    let before = pg.stats();

    // Steady traffic: UDP datagrams from 192.0.2.1, bounded in count and time.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let sender = {
        let (stop, sent) = (stop.clone(), sent.clone());
        lab.client.spawn(move || {
            let socket = std::net::UdpSocket::bind("192.0.2.1:0").unwrap();
            let target = SocketAddr::new(SERVER_V4.into(), 5000);
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed)
                && started.elapsed() < Duration::from_secs(120)
                && sent.load(Ordering::Relaxed) < 5_000_000
            {
                for _ in 0..50 {
                    if socket.send_to(b"gap?", target).is_ok() {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    for round in 0..100 {
        let policy = if round % 2 == 0 { &b } else { &a };
        ok(pg.run(&["reload", &lab.server_if, "--policy", policy.to_str().unwrap()]));
    }
    // An invalid policy is refused and the running one (A) stays.
    let refused = pg.run(&["reload", &lab.server_if, "--policy", broken.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("port 70000 is out of range"));
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    std::thread::sleep(Duration::from_millis(300));

    let after = pg.stats();
    let judged = |name: &str| applied(&after, name) - applied(&before, name);
    let sent = sent.load(Ordering::Relaxed);
    eprintln!(
        "sent {sent}: source_allowed {}, port_allowed {}, source_not_allowed {}",
        judged("source_allowed"),
        judged("port_allowed"),
        judged("source_not_allowed")
    );
    assert_eq!(judged("source_not_allowed"), 0, "a packet saw half of each policy");
    assert_eq!(judged("default_deny"), 0);
    assert!(judged("source_allowed") > 0 && judged("port_allowed") > 0, "both policies judged traffic");
    assert!(judged("source_allowed") + judged("port_allowed") >= sent * 9 / 10, "the stream was judged");
    // Counters carried across 100 generations, and the last valid policy (A) runs.
    assert!(after["packets"].as_u64().unwrap() >= before["packets"].as_u64().unwrap() + sent * 9 / 10);
    let status: Value = serde_json::from_slice(&pg.run(&["status", "--json"]).stdout).unwrap();
    let me = status.as_array().unwrap().iter().find(|s| s["interface"] == lab.server_if.as_str()).unwrap();
    assert_eq!(me["generation"], 101);
    assert!(me["policy"].as_str().unwrap().ends_with("a.toml"));
}

/// The sizes of the maps that carry over between generations cannot change on a reload: the
/// reload says which changed sizes it kept, old and new, with a loader and without, and only
/// while they differ from the maps' real sizes (issue 10, item 11).
#[test]
fn reload_names_the_map_sizes_it_keeps() {
    require_root!();
    let lab = Lab::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (bigger, same) = (dir.path().join("bigger.toml"), dir.path().join("same.toml"));
    std::fs::write(
        &bigger,
        format!("{WEB}\n[limits]\nflows = 131072\nsources = 65536\n\n[events]\nring_buffer_kib = 1024\n"),
    )
    .unwrap();
    std::fs::write(&same, WEB).unwrap();
    let reload = |pg: &Attached, policy: &std::path::Path| {
        ok(pg.run(&["reload", &pg.iface, "--policy", policy.to_str().unwrap()]))
    };
    let kept = "kept as attached: [limits] flows 65536 -> 131072, [events] ring_buffer_kib 256 -> 1024 (";

    let mut pg = Attached::start(&lab.server, &lab.server_if, WEB, &[]).unwrap();
    let said = reload(&pg, &bigger);
    assert!(said.contains(kept), "{said}");
    assert!(said.contains(&format!("`portguard detach {}`, then attach", pg.iface)), "{said}");
    // `sources` is set, but to the size the map has.
    assert!(!said.contains("sources"), "{said}");
    // True the second time too: the maps still have their sizes.
    assert!(reload(&pg, &bigger).contains(kept));
    assert!(!reload(&pg, &same).contains("kept as attached"));

    // With the loader gone (the pins enforce on), `reload` switches the links itself and says
    // the same.
    pg.kill();
    let said = reload(&pg, &bigger);
    assert!(said.contains("(no loader running)") && said.contains(kept), "{said}");
    // Its guard detaches: the maps go with the pins.
    drop(pg);

    // Made anew with the bigger sizes, they agree with that policy and not with the other.
    let pg = Attached::start_file(&lab.server, &lab.server_if, bigger.to_str().unwrap(), &[], None).unwrap();
    assert!(!reload(&pg, &bigger).contains("kept as attached"));
    let said = reload(&pg, &same);
    assert!(
        said.contains(
            "kept as attached: [limits] flows 131072 -> 65536, [events] ring_buffer_kib 1024 -> 256"
        ),
        "{said}"
    );
}

#[test]
fn sigkill_leaves_enforcement_then_attach_adopts_and_detach_cleans() {
    require_root!();
    let lab = Lab::new().unwrap();
    let _servers = Servers::start(&lab.server, &[22, 80, 3306], &[]);
    let mut pg = Attached::start(&lab.server, &lab.server_if, WEB, &[]).unwrap();
    assert!(!tcp_connects(&lab.client, None, SocketAddr::new(SERVER_V4.into(), 3306)));
    let packets_before = pg.stats()["packets"].as_u64().unwrap();
    pg.kill();
    assert!(!tcp_connects(&lab.client, None, SocketAddr::new(SERVER_V4.into(), 3306)), "still enforced");
    assert!(tcp_connects(&lab.client, None, web(false)));
    let status = exited(pg.run(&["status"]), Exit::NotRunning);
    assert!(status.contains("loader NOT running"), "{status}");

    let mut policy = tempfile::NamedTempFile::new().unwrap();
    policy.write_all(WEB.replace("[22, 80]", "[22, 80, 3306]").as_bytes()).unwrap();
    let adopter = pg
        .command(&["attach", &lab.server_if, "--policy", policy.path().to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut adopter = Killer(adopter);
    let mut banner = String::new();
    {
        use std::io::BufRead as _;
        let stdout = adopter.0.stdout.take().unwrap();
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            banner.push_str(&line);
            banner.push('\n');
            if line.starts_with("running until") {
                break;
            }
        }
    }
    assert!(banner.contains("adopted the programs left pinned"), "{banner}");
    assert!(
        tcp_connects(&lab.client, None, SocketAddr::new(SERVER_V4.into(), 3306)),
        "the adopted policy rules"
    );
    let stats: Value = serde_json::from_slice(&pg.run(&["stats", &lab.server_if, "--json"]).stdout).unwrap();
    assert!(stats["packets"].as_u64().unwrap() > packets_before, "counters carried over");

    ok(pg.run(&["detach", &lab.server_if]));
    let _ = adopter.0.wait();
    assert!(!portguard_tests::portguard_cli::pin_dir(&lab.server, &lab.server_if).exists());
    let link = lab.server.exec("ip", &["-d", "link", "show", "dev", &lab.server_if]).unwrap();
    assert!(!String::from_utf8_lossy(&link.stdout).contains("xdp"));
    let net: Value = serde_json::from_slice(
        &lab.server.exec("bpftool", &["-j", "net", "show", "dev", &lab.server_if]).unwrap().stdout,
    )
    .unwrap();
    for hook in ["xdp", "tc", "tcx"] {
        assert_eq!(net[0].get(hook).and_then(Value::as_array).map_or(0, Vec::len), 0, "{hook}: {net}");
    }
}

#[test]
fn unconfirmed_changes_roll_back_by_themselves() {
    require_root!();
    let lab = Lab::new().unwrap();
    let _servers = Servers::start(&lab.server, &[80, 8080], &[]);
    let pin_dir = portguard_tests::portguard_cli::pin_dir(&lab.server, &lab.server_if);

    // An attach nobody confirms goes away, says so, and exits with its own code.
    let mut pg = Attached::start(&lab.server, &lab.server_if, WEB, &["--confirm-within", "3s"]).unwrap();
    assert!(!tcp_connects(&lab.client, None, SocketAddr::new(SERVER_V4.into(), 8080)));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&pin_dir).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!std::path::Path::new(&pin_dir).exists(), "rolled back: detached");
    assert!(tcp_connects(&lab.client, None, SocketAddr::new(SERVER_V4.into(), 8080)));
    let status = pg.wait_exit(Duration::from_secs(15)).expect("the rolled-back loader exits");
    assert_eq!(status.code(), Some(i32::from(Exit::RolledBack.code())), "{status:?}");
    let printed = pg.collect(Duration::from_millis(200)).join("\n");
    assert!(
        printed.contains(&format!("{} ROLLBACK not confirmed within 3s: detached", lab.server_if)),
        "{printed}"
    );
    drop(pg);

    // A confirmed attach stays.
    let pg = Attached::start(&lab.server, &lab.server_if, WEB, &["--confirm-within", "3s"]).unwrap();
    ok(pg.run(&["confirm", &lab.server_if]));
    std::thread::sleep(Duration::from_secs(4));
    assert!(std::path::Path::new(&pin_dir).exists(), "confirmed: still attached");

    // A reload nobody confirms returns to the previous policy.
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("open.toml");
    std::fs::write(&open, WEB.replace("[22, 80]", "[22, 80, 8080]")).unwrap();
    ok(pg.run(&["reload", &lab.server_if, "--policy", open.to_str().unwrap(), "--confirm-within", "3s"]));
    assert!(tcp_connects(&lab.client, None, SocketAddr::new(SERVER_V4.into(), 8080)), "new policy runs");
    let status = exited(pg.run(&["status"]), Exit::ConfirmationPending);
    assert!(status.contains("WAITING FOR CONFIRMATION"), "{status}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while tcp_connects(&lab.client, None, SocketAddr::new(SERVER_V4.into(), 8080))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        !tcp_connects(&lab.client, None, SocketAddr::new(SERVER_V4.into(), 8080)),
        "rolled back to the old policy"
    );
    assert!(tcp_connects(&lab.client, None, web(false)));
    // The loader says so in a line of its own, with what the rollback undid, and keeps running.
    let mut pg = pg;
    let printed = pg.collect(Duration::from_millis(500)).join("\n");
    let rollback = printed.lines().find(|l| l.contains(" ROLLBACK ")).unwrap_or_else(|| panic!("{printed}"));
    assert!(
        rollback.contains("not confirmed within 3s: back to the previous policy, generation 3")
            && rollback.contains("+allow tcp 22,80")
            && rollback.contains("-allow tcp 22,80,8080"),
        "{rollback}"
    );
    assert!(pg.is_running(), "a rolled-back reload leaves the loader running");
}
