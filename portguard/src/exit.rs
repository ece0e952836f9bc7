//! portguard's exit codes, every one in this table: scripts, cron and service managers tell
//! the outcomes apart by them. The README's table is checked against `Exit::ALL`.

use std::process::ExitCode;

use crate::system::NeedsPrivileges;

/// Why portguard ended. 0, 1 and 2 are what most tools use (and clap uses 2 for usage
/// errors); 3 is what `systemctl is-active` and LSB `status` use for "not running" and 4 what
/// LSB uses for "insufficient privilege"; the rest are portguard's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Done, and everything is as asked.
    Ok = 0,
    /// The command failed (its error says why).
    Failure = 1,
    /// The command line is wrong (clap's own code).
    Usage = 2,
    /// `status`: nothing is attached, an attachment's loader is not running, or an interface
    /// is not protected (or its connection caps are not enforced).
    NotRunning = 3,
    /// The command needs root (or a capability) it does not have: nothing was looked at.
    NeedsPrivileges = 4,
    /// `status`: a change made with `--confirm-within` waits for `portguard confirm`.
    ConfirmationPending = 5,
    /// `attach --confirm-within` was not confirmed in time and rolled back.
    RolledBack = 6,
    /// `doctor --fail-on`: findings at or above that severity exist.
    Findings = 7,
    /// `verify`: part of the capture could not be read (the rest is judged and reported);
    /// `report`: the journals do not cover the whole window, or have unreadable lines (the rest
    /// is reported).
    IncompleteInput = 8,
}

impl Exit {
    pub const ALL: [Self; 9] = [
        Self::Ok,
        Self::Failure,
        Self::Usage,
        Self::NotRunning,
        Self::NeedsPrivileges,
        Self::ConfirmationPending,
        Self::RolledBack,
        Self::Findings,
        Self::IncompleteInput,
    ];

    pub const fn code(self) -> u8 {
        self as u8
    }

    /// Its name in the README's table.
    pub const fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failure => "error",
            Self::Usage => "usage",
            Self::NotRunning => "not running",
            Self::NeedsPrivileges => "needs privileges",
            Self::ConfirmationPending => "confirmation pending",
            Self::RolledBack => "rolled back",
            Self::Findings => "findings",
            Self::IncompleteInput => "incomplete input",
        }
    }

    /// The code for a command that failed with `error`: a missing privilege has its own.
    pub fn of_error(error: &anyhow::Error) -> Self {
        if error.chain().any(<dyn std::error::Error + 'static>::is::<NeedsPrivileges>) {
            Self::NeedsPrivileges
        } else {
            Self::Failure
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        Self::from(exit.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_usage_is_clap_s() {
        let mut codes: Vec<u8> = Exit::ALL.iter().map(|e| e.code()).collect();
        codes.dedup();
        assert_eq!(codes, (0..Exit::ALL.len() as u8).collect::<Vec<_>>(), "distinct, in order, no gaps");
        let usage = clap::Command::new("x").try_get_matches_from(["x", "--no-such-option"]).unwrap_err();
        assert_eq!(usage.exit_code(), i32::from(Exit::Usage.code()));
    }

    #[test]
    fn a_missing_privilege_is_told_apart_through_context() {
        let error = anyhow::Error::new(NeedsPrivileges::new("portguard status", "reading its pins"))
            .context("listing attachments");
        assert_eq!(Exit::of_error(&error), Exit::NeedsPrivileges);
        assert_eq!(Exit::of_error(&anyhow::anyhow!("no such file")), Exit::Failure);
    }

    #[test]
    fn the_readme_lists_every_code() {
        let readme = include_str!("../../README.md");
        for exit in Exit::ALL {
            let row = format!("| {} | {} |", exit.code(), exit.label());
            assert!(readme.contains(&row), "README.md has no exit-code row `{row}`");
        }
    }
}
