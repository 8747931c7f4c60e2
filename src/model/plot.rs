//! PNG charts (plotters) and the Markdown of the training and backtest reports.
//!
//! Text needs a TrueType font: the first of `STOCKCAST_FONT` and the usual DejaVu Sans paths
//! that exists is registered once (`scripts/setup.sh` installs Debian's `fonts-dejavu-core`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::Context;
use plotters::prelude::*;

use super::backtest::{Backtest, VOLUME_BUCKETS};
use super::history::History;
use super::Manifest;

const FONT_PATHS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
];

/// Registers a font as `sans-serif` once; the error says what to install.
fn font() -> anyhow::Result<()> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let candidates: Vec<PathBuf> = std::env::var_os("STOCKCAST_FONT")
                .map(PathBuf::from)
                .into_iter()
                .chain(FONT_PATHS.iter().map(PathBuf::from))
                .collect();
            let path = candidates.iter().find(|p| p.is_file()).ok_or_else(|| {
                "no TrueType font for the charts: install Debian's fonts-dejavu-core \
                 (scripts/setup.sh does) or set STOCKCAST_FONT to a .ttf file"
                    .to_string()
            })?;
            let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| format!("{}: not a usable TrueType font", path.display()))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn draw_err<E: std::fmt::Debug>(path: &Path) -> impl Fn(E) -> anyhow::Error + '_ {
    move |e| anyhow::anyhow!("drawing {}: {e:?}", path.display())
}

/// Lines of `(name, ys)` over x = 1..; `ys` may hold NaN gaps.
fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<f64>)],
) -> anyhow::Result<()> {
    let n = series
        .iter()
        .map(|(_, v)| v.len())
        .max()
        .unwrap_or(1)
        .max(2);
    let finite = series
        .iter()
        .flat_map(|(_, v)| v.iter())
        .filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(*v), b.max(*v)));
    let (lo, hi) = if lo > hi {
        (0.0, 1.0)
    } else {
        (lo.min(0.0), hi * 1.05 + 1e-9)
    };
    let curves: Vec<(String, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(name, ys)| {
            let points = ys
                .iter()
                .enumerate()
                .filter(|(_, y)| y.is_finite())
                .map(|(x, y)| (x as f64 + 1.0, *y))
                .collect();
            (name.clone(), points)
        })
        .collect();
    let labels = (title, x_label, y_label);
    draw_curves(path, labels, (1.0, n as f64), (lo, hi), &curves, false)
}

/// A chart of curves through `(x, y)` points from the origin, each point marked.
pub(crate) fn xy_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> anyhow::Result<()> {
    let points = series
        .iter()
        .flat_map(|(_, v)| v.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite());
    let (x_hi, y_hi) = points.fold((0f64, 0f64), |(a, b), (x, y)| (a.max(*x), b.max(*y)));
    let labels = (title, x_label, y_label);
    let (x, y) = ((0.0, x_hi * 1.05 + 1e-9), (0.0, y_hi * 1.05 + 1e-9));
    draw_curves(path, labels, x, y, series, true)
}

