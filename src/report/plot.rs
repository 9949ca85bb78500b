//! `km.png`: Kaplan–Meier step curves per risk group with confidence bands, censoring ticks,
//! the log-rank p in the legend and a number-at-risk row under the axis. `calibration.png`:
//! predicted against Kaplan–Meier survival per risk quintile, one series per bin edge.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::calibration::CalibrationRow;
use crate::survival::KaplanMeier;

const WIDTH: u32 = 1000;
const CHART_HEIGHT: u32 = 600;
const TABLE_ROW: i32 = 26;

fn group_colour(label: &str) -> RGBColor {
    if label == "high" {
        RGBColor(200, 40, 40)
    } else {
        RGBColor(30, 90, 200)
    }
}

/// Right-continuous step path of `value(row)` from time 0 to `end`.
fn step_path(km: &KaplanMeier, value: impl Fn(usize) -> f64, end: f64) -> Vec<(f64, f64)> {
    let mut points = vec![(0.0, 1.0)];
    for (k, row) in km.rows.iter().enumerate() {
        let previous = points.last().map_or(1.0, |p| p.1);
        points.push((row.time, previous));
        points.push((row.time, value(k)));
    }
    let last = points.last().map_or(1.0, |p| p.1);
    points.push((end, last));
    points
}

/// A round tick spacing giving about five ticks up to `max`.
fn tick_step(max: f64) -> f64 {
    let raw = (max / 5.0).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * magnitude)
}

pub fn draw(
    path: &Path,
    curves: &[(String, KaplanMeier)],
    logrank_p: Option<f64>,
    time_label: &str,
) -> Result<(), String> {
    let e = |err: &dyn std::fmt::Display| err.to_string();
    let max_time = curves
        .iter()
        .filter_map(|(_, km)| km.rows.last().map(|r| r.time))
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let step = tick_step(max_time);
    let ticks: Vec<f64> = (0..)
        .map(|k| k as f64 * step)
        .take_while(|&t| t <= max_time)
        .collect();
    let table_height = (TABLE_ROW * (curves.len() as i32 + 2)) as u32;

    let root = BitMapBackend::new(path, (WIDTH, CHART_HEIGHT + table_height)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let (top, bottom) = root.split_vertically(CHART_HEIGHT);
    let mut chart = ChartBuilder::on(&top)
        .caption(
            "Kaplan–Meier survival by predicted risk group",
            ("sans-serif", 24),
        )
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(110)
        .build_cartesian_2d(0.0..max_time * 1.02, 0.0..1.02)
        .map_err(|x| e(&x))?;
    let time_text = move |t: &f64| {
        if step >= 1.0 {
            format!("{t:.0}")
        } else {
            format!("{t:.2}")
        }
    };
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_labels(ticks.len() + 1)
        .x_label_formatter(&time_text)
        .x_desc(time_label)
        .y_desc("Survival probability")
        .axis_desc_style(("sans-serif", 18))
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|x| e(&x))?;

    for (label, km) in curves {
        let colour = group_colour(label);
        let upper = step_path(km, |k| km.rows[k].ci_upper, max_time);
        let mut band = step_path(km, |k| km.rows[k].ci_lower, max_time);
        band.reverse();
        let polygon: Vec<(f64, f64)> = upper.into_iter().chain(band).collect();
        chart
            .draw_series(std::iter::once(Polygon::new(polygon, colour.mix(0.15))))
            .map_err(|x| e(&x))?;
        let n = km.rows.first().map_or(0, |r| r.at_risk);
        let median = km
            .median
            .map_or_else(|| "not reached".to_owned(), |m| format!("{m:.1}"));
        chart
            .draw_series(LineSeries::new(
                step_path(km, |k| km.rows[k].survival, max_time),
                colour.stroke_width(2),
            ))
            .map_err(|x| e(&x))?
            .label(format!("{label} risk (n = {n}, median {median})"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 22, y)], colour.stroke_width(3))
            });
        let censor_ticks = km.rows.iter().filter(|r| r.censored > 0).map(|r| {
            PathElement::new(
                vec![(r.time, r.survival - 0.015), (r.time, r.survival + 0.015)],
                colour.stroke_width(1),
            )
        });
        chart.draw_series(censor_ticks).map_err(|x| e(&x))?;
    }
    if let Some(p) = logrank_p {
        chart
            .draw_series(std::iter::empty::<PathElement<(f64, f64)>>())
            .map_err(|x| e(&x))?
            .label(format!(
                "log-rank p = {}",
                super::markdown::format_number(p)
            ))
            .legend(|(x, y)| PathElement::new(vec![(x, y)], WHITE));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 16))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|x| e(&x))?;

    // Number at risk, aligned with the time axis.
    let centred = |colour: &RGBColor| {
        ("sans-serif", 15)
            .into_font()
            .color(colour)
            .pos(Pos::new(HPos::Center, VPos::Center))
    };
    let left = |colour: &RGBColor| ("sans-serif", 15).into_font().color(colour);
    bottom
        .draw(&Text::new(
            "Number at risk",
            (10, TABLE_ROW / 2),
            left(&BLACK),
        ))
        .map_err(|x| e(&x))?;
    for (row, (label, km)) in curves.iter().enumerate() {
        let colour = group_colour(label);
        let y = TABLE_ROW * (row as i32 + 1) + TABLE_ROW / 2;
        bottom
            .draw(&Text::new(
                format!("{label} risk"),
                (10, y - 7),
                left(&colour),
            ))
            .map_err(|x| e(&x))?;
        for &t in &ticks {
            let (x, _) = chart.backend_coord(&(t, 0.0));
            bottom
                .draw(&Text::new(
                    km.at_risk_at(t).to_string(),
                    (x, y),
                    centred(&colour),
                ))
                .map_err(|x| e(&x))?;
        }
    }
    root.present().map_err(|x| e(&x))
}

