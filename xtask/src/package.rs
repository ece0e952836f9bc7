//! Packaging: the man pages and completions (`dist`), the Debian package (`deb`) and the
//! container image (`image`).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{setup::MUSL_TARGET, workspace_root};

/// What `portguard generate-docs` wrote: `man/` and `completions/` under `dir`.
pub struct Docs {
    dir: PathBuf,
}

/// The completion files as `portguard generate-docs` names them, and where `cargo xtask dist`
/// installs them (the directories bash-completion, zsh and fish search under /usr/local).
pub const COMPLETIONS_LOCAL: [(&str, &str); 3] = [
    ("bash/portguard", "/usr/local/share/bash-completion/completions/portguard"),
    ("zsh/_portguard", "/usr/local/share/zsh/site-functions/_portguard"),
    ("fish/portguard.fish", "/usr/local/share/fish/vendor_completions.d/portguard.fish"),
];

impl Docs {
    pub fn man_pages(&self) -> Result<Vec<PathBuf>> {
        let dir = self.dir.join("man");
        let mut pages: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<std::io::Result<_>>()?;
        pages.retain(|page| page.extension().is_some_and(|ext| ext == "8"));
        pages.sort();
        Ok(pages)
    }

    pub fn completion(&self, file: &str) -> PathBuf {
        self.dir.join("completions").join(file)
    }
}

/// The directory the generated files go to (not committed: they are built from `cli.rs`).
pub fn dist_dir() -> PathBuf {
    workspace_root().join("target/dist")
}

/// Runs the built binary's hidden `generate-docs`: the man pages and completions come from the
/// same clap definitions as `--help` (xtask cannot link the portguard crate, whose build needs
/// the BPF toolchain that xtask installs).
pub fn generate_docs(binary: &Path) -> Result<Docs> {
    let dir = dist_dir();
    for sub in ["man", "completions"] {
        // Stale pages of a verb since renamed must not be installed.
        let old = dir.join(sub);
        if old.exists() {
            std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
        }
    }
    let status = Command::new(binary)
        .args(["--quiet", "generate-docs"])
        .arg(&dir)
        .status()
        .with_context(|| format!("running {}", binary.display()))?;
    if !status.success() {
        bail!("`{} generate-docs` failed", binary.display());
    }
    println!("xtask: man pages and completions in {}", dir.display());
    Ok(Docs { dir })
}

/// Builds the static release binary (musl; the kernel object is embedded as in every build),
/// the one binary the Debian package and the image ship.
pub fn build_static() -> Result<PathBuf> {
    crate::cargo(&["build", "--locked", "--release", "--package", "portguard", "--target", MUSL_TARGET])?;
    let binary = workspace_root().join("target").join(MUSL_TARGET).join("release/portguard");
    // ldd says "not a dynamic executable" (glibc) or "statically linked" for a static one.
    let ldd = Command::new("ldd").arg(&binary).output().context("running ldd")?;
    let text = String::from_utf8_lossy(&ldd.stdout) + String::from_utf8_lossy(&ldd.stderr);
    if !(text.contains("not a dynamic executable") || text.contains("statically linked")) {
        bail!("{} is not statically linked: {}", binary.display(), text.trim());
    }
    println!("xtask: built {} (static)", binary.display());
    Ok(binary)
}

/// The unit as packaged: `dist/portguard@.service` (one source) with the package's paths.
fn packaged_unit() -> Result<PathBuf> {
    let source = workspace_root().join("dist/portguard@.service");
    let text = std::fs::read_to_string(&source).with_context(|| format!("reading {}", source.display()))?;
    let mut packaged = text.clone();
    for (from, to) in [
        ("/usr/local/bin/portguard", "/usr/bin/portguard"),
        ("/usr/local/share/doc/portguard/", "/usr/share/doc/portguard/"),
    ] {
        if !packaged.contains(from) {
            bail!("{} no longer names {from}: update xtask/src/package.rs", source.display());
        }
        packaged = packaged.replace(from, to);
    }
    if packaged.contains("/usr/local/") {
        bail!("{} names another /usr/local path: the packaged unit would use it", source.display());
    }
    let target = dist_dir().join("deb/portguard@.service");
    std::fs::create_dir_all(target.parent().context("unit has a directory")?)?;
    std::fs::write(&target, packaged).with_context(|| format!("writing {}", target.display()))?;
    Ok(target)
}

