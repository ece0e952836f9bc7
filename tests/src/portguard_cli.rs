//! Driving the real `portguard` binary, as a user would, inside a lab namespace.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use tempfile::NamedTempFile;

use crate::Netns;

/// The binary under test: `PORTGUARD_BIN`, or the workspace's debug build.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("PORTGUARD_BIN") {
        return PathBuf::from(path);
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/portguard");
    assert!(path.exists(), "{} is missing: build it first (`cargo xtask test` does)", path.display());
    path
}

/// Runs `portguard ARGS...` to completion in `netns` (or the host's namespace).
pub fn portguard(netns: Option<&Netns>, args: &[&str]) -> Output {
    let mut command = Command::new(binary());
    if let Some(netns) = netns {
        command.args(["--netns", &netns.name]);
    }
    command.args(args).output().expect("running portguard")
}

/// Packets counted as applied (not would-drop) for verdict reason `name` in `stats --json`.
pub fn applied(stats: &serde_json::Value, name: &str) -> u64 {
    stats["reasons"]
        .as_array()
        .expect("stats has reasons")
        .iter()
        .filter(|r| r["reason"] == name && r["counted_as"] == "applied")
        .map(|r| r["packets"].as_u64().expect("a packet count"))
        .sum()
}

/// Drops (or would-drops) of `proto`/`port` in `stats --json`'s `top_dropped_ports` (0 when the
/// port is not among them: ask `stats --top` for enough).
pub fn port_drops(stats: &serde_json::Value, proto: &str, port: u16) -> u64 {
    stats["top_dropped_ports"]
        .as_array()
        .expect("stats has top_dropped_ports")
        .iter()
        .find(|p| p["protocol"] == proto && p["port"] == port)
        .map_or(0, |p| p["drops"].as_u64().expect("a drop count"))
}

/// A `portguard attach` running in the background; detached (SIGTERM) on drop.
pub struct Attached {
    child: Option<Child>,
    pub iface: String,
    pub netns: String,
    _policy: Option<NamedTempFile>,
    /// What `attach` printed before it reported running, stdout and stderr (with `--json`
    /// the banner is on stderr).
    pub banner: String,
    /// The lines of `banner` that came on stdout (none with `--json`: stdout is JSON only).
    pub banner_on_stdout: Vec<String>,
    /// Reported running: only then is whatever is left behind ours to detach.
    started: bool,
    /// What `attach` prints after it runs (events, one per line).
    lines: mpsc::Receiver<String>,
    /// What it prints on stderr, as it comes.
    notes: mpsc::Receiver<String>,
    /// Lines taken from `notes` so far.
    stderr_seen: Vec<String>,
    /// Lines taken from `lines` so far.
    pub output: Vec<String>,
    /// This attachment's own state directory (manual blocks, policy snapshots), so tests do not
    /// share the host's `/var/lib/portguard` or each other's.
    pub state_dir: tempfile::TempDir,
}

impl Attached {
    /// Starts `portguard --netns NS attach IFACE --policy <policy_text> EXTRA...` and waits
    /// until it reports that it runs.
    pub fn start(netns: &Netns, iface: &str, policy_text: &str, extra: &[&str]) -> Result<Self> {
        let mut policy = tempfile::Builder::new().prefix("pgt-policy-").suffix(".toml").tempfile()?;
        std::io::Write::write_all(&mut policy, policy_text.as_bytes())?;
        let policy_path = policy.path().to_str().context("temp path")?.to_owned();
        Self::start_file(netns, iface, &policy_path, extra, Some(policy))
    }

    /// Like `start`, with a policy file that already exists.
    pub fn start_file(
        netns: &Netns,
        iface: &str,
        policy_path: &str,
        extra: &[&str],
        policy: Option<NamedTempFile>,
    ) -> Result<Self> {
        let state_dir = tempfile::Builder::new().prefix("pgt-state-").tempdir()?;
        Self::start_in(netns, iface, policy_path, extra, policy, state_dir)
    }

    /// Like `start_file`, with its state directory (journal, evidence, baselines) made in
    /// `parent` and left there after the loader stops, for a reader to look at.
    pub fn start_keeping_state(netns: &Netns, iface: &str, policy_path: &str, parent: &Path) -> Result<Self> {
        let mut state_dir = tempfile::Builder::new().prefix("state-").tempdir_in(parent)?;
        state_dir.disable_cleanup(true);
        Self::start_in(netns, iface, policy_path, &[], None, state_dir)
    }

