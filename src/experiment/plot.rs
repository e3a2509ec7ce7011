//! Figures with plotters, as PNG and SVG, with an embedded font (no system fonts needed):
//! data-efficiency curves (a metric against the share of labels, one line per task, the mean
//! over seeds with a min–max band, optionally the paper's values dashed) and pretext training
//! curves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::results::ResultRow;
use crate::train::pretrain::EpochLog;
use crate::{Error, Result};

/// The paper's curves (method.md §5.1, read off Fig. 3 and Fig. 4, ±0.01), at 5/10/25/50/100 %.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum PaperFigure {
    /// Fig. 3: pancreas, mean 3-class Dice.
    Fig3,
    /// Fig. 4: APTOS fundus, quadratic weighted kappa (pretrained on APTOS itself).
    Fig4,
}

const PAPER_X: [f64; 5] = [5.0, 10.0, 25.0, 50.0, 100.0];

impl PaperFigure {
    /// `(task, values at 5/10/25/50/100 %)`.
    pub fn values(self) -> &'static [(&'static str, [f64; 5])] {
        match self {
            PaperFigure::Fig3 => &[
                ("baseline", [0.360, 0.393, 0.481, 0.493, 0.610]),
                ("rotation", [0.460, 0.440, 0.577, 0.616, 0.625]),
                ("jigsaw", [0.401, 0.399, 0.555, 0.581, 0.616]),
                ("rpl", [0.38, 0.471, 0.593, 0.620, 0.627]),
                ("exemplar", [0.383, 0.462, 0.549, 0.617, 0.619]),
                ("cpc", [0.415, 0.470, 0.607, 0.619, 0.634]),
            ],
            PaperFigure::Fig4 => &[
                ("baseline", [0.01, 0.02, 0.10, 0.62, 0.70]),
                ("rotation", [0.13, 0.45, 0.60, 0.73, 0.73]),
                ("jigsaw", [0.25, 0.52, 0.59, 0.68, 0.72]),
                ("rpl", [0.21, 0.42, 0.63, 0.70, 0.74]),
                ("exemplar", [0.14, 0.24, 0.65, 0.73, 0.68]),
                ("cpc", [0.19, 0.45, 0.57, 0.64, 0.72]),
            ],
        }
    }
}

/// What a data-efficiency figure shows.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CurvePlot {
    /// The metric (a key of the rows' metrics).
    pub metric: String,
    /// The title.
    pub title: String,
    /// The y axis label.
    pub y_label: String,
    /// Overlay the paper's values.
    pub paper: Option<PaperFigure>,
    /// Size in pixels.
    pub size: (u32, u32),
}

const TASK_ORDER: [&str; 6] = ["baseline", "rotation", "jigsaw", "rpl", "exemplar", "cpc"];

fn colour(task: &str) -> RGBColor {
    match task {
        "baseline" => RGBColor(40, 40, 40),
        "rotation" => RGBColor(31, 119, 180),
        "jigsaw" => RGBColor(255, 127, 14),
        "rpl" => RGBColor(44, 160, 44),
        "exemplar" => RGBColor(214, 39, 40),
        "cpc" => RGBColor(148, 103, 189),
        other => {
            let h = other
                .bytes()
                .fold(7u32, |a, b| a.wrapping_mul(31).wrapping_add(b as u32));
            RGBColor(
                (h % 200) as u8,
                (h / 200 % 200) as u8,
                (h / 40_000 % 200) as u8,
            )
        }
    }
}

fn fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TrueType font shipped by the `dejavu` crate.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

fn plot_err(path: &Path) -> impl Fn(String) -> Error + '_ {
    move |e| Error::file(path, format!("cannot draw the figure: {e}"))
}

