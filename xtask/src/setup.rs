//! Prerequisites, each checked and (as root) installed, with a clear line per item.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

/// Debian packages to build: LLVM 22 for bpf-linker (matching nightly's LLVM).
const BUILD_PACKAGES: &[&str] = &["llvm-22-dev", "libpolly-22-dev", "libzstd-dev"];

/// Debian packages the tests and the demo drive: iproute2, ethtool, bpftool, nmap, nsenter
/// from util-linux, tcpdump, dumpcap and editcap from wireshark-common (pcapng captures for
/// `verify`), promtool from prometheus to lint the metrics, systemd-analyze to check the unit,
/// openssl to check webhook signatures independently, script from bsdutils for a pty,
/// chromium to render `report --html` headless. (CrowdSec, for `lab_crowdsec`, is installed
/// by `crowdsec` below: it needs a file in place first.)
/// `cargo xtask dist` does not install them on a production host.
const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "ethtool",
    "bpftool",
    "nmap",
    "util-linux",
    "tcpdump",
    "wireshark-common",
    "prometheus",
    "systemd",
    "openssl",
    "bsdutils",
    "chromium",
];

/// Debian packages to build the release artifacts: musl-gcc for the static binary (ring's C and
/// assembly), buildah for the container image.
const PACKAGE_PACKAGES: &[&str] = &["musl-tools", "buildah"];

/// Debian packages the packaging tests drive besides: man-db (`man -w`), umoci to unpack the
/// image as a runtime would and runc to run it, python3-venv for the Kubernetes manifest
/// validator.
const PACKAGING_TEST_PACKAGES: &[&str] = &["man-db", "umoci", "runc", "python3-venv"];

/// The static binary's target (the Debian package and the image ship it).
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// The offline Kubernetes manifest validator (its schemas ship with it), in a venv of its own.
const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";

/// Where `setup` puts that venv: `bin/kubernetes-validate` and `bin/python3` (with PyYAML,
/// which the tests use to read the manifests).
pub fn kubernetes_validate_venv() -> std::path::PathBuf {
    crate::workspace_root().join("target/tools/kubernetes-validate")
}

/// cargo-deb builds the Debian package; pinned so a package build does not change under us.
const CARGO_DEB_VERSION: &str = "3.8.0";

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";

/// What a task needs; each includes what the one before needs.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Needs {
    /// Building the binary.
    Build,
    /// Building the Debian package and the container image too.
    Package,
    /// Building and packaging, and the tools the tests and the demo drive.
    Tests,
}

pub fn run(check_only: bool, needs: Needs) -> Result<()> {
    let root = nix::unistd::geteuid().is_root();
    let install = !check_only && root;
    let mut missing = Vec::new();

    let mut packages = BUILD_PACKAGES.to_vec();
    if needs >= Needs::Package {
        packages.extend_from_slice(PACKAGE_PACKAGES);
    }
    if needs >= Needs::Tests {
        packages.extend_from_slice(TEST_PACKAGES);
        packages.extend_from_slice(PACKAGING_TEST_PACKAGES);
    }
    let absent: Vec<&str> = packages.iter().copied().filter(|p| !dpkg_installed(p)).collect();
    if absent.is_empty() {
        ok("Debian packages", &packages.join(" "));
    } else if install {
        step(&format!("installing {}", absent.join(" ")));
        apt_install(&absent)?;
        if absent.contains(&"prometheus") && std::path::Path::new("/run/systemd/system").exists() {
            // Only promtool is wanted: the package also starts a Prometheus server.
            step(
                "stopping and disabling the prometheus service the package started (promtool is all the tests need)",
            );
            let _ = run_cmd("systemctl", &["disable", "--now", "prometheus"], &[]);
        }
    } else {
        missing.push(format!(
            "Debian packages {} (sudo apt-get install -y {})",
            absent.join(", "),
            absent.join(" ")
        ));
    }

    match rustup(&["run", "nightly", "rustc", "--version"]) {
        Ok(version) => ok("nightly toolchain", version.trim()),
        Err(_) if install => {
            step("installing the nightly toolchain");
            run_cmd("rustup", &["toolchain", "install", "nightly", "--profile", "minimal"], &[])?;
        }
        Err(_) => missing.push("the nightly toolchain (rustup toolchain install nightly)".into()),
    }

    let components =
        rustup(&["component", "list", "--toolchain", "nightly", "--installed"]).unwrap_or_default();
    if components.lines().any(|l| l.starts_with("rust-src")) {
        ok("nightly rust-src", "installed");
    } else if !check_only {
        // rustup installs into the user's own toolchain: no root needed.
        step("adding rust-src to the nightly toolchain");
        run_cmd("rustup", &["component", "add", "rust-src", "--toolchain", "nightly"], &[])?;
    } else {
        missing.push("rust-src for nightly (rustup component add rust-src --toolchain nightly)".into());
    }

    // The unit tier runs `cargo fmt` and `cargo clippy` with the default toolchain; rustup's
    // minimal profile has neither.
    let installed = rustup(&["component", "list", "--installed"]).unwrap_or_default();
    for component in ["clippy", "rustfmt"] {
        if installed.lines().any(|l| l.starts_with(component)) {
            ok(component, "installed");
        } else if !check_only {
            step(&format!("adding {component} to the default toolchain"));
            run_cmd("rustup", &["component", "add", component], &[])?;
        } else {
            missing.push(format!("{component} (rustup component add {component})"));
        }
    }

    if needs >= Needs::Package {
        packaging_tools(check_only, &mut missing)?;
    }
    if needs >= Needs::Tests {
        kubernetes_validate(check_only, &mut missing)?;
        crowdsec(install, &mut missing)?;
    }

    match bpf_linker_state() {
        LinkerState::Good => ok("bpf-linker", &format!("{BPF_LINKER_VERSION}, LLVM 22")),
        state if !check_only && !absent_llvm() => {
            step(&format!("installing bpf-linker {BPF_LINKER_VERSION} for LLVM 22 ({})", state.describe()));
            let path = format!("{LLVM_BIN}:{}", std::env::var("PATH").unwrap_or_default());
            run_cmd(
                "cargo",
                &[
                    "install",
                    "bpf-linker",
                    "--version",
                    BPF_LINKER_VERSION,
                    "--locked",
                    "--force",
                    "--no-default-features",
                    "--features",
                    "llvm-22",
                ],
                &[("PATH", &path)],
            )?;
        }
        state => missing.push(format!(
            "bpf-linker {BPF_LINKER_VERSION} built for LLVM 22 ({}): after installing llvm-22-dev, \
             PATH={LLVM_BIN}:$PATH cargo install bpf-linker --version {BPF_LINKER_VERSION} --locked \
             --no-default-features --features llvm-22",
            state.describe()
        )),
    }

    if !missing.is_empty() {
        for item in &missing {
            eprintln!("xtask: missing: {item}");
        }
        if !root && !check_only {
            bail!(
                "some prerequisites need root to install: run `sudo -E cargo xtask setup` (or install them as listed)"
            );
        }
        bail!("{} prerequisite(s) missing", missing.len());
    }
    Ok(())
}

