//! Every error and warning validation gives, by its text and line.

use std::{path::Path, time::Duration};

use super::*;
use crate::policy::{RuleKind, parse};

const EXAMPLE: &str = include_str!("../../../../examples/policy.toml");

fn errors(text: &str) -> Vec<String> {
    match parse(text, Path::new("p.toml"), LoadOptions::default()) {
        Ok(loaded) => panic!("accepted: {:?}", loaded.policy.summary()),
        Err(errors) => errors.errors().map(ToString::to_string).collect(),
    }
}

fn warnings(text: &str) -> Vec<String> {
    let loaded = parse(text, Path::new("p.toml"), LoadOptions::default()).unwrap();
    loaded.warnings.iter().map(ToString::to_string).collect()
}

#[track_caller]
fn assert_one(list: &[String], expected: &str) {
    assert!(list.iter().any(|e| e.contains(expected)), "{expected:?} not in {list:#?}");
}

#[test]
fn the_example_is_accepted_as_written() {
    let loaded = parse(EXAMPLE, Path::new("policy.toml"), LoadOptions::default()).unwrap();
    let policy = loaded.policy;
    assert_eq!(policy.mode, Mode::Enforce);
    assert_eq!(policy.default, Action::Deny);
    assert_eq!(policy.rules.len(), 4);
    assert_eq!(policy.rules[0].ports, vec![80..=80, 443..=443, 8000..=8100]);
    assert_eq!(policy.rules[0].line, 5);
    assert_eq!(policy.rules[1].from.as_ref().unwrap().len(), 2);
    assert_eq!(policy.rules[3].kind, RuleKind::Deny);
    assert_eq!(policy.blocklist.len(), 2);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn alerts_and_metrics() {
    let text = "default = \"deny\"\n[alerts]\nwebhook = \"https://hooks.example.net/portguard\"\nexec = \"/bin/true\"\ntimeout = \"2s\"\nretries = 0\nmax_per_minute = 10\n[metrics]\nlisten = \"127.0.0.1:9100\"\n";
    let loaded = parse(text, Path::new("p.toml"), LoadOptions::default()).unwrap();
    let alerts = &loaded.policy.alerts;
    assert_eq!(alerts.webhook.as_deref(), Some("https://hooks.example.net/portguard"));
    assert_eq!(alerts.exec.as_deref(), Some("/bin/true"));
    assert_eq!((alerts.timeout, alerts.retries, alerts.max_per_minute), (Duration::from_secs(2), 0, 10));
    assert_eq!(loaded.policy.metrics_listen, Some("127.0.0.1:9100".parse().unwrap()));

    let list = errors(
        "[alerts]\nwebhook = \"ftp://x\"\nexec = \"notify.sh\"\nretries = 11\nmax_per_minute = 0\n[metrics]\nlisten = \"localhost\"\n",
    );
    assert_one(&list, "p.toml:2:11: error: webhook = \"ftp://x\" is not an http:// or https:// URL");
    assert_one(&list, "p.toml:3:8: error: exec must be an absolute path to a program");
    assert_one(&list, "p.toml:4:11: error: retries");
    assert_one(&list, "p.toml:5:18: error: max_per_minute");
    assert_one(&list, "p.toml:7:10: error: listen = \"localhost\" is not an address:port");
    assert_one(&errors("[alerts]\nwebhok = \"https://x\"\n"), "p.toml:2:1: error: unknown field `webhok`");
    assert_one(&warnings("[metrics]\nlisten = \"0.0.0.0:9464\"\n"), "can be read beyond this host");
}

#[test]
fn an_exec_program_others_can_change_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let program = tempfile::NamedTempFile::new().unwrap();
    std::fs::set_permissions(program.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let text = format!("[alerts]\nexec = \"{}\"\n", program.path().display());
    assert_one(&errors(&text), "is writable by group or others, and it would run as root");
    std::fs::set_permissions(program.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let loaded = parse(&text, Path::new("p.toml"), LoadOptions::default()).unwrap();
    assert_eq!(loaded.policy.alerts.exec.as_deref(), program.path().to_str());
}

#[test]
fn unknown_keys_name_their_line() {
    let list = errors("mode = \"enforce\"\n[[allow]]\nproto = \"tcp\"\nport = [80]\n");
    assert_one(&list, "p.toml:4:1: error: unknown field `port`");
    let list = errors("modes = \"enforce\"\n");
    assert_one(&list, "p.toml:1:1: error: unknown field `modes`");
}

#[test]
fn bad_ports() {
    let list = errors(
        "default = \"deny\"\n[[allow]]\nproto = \"tcp\"\nports = [80, 70000, \"9-8\", \"x\", 0, true]\n",
    );
    assert_one(&list, "p.toml:4:14: error: port 70000 is out of range (valid ports are 1-65535)");
    assert_one(&list, "p.toml:4:21: error: range \"9-8\" runs backwards");
    assert_one(&list, "p.toml:4:28: error: \"x\" is not a port");
    assert_one(&list, "p.toml:4:33: error: port 0 is not a real destination port");
    assert_one(&list, "p.toml:4:36: error: a port is a number or a \"low-high\" string, not boolean");
    assert_one(&errors("[[allow]]\nproto = \"tcp\"\nports = []\n"), "p.toml:3:9: error: ports is empty");
    assert_one(&errors("[[allow]]\nproto = \"tcp\"\nports = [\"1-99999\"]\n"), "port 99999 is out of range");
}

#[test]
fn bad_values() {
    assert_one(
        &errors("mode = \"block\"\n"),
        "p.toml:1:8: error: mode must be \"enforce\" or \"monitor\", not \"block\"",
    );
    assert_one(&errors("default = \"drop\"\n"), "default must be \"allow\" or \"deny\", not \"drop\"");
    assert_one(
        &errors("[[allow]]\nproto = \"sctp\"\nports = [1]\n"),
        "p.toml:2:9: error: proto must be \"tcp\" or \"udp\"",
    );
    assert_one(&errors("[[allow]]\nproto = \"icmp\"\nports = [1]\n"), "icmp is set with `icmp` in [inbound]");
    assert_one(&errors("[inbound]\nmalformed = \"allow\"\n"), "malformed must be \"pass\" or \"drop\"");
    assert_one(
        &errors("[inbound]\nudp_reply_window = \"soon\"\n"),
        "udp_reply_window = \"soon\" is not a duration",
    );
    assert_one(&errors("[limits]\nflows = 10\n"), "flows must be between 1024 and 16777216");
    assert_one(&errors("mode = 3\n"), "p.toml:1:8: error: invalid type: integer `3`, expected a string");
    assert_one(&errors("mode = \"enforce\"\n[[allow]\n"), "p.toml:2");
}

#[test]
fn bad_networks() {
    let list = errors(
        "[[allow]]\nproto = \"tcp\"\nports = [22]\nfrom = [\"198.51.100.7/24\", \"300.1.1.1\", \"2001:db8::/129\"]\n",
    );
    assert_one(
        &list,
        "p.toml:4:9: error: `198.51.100.7/24` has bits set past its prefix length; the network is 198.51.100.0/24",
    );
    assert_one(&list, "p.toml:4:28: error: `300.1.1.1` is not an IP address or network");
    assert_one(&list, "p.toml:4:41: error: `2001:db8::/129` is not a network");
    assert_one(
        &errors("[blocklist]\nsources = [\"bad\"]\n"),
        "p.toml:2:12: error: `bad` is not an IP address",
    );
    assert_one(&errors("never_block = [\"10.0.0.0/33\"]\n"), "is not a network");
    assert_one(&errors("[[allow]]\nproto = \"tcp\"\nports = [22]\nfrom = []\n"), "from is empty");
    assert_one(
        &errors("[[deny]]\nproto = \"tcp\"\nports = [22]\nfrom = [\"192.0.2.0/24\"]\n"),
        "deny rules take no `from`",
    );
}

#[test]
fn contradictions_are_errors_overlaps_are_warnings() {
    let contradiction = "default = \"deny\"\n[[allow]]\nproto = \"tcp\"\nports = [\"20-25\", 80]\n\n[[deny]]\nname = \"legacy\"\nproto = \"tcp\"\nports = [23, 24, 80]\n";
    assert_one(
        &errors(contradiction),
        "p.toml:6:1: error: tcp ports 23-24, 80 allowed by rule 1 (line 2) and denied by rule 2 \"legacy\" (line 6)",
    );
    // The same port on another protocol is no conflict.
    let fine = "default = \"deny\"\n[[allow]]\nproto = \"tcp\"\nports = [22, 53]\n[[deny]]\nproto = \"udp\"\nports = [53]\n[inbound]\nother_protocols = \"allow\"\n";
    assert!(warnings(fine).is_empty());
    let moot = "default = \"allow\"\n[[allow]]\nproto = \"tcp\"\nports = [22]\nfrom = [\"192.0.2.0/24\"]\n[[allow]]\nproto = \"tcp\"\nports = [\"1-1024\"]\n";
    assert_one(
        &warnings(moot),
        "tcp port 22: rule 2 (line 6) admits every source, so the `from` list of rule 1 (line 2) has no effect there",
    );
    let twice = "default = \"allow\"\n[[allow]]\nproto = \"udp\"\nports = [53]\n[[allow]]\nproto = \"udp\"\nports = [\"50-60\"]\n";
    assert_one(&warnings(twice), "udp port 53 allowed twice, by rule 1 (line 2) and rule 2 (line 5)");
    let sources_add_up = "default = \"allow\"\n[[allow]]\nproto = \"tcp\"\nports = [22]\nfrom = [\"192.0.2.0/24\"]\n[[allow]]\nproto = \"tcp\"\nports = [22]\nfrom = [\"198.51.100.0/24\"]\n";
    assert!(warnings(sources_add_up).is_empty());
}

#[test]
fn scan_detection_settings() {
    let scan =
        |text: &str| parse(text, Path::new("p.toml"), LoadOptions::default()).unwrap().policy.scan_detection;
    let defaults = scan("default = \"allow\"\n");
    assert_eq!((defaults.threshold, defaults.slow_threshold, defaults.ipv6_prefix), (20, 40, 64));
    assert_eq!(defaults.slow_window, Duration::from_secs(300));
    // The long window's threshold follows the short one's unless written.
    assert_eq!(scan("default = \"allow\"\n[scan_detection]\nthreshold = 200\n").slow_threshold, 256);
    let written = scan(
        "default = \"allow\"\n[scan_detection]\nthreshold = 10\nslow_threshold = 0\nipv6_prefix = 128\n",
    );
    assert_eq!((written.threshold, written.slow_threshold, written.ipv6_prefix), (10, 0, 128));
    assert_one(
        &errors("[scan_detection]\nwindow = \"10m\"\n"),
        "p.toml:2:10: error: slow_window (5m) must be longer than window (10m), or set slow_threshold = 0",
    );
    assert_one(&errors("[scan_detection]\nipv6_prefix = 16\n"), "ipv6_prefix = 16 is out of range (32-128)");
    assert_one(&errors("[scan_detection]\nslow_threshold = 1\n"), "out of range (2-256)");
    assert_one(&errors("[limits]\nnew_blocks_per_second = 0\n"), "new_blocks_per_second = 0 is out of range");
}

#[test]
fn warnings_about_spoofing_and_protocol_scans() {
    // Blocking on unverified sources with nobody protected.
    assert_one(
        &warnings("default = \"allow\"\n[scan_detection]\naction = \"block\"\n"),
        "p.toml:3:10: warning: scan_detection action = \"block\" with an empty never_block: probes with forged source addresses can get any address blocked",
    );
    assert_one(
        &warnings("default = \"allow\"\n[trap_ports]\ntcp = [23]\n"),
        "trap ports with an empty never_block",
    );
    assert!(
        warnings("default = \"allow\"\nnever_block = [\"198.51.100.0/24\"]\n[trap_ports]\ntcp = [23]\n")
            .is_empty()
    );
    // Default deny judges ports, not protocols: a protocol scan would pass unseen.
    let open_protocols = "default = \"deny\"\n[[allow]]\nproto = \"tcp\"\nports = [22]\n";
    assert_one(&warnings(open_protocols), "default deny leaves other IP protocols (SCTP, GRE, ...) allowed");
    assert!(warnings(&format!("{open_protocols}[inbound]\nother_protocols = \"allow\"\n")).is_empty());
}

#[test]
fn lockout_and_never_block_warnings() {
    assert_one(
        &warnings("default = \"deny\"\n[inbound]\nother_protocols = \"allow\"\n"),
        "no rule allows tcp port 22",
    );
    assert_one(&warnings("mode = \"enforce\"\n"), "no `default` given");
    let overlap = "default = \"allow\"\nnever_block = [\"203.0.113.0/28\"]\n[blocklist]\nsources = [\"203.0.113.0/24\"]\n";
    assert_one(
        &warnings(overlap),
        "p.toml:2:16: warning: never_block 203.0.113.0/28 overlaps blocklist entry 203.0.113.0/24: never_block wins",
    );
}

#[test]
fn blocklist_files_are_read_relative_to_the_policy() {
    let dir = tempfile_dir();
    std::fs::write(dir.join("bad.txt"), "203.0.113.9\nnonsense\n# comment\n2001:db8:bad::/48 ; SBL1\n")
        .unwrap();
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, "default = \"allow\"\n[blocklist]\nfiles = [\"bad.txt\", \"missing.txt\"]\n")
        .unwrap();
    let errors = crate::policy::load(&policy, LoadOptions::default()).unwrap_err();
    let text = errors.to_string();
    assert!(text.contains("policy.toml:3:21: error: cannot read blocklist file"), "{text}");
    assert!(text.contains("bad.txt:2:1: warning: `nonsense` is not an IP address"), "{text}");

    std::fs::write(&policy, "default = \"allow\"\n[blocklist]\nfiles = [\"bad.txt\"]\n").unwrap();
    let loaded = crate::policy::load(&policy, LoadOptions::default()).unwrap();
    assert_eq!(loaded.policy.blocklist.len(), 2);
    assert_eq!(loaded.warnings.len(), 1);
    let strict = crate::policy::load(&policy, LoadOptions { strict: true }).unwrap_err();
    assert!(strict.to_string().contains("bad.txt:2:1: error:"), "{strict}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// Files handed in from memory: validation reads nothing else.
struct InMemory {
    /// Blocklist files by name (relative to /etc/pg), with their text.
    blocklists: Vec<(&'static str, &'static str)>,
    /// Key files by path, with what reading them gives.
    secrets: Vec<(&'static str, Result<&'static str, &'static str>)>,
    /// Program files by path.
    programs: Vec<(&'static str, ProgramFile)>,
}

impl InMemory {
    fn blocklists(blocklists: Vec<(&'static str, &'static str)>) -> Self {
        Self { blocklists, secrets: Vec::new(), programs: Vec::new() }
    }
}

impl PolicyFiles for InMemory {
    fn blocklist(&self, path: &Path) -> std::io::Result<crate::policy::sources::SourceList> {
        let (_, text) = self
            .blocklists
            .iter()
            .find(|(name, _)| Path::new("/etc/pg").join(name) == path)
            .ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory (os error 2)")
            })?;
        Ok(crate::policy::sources::parse_source_list(text.as_bytes()))
    }

    fn secret(&self, path: &Path) -> Result<crate::policy::alerts::Secret, String> {
        match self.secrets.iter().find(|(name, _)| Path::new(name) == path) {
            Some((_, Ok(key))) => Ok(crate::policy::alerts::Secret::new(key.as_bytes().to_vec())),
            Some((_, Err(why))) => Err((*why).to_owned()),
            None => Err("cannot be read: No such file or directory (os error 2)".to_owned()),
        }
    }

    fn program(&self, path: &Path) -> ProgramFile {
        self.programs.iter().find(|(name, _)| Path::new(name) == path).map_or(ProgramFile::Missing, |p| p.1)
    }
}

#[test]
fn alert_files_come_through_the_files_handed_in() {
    let files = InMemory {
        blocklists: Vec::new(),
        secrets: vec![("/etc/pg/hook.key", Ok("s3cret"))],
        programs: vec![
            ("/usr/local/bin/page", ProgramFile::Found { mode: 0o100_755, uid: 0 }),
            ("/tmp/page", ProgramFile::Found { mode: 0o100_777, uid: 1000 }),
        ],
    };
    let path = Path::new("/etc/pg/edge.toml");
    let policy = |key: &str, program: &str| {
        format!(
            "default = \"allow\"\n[alerts]\nwebhook = \"http://127.0.0.1:9/hook\"\n\
             hmac_secret_file = \"{key}\"\nexec = \"{program}\"\n"
        )
    };
    let loaded =
        validate_with(&policy("hook.key", "/usr/local/bin/page"), path, LoadOptions::default(), &files)
            .unwrap();
    assert_eq!(
        loaded.policy.alerts.hmac_secret.as_ref().map(crate::policy::alerts::Secret::bytes),
        Some(b"s3cret".as_slice())
    );
    assert_eq!(loaded.policy.alerts.exec.as_deref(), Some("/usr/local/bin/page"));
    let errors = validate_with(&policy("gone.key", "/tmp/page"), path, LoadOptions::default(), &files)
        .unwrap_err()
        .to_string();
    assert!(errors.contains("hmac_secret_file /etc/pg/gone.key: cannot be read"), "{errors}");
    assert!(errors.contains("exec program /tmp/page is writable by group or others"), "{errors}");
    let loaded =
        validate_with(&policy("hook.key", "/opt/later"), path, LoadOptions::default(), &files).unwrap();
    assert!(
        loaded
            .warnings
            .iter()
            .any(|w| w.to_string().contains("exec program /opt/later does not exist (yet)")),
        "{:?}",
        loaded.warnings
    );
}

#[test]
fn validation_is_a_function_of_the_text_and_the_files_handed_in() {
    let files = InMemory::blocklists(vec![("lists/drop.txt", "203.0.113.0/24 ; SBL1\nnonsense\n")]);
    let text = "default = \"allow\"\n[blocklist]\nfiles = [\"lists/drop.txt\", \"gone.txt\"]\n";
    let path = Path::new("/etc/pg/edge.toml");
    let errors = validate_with(text, path, LoadOptions::default(), &files).unwrap_err().to_string();
    assert!(
        errors.contains(
            "/etc/pg/edge.toml:3:28: error: cannot read blocklist file /etc/pg/gone.txt: No such file"
        ),
        "{errors}"
    );
    assert!(
        errors.contains("/etc/pg/lists/drop.txt:2:1: warning: `nonsense` is not an IP address"),
        "{errors}"
    );
    let text = "default = \"allow\"\n[blocklist]\nfiles = [\"lists/drop.txt\"]\n";
    let loaded = validate_with(text, path, LoadOptions::default(), &files).unwrap();
    assert_eq!(loaded.policy.blocklist, ["203.0.113.0/24".parse::<ipnet::IpNet>().unwrap()]);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "portguard-test-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn rule_limits_are_read_and_checked() {
    let text = "default = \"deny\"\n[[allow]]\nproto = \"tcp\"\nports = [22]\nlimit = { new_per_source = \"5/10s\", burst = 7 }\n[[allow]]\nproto = \"udp\"\nports = [53]\nlimit = { new_per_source = \"20/s\" }\n[limits]\nlimited_sources = 4096\n";
    let policy = parse(text, Path::new("p.toml"), LoadOptions::default()).unwrap().policy;
    let ssh = policy.rules[0].limit.unwrap();
    assert_eq!(
        (ssh.new_per_source.unwrap().count, ssh.new_per_source.unwrap().per, ssh.burst),
        (5, Duration::from_secs(10), 7)
    );
    assert_eq!(ssh.new_per_source.unwrap().interval(), Duration::from_secs(2));
    let dns = policy.rules[1].limit.unwrap();
    assert_eq!(
        (dns.new_per_source.unwrap().count, dns.new_per_source.unwrap().per, dns.burst),
        (20, Duration::from_secs(1), 20)
    );
    assert_eq!(policy.limits.limited_sources, 4096);

    let rule = |limit: &str| format!("[[allow]]\nproto = \"tcp\"\nports = [22]\nlimit = {limit}\n");
    assert_one(
        &errors(&rule("{ new_per_source = \"5\" }")),
        "p.toml:4:28: error: new_per_source = \"5\" has no `/`",
    );
    assert_one(
        &errors(&rule("{ new_per_source = \"0/s\" }")),
        "p.toml:4:28: error: new_per_source = \"0/s\" needs a count",
    );
    assert_one(&errors(&rule("{ new_per_source = \"x/s\" }")), "needs a count from 1 to 1000000");
    assert_one(&errors(&rule("{ new_per_source = \"5/fortnight\" }")), "has a period that is not a duration");
    assert_one(&errors(&rule("{ new_per_source = \"5/30d\" }")), "has a period longer than a week");
    assert_one(&errors(&rule("{ new_per_source = \"1000000/1ms\" }")), "more than a million per second");
    assert_one(&errors(&rule("{ burst = 5 }")), "p.toml:4:9: error: limit needs new_per_source");
    assert_one(
        &errors(&rule("{ burst = 5, connections_per_source = 2 }")),
        "p.toml:4:19: error: burst needs new_per_source",
    );
    assert_one(
        &errors(&rule("{ }")),
        "p.toml:4:9: error: limit needs new_per_source or connections_per_source",
    );
    assert_one(
        &errors(&rule("{ new_per_source = \"5/s\", burst = 0 }")),
        "p.toml:4:43: error: burst = 0 is out of range",
    );
    assert_one(&errors(&rule("{ new_per_sorce = \"5/s\" }")), "unknown field `new_per_sorce`");
    assert_one(
        &errors("[[deny]]\nproto = \"tcp\"\nports = [23]\nlimit = { new_per_source = \"1/s\" }\n"),
        "p.toml:4:9: error: deny rules take no `limit`",
    );
    assert_one(
        &errors("[limits]\nlimited_sources = 10\n"),
        "p.toml:2:19: error: limited_sources must be between",
    );
    let many: String = (0..65)
        .map(|i| {
            rule(&format!("{{ new_per_source = \"{}/s\" }}", i + 1))
                .replace("[22]", &format!("[{}]", 1000 + i))
        })
        .collect();
    assert_one(&errors(&many), "is the 65th rule with a limit: at most 64 rules may carry one");
}

#[test]
fn brute_force_is_read_and_checked() {
    let limited = "[[allow]]\nproto = \"tcp\"\nports = [22]\nlimit = { new_per_source = \"5/10s\" }\n";
    let text = format!(
        "{limited}[brute_force]\nafter = 4\nwithin = \"30s\"\nblock_for = \"1m\"\nrecidive_within = \"1h\"\nmax_block_for = \"8m\"\n"
    );
    let policy = parse(&text, Path::new("p.toml"), LoadOptions::default()).unwrap().policy;
    let brute = policy.brute_force.unwrap();
    assert_eq!(brute.after, 4);
    assert_eq!(brute.within, Duration::from_secs(30));
    assert_eq!(brute.block_for, Duration::from_secs(60));
    assert_eq!(brute.recidive_within, Duration::from_secs(3600));
    assert_eq!(brute.max_block_for, Duration::from_secs(480));
    // An empty section takes the defaults; none means off.
    let defaults = parse(&format!("{limited}[brute_force]\n"), Path::new("p.toml"), LoadOptions::default());
    assert_eq!(defaults.unwrap().policy.brute_force, Some(crate::policy::BruteForce::default()));
    assert_eq!(parse(limited, Path::new("p.toml"), LoadOptions::default()).unwrap().policy.brute_force, None);

    assert_one(
        &errors(&format!("{limited}[brute_force]\nafter = 0\n")),
        "p.toml:6:9: error: after = 0 is out of range",
    );
    assert_one(
        &errors(&format!("{limited}[brute_force]\nwithin = \"0s\"\n")),
        "p.toml:6:10: error: within = \"0s\" must be longer than zero",
    );
    assert_one(
        &errors(&format!("{limited}[brute_force]\nblock_for = \"2h\"\nmax_block_for = \"1h\"\n")),
        "p.toml:7:17: error: max_block_for (1h) must be at least block_for (2h)",
    );
    assert_one(&errors(&format!("{limited}[brute_force]\nbantime = \"1h\"\n")), "unknown field `bantime`");
    assert_one(
        &warnings("[[allow]]\nproto = \"tcp\"\nports = [22]\n[brute_force]\n"),
        "[brute_force] has no effect: no [[allow]] rule carries a limit",
    );
}

#[test]
fn connection_caps_are_read_and_checked() {
    let text = "[[allow]]\nproto = \"tcp\"\nports = [22]\nlimit = { new_per_source = \"5/10s\", connections_per_source = 4 }\n[[allow]]\nproto = \"tcp\"\nports = [80]\nlimit = { connections_per_source = 64 }\n[limits]\nconnected_sources = 4096\nconnections = 8192\n";
    let policy = parse(text, Path::new("p.toml"), LoadOptions::default()).unwrap().policy;
    let ssh = policy.rules[0].limit.unwrap();
    assert_eq!((ssh.connections_per_source, ssh.burst), (Some(4), 5));
    let web = policy.rules[1].limit.unwrap();
    assert_eq!((web.new_per_source, web.burst, web.connections_per_source), (None, 0, Some(64)));
    assert_eq!(web.describe(), "at most 64 open per source");
    assert_eq!(ssh.describe(), "at most 5/10s new per source (burst 5), at most 4 open per source");
    assert_eq!((policy.limits.connected_sources, policy.limits.connections), (4096, 8192));

    let rule =
        |proto: &str, limit: &str| format!("[[allow]]\nproto = \"{proto}\"\nports = [22]\nlimit = {limit}\n");
    assert_one(
        &errors(&rule("tcp", "{ connections_per_source = 0 }")),
        "p.toml:4:36: error: connections_per_source = 0 is out of range (1-1000000)",
    );
    assert_one(
        &errors(&rule("tcp", "{ connections_per_source = -3 }")),
        "connections_per_source = -3 is out of range",
    );
    assert_one(
        &errors(&rule("udp", "{ connections_per_source = 4 }")),
        "p.toml:4:36: error: connections_per_source needs proto = \"tcp\"",
    );
    assert_one(
        &errors("[[deny]]\nproto = \"tcp\"\nports = [23]\nlimit = { connections_per_source = 1 }\n"),
        "p.toml:4:9: error: deny rules take no `limit`",
    );
    assert_one(&errors("[limits]\nconnections = 10\n"), "p.toml:2:15: error: connections must be between");
    assert_one(&errors("[limits]\nconnected_sources = 10\n"), "connected_sources must be between");
}

#[test]
fn the_journal_keeps_at_least_one_rotated_file_or_none() {
    let base = "[[allow]]\nproto = \"tcp\"\nports = [22]\n[events]\n";
    let parsed = |extra: &str| parse(&format!("{base}{extra}"), Path::new("p.toml"), LoadOptions::default());
    let defaults = parsed("").unwrap().policy.events;
    assert_eq!((defaults.journal_kib, defaults.journal_file_kib), (65536, 8192));
    let small = parsed("journal_kib = 256\njournal_file_kib = 64\n").unwrap().policy.events;
    assert_eq!((small.journal_kib, small.journal_file_kib), (256, 64));
    assert_eq!(parsed("journal_kib = 0\n").unwrap().policy.events.journal_kib, 0);
    assert_one(
        &errors(&format!("{base}journal_kib = 100\njournal_file_kib = 64\n")),
        "p.toml:5:15: error: journal_kib = 100 must be 0 (no journal) or at least twice journal_file_kib (64)",
    );
    // The default total is too small for a file this large: the key written is named.
    assert_one(
        &errors(&format!("{base}journal_file_kib = 65536\n")),
        "p.toml:5:20: error: journal_kib = 65536 must be 0 (no journal) or at least twice journal_file_kib (65536)",
    );
    assert_one(
        &errors(&format!("{base}journal_file_kib = 8\n")),
        "journal_file_kib = 8 is out of range (16-1048576)",
    );
    assert_one(
        &errors(&format!("{base}journal_kib = -1\n")),
        "journal_kib = -1 is out of range (0-16777216)",
    );
}

#[test]
fn blocklist_feeds_are_http_urls_with_a_sane_refresh() {
    let policy = |body: &str| format!("default = \"allow\"\n[blocklist]\n{body}");
    let loaded = parse(
        &policy("urls = [\"https://www.spamhaus.org/drop/drop.txt\", \"http://127.0.0.1:8000/l.netset\"]\nrefresh = \"2h\"\n"),
        Path::new("p.toml"),
        LoadOptions::default(),
    )
    .unwrap();
    let feeds = loaded.policy.feeds.expect("feeds");
    assert_eq!(feeds.urls.len(), 2);
    assert_eq!(feeds.refresh, Duration::from_secs(7200));
    assert!(loaded.policy.blocklist.is_empty(), "check never fetches: {:?}", loaded.policy.blocklist);
    let default =
        parse(&policy("urls = [\"https://example.org/l\"]\n"), Path::new("p.toml"), LoadOptions::default());
    assert_eq!(default.unwrap().policy.feeds.unwrap().refresh, Duration::from_secs(3600));

    assert_one(&errors(&policy("urls = [\"ftp://example.org/l\"]\n")), "p.toml:3:");
    assert_one(&errors(&policy("urls = [\"ftp://example.org/l\"]\n")), "only http:// and https://");
    assert_one(&errors(&policy("urls = [\"https://u:p@example.org/l\"]\n")), "credentials");
    assert_one(
        &errors(&policy("urls = [\"https://example.org/l\",\n  \"https://example.org/l\"]\n")),
        "p.toml:4:3: error: \"https://example.org/l\" is listed twice",
    );
    assert_one(&errors(&policy("urls = [\"https://example.org/l\"]\nrefresh = \"1s\"\n")), "p.toml:4:");
    assert_one(&errors(&policy("urls = [\"https://example.org/l\"]\nrefresh = \"30d\"\n")), "from 5s to 7d");
    assert_one(&errors(&policy("refresh = \"1h\"\n")), "there are none");
}

#[test]
fn evidence_settings_are_read_and_checked() {
    let evidence =
        |text: &str| parse(text, Path::new("p.toml"), LoadOptions::default()).unwrap().policy.evidence;
    let defaults = evidence("default = \"allow\"\n");
    assert_eq!((defaults.packets_per_source, defaults.snaplen, defaults.total_kib), (16, 128, 16384));
    assert_eq!(defaults.capture_for, Duration::from_secs(10));
    assert!(defaults.enabled());
    let written = evidence(
        "default = \"allow\"\n[evidence]\npackets_per_source = 4\nsnaplen = 0\ncapture_for = \"2s\"\ntotal_kib = 64\n",
    );
    assert_eq!((written.packets_per_source, written.snaplen, written.total_kib), (4, 0, 64));
    assert_eq!(written.capture_for, Duration::from_secs(2));
    assert!(!evidence("default = \"allow\"\n[evidence]\npackets_per_source = 0\n").enabled());
    assert!(!evidence("default = \"allow\"\n[evidence]\ntotal_kib = 0\n").enabled());
    assert_one(
        &errors("[evidence]\npackets_per_source = 256\n"),
        "p.toml:2:22: error: packets_per_source = 256 is out of range (0-255)",
    );
    assert_one(&errors("[evidence]\nsnaplen = 129\n"), "snaplen = 129 is out of range (0-128)");
    assert_one(&errors("[evidence]\ncapture_for = \"soon\"\n"), "capture_for = \"soon\" is not a duration");
    assert_one(&errors("[evidence]\npcap = true\n"), "unknown field `pcap`");
}
