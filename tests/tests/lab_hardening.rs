//! Hostile and unlucky input (issue 10): interface names that are paths, relative and
//! symlinked policies, durations out of range, files that are not files, a state directory
//! that cannot be written, a lost blocks.json, and text that would forge output lines.

use std::{
    net::SocketAddr,
    path::Path,
    process::Output,
    time::{Duration, Instant},
};

use portguard_tests::{
    ADMIN_V4, Attached, CLIENT_V4, Lab, SCANNER_V4, SERVER_V4,
    portguard_cli::{binary, exited},
    require_root,
    traffic::{Servers, tcp_connects},
    unique,
};

use portguard::exit::Exit;
use portguard_tests::portguard_cli::succeeded as ok;
const WEB: &str = portguard_tests::portguard_cli::WEB_POLICY;

fn port(port: u16) -> SocketAddr {
    SocketAddr::new(SERVER_V4.into(), port)
}

/// Waits (at most 10 s) until a connection to `port` succeeds or fails as `wanted`.
fn connects_eventually(lab: &Lab, port_number: u16, wanted: bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let connects = tcp_connects(&lab.client, None, port(port_number));
        if connects == wanted || Instant::now() >= deadline {
            return connects == wanted;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
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

/// `portguard ARGS` with a private state directory (never the host's blocks).
fn portguard_in(state: &Path, args: &[&str]) -> Output {
    std::process::Command::new(binary())
        .env("PORTGUARD_STATE_DIR", state)
        .args(args)
        .output()
        .expect("running portguard")
}

#[test]
fn interface_names_that_are_paths_are_refused_by_every_command() {
    require_root!();
    // The victim is our own temporary directory, reached from /run/portguard and from
    // /sys/fs/bpf/portguard through `..`: it must survive every command.
    let victim = tempfile::Builder::new().prefix("pgt-victim-").tempdir_in("/var/tmp").unwrap();
    let name = victim.path().file_name().unwrap().to_str().unwrap().to_owned();
    std::fs::write(victim.path().join("keep"), "precious").unwrap();
    std::fs::write(victim.path().join("f.pending.json"), "precious").unwrap();
    let state = tempfile::tempdir().unwrap();
    let from_pins = format!("../../../../var/tmp/{name}");
    let from_run = format!("../../var/tmp/{name}/f");
    let policy = state.path().join("p.toml");
    std::fs::write(&policy, WEB).unwrap();
    let policy = policy.to_str().unwrap();
    for hostile in [from_pins.as_str(), from_run.as_str(), "eth0:1", "a b", "1234567890123456"] {
        let commands: Vec<Vec<&str>> = vec![
            vec!["detach", hostile],
            vec!["attach", hostile, "--policy", policy],
            vec!["reload", hostile],
            vec!["confirm", hostile],
            vec!["stats", hostile],
            vec!["events", hostile],
            vec!["block", "203.0.113.7", "--iface", hostile],
            vec!["unblock", "203.0.113.7", "--iface", hostile],
            vec!["blocks", "--iface", hostile],
            vec!["doctor", "--iface", hostile],
            vec!["rollback-guard", hostile, "token"],
        ];
        for args in commands {
            let output = portguard_in(state.path(), &args);
            let stderr = refused(output, "is not an interface name");
            assert!(stderr.contains("1-15 bytes"), "{args:?}: {stderr}");
        }
    }
    assert_eq!(std::fs::read_to_string(victim.path().join("keep")).unwrap(), "precious");
    assert_eq!(std::fs::read_to_string(victim.path().join("f.pending.json")).unwrap(), "precious");
    assert!(!state.path().join("blocks.json").exists(), "nothing was saved");
}

/// Re-points `link` at `target` atomically, as configuration management deploys do.
fn repoint(link: &Path, target: &str) {
    let next = link.with_extension("next");
    std::os::unix::fs::symlink(target, &next).unwrap();
    std::fs::rename(&next, link).unwrap();
}

#[test]
fn reload_reads_the_policy_where_the_operator_is_and_follows_symlinks() {
    require_root!();
    let lab = Lab::new().unwrap();
    let _servers = Servers::start(&lab.server, &[80, 8080, 8081], &[]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("v1.toml"), WEB).unwrap();
    std::fs::write(dir.path().join("v2.toml"), WEB.replace("[22, 80]", "[22, 80, 8080]")).unwrap();
    let current = dir.path().join("current.toml");
    std::os::unix::fs::symlink("v1.toml", &current).unwrap();
    let pg = Attached::start_file(&lab.server, &lab.server_if, current.to_str().unwrap(), &[], None).unwrap();
    let iface = lab.server_if.as_str();
    assert!(!tcp_connects(&lab.client, None, port(8080)));

    // A deploy re-points the link: `reload` and SIGHUP read the new target.
    repoint(&current, "v2.toml");
    ok(pg.run(&["reload", iface]));
    assert!(tcp_connects(&lab.client, None, port(8080)), "reload read v2 through the link");
    let status = ok(pg.run(&["status"]));
    assert!(status.contains(&format!("policy {}:", current.display())), "{status}");
    repoint(&current, "v1.toml");
    let pid = nix::unistd::Pid::from_raw(pg.pid().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    assert!(connects_eventually(&lab, 8080, false), "SIGHUP read v1 through the link");

    // A relative --policy names a file in the operator's working directory, not the loader's.
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::write(elsewhere.path().join("p.toml"), WEB.replace("[22, 80]", "[22, 80, 8081]")).unwrap();
    ok(pg.command(&["reload", iface, "--policy", "p.toml"]).current_dir(elsewhere.path()).output().unwrap());
    assert!(tcp_connects(&lab.client, None, port(8081)), "the operator's p.toml runs");
    let status = ok(pg.run(&["status"]));
    assert!(status.contains(&elsewhere.path().join("p.toml").display().to_string()), "{status}");

    // A descriptor path means something else to the loader: refused, and nothing changes.
    let stdin = std::fs::File::open(dir.path().join("v1.toml")).unwrap();
    let output = pg.command(&["reload", iface, "--policy", "/dev/fd/0"]).stdin(stdin).output().unwrap();
    refused(output, "names a file descriptor");
    assert!(tcp_connects(&lab.client, None, port(8081)), "the running policy stays");
}

#[test]
fn durations_out_of_range_are_refused_and_stored_ones_never_panic() {
    require_root!();
    let state = tempfile::tempdir().unwrap();
    for (duration, wanted) in [
        ("10000y", "longer than 100 years"),
        ("570y", "longer than 100 years"),
        ("1ns", "shorter than 1s"),
        ("999ms", "shorter than 1s"),
        ("0s", "longer than zero"),
    ] {
        let output = portguard_in(state.path(), &["block", "203.0.113.7", "--for", duration]);
        refused(output, wanted);
        let output = portguard_in(state.path(), &["reload", "pgtnone0", "--confirm-within", duration]);
        refused(output, wanted);
    }
    assert!(!state.path().join("blocks.json").exists(), "nothing was saved");

    // Whatever a hand-edited (or older) blocks.json holds, listing it does not panic.
    let blocks = r#"{"blocks":[
        {"net":"203.0.113.7/32","added":1,"expires":18446744073709551615},
        {"net":"203.0.113.8/32","added":1,"expires":315569520000}]}"#;
    std::fs::write(state.path().join("blocks.json"), blocks).unwrap();
    let listed = ok(portguard_in(state.path(), &["blocks"]));
    assert!(listed.contains("203.0.113.7/32") && listed.contains("203.0.113.8/32"), "{listed}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(portguard_in(state.path(), &["blocks", "--json"]))).unwrap();
    let rows: Vec<_> = json.as_array().unwrap().iter().filter(|r| r["origin"] == "manual").collect();
    assert_eq!(rows.len(), 2, "{json}");
    // Past year 9999 an end has no RFC 3339 form: no `expires_at`, and the seconds left say it.
    assert_eq!(rows[0]["expires_at"], serde_json::Value::Null, "{json}");
    assert!(rows[0]["remaining_secs"].as_u64().unwrap() > 250_000_000_000, "{json}");
    assert_eq!(rows[1]["expires_at"], serde_json::Value::Null, "{json}");
    portguard_tests::schemas::assert_valid("blocks", &json);
}

/// Runs `command`, failing the test if it takes longer than `limit` (it is killed then).
fn bounded(mut command: std::process::Command, limit: Duration) -> Output {
    let child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running portguard");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let started = Instant::now();
    let waiter = std::thread::spawn(move || child.wait_with_output().expect("waiting for portguard"));
    while !waiter.is_finished() && started.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(20));
    }
    if !waiter.is_finished() {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = waiter.join();
        panic!("{command:?} hung for {limit:?}");
    }
    waiter.join().unwrap()
}

