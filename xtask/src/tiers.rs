//! `cargo xtask test`: the tests in three tiers, each runnable alone.
//!
//! - unit: formatting, clippy, and the userspace crates' own tests (no root, no kernel);
//! - kernel: the kernel program on crafted frames through BPF_PROG_TEST_RUN (root);
//! - lab: `portguard` itself on real traffic between network namespaces (root).
//!
//! Which test target of the tests crate is in which tier is written once, in
//! `tests/Cargo.toml` under `[package.metadata.tiers]`; every file in `tests/tests/` must be
//! in exactly one tier, so a new test cannot silently run in none.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context as _, Result, bail};
use clap::ValueEnum;

use crate::{build, cargo, cargo_with, workspace_root};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Tier {
    /// Formatting, clippy, unit tests of portguard, portguard-common, xtask and the tests
    /// crate's library.
    Unit,
    /// BPF_PROG_TEST_RUN tests of the kernel program (root).
    Kernel,
    /// Namespace and veth tests of the `portguard` binary (root).
    Lab,
}

impl Tier {
    const ALL: [Self; 3] = [Self::Unit, Self::Kernel, Self::Lab];

    fn name(self) -> &'static str {
        match self {
            Self::Unit => "unit",
            Self::Kernel => "kernel",
            Self::Lab => "lab",
        }
    }
}

/// The userspace crates whose unit tests form the unit tier (portguard-ebpf builds only for
/// the BPF target; portguard's build script builds it).
const UNIT_PACKAGES: [&str; 3] = ["portguard", "portguard-common", "xtask"];

/// Crates whose clippy warnings fail the unit tier: every userspace crate. (portguard-ebpf
/// builds for the BPF target only; its findings touch verifier-sensitive code and are not
/// gated yet.)
const CLIPPY_DENY: &[&str] = &["portguard", "portguard-common", "xtask", "portguard-tests"];

/// Set for every test run here: a test that cannot run (not root, a missing tool or kernel
/// feature) fails instead of ending early (see `portguard_tests::must_run`).
const MUST_RUN: (&str, &str) = ("PORTGUARD_TESTS_MUST_RUN", "1");

pub fn test(only: Option<Tier>, extra: &[String]) -> Result<()> {
    let tiers = only.map_or(Tier::ALL.to_vec(), |tier| vec![tier]);
    let targets = test_targets()?;
    if tiers.iter().any(|&t| t != Tier::Unit) && !nix::unistd::geteuid().is_root() {
        eprintln!(
            "xtask: not root: the kernel and lab tests cannot run and will fail; run `sudo -E cargo xtask test`"
        );
    }
    for tier in tiers {
        println!("xtask: === {} tier ===", tier.name());
        match tier {
            Tier::Unit => unit(extra)?,
            Tier::Kernel | Tier::Lab => {
                build(false)?;
                let names = targets.get(&tier).map(Vec::as_slice).unwrap_or_default();
                if names.is_empty() {
                    // No `--test` at all would run every target of the crate.
                    println!("xtask: the {} tier has no tests", tier.name());
                    continue;
                }
                // The release artifacts, built once for the packaging tests (one static release
                // build serves the package and the image).
                let artifacts = if tier == Tier::Lab {
                    let deb = crate::package::deb()?.to_string_lossy().into_owned();
                    Some((deb, crate::package::image()?.reference()))
                } else {
                    None
                };
                let mut env = vec![MUST_RUN];
                if let Some((deb, image)) = &artifacts {
                    env.extend([("PORTGUARD_DEB", deb.as_str()), ("PORTGUARD_IMAGE", image.as_str())]);
                }
                tests_crate(names, extra, &env)
                    .with_context(|| format!("the {} tier failed", tier.name()))?;
            }
        }
    }
    Ok(())
}

fn unit(extra: &[String]) -> Result<()> {
    cargo(&["fmt", "--all", "--", "--check"]).context("code is not formatted: run `cargo fmt --all`")?;
    clippy(CLIPPY_DENY)?;
    let mut args = vec!["test", "--locked", "--no-fail-fast"];
    for package in UNIT_PACKAGES {
        args.extend(["--package", package]);
    }
    args.extend(extra.iter().map(String::as_str));
    cargo_with(&args, &[MUST_RUN])?;
    // The tests crate's own library and helper binaries (the namespace lab, the model).
    let mut args =
        vec!["test", "--locked", "--no-fail-fast", "--package", "portguard-tests", "--lib", "--bins"];
    args.extend(extra.iter().map(String::as_str));
    cargo_with(&args, &[MUST_RUN])
}

/// `cargo clippy` on `packages`, every target; a warning fails the tier.
fn clippy(packages: &[&str]) -> Result<()> {
    if packages.is_empty() {
        return Ok(());
    }
    // --no-deps: lint only the crates named, not the workspace crates they depend on.
    let mut args = vec!["clippy", "--locked", "--all-targets", "--no-deps"];
    for package in packages {
        args.extend(["--package", package]);
    }
    args.extend(["--", "-D", "warnings"]);
    cargo(&args).with_context(|| format!("clippy found problems in {}", packages.join(", ")))
}

