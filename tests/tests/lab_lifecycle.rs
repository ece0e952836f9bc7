//! Attachments over their life when things go wrong (issue 10): an interface deleted and
//! created again under the same name, a loader killed half-way through attaching, a reload
//! whose switch happened but whose record did not; and attachments of the same name in two
//! network namespaces, which share nothing.

use std::{
    net::SocketAddr,
    path::Path,
    process::Output,
    time::{Duration, Instant},
};

use portguard::exit::Exit;
use portguard_tests::{
    ADMIN_V4, Attached, BLOCKED_V4, CLIENT_V4, Lab, Netns, SERVER_V4,
    portguard_cli::{binary, exited, pin_dir, run_file, succeeded as ok},
    require_root,
    traffic::{Servers, tcp_connects},
    unique,
};
use serde_json::Value;

const WEB: &str = portguard_tests::portguard_cli::WEB_POLICY;

fn port(port: u16) -> SocketAddr {
    SocketAddr::new(SERVER_V4.into(), port)
}

#[allow(
    clippy::needless_pass_by_value,
    reason = "takes the `Output` a command returned, so calls read `succeeded(portguard(..))`"
)]
fn refused(output: Output, wanted: &str) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "accepted: {}{stderr}", String::from_utf8_lossy(&output.stdout));
    assert!(stderr.contains(wanted), "expected `{wanted}` in: {stderr}");
    stderr
}

/// `status --json`'s row for `iface`; `status` must end with `exit`.
fn status_of(pg: &Attached, iface: &str, exit: Exit) -> Value {
    let list: Value = serde_json::from_str(&exited(pg.run(&["status", "--json"]), exit)).unwrap();
    list.as_array().unwrap().iter().find(|row| row["interface"] == iface).cloned().expect("listed")
}

/// Whether the server can open a connection to the client: under default deny the answer is
/// let in only if the TC egress program learnt the flow.
fn server_reaches_client(lab: &Lab) -> bool {
    tcp_connects(&lab.server, None, SocketAddr::new(CLIENT_V4.into(), 9090))
}

#[test]
fn a_loader_protects_its_interface_again_when_it_is_created_anew() {
    require_root!();
    let lab = Lab::new().unwrap();
    let _servers = Servers::start(&lab.server, &[80, 8080], &[]);
    let mut pg = Attached::start(&lab.server, &lab.server_if, WEB, &["--json"]).unwrap();
    let iface = lab.server_if.as_str();
    assert!(!tcp_connects(&lab.client, None, port(8080)));

    lab.delete_link().unwrap();
    let lost = pg
        .wait_for_event(Duration::from_secs(10), |e| e["event"] == "unprotected")
        .expect("an unprotected event");
    assert!(lost["reason"].as_str().unwrap().contains(&format!("{iface} no longer exists")), "{lost}");
    let status = exited(pg.run(&["status"]), Exit::NotRunning);
    assert!(status.contains("NOT PROTECTED") && status.contains("no longer exists"), "{status}");
    assert_eq!(status_of(&pg, iface, Exit::NotRunning)["enforcing"], false);
    // Saved, but said not to be in effect.
    let stderr = refused(pg.run(&["block", &BLOCKED_V4.to_string(), "--iface", iface]), "NOT in effect on");
    assert!(stderr.contains("no longer exists"), "{stderr}");

    // Created again under the same name (what container runtimes and hot-plug do).
    lab.create_link().unwrap();
    let back = pg
        .wait_for_event(Duration::from_secs(10), |e| e["event"] == "reattached")
        .expect("a reattached event");
    assert!(back["reason"].as_str().unwrap().contains("attached generation 1"), "{back}");
    assert!(!tcp_connects(&lab.client, None, port(8080)), "the new interface is protected");
    assert!(tcp_connects(&lab.client, None, port(80)));
    assert!(!tcp_connects(&lab.client, Some(BLOCKED_V4.into()), port(80)), "the saved block applies");
    let status = ok(pg.run(&["status"]));
    assert!(!status.contains("NOT PROTECTED") && status.contains("loader running"), "{status}");
    assert_eq!(status_of(&pg, iface, Exit::Ok)["enforcing"], true);
    let out = ok(pg.run(&["block", "203.0.113.9", "--iface", iface]));
    assert!(out.contains(&format!("in effect on {iface}")), "{out}");
    assert!(pg.is_running());
}

