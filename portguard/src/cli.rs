//! Command-line syntax. `portguard --help` and `portguard VERB --help` are generated from it.

use std::path::PathBuf;

use std::time::Duration;

use clap::{Parser, Subcommand};
use portguard::loader::XdpModeChoice;

#[derive(Parser, Debug)]
#[command(
    name = "portguard",
    version,
    about = "Port policy and port-scan defence for edge hosts, enforced in the kernel with XDP",
    after_help = after_help()
)]
pub struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace); PORTGUARD_LOG=debug works too.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Print only errors, warnings and what was asked for: no lines saying what was done
    /// (for scripts; the exit status tells the outcome).
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// Run in the network namespace /run/netns/NAME (network namespace only: pins stay
    /// visible to every portguard command, unlike with `ip netns exec`). Interface names mean
    /// that namespace's interfaces, and commands act on its attachments only.
    #[arg(long, global = true, value_name = "NAME")]
    pub netns: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Enforce a policy on an interface; runs in the foreground until Ctrl-C or SIGTERM.
    #[command(after_help = "Example:\n  sudo portguard attach eth0 --policy /etc/portguard/policy.toml")]
    Attach {
        /// Interface to protect (inbound traffic is judged, outbound flows are learnt).
        #[arg(value_parser = iface_name)]
        iface: String,
        /// Policy file (TOML; see the README's policy reference).
        #[arg(short, long, value_name = "FILE")]
        policy: PathBuf,
        /// XDP attach mode: auto tries native (driver) mode, then generic.
        #[arg(long, value_enum, default_value = "auto")]
        xdp_mode: XdpModeChoice,
        /// Treat bad lines in blocklist files as errors.
        #[arg(long)]
        strict: bool,
        /// Print events as JSON, one object per line, for log shippers (schema:
        /// docs/schemas/event.schema.json); the lines for people go to stderr.
        #[arg(long)]
        json: bool,
        /// Leave enforcement in place when this loader exits (a later attach adopts it,
        /// `portguard detach` removes it).
        #[arg(long)]
        pin: bool,
        /// Detach by itself unless `portguard confirm` runs within this time (e.g. 2m): a
        /// policy that cuts your SSH session undoes itself.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        confirm_within: Option<Duration>,
        /// Serve Prometheus metrics at http://ADDR/metrics (default 127.0.0.1:9464; anything
        /// but loopback is your explicit choice). Overrides `[metrics] listen`.
        #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:9464")]
        metrics: Option<std::net::SocketAddr>,
        /// Attach even if the policy closes SSH where it listens, or blocks the host's own
        /// networks (without it, such a policy is refused; --confirm-within also lets a
        /// policy that closes SSH through, since it rolls back by itself).
        #[arg(long)]
        force: bool,
    },
    /// Swap in a new policy atomically (no packet sees a mix of old and new rules); counters
    /// carry over. An invalid policy is refused and the running one stays.
    #[command(
        after_help = "Example:\n  sudo portguard reload eth0 --policy new.toml --confirm-within 2m\n  sudo portguard confirm eth0"
    )]
    Reload {
        /// Interface (default: every attachment).
        #[arg(value_parser = iface_name)]
        iface: Option<String>,
        /// The new policy (default: the running policy's file, read again).
        #[arg(short, long, value_name = "FILE")]
        policy: Option<PathBuf>,
        /// Treat bad lines in blocklist files as errors.
        #[arg(long)]
        strict: bool,
        /// Roll back to the previous policy unless `portguard confirm` runs within this time.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        confirm_within: Option<Duration>,
        /// Reload even if the policy closes SSH where it listens, or blocks the host's own
        /// networks (see `attach --force`).
        #[arg(long)]
        force: bool,
    },
    /// Keep a change made with --confirm-within.
    Confirm {
        /// Interface (default: every attachment waiting for confirmation).
        #[arg(value_parser = iface_name)]
        iface: Option<String>,
    },
    /// Block sources now, on every packet, without a restart; saved across restarts and reboots.
    #[command(
        after_help = "Example:\n  sudo portguard block 203.0.113.7 2001:db8:bad::/48 --for 1h --reason \"ssh brute force\""
    )]
    Block {
        /// Addresses or networks (IPv4, IPv6).
        #[arg(required = true, value_name = "ADDR_OR_CIDR")]
        sources: Vec<String>,
        /// How long (e.g. 30s, 15m, 2h); default: until `portguard unblock`.
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
        duration: Option<Duration>,
        /// Why, shown by `portguard blocks` (e.g. "ssh brute force").
        #[arg(long)]
        reason: Option<String>,
        /// Confirms blocking a whole address family: 0.0.0.0/0 or ::ffff:0:0/96 (every IPv4
        /// source), ::/0 (every IPv6 source).
        #[arg(long)]
        everything: bool,
        /// Block even networks that cover this host's addresses, the attached interface's
        /// network or default gateway, or your SSH session's address.
        #[arg(long)]
        force: bool,
        /// Only this attachment (default: every attachment in this network namespace,
        /// including future ones).
        #[arg(long, value_parser = iface_name)]
        iface: Option<String>,
    },
    /// Lift manual (and automatic) blocks.
    Unblock {
        /// Addresses or networks (IPv4, IPv6); automatic blocks inside them are lifted too.
        #[arg(required = true, value_name = "ADDR_OR_CIDR")]
        sources: Vec<String>,
        /// Only on this attachment (default: every attachment in this network namespace).
        #[arg(long, value_parser = iface_name)]
        iface: Option<String>,
    },
    /// List active blocks: policy, manual and automatic, with reason and time left.
    Blocks {
        /// Print the list as JSON (schema: docs/schemas/blocks.schema.json).
        #[arg(long)]
        json: bool,
        /// Only the blocks of this attachment.
        #[arg(long, value_parser = iface_name)]
        iface: Option<String>,
    },
    /// (internal) carries out a --confirm-within rollback.
    #[command(hide = true)]
    RollbackGuard {
        /// The interface whose change is rolled back.
        #[arg(value_parser = iface_name)]
        iface: String,
        /// Which change (from the pending record), so a confirmed one is left alone.
        token: String,
    },
    /// Follow the events (drops, scans, blocks) of an attachment started elsewhere, or read
    /// back what its journal kept (`--since`).
    #[command(
        after_help = "Example:\n  sudo portguard events eth0 --json | jq .\n  sudo portguard events --since 2h"
    )]
    Events {
        /// Interface (default: every attached interface).
        #[arg(value_parser = iface_name)]
        iface: Option<String>,
        /// One JSON object per line (schema: docs/schemas/event.schema.json).
        #[arg(long)]
        json: bool,
        /// Print what the journal kept since then (`2h`, or an RFC 3339 time) instead of
        /// following; gaps in the journal are said on stderr.
        #[arg(long, value_name = "WHEN", value_parser = parse_since)]
        since: Option<std::time::SystemTime>,
    },
    /// What happened, from the journal: timeline, top sources and ports, blocks, changes.
    #[command(
        after_help = "Exit status: 0, or 8 when the journal does not cover the whole window or has lines it cannot read (the report is given in full; 1: report failed).\n\nExample:\n  sudo portguard report --since 24h --html report.html"
    )]
    Report {
        /// Interface (default: every interface with a journal in this namespace).
        #[arg(value_parser = iface_name)]
        iface: Option<String>,
        /// The window's start: a duration back from now (`24h`) or an RFC 3339 time.
        #[arg(long, value_name = "WHEN", value_parser = parse_since, default_value = "24h")]
        since: std::time::SystemTime,
        /// Also write the report as a self-contained HTML page.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Propose a policy from the traffic the attachment has seen (run it in monitor mode for
    /// a while first): every port with real use and a listener opened, to the networks that
    /// used it where they are few, SSH kept reachable, with the evidence in comments. Prints
    /// the policy file on stdout (`--json`: the same proposal as JSON, the file in it).
    #[command(
        after_help = "Example:\n  sudo portguard learn eth0 > proposed.toml && portguard check proposed.toml\n  sudo portguard learn eth0 --since 24h --min-connections 10\n  sudo portguard learn eth0 --json | jq -r .policy > proposed.toml\n  sudo portguard learn eth0 --reset"
    )]
    Learn {
        /// The attached interface whose statistics to read.
        #[arg(value_parser = iface_name)]
        iface: String,
        /// New connections (TCP SYNs, UDP datagrams) that make a port's use real, and a
        /// network's use of a port regular.
        #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
        min_connections: u64,
        /// Count only the source networks last seen since then (`24h`, or an RFC 3339 time).
        /// Their counts still cover everything since the statistics began.
        #[arg(long, value_name = "WHEN", value_parser = parse_since)]
        since: Option<std::time::SystemTime>,
        /// Most networks a rule is narrowed to; a port used from more is opened to everyone.
        #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=64))]
        max_networks: u64,
        /// Print the proposal as JSON: the policy file, every rule with its evidence, the ports
        /// left closed, idle listeners, what the statistics cover (schema:
        /// docs/schemas/learn.schema.json).
        #[arg(long)]
        json: bool,
        /// Start the statistics afresh (every count at zero, counting from now) and exit.
        /// Proposes nothing, so it takes none of the other options (`--json` included).
        #[arg(long, conflicts_with_all = ["since", "min_connections", "max_networks", "json"])]
        reset: bool,
    },
    /// Validate a policy without touching the kernel; explains every error with its line.
    #[command(after_help = "Example:\n  portguard check policy.toml")]
    Check {
        /// The policy file to check.
        policy: PathBuf,
        /// Treat bad lines in blocklist files as errors.
        #[arg(long)]
        strict: bool,
        /// Print the verdict and the compiled policy as JSON (schema:
        /// docs/schemas/check.schema.json).
        #[arg(long)]
        json: bool,
        /// Exit 1 when the policy has warnings, as when it has errors (for CI).
        #[arg(long)]
        deny_warnings: bool,
    },
    /// Replay a capture (pcap or pcapng) through the real kernel program with a policy and
    /// report what would pass and drop, by rule and reason. No interface is touched. Packets
    /// that cannot be judged are listed with why; the exit status is 8 when part of the file
    /// could not be read (everything before and around it is still judged).
    #[command(
        after_help = "Example:\n  sudo tcpdump -i eth0 -w today.pcap -c 100000\n  sudo portguard verify --policy new.toml --pcap today.pcap --host 192.0.2.2"
    )]
    Verify {
        /// The policy to try.
        #[arg(short, long, value_name = "FILE")]
        policy: PathBuf,
        /// The capture: pcap or pcapng, as tcpdump, dumpcap and Wireshark write them
        /// (/dev/stdin reads a pipe).
        #[arg(long, value_name = "CAPTURE")]
        pcap: PathBuf,
        /// The host's own addresses: packets from them go through the egress program (flows
        /// are learnt), as on the host. Captures of `any` mark direction themselves.
        #[arg(long = "host", value_name = "ADDR")]
        hosts: Vec<std::net::IpAddr>,
        /// Treat bad lines in blocklist files as errors.
        #[arg(long)]
        strict: bool,
        /// Print the report as JSON (schema: docs/schemas/verify.schema.json).
        #[arg(long)]
        json: bool,
    },
    /// List attached interfaces: policy, modes, uptime, whether the loader runs. Exits 3 when
    /// nothing is attached, a loader is not running, an interface is not protected or its
    /// connection caps are not enforced, 5 when a change waits for confirmation (as
    /// `systemctl is-active` does).
    Status {
        /// Print the list as JSON (schema: docs/schemas/status.schema.json).
        #[arg(long)]
        json: bool,
    },
    /// Show counters: packets and bytes by verdict and reason, and the most dropped ports.
    #[command(after_help = "Example:\n  sudo portguard stats eth0 --watch 1")]
    Stats {
        /// Interface (default: every attached interface).
        #[arg(value_parser = iface_name)]
        iface: Option<String>,
        /// One JSON object per line: per interface (and per --watch round), with the time
        /// (schema: docs/schemas/stats.schema.json).
        #[arg(long)]
        json: bool,
        /// Print again every SECS seconds, with rates: in place on a terminal, one
        /// timestamped report after another into a pipe.
        #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
        watch: Option<Duration>,
        /// How many of the most dropped ports to show.
        #[arg(long, default_value_t = 10)]
        top: usize,
    },
    /// Diagnose the host: readiness for portguard, listening ports exposed to the network (and
    /// what the policy makes of them), and the state of the protection.
    #[command(
        after_help = "Exit status: 0, or 7 when findings at or above --fail-on exist (1: doctor failed).\n\nExample:\n  sudo portguard doctor --policy /etc/portguard/policy.toml --html report.html --fail-on high"
    )]
    Doctor {
        /// Audit the listening ports against this policy (default: the running attachment's).
        #[arg(short, long, value_name = "FILE")]
        policy: Option<PathBuf>,
        /// Only this interface (readiness and the running policy).
        #[arg(long, value_name = "IFACE", value_parser = iface_name)]
        iface: Option<String>,
        /// Print the report as JSON (schema: docs/schemas/doctor.schema.json).
        #[arg(long)]
        json: bool,
        /// Also write the report as a self-contained HTML page.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
        /// Exit with status 7 when a finding at or above this severity exists (info, low,
        /// medium, high, critical).
        #[arg(long, value_name = "SEVERITY")]
        fail_on: Option<portguard::doctor::Severity>,
    },
    /// (internal) writes the man pages and shell completions, generated from this command
    /// line, into DIR (`cargo xtask dist` and `cargo xtask deb` call it on the built binary).
    #[command(hide = true)]
    GenerateDocs {
        /// Where to write `man/*.8` and `completions/` (created if missing).
        dir: PathBuf,
    },
    /// Remove an attachment: stops its loader if it runs, detaches, deletes every pin.
    Detach {
        /// Interface to detach.
        #[arg(required_unless_present = "all", value_parser = iface_name)]
        iface: Option<String>,
        /// Detach every portguard attachment.
        #[arg(long, conflicts_with = "iface")]
        all: bool,
    },
}

