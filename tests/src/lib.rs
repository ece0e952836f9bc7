//! The namespace lab the real-kernel tests and the demo run in.
//!
//! A `Lab` is two network namespaces, *client* and *server*, joined by a veth pair. Only
//! documentation addresses are used (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24,
//! 2001:db8::/32), every namespace and link is deleted when its guard drops (also when a test
//! fails), and every traffic helper is bounded in count and time.

pub mod capture;
pub mod crowdsec;
pub mod flood;
pub mod http;
pub mod kernel;
pub mod model;
pub mod packets;
pub mod portguard_cli;
pub mod schemas;
pub mod traffic;
pub mod walkthrough;

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, Result, bail};
use aya::programs::{SchedClassifier, TcAttachType};
use nix::sched::{CloneFlags, setns};

pub use portguard_cli::Attached;

/// Set by `cargo xtask test` (and implied by `CI=true`): a test that cannot run fails.
pub const MUST_RUN_ENV: &str = "PORTGUARD_TESTS_MUST_RUN";

/// Whether a test that cannot run here must fail instead of returning early: under CI (`CI`
/// set, and not to "false" or "0") or `cargo xtask test` (`PORTGUARD_TESTS_MUST_RUN` set,
/// and not to "0"). A test that passes without running proves nothing.
pub fn must_run() -> bool {
    must_run_under(std::env::var("CI").ok().as_deref(), std::env::var(MUST_RUN_ENV).ok().as_deref())
}

fn must_run_under(ci: Option<&str>, must_run: Option<&str>) -> bool {
    let on = |value: Option<&str>, off: &[&str]| value.is_some_and(|v| !v.is_empty() && !off.contains(&v));
    on(ci, &["false", "0"]) || on(must_run, &["0"])
}

/// The one decision for a test whose prerequisite (root, a tool, a kernel feature) is missing:
/// under [`must_run`] it fails with `reason`; otherwise (a developer's plain `cargo test`) it
/// says so on the terminal, past the test harness's output capture, and the caller returns.
/// Use it through [`require_root!`] and [`require_tools!`], which return from the test.
pub fn cannot_run(reason: &str) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    assert!(!must_run(), "{test} did not run: {reason}");
    // Straight to the process's stderr: `eprintln!` inside a passing test is swallowed.
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "\nNOT RUN (passed without testing anything): {test}: {reason}");
}

/// Ends the calling test unless it runs as root (see [`cannot_run`]).
#[macro_export]
macro_rules! require_root {
    () => {
        if !nix::unistd::geteuid().is_root() {
            $crate::cannot_run(
                "it needs root (network namespaces, XDP, BPF_PROG_TEST_RUN); `sudo -E cargo xtask test` runs it",
            );
            return;
        }
    };
}

pub const SERVER_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// A client address in the example policy's blocklist (203.0.113.0/24).
pub const BLOCKED_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
/// A client address in the example policy's admin network (198.51.100.0/24).
pub const ADMIN_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
pub const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// In 2001:db8:bad::/48, the example policy's IPv6 blocklist entry.
pub const BLOCKED_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 0, 0, 0, 0, 7);
/// In 2001:db8:1::/48, the example policy's IPv6 admin network.
pub const ADMIN_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 7);
/// More client addresses on the lab's own network, for a scanner and an intruder.
pub const SCANNER_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 66);
pub const INTRUDER_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 77);

/// Every extra client address a lab configures, and the prefix the server routes it by (none
/// when it is on the lab's own network).
const CLIENT_EXTRA: [(&str, Option<&str>); 6] = [
    ("203.0.113.7/24", Some("203.0.113.0/24")),
    ("198.51.100.7/24", Some("198.51.100.0/24")),
    ("2001:db8:bad::7/64", Some("2001:db8:bad::/48")),
    ("2001:db8:1::7/64", Some("2001:db8:1::/48")),
    ("192.0.2.66/24", None),
    ("192.0.2.77/24", None),
];

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call: interface names must fit in 15 bytes.
pub fn unique(tag: &str) -> String {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    format!("pg{:x}{:x}{tag}", std::process::id() & 0xffff, id)
}

/// Runs a command, failing with its output when it fails.
pub fn run(program: &str, args: &[&str]) -> Result<Output> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} (is it installed? `cargo xtask setup` installs it)"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        );
    }
    Ok(output)
}

