//! The release artifacts as an operator gets them: the Debian package installed with `dpkg -i`
//! on this machine (binary, unit, man pages, completions, conffiles, state directory), an
//! attach from the installed binary on a lab namespace, and `dpkg --purge`.
//!
//! The package is `PORTGUARD_DEB` (`cargo xtask test` builds it once for the lab tier), or
//! `cargo xtask deb` is run here to build it.

use std::{
    net::SocketAddr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use portguard_tests::{
    Lab, SERVER_V4, cannot_run, require_root, require_tools,
    traffic::{Servers, tcp_connects},
};

const PACKAGE: &str = "portguard";
const UNIT: &str = "/usr/lib/systemd/system/portguard@.service";
const COMPLETIONS: [&str; 3] = [
    "/usr/share/bash-completion/completions/portguard",
    "/usr/share/zsh/vendor-completions/_portguard",
    "/usr/share/fish/vendor_completions.d/portguard.fish",
];
/// Everything the package puts on the system outside /etc (all gone after a purge).
const SHIPPED: [&str; 6] = [
    "/usr/bin/portguard",
    UNIT,
    "/usr/share/man/man8/portguard.8.gz",
    "/usr/share/man/man8/portguard-attach.8.gz",
    "/usr/share/doc/portguard/examples/edge-host.toml",
    "/usr/share/doc/portguard/README.md",
];
const CONFFILES: [&str; 2] = ["/etc/portguard/example-edge-host.toml", "/etc/portguard/example-policy.toml"];
const STATE_DIR: &str = "/var/lib/portguard";

/// The operator's policy for the lab's interface: SSH and HTTP open, the rest closed.
const POLICY: &str = r#"
mode = "enforce"
default = "deny"

[inbound]
other_protocols = "deny"

[[allow]]
proto = "tcp"
ports = [22, 80]
"#;

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("running {program}: {error}"))
}