    fn start_in(
        netns: &Netns,
        iface: &str,
        policy_path: &str,
        extra: &[&str],
        policy: Option<NamedTempFile>,
        state_dir: tempfile::TempDir,
    ) -> Result<Self> {
        let mut child = Command::new(binary())
            .env("PORTGUARD_STATE_DIR", state_dir.path())
            .args(["--netns", &netns.name, "attach", iface, "--policy", policy_path])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting portguard attach")?;
        let lines = lines_of(child.stdout.take().context("stdout")?);
        let notes = lines_of(child.stderr.take().context("stderr")?);
        let mut attached = Self {
            child: Some(child),
            iface: iface.to_owned(),
            netns: netns.name.clone(),
            _policy: policy,
            banner: String::new(),
            banner_on_stdout: Vec::new(),
            started: false,
            lines,
            notes,
            stderr_seen: Vec::new(),
            output: Vec::new(),
            state_dir,
        };
        // The banner ends with `running until ...`: on stdout, or on stderr with `--json`.
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            while let Ok(line) = attached.notes.try_recv() {
                attached.stderr_seen.push(line.clone());
                attached.banner.push_str(&line);
                attached.banner.push('\n');
                attached.started |= line.starts_with("running until");
            }
            while let Ok(line) = attached.lines.try_recv() {
                if serde_json::from_str::<serde_json::Value>(&line).is_ok() {
                    // An event: output, not banner.
                    attached.output.push(line);
                    continue;
                }
                attached.banner.push_str(&line);
                attached.banner.push('\n');
                attached.started |= line.starts_with("running until");
                attached.banner_on_stdout.push(line);
                if attached.started {
                    break;
                }
            }
            if attached.started {
                return Ok(attached);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let stderr = attached.stop_and_collect_stderr();
        bail!("portguard attach did not start:\n{}{stderr}", attached.banner)
    }

    /// Takes what `attach` printed since the last call (waiting up to `wait` for more).
    pub fn collect(&mut self, wait: Duration) -> &[String] {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.output.push(line),
                Err(_) => break,
            }
        }
        &self.output
    }

    /// Events printed so far (attach must run with `--json`), waiting `wait` for more.
    pub fn events(&mut self, wait: Duration) -> Vec<serde_json::Value> {
        self.collect(wait).iter().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// Waits until an event matching `wanted` arrives (or `timeout` passes).
    pub fn wait_for_event(
        &mut self,
        timeout: Duration,
        wanted: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        let mut seen = 0;
        loop {
            let events = self.events(Duration::from_millis(100));
            if let Some(found) = events.iter().skip(seen).find(|e| wanted(e)) {
                return Some(found.clone());
            }
            seen = events.len();
            if Instant::now() >= deadline {
                return None;
            }
        }
    }

    /// `portguard stats IFACE --json`, parsed.
    pub fn stats(&self) -> serde_json::Value {
        let output = self.run(&["stats", &self.iface, "--json"]);
        assert!(output.status.success(), "stats failed: {}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).expect("stats JSON")
    }

    /// Runs another portguard command in the same namespace (and state directory).
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("running portguard")
    }

    /// A portguard command in the same namespace and state directory.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(binary());
        command.env("PORTGUARD_STATE_DIR", self.state_dir.path()).args(["--netns", &self.netns]).args(args);
        command
    }

    /// Another loader for this attachment's interface, in its namespace and state directory
    /// (a restart after a detach): `portguard attach IFACE --policy POLICY EXTRA...`, its
    /// output discarded; stopped when the guard drops.
    pub fn attach_again(&self, policy: &Path, extra: &[&str]) -> Killer {
        let policy = policy.to_str().expect("a UTF-8 path");
        let child = self
            .command(&["attach", &self.iface, "--policy", policy])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting portguard attach");
        Killer(child)
    }

    /// `portguard events IFACE EXTRA...` beside this attachment (as from another terminal),
    /// once it follows the loader.
    pub fn follow_events(&self, extra: &[&str]) -> Result<Follower> {
        let mut child = self
            .command(&["events", &self.iface])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting portguard events")?;
        let lines = lines_of(child.stdout.take().context("stdout")?);
        let notes = lines_of(child.stderr.take().context("stderr")?);
        let mut follower = Follower { child, lines, output: Vec::new() };
        match notes.recv_timeout(Duration::from_secs(10)) {
            Ok(note) if note.starts_with("following the events") => {
                // Connected and asked; give the loader a moment to subscribe.
                std::thread::sleep(Duration::from_millis(300));
                Ok(follower)
            }
            other => {
                follower.stop();
                bail!("portguard events did not start following: {other:?}")
            }
        }
    }

    /// The loader's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Waits up to `timeout` for the loader to exit by itself (a rollback, a detach from
    /// elsewhere): its exit status, or `None` if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                // Reaped: nothing is left to stop (and its pid may be another process's soon).
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the loader process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Sends SIGTERM and waits; returns the exit status success and stderr.
    pub fn stop(mut self) -> (bool, String) {
        let success = self.terminate();
        let stderr = self.stop_and_collect_stderr();
        (success, stderr)
    }

    /// Sends SIGTERM and waits: whether it exited with success, every line it printed on
    /// stdout (those `collect` took too) and what it printed on stderr.
    pub fn stop_and_read(mut self) -> (bool, Vec<String>, String) {
        let success = self.terminate();
        let stderr = self.stop_and_collect_stderr();
        // Its stdout has closed too: what is left in the pipe comes, then the channel hangs up.
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Ok(line) = self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            self.output.push(line);
        }
        (success, std::mem::take(&mut self.output), stderr)
    }

    fn terminate(&mut self) -> bool {
        let Some(child) = self.child.as_mut() else {
            return false;
        };
        // Exited already (and reaped): its pid may be another process's now.
        if let Ok(Some(status)) = child.try_wait() {
            return status.success();
        }
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Everything it wrote on stderr, once it has stopped (lines already shown in the banner
    /// too).
    fn stop_and_collect_stderr(&mut self) -> String {
        self.terminate();
        self.child = None;
        // The pipe closes when the process has gone: the reader thread then hangs up.
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Ok(line) = self.notes.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            self.stderr_seen.push(line);
        }
        self.stderr_seen.iter().map(|line| format!("{line}\n")).collect()
    }

    /// Kills the loader with SIGKILL: enforcement stays pinned until this guard drops.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.terminate();
        }
        if !self.started {
            // Never attached (say, refused because another loader holds the interface).
            return;
        }
        // Whatever is left (a killed loader's pins): remove it. Errors mean nothing was left.
        let _ = self.command(&["detach", &self.iface]).output();
    }
}