impl Command {
    /// Whether `--json` was asked for: then stdout carries JSON only.
    pub fn json(&self) -> bool {
        match self {
            Self::Attach { json, .. }
            | Self::Blocks { json, .. }
            | Self::Events { json, .. }
            | Self::Check { json, .. }
            | Self::Verify { json, .. }
            | Self::Status { json }
            | Self::Stats { json, .. }
            | Self::Doctor { json, .. }
            | Self::Learn { json, .. }
            | Self::Report { json, .. } => *json,
            Self::Reload { .. }
            | Self::Confirm { .. }
            | Self::Block { .. }
            | Self::Unblock { .. }
            | Self::RollbackGuard { .. }
            | Self::GenerateDocs { .. }
            | Self::Detach { .. } => false,
        }
    }
}

/// The examples, and the exit codes from the one table that defines them.
fn after_help() -> String {
    let codes: Vec<String> =
        portguard::exit::Exit::ALL.iter().map(|exit| format!("{} {}", exit.code(), exit.label())).collect();
    format!(
        "Example:\n  sudo portguard check policy.toml\n  sudo portguard attach eth0 --policy policy.toml\n  \
         sudo portguard stats eth0 --watch 1\n\nExit status: {}.\n\nColour on a terminal only; NO_COLOR=1 turns it off.",
        codes.join(", ")
    )
}

