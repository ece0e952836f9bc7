//! Lockouts said to the person who causes them, and refused unless they insist: a policy that
//! closes SSH where it listens (`attach`, `reload`), blocklists and blocks that cover the host
//! itself (its address, its network, its default gateway, the SSH session running the
//! command); `check --deny-warnings`. And doctor: listeners known by their program, the
//! industrial and cluster ports, findings that match what is attached, and no false answers
//! without root. Each on a real namespace lab with real listeners.

use std::{
    net::SocketAddr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use portguard_tests::{
    Attached, Lab, Netns, SERVER_V4,
    portguard_cli::{binary, pin_dir, portguard},
    require_root,
    traffic::{NamedService, Servers, tcp_connects},
};
use serde_json::Value;

const LISTENER: &str = env!("CARGO_BIN_EXE_portguard-listener");

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

/// `portguard --netns NS attach IFACE --policy POLICY EXTRA...` that must be refused: it must
/// end by itself within 30 s (an attach that goes ahead is stopped, detached and fails the test).
fn refused_attach(netns: &Netns, iface: &str, policy: &Path, extra: &[&str], env: &[(&str, &str)]) -> String {
    let state = tempfile::tempdir().unwrap();
    let mut child = Command::new(binary())
        .env("PORTGUARD_STATE_DIR", state.path())
        .envs(env.iter().copied())
        .args(["--netns", &netns.name, "attach", iface, "--policy", policy.to_str().unwrap()])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
            let _ = portguard(Some(netns), &["detach", iface]);
            panic!("attach with {} was not refused", policy.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    assert!(!output.status.success(), "attach must fail: {}", text(&output.stdout));
    assert!(!pin_dir(netns, iface).exists(), "a refused attach leaves nothing behind");
    text(&output.stderr)
}

#[allow(
    clippy::needless_pass_by_value,
    reason = "takes the `Output` a command returned, so calls read `succeeded(portguard(..))`"
)]
fn failed(output: Output) -> String {
    assert!(!output.status.success(), "must fail: {}{}", text(&output.stdout), text(&output.stderr));
    text(&output.stderr)
}

#[allow(
    clippy::needless_pass_by_value,
    reason = "takes the `Output` a command returned, so calls read `succeeded(portguard(..))`"
)]
fn ok(output: Output) -> (String, String) {
    assert!(output.status.success(), "must succeed: {}{}", text(&output.stdout), text(&output.stderr));
    (text(&output.stdout), text(&output.stderr))
}

/// Web open, nothing else (so an SSH daemon on 2222 is closed).
const WEB_ONLY: &str = "mode = \"enforce\"\ndefault = \"deny\"\n[[allow]]\nproto = \"tcp\"\nports = [80]\n";
/// ... and SSH on 2222 from the lab's network.
const WEB_AND_SSH: &str = "mode = \"enforce\"\ndefault = \"deny\"\n[[allow]]\nproto = \"tcp\"\nports = [80]\n[[allow]]\nproto = \"tcp\"\nports = [2222]\nfrom = [\"192.0.2.0/24\"]\n";

