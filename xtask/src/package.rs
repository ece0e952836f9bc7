//! Packaging: the man pages and completions (`dist`), the Debian package (`deb`) and the
//! container image (`image`).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::workspace_root;

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
