//! Single values: actions, ports and port ranges, addresses, durations, bounded integers.

use std::{
    ops::{Range, RangeInclusive},
    time::Duration,
};

use ipnet::IpNet;
use toml::{Spanned, Value};

use super::super::{Action, Response, diagnostic::Reporter, sources::parse_net_strict};

pub(super) fn action(
    report: &mut Reporter,
    value: &Spanned<String>,
    key: &str,
    allow: &str,
    deny: &str,
) -> Action {
    match value.get_ref().as_str() {
        v if v == allow => Action::Allow,
        v if v == deny => Action::Deny,
        other => {
            report
                .error_at(value.span(), format!("{key} must be \"{allow}\" or \"{deny}\", not \"{other}\""));
            Action::Deny
        }
    }
}

pub(super) fn port_range(report: &mut Reporter, item: &Spanned<Value>) -> Option<RangeInclusive<u16>> {
    let span = item.span();
    match item.get_ref() {
        Value::Integer(port) => port_number(report, span, *port).map(|p| p..=p),
        Value::String(text) => {
            let Some((low, high)) = text.split_once('-') else {
                return match text.trim().parse::<i64>() {
                    Ok(port) => port_number(report, span, port).map(|p| p..=p),
                    Err(_) => {
                        report.error_at(
                            span,
                            format!("\"{text}\" is not a port or a range like \"8000-8100\""),
                        );
                        None
                    }
                };
            };
            let (Ok(low), Ok(high)) = (low.trim().parse::<i64>(), high.trim().parse::<i64>()) else {
                report.error_at(span, format!("\"{text}\" is not a port range like \"8000-8100\""));
                return None;
            };
            let low = port_number(report, span.clone(), low)?;
            let high = port_number(report, span.clone(), high)?;
            if low > high {
                report.error_at(span, format!("range \"{text}\" runs backwards; write \"{high}-{low}\""));
                return None;
            }
            Some(low..=high)
        }
        other => {
            report.error_at(
                span,
                format!("a port is a number or a \"low-high\" string, not {}", other.type_str()),
            );
            None
        }
    }
}

fn port_number(report: &mut Reporter, span: Range<usize>, port: i64) -> Option<u16> {
    match u16::try_from(port) {
        Ok(0) => {
            report.error_at(span, "port 0 is not a real destination port (valid ports are 1-65535)");
            None
        }
        Ok(port) => Some(port),
        Err(_) => {
            report.error_at(span, format!("port {port} is out of range (valid ports are 1-65535)"));
            None
        }
    }
}

pub(super) fn nets(report: &mut Reporter, items: &[Spanned<String>]) -> Vec<IpNet> {
    items
        .iter()
        .filter_map(|item| match parse_net_strict(item.get_ref()) {
            Ok(net) => Some(net),
            Err(reason) => {
                report.error_at(item.span(), reason);
                None
            }
        })
        .collect()
}

pub(in crate::policy) fn duration(
    report: &mut Reporter,
    value: &Spanned<String>,
    key: &str,
) -> Option<Duration> {
    match crate::durations::parse(value.get_ref(), Duration::ZERO) {
        Ok(duration) => Some(duration),
        Err(error) => {
            report.error_at(value.span(), format!("{key} = \"{}\" {error}", value.get_ref()));
            None
        }
    }
}

pub(super) fn response(report: &mut Reporter, value: &Spanned<String>) -> Response {
    match value.get_ref().as_str() {
        "off" => Response::Off,
        "alert" => Response::Alert,
        "block" => Response::Block,
        other => {
            report.error_at(
                value.span(),
                format!("action must be \"alert\", \"block\" or \"off\", not \"{other}\""),
            );
            Response::Alert
        }
    }
}

pub(in crate::policy) fn integer_in(
    report: &mut Reporter,
    value: &Spanned<i64>,
    key: &str,
    range: RangeInclusive<i64>,
) -> Option<u32> {
    if range.contains(value.get_ref()) {
        Some(*value.get_ref() as u32)
    } else {
        report.error_at(
            value.span(),
            format!("{key} = {} is out of range ({}-{})", value.get_ref(), range.start(), range.end()),
        );
        None
    }
}