#[test]
fn fifos_devices_and_huge_files_are_refused_at_once() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("policy.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let fifo = fifo.to_str().unwrap();
    let zero_list = dir.path().join("zero.toml");
    std::fs::write(&zero_list, format!("{WEB}\n[blocklist]\nfiles = [\"/dev/zero\"]\n")).unwrap();
    let fifo_list = dir.path().join("fifo-list.toml");
    std::fs::write(&fifo_list, format!("{WEB}\n[blocklist]\nfiles = [\"{fifo}\"]\n")).unwrap();
    let huge = dir.path().join("huge.toml");
    std::fs::File::create(&huge).unwrap().set_len(5 << 20).unwrap();
    let limit = Duration::from_secs(5);
    let command = |args: &[&str]| {
        let mut command = std::process::Command::new(binary());
        command.env("PORTGUARD_STATE_DIR", dir.path()).args(args);
        command
    };
    for (args, wanted) in [
        (vec!["check", fifo], "a FIFO or pipe"),
        (vec!["attach", "pgtnone0", "--policy", fifo], "a FIFO or pipe"),
        (vec!["check", zero_list.to_str().unwrap()], "/dev/zero: it is a character device"),
        (vec!["check", fifo_list.to_str().unwrap()], "a FIFO or pipe"),
        (vec!["check", "/dev/zero"], "a character device"),
        (vec!["check", huge.to_str().unwrap()], "larger than 4 MiB"),
        (vec!["verify", "--policy", fifo, "--pcap", fifo], "a FIFO or pipe"),
    ] {
        refused(bounded(command(&args), limit), wanted);
    }

    // A running loader: the client refuses at once, and a SIGHUP whose policy became a FIFO
    // leaves the loader serving.
    let lab = Lab::new().unwrap();
    let _servers = Servers::start(&lab.server, &[80, 8080], &[]);
    let current = dir.path().join("current.toml");
    std::fs::write(dir.path().join("web.toml"), WEB).unwrap();
    std::os::unix::fs::symlink("web.toml", &current).unwrap();
    let pg = Attached::start_file(&lab.server, &lab.server_if, current.to_str().unwrap(), &[], None).unwrap();
    let iface = lab.server_if.as_str();
    for policy in [fifo, zero_list.to_str().unwrap()] {
        refused(bounded(pg.command(&["reload", iface, "--policy", policy]), limit), "reload refused");
    }
    repoint(&current, "policy.fifo");
    let pid = nix::unistd::Pid::from_raw(pg.pid().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(dir.path().join("open.toml"), WEB.replace("[22, 80]", "[22, 80, 8080]")).unwrap();
    let open = dir.path().join("open.toml");
    ok(bounded(pg.command(&["reload", iface, "--policy", open.to_str().unwrap()]), limit));
    assert!(tcp_connects(&lab.client, None, port(8080)), "the loader still reloads");
}

/// Manual blocks listed by `blocks --json --iface IFACE`.
fn manual_blocks(pg: &Attached) -> Vec<String> {
    let listed: serde_json::Value =
        serde_json::from_str(&ok(pg.run(&["blocks", "--json", "--iface", &pg.iface]))).unwrap();
    let mut nets: Vec<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["origin"] == "manual")
        .map(|row| row["network"].as_str().unwrap().to_owned())
        .collect();
    nets.sort();
    nets
}

