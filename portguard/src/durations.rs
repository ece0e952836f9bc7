//! Durations people write (`block --for 2h`, `block_for = "15m"`) and read (`1h 59m left`):
//! one parser, one range, one way of printing them.

use std::{fmt, time::Duration};

/// A humantime year (365.25 days).
const YEAR_SECS: u64 = 31_557_600;

/// The longest duration portguard accepts anywhere: 100 years. Far past any block or timer
/// worth setting, and far enough below 2^64 ns (584 years) that adding it to the wall clock
/// or the kernel's clock in nanoseconds cannot wrap.
pub const MAX: Duration = Duration::from_secs(100 * YEAR_SECS);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DurationError {
    Syntax(String),
    Zero,
    TooShort(Duration),
    TooLong,
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Syntax(error) => write!(f, "is not a duration like 30s, 15m or 2h: {error}"),
            Self::Zero => f.write_str("must be longer than zero"),
            Self::TooShort(shortest) => {
                write!(f, "is shorter than {}, the shortest allowed here", format(*shortest))
            }
            Self::TooLong => {
                f.write_str("is longer than 100 years (100y), the longest duration portguard accepts")
            }
        }
    }
}

/// Parses `text` (humantime: `30s`, `15m`, `2h 30m`, `1y`) into a duration longer than zero,
/// at least `shortest` and at most `MAX`.
pub fn parse(text: &str, shortest: Duration) -> Result<Duration, DurationError> {
    let duration =
        humantime::parse_duration(text).map_err(|error| DurationError::Syntax(error.to_string()))?;
    if duration.is_zero() {
        Err(DurationError::Zero)
    } else if duration < shortest {
        Err(DurationError::TooShort(shortest))
    } else if duration > MAX {
        Err(DurationError::TooLong)
    } else {
        Ok(duration)
    }
}

/// Units for printing, largest first, in nanoseconds; a year is humantime's (365.25 days) so
/// every printed duration parses back to itself.
const UNITS: [(u128, &str); 8] = [
    (YEAR_SECS as u128 * 1_000_000_000, "y"),
    (86_400 * 1_000_000_000, "d"),
    (3_600 * 1_000_000_000, "h"),
    (60 * 1_000_000_000, "m"),
    (1_000_000_000, "s"),
    (1_000_000, "ms"),
    (1_000, "us"),
    (1, "ns"),
];

/// How every duration portguard prints looks: `15m`, `1m 59s`, `2d 3h`, `100y`, `500ms`, the
/// way `--for` and the policy take them (and exact: it parses back to the same duration).
pub fn format(duration: Duration) -> String {
    if duration.is_zero() {
        return "0s".to_string();
    }
    let mut left = duration.as_nanos();
    let mut parts = Vec::new();
    for (unit, name) in UNITS {
        if left >= unit {
            parts.push(format!("{}{name}", left / unit));
            left %= unit;
        }
    }
    parts.join(" ")
}

/// `format` of a number of seconds.
pub fn format_secs(secs: u64) -> String {
    format(Duration::from_secs(secs))
}

/// `duration` in nanoseconds, as the kernel counts time; `None` past `u64`.
pub fn as_kernel_ns(duration: Duration) -> Option<u64> {
    u64::try_from(duration.as_nanos()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_one_way_and_parse_back() {
        for (secs, text) in [
            (0, "0s"),
            (1, "1s"),
            (59, "59s"),
            (120, "2m"),
            (119, "1m 59s"),
            (900, "15m"),
            (86_400, "1d"),
            (90_061, "1d 1h 1m 1s"),
            (YEAR_SECS * 100, "100y"),
        ] {
            assert_eq!(format_secs(secs), text);
            if secs > 0 {
                assert_eq!(parse(text, Duration::ZERO), Ok(Duration::from_secs(secs)), "{text}");
            }
        }
        for (duration, text) in [
            (Duration::from_millis(340), "340ms"),
            (Duration::from_millis(119_900), "1m 59s 900ms"),
            (Duration::from_nanos(1_020_003), "1ms 20us 3ns"),
        ] {
            assert_eq!(format(duration), text);
            assert_eq!(parse(text, Duration::ZERO), Ok(duration), "{text}");
        }
    }

    #[test]
    fn durations_are_range_checked() {
        assert_eq!(parse("30s", Duration::ZERO), Ok(Duration::from_secs(30)));
        assert_eq!(parse("100y", Duration::ZERO), Ok(MAX));
        assert_eq!(parse("1ns", Duration::ZERO), Ok(Duration::from_nanos(1)));
        assert_eq!(parse("0s", Duration::ZERO), Err(DurationError::Zero));
        assert_eq!(
            parse("1ns", Duration::from_secs(1)),
            Err(DurationError::TooShort(Duration::from_secs(1)))
        );
        assert_eq!(
            parse("999ms", Duration::from_secs(1)).unwrap_err().to_string(),
            "is shorter than 1s, the shortest allowed here"
        );
        for long in ["101y", "570y", "600y", "10000y", "584y 200d"] {
            assert_eq!(parse(long, Duration::ZERO), Err(DurationError::TooLong), "{long}");
        }
        assert!(matches!(parse("soon", Duration::ZERO), Err(DurationError::Syntax(_))));
        // Past u64 seconds humantime itself refuses.
        assert!(matches!(parse("99999999999999999999999y", Duration::ZERO), Err(DurationError::Syntax(_))));
        assert_eq!(as_kernel_ns(MAX), Some(MAX.as_nanos() as u64));
        assert!(MAX.as_nanos() * 3 < u128::from(u64::MAX), "MAX plus any clock reading fits in u64 ns");
        assert_eq!(as_kernel_ns(Duration::from_secs(u64::MAX)), None);
    }

    #[test]
    fn every_policy_duration_is_range_checked() {
        let policy = |section: &str, key: &str, value: &str| {
            // The long scan window must stay longer than the short one: off, for this.
            let other = if key == "window" { "slow_threshold = 0\n" } else { "" };
            let text = format!("default = \"allow\"\n[{section}]\n{key} = \"{value}\"\n{other}");
            crate::policy::parse(&text, std::path::Path::new("p.toml"), crate::policy::LoadOptions::default())
        };
        for (section, key) in [
            ("trap_ports", "block_for"),
            ("scan_detection", "block_for"),
            ("scan_detection", "window"),
            ("scan_detection", "slow_window"),
            ("inbound", "fragment_timeout"),
            ("inbound", "udp_reply_window"),
            ("alerts", "timeout"),
        ] {
            for long in ["600y", "584y", "101y"] {
                let errors = policy(section, key, long).unwrap_err().to_string();
                assert!(errors.contains(&format!("{key} = \"{long}\" is longer than 100 years")), "{errors}");
            }
            assert!(policy(section, key, "100y").is_ok(), "{section} {key}");
        }
    }
}