#[test]
fn without_a_loader_status_block_reload_and_attach_tell_the_truth_about_a_lost_interface() {
    require_root!();
    let lab = Lab::new().unwrap();
    let _servers = Servers::start(&lab.server, &[80, 8080], &[]);
    let mut pg = Attached::start(&lab.server, &lab.server_if, WEB, &[]).unwrap();
    let iface = lab.server_if.as_str();
    pg.kill();
    assert!(!tcp_connects(&lab.client, None, port(8080)), "the pins enforce");

    lab.delete_link().unwrap();
    lab.create_link().unwrap();
    assert!(tcp_connects(&lab.client, None, port(8080)), "nothing protects the new interface");
    let status = exited(pg.run(&["status"]), Exit::NotRunning);
    assert!(status.contains("NOT PROTECTED") && status.contains("deleted and created again"), "{status}");
    assert!(!status.contains("still enforce"), "{status}");
    assert_eq!(status_of(&pg, iface, Exit::NotRunning)["enforcing"], false);
    refused(pg.run(&["block", &BLOCKED_V4.to_string(), "--iface", iface]), "NOT in effect on");
    refused(pg.run(&["reload", iface]), "NOT PROTECTED");

    // A new attach is not refused: it clears what protects nothing and starts afresh.
    let again = Attached::start(&lab.server, &lab.server_if, WEB, &[]).unwrap();
    assert!(again.banner.contains("protect nothing"), "{}", again.banner);
    assert!(!tcp_connects(&lab.client, None, port(8080)));
    assert!(tcp_connects(&lab.client, None, port(80)));
    let status = ok(again.run(&["status"]));
    assert!(!status.contains("NOT PROTECTED"), "{status}");
}

#[test]
fn attach_repairs_every_half_attachment_a_killed_loader_leaves() {
    require_root!();
    let lab = Lab::new().unwrap();
    let _servers = Servers::start(&lab.server, &[80, 8080], &[]);
    let _client_servers = Servers::start(&lab.client, &[9090], &[]);
    let iface = lab.server_if.as_str();
    let pins = pin_dir(&lab.server, iface);
    let record = run_file(&lab.server, iface, "json");

    // Each state a SIGKILL can leave between pins (or in detach, which unpins XDP first), and
    // a lost record on top of one.
    let cases: [(&[&str], bool, &str); 4] = [
        (
            &["link_tc_egress"],
            false,
            "repaired a half attachment of IFACE: attached TC egress anew (its link was missing)",
        ),
        (
            &["link_xdp"],
            false,
            "repaired a half attachment of IFACE: attached XDP ingress anew (its link was missing)",
        ),
        (&["link_tc_egress"], true, "attached TC egress anew"),
        (
            &["link_xdp", "link_tc_egress"],
            false,
            "removed the pins a loader left for IFACE before it attached",
        ),
    ];
    for (removed, lose_record, wanted) in cases {
        let mut killed = Attached::start(&lab.server, iface, WEB, &[]).unwrap();
        killed.kill();
        for pin in removed {
            std::fs::remove_file(pins.join(pin)).unwrap();
        }
        if lose_record {
            std::fs::remove_file(&record).unwrap();
        }
        let status = exited(killed.run(&["status"]), Exit::NotRunning);
        assert!(status.contains("NOT PROTECTED"), "{removed:?}: {status}");
        if removed.len() == 1 {
            assert!(status.contains("half attached"), "{removed:?}: {status}");
            assert!(!server_reaches_client(&lab) || removed == ["link_xdp"], "{removed:?}");
        }

        let pg = Attached::start(&lab.server, iface, WEB, &[]).unwrap();
        let wanted = wanted.replace("IFACE", iface);
        assert!(pg.banner.contains(&wanted), "{removed:?}: expected `{wanted}` in\n{}", pg.banner);
        if lose_record {
            assert!(pg.banner.contains("XDP unknown mode"), "{}", pg.banner);
        }
        assert!(!tcp_connects(&lab.client, None, port(8080)), "{removed:?}: ingress judged");
        assert!(tcp_connects(&lab.client, None, port(80)), "{removed:?}");
        assert!(server_reaches_client(&lab), "{removed:?}: egress flows learnt");
        let status = ok(pg.run(&["status"]));
        assert!(!status.contains("NOT PROTECTED"), "{removed:?}: {status}");
        drop(pg);
        drop(killed);
        assert!(!pins.exists(), "{removed:?}: detached");
    }
}

