//! `portguard report --html FILE`: the report as one self-contained page (inline CSS, an
//! inline SVG timeline, no scripts, no external assets). Every value is escaped by the
//! template engine (addresses, reasons given on a command line, policy paths). The layout
//! lives in `templates/report.html`; the chart's geometry is computed here.

use askama::Template;

use super::Report;
use crate::{durations, journal::GapKind, output::group};

const WIDTH: f64 = 1040.0;
const PLOT_LEFT: f64 = 56.0;
const PLOT_RIGHT: f64 = 12.0;
const PLOT_TOP: f64 = 12.0;
const PLOT_HEIGHT: f64 = 220.0;
/// Room under the plot for the time labels and the marks' band.
const BELOW: f64 = 44.0;
/// Lines drawn for marked moments at most (the tables below list every block and change).
const MARKS_DRAWN: usize = 200;
/// Colours of the drop reasons, in the order of `Timeline::reasons`; the rest share the last.
const PALETTE: [&str; 8] =
    ["#dc2626", "#ea580c", "#d97706", "#7c3aed", "#2563eb", "#0891b2", "#db2777", "#6b7280"];

#[derive(Template)]
#[template(path = "report.html")]
struct Page<'a> {
    report: &'a Report,
    chart: Chart,
    bucket: String,
    version: &'static str,
    /// `Totals` as cards: count and label.
    cards: Vec<(String, &'static str)>,
}

struct Chart {
    width: f64,
    height: f64,
    plot_left: f64,
    plot_right: f64,
    plot_top: f64,
    plot_bottom: f64,
    max_label: String,
    rects: Vec<Rect>,
    gaps: Vec<Shade>,
    marks: Vec<Line>,
    ticks: Vec<Tick>,
    legend: Vec<(String, &'static str)>,
    marks_left_out: usize,
}

struct Rect {
    x: f64,
    y: f64,
    width: f64,
    height: f64,
    colour: &'static str,
    title: String,
}

struct Shade {
    x: f64,
    width: f64,
    title: String,
}

struct Line {
    x: f64,
    class: &'static str,
    title: String,
}

struct Tick {
    x: f64,
    label: String,
}

fn colour(report: &Report, reason: &str) -> &'static str {
    let index = report.timeline.reasons.iter().position(|r| r == reason).unwrap_or(PALETTE.len() - 1);
    PALETTE[index.min(PALETTE.len() - 1)]
}

fn chart(report: &Report) -> Chart {
    let timeline = &report.timeline;
    let buckets = timeline.buckets.len().max(1) as f64;
    let plot_width = WIDTH - PLOT_LEFT - PLOT_RIGHT;
    let step = plot_width / buckets;
    let span_secs = buckets * timeline.bucket_secs as f64;
    let x_of = |offset_secs: f64| PLOT_LEFT + (offset_secs / span_secs).clamp(0.0, 1.0) * plot_width;
    let most = timeline.buckets.iter().map(|b| b.drops.values().sum::<u64>()).max().unwrap_or(0).max(1);
    let scale = PLOT_HEIGHT / most as f64;
    let plot_bottom = PLOT_TOP + PLOT_HEIGHT;
    let mut rects = Vec::new();
    for (index, bucket) in timeline.buckets.iter().enumerate() {
        let mut y = plot_bottom;
        // Stacked in the legend's order, the most frequent reason at the bottom.
        for reason in &timeline.reasons {
            let Some(&count) = bucket.drops.get(reason) else { continue };
            let height = count as f64 * scale;
            y -= height;
            rects.push(Rect {
                x: PLOT_LEFT + index as f64 * step,
                y,
                width: (step - 1.0).max(0.5),
                height,
                colour: colour(report, reason),
                title: format!("{}: {} {reason}", bucket.time, group(count)),
            });
        }
    }
    let since = crate::journal::parse_time(&report.since);
    let offset_of = |time: &str| {
        let at = crate::journal::parse_time(time)?;
        Some(at.duration_since(since?).map_or(0.0, |d| d.as_secs_f64()))
    };
    let gaps = report
        .coverage
        .gaps
        .iter()
        .filter(|g| g.gap.kind != GapKind::Lost)
        .filter_map(|g| {
            let start = offset_of(&g.gap.from)?;
            let end = g.gap.to.as_deref().and_then(offset_of).unwrap_or(span_secs);
            let (x0, x1) = (x_of(start), x_of(end));
            Some(Shade {
                x: x0,
                width: (x1 - x0).max(1.0),
                title: format!("{}: {}", g.interface, g.gap.describe()),
            })
        })
        .collect();
    let marks = timeline
        .marks
        .iter()
        .take(MARKS_DRAWN)
        .map(|mark| Line {
            x: x_of(mark.offset_secs as f64),
            class: mark.kind,
            title: format!("{} {}", mark.time, mark.label),
        })
        .collect();
    // A label is about 60 pixels wide: one every 90 at most.
    let tick_every = timeline.buckets.len().div_ceil((plot_width / 90.0) as usize).max(1);
    let ticks = timeline
        .buckets
        .iter()
        .enumerate()
        .step_by(tick_every)
        .map(|(index, bucket)| Tick {
            x: PLOT_LEFT + index as f64 * step,
            // `2026-12-02T05:27:10Z`: the time of day (the window's dates are in the header).
            label: bucket.time.get(11..19).unwrap_or(&bucket.time).to_string(),
        })
        .collect();
    let legend = timeline.reasons.iter().map(|reason| (reason.clone(), colour(report, reason))).collect();
    Chart {
        width: WIDTH,
        height: plot_bottom + BELOW,
        plot_left: PLOT_LEFT,
        plot_right: WIDTH - PLOT_RIGHT,
        plot_top: PLOT_TOP,
        plot_bottom,
        max_label: group(most),
        rects,
        gaps,
        marks,
        ticks,
        legend,
        marks_left_out: timeline.marks.len().saturating_sub(MARKS_DRAWN),
    }
}

pub fn render(report: &Report) -> anyhow::Result<String> {
    let t = &report.totals;
    let cards = vec![
        (group(t.drop_events), "drop events (sampled)"),
        (group(t.scans), "scans"),
        (group(t.automatic_blocks), "automatic blocks"),
        (group(t.manual_blocks), "manual blocks"),
        (group(t.trap_hits), "trap hits"),
        (group(t.anomalies), "anomalies"),
        (group(t.policy_changes), "policy changes"),
        (group(t.distinct_sources), "sources"),
        (group(t.lost_events), "events lost"),
    ];
    let page = Page {
        report,
        chart: chart(report),
        bucket: durations::format_secs(report.timeline.bucket_secs),
        version: env!("CARGO_PKG_VERSION"),
        cards,
    };
    Ok(page.render()?)
}