/// Renders `draw` to `stem.png` and `stem.svg`.
fn render(
    stem: &Path,
    size: (u32, u32),
    draw: impl Fn(DrawingArea<BitMapBackend<'_>, Shift>) -> std::result::Result<(), String> + Copy,
    draw_svg: impl Fn(DrawingArea<SVGBackend<'_>, Shift>) -> std::result::Result<(), String>,
) -> Result<Vec<PathBuf>> {
    fonts();
    if let Some(dir) = stem.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    }
    let png = stem.with_extension("png");
    let svg = stem.with_extension("svg");
    let (w, h) = size;
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        draw(root).map_err(plot_err(&png))?;
    }
    let img = image::RgbImage::from_raw(w, h, buf)
        .ok_or_else(|| Error::file(&png, "image buffer of the wrong size"))?;
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(|e| Error::file(&png, e))?;
    crate::io::write_atomic(&png, &bytes)?;
    let mut svg_text = String::new();
    {
        let root = SVGBackend::with_string(&mut svg_text, size).into_drawing_area();
        draw_svg(root).map_err(plot_err(&svg))?;
    }
    crate::io::write_atomic(&svg, svg_text.as_bytes())?;
    Ok(vec![png, svg])
}

/// Per task: `(fraction in %, mean, min, max)` over seeds, fractions ascending.
pub fn summarise(rows: &[ResultRow], metric: &str) -> BTreeMap<String, Vec<(f64, f64, f64, f64)>> {
    let mut by: BTreeMap<String, BTreeMap<i64, Vec<f64>>> = BTreeMap::new();
    for r in rows {
        if let Some(v) = r.metric(metric) {
            by.entry(r.task.clone())
                .or_default()
                .entry((r.fraction * 1e6).round() as i64)
                .or_default()
                .push(v);
        }
    }
    by.into_iter()
        .map(|(task, fr)| {
            let pts = fr
                .into_iter()
                .map(|(f, v)| {
                    let mean = v.iter().sum::<f64>() / v.len() as f64;
                    let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
                    let max = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    (f as f64 / 1e4, mean, min, max)
                })
                .collect();
            (task, pts)
        })
        .collect()
}

fn ordered(tasks: impl Iterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = tasks.collect();
    v.sort_by_key(|t| {
        (
            TASK_ORDER
                .iter()
                .position(|o| o == t)
                .unwrap_or(TASK_ORDER.len()),
            t.clone(),
        )
    });
    v
}

fn draw_curves<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    series: &BTreeMap<String, Vec<(f64, f64, f64, f64)>>,
    cfg: &CurvePlot,
) -> std::result::Result<(), String> {
    let e = |x: &dyn std::fmt::Display| x.to_string();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for pts in series.values() {
        for &(_, _, mn, mx) in pts {
            lo = lo.min(mn);
            hi = hi.max(mx);
        }
    }
    if let Some(p) = cfg.paper {
        for (_, v) in p.values() {
            for &x in v {
                lo = lo.min(x);
                hi = hi.max(x);
            }
        }
    }
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(0.02);
    let mut chart = ChartBuilder::on(&root)
        .caption(&cfg.title, ("sans-serif", 24))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..102f64, (lo - pad).max(-1.0)..(hi + pad).min(1.05))
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("% of labelled training data")
        .y_desc(cfg.y_label.as_str())
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.2}"))
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .draw()
        .map_err(|x| e(&x))?;
    for task in ordered(series.keys().cloned()) {
        let pts = &series[&task];
        let c = colour(&task);
        if pts.len() > 1 && pts.iter().any(|p| p.3 > p.2) {
            let mut band: Vec<(f64, f64)> = pts.iter().map(|p| (p.0, p.3)).collect();
            band.extend(pts.iter().rev().map(|p| (p.0, p.2)));
            chart
                .draw_series(std::iter::once(Polygon::new(band, c.mix(0.15).filled())))
                .map_err(|x| e(&x))?;
        }
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|p| (p.0, p.1)),
                c.stroke_width(2),
            ))
            .map_err(|x| e(&x))?
            .label(task.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        chart
            .draw_series(pts.iter().map(|p| Circle::new((p.0, p.1), 4, c.filled())))
            .map_err(|x| e(&x))?;
    }
    if let Some(p) = cfg.paper {
        for (task, v) in p.values() {
            let c = colour(task);
            chart
                .draw_series(DashedLineSeries::new(
                    PAPER_X.iter().cloned().zip(v.iter().cloned()),
                    6,
                    4,
                    c.mix(0.6).stroke_width(1),
                ))
                .map_err(|x| e(&x))?;
        }
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(0.0, lo - pad * 2.0)],
                BLACK,
            )))
            .map_err(|x| e(&x))?
            .label("dashed: paper")
            .legend(|(x, y)| {
                PathElement::new(
                    vec![(x, y), (x + 6, y), (x + 10, y), (x + 16, y)],
                    BLACK.mix(0.5),
                )
            });
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))
}

