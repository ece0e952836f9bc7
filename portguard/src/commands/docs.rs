//! `portguard generate-docs DIR` (hidden): the man pages and shell completions, generated from
//! the one command-line definition in `cli.rs`, so they cannot drift from `--help`. xtask runs
//! it on the built binary: xtask itself must build without the BPF toolchain, so it cannot
//! link this crate.
//!
//! Written under DIR: `man/portguard.8` and `man/portguard-VERB.8` for every visible verb, and
//! `completions/bash/portguard`, `completions/zsh/_portguard`, `completions/fish/portguard.fish`
//! (the names the shells look for in their vendor directories).

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context as _, Result};
use clap::CommandFactory as _;
use clap_complete::Shell;
use clap_mangen::roff::{Roff, bold, roman};
use portguard::paths;

use crate::cli::Cli;

/// Writes every page and completion file and names each.
pub fn generate(dir: &Path) -> Result<ExitCode> {
    for file in write_all(dir)? {
        portguard::inform!("wrote {}", file.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn write_all(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut command = Cli::command().disable_help_subcommand(true);
    command.build();
    let mut written = man_pages(&command, &dir.join("man"))?;
    written.extend(completions(&command, &dir.join("completions"))?);
    Ok(written)
}

/// Section 8 (system administration): portguard needs root for everything but `check`.
const SECTION: &str = "8";

fn man_pages(command: &clap::Command, dir: &Path) -> Result<Vec<PathBuf>> {
    create_dir(dir)?;
    let verbs: Vec<&clap::Command> = command.get_subcommands().filter(|verb| !verb.is_hide_set()).collect();
    let mut written = Vec::new();
    let see_also: Vec<String> =
        verbs.iter().map(|verb| format!("portguard-{}({SECTION})", verb.get_name())).collect();
    written.push(man_page(command, dir, &main_page_extra(&see_also))?);
    for verb in verbs {
        let mut extra = Roff::new();
        extra.control("SH", ["SEE ALSO"]).text([roman(format!("portguard({SECTION})"))]);
        written.push(man_page(verb, dir, &extra)?);
    }
    Ok(written)
}

/// The main page's FILES and SEE ALSO sections: where portguard keeps its state, so an
/// operator reading `man portguard` finds it without the README.
fn main_page_extra(see_also: &[String]) -> Roff {
    let files = [
        ("/etc/portguard/IFACE.toml", "the policy of the service instance portguard@IFACE"),
        (
            "/etc/portguard/IFACE.env",
            "optional: POLICY=... (another policy file) and PORTGUARD_ARGS=... for that instance",
        ),
        (
            paths::STATE_DIR,
            "manual blocks (blocks.json), the policies in force and the event journals (journal/IFACE/)",
        ),
        (paths::RUN_DIR, "the loaders' run files and event sockets"),
        (paths::PIN_ROOT, "the pinned programs, maps and links of each attachment"),
        ("/usr/share/doc/portguard/examples/", "example policies (as packaged)"),
    ];
    let mut roff = Roff::new();
    roff.control("SH", ["FILES"]);
    for (path, what) in files {
        roff.control("TP", []).text([bold(path)]).text([roman(what)]);
    }
    roff.control("SH", ["SEE ALSO"]).text([roman(format!(
        "{}, systemctl(1), and the README (/usr/share/doc/portguard/README.md in the package).",
        see_also.join(", ")
    ))]);
    roff
}

fn man_page(command: &clap::Command, dir: &Path, extra: &Roff) -> Result<PathBuf> {
    let man = clap_mangen::Man::new(command.clone()).section(SECTION).manual("portguard manual");
    let path = dir.join(man.get_filename());
    let mut text = Vec::new();
    man.render(&mut text)?;
    extra.to_writer(&mut text)?;
    write(&path, &text)?;
    Ok(path)
}

/// The command line without the internal verbs: clap_complete offers hidden verbs too, and a
/// Tab must not suggest `rollback-guard`.
fn without_internal_verbs(command: &clap::Command) -> clap::Command {
    let mut visible = clap::Command::new("portguard")
        .version(env!("CARGO_PKG_VERSION"))
        .disable_help_subcommand(true)
        .args(
            command
                .get_arguments()
                .filter(|arg| !matches!(arg.get_id().as_str(), "help" | "version"))
                .cloned(),
        )
        .subcommands(command.get_subcommands().filter(|verb| !verb.is_hide_set()).cloned());
    if let Some(about) = command.get_about() {
        visible = visible.about(about.clone());
    }
    visible.build();
    visible
}

fn completions(command: &clap::Command, dir: &Path) -> Result<Vec<PathBuf>> {
    let command = without_internal_verbs(command);
    let mut written = Vec::new();
    for (shell, file) in [
        (Shell::Bash, "bash/portguard"),
        (Shell::Zsh, "zsh/_portguard"),
        (Shell::Fish, "fish/portguard.fish"),
    ] {
        let path = dir.join(file);
        create_dir(path.parent().context("completion file has a directory")?)?;
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut command.clone(), "portguard", &mut text);
        write(&path, &text)?;
        written.push(path);
    }
    Ok(written)
}

fn create_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

fn write(path: &Path, text: &[u8]) -> Result<()> {
    let mut file = fs::File::create(path).with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text).and_then(|()| file.flush()).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::fs;

    /// A page per visible verb and none for the internal ones; every completion names every
    /// visible verb and no internal one.
    #[test]
    fn pages_and_completions_cover_the_visible_verbs() {
        let dir = tempfile::tempdir().unwrap();
        let written = super::write_all(dir.path()).unwrap();
        let man = dir.path().join("man");
        for verb in ["attach", "reload", "block", "verify", "doctor", "detach"] {
            let page = fs::read_to_string(man.join(format!("portguard-{verb}.8"))).unwrap();
            assert!(page.contains(&format!(".TH portguard-{verb} 8")), "{verb}: section 8");
        }
        assert!(!man.join("portguard-rollback-guard.8").exists());
        assert!(!man.join("portguard-generate-docs.8").exists());
        assert!(!man.join("portguard-help.8").exists());
        let main = fs::read_to_string(man.join("portguard.8")).unwrap();
        assert!(main.contains("portguard\\-verify(8)"), "the main page lists the verbs: {main}");
        assert!(main.contains("/var/lib/portguard"), "FILES section");
        let attach = fs::read_to_string(man.join("portguard-attach.8")).unwrap();
        assert!(attach.contains("Treat bad lines in blocklist files as errors"), "help text in the page");
        for file in ["bash/portguard", "zsh/_portguard", "fish/portguard.fish"] {
            let text = fs::read_to_string(dir.path().join("completions").join(file)).unwrap();
            for verb in ["attach", "verify", "doctor", "--confirm-within"] {
                assert!(text.contains(verb), "{file} completes {verb}");
            }
            assert!(
                !text.contains("rollback-guard") && !text.contains("generate-docs"),
                "{file}: internal verbs"
            );
        }
        assert_eq!(written.len(), 1 + 15 + 3, "{written:#?}");
    }
}