/// `cargo xtask deb`: the static binary, the man pages and completions, the unit with the
/// package's paths, then cargo-deb (configured in portguard/Cargo.toml) without a second build.
pub fn deb() -> Result<PathBuf> {
    let binary = build_static()?;
    generate_docs(&binary)?;
    packaged_unit()?;
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        // --quiet: cargo-deb warns about every asset path under target/ other than
        // target/release/ (the generated ones here are meant); errors still show.
        .args(["deb", "--quiet", "--package", "portguard", "--no-build", "--target", MUSL_TARGET, "--output"])
        .arg(dist_dir())
        .current_dir(workspace_root())
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo deb (cargo xtask setup installs it)")?;
    if !output.status.success() {
        bail!("cargo deb failed");
    }
    // cargo-deb prints the package's path on stdout.
    let deb = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if deb.extension().is_none_or(|ext| ext != "deb") || !deb.is_file() {
        bail!("cargo deb did not name the package it built (it printed {:?})", deb.display().to_string());
    }
    let size = std::fs::metadata(&deb)?.len();
    println!("xtask: built {} ({} KiB)", deb.display(), size / 1024);
    Ok(deb)
}

/// Where `cargo xtask image` leaves the image: an OCI layout (tag = the version) and the same
/// as an archive (`podman load -i`, `skopeo copy oci-archive:...`).
pub struct Image {
    pub layout: PathBuf,
    pub tag: String,
}

impl Image {
    /// The reference umoci and skopeo take: `LAYOUT:TAG`.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.layout.display(), self.tag)
    }
}

/// The image's labels besides the version (OCI annotation keys).
const SOURCE: &str = "https://github.com/portguard/portguard";

/// `cargo xtask image`: FROM scratch, the static binary (stripped) and nothing else, built
/// with buildah; also kept in buildah's local storage as `localhost/portguard:VERSION`.
pub fn image() -> Result<Image> {
    let binary = build_static()?;
    let version = env!("CARGO_PKG_VERSION");
    let dir = dist_dir().join("image");
    std::fs::create_dir_all(&dir)?;
    let stripped = dir.join("portguard");
    run("strip", &[OsArg::from("-o"), stripped.as_os_str().into(), binary.as_os_str().into()])?;
    let name = format!("localhost/portguard:{version}");
    let container = output("buildah", &["from", "scratch"])?;
    let built = (|| -> Result<()> {
        let labels = [
            format!("org.opencontainers.image.version={version}"),
            format!("org.opencontainers.image.source={SOURCE}"),
            "org.opencontainers.image.title=portguard".to_owned(),
            "org.opencontainers.image.description=Port policy and port-scan defence, enforced in the kernel with XDP"
                .to_owned(),
            "org.opencontainers.image.licenses=MIT OR Apache-2.0".to_owned(),
        ];
        run(
            "buildah",
            &[
                "copy".into(),
                "--chmod".into(),
                "0755".into(),
                container.as_str().into(),
                stripped.as_os_str().into(),
                "/usr/bin/portguard".into(),
            ],
        )?;
        let mut config: Vec<OsArg> = vec![
            "config".into(),
            "--entrypoint".into(),
            r#"["/usr/bin/portguard"]"#.into(),
            "--cmd".into(),
            r#"["--help"]"#.into(),
        ];
        for label in &labels {
            config.extend(["--label".into(), label.as_str().into()]);
        }
        config.push(container.as_str().into());
        run("buildah", &config)?;
        run(
            "buildah",
            &["commit".into(), "--quiet".into(), container.as_str().into(), name.as_str().into()],
        )?;
        Ok(())
    })();
    let _ = Command::new("buildah").args(["rm", &container]).output();
    built?;
    let layout = dir.join("oci");
    let archive = dist_dir().join(format!("portguard_{version}_oci.tar"));
    for old in [&layout, &archive] {
        if old.is_dir() {
            std::fs::remove_dir_all(old)?;
        } else if old.exists() {
            std::fs::remove_file(old)?;
        }
    }
    run(
        "buildah",
        &[
            "push".into(),
            "--quiet".into(),
            name.as_str().into(),
            format!("oci:{}:{version}", layout.display()).into(),
        ],
    )?;
    run(
        "buildah",
        &[
            "push".into(),
            "--quiet".into(),
            name.as_str().into(),
            format!("oci-archive:{}:{version}", archive.display()).into(),
        ],
    )?;
    let size = std::fs::metadata(&archive)?.len();
    let unpacked = std::fs::metadata(&stripped)?.len();
    println!(
        "xtask: built image {name}: {} (OCI layout) and {} ({} KiB compressed; the one file in it, /usr/bin/portguard, is {} KiB)",
        layout.display(),
        archive.display(),
        size / 1024,
        unpacked / 1024
    );
    Ok(Image { layout, tag: version.to_owned() })
}

type OsArg = std::ffi::OsString;

fn run(program: &str, args: &[OsArg]) -> Result<()> {
    let status = Command::new(program).args(args).status().with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!(
            "`{program} {}` failed",
            args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
        );
    }
    Ok(())
}

fn output(program: &str, args: &[&str]) -> Result<String> {
    let output = Command::new(program).args(args).output().with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!("`{program} {}` failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}