fn tests_crate(names: &[String], extra: &[String], env: &[(&str, &str)]) -> Result<()> {
    let mut args = vec!["test", "--locked", "--no-fail-fast", "--package", "portguard-tests"];
    for name in names {
        args.extend(["--test", name.as_str()]);
    }
    args.extend(extra.iter().map(String::as_str));
    cargo_with(&args, env)
}

/// The test targets of each tier, from `tests/Cargo.toml`, checked against `tests/tests/`.
fn test_targets() -> Result<BTreeMap<Tier, Vec<String>>> {
    let manifest = workspace_root().join("tests/Cargo.toml");
    let text =
        std::fs::read_to_string(&manifest).with_context(|| format!("reading {}", manifest.display()))?;
    let on_disk = target_files(&workspace_root().join("tests/tests"))?;
    tiers_from_manifest(&text, &on_disk).with_context(|| format!("in {}", manifest.display()))
}

/// The `.rs` files directly in `dir`, by stem: each is one test target.
fn target_files(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "rs") {
            if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                names.push(stem.to_owned());
            }
        }
    }
    names.sort();
    Ok(names)
}

fn tiers_from_manifest(text: &str, on_disk: &[String]) -> Result<BTreeMap<Tier, Vec<String>>> {
    let manifest: toml::Table = toml::from_str(text)?;
    let table = manifest
        .get("package")
        .and_then(|p| p.get("metadata"))
        .and_then(|m| m.get("tiers"))
        .and_then(toml::Value::as_table)
        .context("no [package.metadata.tiers] table")?;
    let mut tiers = BTreeMap::new();
    let mut placed: BTreeMap<&str, &str> = BTreeMap::new();
    for (key, value) in table {
        let tier = Tier::from_str(key, false).map_err(|_| {
            anyhow::anyhow!("[package.metadata.tiers] has `{key}`: the tiers are kernel and lab")
        })?;
        if tier == Tier::Unit {
            bail!("[package.metadata.tiers] lists `unit`: the tests crate's unit tests run with --lib");
        }
        let names = value
            .as_array()
            .and_then(|a| a.iter().map(toml::Value::as_str).collect::<Option<Vec<_>>>())
            .with_context(|| format!("[package.metadata.tiers] {key} must be a list of test names"))?;
        for name in &names {
            if let Some(other) = placed.insert(name, key) {
                bail!("test `{name}` is in two tiers: {other} and {key}");
            }
            if !on_disk.iter().any(|n| n == name) {
                bail!("tier {key} lists `{name}`, but there is no tests/tests/{name}.rs");
            }
        }
        tiers.insert(tier, names.into_iter().map(str::to_owned).collect());
    }
    if let Some(stray) = on_disk.iter().find(|n| !placed.contains_key(n.as_str())) {
        bail!("tests/tests/{stray}.rs is in no tier: add it under [package.metadata.tiers]");
    }
    Ok(tiers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn reads_each_tier() {
        let text =
            "[package]\nname = \"t\"\n[package.metadata.tiers]\nkernel = [\"k\"]\nlab = [\"l1\", \"l2\"]\n";
        let tiers = tiers_from_manifest(text, &disk(&["k", "l1", "l2"])).unwrap();
        assert_eq!(tiers[&Tier::Kernel], ["k"]);
        assert_eq!(tiers[&Tier::Lab], ["l1", "l2"]);
    }

    #[test]
    fn a_test_in_no_tier_or_two_or_missing_is_an_error() {
        let stray = "[package.metadata.tiers]\nkernel = [\"k\"]\nlab = []\n";
        let error = tiers_from_manifest(stray, &disk(&["k", "new"])).unwrap_err().to_string();
        assert!(error.contains("tests/tests/new.rs is in no tier"), "{error}");
        let twice = "[package.metadata.tiers]\nkernel = [\"k\"]\nlab = [\"k\"]\n";
        let error = tiers_from_manifest(twice, &disk(&["k"])).unwrap_err().to_string();
        assert!(error.contains("in two tiers"), "{error}");
        let gone = "[package.metadata.tiers]\nkernel = [\"k\", \"old\"]\n";
        let error = tiers_from_manifest(gone, &disk(&["k"])).unwrap_err().to_string();
        assert!(error.contains("no tests/tests/old.rs"), "{error}");
        let unknown = "[package.metadata.tiers]\nfast = [\"k\"]\n";
        assert!(tiers_from_manifest(unknown, &disk(&["k"])).is_err());
    }

    /// The real manifest places every real test file.
    #[test]
    fn the_tests_crate_places_every_test() {
        let tiers = test_targets().unwrap();
        assert!(tiers[&Tier::Kernel].iter().any(|t| t == "kernel_verdicts"));
        assert!(tiers[&Tier::Lab].iter().any(|t| t == "lab_enforcement"));
    }
}
