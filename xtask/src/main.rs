//! `cargo xtask`: everything the project needs done, from a fresh machine on.
//!
//! - `setup`  install (or, without root, check) every prerequisite
//! - `build`  build the `portguard` binary with its kernel programs embedded
//! - `demo`   run portguard on a built-in namespace lab (no real interface is touched)
//! - `test`   run every test, by tier: unit (with clippy), kernel (BPF_PROG_TEST_RUN), lab
//!   (real traffic in namespaces)
//! - `deb`    build the Debian package
//! - `image`  build the container image
//! - `dist`   install the binary, the systemd unit, example policies, man pages and shell
//!   completions (the generated ones are also left in target/dist/)

mod package;
mod setup;
mod tiers;

use setup::Needs;
use tiers::Tier;

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "portguard project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install missing prerequisites (apt packages, nightly rust-src, bpf-linker for LLVM 22).
    Setup {
        /// Only report what is missing; install nothing.
        #[arg(long)]
        check: bool,
    },
    /// Build `portguard` (target/debug/portguard, or target/release with --release).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Run the demo: attach a policy in a namespace lab, send allowed and denied traffic,
    /// show the counters.
    Demo {
        /// Instead, the README's walkthrough (about four minutes): monitor mode, learn, check,
        /// enforce, a scan blocked with its evidence, a DNS tunnel's anomaly, the report.
        #[arg(long)]
        walkthrough: bool,
    },
    /// Benchmarks beside the alternatives (xdp-filter, nftables, iptables); writes
    /// docs/BENCHMARKS.md.
    Bench,
    /// A long differential run: the kernel program against the reference model.
    Fuzz {
        /// Generated policies (400 frames each); CI runs 250.
        #[arg(long, default_value_t = 5000)]
        policies: u32,
    },
    /// Install portguard as a service: the release binary in /usr/local/bin, the systemd unit
    /// `portguard@.service`, the example policies in /etc/portguard (existing files are kept),
    /// the man pages and the bash, zsh and fish completions (generated into target/dist/).
    Dist {
        /// Install under this root instead of / (for packaging).
        #[arg(long, default_value = "/")]
        destdir: PathBuf,
    },
    /// Build the Debian package (target/dist/portguard_VERSION-1_amd64.deb): the static
    /// binary, the unit, examples, man pages, completions; see the README's Packages section.
    Deb,
    /// Build the container image (FROM scratch: the static binary alone) with buildah:
    /// localhost/portguard:VERSION, target/dist/image/oci (OCI layout) and an OCI archive.
    Image,
    /// Run the tests, tier by tier: unit, kernel, lab (the last two need root; here a test
    /// that cannot run fails).
    Test {
        /// Run only this tier (default: every tier, in that order).
        #[arg(long, value_enum)]
        tier: Option<Tier>,
        /// Extra arguments for every `cargo test` run (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup { check } => setup::run(check, Needs::Tests),
        Task::Build { release } => setup::run(false, Needs::Build).and_then(|()| build(release)),
        Task::Demo { walkthrough } => {
            setup::run(false, Needs::Tests).and_then(|()| build(false)).and_then(|()| demo(walkthrough))
        }
        Task::Test { tier, args } => {
            let needs = if tier == Some(Tier::Unit) { Needs::Build } else { Needs::Tests };
            setup::run(false, needs).and_then(|()| tiers::test(tier, &args))
        }
        Task::Fuzz { policies } => setup::run(false, Needs::Tests).and_then(|()| fuzz(policies)),
        Task::Bench => {
            setup::run(false, Needs::Tests).and_then(|()| setup::bench_tools()).and_then(|()| bench())
        }
        Task::Deb => setup::run(false, Needs::Package).and_then(|()| package::deb()).map(|_| ()),
        Task::Image => setup::run(false, Needs::Package).and_then(|()| package::image()).map(|_| ()),
        Task::Dist { destdir } => {
            setup::run(false, Needs::Build).and_then(|()| build(true)).and_then(|()| dist(&destdir))
        }
    };
    if let Err(error) = result {
        eprintln!("xtask: error: {error:#}");
        std::process::exit(1);
    }
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().expect("workspace root")
}

pub fn cargo(args: &[&str]) -> Result<()> {
    cargo_with(args, &[])
}

pub fn cargo_with(args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("`cargo {}` failed", args.join(" "));
    }
    Ok(())
}