/// Every interface name on the command line goes through the one check the library uses.
fn iface_name(text: &str) -> Result<String, String> {
    portguard::paths::check_iface_name(text).map(|()| text.to_owned())
}

/// A number of seconds (`1`, `0.5`), more than zero and at most the longest duration.
fn parse_seconds(text: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .filter(|d| !d.is_zero() && *d <= portguard::durations::MAX)
        .ok_or_else(|| format!("`{text}` is not a number of seconds above zero (e.g. 1 or 0.5)"))
}

/// `--since`: a duration back from now or an RFC 3339 time.
fn parse_since(text: &str) -> Result<std::time::SystemTime, String> {
    portguard::journal::parse_since(text, std::time::SystemTime::now())
}

/// Durations on the command line are kept in whole seconds (blocks.json, rollback deadlines):
/// anything shorter than a second is refused rather than silently rounded.
fn parse_duration(text: &str) -> Result<Duration, String> {
    portguard::durations::parse(text, Duration::from_secs(1)).map_err(|error| format!("`{text}` {error}"))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    /// Every argument of every command, hidden ones too, says what it does in `--help`.
    #[test]
    fn every_argument_has_help() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in command.get_subcommands() {
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(format!("{path} {} (the command itself)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut command = super::Cli::command();
        command.build();
        let mut missing = Vec::new();
        walk(&command, "portguard", &mut missing);
        assert!(missing.is_empty(), "arguments without help text: {missing:#?}");
    }

    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
