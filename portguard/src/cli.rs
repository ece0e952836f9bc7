//! Command-line syntax. `portguard --help` and `portguard VERB --help` are generated from it.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use portguard::loader::XdpModeChoice;

#[derive(Parser, Debug)]
#[command(
    name = "portguard",
    version,
    about = "Port policy and port-scan defence for edge hosts, enforced in the kernel with XDP",
    after_help = "Example:\n  sudo portguard check policy.toml\n  sudo portguard attach eth0 --policy policy.toml\n  sudo portguard stats eth0 --watch 1"
)]
pub struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace); PORTGUARD_LOG=debug works too.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Run in the network namespace /run/netns/NAME (network namespace only: pins stay
    /// visible to every portguard command, unlike with `ip netns exec`).
    #[arg(long, global = true, value_name = "NAME")]
    pub netns: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Enforce a policy on an interface; runs in the foreground until Ctrl-C or SIGTERM.
    #[command(
        after_help = "Example:\n  sudo portguard attach eth0 --policy /etc/portguard/policy.toml"
    )]
    Attach {
        /// Interface to protect (inbound traffic is judged, outbound flows are learnt).
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
        /// Print events as JSON, one object per line (for log shippers).
        #[arg(long)]
        json: bool,
    },
    /// Follow the events (drops, scans, blocks) of an attachment started elsewhere.
    #[command(after_help = "Example:\n  sudo portguard events eth0 --json | jq .")]
    Events {
        /// Interface (default: every attached interface).
        iface: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Validate a policy without touching the kernel; explains every error with its line.
    #[command(after_help = "Example:\n  portguard check policy.toml")]
    Check {
        policy: PathBuf,
        /// Treat bad lines in blocklist files as errors.
        #[arg(long)]
        strict: bool,
        /// Print the verdict and the compiled summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List attached interfaces: policy, modes, uptime, whether the loader runs.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Show counters: packets and bytes by verdict and reason, and the most dropped ports.
    #[command(after_help = "Example:\n  sudo portguard stats eth0 --watch 1")]
    Stats {
        /// Interface (default: every attached interface).
        iface: Option<String>,
        #[arg(long)]
        json: bool,
        /// Print again every SECS seconds, with rates.
        #[arg(long, value_name = "SECS")]
        watch: Option<f64>,
        /// How many of the most dropped ports to show.
        #[arg(long, default_value_t = 10)]
        top: usize,
    },
    /// Remove an attachment: stops its loader if it runs, detaches, deletes every pin.
    Detach {
        /// Interface to detach.
        #[arg(required_unless_present = "all")]
        iface: Option<String>,
        /// Detach every portguard attachment.
        #[arg(long, conflicts_with = "iface")]
        all: bool,
    },
}