pub fn build(release: bool) -> Result<()> {
    let mut args = vec!["build", "--locked", "--package", "portguard"];
    if release {
        args.push("--release");
    }
    cargo(&args)?;
    let profile = if release { "release" } else { "debug" };
    println!("xtask: built {}", workspace_root().join("target").join(profile).join("portguard").display());
    Ok(())
}

/// The demo lives in the tests crate (it drives the same namespace lab as the tests); xtask
/// itself must build without the BPF toolchain, since it is what installs it.
fn demo(walkthrough: bool) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "the demo creates network namespaces and attaches XDP: run it as root (sudo -E cargo xtask demo)"
        );
    }
    let mut args =
        vec!["run", "--locked", "--quiet", "--package", "portguard-tests", "--bin", "portguard-demo"];
    if walkthrough {
        args.extend(["--", "--walkthrough"]);
    }
    cargo(&args)
}

fn bench() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the benchmark attaches XDP in namespaces: run it as root");
    }
    build(true)?;
    let report = workspace_root().join("docs/BENCHMARKS.md");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "run",
            "--locked",
            "--release",
            "--quiet",
            "--package",
            "portguard-tests",
            "--bin",
            "portguard-bench",
            "--",
        ])
        .arg(&report)
        .env("PORTGUARD_BIN", workspace_root().join("target/release/portguard"))
        .current_dir(workspace_root())
        .status()?;
    if !status.success() {
        bail!("the benchmark failed");
    }
    Ok(())
}

/// Copies `from` (relative to the workspace) to `destdir/to` with `mode`; `keep` leaves an
/// existing file alone (an operator's edited policy).
fn install(from: &str, destdir: &std::path::Path, to: &str, mode: u32, keep: bool) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let target = destdir.join(to.trim_start_matches('/'));
    if keep && target.exists() {
        println!("xtask: kept {} (already there)", target.display());
        return Ok(());
    }
    let dir = target.parent().context("install target has a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {} (root needed?)", dir.display()))?;
    // Copy beside, then rename: a running binary is replaced, not overwritten in place.
    let staging = target.with_extension("xtask-new");
    std::fs::copy(workspace_root().join(from), &staging)
        .with_context(|| format!("copying {from} to {}", staging.display()))?;
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&staging, &target)?;
    println!("xtask: installed {}", target.display());
    Ok(())
}

fn dist(destdir: &std::path::Path) -> Result<()> {
    let docs = package::generate_docs(&workspace_root().join("target/release/portguard"))?;
    install("target/release/portguard", destdir, "/usr/local/bin/portguard", 0o755, false)?;
    install("dist/portguard@.service", destdir, "/etc/systemd/system/portguard@.service", 0o644, false)?;
    install("examples/edge-host.toml", destdir, "/etc/portguard/example-edge-host.toml", 0o644, true)?;
    install("examples/policy.toml", destdir, "/etc/portguard/example-policy.toml", 0o644, true)?;
    install("README.md", destdir, "/usr/local/share/doc/portguard/README.md", 0o644, false)?;
    for page in docs.man_pages()? {
        let name = page.file_name().context("man page name")?.to_string_lossy();
        install(&relative(&page)?, destdir, &format!("/usr/local/share/man/man8/{name}"), 0o644, false)?;
    }
    for (file, to) in package::COMPLETIONS_LOCAL {
        install(&relative(&docs.completion(file))?, destdir, to, 0o644, false)?;
    }
    println!(
        "\nnext, for eth0:\n  cp /etc/portguard/example-edge-host.toml /etc/portguard/eth0.toml   # then edit it\n  \
         portguard check /etc/portguard/eth0.toml\n  systemctl daemon-reload && systemctl enable --now portguard@eth0"
    );
    Ok(())
}

/// `path` relative to the workspace, as `install` takes it.
fn relative(path: &std::path::Path) -> Result<String> {
    Ok(path
        .strip_prefix(workspace_root())
        .with_context(|| format!("{} is outside the workspace", path.display()))?
        .to_string_lossy()
        .into_owned())
}

fn fuzz(policies: u32) -> Result<()> {
    println!("xtask: {policies} policies x 400 frames through the kernel program and the model");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "test",
            "--locked",
            "--package",
            "portguard-tests",
            "--test",
            "differential",
            "--",
            "--nocapture",
        ])
        .env("PORTGUARD_DIFF_POLICIES", policies.to_string())
        .current_dir(workspace_root())
        .status()?;
    if !status.success() {
        bail!(
            "the kernel and the model disagree (the shrunk case is saved in tests/tests/differential.proptest-regressions)"
        );
    }
    Ok(())
}