/// Where Debian's crowdsec package looks for Central API credentials: when the file is empty
/// or missing, its install registers with the Central API, which fails offline.
const CROWDSEC_CAPI_CREDENTIALS: &str = "/etc/crowdsec/online_api_credentials.yaml";

/// CrowdSec's Local API and `cscli` for `lab_crowdsec` (each test runs its own LAPI, with its
/// own configuration and database, in a lab namespace). Installed without registering with
/// the Central API, and the package's own service left stopped and disabled.
fn crowdsec(install: bool, missing: &mut Vec<String>) -> Result<()> {
    if dpkg_installed("crowdsec") {
        ok("crowdsec", "installed (the tests run their own LAPI)");
        return Ok(());
    }
    if !install {
        missing.push(format!(
            "crowdsec (first put a non-empty {CROWDSEC_CAPI_CREDENTIALS} so it installs offline, then sudo \
             apt-get install -y crowdsec and sudo systemctl disable --now crowdsec)"
        ));
        return Ok(());
    }
    let credentials = std::path::Path::new(CROWDSEC_CAPI_CREDENTIALS);
    if std::fs::metadata(credentials).map_or(true, |m| m.len() == 0) {
        step(&format!("writing {CROWDSEC_CAPI_CREDENTIALS} (no Central API: the install stays offline)"));
        std::fs::create_dir_all(credentials.parent().expect("a directory"))?;
        std::fs::write(
            credentials,
            "# Written by portguard's `cargo xtask setup`: no Central API (CAPI) registration.\n\
             url: http://127.0.0.1:1/\nlogin: offline\npassword: offline\n",
        )?;
    }
    step("installing crowdsec");
    apt_install(&["crowdsec"])?;
    // The tests start and stop their own LAPI; the package's service must not run beside them.
    step("disabling the crowdsec service the package enabled (the tests run their own LAPI)");
    // Apart: without a running systemd (a container) the stop fails and the disable works.
    let _ = run_cmd("systemctl", &["disable", "crowdsec"], &[]);
    let _ = run_cmd("systemctl", &["stop", "crowdsec"], &[]);
    Ok(())
}

/// The musl target for the static binary, and cargo-deb (both rustup's and cargo's, in the
/// user's own toolchain: no root needed).
fn packaging_tools(check_only: bool, missing: &mut Vec<String>) -> Result<()> {
    let targets = rustup(&["target", "list", "--installed"]).unwrap_or_default();
    if targets.lines().any(|l| l.trim() == MUSL_TARGET) {
        ok("rust target", MUSL_TARGET);
    } else if !check_only {
        step(&format!("adding the {MUSL_TARGET} target (the static binary)"));
        run_cmd("rustup", &["target", "add", MUSL_TARGET], &[])?;
    } else {
        missing.push(format!("the {MUSL_TARGET} target (rustup target add {MUSL_TARGET})"));
    }
    let version = Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    if version.ends_with(CARGO_DEB_VERSION) {
        ok("cargo-deb", CARGO_DEB_VERSION);
    } else if !check_only {
        step(&format!("installing cargo-deb {CARGO_DEB_VERSION}"));
        run_cmd(
            "cargo",
            &["install", "cargo-deb", "--version", CARGO_DEB_VERSION, "--locked", "--force"],
            &[],
        )?;
    } else {
        missing.push(format!(
            "cargo-deb {CARGO_DEB_VERSION} (cargo install cargo-deb --version {CARGO_DEB_VERSION} --locked)"
        ));
    }
    Ok(())
}

