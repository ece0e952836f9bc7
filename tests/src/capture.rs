//! Real captures of lab traffic with tcpdump and dumpcap, inside a lab namespace, bounded in
//! time and stopped (or killed) also when a test fails.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::Netns;

/// Whether `program` is on the PATH.
pub fn tool_exists(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Ends the calling test unless every tool named is installed (see [`crate::cannot_run`]).
#[macro_export]
macro_rules! require_tools {
    ($($tool:expr),+ $(,)?) => {
        let missing: Vec<&str> =
            [$($tool),+].into_iter().filter(|t| !$crate::capture::tool_exists(t)).collect();
        if !missing.is_empty() {
            $crate::cannot_run(&format!(
                "it needs {} (`cargo xtask setup` installs them)",
                missing.join(", ")
            ));
            return;
        }
    };
}

/// Longest a capture runs, whatever the test does.
const LIFETIME: Duration = Duration::from_secs(120);

/// A tcpdump or dumpcap writing a capture file in a namespace.
pub struct Capture {
    child: Option<Child>,
}

impl Capture {
    /// `tcpdump -i IFACE -U -w PATH EXTRA...` in `netns`, once it listens.
    pub fn tcpdump(netns: &Netns, iface: &str, path: &Path, extra: &[&str]) -> Result<Self> {
        let path = path.to_str().context("capture path")?;
        let mut args = vec!["-i", iface, "-U", "--immediate-mode", "-n", "-B", "16384", "-w", path];
        args.extend_from_slice(extra);
        Self::start(netns, "tcpdump", &args, "listening on")
    }

    /// `dumpcap -i IFACE -w PATH EXTRA...` in `netns` (pcapng), once it captures.
    pub fn dumpcap(netns: &Netns, iface: &str, path: &Path, extra: &[&str]) -> Result<Self> {
        let path = path.to_str().context("capture path")?;
        let mut args = vec!["-i", iface, "-q", "-w", path];
        args.extend_from_slice(extra);
        Self::start(netns, "dumpcap", &args, "Capturing on")
    }

    fn start(netns: &Netns, program: &str, args: &[&str], ready: &'static str) -> Result<Self> {
        let lifetime = LIFETIME.as_secs().to_string();
        // `timeout` bounds it even if this process dies before dropping the guard.
        let mut full = vec!["--signal=INT", "--kill-after=5", lifetime.as_str(), program];
        full.extend_from_slice(args);
        let mut child = netns
            .command("timeout")
            .args(&full)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {program} (installed by `cargo xtask setup`)"))?;
        let stderr = child.stderr.take().context("stderr")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut capture = Self { child: Some(child) };
        let mut said = String::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(line) if line.contains(ready) => break,
                Ok(line) => said.push_str(&format!("{line}\n")),
                Err(_) => {
                    capture.kill();
                    bail!("{program} did not start within 10 s:\n{said}");
                }
            }
        }
        // The socket is open; let the first packets reach it before traffic starts.
        std::thread::sleep(Duration::from_millis(200));
        Ok(capture)
    }

    /// Stops it (SIGINT: the file is flushed and closed) and waits, at most 10 s.
    pub fn stop(mut self) {
        // Packets already on the socket are written before it exits.
        std::thread::sleep(Duration::from_millis(300));
        if let Some(child) = self.child.as_mut() {
            // `timeout` passes SIGINT on to the capture.
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
            for _ in 0..200 {
                if let Ok(Some(_)) = child.try_wait() {
                    self.child = None;
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.kill();
    }

    /// SIGTERM (which `timeout` passes on to the capture), then SIGKILL for both.
    fn kill(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..40 {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // `timeout` leads its own process group: the capture is in it.
        let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.kill();
    }
}
