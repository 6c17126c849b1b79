//! `docs/fleet.png`: the fleet simulation's load on the exchange endpoint over time, one panel
//! per scenario, this daemon's policy beside the Agent's.
//!
//! Text is drawn with plotters' `ab_glyph` backend (pure Rust, no fontconfig) from a TrueType
//! font read at run time: DejaVu Sans from Debian's `fonts-dejavu-core`, or `DDDA_BENCH_FONT`.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::fleet::{self, BIN_SECS, Outcome, Policy};

/// Where the font is looked for when `DDDA_BENCH_FONT` is not set.
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

const OURS: RGBColor = RGBColor(31, 119, 180);
const AGENT: RGBColor = RGBColor(214, 39, 40);
const TARGET: RGBColor = RGBColor(120, 120, 120);

fn register_font() -> Result<(), String> {
    let candidates: Vec<String> = match std::env::var("DDDA_BENCH_FONT") {
        Ok(p) => vec![p],
        Err(_) => FONT_PATHS.iter().map(|p| (*p).to_owned()).collect(),
    };
    for path in &candidates {
        if let Ok(bytes) = std::fs::read(path) {
            // plotters keeps fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            return plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| format!("{path} is not a usable TrueType font"));
        }
    }
    Err(format!(
        "no font for the chart's text: install Debian's fonts-dejavu-core (looked in {}) or set DDDA_BENCH_FONT to a .ttf file",
        candidates.join(", ")
    ))
}

/// The target drawn on a panel: this daemon's peak/mean limit from product §12.
fn target_of(outcome: &Outcome) -> f64 {
    if outcome.scenario.outage.is_some() {
        2.0
    } else {
        1.25
    }
}

/// Renders the three scenarios to a PNG at `path`.
pub fn render(outcomes: &[Outcome], path: &Path) -> Result<(), String> {
    register_font()?;
    let err = |e: &dyn std::fmt::Display| format!("drawing {}: {e}", path.display());
    let panel_h = 420u32;
    let root =
        BitMapBackend::new(path, (1400, panel_h * outcomes.len() as u32 + 60)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (title, body) = root.split_vertically(60);
    title
        .draw_text(
            &format!(
                "Requests/s to the exchange endpoint: {} daemons, {}-minute refresh interval, 1-minute bins",
                thousands(fleet::FLEET),
                fleet::INTERVAL.as_secs() / 60
            ),
            &("sans-serif", 26).into_font().color(&BLACK),
            (30, 18),
        )
        .map_err(|e| err(&e))?;
    let panels = body.split_evenly((outcomes.len(), 1));
    for (outcome, area) in outcomes.iter().zip(panels.iter()) {
        draw_panel(outcome, area).map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn rate(load: &[u32]) -> Vec<(f64, f64)> {
    load.iter()
        .enumerate()
        .map(|(i, &n)| (i as f64 * BIN_SECS / 3600.0, f64::from(n) / BIN_SECS))
        .collect()
}

fn draw_panel(
    outcome: &Outcome,
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
) -> Result<(), Box<dyn std::error::Error>> {
    let ours = rate(&outcome.ours);
    let agent = rate(&outcome.agent);
    let hours = outcome.scenario.horizon / 3600.0;
    let ours_mean = fleet::mean_per_bin(Policy::Ours) / BIN_SECS;
    let target = target_of(outcome);
    // A mass restart puts the whole fleet into its first minute (both policies); that bin would
    // flatten everything else, so the scale ignores it and the caption gives its value.
    let restart_bin = outcome.scenario.starts.iter().all(|&s| s == 0.0);
    let skip = usize::from(restart_bin);
    let y_max = ours[skip..]
        .iter()
        .chain(&agent[skip..])
        .map(|p| p.1)
        .fold(ours_mean * target, f64::max)
        * 1.1;
    let mut caption = outcome.scenario.name.to_string();
    // Scenarios whose daemons start over a window: the starts are exchanges too, so the load
    // ramps up until the window ends; the ratios are taken after it.
    let start_window = outcome.scenario.starts.iter().copied().fold(0.0, f64::max);
    if start_window > 0.0 {
        caption.push_str(&format!(
            " (shaded: daemons starting, uniformly over hours 0–{:.0})",
            start_window / 3600.0
        ));
    }
    if outcome.scenario.outage.is_some() {
        caption.push_str("; red band: every exchange fails");
    }
    if restart_bin {
        caption.push_str(&format!(
            " (minute 0: the restart's own {} start-up exchanges, off scale)",
            thousands(outcome.scenario.starts.len())
        ));
    }
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..hours, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("hours")
        .y_desc("requests/s")
        .x_labels(hours as usize + 1)
        .y_labels(6)
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 16))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    if start_window > 0.0 {
        chart.draw_series(std::iter::once(Rectangle::new(
            [(0.0, 0.0), (start_window / 3600.0, y_max)],
            TARGET.mix(0.08).filled(),
        )))?;
    }
    if let Some((from, to)) = outcome.scenario.outage {
        chart.draw_series(std::iter::once(Rectangle::new(
            [(from / 3600.0, 0.0), (to / 3600.0, y_max)],
            AGENT.mix(0.12).filled(),
        )))?;
    }
    chart
        .draw_series(LineSeries::new(agent, AGENT.stroke_width(2)))?
        .label(Policy::Agent.name())
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], AGENT.stroke_width(3)));
    chart
        .draw_series(LineSeries::new(ours, OURS.stroke_width(2)))?
        .label(Policy::Ours.name())
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], OURS.stroke_width(3)));
    let limit = ours_mean * target;
    chart
        .draw_series(LineSeries::new(
            [(0.0, limit), (hours, limit)],
            TARGET.stroke_width(1),
        ))?
        .label(format!("§12 target for ours: {target}× its mean"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], TARGET.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 15))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands_separators() {
        assert_eq!(super::thousands(100_000), "100,000");
        assert_eq!(super::thousands(999), "999");
        assert_eq!(super::thousands(1_000), "1,000");
    }
}