/// Draws the data-efficiency figure of `rows` to `stem.png` and `stem.svg`.
pub fn data_efficiency(rows: &[ResultRow], cfg: &CurvePlot, stem: &Path) -> Result<Vec<PathBuf>> {
    let series = summarise(rows, &cfg.metric);
    if series.is_empty() {
        return Err(Error::arg(
            "metric",
            format!("no result row has the metric `{}`", cfg.metric),
        ));
    }
    render(
        stem,
        cfg.size,
        |r| draw_curves(r, &series, cfg),
        |r| draw_curves(r, &series, cfg),
    )
}

fn draw_pretext<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    logs: &[(String, Vec<EpochLog>)],
    title: &str,
) -> std::result::Result<(), String> {
    let e = |x: &dyn std::fmt::Display| x.to_string();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let root = root.titled(title, ("sans-serif", 22)).map_err(|x| e(&x))?;
    let (left, right) = root.split_horizontally(root.dim_in_pixel().0 / 2);
    let epochs = logs.iter().map(|(_, l)| l.len()).max().unwrap_or(1).max(2) as f64;
    for (area, what) in [(left, "loss"), (right, "accuracy")] {
        let value = |l: &EpochLog, val: bool| match (what, val) {
            ("loss", false) => l.loss,
            ("loss", true) => l.val_loss,
            (_, false) => l.accuracy,
            (_, true) => l.val_accuracy,
        };
        let vals: Vec<f64> = logs
            .iter()
            .flat_map(|(_, l)| l.iter().flat_map(|x| [value(x, false), value(x, true)]))
            .filter(|v| v.is_finite())
            .collect();
        let lo = vals.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = vals.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let (lo, hi) = if lo.is_finite() && hi > lo {
            (lo, hi)
        } else {
            (0.0, 1.0)
        };
        let mut chart = ChartBuilder::on(&area)
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(50)
            .build_cartesian_2d(1f64..epochs, lo..hi + (hi - lo) * 0.05)
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc(what)
            .x_labels((epochs as usize).min(10))
            .x_label_formatter(&|v| format!("{v:.0}"))
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(|x| e(&x))?;
        for (task, log) in logs {
            // Series are named like "rotation seed 0": the colour is the task's.
            let c = colour(task.split_whitespace().next().unwrap_or(task));
            chart
                .draw_series(LineSeries::new(
                    log.iter().map(|l| (l.epoch as f64, value(l, false))),
                    c.stroke_width(2),
                ))
                .map_err(|x| e(&x))?
                .label(format!("{task} train"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                });
            let val: Vec<(f64, f64)> = log
                .iter()
                .map(|l| (l.epoch as f64, value(l, true)))
                .filter(|p| p.1.is_finite())
                .collect();
            if !val.is_empty() {
                chart
                    .draw_series(DashedLineSeries::new(val, 5, 3, c.stroke_width(1)))
                    .map_err(|x| e(&x))?;
            }
        }
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 12))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()
            .map_err(|x| e(&x))?;
    }
    root.present().map_err(|x| e(&x))
}

/// Draws pretext training curves (loss and accuracy per epoch; dashed: validation).
pub fn pretext_curves(
    logs: &[(String, Vec<EpochLog>)],
    title: &str,
    stem: &Path,
) -> Result<Vec<PathBuf>> {
    if logs.iter().all(|(_, l)| l.is_empty()) {
        return Err(Error::arg("logs", "no pretraining epochs to plot"));
    }
    render(
        stem,
        (1100, 480),
        |r| draw_pretext(r, logs, title),
        |r| draw_pretext(r, logs, title),
    )
}