/// Colours of the calibration series, one per bin edge.
const EDGE_COLOURS: [RGBColor; 4] = [
    RGBColor(30, 90, 200),
    RGBColor(20, 150, 90),
    RGBColor(230, 140, 20),
    RGBColor(200, 40, 40),
];

/// Mean predicted survival (x) against the quintile's Kaplan–Meier survival (y) with its
/// interval as a vertical bar, quintiles joined in order, one colour per edge; the diagonal is
/// perfect calibration.
pub fn draw_calibration(
    path: &Path,
    rows: &[CalibrationRow],
    time_label: &str,
) -> Result<(), String> {
    let e = |err: &dyn std::fmt::Display| err.to_string();
    let root = BitMapBackend::new(path, (800, 800)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Calibration: predicted vs Kaplan–Meier survival by risk quintile",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..1.0, 0.0..1.0)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_desc("Mean predicted survival")
        .y_desc("Kaplan–Meier survival")
        .axis_desc_style(("sans-serif", 18))
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|x| e(&x))?;
    chart
        .draw_series(LineSeries::new(
            vec![(0.0, 0.0), (1.0, 1.0)],
            RGBColor(150, 150, 150).stroke_width(1),
        ))
        .map_err(|x| e(&x))?;
    let edges: std::collections::BTreeMap<usize, f64> =
        rows.iter().map(|r| (r.edge, r.time)).collect();
    for (n, (&edge, &time)) in edges.iter().enumerate() {
        let colour = EDGE_COLOURS[n % EDGE_COLOURS.len()];
        let points: Vec<&CalibrationRow> = rows.iter().filter(|r| r.edge == edge).collect();
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|r| (r.predicted, r.observed)),
                colour.stroke_width(1),
            ))
            .map_err(|x| e(&x))?;
        chart
            .draw_series(points.iter().map(|r| {
                PathElement::new(
                    vec![(r.predicted, r.ci_lower), (r.predicted, r.ci_upper)],
                    colour.mix(0.6).stroke_width(2),
                )
            }))
            .map_err(|x| e(&x))?;
        chart
            .draw_series(
                points
                    .iter()
                    .map(|r| Circle::new((r.predicted, r.observed), 5, colour.filled())),
            )
            .map_err(|x| e(&x))?
            .label(format!(
                "{time_label} {} (edge {edge})",
                super::markdown::format_number(time)
            ))
            .legend(move |(x, y)| Circle::new((x + 10, y), 5, colour.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 16))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_tick_steps() {
        assert_eq!(tick_step(52.0), 20.0);
        assert_eq!(tick_step(1022.0), 500.0);
        assert_eq!(tick_step(100.0), 20.0);
        assert_eq!(tick_step(9.0), 2.0);
    }
}