fn passes(lab: &Lab, source: std::net::Ipv4Addr) -> bool {
    tcp_connects(&lab.client, Some(source.into()), port(80))
}

#[test]
fn the_blocks_file_and_the_kernel_always_agree() {
    require_root!();
    let lab = Lab::new().unwrap();
    let _servers = Servers::start(&lab.server, &[80], &[]);
    let policy = format!("{WEB}\n[limits]\nmanual_blocks = 1024\n");
    let pg = Attached::start(&lab.server, &lab.server_if, &policy, &[]).unwrap();
    let iface = lab.server_if.as_str();
    let blocks_file = pg.state_dir.path().join("blocks.json");

    // The file cannot be written: refused, and the kernel is not changed either.
    let in_the_way = pg.state_dir.path().join("blocks.tmp");
    std::fs::create_dir(&in_the_way).unwrap();
    refused(pg.run(&["block", &CLIENT_V4.to_string(), "--iface", iface]), "nothing was changed");
    assert!(passes(&lab, CLIENT_V4), "not enforced either");
    assert!(manual_blocks(&pg).is_empty());
    std::fs::remove_dir(&in_the_way).unwrap();
    let out = ok(pg.run(&["block", &CLIENT_V4.to_string(), "--for", "1h 500ms", "--iface", iface]));
    assert!(out.contains("for 1h\n") || out.contains("for 1h "), "the enforced duration: {out}");
    assert!(!passes(&lab, CLIENT_V4));
    std::fs::create_dir(&in_the_way).unwrap();
    refused(pg.run(&["unblock", &CLIENT_V4.to_string(), "--iface", iface]), "nothing was changed");
    assert!(!passes(&lab, CLIENT_V4), "still enforced");
    assert_eq!(manual_blocks(&pg), ["192.0.2.1/32"]);
    std::fs::remove_dir(&in_the_way).unwrap();

    // The kernel cannot take them all (the map holds 1024): the saved file is put back too.
    let many: Vec<String> = (1..=1100).map(|n| format!("2001:db8:ffff::{n:x}")).collect();
    let mut args = vec!["block", "--iface", iface];
    args.extend(many.iter().map(String::as_str));
    refused(pg.run(&args), "nothing was changed");
    assert_eq!(manual_blocks(&pg), ["192.0.2.1/32"]);
    let saved = std::fs::read_to_string(&blocks_file).unwrap();
    assert!(!saved.contains("2001:db8:ffff"), "{saved}");
    assert!(!passes(&lab, CLIENT_V4));
    ok(pg.run(&["unblock", &CLIENT_V4.to_string(), "--iface", iface]));
    assert!(passes(&lab, CLIENT_V4));

    // A reason cannot forge lines or drive the terminal in `blocks`.
    let forged = "oops\n2026-01-01T00:00:00Z eth0 UNBLOCK 203.0.113.9 unblocked\u{1b}[2J";
    ok(pg.run(&["block", "203.0.113.9", "--reason", forged, "--iface", iface]));
    let listed = ok(pg.run(&["blocks", "--iface", iface]));
    assert_eq!(listed.lines().count(), 2, "a header and one block: {listed}");
    assert!(
        listed.contains("oops\\n2026-01-01T00:00:00Z eth0 UNBLOCK") && listed.contains("\\u{1b}[2J"),
        "{listed}"
    );
    assert!(!listed.contains('\u{1b}'));
}