#[test]
fn a_policy_that_closes_ssh_where_it_listens_is_refused_unless_confirmed_or_forced() {
    require_root!();
    let lab = Lab::new().unwrap();
    let iface = lab.server_if.as_str();
    // sshd on a port of its own: known by its program, not its port.
    let sshd = NamedService::start(&lab.server, LISTENER, "sshd", &[2222], &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let closed = write(dir.path(), "closed.toml", WEB_ONLY);
    let open = write(dir.path(), "open.toml", WEB_AND_SSH);

    let stderr = refused_attach(&lab.server, iface, &closed, &[], &[]);
    let said = format!("SSH listens on tcp/2222 (sshd (pid {})) and the policy closes it", sshd.pid());
    assert!(stderr.contains(&said), "{stderr}");
    assert!(
        stderr.contains("warning:") && stderr.contains("refused: this would cut the host off"),
        "{stderr}"
    );
    assert!(stderr.contains("--confirm-within 2m") && stderr.contains("--force"), "{stderr}");

    // Forced: it runs, and says so.
    let pg = Attached::start_file(&lab.server, iface, closed.to_str().unwrap(), &["--force"], None).unwrap();
    let ssh = SocketAddr::new(SERVER_V4.into(), 2222);
    assert!(!tcp_connects(&lab.client, None, ssh), "closed as the operator insisted");
    let (_, stderr) = ok(pg.run(&["reload", iface, "--policy", open.to_str().unwrap()]));
    assert!(!stderr.contains("SSH listens"), "{stderr}");
    assert!(tcp_connects(&lab.client, None, ssh));

    // A reload that closes it again is refused through the loader, and the running policy stays.
    let stderr = failed(pg.run(&["reload", iface, "--policy", closed.to_str().unwrap()]));
    assert!(
        stderr.contains(&said) && stderr.contains("reload refused, the running policy stays"),
        "{stderr}"
    );
    assert!(stderr.contains("to reload it anyway: --confirm-within 2m"), "{stderr}");
    assert!(tcp_connects(&lab.client, None, ssh), "still open");

    // With --confirm-within it goes ahead (it undoes itself), and the warning reaches the
    // person who ran `reload`, not only the loader's output.
    let (stdout, stderr) =
        ok(pg.run(&["reload", iface, "--policy", closed.to_str().unwrap(), "--confirm-within", "1m"]));
    assert!(stderr.contains(&said) && stderr.contains("warning:"), "{stderr}");
    assert!(stdout.contains("rolls back in 1m unless"), "{stdout}");
    assert!(!tcp_connects(&lab.client, None, ssh));
    ok(pg.run(&["confirm", iface]));

    // Every warning of the new policy reaches `reload`'s caller, lint warnings included.
    let lint = write(dir.path(), "lint.toml", "[[allow]]\nproto = \"tcp\"\nports = [80, 2222]\n");
    let (_, stderr) = ok(pg.run(&["reload", iface, "--policy", lint.to_str().unwrap()]));
    assert!(stderr.contains("lint.toml:1:1: warning: no `default` given"), "{stderr}");

    // Without a loader (killed), reload decides itself, the same way.
    let mut pg = pg;
    pg.kill();
    let stderr = failed(pg.run(&["reload", iface, "--policy", closed.to_str().unwrap()]));
    assert!(stderr.contains(&said), "{stderr}");
    let (_, stderr) = ok(pg.run(&["reload", iface, "--policy", closed.to_str().unwrap(), "--force"]));
    assert!(stderr.contains(&said), "forced, and still told: {stderr}");
    ok(pg.run(&["detach", iface]));
}

#[test]
fn blocklists_and_blocks_that_cover_the_host_are_refused_unless_never_blocked_or_forced() {
    require_root!();
    let lab = Lab::new().unwrap();
    let iface = lab.server_if.as_str();
    let _servers = Servers::start(&lab.server, &[80], &[]);
    let dir = tempfile::tempdir().unwrap();
    let allow = "mode = \"enforce\"\ndefault = \"allow\"\n";

    // The interface's own /24, inline and in a file.
    let inline =
        write(dir.path(), "inline.toml", &format!("{allow}[blocklist]\nsources = [\"192.0.2.0/24\"]\n"));
    write(dir.path(), "lan.txt", "# a list that holds the LAN\n203.0.113.0/24\n192.0.2.0/24\n");
    let from_file = write(dir.path(), "file.toml", &format!("{allow}[blocklist]\nfiles = [\"lan.txt\"]\n"));
    for policy in [&inline, &from_file] {
        let stderr = refused_attach(&lab.server, iface, policy, &[], &[]);
        let covers = format!(
            "the blocklist covers this host's own networks: 192.0.2.0/24 covers this host's address 192.0.2.2 ({iface}), {iface}'s network 192.0.2.0/24"
        );
        assert!(stderr.contains(&covers), "{stderr}");
        assert!(stderr.contains("fix: never_block = [\"192.0.2.0/24\"]"), "{stderr}");
        assert!(stderr.contains("to attach it anyway: --force"), "{stderr}");
        // --confirm-within is no answer to this: the LAN would be cut until the rollback.
        refused_attach(&lab.server, iface, policy, &["--confirm-within", "1m"], &[]);
    }

    // The default gateway, and the SSH session running the command.
    lab.server.ip(&["route", "add", "default", "via", "192.0.2.1", "dev", iface]).unwrap();
    let gateway = write(dir.path(), "gw.toml", &format!("{allow}[blocklist]\nsources = [\"192.0.2.1\"]\n"));
    let stderr = refused_attach(&lab.server, iface, &gateway, &[], &[]);
    assert!(stderr.contains(&format!("192.0.2.1/32 covers {iface}'s default gateway 192.0.2.1")), "{stderr}");
    let session = [("SSH_CONNECTION", "203.0.113.7 50022 192.0.2.2 22")];
    let attacker =
        write(dir.path(), "ssh.toml", &format!("{allow}[blocklist]\nsources = [\"203.0.113.0/24\"]\n"));
    let stderr = refused_attach(&lab.server, iface, &attacker, &[], &session);
    assert!(stderr.contains("203.0.113.0/24 covers your SSH session's address 203.0.113.7"), "{stderr}");
    assert!(stderr.contains("fix: never_block = [\"203.0.113.7\"]"), "{stderr}");

    // never_block keeps them reachable: accepted without a word about it.
    let kept = write(
        dir.path(),
        "kept.toml",
        &format!("{allow}never_block = [\"192.0.2.0/24\"]\n[blocklist]\nsources = [\"192.0.2.0/24\"]\n"),
    );
    let pg = Attached::start_file(&lab.server, iface, kept.to_str().unwrap(), &[], None).unwrap();
    let web = SocketAddr::new(SERVER_V4.into(), 80);
    assert!(tcp_connects(&lab.client, None, web));

    // `reload` is held to the same check.
    let stderr = failed(pg.run(&["reload", iface, "--policy", inline.to_str().unwrap()]));
    assert!(stderr.contains("192.0.2.0/24 covers this host's address 192.0.2.2"), "{stderr}");
    assert!(tcp_connects(&lab.client, None, web), "the running policy stays");

    // And `portguard block`: the LAN refused (the running policy's never_block no longer
    // covers it once reloaded without it), forced with --force.
    let (_, stderr) = ok(pg.run(&["reload", iface, "--policy", attacker.to_str().unwrap()]));
    assert!(!stderr.contains("covers"), "{stderr}");
    let stderr = failed(pg.run(&["block", "192.0.2.0/24", "--iface", iface]));
    assert!(stderr.contains(&format!("the block on {iface} covers this host's own networks")), "{stderr}");
    assert!(
        stderr.contains("to block it anyway: --force") && stderr.contains("never_block = [\"192.0.2.0/24\"]")
    );
    assert!(tcp_connects(&lab.client, None, web), "nothing was blocked");
    let mut blocked_session = pg.command(&["block", "203.0.113.7", "--iface", iface]);
    let stderr = failed(blocked_session.envs(session).output().unwrap());
    assert!(stderr.contains("203.0.113.7/32 covers your SSH session's address 203.0.113.7"), "{stderr}");
    // A session that came in to another namespace (the host's) says nothing about this one.
    let elsewhere = [("SSH_CONNECTION", "203.0.113.7 50022 198.51.100.200 22")];
    ok(pg.command(&["block", "203.0.113.7", "--iface", iface]).envs(elsewhere).output().unwrap());
    ok(pg.run(&["unblock", "203.0.113.7", "--iface", iface]));
    let (_, stderr) = ok(pg.run(&["block", "192.0.2.0/24", "--iface", iface, "--force"]));
    assert!(stderr.contains("warning: the block on"), "{stderr}");
    assert!(!tcp_connects(&lab.client, None, web), "blocked as the operator insisted");
    ok(pg.run(&["unblock", "192.0.2.0/24", "--iface", iface]));
    assert!(tcp_connects(&lab.client, None, web));
}

#[test]
fn check_deny_warnings_fails_on_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let warned = write(dir.path(), "warned.toml", "[[allow]]\nproto = \"tcp\"\nports = [80]\n");
    let clean = write(
        dir.path(),
        "clean.toml",
        "default = \"deny\"\n[[allow]]\nproto = \"tcp\"\nports = [22]\n[inbound]\nother_protocols = \"deny\"\n",
    );
    let check = |path: &Path, extra: &[&str]| {
        let mut args = vec!["check", path.to_str().unwrap()];
        args.extend_from_slice(extra);
        portguard(None, &args)
    };
    assert!(check(&warned, &[]).status.success(), "warnings alone pass");
    let denied = check(&warned, &["--deny-warnings"]);
    assert_eq!(denied.status.code(), Some(1));
    assert!(
        text(&denied.stderr).contains("1 warning and --deny-warnings: treated as errors"),
        "{}",
        text(&denied.stderr)
    );
    let json = check(&warned, &["--deny-warnings", "--json"]);
    assert_eq!(json.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["denied_by_warnings"], true);
    let passed = check(&clean, &["--deny-warnings"]);
    assert!(passed.status.success(), "{}", text(&passed.stderr));
}