/// Draws `series` as lines (and point markers) in the given ranges, with a legend.
fn draw_curves(
    path: &Path,
    (title, x_label, y_label): (&str, &str, &str),
    x: (f64, f64),
    y: (f64, f64),
    series: &[(String, Vec<(f64, f64)>)],
    markers: bool,
) -> anyhow::Result<()> {
    font()?;
    let err = draw_err(path);
    let root = BitMapBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(&err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x.0..x.1, y.0..y.1)
        .map_err(&err)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .draw()
        .map_err(&err)?;
    for (k, (name, pts)) in series.iter().enumerate() {
        let color = PALETTE[k % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(&err)?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        if markers {
            chart
                .draw_series(
                    pts.iter()
                        .map(|&(x, y)| Circle::new((x, y), 3, color.filled())),
                )
                .map_err(&err)?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(&err)?;
    root.present().map_err(&err)?;
    Ok(())
}

/// Writes `training_report.md` and `loss.png` into `dir`.
pub fn training_report(m: &Manifest, dir: &Path) -> anyhow::Result<()> {
    let t = &m.training;
    let mut curves = vec![("training".to_string(), t.train_loss.clone())];
    if !t.validation_loss.is_empty() {
        curves.push(("holdout".to_string(), t.validation_loss.clone()));
    }
    if !t.refit_loss.is_empty() {
        curves.push(("refit on all rows".to_string(), t.refit_loss.clone()));
    }
    line_chart(
        &dir.join("loss.png"),
        &format!("{} {}: weighted pinball loss", m.name, m.version),
        "epoch",
        "loss (scale units)",
        &curves,
    )?;
    let v = &m.validation;
    let mut text = String::new();
    let _ = writeln!(text, "# Training report: {} {}\n", m.name, m.version);
    let _ = writeln!(
        text,
        "Data `{}`, periods {} to {} ({:?}), horizon {}, {} training rows, {} holdout rows.\n",
        m.trained_on.data,
        m.trained_on.first_period,
        m.trained_on.last_period,
        m.period,
        m.horizon,
        m.trained_on.rows,
        m.trained_on.validation_rows
    );
    let _ = writeln!(
        text,
        "Seed {}, hidden layers {:?}, {} epochs on the holdout run, best epoch {}, censored-period weight {}.\n",
        t.seed, t.hidden, t.epochs, t.best_epoch, t.censored_weight
    );
    let _ = writeln!(
        text,
        "## Holdout metrics (early-stopped network, before any refit)\n"
    );
    let _ = writeln!(
        text,
        "| WAPE | bias | pinball50 | pinball90 | coverage90 |\n|---|---|---|---|---|"
    );
    let _ = writeln!(
        text,
        "| {:.4} | {:+.4} | {:.4} | {:.4} | {:.3} |\n",
        v.wape, v.bias, v.pinball50, v.pinball90, v.coverage90
    );
    let _ = writeln!(text, "![loss curves](loss.png)");
    std::fs::write(dir.join("training_report.md"), text)
        .with_context(|| format!("writing {}", dir.join("training_report.md").display()))
}

/// Writes the backtest report: `report.md`, `metrics.json`, and three charts.
pub fn backtest_report(history: &History, bt: &Backtest, dir: &Path) -> anyhow::Result<()> {
    let metrics: serde_json::Map<String, serde_json::Value> = bt
        .results
        .iter()
        .map(|(n, a)| Ok((n.clone(), serde_json::to_value(a.scores())?)))
        .collect::<Result<_, serde_json::Error>>()?;
    std::fs::write(
        dir.join("metrics.json"),
        serde_json::to_string_pretty(&metrics)? + "\n",
    )?;

    let by_h: Vec<(String, Vec<f64>)> = bt
        .results
        .iter()
        .map(|(n, a)| (n.clone(), a.wape_by_horizon()))
        .collect();
    line_chart(
        &dir.join("error_by_horizon.png"),
        "WAPE by horizon",
        "periods ahead",
        "WAPE",
        &by_h,
    )?;
    let by_v: Vec<(String, Vec<f64>)> = bt
        .results
        .iter()
        .map(|(n, a)| (n.clone(), a.wape_by_volume()))
        .collect();
    line_chart(
        &dir.join("wape_by_volume.png"),
        &format!("WAPE by series volume ({VOLUME_BUCKETS} buckets, smallest first)"),
        "volume bucket",
        "WAPE",
        &by_v,
    )?;
    bands_chart(history, bt, &dir.join("forecast_bands.png"))?;

    let mut text = String::new();
    let p = history.period;
    let _ = writeln!(text, "# Backtest\n");
    let origins: Vec<String> = bt
        .origins
        .iter()
        .map(|t| crate::display::rfc3339(p.period_start(history.snapshots[*t].period)))
        .collect();
    let _ = writeln!(
        text,
        "{} series, {:?} periods, horizon {}, origins (period starts) {}. Model versions per origin: {}. \
         Training seconds per origin: {}.\n",
        history.keys.len(),
        p,
        bt.horizon,
        origins.join(", "),
        bt.versions.join(", "),
        bt.train_secs.iter().map(|s| format!("{s:.1}")).collect::<Vec<_>>().join(", ")
    );
    let _ = writeln!(
        text,
        "| model | WAPE | MASE | bias | pinball50 | pinball90 | coverage90 |\n|---|---|---|---|---|---|---|"
    );
    for (n, a) in &bt.results {
        let s = a.scores();
        let _ = writeln!(
            text,
            "| {n} | {:.4} | {:.4} | {:+.4} | {:.4} | {:.4} | {:.3} |",
            s.wape, s.mase, s.bias, s.pinball50, s.pinball90, s.coverage90
        );
    }
    let _ = writeln!(
        text,
        "\nTarget periods that ended out of stock (censored demand): {}.",
        bt.censored_targets
    );
    if bt.censored_targets > 0 {
        let _ = writeln!(
            text,
            "\nSales in a period that ended out of stock are a lower bound of demand. \
             `stockcast` masks those periods in training (weight {}), \
             `stockcast_censored_as_demand` learns from them as if they were demand. \
             On the periods that did not end out of stock, where sales are demand:\n",
            bt.censored_weight
        );
        let _ = writeln!(
            text,
            "| model | WAPE | bias | pinball50 | pinball90 | coverage90 |\n|---|---|---|---|---|---|"
        );
        for (n, a) in &bt.results {
            let m = a.uncensored();
            let _ = writeln!(
                text,
                "| {n} | {:.4} | {:+.4} | {:.4} | {:.4} | {:.3} |",
                m.wape, m.bias, m.pinball50, m.pinball90, m.coverage90
            );
        }
    }
    let (cuts, others) = bt.results.first().map_or((0, 0), |(_, a)| {
        let [(_, cuts), (_, others)] = a.by_planned_cut();
        (cuts, others)
    });
    if cuts > 0 {
        let _ = writeln!(
            text,
            "\n## Planned price cuts\n\nTarget periods the price plan put under a cut of at \
             least 5% when the forecast was made ({cuts} of {} series-periods), and the others:\n",
            cuts + others
        );
        let _ = writeln!(
            text,
            "| model | WAPE with a cut | bias with a cut | pinball90 with a cut | WAPE otherwise |\n|---|---|---|---|---|"
        );
        for (n, a) in &bt.results {
            let [(c, _), (o, _)] = a.by_planned_cut();
            let _ = writeln!(
                text,
                "| {n} | {:.4} | {:+.4} | {:.4} | {:.4} |",
                c.wape, c.bias, c.pinball90, o.wape
            );
        }
    }
    let _ = writeln!(text, "\n## WAPE by horizon\n");
    let _ = writeln!(
        text,
        "| model | {} |\n|---|{}",
        (1..=bt.horizon)
            .map(|h| h.to_string())
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(bt.horizon)
    );
    for (n, v) in &by_h {
        let cells: Vec<String> = v.iter().map(|x| format!("{x:.3}")).collect();
        let _ = writeln!(text, "| {n} | {} |", cells.join(" | "));
    }
    let _ = writeln!(
        text,
        "\n![WAPE by horizon](error_by_horizon.png)\n\n![forecast bands](forecast_bands.png)\n\n![WAPE by volume](wape_by_volume.png)"
    );
    std::fs::write(dir.join("report.md"), text)?;
    Ok(())
}

/// Actuals and the model's p10-p90 band and median at every origin, for the sample series.
fn bands_chart(history: &History, bt: &Backtest, path: &Path) -> anyhow::Result<()> {
    font()?;
    let err = draw_err(path);
    let mut series: Vec<usize> = bt.bands.iter().map(|b| b.series).collect();
    series.sort_unstable();
    series.dedup();
    let root = BitMapBackend::new(path, (1200, 800)).into_drawing_area();
    root.fill(&WHITE).map_err(&err)?;
    let cols = 2;
    let rows = series.len().div_ceil(cols).max(1);
    let panels = root.split_evenly((rows, cols));
    let first = bt
        .origins
        .first()
        .copied()
        .unwrap_or(0)
        .saturating_sub(2 * bt.horizon);
    let last = history.snapshots.len() - 1;
    for (panel, i) in panels.iter().zip(&series) {
        let actual: Vec<(f64, f64)> = (first..=last)
            .map(|t| (t as f64, f64::from(history.demand(t, *i))))
            .collect();
        let bands: Vec<_> = bt.bands.iter().filter(|b| b.series == *i).collect();
        let hi = actual
            .iter()
            .map(|p| p.1)
            .chain(bands.iter().flat_map(|b| b.forecast.p90.iter().copied()))
            .fold(1e-9, f64::max)
            * 1.05;
        let (store, sku) = &history.names[*i];
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{store} / {sku}"), ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(24)
            .y_label_area_size(50)
            .build_cartesian_2d(first as f64..last as f64, 0f64..hi)
            .map_err(&err)?;
        chart
            .configure_mesh()
            .x_labels(5)
            .y_labels(5)
            .draw()
            .map_err(&err)?;
        for b in &bands {
            let xs: Vec<f64> = (1..=bt.horizon).map(|h| (b.origin + h) as f64).collect();
            let mut area: Vec<(f64, f64)> = xs
                .iter()
                .copied()
                .zip(b.forecast.p90.iter().copied())
                .collect();
            area.extend(
                xs.iter()
                    .rev()
                    .copied()
                    .zip(b.forecast.p10.iter().rev().copied()),
            );
            chart
                .draw_series(std::iter::once(Polygon::new(
                    area,
                    PALETTE[0].mix(0.25).filled(),
                )))
                .map_err(&err)?;
            chart
                .draw_series(LineSeries::new(
                    xs.iter().copied().zip(b.forecast.p50.iter().copied()),
                    PALETTE[0].stroke_width(2),
                ))
                .map_err(&err)?;
        }
        chart
            .draw_series(LineSeries::new(actual, BLACK.stroke_width(1)))
            .map_err(&err)?;
    }
    root.present().map_err(&err)?;
    Ok(())
}