/// A network namespace under /run/netns, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Result<Self> {
        let name = format!("{}-{tag}", unique("ns"));
        run("ip", &["netns", "add", &name])?;
        let netns = Self { name };
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// How portguard tells this namespace apart.
    pub fn id(&self) -> portguard::netns::Netns {
        portguard::netns::Netns::of_file(&std::path::Path::new("/run/netns").join(&self.name))
            .expect("the namespace exists")
    }

    /// `ip -n NAME ARGS...`
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs a program in this namespace (network namespace only, like portguard's --netns).
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output> {
        let net = format!("--net=/run/netns/{}", self.name);
        let mut full = vec![net.as_str(), program];
        full.extend_from_slice(args);
        run("nsenter", &full)
    }

    /// A `Command` that runs in this namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("nsenter");
        command.arg(format!("--net=/run/netns/{}", self.name)).arg(program);
        command
    }

    /// Runs `f` on a thread inside this namespace: sockets it opens live there.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = File::open(&path).expect("namespace file");
            setns(file, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("namespace thread panicked")
    }

    /// Like `run`, without waiting: the thread lives in the namespace until `f` returns.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = File::open(&path).expect("namespace file");
            setns(file, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes the interfaces in it (and both ends of a veth pair).
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct LabOptions {
    /// Client frames reach the server with an 802.1Q tag of this id.
    pub vlan: Option<u16>,
    /// ... and an 802.1ad (QinQ) outer tag of this id around it.
    pub outer_vlan: Option<u16>,
}

/// Client and server namespaces joined by a veth pair.
pub struct Lab {
    pub client: Netns,
    pub server: Netns,
    /// The veth end in the server namespace: portguard attaches here.
    pub server_if: String,
    pub client_if: String,
    /// Test fixture programs (VLAN tagging), detached when the lab drops.
    fixtures: Vec<aya::Ebpf>,
}

/// Loads one testkit program and attaches it with TCX in the calling thread's namespace.
fn attach_testkit(name: &str, iface: &str, hook: TcAttachType, inner: u16, outer: u16) -> Result<aya::Ebpf> {
    let mut ebpf = aya::EbpfLoader::new()
        .override_global("PG_TEST_VLAN_INNER", &inner, true)
        .override_global("PG_TEST_VLAN_OUTER", &outer, true)
        .load(portguard::TESTKIT_OBJECT)
        .context("loading the testkit")?;
    let program: &mut SchedClassifier = ebpf.program_mut(name).context("testkit program")?.try_into()?;
    program.load()?;
    program.attach(iface, hook).with_context(|| format!("attaching {name} to {iface}"))?;
    Ok(ebpf)
}

impl Lab {
    pub fn new() -> Result<Self> {
        Self::with(LabOptions::default())
    }

    pub fn with(options: LabOptions) -> Result<Self> {
        Self::build(options, unique("s"))
    }

    /// A lab whose server interface is called `server_if`: two labs can have interfaces of
    /// the same name, each in its own namespace (as two containers' `eth0`s).
    pub fn with_server_if(server_if: &str) -> Result<Self> {
        Self::build(LabOptions::default(), server_if.to_owned())
    }

    fn build(options: LabOptions, server_if: String) -> Result<Self> {
        let client = Netns::new("cli")?;
        let server = Netns::new("srv")?;
        let client_if = unique("c");
        let mut lab = Self { client, server, server_if, client_if, fixtures: Vec::new() };
        lab.create_link()?;
        lab.tag_vlans(options)?;
        Ok(lab)
    }

    /// Creates the veth pair between the namespaces, with the lab's addresses and routes.
    pub fn create_link(&self) -> Result<()> {
        run(
            "ip",
            &[
                "link",
                "add",
                &self.client_if,
                "netns",
                &self.client.name,
                "type",
                "veth",
                "peer",
                "name",
                &self.server_if,
                "netns",
                &self.server.name,
            ],
        )?;
        self.client.ip(&["link", "set", &self.client_if, "up"])?;
        self.server.ip(&["link", "set", &self.server_if, "up"])?;
        Self::address(&self.server, &self.server_if, &["192.0.2.2/24", "2001:db8::2/64"])?;
        Self::address(&self.client, &self.client_if, &["192.0.2.1/24", "2001:db8::1/64"])?;
        for (address, route) in CLIENT_EXTRA {
            Self::address(&self.client, &self.client_if, &[address])?;
            if let Some(route) = route {
                self.server.ip(&["route", "add", route, "dev", &self.server_if])?;
            }
        }
        Ok(())
    }

    /// Deletes the veth pair (both ends), as a container runtime or hot-unplug does; the lab's
    /// namespaces stay. `create_link` makes it again, under the same names.
    pub fn delete_link(&self) -> Result<()> {
        self.server.ip(&["link", "del", &self.server_if])?;
        Ok(())
    }

    /// Tags the client's frames with the requested VLAN ids on its way out and strips them
    /// again behind the server's XDP hook (see portguard-ebpf/src/testkit.rs): the kernels we
    /// run on may lack VLAN devices, and this way the tags are on the wire either way.
    fn tag_vlans(&mut self, options: LabOptions) -> Result<()> {
        if options.vlan.is_none() && options.outer_vlan.is_none() {
            return Ok(());
        }
        // Offloaded tags would travel in skb metadata instead of the frame.
        self.client
            .exec("ethtool", &["-K", &self.client_if, "txvlan", "off", "tx-vlan-stag-hw-insert", "off"])?;
        let (inner, outer) = (options.vlan.unwrap_or(0), options.outer_vlan.unwrap_or(0));
        let client_if = self.client_if.clone();
        let tagger = self
            .client
            .run(move || attach_testkit("pg_test_tag", &client_if, TcAttachType::Egress, inner, outer));
        let server_if = self.server_if.clone();
        let untagger =
            self.server.run(move || attach_testkit("pg_test_untag", &server_if, TcAttachType::Ingress, 0, 0));
        self.fixtures.push(tagger?);
        self.fixtures.push(untagger?);
        Ok(())
    }

    fn address(netns: &Netns, iface: &str, addresses: &[&str]) -> Result<()> {
        for address in addresses {
            if address.contains(':') {
                netns.ip(&["addr", "add", address, "dev", iface, "nodad"])?;
            } else {
                netns.ip(&["addr", "add", address, "dev", iface])?;
            }
        }
        Ok(())
    }

    /// Runs nmap from the client against the server's ports 1-300 with `args` (a scan kind);
    /// bounded by nmap's own host timeout and ours.
    pub fn nmap(&self, args: &[&str]) {
        let mut full = vec!["-T5", "-p", "1-300"];
        full.extend_from_slice(args);
        self.nmap_at(SERVER_V4.into(), &full);
    }

    /// Runs nmap from the client against `target` with `args` (timing, ports, scan kind);
    /// bounded by nmap's own host timeout and ours.
    pub fn nmap_at(&self, target: IpAddr, args: &[&str]) {
        let output = self.nmap_output(target, args).expect("nmap runs");
        assert!(output.status.success(), "nmap failed: {}", String::from_utf8_lossy(&output.stderr));
    }

    /// Like `nmap_at`, returning what nmap printed (for the demo and the walkthrough).
    pub fn nmap_output(&self, target: IpAddr, args: &[&str]) -> Result<Output> {
        let target = target.to_string();
        let mut full = vec!["60", "nmap", "-n", "-Pn", "--max-retries", "1", "--host-timeout", "40s"];
        if target.contains(':') {
            full.push("-6");
        }
        full.extend_from_slice(args);
        full.push(&target);
        self.client.exec("timeout", &full)
    }

    pub fn server_addr(v6: bool) -> IpAddr {
        if v6 { SERVER_V6.into() } else { SERVER_V4.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::must_run_under;

    #[test]
    fn ci_and_xtask_make_a_test_that_cannot_run_fail() {
        assert!(must_run_under(Some("true"), None));
        assert!(must_run_under(Some("1"), None));
        assert!(must_run_under(None, Some("1")));
        assert!(must_run_under(Some("false"), Some("1")));
        assert!(!must_run_under(None, None));
        assert!(!must_run_under(Some("false"), None));
        assert!(!must_run_under(Some("0"), Some("0")));
        assert!(!must_run_under(Some(""), Some("")));
    }
}
