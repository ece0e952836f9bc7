//! The hour of the week a minute falls in, in the host's local time: people's habits follow
//! the wall clock where they are, not UTC.

use std::time::SystemTime;

const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// 0 is Monday 00:00-01:00, 167 Sunday 23:00-24:00.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HourOfWeek(u8);

impl HourOfWeek {
    /// `weekday` 0 is Monday; `None` if either is out of range.
    pub fn new(weekday: u8, hour: u8) -> Option<Self> {
        (weekday < 7 && hour < 24).then(|| Self(weekday * 24 + hour))
    }

    /// The hour of the week `time` falls in, in the time zone the C library is set to
    /// (`TZ`, else /etc/localtime); UTC if it cannot say.
    pub fn local(time: SystemTime) -> Self {
        let secs = time.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let clock = libc::time_t::try_from(secs).unwrap_or(0);
        // SAFETY: localtime_r writes only into `tm`, which it is given.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        let converted = unsafe { !libc::localtime_r(&raw const clock, &raw mut tm).is_null() };
        if converted {
            // tm_wday: 0 is Sunday.
            let weekday = u8::try_from((tm.tm_wday + 6) % 7).unwrap_or(0);
            Self::new(weekday, u8::try_from(tm.tm_hour).unwrap_or(0)).unwrap_or(Self(0))
        } else {
            Self::utc(secs)
        }
    }

    /// The hour of the week of a Unix time in UTC (1970-01-01 was a Thursday).
    pub fn utc(unix_secs: u64) -> Self {
        let hours = unix_secs / 3600;
        let weekday = ((hours / 24) + 3) % 7;
        Self(u8::try_from(weekday * 24 + hours % 24).unwrap_or(0))
    }

    pub const fn index(self) -> u8 {
        self.0
    }

    /// `Mon 09:00-10:00`.
    pub fn describe(self) -> String {
        let hour = self.0 % 24;
        format!("{} {hour:02}:00-{:02}:00", DAYS[usize::from(self.0 / 24)], hour + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_hours_of_the_week() {
        // 1970-01-01 00:00 UTC was a Thursday.
        assert_eq!(HourOfWeek::utc(0).describe(), "Thu 00:00-01:00");
        // 2026-11-30 09:30 UTC is a Monday.
        assert_eq!(HourOfWeek::utc(1_796_031_000).describe(), "Mon 09:00-10:00");
        assert_eq!(HourOfWeek::new(6, 23).unwrap().index(), 167);
        assert!(HourOfWeek::new(7, 0).is_none());
    }
}