/// A loader spawned by hand (`Attached::command(["attach", ..])`): stopped with SIGTERM when
/// dropped (SIGKILL after 10 s), also when the test fails.
pub struct Killer(pub Child);

impl Drop for Killer {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The lines of a child's pipe, as they come (the channel hangs up when the pipe closes).
fn lines_of(pipe: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A `portguard events` process following an attachment; killed on drop.
pub struct Follower {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// What it printed so far (taken by `collect`).
    pub output: Vec<String>,
}

impl Follower {
    /// Takes what it printed since the last call, waiting up to `wait` for more.
    pub fn collect(&mut self, wait: Duration) -> &[String] {
        let deadline = Instant::now() + wait;
        while let Ok(line) = self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            self.output.push(line);
        }
        &self.output
    }

    /// Waits up to `timeout` until a printed line satisfies `wanted`.
    pub fn wait_for(&mut self, timeout: Duration, wanted: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.output.iter().find(|l| wanted(l)) {
                return Some(line.clone());
            }
            if Instant::now() >= deadline {
                return None;
            }
            self.collect(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A web host's policy: SSH and HTTP open, the rest closed (the operations labs' policy).
pub const WEB_POLICY: &str = r#"
mode = "enforce"
default = "deny"

[[allow]]
proto = "tcp"
ports = [22, 80]
"#;

/// A command's standard output, failing the test with both outputs when it failed.
#[allow(
    clippy::needless_pass_by_value,
    reason = "takes the `Output` a command returned, so calls read `succeeded(portguard(..))`"
)]
pub fn succeeded(output: Output) -> String {
    assert!(
        output.status.success(),
        "command failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A command's standard output, failing the test with both outputs unless it ended with
/// `exit` (the codes are `portguard::exit::Exit`).
#[allow(
    clippy::needless_pass_by_value,
    reason = "takes the `Output` a command returned, so calls read `succeeded(portguard(..))`"
)]
pub fn exited(output: Output, exit: portguard::exit::Exit) -> String {
    assert_eq!(
        output.status.code(),
        Some(i32::from(exit.code())),
        "expected exit status {} ({}): {}{}",
        exit.code(),
        exit.label(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Where portguard pins the attachment of `iface` in `netns`.
pub fn pin_dir(netns: &Netns, iface: &str) -> PathBuf {
    portguard::paths::scoped_in(portguard::paths::PIN_ROOT, netns.id()).join(iface)
}

/// A run file of the attachment of `iface` in `netns`: `suffix` is `json` (its record),
/// `next.json`, `lock`, `sock`...
pub fn run_file(netns: &Netns, iface: &str, suffix: &str) -> PathBuf {
    portguard::paths::scoped_in(portguard::paths::RUN_DIR, netns.id()).join(format!("{iface}.{suffix}"))
}