fn ok(program: &str, args: &[&str]) -> String {
    let output = run(program, args);
    assert!(
        output.status.success(),
        "{program} {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn installed() -> bool {
    String::from_utf8_lossy(&run("dpkg-query", &["-W", "-f=${Status}", PACKAGE]).stdout)
        .contains("install ok installed")
}

/// The package to test: `PORTGUARD_DEB`, or one built now by `cargo xtask deb`.
fn package() -> PathBuf {
    if let Some(deb) = std::env::var_os("PORTGUARD_DEB") {
        return PathBuf::from(deb);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["xtask", "deb"])
        .current_dir(&root)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("running cargo xtask deb");
    assert!(output.status.success(), "cargo xtask deb failed");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line =
        stdout.lines().rev().find_map(|l| l.strip_prefix("xtask: built ")).expect("xtask names the package");
    PathBuf::from(line.split(" (").next().unwrap())
}

/// Purges the package and removes the operator's files this test wrote, also when it fails.
struct Installation {
    operator_files: Vec<PathBuf>,
}

impl Drop for Installation {
    fn drop(&mut self) {
        if installed() {
            let _ = run("dpkg", &["--purge", PACKAGE]);
        }
        for file in &self.operator_files {
            let _ = std::fs::remove_file(file);
        }
        let _ = std::fs::remove_dir("/etc/portguard");
    }
}

/// The installed binary attaching like the installed unit: its ExecStart's binary, only the
/// capabilities of its CapabilityBoundingSet, the package's state directory.
struct Loader {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Loader {
    /// `attach IFACE --policy POLICY EXTRA...` in the network namespace `netns` (a name under
    /// /run/netns), or the host's.
    fn start(netns: Option<&str>, iface: &str, policy: &Path, extra: &[&str]) -> Self {
        let unit = std::fs::read_to_string(UNIT).unwrap();
        let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("ExecStart");
        let binary = exec.split_whitespace().next().unwrap();
        assert_eq!(binary, "/usr/bin/portguard", "the packaged unit runs the packaged binary");
        let caps: Vec<String> = unit
            .lines()
            .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
            .expect("the unit bounds its capabilities")
            .split_whitespace()
            .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
            .collect();
        // setns needs CAP_SYS_ADMIN: the namespace is entered before the capabilities go. In
        // the host's namespace the loader runs as plain root (an operator's `portguard attach
        // --pin`): under the unit's three capabilities it cannot read /proc/1/ns/net, takes its
        // namespace for another one and pins under net:INODE, where root's `detach --all` (the
        // package's prerm) does not look; a known problem of portguard::netns, not tested here.
        let mut command = match netns {
            Some(netns) => {
                let mut nsenter = Command::new("nsenter");
                nsenter.arg(format!("--net=/run/netns/{netns}")).arg("setpriv");
                nsenter.args([
                    "--inh-caps=-all",
                    "--bounding-set",
                    &format!("-all,{}", caps.join(",")),
                    "--",
                ]);
                nsenter
            }
            None => Command::new("env"),
        };
        let mut child = command
            .args([binary, "attach", iface, "--policy"])
            .arg(policy)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let loader = Self { child, lines };
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Ok(line) = loader.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            if line.starts_with("running until") {
                loader.assert_sigterm_handled();
                return loader;
            }
        }
        panic!("the installed binary did not attach");
    }

    /// By the time portguard says it runs (and tells systemd READY=1) it handles SIGTERM: a
    /// `systemctl stop` right after the start must detach, not kill it half-way.
    fn assert_sigterm_handled(&self) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let caught = status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .unwrap_or_else(|| panic!("no SigCgt in {status}"));
        assert!(
            caught & (1 << (libc::SIGTERM - 1)) != 0,
            "running, but SIGTERM is not handled yet: {caught:x}"
        );
    }

    /// SIGTERM, as `systemctl stop` sends: the loader detaches and exits 0.
    fn stop(mut self) -> bool {
        self.terminate(Duration::from_secs(15)).is_some_and(|status| status.success())
    }

    fn terminate(&mut self, wait: Duration) -> Option<std::process::ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().ok().flatten() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.terminate(Duration::from_secs(10));
        }
    }
}

/// A veth pair in the host's namespace (this kernel may lack the dummy driver), deleted on drop
/// with whatever is pinned for it.
struct Dummy(String);

impl Dummy {
    fn new() -> Self {
        let name = portguard_tests::unique("d");
        ok("ip", &["link", "add", &name, "type", "veth", "peer", "name", &format!("{name}p")]);
        let dummy = Self(name);
        ok("ip", &["link", "set", &dummy.0, "up"]);
        dummy
    }
}

impl Drop for Dummy {
    fn drop(&mut self) {
        let _ = run("ip", &["link", "del", &self.0]);
        let _ = std::fs::remove_dir_all(Path::new(portguard::paths::PIN_ROOT).join(&self.0));
        let prefix = format!("{}.", self.0);
        for entry in std::fs::read_dir(portguard::paths::RUN_DIR).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

fn mode(path: &str) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}")).permissions().mode() & 0o7777
}

/// Tab in bash: what the installed completion offers after `words`.
fn bash_completes(words: &str) -> String {
    let script = format!(
        "source {}; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
         _portguard portguard \"${{COMP_WORDS[-1]}}\" \"${{COMP_WORDS[-2]}}\"; echo \"${{COMPREPLY[*]}}\"",
        COMPLETIONS[0]
    );
    ok("bash", &["-c", &script])
}

