//! How portguard prints, in one place for every command: `-q` (informational lines off),
//! `--json` (stdout carries JSON only; lines for people go to stderr), colour (on a terminal
//! only, never with `NO_COLOR`), counts with their nouns, columns sized to what they hold, and
//! timestamps (RFC 3339, UTC, for people and JSON alike). Durations are `durations::format`.

use std::{
    fmt,
    io::IsTerminal as _,
    sync::{
        OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::SystemTime,
};

use anstyle::{AnsiColor, Style};
use unicode_width::UnicodeWidthStr as _;

static QUIET: AtomicBool = AtomicBool::new(false);
static JSON_STDOUT: AtomicBool = AtomicBool::new(false);

/// `-q`: informational lines are left out; errors, warnings and what was asked for stay.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// `--json`: stdout carries JSON and nothing else, so lines for people go to stderr.
pub fn set_json_stdout(json: bool) {
    JSON_STDOUT.store(json, Ordering::Relaxed);
}

pub fn json_stdout() -> bool {
    JSON_STDOUT.load(Ordering::Relaxed)
}

/// An informational line for the person watching (what was done: the `attach` banner, a
/// reload, a restore): left out with `-q`; on stdout, or on stderr when stdout carries JSON.
/// A closed stdout or stderr is shrugged off: a loader whose terminal went away keeps enforcing.
pub fn say(line: &str) {
    use std::io::Write as _;
    if quiet() {
        return;
    }
    let _ = if json_stdout() {
        writeln!(std::io::stderr(), "{line}")
    } else {
        writeln!(std::io::stdout(), "{line}")
    };
}

/// A policy's warnings (`check`, `verify`, `attach`, `reload`), one per line on stderr: they
/// are about the input, never the command's answer.
pub fn warnings(warnings: &[crate::policy::Diagnostic]) {
    for warning in warnings {
        eprintln!("{warning}");
    }
}

/// A line of what stdout is for (an event, a JSON object), shrugging off a closed stdout.
pub fn emit(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// An informational line (what a command did), left out with `-q`: on stdout, or on stderr
/// when stdout carries JSON.
#[macro_export]
macro_rules! inform {
    ($($arg:tt)*) => {
        $crate::output::say(&format!($($arg)*))
    };
}

/// An informational line on stderr (a note beside the answer), left out with `-q`.
#[macro_export]
macro_rules! note {
    ($($arg:tt)*) => {
        if !$crate::output::quiet() {
            eprintln!($($arg)*);
        }
    };
}

/// Whether stdout gets colour: a terminal, and neither `NO_COLOR` nor `CLICOLOR=0` nor
/// `TERM=dumb` (`CLICOLOR_FORCE=1` forces it into a pipe). Decided once per process.
pub fn colour() -> bool {
    static COLOUR: OnceLock<bool> = OnceLock::new();
    *COLOUR.get_or_init(|| anstream::AutoStream::choice(&std::io::stdout()) != anstream::ColorChoice::Never)
}

/// Whether stdout is a terminal that can be redrawn in place (`stats --watch`).
pub fn redraws() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("TERM").is_none_or(|term| term != "dumb")
}

/// Clears the terminal and puts the cursor top left, before a frame that replaces the last.
pub const CLEAR_SCREEN: &str = "\x1b[H\x1b[2J";

/// What a word means, for its colour: the same meaning has the same colour in every command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tone {
    /// Passed, running, ok.
    Good,
    /// Dropped, blocked, not running, not protected, critical and high findings.
    Bad,
    /// Would drop (monitor mode), waiting for confirmation, medium findings.
    Caution,
    /// Less important than the text around it: informational findings.
    Faint,
    /// A heading.
    Heading,
}

impl Tone {
    fn style(self) -> Style {
        match self {
            Self::Good => Style::new().fg_color(Some(AnsiColor::Green.into())),
            Self::Bad => Style::new().fg_color(Some(AnsiColor::Red.into())).bold(),
            Self::Caution => Style::new().fg_color(Some(AnsiColor::Yellow.into())),
            Self::Faint => Style::new().dimmed(),
            Self::Heading => Style::new().bold(),
        }
    }
}

/// `text` in the colour of `tone` when stdout takes colour; plain otherwise. Width and
/// alignment (`{:<9}`) apply to the text, not to the colour codes.
pub fn paint<T: fmt::Display>(tone: Tone, text: T) -> Painted<T> {
    Painted { tone, text, colour: colour() }
}

