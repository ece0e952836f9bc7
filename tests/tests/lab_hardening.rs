//! Hostile and unlucky input (issue 10): interface names that are paths, relative and
//! symlinked policies, durations out of range, files that are not files, a state directory
//! that cannot be written, a lost blocks.json, and text that would forge output lines.

use std::{path::Path, process::Output};

use portguard_tests::{portguard_cli::binary, require_root};

const WEB: &str = r#"
mode = "enforce"
default = "deny"

[[allow]]
proto = "tcp"
ports = [22, 80]
"#;

fn refused(output: Output, wanted: &str) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "accepted: {}{stderr}", String::from_utf8_lossy(&output.stdout));
    assert!(stderr.contains(wanted), "expected `{wanted}` in: {stderr}");
    stderr
}

/// `portguard ARGS` with a private state directory (never the host's blocks).
fn portguard_in(state: &Path, args: &[&str]) -> Output {
    std::process::Command::new(binary())
        .env("PORTGUARD_STATE_DIR", state)
        .args(args)
        .output()
        .expect("running portguard")
}

#[test]
fn interface_names_that_are_paths_are_refused_by_every_command() {
    require_root!();
    // The victim is our own temporary directory, reached from /run/portguard and from
    // /sys/fs/bpf/portguard through `..`: it must survive every command.
    let victim = tempfile::Builder::new().prefix("pgt-victim-").tempdir_in("/var/tmp").unwrap();
    let name = victim.path().file_name().unwrap().to_str().unwrap().to_owned();
    std::fs::write(victim.path().join("keep"), "precious").unwrap();
    std::fs::write(victim.path().join("f.pending.json"), "precious").unwrap();
    let state = tempfile::tempdir().unwrap();
    let from_pins = format!("../../../../var/tmp/{name}");
    let from_run = format!("../../var/tmp/{name}/f");
    let policy = state.path().join("p.toml");
    std::fs::write(&policy, WEB).unwrap();
    let policy = policy.to_str().unwrap();
    for hostile in [from_pins.as_str(), from_run.as_str(), "eth0:1", "a b", "1234567890123456"] {
        let commands: Vec<Vec<&str>> = vec![
            vec!["detach", hostile],
            vec!["attach", hostile, "--policy", policy],
            vec!["reload", hostile],
            vec!["confirm", hostile],
            vec!["stats", hostile],
            vec!["events", hostile],
            vec!["block", "203.0.113.7", "--iface", hostile],
            vec!["unblock", "203.0.113.7", "--iface", hostile],
            vec!["blocks", "--iface", hostile],
            vec!["doctor", "--iface", hostile],
            vec!["rollback-guard", hostile, "token"],
        ];
        for args in commands {
            let output = portguard_in(state.path(), &args);
            let stderr = refused(output, "is not an interface name");
            assert!(stderr.contains("1-15 bytes"), "{args:?}: {stderr}");
        }
    }
    assert_eq!(std::fs::read_to_string(victim.path().join("keep")).unwrap(), "precious");
    assert_eq!(std::fs::read_to_string(victim.path().join("f.pending.json")).unwrap(), "precious");
    assert!(!state.path().join("blocks.json").exists(), "nothing was saved");
}