#[test]
fn the_debian_package_installs_attaches_and_purges() {
    require_root!();
    require_tools!("dpkg", "man", "systemd-analyze", "nsenter", "setpriv", "bash");
    // This test installs and purges the real package: never over an operator's installation.
    let existing: Vec<&str> = ["/usr/bin/portguard", "/etc/portguard", STATE_DIR]
        .into_iter()
        .filter(|p| Path::new(p).exists())
        .collect();
    if installed() || !existing.is_empty() {
        cannot_run(&format!(
            "portguard is installed on this machine ({}); the test would replace and purge it",
            existing.join(", ")
        ));
        return;
    }
    // Removing the package detaches every attachment of the host's namespace: there must be
    // none but this test's.
    let host_attachments: Vec<String> = std::fs::read_dir(portguard::paths::PIN_ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with("net:"))
        .collect();
    if !host_attachments.is_empty() {
        cannot_run(&format!(
            "portguard is attached in the host's namespace ({}); removing the package would detach it",
            host_attachments.join(", ")
        ));
        return;
    }
    let deb = package();
    let deb = deb.to_str().unwrap();

    // What the package declares: only what the binary needs at run time.
    assert_eq!(ok("dpkg-deb", &["-f", deb, "Depends"]).trim(), "iproute2");
    let lab = Lab::new().unwrap();
    let policy = PathBuf::from(format!("/etc/portguard/{}.toml", lab.server_if));
    let mut installation = Installation { operator_files: Vec::new() };
    ok("dpkg", &["-i", deb]);
    assert!(installed());

    let version = ok("/usr/bin/portguard", &["--version"]);
    assert_eq!(version.trim(), format!("portguard {}", env!("CARGO_PKG_VERSION")));
    let ldd = run("ldd", &["/usr/bin/portguard"]);
    let ldd = String::from_utf8_lossy(&ldd.stdout) + String::from_utf8_lossy(&ldd.stderr);
    assert!(ldd.contains("not a dynamic executable") || ldd.contains("statically linked"), "{ldd}");
    for file in SHIPPED.iter().chain(&CONFFILES).chain(&COMPLETIONS) {
        assert!(Path::new(file).is_file(), "{file} is installed");
    }
    assert_eq!(ok("man", &["-w", "portguard"]).trim(), "/usr/share/man/man8/portguard.8.gz");
    assert_eq!(
        ok("man", &["-w", "8", "portguard-verify"]).trim(),
        "/usr/share/man/man8/portguard-verify.8.gz"
    );
    let page = ok("man", &["-P", "cat", "8", "portguard-attach"]);
    assert!(page.contains("--confirm-within") && page.contains("Treat bad lines in blocklist"), "{page}");
    assert_eq!(bash_completes("portguard ver").trim(), "verify");
    assert!(bash_completes("portguard attach --co").contains("--confirm-within"));
    assert!(std::fs::read_to_string(COMPLETIONS[1]).unwrap().starts_with("#compdef portguard"));
    assert!(std::fs::read_to_string(COMPLETIONS[2]).unwrap().contains("complete -c portguard"));
    let copyright = std::fs::read_to_string("/usr/share/doc/portguard/copyright").unwrap();
    assert!(copyright.contains("License: MIT") && copyright.contains("Apache-2.0"), "{copyright}");

    // The state directory is root's alone; nothing is enabled or started.
    assert_eq!(mode(STATE_DIR), 0o700, "{STATE_DIR} has mode {:o}", mode(STATE_DIR));
    let conffiles = ok("dpkg-query", &["-W", "-f=${Conffiles}", PACKAGE]);
    for file in CONFFILES {
        assert!(conffiles.contains(file), "{file} is a conffile: {conffiles}");
    }
    let wants = std::fs::read_dir("/etc/systemd/system")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| std::fs::read_dir(entry.path()).ok())
        .flatten()
        .flatten()
        .filter(|link| link.file_name().to_string_lossy().starts_with("portguard"))
        .map(|link| link.path())
        .collect::<Vec<_>>();
    assert!(wants.is_empty(), "installing enabled {wants:?}");

    // The installed unit, for an instance (a template alone is not a unit systemd runs).
    let units = tempfile::tempdir().unwrap();
    std::fs::copy(UNIT, units.path().join("portguard@.service")).unwrap();
    std::os::unix::fs::symlink("portguard@.service", units.path().join("portguard@eth0.service")).unwrap();
    let verify = run(
        "systemd-analyze",
        &["verify", "--man=no", units.path().join("portguard@eth0.service").to_str().unwrap()],
    );
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success() && complaints.trim().is_empty(), "systemd-analyze verify:\n{complaints}");

    // The operator's policy, where the unit looks for it; enforcement from the installed binary.
    std::fs::write(&policy, POLICY).unwrap();
    installation.operator_files.push(policy.clone());
    ok("/usr/bin/portguard", &["check", policy.to_str().unwrap()]);
    let services = Servers::start(&lab.server, &[80, 8080], &[]);
    let loader = Loader::start(Some(&lab.server.name), &lab.server_if, &policy, &[]);
    assert!(tcp_connects(&lab.client, None, SocketAddr::new(SERVER_V4.into(), 80)));
    assert!(!tcp_connects(&lab.client, None, SocketAddr::new(SERVER_V4.into(), 8080)));
    assert_eq!(services.accepted(8080), 0, "the closed port saw no connection");
    let pins = portguard_tests::portguard_cli::pin_dir(&lab.server, &lab.server_if);
    assert!(pins.exists(), "{} while attached", pins.display());
    assert!(loader.stop(), "SIGTERM detaches and exits 0");
    assert!(!pins.exists(), "{} left after detach", pins.display());
    assert!(tcp_connects(&lab.client, None, SocketAddr::new(SERVER_V4.into(), 8080)), "detached");

    // An upgrade (the same package again) keeps an edited conffile without asking.
    let edited = format!("{}\n# edited by the operator\n", std::fs::read_to_string(CONFFILES[1]).unwrap());
    std::fs::write(CONFFILES[1], &edited).unwrap();
    let reinstall =
        Command::new("timeout").args(["120", "dpkg", "-i", deb]).stdin(Stdio::null()).output().unwrap();
    assert!(reinstall.status.success(), "{}", String::from_utf8_lossy(&reinstall.stderr));
    assert_eq!(
        std::fs::read_to_string(CONFFILES[1]).unwrap(),
        edited,
        "the operator's edit survives an upgrade"
    );

    // Removal detaches what is left in the host's namespace: an attachment kept with --pin on
    // a veth this test makes there (never a real interface).
    let dummy = Dummy::new();
    let pinned = Loader::start(None, &dummy.0, &policy, &["--pin"]);
    assert!(pinned.stop(), "SIGTERM with --pin exits 0");
    let dummy_pins = Path::new(portguard::paths::PIN_ROOT).join(&dummy.0);
    assert!(dummy_pins.exists(), "--pin keeps {} after the loader", dummy_pins.display());
    assert!(ok("ip", &["-d", "link", "show", "dev", &dummy.0]).contains("xdp"), "still filtering");

    // Purge: everything the package shipped or made goes; the operator's own policy stays.
    ok("dpkg", &["--purge", PACKAGE]);
    assert!(!dummy_pins.exists(), "{} left after the package's removal", dummy_pins.display());
    assert!(!ok("ip", &["-d", "link", "show", "dev", &dummy.0]).contains("xdp"), "detached on removal");
    assert!(!installed());
    for file in SHIPPED.iter().chain(&CONFFILES).chain(&COMPLETIONS).chain(&[STATE_DIR]) {
        assert!(!Path::new(file).exists(), "{file} is left after the purge");
    }
    assert!(!Path::new("/usr/share/doc/portguard").exists());
    assert!(!run("man", &["-w", "portguard"]).status.success(), "man still finds portguard(8)");
    let left: Vec<String> = std::fs::read_dir("/etc/portguard")
        .unwrap()
        .map(|entry| entry.unwrap().path().display().to_string())
        .collect();
    assert_eq!(left, vec![policy.display().to_string()], "only the operator's policy is kept");
    drop(installation);
    assert!(!Path::new("/etc/portguard").exists());
}

