//! Honest answers, exit codes and output for people, end to end on a namespace lab: what a
//! user without root is told, what `status` exits with, how `stats --watch` draws on a
//! terminal and into a pipe, colour, `blocks` columns, durations, plurals and `-q`.

use std::{
    net::SocketAddr,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use portguard::exit::Exit;
use portguard_tests::{
    Attached, CLIENT_V4, Lab, Netns, SERVER_V4,
    portguard_cli::{WEB_POLICY as WEB, binary, exited, succeeded as ok},
    require_root,
    traffic::{Servers, tcp_connects},
};
use serde_json::Value;

/// `nobody`: no capabilities, no groups.
const NOBODY: &str = "65534";

/// Runs `command` until it ends, or stops it with SIGTERM after `limit`; what it printed.
fn run_for(mut command: Command, limit: Duration) -> Output {
    let mut child =
        command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("starting a command");
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline && child.try_wait().expect("waiting").is_none() {
        std::thread::sleep(Duration::from_millis(20));
    }
    if child.try_wait().expect("waiting").is_none() {
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let stopped = Instant::now() + Duration::from_secs(5);
        while Instant::now() < stopped && child.try_wait().expect("waiting").is_none() {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
    }
    child.wait_with_output().expect("collecting the output")
}

/// `portguard ARGS` as `nobody`, in `netns` (entered as root first, as a user logged in there
/// would be) or in the host's namespace.
fn as_nobody(netns: Option<&Netns>, args: &[&str]) -> Output {
    let mut command = match netns {
        Some(netns) => {
            let mut nsenter = Command::new("nsenter");
            nsenter.arg(format!("--net=/run/netns/{}", netns.name)).arg("setpriv");
            nsenter
        }
        None => Command::new("setpriv"),
    };
    command
        .args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups", "--inh-caps=-all", "--"])
        .arg(binary())
        .args(args);
    run_for(command, Duration::from_secs(10))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn without_root_the_looking_commands_say_so_instead_of_not_attached() {
    require_root!();
    let lab = Lab::new().unwrap();
    let pg = Attached::start(&lab.server, &lab.server_if, WEB, &[]).unwrap();
    let iface = lab.server_if.as_str();
    // As root the attachment is there: what nobody is told below must not deny it.
    assert!(exited(pg.run(&["status"]), Exit::Ok).contains(&format!("{iface}: loader running")));

    for args in [
        &["status"][..],
        &["status", "--json"],
        &["stats"],
        &["stats", iface],
        &["stats", iface, "--json"],
        &["blocks"],
        &["events"],
        &["events", iface],
    ] {
        let output = as_nobody(Some(&lab.server), args);
        let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
        assert_eq!(
            output.status.code(),
            Some(i32::from(Exit::NeedsPrivileges.code())),
            "{args:?}: {stdout}{stderr}"
        );
        assert!(stdout.is_empty(), "{args:?} answered without being able to look: {stdout}");
        assert!(!stderr.contains("not attached"), "{args:?}: {stderr}");
        assert!(stderr.contains("needs root") && stderr.contains("sudo"), "{args:?}: {stderr}");
    }
    let status = text(&as_nobody(Some(&lab.server), &["status"]).stderr);
    assert!(status.contains("cannot tell what is attached"), "{status}");

    // In the host's namespace, too: nothing there tells a non-root user what is attached.
    let output = as_nobody(None, &["status"]);
    assert_eq!(output.status.code(), Some(i32::from(Exit::NeedsPrivileges.code())), "{output:?}");
    assert!(!text(&output.stdout).contains("not attached"), "{output:?}");

    // --netns: which namespace, that it needs CAP_SYS_ADMIN, not a bare EPERM.
    let output = as_nobody(None, &["--netns", &lab.server.name, "status"]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(i32::from(Exit::NeedsPrivileges.code())), "{stderr}");
    assert!(
        stderr.contains(&format!("entering network namespace `{}`", lab.server.name))
            && stderr.contains("CAP_SYS_ADMIN")
            && stderr.contains("needs root"),
        "{stderr}"
    );
    assert!(text(&output.stdout).is_empty());
}

#[test]
fn status_exits_like_systemctl_is_active() {
    require_root!();
    let lab = Lab::new().unwrap();
    let none = Command::new(binary()).args(["--netns", &lab.server.name, "status"]).output().unwrap();
    assert!(exited(none, Exit::NotRunning).contains("not attached anywhere"));
    let json =
        Command::new(binary()).args(["--netns", &lab.server.name, "status", "--json"]).output().unwrap();
    assert_eq!(exited(json, Exit::NotRunning).trim(), "[]");

    let mut pg = Attached::start(&lab.server, &lab.server_if, WEB, &[]).unwrap();
    let iface = lab.server_if.as_str();
    exited(pg.run(&["status"]), Exit::Ok);

    let open = pg.state_dir.path().join("open.toml");
    std::fs::write(&open, WEB.replace("[22, 80]", "[22, 80, 8080]")).unwrap();
    ok(pg.run(&["reload", iface, "--policy", open.to_str().unwrap(), "--confirm-within", "10m"]));
    let waiting = exited(pg.run(&["status"]), Exit::ConfirmationPending);
    assert!(
        waiting.contains("WAITING FOR CONFIRMATION: rolls back in 10m unless")
            || waiting.contains("WAITING FOR CONFIRMATION: rolls back in 9m 5"),
        "{waiting}"
    );
    let json: Value =
        serde_json::from_str(&exited(pg.run(&["status", "--json"]), Exit::ConfirmationPending)).unwrap();
    assert!(json[0]["rollback_remaining_secs"].as_u64().unwrap() > 500, "{json}");
    let rollback_at = humantime::parse_rfc3339(json[0]["rollback_at"].as_str().unwrap()).unwrap();
    let ahead = rollback_at.duration_since(std::time::SystemTime::now()).unwrap().as_secs();
    assert!((500..=600).contains(&ahead), "{json}");
    // -q leaves the answer: status is what was asked for.
    assert!(exited(pg.run(&["-q", "status"]), Exit::ConfirmationPending).contains("WAITING"));
    ok(pg.run(&["confirm", iface]));
    exited(pg.run(&["status"]), Exit::Ok);

    pg.kill();
    let dead = exited(pg.run(&["status"]), Exit::NotRunning);
    assert!(dead.contains("loader NOT running"), "{dead}");
}

/// Frames of `stats --watch`, split at their headings.
fn frames(output: &str) -> Vec<&str> {
    output.split("portguard stats at ").skip(1).collect()
}

#[test]
fn stats_watch_redraws_on_a_terminal_and_scrolls_with_timestamps_into_a_pipe() {
    require_root!();
    let lab = Lab::new().unwrap();
    let _servers = Servers::start(&lab.server, &[80], &[]);
    let pg = Attached::start(&lab.server, &lab.server_if, WEB, &[]).unwrap();
    let iface = lab.server_if.as_str();
    assert!(tcp_connects(&lab.client, Some(CLIENT_V4.into()), SocketAddr::new(SERVER_V4.into(), 80)));
    assert!(!tcp_connects(&lab.client, Some(CLIENT_V4.into()), SocketAddr::new(SERVER_V4.into(), 8080)));

    // Into a pipe: one report after another, each headed by its time, no colour, no cursor
    // movement (even with a TERM that has colour).
    let mut piped = pg.command(&["stats", iface, "--watch", "0.2"]);
    piped.env("TERM", "xterm-256color").env_remove("NO_COLOR").env_remove("CLICOLOR_FORCE");
    let output = text(&run_for(piped, Duration::from_millis(1500)).stdout);
    let shown = frames(&output);
    assert!(shown.len() >= 3, "{output}");
    for frame in &shown {
        let time = frame.split(',').next().unwrap();
        humantime::parse_rfc3339(time).unwrap_or_else(|e| panic!("`{time}` is not a time ({e}): {output}"));
        assert!(frame.contains(&format!("{iface}: ")), "{frame}");
    }
    assert!(shown[0].contains("every 200ms (Ctrl-C stops)"), "{output}");
    assert!(!output.contains('\x1b'), "escape sequences into a pipe: {output:?}");
    assert!(shown[1].contains("rate: "), "later rounds have rates: {output}");

    // On a terminal (a pty, through script(1)): each round clears the screen, in colour.
    let on_terminal = |extra_env: &str| {
        let line = format!(
            "{extra_env} timeout -s INT 1.2 {} --netns {} stats {iface} --watch 0.2",
            binary().display(),
            lab.server.name
        );
        let mut script = Command::new("script");
        script.args(["-q", "-e", "-c", &line, "/dev/null"]).env("TERM", "xterm-256color");
        script.env_remove("NO_COLOR").env_remove("CLICOLOR_FORCE");
        text(&run_for(script, Duration::from_secs(10)).stdout)
    };
    let drawn = on_terminal("");
    assert!(drawn.matches(portguard::output::CLEAR_SCREEN).count() >= 3, "{drawn:?}");
    assert!(frames(&drawn).len() >= 3, "{drawn:?}");
    assert!(drawn.contains("\x1b[32mpassed"), "verdicts in colour: {drawn:?}");
    assert!(drawn.contains("dropped") && drawn.contains("\x1b[31m"), "{drawn:?}");
    // NO_COLOR: still redrawn in place, without colour.
    let plain = on_terminal("NO_COLOR=1");
    assert!(plain.matches(portguard::output::CLEAR_SCREEN).count() >= 3, "{plain:?}");
    assert!(
        !plain.contains("\x1b[32m") && !plain.contains("\x1b[31m") && !plain.contains("\x1b[1m"),
        "{plain:?}"
    );

    // --json: every object carries its time.
    let once: Value = serde_json::from_str(&ok(pg.run(&["stats", iface, "--json"]))).unwrap();
    humantime::parse_rfc3339(once["time"].as_str().expect("a time")).unwrap();
}

#[test]
fn blocks_fit_ipv6_durations_print_one_way_plurals_agree_and_quiet_is_quiet() {
    require_root!();
    let lab = Lab::new().unwrap();
    let pg = Attached::start(&lab.server, &lab.server_if, WEB, &[]).unwrap();
    let iface = lab.server_if.as_str();
    let v6 = "2001:db8:ffff:ffff:ffff:ffff:ffff:0/112";

    // -q: a script's block says nothing when it works; the exit status tells.
    let quiet =
        exited(pg.run(&["-q", "block", v6, "--for", "1d", "--reason", "noisy", "--iface", iface]), Exit::Ok);
    assert!(quiet.is_empty(), "{quiet}");
    let said = ok(pg.run(&["block", "203.0.113.9", "--for", "1d", "--iface", iface]));
    assert!(said.contains("blocked 203.0.113.9/32 for 1d\n"), "one duration style: {said}");
    assert!(
        said.contains("in effect on") && (said.contains("ms after") || said.contains("under 1ms")),
        "{said}"
    );

    let list = ok(pg.run(&["blocks"]));
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 3, "{list}");
    let origin_at = lines[0].find("origin").unwrap();
    for line in &lines[1..] {
        assert_eq!(line.find("manual"), Some(origin_at), "columns fit IPv6 networks:\n{list}");
    }
    let (left_at, reason_at) = (lines[0].find("time left").unwrap(), lines[0].find("reason").unwrap());
    for line in &lines[1..] {
        // `1d`, or `23h 59m 58s` a moment later: the style `--for` takes, read back by its parser.
        let left = line[left_at..reason_at.min(line.len())].trim();
        let secs = portguard::durations::parse(left, Duration::ZERO)
            .unwrap_or_else(|e| panic!("`{left}` {e}"))
            .as_secs();
        assert!((86_300..=86_400).contains(&secs), "{list}");
        assert!(!line.contains("day") && !line.contains("hours"), "{list}");
    }

    // Plurals: one manual block is one.
    assert!(exited(pg.run(&["-q", "unblock", "203.0.113.9"]), Exit::Ok).is_empty());
    let detached = ok(pg.run(&["detach", iface]));
    assert!(detached.contains("1 manual block is kept in"), "{detached}");
}

#[test]
fn quiet_leaves_out_what_attach_reload_and_events_did() {
    require_root!();
    let lab = Lab::new().unwrap();
    let iface = lab.server_if.as_str();
    let state = tempfile::Builder::new().prefix("pgt-state-").tempdir().unwrap();
    let mut policy = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::io::Write::write_all(&mut policy, WEB.as_bytes()).unwrap();
    let portguard = |args: &[&str]| {
        let mut command = Command::new(binary());
        command.env("PORTGUARD_STATE_DIR", state.path()).args(["--netns", &lab.server.name]).args(args);
        command
    };
    // attach -q: no banner, and nothing when it detaches; it runs all the same.
    let mut attach = portguard(&["-q", "attach", iface, "--policy", policy.path().to_str().unwrap()]);
    let child = attach.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("starting attach");
    let mut loader = portguard_tests::portguard_cli::Killer(child);
    let (mut stdout, mut stderr) = (loader.0.stdout.take().unwrap(), loader.0.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    let running = loop {
        let status = portguard(&["status", "--json"]).output().unwrap();
        let listed: Value = serde_json::from_slice(&status.stdout).unwrap_or(Value::Null);
        let running = listed
            .as_array()
            .is_some_and(|all| all.iter().any(|a| a["interface"] == iface && a["loader_running"] == true));
        if running || Instant::now() > deadline || loader.0.try_wait().unwrap().is_some() {
            break running;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(loader); // SIGTERM: it detaches
    let (mut out, mut err) = (String::new(), String::new());
    std::io::Read::read_to_string(&mut stdout, &mut out).unwrap();
    std::io::Read::read_to_string(&mut stderr, &mut err).unwrap();
    let _ = portguard(&["detach", iface]).output();
    assert!(running, "attach -q did not start:\n{out}{err}");
    // The policy's warning stays (WEB has one): only what was done goes.
    let warnings_only = |text: &str| text.lines().all(|line| line.contains(": warning: "));
    assert!(out.is_empty() && warnings_only(&err), "attach -q said what it did:\n{out}{err}");
    assert!(err.contains("warning: default deny"), "{err}");

    // reload -q and events -q: nothing when they work; without -q they say it.
    let pg = Attached::start(&lab.server, &lab.server_if, WEB, &[]).unwrap();
    assert!(ok(pg.run(&["reload", iface])).contains("reloaded"));
    let quiet = pg.run(&["-q", "reload", iface]);
    assert!(quiet.status.success(), "{quiet:?}");
    assert!(quiet.stdout.is_empty() && warnings_only(&String::from_utf8_lossy(&quiet.stderr)), "{quiet:?}");
    let loud = run_for(pg.command(&["events", iface]), Duration::from_secs(2));
    assert!(String::from_utf8_lossy(&loud.stderr).contains("following the events of"), "{loud:?}");
    let quiet = run_for(pg.command(&["-q", "events", iface]), Duration::from_secs(2));
    assert!(quiet.stdout.is_empty() && quiet.stderr.is_empty(), "{quiet:?}");
    let (stopped, stderr) = pg.stop();
    assert!(stopped, "{stderr}");
}