pub struct Painted<T> {
    tone: Tone,
    text: T,
    colour: bool,
}

impl<T: fmt::Display> fmt::Display for Painted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let style = self.tone.style();
        if self.colour {
            write!(f, "{}", style.render())?;
        }
        f.pad(&self.text.to_string())?;
        if self.colour {
            write!(f, "{}", style.render_reset())?;
        }
        Ok(())
    }
}

/// Thousands separators for counts people read: `1,234,567`.
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The noun for `n` of something: `one` for 1, `many` otherwise.
pub fn noun<'a>(n: u64, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 { one } else { many }
}

/// `n` with its noun: `1 packet`, `1,024 packets`, `0 entries`.
pub fn count(n: u64, one: &str, many: &str) -> String {
    format!("{} {}", group(n), noun(n, one, many))
}

/// This moment as people and logs read it, in UTC to the second: `2026-11-30T02:13:58Z`.
pub fn timestamp() -> String {
    rfc3339(SystemTime::now())
}

/// A moment as JSON carries it (`*_at` keys): RFC 3339, UTC, to the second.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// The same for seconds since the Unix epoch, as run files and `blocks.json` keep them; `None`
/// past the end of year 9999, where RFC 3339 ends (stored state can hold any number).
pub fn rfc3339_unix(secs: u64) -> Option<String> {
    const LAST_RFC3339_SECOND: u64 = 253_402_300_799;
    (secs <= LAST_RFC3339_SECOND)
        .then(|| rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)))
}

/// Lines of a table whose columns are as wide as what they hold (an IPv6 network as much as
/// an address); the last column is not padded. Cells are plain text (escape what came from
/// outside with `crate::printable` first).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> Vec<String> {
    let columns = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.width()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.width());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (index, cell) in cells.take(columns).enumerate() {
            if index + 1 == columns {
                out.push_str(cell);
            } else {
                out.push_str(cell);
                out.push_str(&" ".repeat(widths[index] - cell.width() + 2));
            }
        }
        out.trim_end().to_string()
    };
    std::iter::once(line(&mut header.iter().copied()))
        .chain(rows.iter().map(|row| line(&mut row.iter().map(String::as_str))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc_and_say_when_they_cannot_be() {
        assert_eq!(rfc3339_unix(0).as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!(rfc3339_unix(253_402_300_799).as_deref(), Some("9999-12-31T23:59:59Z"));
        assert_eq!(rfc3339_unix(253_402_300_800), None);
        assert_eq!(rfc3339_unix(u64::MAX), None);
    }

    #[test]
    fn counts_take_the_noun_their_number_needs() {
        assert_eq!(count(0, "packet", "packets"), "0 packets");
        assert_eq!(count(1, "packet", "packets"), "1 packet");
        assert_eq!(count(1_234_567, "entry", "entries"), "1,234,567 entries");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
    }

    #[test]
    fn columns_fit_the_widest_cell() {
        let v6 = "2001:db8:ffff:ffff:ffff:ffff:ffff:0/112".to_string();
        let rows = vec![
            vec!["192.0.2.7/32".to_string(), "manual".to_string(), "ssh".to_string()],
            vec![v6.clone(), "automatic".to_string(), "scan: 20 ports".to_string()],
        ];
        let lines = table(&["source", "origin", "reason"], &rows);
        assert_eq!(lines.len(), 3);
        let origin_at = lines[0].find("origin").unwrap();
        assert!(origin_at > v6.len(), "{lines:#?}");
        for line in &lines[1..] {
            let second = line.split_whitespace().nth(1).unwrap();
            assert_eq!(line.find(second), Some(origin_at), "{lines:#?}");
        }
        assert!(lines[2].starts_with(&format!("{v6}  automatic")), "{lines:#?}");
    }

    #[test]
    fn paint_pads_the_text_and_only_colours_when_asked() {
        let plain = Painted { tone: Tone::Bad, text: "DROP", colour: false };
        assert_eq!(format!("[{plain:<6}]"), "[DROP  ]");
        let coloured = Painted { tone: Tone::Bad, text: "DROP", colour: true };
        let text = format!("{coloured:<6}|");
        assert!(text.starts_with("\x1b[") && text.contains("DROP  \x1b[0m|"), "{text:?}");
    }
}