#[test]
fn a_lost_blocks_file_is_rebuilt_from_the_kernel_not_taken_as_empty() {
    require_root!();
    let lab = Lab::new().unwrap();
    let _servers = Servers::start(&lab.server, &[80], &[]);
    let pg = Attached::start(&lab.server, &lab.server_if, WEB, &[]).unwrap();
    let iface = lab.server_if.as_str();
    let blocks_file = pg.state_dir.path().join("blocks.json");
    ok(pg.run(&["block", &CLIENT_V4.to_string(), "--for", "1h", "--iface", iface]));
    ok(pg.run(&["block", &ADMIN_V4.to_string(), "2001:db8:bad::/48", "--iface", iface]));
    assert!(!passes(&lab, CLIENT_V4) && !passes(&lab, ADMIN_V4));

    std::fs::remove_file(&blocks_file).unwrap();
    let output = pg.run(&["block", &SCANNER_V4.to_string(), "--iface", iface]);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    ok(output);
    assert!(stderr.contains("was missing while the kernel enforced 3 manual blocks"), "{stderr}");
    assert_eq!(manual_blocks(&pg), ["192.0.2.1/32", "192.0.2.66/32", "198.51.100.7/32", "2001:db8:bad::/48"]);
    assert!(!passes(&lab, CLIENT_V4) && !passes(&lab, ADMIN_V4) && !passes(&lab, SCANNER_V4));
    let listed: serde_json::Value =
        serde_json::from_str(&ok(pg.run(&["blocks", "--json", "--iface", iface]))).unwrap();
    let client = listed.as_array().unwrap().iter().find(|r| r["network"] == "192.0.2.1/32").unwrap();
    let left = client["remaining_secs"].as_u64().unwrap();
    assert!((3500..=3601).contains(&left), "the end time is kept: {left}");

    // A symlink to nothing is missing too.
    std::fs::remove_file(&blocks_file).unwrap();
    std::os::unix::fs::symlink("/nonexistent/blocks.json", &blocks_file).unwrap();
    ok(pg.run(&["unblock", &SCANNER_V4.to_string(), "--iface", iface]));
    assert_eq!(manual_blocks(&pg), ["192.0.2.1/32", "198.51.100.7/32", "2001:db8:bad::/48"]);
    assert!(!passes(&lab, CLIENT_V4) && !passes(&lab, ADMIN_V4) && passes(&lab, SCANNER_V4));
}