/// The image to test: `PORTGUARD_IMAGE` (`LAYOUT:TAG`, an OCI layout), or one built now by
/// `cargo xtask image`.
fn image() -> String {
    if let Ok(image) = std::env::var("PORTGUARD_IMAGE") {
        return image;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["xtask", "image"])
        .current_dir(&root)
        .stdin(Stdio::null())
        .status()
        .expect("running cargo xtask image");
    assert!(status.success(), "cargo xtask image failed");
    format!(
        "{}:{}",
        root.join("target/dist/image/oci").canonicalize().unwrap().display(),
        env!("CARGO_PKG_VERSION")
    )
}

/// A blob of an OCI layout, parsed.
fn blob(layout: &Path, digest: &str) -> serde_json::Value {
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap()).unwrap()
}

/// The image's configuration (entrypoint, labels) from its OCI layout, as a runtime reads it.
fn image_config(layout: &Path, tag: &str) -> serde_json::Value {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no tag {tag} in {index}"));
    let manifest = blob(layout, manifest["digest"].as_str().unwrap());
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 1, "FROM scratch: one layer, the binary");
    blob(layout, manifest["config"]["digest"].as_str().unwrap())
}

/// A container run by runc; killed and deleted on drop, its pins removed.
struct Container {
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    pins: PathBuf,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = run("runc", &["kill", &self.name, "KILL"]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && self.child.try_wait().ok().flatten().is_none() {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = run("runc", &["delete", "--force", &self.name]);
        // A killed loader leaves its pins; the programs go with the lab's veth pair.
        let _ = std::fs::remove_dir_all(&self.pins);
    }
}

#[test]
fn the_image_runs_as_the_daemonset_says_enforces_reloads_and_detaches() {
    require_root!();
    require_tools!("umoci", "runc");
    let image = image();
    let (layout, tag) = image.rsplit_once(':').expect("LAYOUT:TAG");
    let layout = Path::new(layout);
    let config = image_config(layout, tag);
    let labels = &config["config"]["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], env!("CARGO_PKG_VERSION"));
    assert!(labels["org.opencontainers.image.source"].as_str().is_some_and(|s| s.starts_with("https://")));
    let entrypoint: Vec<String> = serde_json::from_value(config["config"]["Entrypoint"].clone()).unwrap();
    assert_eq!(entrypoint, ["/usr/bin/portguard"]);

    // umoci unpacks the image into a runtime bundle as containerd and podman do: its rootfs
    // and a config.json with the image's entrypoint, environment and working directory.
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("bundle");
    let unpacked = run("umoci", &["unpack", "--image", &image, bundle.to_str().unwrap()]);
    assert!(unpacked.status.success(), "umoci unpack: {}", String::from_utf8_lossy(&unpacked.stderr));
    let files: Vec<String> = walk(&bundle.join("rootfs"));
    assert_eq!(files, ["/usr/bin/portguard"], "the image holds the static binary and nothing else");

    // The pod the DaemonSet (deploy/kubernetes/daemonset.yaml) makes, on a lab "node": its
    // arguments after the entrypoint (`$(VAR)` expanded from its env), its capabilities, its
    // volumes at its mount paths, its read-only root; the node's network namespace is the
    // lab's server namespace. runc is what containerd would hand this to.
    let daemonset = manifest("daemonset.yaml");
    let pod = &daemonset["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true, "the node's network namespace");
    let spec_of = &pod["containers"][0];
    let lab = Lab::new().unwrap();
    let services = Servers::start(&lab.server, &[80, 8080, 3306], &[]);
    let env: Vec<String> =
        spec_of["env"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap().to_owned()).collect();
    assert_eq!(env, ["PORTGUARD_IFACE", "NODE_IP"], "the variables the test gives values");
    let vars = [("$(PORTGUARD_IFACE)", lab.server_if.clone()), ("$(NODE_IP)", SERVER_V4.to_string())];
    let mut args: Vec<serde_json::Value> = entrypoint.iter().map(|a| a.as_str().into()).collect();
    for arg in spec_of["args"].as_array().unwrap() {
        let arg =
            vars.iter().fold(arg.as_str().unwrap().to_owned(), |arg, (var, value)| arg.replace(var, value));
        assert!(!arg.contains("$("), "{arg}: a variable the test does not know");
        args.push(arg.into());
    }
    let security = &spec_of["securityContext"];
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let caps: Vec<serde_json::Value> = security["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| format!("CAP_{}", c.as_str().unwrap()).into())
        .collect();
    assert_eq!(caps, ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"], "the unit's capabilities");

    let config = work.path().join("config");
    std::fs::create_dir(&config).unwrap();
    std::fs::write(config.join("policy.toml"), POLICY).unwrap();
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    spec["process"]["args"] = args.into();
    spec["process"]["terminal"] = false.into();
    for set in ["bounding", "effective", "permitted"] {
        spec["process"]["capabilities"][set] = caps.clone().into();
    }
    for set in ["inheritable", "ambient"] {
        spec["process"]["capabilities"][set] = serde_json::json!([]);
    }
    spec["root"]["readonly"] = security["readOnlyRootFilesystem"].clone();
    for namespace in spec["linux"]["namespaces"].as_array_mut().unwrap() {
        if namespace["type"] == "network" {
            namespace["path"] = format!("/run/netns/{}", lab.server.name).into();
        }
    }
    let volumes = pod["volumes"].as_array().unwrap();
    let mut mounts = Vec::new();
    for mount in spec_of["volumeMounts"].as_array().unwrap() {
        assert!(mount.get("subPath").is_none(), "a subPath mount is never updated: {mount}");
        let volume = volumes.iter().find(|v| v["name"] == mount["name"]).unwrap();
        let destination = mount["mountPath"].as_str().unwrap();
        let source = if volume.get("configMap").is_some() {
            config.clone()
        } else if volume["hostPath"]["path"] == "/sys/fs/bpf" {
            PathBuf::from("/sys/fs/bpf")
        } else {
            // The node's other directories: the test's own, as the lab tests keep theirs.
            let dir = work.path().join(mount["name"].as_str().unwrap());
            std::fs::create_dir(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
            dir
        };
        let mode = if mount["readOnly"] == true { "ro" } else { "rw" };
        mounts.push(serde_json::json!({
            "source": source, "destination": destination, "type": "bind", "options": ["rbind", mode]
        }));
    }
    let destinations: Vec<&str> = mounts.iter().map(|m| m["destination"].as_str().unwrap()).collect();
    assert_eq!(destinations, ["/etc/portguard", "/sys/fs/bpf", "/var/lib/portguard", "/run/portguard"]);
    spec["mounts"].as_array_mut().unwrap().extend(mounts);
    std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();

    let name = portguard_tests::unique("img");
    let mut child = Command::new("runc")
        .args(["run", "--bundle", bundle.to_str().unwrap(), &name])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("runc");
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // In its own PID namespace the loader is PID 1, so the network namespace it runs in is the
    // host's to it (as with a DaemonSet's hostNetwork): it pins where a host's loader does.
    let pins = Path::new(portguard::paths::PIN_ROOT).join(&lab.server_if);
    let mut container = Container { name: name.clone(), child, lines, pins: pins.clone() };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut banner = Vec::new();
    while let Ok(line) = container.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        banner.push(line);
        if banner.last().unwrap().starts_with("running until") {
            break;
        }
    }
    assert!(
        banner.last().is_some_and(|l| l.starts_with("running until")),
        "the container did not attach: {banner:?}"
    );

    // It enforces: real traffic from the client namespace.
    assert!(tcp_connects(&lab.client, None, SocketAddr::new(SERVER_V4.into(), 80)));
    assert!(!tcp_connects(&lab.client, None, SocketAddr::new(SERVER_V4.into(), 8080)));
    assert_eq!(services.accepted(8080), 0, "the closed port saw no connection");
    assert!(pins.exists(), "{} is pinned on the host's bpffs while attached", pins.display());

    // Prometheus finds the metrics where the pod's annotations say.
    let annotations = &daemonset["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    let port: u16 = annotations["prometheus.io/port"].as_str().unwrap().parse().unwrap();
    let path = annotations["prometheus.io/path"].as_str().unwrap();
    let (status, body) =
        portguard_tests::http::get(&lab.server, SocketAddr::new(SERVER_V4.into(), port), path).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("portguard_"), "{body}");

    // A ConfigMap edit as the kubelet delivers it (the file swapped), then the README's reload:
    // `kubectl exec POD -- portguard reload`, which is `runc exec`. Same process, new policy.
    let opened = POLICY.replace("ports = [22, 80]", "ports = [22, 80, 8080]");
    std::fs::write(config.join(".policy.toml.new"), &opened).unwrap();
    std::fs::rename(config.join(".policy.toml.new"), config.join("policy.toml")).unwrap();
    ok("runc", &["exec", &name, "/usr/bin/portguard", "reload"]);
    assert!(container.child.try_wait().unwrap().is_none(), "reloaded, not restarted");
    assert!(
        tcp_connects(&lab.client, None, SocketAddr::new(SERVER_V4.into(), 8080)),
        "the reload opened 8080"
    );

    // SIGTERM (what the kubelet sends on pod deletion) detaches: exit 0, nothing pinned.
    ok("runc", &["kill", &name, "TERM"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut status = None;
    while Instant::now() < deadline && status.is_none() {
        status = container.child.try_wait().unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(status.is_some_and(|s| s.success()), "the container ended with {status:?} after SIGTERM");
    assert!(!pins.exists(), "{} left after SIGTERM", pins.display());
    assert!(tcp_connects(&lab.client, None, SocketAddr::new(SERVER_V4.into(), 3306)), "detached");
}

/// Every file (not directory) under `root`, as a path inside it.
fn walk(root: &Path) -> Vec<String> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(format!("/{}", path.strip_prefix(root).unwrap().display()));
            }
        }
    }
    files.sort();
    files
}

/// The venv `cargo xtask setup` makes (xtask/src/setup.rs: kubernetes_validate_venv).
fn kubernetes_validate_venv() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/kubernetes-validate")
}

const MANIFESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/kubernetes");

/// The documents of a YAML file in deploy/kubernetes/, read by PyYAML from that venv.
fn manifests(file: &str) -> Vec<serde_json::Value> {
    let python = kubernetes_validate_venv().join("bin/python3");
    assert!(python.exists(), "{} is missing: `cargo xtask setup` makes it", python.display());
    let script = "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))";
    let text = ok(python.to_str().unwrap(), &["-c", script, &format!("{MANIFESTS}/{file}")]);
    serde_json::from_str::<Vec<serde_json::Value>>(&text)
        .unwrap()
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

/// The one document of a manifest file.
fn manifest(file: &str) -> serde_json::Value {
    let mut documents = manifests(file);
    assert_eq!(documents.len(), 1, "{file}: one resource per file");
    documents.remove(0)
}

/// The Kubernetes manifests against the current API schema (kubernetes-validate, offline,
/// strict: no unknown fields), the kustomization against the directory, the policy in the
/// ConfigMap against portguard itself, and the pods' privileges against the unit's.
#[test]
fn the_kubernetes_manifests_validate() {
    let tool = kubernetes_validate_venv().join("bin/kubernetes-validate");
    if !tool.exists() {
        cannot_run(&format!("it needs {} (`cargo xtask setup` installs it)", tool.display()));
        return;
    }
    let kustomization = manifest("kustomization.yaml");
    let resources: Vec<String> = serde_json::from_value(kustomization["resources"].clone()).unwrap();
    let mut on_disk: Vec<String> = std::fs::read_dir(MANIFESTS)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
        .filter(|name| name != "kustomization.yaml")
        .collect();
    on_disk.sort();
    let mut listed = resources.clone();
    listed.sort();
    assert_eq!(listed, on_disk, "the kustomization lists every manifest, and only those");
    let image = &kustomization["images"][0];
    assert_eq!(image["newTag"], env!("CARGO_PKG_VERSION"), "the image `cargo xtask image` builds");

    let mut args = vec!["--strict", "--kubernetes-version", "1.37.0"];
    let paths: Vec<String> = resources.iter().map(|r| format!("{MANIFESTS}/{r}")).collect();
    args.extend(paths.iter().map(String::as_str));
    let validated = run(tool.to_str().unwrap(), &args);
    let report = String::from_utf8_lossy(&validated.stdout) + String::from_utf8_lossy(&validated.stderr);
    assert!(validated.status.success(), "kubernetes-validate:\n{report}");
    assert_eq!(report.matches(" passed for resource ").count(), resources.len(), "{report}");

    // Every container runs the kustomization's image.
    let daemonset = manifest("daemonset.yaml");
    let cronjob = manifest("doctor-cronjob.yaml");
    let pods =
        [&daemonset["spec"]["template"]["spec"], &cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]];
    for pod in pods {
        for container in pod["containers"].as_array().unwrap() {
            assert_eq!(container["image"], image["name"], "{container}");
        }
    }

    // The policy every node gets is one portguard accepts.
    let configmap = manifest("policy-configmap.yaml");
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, configmap["data"]["policy.toml"].as_str().unwrap()).unwrap();
    let binary = portguard_tests::portguard_cli::binary();
    let check = ok(binary.to_str().unwrap(), &["check", "--json", policy.to_str().unwrap()]);
    let check: serde_json::Value = serde_json::from_str(&check).unwrap();
    assert_eq!(check["valid"], true, "{check}");

    // The DaemonSet: the unit's capabilities and no more, the host's bpffs and state, the
    // policy as a directory (updated in place), metrics where the annotations say.
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/portguard@.service")).unwrap();
    let mut unit_caps: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .unwrap()
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_owned())
        .collect();
    unit_caps.sort();
    let pod = pods[0];
    let container = &pod["containers"][0];
    let mut caps: Vec<String> =
        serde_json::from_value(container["securityContext"]["capabilities"]["add"].clone()).unwrap();
    caps.sort();
    assert_eq!(caps, unit_caps);
    assert_eq!(container["securityContext"]["privileged"], false);
    assert_eq!(pod["hostNetwork"], true);
    let host_paths: Vec<&str> =
        pod["volumes"].as_array().unwrap().iter().filter_map(|v| v["hostPath"]["path"].as_str()).collect();
    assert_eq!(host_paths, ["/sys/fs/bpf", "/var/lib/portguard", "/run/portguard"]);
    let args: Vec<&str> = container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    let annotations = &daemonset["spec"]["template"]["metadata"]["annotations"];
    let metrics = args.iter().position(|a| *a == "--metrics").map(|i| args[i + 1]).expect("--metrics");
    assert!(
        metrics.ends_with(&format!(":{}", annotations["prometheus.io/port"].as_str().unwrap())),
        "{metrics}"
    );
    assert_eq!(args[..4], ["attach", "$(PORTGUARD_IFACE)", "--policy", "/etc/portguard/policy.toml"]);

    // The doctor CronJob writes its HTML report into the kept volume.
    let doctor = &pods[1]["containers"][0];
    let args: Vec<&str> = doctor["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(args[0], "doctor");
    let html = args.iter().position(|a| *a == "--html").map(|i| args[i + 1]).expect("--html");
    let reports = doctor["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == "reports").unwrap();
    assert!(html.starts_with(reports["mountPath"].as_str().unwrap()), "{html}");
}
