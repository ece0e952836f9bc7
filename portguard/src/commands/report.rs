//! `portguard report [IFACE] [--since WHEN] [--html FILE] [--json]`: what the journals of this
//! namespace say about a window (`report`), for a terminal, as JSON, or as a page. The exit
//! status is 8 (incomplete input, as `verify`'s for a damaged capture) when the journals do not
//! cover the whole window or have lines that cannot be read: the report is still given in full.

use std::{
    io::Write as _, os::unix::fs::OpenOptionsExt as _, path::Path, process::ExitCode, time::SystemTime,
};

use anyhow::{Context as _, Result, bail};
use portguard::{
    exit::Exit,
    inform,
    journal::{self, Reading},
    netns::Netns,
    report::{self, Window},
    system,
};

pub fn run(iface: Option<&str>, since: SystemTime, html: Option<&Path>, json: bool) -> Result<ExitCode> {
    system::require_root("portguard report")?;
    let until = SystemTime::now();
    if since >= until {
        bail!("--since is in the future: the window would be empty");
    }
    let interfaces = match iface {
        Some(iface) => vec![iface.to_owned()],
        None => journal::journals()?,
    };
    if interfaces.is_empty() {
        bail!(
            "no journal in {} yet: a loader keeps one from its first attach (in {})",
            Netns::current(),
            portguard::paths::journal_root().display()
        );
    }
    let readings: Vec<Reading> =
        interfaces.iter().map(|iface| journal::read(iface, since, until)).collect::<Result<_>>()?;
    let report = report::build(&readings, &Window { since, until });
    if let Some(path) = html {
        let page = report::html::render(&report).context("rendering the HTML report")?;
        // What the journal holds is root's to read: so is the page made from it.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("writing {} (is the directory writable?)", path.display()))?;
        file.write_all(page.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for line in report::text::render(&report) {
            println!("{line}");
        }
        if let Some(path) = html {
            inform!("\nHTML report: {}", path.display());
        }
    }
    Ok(if report.coverage.complete { Exit::Ok } else { Exit::IncompleteInput }.into())
}