#[test]
fn empty_policies_whole_families_and_huge_rules_are_called_out() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "# nothing yet\n").unwrap();
    let empty = empty.to_str().unwrap();
    let output = portguard_in(dir.path(), &["check", empty]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("warning: THE POLICY IS EMPTY"), "{output:?}");
    ok(output);
    refused(portguard_in(dir.path(), &["check", "--strict", empty]), "error: THE POLICY IS EMPTY");

    for (net, whom) in [
        ("0.0.0.0/0", "every IPv4 source"),
        ("::ffff:0:0/96", "every IPv4 source"),
        ("::/0", "every IPv6 source"),
    ] {
        let stderr =
            refused(portguard_in(dir.path(), &["block", net, "--iface", "pgtnone0"]), "add --everything");
        assert!(stderr.contains(whom), "{stderr}");
    }
    assert!(!dir.path().join("blocks.json").exists(), "nothing was saved");

    let every_port: Vec<String> = (1..=65535).map(|p| p.to_string()).collect();
    let wide = dir.path().join("wide.toml");
    std::fs::write(
        &wide,
        format!("default = \"deny\"\n[[allow]]\nproto = \"tcp\"\nports = [{}]\n", every_port.join(", ")),
    )
    .unwrap();
    let checked = ok(portguard_in(dir.path(), &["check", wide.to_str().unwrap()]));
    assert!(checked.len() < 2000, "{} characters", checked.len());
    assert!(checked.contains("allow tcp 1-65535"), "{checked}");
}

/// Leaves run files in /run/portguard for `iface`, as a killed loader whose pins went would.
fn leave_run_files(iface: &str) -> Vec<std::path::PathBuf> {
    let run = Path::new("/run/portguard");
    std::fs::create_dir_all(run).unwrap();
    let files: Vec<_> =
        ["json", "sock", "lock"].iter().map(|ext| run.join(format!("{iface}.{ext}"))).collect();
    for file in &files {
        std::fs::write(file, "{ damaged").unwrap();
    }
    files
}

#[test]
fn left_behind_and_damaged_run_files_are_cleaned_and_reported() {
    require_root!();
    let state = tempfile::tempdir().unwrap();
    let iface = unique("lb");
    let files = leave_run_files(&iface);
    let output = portguard_in(state.path(), &["status"]);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    // Nothing is attached in the host's namespace (the tests attach in their own).
    exited(output, Exit::NotRunning);
    assert!(
        stderr.contains(&format!(
            "{iface}: not attached; removed left-behind run files: {iface}.json, {iface}.sock, {iface}.lock"
        )),
        "{stderr}"
    );
    assert!(files.iter().all(|f| !f.exists()));

    leave_run_files(&iface);
    let out = ok(portguard_in(state.path(), &["detach", &iface]));
    assert!(out.contains("was not attached; removed left-behind run files"), "{out}");
    assert!(files.iter().all(|f| !f.exists()));

    leave_run_files(&iface);
    refused(portguard_in(state.path(), &["reload", &iface]), "not attached");
    assert!(files.iter().all(|f| !f.exists()));

    // A running attachment whose record is damaged: reported, repaired by a reload, and
    // detach still finds its loader.
    let lab = Lab::new().unwrap();
    let pg = Attached::start(&lab.server, &lab.server_if, WEB, &[]).unwrap();
    let record = portguard_tests::portguard_cli::run_file(&lab.server, &lab.server_if, "json");
    std::fs::write(&record, "{ damaged").unwrap();
    let output = pg.run(&["status"]);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let out = ok(output);
    assert!(stderr.contains("is damaged"), "{stderr}");
    assert!(out.contains(&format!("{}: loader running", lab.server_if)), "{out}");
    let policy = pg.state_dir.path().join("p.toml");
    std::fs::write(&policy, WEB).unwrap();
    ok(pg.run(&["reload", &lab.server_if, "--policy", policy.to_str().unwrap()]));
    assert!(
        ok(pg.run(&["status"])).contains(&format!("policy {}:", policy.display())),
        "the record is rewritten"
    );
    std::fs::write(&record, "{ damaged").unwrap();
    let started = Instant::now();
    ok(pg.run(&["detach", &lab.server_if]));
    assert!(started.elapsed() < Duration::from_secs(8), "the loader was found and stopped");
    assert!(!portguard_tests::portguard_cli::pin_dir(&lab.server, &lab.server_if).exists());
    assert!(!record.exists());
}