/// kubernetes-validate in a venv under target/ (python3-venv is among the test packages).
fn kubernetes_validate(check_only: bool, missing: &mut Vec<String>) -> Result<()> {
    let venv = kubernetes_validate_venv();
    let tool = venv.join("bin/kubernetes-validate");
    let version = Command::new(&tool)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    if version == KUBERNETES_VALIDATE_VERSION {
        ok("kubernetes-validate", KUBERNETES_VALIDATE_VERSION);
        return Ok(());
    }
    let venv_text = venv.to_string_lossy();
    if check_only {
        missing.push(format!(
            "kubernetes-validate {KUBERNETES_VALIDATE_VERSION} (python3 -m venv {venv_text} && \
             {venv_text}/bin/pip install kubernetes-validate=={KUBERNETES_VALIDATE_VERSION})"
        ));
        return Ok(());
    }
    step(&format!("installing kubernetes-validate {KUBERNETES_VALIDATE_VERSION} in {venv_text}"));
    // Debian's python3 (python3-venv), whatever else is first on the PATH.
    let python =
        if std::path::Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" };
    run_cmd(python, &["-m", "venv", "--clear", &venv_text], &[])?;
    let pip = venv.join("bin/pip");
    run_cmd(
        &pip.to_string_lossy(),
        &["install", "--quiet", &format!("kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}")],
        &[],
    )
}

/// What `cargo xtask bench` compares portguard with: nftables, ip6tables, xdp-filter, and ipset
/// for the large blocklist.
pub fn bench_tools() -> Result<()> {
    const TOOLS: &[&str] = &["nftables", "iptables", "xdp-tools", "ipset"];
    let absent: Vec<&str> = TOOLS.iter().copied().filter(|p| !dpkg_installed(p)).collect();
    if absent.is_empty() {
        ok("benchmark tools", &TOOLS.join(" "));
        return Ok(());
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("the benchmark needs {} (sudo apt-get install -y {})", absent.join(", "), absent.join(" "));
    }
    step(&format!("installing {}", absent.join(" ")));
    apt_install(&absent)
}

fn ok(what: &str, detail: &str) {
    println!("xtask: ok: {what} ({detail})");
}

fn step(what: &str) {
    println!("xtask: {what} ...");
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn absent_llvm() -> bool {
    !std::path::Path::new(LLVM_BIN).join("llvm-config").exists()
}

fn apt_install(packages: &[&str]) -> Result<()> {
    let env = [("DEBIAN_FRONTEND", "noninteractive")];
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend_from_slice(packages);
    if run_cmd("apt-get", &args, &env).is_err() {
        // A fresh machine may have stale or no package lists.
        run_cmd("apt-get", &["update"], &env)?;
        run_cmd("apt-get", &args, &env)?;
    }
    Ok(())
}

fn rustup(args: &[&str]) -> Result<String> {
    let output = Command::new("rustup")
        .args(args)
        .output()
        .context("running rustup (is Rust installed with rustup?)")?;
    if !output.status.success() {
        bail!("rustup {} failed", args.join(" "));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn run_cmd(program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let status = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .status()
        .with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed", args.join(" "));
    }
    Ok(())
}

enum LinkerState {
    Good,
    Missing,
    WrongVersion(String),
    WrongLlvm,
}

impl LinkerState {
    fn describe(&self) -> String {
        match self {
            Self::Good => "ok".into(),
            Self::Missing => "not installed".into(),
            Self::WrongVersion(v) => format!("found {v}"),
            Self::WrongLlvm => "built against another LLVM".into(),
        }
    }
}

/// bpf-linker must be our version and linked against LLVM 22 (nightly's LLVM); 0.13 defaults
/// to LLVM 23, whose bitcode nightly's cannot read.
fn bpf_linker_state() -> LinkerState {
    let Ok(output) = Command::new("bpf-linker").arg("--version").output() else {
        return LinkerState::Missing;
    };
    let version = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if !version.ends_with(BPF_LINKER_VERSION) {
        return LinkerState::WrongVersion(version);
    }
    let Ok(path) = which("bpf-linker") else {
        return LinkerState::Missing;
    };
    let linked =
        Command::new("ldd").arg(&path).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    match linked {
        Ok(text) if text.contains("libLLVM.so.22") => LinkerState::Good,
        Ok(text) if text.contains("libLLVM") => LinkerState::WrongLlvm,
        // Statically linked: trust the version.
        _ => LinkerState::Good,
    }
}

fn which(program: &str) -> Result<String> {
    let output = Command::new("sh").args(["-c", &format!("command -v {program}")]).output()?;
    let path = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if path.is_empty() {
        bail!("{program} not found");
    }
    Ok(path)
}
