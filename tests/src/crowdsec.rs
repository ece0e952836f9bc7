//! A CrowdSec Local API (Debian's `crowdsec`, `cargo xtask setup` installs it) run by a test in
//! a lab namespace: its own configuration, SQLite database and credentials in a temporary
//! directory, listening on 127.0.0.1 of that namespace only, so tests never share one and the
//! host's own CrowdSec (if any) is never touched. Stopped (and its files removed) on drop.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::Netns;

/// Where the LAPI listens in its namespace.
pub const LAPI_PORT: u16 = 8080;
/// Longest the LAPI takes to start answering.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// No LAPI runs longer than this, whatever the test does.
const LIFETIME: &str = "600";

pub struct Lapi {
    netns: String,
    /// Where it listens, in its namespace.
    listen: std::net::SocketAddr,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// The bouncer key, in a file only root may read.
    pub key_file: PathBuf,
}

impl Lapi {
    /// Prepares a LAPI (database, a machine for `cscli decisions add`, a bouncer key) and
    /// starts it in `netns`.
    pub fn start(netns: &Netns) -> Result<Self> {
        Self::start_on(netns, std::net::SocketAddr::from(([127, 0, 0, 1], LAPI_PORT)))
    }

    /// The same, listening on `listen` (an address of that namespace another can reach).
    pub fn start_on(netns: &Netns, listen: std::net::SocketAddr) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("pgt-crowdsec-").tempdir()?;
        let path = dir.path();
        std::fs::create_dir_all(path.join("data"))?;
        std::fs::create_dir_all(path.join("notifications"))?;
        std::fs::write(path.join("config.yaml"), config(path, listen))?;
        let mut lapi =
            Self { netns: netns.name.clone(), listen, key_file: path.join("bouncer.key"), dir, child: None };
        let credentials = lapi.path("local_api_credentials.yaml");
        lapi.cscli(&["machines", "add", "portguard-test", "--auto", "--force", "-f", &credentials])?;
        let key = lapi.cscli(&["bouncers", "add", "portguard-test", "-o", "raw"])?;
        let key = key.trim();
        if key.is_empty() {
            bail!("cscli bouncers add printed no key");
        }
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut file =
                std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&lapi.key_file)?;
            std::io::Write::write_all(&mut file, key.as_bytes())?;
        }
        lapi.resume()?;
        Ok(lapi)
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    /// The LAPI's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// A `[crowdsec]` section with a bouncer key of its own, `name`: each host needs one, as
    /// the LAPI keeps one stream position per bouncer (two hosts sharing a key would each get
    /// part of the changes).
    pub fn policy_section_for(&self, name: &str, update_every: &str) -> Result<String> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let key = self.cscli(&["bouncers", "add", name, "-o", "raw"])?;
        let file = self.dir.path().join(format!("{name}.key"));
        let mut out = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&file)?;
        std::io::Write::write_all(&mut out, key.trim().as_bytes())?;
        Ok(format!(
            "\n[crowdsec]\nlapi = \"{}\"\napi_key_file = \"{}\"\nupdate_every = \"{update_every}\"\n",
            self.url(),
            file.display()
        ))
    }

    /// Machine credentials for portguard to push alerts with, as `cscli machines add -f`
    /// writes them (made readable by root alone, as the policy check wants).
    pub fn machine_credentials(&self, name: &str) -> Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt as _;
        let file = self.dir.path().join(format!("{name}.yaml"));
        let password = format!("pw-{}-{}", std::process::id(), name);
        self.cscli(&[
            "machines",
            "add",
            name,
            "--password",
            &password,
            "--force",
            "-f",
            &file.to_string_lossy(),
        ])?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
        Ok(file)
    }

    /// A `[crowdsec]` section that follows this LAPI.
    pub fn policy_section(&self, update_every: &str) -> String {
        format!(
            "\n[crowdsec]\nlapi = \"{}\"\napi_key_file = \"{}\"\nupdate_every = \"{update_every}\"\n",
            self.url(),
            self.key_file.display()
        )
    }

    /// Starts the LAPI again (after `stop`) and waits until it answers.
    pub fn resume(&mut self) -> Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let log = std::fs::File::create(self.dir.path().join("lapi.log"))?;
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .args(["timeout", LIFETIME, "crowdsec", "-c", &self.path("config.yaml"), "-no-cs"])
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("starting crowdsec (`cargo xtask setup` installs it)")?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if self.answers() {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                bail!("crowdsec exited ({status}):\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("the LAPI did not answer within {START_TIMEOUT:?}:\n{}", self.log())
    }

    /// Whether the LAPI accepts connections.
    fn answers(&self) -> bool {
        let target = self.listen;
        let path = format!("/run/netns/{}", self.netns);
        std::thread::spawn(move || {
            let Ok(file) = std::fs::File::open(&path) else { return false };
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).is_ok()
                && std::net::TcpStream::connect_timeout(&target, Duration::from_millis(300)).is_ok()
        })
        .join()
        .unwrap_or(false)
    }

    /// Stops the LAPI (its database stays for `resume`).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM to `timeout`, which passes it on to crowdsec.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `cscli -c CONFIG ARGS...` in the LAPI's namespace (decisions go through the LAPI).
    pub fn cscli(&self, args: &[&str]) -> Result<String> {
        let config = self.path("config.yaml");
        let output = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .args(["timeout", "300", "cscli", "-c", &config])
            .args(args)
            .output()
            .context("running cscli (`cargo xtask setup` installs crowdsec)")?;
        if !output.status.success() {
            bail!(
                "cscli {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr),
                String::from_utf8_lossy(&output.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Adds `count` one-address ban decisions of `duration` (`4h`) through `cscli decisions
    /// import`, from `first` on (one address in three, so none are neighbours): the LAPI of
    /// a site that takes the community's lists.
    pub fn import_bans(&self, first: std::net::Ipv4Addr, count: u32, duration: &str) -> Result<()> {
        let mut csv = String::from("duration,scope,value,reason\n");
        for n in 0..count {
            let address = std::net::Ipv4Addr::from(u32::from(first) + 3 * n);
            csv.push_str(&format!("{duration},ip,{address},portguard-test/import\n"));
        }
        let file = self.dir.path().join("import.csv");
        std::fs::write(&file, csv)?;
        self.cscli(&["decisions", "import", "-i", &file.to_string_lossy()])?;
        Ok(())
    }

    /// What the LAPI logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("lapi.log")).unwrap_or_default()
    }
}

impl Drop for Lapi {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The LAPI's configuration: everything under `dir` but the hub and the profiles, which it
/// only reads; no Central API, no Prometheus listener.
fn config(dir: &Path, listen: std::net::SocketAddr) -> String {
    let dir = dir.display();
    format!(
        "common:
  daemonize: false
  log_media: stdout
  log_level: info
  working_dir: {dir}
config_paths:
  config_dir: {dir}/
  data_dir: {dir}/data/
  simulation_path: /etc/crowdsec/simulation.yaml
  hub_dir: /var/lib/crowdsec/hub/
  index_path: /var/lib/crowdsec/hub/.index.json
  notification_dir: {dir}/notifications/
  plugin_dir: /usr/lib/crowdsec/plugins/
cscli:
  output: human
  color: false
db_config:
  log_level: info
  type: sqlite
  use_wal: true
  db_path: {dir}/data/crowdsec.db
  flush:
    max_items: 5000
    max_age: 7d
api:
  client:
    insecure_skip_verify: false
    credentials_path: {dir}/local_api_credentials.yaml
  server:
    log_level: info
    listen_uri: \"{listen}\"
    profiles_path: /etc/crowdsec/profiles.yaml
    trusted_ips:
      - 127.0.0.1
      - ::1
prometheus:
  enabled: false
  level: full
"
    )
}