/// Removes a directory when dropped (also when the test fails).
struct RemoveDir(std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn a_switch_whose_record_failed_or_was_interrupted_is_reported_as_what_runs() {
    require_root!();
    let lab = Lab::new().unwrap();
    let _servers = Servers::start(&lab.server, &[80, 8080], &[]);
    let mut pg = Attached::start(&lab.server, &lab.server_if, WEB, &[]).unwrap();
    let iface = lab.server_if.as_str();
    let open = pg.state_dir.path().join("open.toml");
    std::fs::write(&open, WEB.replace("[22, 80]", "[22, 80, 8080]")).unwrap();
    let open = open.to_str().unwrap();

    // The record cannot be written once the links switched (as if the loader died there).
    let in_the_way = run_file(&lab.server, iface, "tmp");
    std::fs::create_dir(&in_the_way).unwrap();
    let _remove = RemoveDir(in_the_way.clone());
    let out = ok(pg.run(&["reload", iface, "--policy", open]));
    assert!(out.contains("generation 2"), "{out}");
    assert!(tcp_connects(&lab.client, None, port(8080)), "the new policy runs");
    let row = status_of(&pg, iface, Exit::Ok);
    assert_eq!((row["generation"].as_u64(), row["policy"].as_str()), (Some(2), Some(open)), "{row}");
    std::fs::remove_dir(&in_the_way).unwrap();

    // Without a loader, a look makes the record agree.
    pg.kill();
    let status = exited(pg.run(&["status"]), Exit::NotRunning);
    assert!(status.contains("interrupted after it took effect; recorded it now"), "{status}");
    assert!(status.contains("policy generation 2") && status.contains(open), "{status}");
    let record: Value =
        serde_json::from_str(&std::fs::read_to_string(run_file(&lab.server, iface, "json")).unwrap())
            .unwrap();
    assert_eq!(record["generation"], 2);
    assert!(!run_file(&lab.server, iface, "next.json").exists());

    // A switch that never happened (the programs it names never ran) is dropped.
    let mut next = record.clone();
    next["generation"] = 3.into();
    next["programs"] = serde_json::json!({"xdp": u32::MAX, "tc": u32::MAX});
    next["policy"] = "/nonexistent/never.toml".into();
    let ahead = serde_json::json!({"state": next, "source": {"path": "/nonexistent/never.toml", "text": ""}});
    std::fs::write(run_file(&lab.server, iface, "next.json"), ahead.to_string()).unwrap();
    let status = exited(pg.run(&["status"]), Exit::NotRunning);
    assert!(status.contains("generation 3 was interrupted before it took effect"), "{status}");
    assert!(status.contains("policy generation 2") && !status.contains("never.toml"), "{status}");
    assert!(!run_file(&lab.server, iface, "next.json").exists());

    // The next loader adopts it and numbers on from what runs.
    let again = Attached::start(&lab.server, iface, WEB, &[]).unwrap();
    assert!(again.banner.contains("generation 3 replaces them"), "{}", again.banner);
    let deadline = Instant::now() + Duration::from_secs(10);
    while tcp_connects(&lab.client, None, port(8080)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!tcp_connects(&lab.client, None, port(8080)), "the adopted policy runs");
    assert!(Path::new(&pin_dir(&lab.server, iface)).exists());
}

/// `portguard --netns NETNS ARGS` with the state directory `state`.
fn portguard_in(state: &Path, netns: &Netns, args: &[&str]) -> Output {
    std::process::Command::new(binary())
        .env("PORTGUARD_STATE_DIR", state)
        .args(["--netns", &netns.name])
        .args(args)
        .output()
        .expect("running portguard")
}

/// Manual blocks `blocks --json` lists in `netns`.
fn manual_blocks(state: &Path, netns: &Netns, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["blocks", "--json"];
    args.extend_from_slice(extra);
    let listed: Value = serde_json::from_str(&ok(portguard_in(state, netns, &args))).unwrap();
    listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["origin"] == "manual")
        .map(|row| row["network"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn attachments_of_the_same_name_in_two_namespaces_share_nothing() {
    require_root!();
    // Two containers' `eth0`: one name, two namespaces.
    let iface = unique("e");
    let one = Lab::with_server_if(&iface).unwrap();
    let two = Lab::with_server_if(&iface).unwrap();
    let _servers_one = Servers::start(&one.server, &[80], &[]);
    let _servers_two = Servers::start(&two.server, &[80], &[]);
    let pg_one = Attached::start(&one.server, &iface, WEB, &[]).unwrap();
    let pg_two = Attached::start(&two.server, &iface, WEB, &[]).unwrap();
    assert_ne!(pin_dir(&one.server, &iface), pin_dir(&two.server, &iface));
    assert!(pin_dir(&one.server, &iface).exists() && pin_dir(&two.server, &iface).exists());
    // One state directory for both, as a host's /var/lib/portguard would be.
    let state = pg_one.state_dir.path();
    let passes =
        |lab: &Lab, source: std::net::Ipv4Addr| tcp_connects(&lab.client, Some(source.into()), port(80));
    let (blocked, admin) = (BLOCKED_V4.to_string(), ADMIN_V4.to_string());

    // A block without --iface acts on the attachments of its own namespace, and says so.
    let out = ok(portguard_in(state, &one.server, &["block", &blocked]));
    let here = |lab: &Lab| format!("on {iface} in network namespace {}", lab.server.name);
    assert!(out.contains(&format!("in effect {}", here(&one))), "{out}");
    let out = ok(portguard_in(state, &two.server, &["block", &admin]));
    assert!(out.contains(&format!("in effect {}", here(&two))), "{out}");
    assert!(!passes(&one, BLOCKED_V4) && passes(&two, BLOCKED_V4));
    assert!(!passes(&two, ADMIN_V4) && passes(&one, ADMIN_V4));
    assert_eq!(manual_blocks(state, &one.server, &[]), ["203.0.113.7/32"]);
    assert_eq!(manual_blocks(state, &two.server, &["--iface", &iface]), ["198.51.100.7/32"]);

    // unblock without --iface: this namespace's blocks only.
    refused(portguard_in(state, &two.server, &["unblock", &blocked]), "was not blocked");
    assert!(!passes(&one, BLOCKED_V4), "the other namespace's block stays");
    // unblock --iface lifts a block of every attachment on that one, as `blocks --iface` lists it.
    let out = ok(portguard_in(state, &one.server, &["unblock", &blocked, "--iface", &iface]));
    assert!(out.contains(&format!("unblocked 203.0.113.7/32 {}", here(&one))), "{out}");
    assert!(out.contains("stays blocked on the others"), "{out}");
    assert!(passes(&one, BLOCKED_V4));
    assert!(manual_blocks(state, &one.server, &["--iface", &iface]).is_empty());
    assert!(!passes(&two, ADMIN_V4));

    // status shows this namespace's attachment and points at the other one.
    let output = portguard_in(state, &one.server, &["status"]);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let out = ok(output);
    assert_eq!(out.lines().filter(|line| line.starts_with(&format!("{iface}:"))).count(), 1, "{out}");
    assert!(stderr.contains("also attached in other network namespaces"), "{stderr}");
    assert!(stderr.contains(&format!("{iface} in network namespace {}", two.server.name)), "{stderr}");

    // Detaching here leaves the other namespace's attachment enforcing.
    ok(portguard_in(state, &one.server, &["detach", &iface]));
    assert!(!pin_dir(&one.server, &iface).exists() && pin_dir(&two.server, &iface).exists());
    assert!(!passes(&two, ADMIN_V4));
    drop(pg_two);
    assert!(!pin_dir(&two.server, &iface).exists());
}

#[test]
fn pins_made_by_a_build_with_another_layout_are_refused_with_what_to_do() {
    require_root!();
    let lab = Lab::new().unwrap();
    let _servers = Servers::start(&lab.server, &[80], &[]);
    let pg = Attached::start(&lab.server, &lab.server_if, WEB, &[]).unwrap();
    let iface = lab.server_if.as_str();
    // As an older build would have left it: a shared map of the same name with other sizes.
    let pin = pin_dir(&lab.server, iface).join(portguard_common::maps::MAP_LIMITS);
    std::fs::remove_file(&pin).unwrap();
    let kit = aya::EbpfLoader::new().load(portguard::TESTKIT_OBJECT).unwrap();
    let Some(aya::maps::Map::LpmTrie(other)) = kit.map("PG_TEST_LPM") else { panic!("no PG_TEST_LPM") };
    other.pin(&pin).unwrap();

    let stderr = refused(pg.run(&["reload", iface]), "was pinned by another portguard build");
    assert!(stderr.contains("run `portguard detach`"), "{stderr}");
    assert!(tcp_connects(&lab.client, None, port(80)), "the running generation keeps running");
    let row = status_of(&pg, iface, Exit::Ok);
    assert_eq!(row["generation"].as_u64(), Some(1), "{row}");

    // What the message says to do works: detach removes every pin, and attach starts afresh.
    let (stopped, stderr) = pg.stop();
    assert!(stopped, "{stderr}");
    assert!(!pin.exists());
    let pg = Attached::start(&lab.server, &lab.server_if, WEB, &[]).unwrap();
    assert!(tcp_connects(&lab.client, None, port(80)));
    drop(pg);
}
