//! `portguard doctor --html FILE`: the report as one self-contained page (inline CSS, an inline
//! SVG chart, no scripts, no external assets). The markup is XHTML-compatible, so any XML
//! parser reads it as well as a browser does. The layout lives in `templates/doctor.html`.

use askama::Template;

use super::{Report, Severity};

/// Bars in the drops-by-port chart.
const CHART_BARS: usize = 10;
const CHART_WIDTH: u32 = 640;
const BAR_HEIGHT: u32 = 22;
const LABEL_WIDTH: u32 = 90;

#[derive(Template)]
#[template(path = "doctor.html")]
struct Page<'a> {
    report: &'a Report,
    headline: String,
    /// Findings per severity, worst first.
    cards: Vec<(&'static str, usize)>,
    chart: Chart,
    version: &'static str,
}

struct Chart {
    width: u32,
    height: u32,
    bars: Vec<Bar>,
}

struct Bar {
    label: String,
    y: u32,
    text_y: u32,
    width: u32,
    value_x: u32,
    value: String,
}

fn chart(report: &Report) -> Chart {
    let ports = &report.drops_by_port[..report.drops_by_port.len().min(CHART_BARS)];
    let most = ports.iter().map(|p| p.drops).max().unwrap_or(1).max(1);
    // Room on the right for the count.
    let span = CHART_WIDTH - LABEL_WIDTH - 80;
    let bars = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let y = i as u32 * (BAR_HEIGHT + 6);
            let width = ((port.drops as f64 / most as f64) * f64::from(span)).round().max(1.0) as u32;
            Bar {
                label: format!("{}/{}", port.protocol, port.port),
                y,
                text_y: y + BAR_HEIGHT * 3 / 4,
                width,
                value_x: LABEL_WIDTH + width + 6,
                value: port.drops.to_string(),
            }
        })
        .collect::<Vec<_>>();
    Chart { width: CHART_WIDTH, height: (bars.len() as u32 * (BAR_HEIGHT + 6)).max(1), bars }
}

/// "2 high, 1 medium findings" or "no findings".
fn headline(report: &Report) -> String {
    let parts: Vec<String> = [Severity::Critical, Severity::High, Severity::Medium, Severity::Low]
        .into_iter()
        .filter_map(|severity| {
            let n = report.summary.counts.get(severity.name()).copied().unwrap_or(0);
            (n > 0).then(|| format!("{n} {}", severity.name()))
        })
        .collect();
    if parts.is_empty() { "nothing to fix".into() } else { format!("to look at: {}", parts.join(", ")) }
}

pub fn render(report: &Report) -> anyhow::Result<String> {
    let cards = [Severity::Critical, Severity::High, Severity::Medium, Severity::Low, Severity::Info]
        .into_iter()
        .map(|s| (s.name(), report.summary.counts.get(s.name()).copied().unwrap_or(0)))
        .collect();
    let page = Page {
        report,
        headline: headline(report),
        cards,
        chart: chart(report),
        version: env!("CARGO_PKG_VERSION"),
    };
    Ok(page.render()?)
}
