//! From `RawPolicy` (what was written) to `Policy` (what it means), reporting every problem with
//! its line: unknown keys, bad values, and rules that overlap or contradict each other.
//!
//! `values` reads single values (ports, addresses, durations), `sections` builds each table,
//! and `lints` checks what the tables say together. Every file a policy names (blocklists,
//! `[alerts]`'s key file and `exec` program) comes through [`PolicyFiles`] (`files`), so
//! validation reads nothing itself and a test can hand the files in.

mod files;
mod lints;
mod sections;
#[cfg(test)]
mod tests;
mod values;

use std::path::Path;

pub use files::{Disk, PolicyFiles, ProgramFile};
pub(super) use values::{duration, integer_in};

use super::{Action, LoadOptions, Loaded, Mode, Policy, PolicyErrors, diagnostic::Reporter, raw::RawPolicy};

/// Validates policy text read from `path`, reading the blocklist files it names from disk.
pub fn validate(text: &str, path: &Path, options: LoadOptions) -> Result<Loaded, PolicyErrors> {
    validate_with(text, path, options, &Disk)
}

/// Validates policy text: `path` names it in messages and anchors the relative paths of the
/// blocklist files, which come from `files` (so a test can hand them in).
pub fn validate_with(
    text: &str,
    path: &Path,
    options: LoadOptions,
    files: &dyn PolicyFiles,
) -> Result<Loaded, PolicyErrors> {
    let mut report = Reporter::new(path.to_owned(), text);
    let raw: RawPolicy = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(error) => {
            let span = error.span().unwrap_or(0..0);
            report.error_at(span, toml_message(&error));
            return Err(PolicyErrors { diagnostics: report.diagnostics });
        }
    };

    let mode = match &raw.mode {
        None => Mode::Enforce,
        Some(mode) => match mode.get_ref().as_str() {
            "enforce" => Mode::Enforce,
            "monitor" => Mode::Monitor,
            other => {
                report.error_at(
                    mode.span(),
                    format!("mode must be \"enforce\" or \"monitor\", not \"{other}\""),
                );
                Mode::Enforce
            }
        },
    };
    let default = match &raw.default {
        None => {
            report.warning_at(
                0..0,
                "no `default` given: ports no rule names are allowed (write default = \"deny\" \
                 to close them)",
            );
            Action::Allow
        }
        Some(value) => values::action(&mut report, value, "default", "allow", "deny"),
    };

    let rules = sections::rules(&mut report, &raw.allow, &raw.deny);
    lints::check_overlaps(&mut report, &rules);

    let never_block = values::nets(&mut report, &raw.never_block);
    let (blocklist, blocklist_sources) =
        sections::blocklist(&mut report, raw.blocklist.as_ref(), path, options, files);
    lints::check_blocklist_against_never_block(&mut report, &raw, &blocklist, &never_block);
    let feeds = raw.blocklist.as_ref().and_then(|raw| super::feeds::feeds(&mut report, raw));

    let inbound = sections::inbound(&mut report, raw.inbound.as_ref());
    let limits = sections::limits(&mut report, raw.limits.as_ref());
    let scan_detection = sections::scan_detection(&mut report, raw.scan_detection.as_ref());
    let trap_ports = sections::trap_ports(&mut report, raw.trap_ports.as_ref(), &rules);
    let brute_force = sections::brute_force(&mut report, raw.brute_force.as_ref(), &rules);
    let events = sections::events(&mut report, raw.events.as_ref());
    let evidence = sections::evidence(&mut report, raw.evidence.as_ref());
    let alerts = super::alerts::alerts(&mut report, raw.alerts.as_ref(), path, files);
    let metrics_listen = sections::metrics_listen(&mut report, raw.metrics.as_ref());
    let crowdsec = super::crowdsec::crowdsec(&mut report, raw.crowdsec.as_ref(), path, files);
    let anomaly = super::anomaly::anomaly(&mut report, raw.anomaly.as_ref());

    lints::check_spoofable_blocks(&mut report, &raw, &scan_detection, &trap_ports, &never_block);
    lints::check_defaults(&mut report, &raw, default, &inbound, &rules);

    if report.has_errors() {
        return Err(PolicyErrors { diagnostics: report.diagnostics });
    }
    Ok(Loaded {
        policy: Policy {
            path: path.to_owned(),
            mode,
            default,
            rules,
            never_block,
            blocklist,
            blocklist_sources,
            feeds,
            inbound,
            limits,
            scan_detection,
            trap_ports,
            brute_force,
            events,
            evidence,
            alerts,
            metrics_listen,
            crowdsec,
            anomaly,
        },
        warnings: report.diagnostics,
    })
}

/// toml's messages carry their own rendering of the line; keep only the sentence.
fn toml_message(error: &toml::de::Error) -> String {
    let message = error.message().trim().to_string();
    if message.starts_with("unknown field") {
        format!("{message} (check the key's spelling and the table it is in)")
    } else {
        message
    }
}
