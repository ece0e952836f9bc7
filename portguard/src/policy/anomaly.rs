//! `[anomaly]`: when a port's minute departs from its baseline enough to say so
//! (`crate::baseline`). On by default: the baselines learn from the first minute and alert
//! after the warm-up.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::{Spanned, Value};

use super::{
    diagnostic::Reporter,
    validate::{duration, integer_in},
};
use crate::baseline::Measure;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AnomalyDetection {
    pub enabled: bool,
    /// A minute departs when a measure is above this many times its baseline's mean (and
    /// above the mean plus four mean deviations, and above its floor).
    pub factor: f64,
    /// Minutes a baseline must have seen before it is compared with.
    #[serde(rename = "warm_up_secs", with = "super::secs")]
    pub warm_up: Duration,
    /// The same port and measure is reported at most once per this.
    #[serde(rename = "alert_every_secs", with = "super::secs")]
    pub alert_every: Duration,
    /// Ports with a baseline of their own; others are judged against silence.
    pub max_ports: u32,
    /// Per minute: at or below these a measure is never an anomaly, whatever its baseline.
    pub min_new_connections: u32,
    pub min_sources: u32,
    pub min_bytes: u32,
    pub min_drops: u32,
    pub min_source_bytes: u32,
}

impl Default for AnomalyDetection {
    fn default() -> Self {
        Self {
            enabled: true,
            factor: 4.0,
            warm_up: Duration::from_secs(3600),
            alert_every: Duration::from_secs(600),
            max_ports: 1024,
            min_new_connections: 30,
            min_sources: 10,
            min_bytes: 10_000_000,
            min_drops: 600,
            min_source_bytes: 1_000_000,
        }
    }
}

impl AnomalyDetection {
    pub fn warm_up_minutes(&self) -> u32 {
        u32::try_from(self.warm_up.as_secs().div_ceil(60)).unwrap_or(u32::MAX)
    }

    pub fn floor(&self, measure: Measure) -> u64 {
        u64::from(match measure {
            Measure::NewConnections => self.min_new_connections,
            Measure::Sources => self.min_sources,
            Measure::Bytes => self.min_bytes,
            Measure::Drops => self.min_drops,
            Measure::SourceBytes => self.min_source_bytes,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAnomaly {
    pub enabled: Option<Spanned<bool>>,
    /// A number, integer or not.
    pub factor: Option<Spanned<Value>>,
    pub warm_up: Option<Spanned<String>>,
    pub alert_every: Option<Spanned<String>>,
    pub max_ports: Option<Spanned<i64>>,
    pub min_new_connections: Option<Spanned<i64>>,
    pub min_sources: Option<Spanned<i64>>,
    pub min_bytes: Option<Spanned<i64>>,
    pub min_drops: Option<Spanned<i64>>,
    pub min_source_bytes: Option<Spanned<i64>>,
}

pub(super) fn anomaly(report: &mut Reporter, raw: Option<&RawAnomaly>) -> AnomalyDetection {
    let mut settings = AnomalyDetection::default();
    let Some(raw) = raw else {
        return settings;
    };
    if let Some(enabled) = &raw.enabled {
        settings.enabled = *enabled.get_ref();
    }
    if let Some(value) = &raw.factor {
        let number = match value.get_ref() {
            Value::Integer(n) => Some(*n as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        };
        match number {
            Some(factor) if (1.5..=1000.0).contains(&factor) => settings.factor = factor,
            _ => report.error_at(value.span(), "factor must be a number from 1.5 to 1000"),
        }
    }
    if let Some(value) = &raw.warm_up {
        settings.warm_up = duration(report, value, "warm_up").unwrap_or(settings.warm_up);
        if settings.warm_up < Duration::from_secs(60) {
            report
                .error_at(value.span(), "warm_up must be at least a minute (baselines learn by the minute)");
        }
    }
    if let Some(value) = &raw.alert_every {
        settings.alert_every = duration(report, value, "alert_every").unwrap_or(settings.alert_every);
    }
    let mut integer = |value: &Option<Spanned<i64>>, key: &str, most: i64, current: u32| {
        value.as_ref().and_then(|value| integer_in(report, value, key, 1..=most)).unwrap_or(current)
    };
    // Every TCP and UDP port.
    settings.max_ports = integer(&raw.max_ports, "max_ports", 2 * 65536, settings.max_ports);
    let most = 4_000_000_000;
    settings.min_new_connections =
        integer(&raw.min_new_connections, "min_new_connections", most, settings.min_new_connections);
    settings.min_sources = integer(&raw.min_sources, "min_sources", most, settings.min_sources);
    settings.min_bytes = integer(&raw.min_bytes, "min_bytes", most, settings.min_bytes);
    settings.min_drops = integer(&raw.min_drops, "min_drops", most, settings.min_drops);
    settings.min_source_bytes =
        integer(&raw.min_source_bytes, "min_source_bytes", most, settings.min_source_bytes);
    settings
}