fn doctor(netns: &Netns, args: &[&str]) -> Value {
    let mut full = vec!["doctor", "--json"];
    full.extend_from_slice(args);
    let output = portguard(Some(netns), &full);
    assert!(output.status.success(), "{}", text(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

fn row<'a>(report: &'a Value, protocol: &str, port: u16) -> &'a Value {
    report["listening"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["port"] == port && l["protocol"] == protocol)
        .unwrap_or_else(|| panic!("{protocol}/{port} not in {:#}", report["listening"]))
}

#[test]
fn doctor_knows_listeners_by_their_program_and_the_industrial_ports() {
    require_root!();
    let lab = Lab::new().unwrap();
    let redis = NamedService::start(&lab.server, LISTENER, "redis-server", &[16379], &[]).unwrap();
    let _mysql = NamedService::start(&lab.server, LISTENER, "mysqld", &[13306], &[]).unwrap();
    let _sshd = NamedService::start(&lab.server, LISTENER, "sshd", &[2222], &[]).unwrap();
    let _plc = Servers::start(&lab.server, &[502, 4840, 102, 44818, 20000, 6443, 10250, 2380], &[47808]);
    let dir = tempfile::tempdir().unwrap();
    let policy = write(dir.path(), "web.toml", WEB_ONLY);

    let report = doctor(&lab.server, &["--policy", policy.to_str().unwrap()]);
    portguard_tests::schemas::assert_valid("doctor", &report);
    // Moved off their ports, still known for what they are: nothing filters them now.
    let redis_row = row(&report, "tcp", 16379);
    assert_eq!(redis_row["service"], "Redis");
    assert_eq!(redis_row["recognised_by"], "program");
    assert_eq!(redis_row["program"], format!("redis-server (pid {})", redis.pid()));
    assert_eq!(redis_row["severity"], "critical");
    let mysql_row = row(&report, "tcp", 13306);
    assert_eq!(
        (mysql_row["service"].as_str(), mysql_row["severity"].as_str()),
        (Some("MySQL"), Some("critical"))
    );
    for (protocol, port, service) in [
        ("tcp", 502, "Modbus/TCP"),
        ("tcp", 4840, "OPC UA"),
        ("tcp", 102, "Siemens S7 (ISO-TSAP)"),
        ("tcp", 44818, "EtherNet/IP"),
        ("tcp", 20000, "DNP3"),
        ("tcp", 6443, "Kubernetes API"),
        ("tcp", 10250, "kubelet API"),
        ("tcp", 2380, "etcd"),
        ("udp", 47808, "BACnet"),
    ] {
        let found = row(&report, protocol, port);
        assert_eq!(found["service"], service, "{found}");
        assert_eq!(found["recognised_by"], "port", "{found}");
        assert_eq!(found["severity"], "critical", "{found}");
    }
    let findings = report["findings"].as_array().unwrap();
    let titled = |start: &str| findings.iter().find(|f| f["title"].as_str().unwrap().starts_with(start));
    assert!(
        titled("OPC UA tcp/4840")
            .is_some_and(|f| f["remedy"].as_str().unwrap().contains("no authentication"))
    );
    // SSH on its own port, which the policy would close: high, not "low, probably not needed".
    let ssh = row(&report, "tcp", 2222);
    assert_eq!((ssh["service"].as_str(), ssh["severity"].as_str()), (Some("SSH"), Some("high")));
    let finding = titled("SSH tcp/2222").expect("an SSH finding");
    assert_eq!(finding["severity"], "high");
    assert!(
        finding["detail"].as_str().unwrap().contains("remote administrators are locked out"),
        "{finding}"
    );
    // Opened to an admin network, it is what it should be.
    let open = write(dir.path(), "open.toml", WEB_AND_SSH);
    let report = doctor(&lab.server, &["--policy", open.to_str().unwrap()]);
    assert_eq!(row(&report, "tcp", 2222)["severity"], "info");
}

#[test]
fn doctor_reports_what_is_attached_and_what_another_policy_would_change() {
    require_root!();
    let lab = Lab::new().unwrap();
    let iface = lab.server_if.as_str();
    let _services = Servers::start(&lab.server, &[3306, 8080], &[]);
    let dir = tempfile::tempdir().unwrap();
    let enforced = write(
        dir.path(),
        "enforced.toml",
        "default = \"deny\"\n[[allow]]\nproto = \"tcp\"\nports = [8080]\n",
    );
    let other = write(dir.path(), "other.toml", "default = \"allow\"\n");
    let pg = Attached::start_file(&lab.server, iface, enforced.to_str().unwrap(), &[], None).unwrap();

    let output = pg.run(&["doctor", "--policy", other.to_str().unwrap(), "--iface", iface, "--json"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    portguard_tests::schemas::assert_valid("doctor", &report);
    assert_eq!(report["policy_enforced"], false);
    assert_eq!(report["policy"], other.to_str().unwrap());
    assert_eq!(report["policy_in_force"], enforced.to_str().unwrap());
    // What runs now: MySQL blocked by the attached policy, a medium exposure, not a critical
    // "nothing filters it".
    let mysql = row(&report, "tcp", 3306);
    assert_eq!(mysql["policy"], "blocked (default deny)");
    assert_eq!(mysql["with_audited_policy"], "open (default allow)");
    assert_eq!(mysql["severity"], "medium");
    let findings = report["findings"].as_array().unwrap();
    let now: Vec<&Value> = findings.iter().filter(|f| f["category"] == "exposure").collect();
    assert!(now.iter().all(|f| f["severity"] != "critical"), "{now:#?}");
    assert!(!output.stdout.windows(17).any(|w| w == b"nothing filters i"), "{report:#}");
    // What the other policy would change, said as such.
    let change = findings
        .iter()
        .find(|f| f["category"] == "policy")
        .unwrap_or_else(|| panic!("no finding about other.toml: {findings:#?}"));
    assert_eq!(change["severity"], "critical");
    assert!(
        change["title"].as_str().unwrap().starts_with(&format!("with {}: MySQL tcp/3306", other.display()))
    );
    assert_eq!(
        change["detail"],
        format!("now: blocked (default deny); with {}: open (default allow)", other.display())
    );

    let human = text(&pg.run(&["doctor", "--policy", other.to_str().unwrap(), "--iface", iface]).stdout);
    assert!(human.contains("(not in force: shown as what it would change; in force: "), "{human}");
    assert!(!human.contains("nothing filters it now"), "{human}");
    assert!(
        human.contains(&format!("blocked (default deny); with {}: open (default allow)", other.display())),
        "{human}"
    );

    // The enforced file itself is audited as enforced.
    let output = pg.run(&["doctor", "--policy", enforced.to_str().unwrap(), "--iface", iface, "--json"]);
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["policy_enforced"], true);
    assert!(report["findings"].as_array().unwrap().iter().all(|f| f["category"] != "policy"));
}

#[test]
fn doctor_without_root_says_it_lacks_privileges() {
    require_root!();
    // A copy anyone may run, for the unprivileged user.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.path().join("portguard");
    std::fs::copy(binary(), &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&copy)
        .arg("doctor")
        .output()
        .expect("setpriv (util-linux) runs");
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("portguard doctor needs root"), "{stderr}");
    assert!(!text(&output.stdout).contains("kernel refuses"), "{}", text(&output.stdout));
}
