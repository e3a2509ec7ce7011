//! Figures with plotters, as PNG (300 dpi at the default size) and SVG, with an embedded font
//! (no system fonts needed): data-efficiency curves (a metric against the share of labels on a
//! categorical axis, one line and marker shape per arm in the Okabe–Ito palette, the mean over
//! repetitions with a 95 % t band where n ≥ 3, the paper's values in a panel of their own),
//! the difference from the baseline with 95 % t error bars, and pretext training curves.
//! Beside every data figure, `<stem>.data.csv` holds exactly the values it draws.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::report::{
    Analysis, Bounds, analyse, ordered_arms, percent, summarise_cells, with_suffix,
};
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

    /// The metric the paper plots (a key of the rows' metrics).
    pub fn metric(self) -> &'static str {
        match self {
            PaperFigure::Fig3 => "dice_mean",
            PaperFigure::Fig4 => "qwk",
        }
    }

    /// The paper panel's caption and y axis label.
    fn caption(self) -> (&'static str, &'static str) {
        match self {
            PaperFigure::Fig3 => (
                "Taleb et al. 2020, Fig. 3 (read off, ±0.01)",
                "mean Dice (3 classes)",
            ),
            PaperFigure::Fig4 => (
                "Taleb et al. 2020, Fig. 4 (read off, ±0.01)",
                "quadratic weighted kappa",
            ),
        }
    }
}

/// The width every figure is drawn for, in inches: a figure `w` pixels wide is a 6.5-inch
/// figure at `w / 6.5` pixels per inch (1950 px = 300 dpi), fonts and lines scaled to match.
pub const FIGURE_WIDTH_IN: f64 = 6.5;

/// The default size of the figures: 6.5 × 3.5 in at 300 dpi.
pub const DEFAULT_SIZE: (u32, u32) = (1950, 1050);

/// The fewest values (or pairs) with which a figure draws a confidence band or bar.
pub const MIN_N_FOR_CI: usize = 3;

/// The confidence level of the figures' bands and bars.
pub const FIGURE_LEVEL: f64 = 0.95;

/// What a data-efficiency figure shows.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CurvePlot {
    /// The metric (a key of the rows' metrics).
    pub metric: String,
    /// The title.
    pub title: String,
    /// The y axis label.
    pub y_label: String,
    /// The paper's values of this figure, in a panel of their own beside the measured one.
    pub paper: Option<PaperFigure>,
    /// Size in pixels.
    pub size: (u32, u32),
}

/// What a difference-from-baseline figure shows.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeltaPlot {
    /// The metric (a key of the rows' metrics).
    pub metric: String,
    /// The arm the others are compared with.
    pub baseline: String,
    /// The title.
    pub title: String,
    /// The metric's name on the y axis (drawn as "Δ <y_label>").
    pub y_label: String,
    /// Size in pixels.
    pub size: (u32, u32),
}

/// A marker shape: one per arm, so the arms stay apart in grey scale too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Marker {
    /// A disc.
    Circle,
    /// A square.
    Square,
    /// A triangle pointing up.
    TriangleUp,
    /// A triangle pointing down.
    TriangleDown,
    /// A diamond.
    Diamond,
    /// A pentagon.
    Pentagon,
    /// A hexagon.
    Hexagon,
    /// A five-pointed star.
    Star,
}

impl Marker {
    /// Vertex offsets in pixels for radius `r` (`None`: a circle).
    fn vertices(self, r: f64) -> Option<Vec<(i32, i32)>> {
        let poly = |k: usize, start: f64, scale: f64| {
            (0..k)
                .map(|i| {
                    let a = start + std::f64::consts::TAU * i as f64 / k as f64;
                    let rr = r * scale;
                    (
                        (rr * a.cos()).round() as i32,
                        (-rr * a.sin()).round() as i32,
                    )
                })
                .collect()
        };
        use std::f64::consts::FRAC_PI_2;
        match self {
            Marker::Circle => None,
            Marker::Square => Some(poly(4, FRAC_PI_2 / 2.0, 1.2)),
            Marker::TriangleUp => Some(poly(3, FRAC_PI_2, 1.35)),
            Marker::TriangleDown => Some(poly(3, -FRAC_PI_2, 1.35)),
            Marker::Diamond => Some(poly(4, FRAC_PI_2, 1.3)),
            Marker::Pentagon => Some(poly(5, FRAC_PI_2, 1.15)),
            Marker::Hexagon => Some(poly(6, 0.0, 1.1)),
            Marker::Star => Some(
                (0..10)
                    .map(|i| {
                        let a = FRAC_PI_2 + std::f64::consts::TAU * i as f64 / 10.0;
                        let rr = r * if i % 2 == 0 { 1.5 } else { 0.65 };
                        (
                            (rr * a.cos()).round() as i32,
                            (-rr * a.sin()).round() as i32,
                        )
                    })
                    .collect(),
            ),
        }
    }
}

/// The Okabe–Ito palette (colour-blind safe), in its usual order: black, orange, sky blue,
/// bluish green, yellow, blue, vermillion, reddish purple.
pub const OKABE_ITO: [RGBColor; 8] = [
    RGBColor(0, 0, 0),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 158, 115),
    RGBColor(240, 228, 66),
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(204, 121, 167),
];

/// An arm's colour (Okabe–Ito) and marker.
pub fn arm_style(task: &str) -> (RGBColor, Marker) {
    match task {
        "baseline" => (OKABE_ITO[0], Marker::Circle),
        "rotation" => (OKABE_ITO[1], Marker::TriangleUp),
        "jigsaw" => (OKABE_ITO[2], Marker::Square),
        "rpl" => (OKABE_ITO[3], Marker::Diamond),
        "exemplar" => (OKABE_ITO[6], Marker::TriangleDown),
        "cpc" => (OKABE_ITO[5], Marker::Pentagon),
        "baseline_long" => (OKABE_ITO[7], Marker::Hexagon),
        // Joint pretraining of the five tasks (beyond the paper).
        "multi" => (OKABE_ITO[7], Marker::Star),
        other => {
            let h = other
                .bytes()
                .fold(7u32, |a, b| a.wrapping_mul(31).wrapping_add(b as u32));
            let grey = 60 + (h % 120) as u8;
            (RGBColor(grey, grey, grey), Marker::Hexagon)
        }
    }
}

fn colour(task: &str) -> RGBColor {
    arm_style(task).0
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

/// Lengths in points (1/72 in) turned into pixels of a figure [`FIGURE_WIDTH_IN`] wide.
#[derive(Clone, Copy, Debug)]
struct Scale {
    ppi: f64,
}

impl Scale {
    fn of(size: (u32, u32)) -> Self {
        Scale {
            ppi: f64::from(size.0) / FIGURE_WIDTH_IN,
        }
    }
    fn pt(self, points: f64) -> f64 {
        points * self.ppi / 72.0
    }
    fn px(self, points: f64) -> i32 {
        self.pt(points).round().max(1.0) as i32
    }
    fn font(self, points: f64) -> TextStyle<'static> {
        ("sans-serif", self.pt(points)).into_font().color(&BLACK)
    }
}

/// `png` (an encoded PNG) with a `pHYs` chunk saying `ppi` pixels per inch, right after the
/// header chunk.
fn with_dpi(png: Vec<u8>, ppi: f64) -> Vec<u8> {
    const HEADER_END: usize = 8 + 8 + 13 + 4;
    if png.len() < HEADER_END || &png[12..16] != b"IHDR" {
        return png;
    }
    let per_metre = (ppi / 0.0254).round() as u32;
    let mut chunk = Vec::with_capacity(21);
    chunk.extend_from_slice(&9u32.to_be_bytes());
    chunk.extend_from_slice(b"pHYs");
    chunk.extend_from_slice(&per_metre.to_be_bytes());
    chunk.extend_from_slice(&per_metre.to_be_bytes());
    chunk.push(1); // unit: metre
    let mut crc = flate2::Crc::new();
    crc.update(&chunk[4..]);
    chunk.extend_from_slice(&crc.sum().to_be_bytes());
    let mut out = png[..HEADER_END].to_vec();
    out.extend_from_slice(&chunk);
    out.extend_from_slice(&png[HEADER_END..]);
    out
}

/// Renders `draw` to `stem.png` (with its resolution recorded: width / 6.5 in) and `stem.svg`.
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
    let png = with_suffix(stem, ".png");
    let svg = with_suffix(stem, ".svg");
    let (w, h) = size;
    if w < 100 || h < 100 {
        return Err(Error::arg(
            "size",
            format!("a figure needs at least 100×100 pixels, got {w}×{h}"),
        ));
    }
    let mut buf = vec![0u8; (w as usize) * (h as usize) * 3];
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
    crate::io::write_atomic(&png, &with_dpi(bytes, Scale::of(size).ppi))?;
    let mut svg_text = String::new();
    {
        let root = SVGBackend::with_string(&mut svg_text, size).into_drawing_area();
        draw_svg(root).map_err(plot_err(&svg))?;
    }
    crate::io::write_atomic(&svg, svg_text.as_bytes())?;
    Ok(vec![png, svg])
}

/// One plotted point of a data-efficiency figure: what [`data_efficiency`] draws and writes to
/// `<stem>.data.csv`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CurvePoint {
    /// `measured` or `paper`.
    pub panel: String,
    /// The arm.
    pub task: String,
    /// The share of labelled training data.
    pub fraction: f64,
    /// The categorical x position (0, 1, ... in the panel's order of fractions).
    pub x: f64,
    /// Defined values (measured panel).
    pub n: Option<usize>,
    /// Undefined values left out (measured panel).
    pub undefined: Option<usize>,
    /// The mean over repetitions (the paper's value in the paper panel).
    pub mean: f64,
    /// The 95 % t interval drawn as a band (only with n ≥ 3).
    pub band: Option<Bounds>,
}

/// The points a data-efficiency figure draws: per arm and fraction the mean over repetitions
/// of the defined values with the 95 % t interval where n ≥ 3; then the paper's values.
pub fn curve_points(rows: &[ResultRow], cfg: &CurvePlot) -> Result<Vec<CurvePoint>> {
    let a = Analysis {
        resamples: 0,
        level: FIGURE_LEVEL,
        ..Analysis::new(&cfg.metric)
    };
    let cells = summarise_cells(rows, &a)?;
    let fractions = fraction_axis(cells.iter().map(|c| c.fraction));
    let mut out = Vec::new();
    for c in &cells {
        let Some(mean) = c.mean else { continue };
        out.push(CurvePoint {
            panel: "measured".into(),
            task: c.task.clone(),
            fraction: c.fraction,
            x: category(&fractions, c.fraction),
            n: Some(c.n),
            undefined: Some(c.undefined),
            mean,
            band: c.ci_t.filter(|_| c.n >= MIN_N_FOR_CI),
        });
    }
    if let Some(p) = cfg.paper {
        for (task, values) in p.values() {
            for (i, (&f, &v)) in PAPER_X.iter().zip(values).enumerate() {
                out.push(CurvePoint {
                    panel: "paper".into(),
                    task: (*task).into(),
                    fraction: f / 100.0,
                    x: i as f64,
                    n: None,
                    undefined: None,
                    mean: v,
                    band: None,
                });
            }
        }
    }
    Ok(out)
}

/// One plotted point of a difference figure: what [`delta_figure`] draws and writes to
/// `<stem>.data.csv`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DeltaPoint {
    /// The arm.
    pub task: String,
    /// The share of labelled training data.
    pub fraction: f64,
    /// The x position: the fraction's category, offset per arm.
    pub x: f64,
    /// Repetitions where the arm and the baseline both have a defined value.
    pub n_pairs: usize,
    /// Mean of arm − baseline over those repetitions.
    pub delta: f64,
    /// Its 95 % t interval, drawn as an error bar (only with n_pairs ≥ 3).
    pub bar: Option<Bounds>,
}

/// The points a difference figure draws: per arm (other than the baseline) and fraction, the
/// mean paired difference from the baseline with its 95 % t interval where n ≥ 3.
pub fn delta_points(rows: &[ResultRow], cfg: &DeltaPlot) -> Result<Vec<DeltaPoint>> {
    let a = Analysis {
        resamples: 0,
        level: FIGURE_LEVEL,
        baseline: cfg.baseline.clone(),
        ..Analysis::new(&cfg.metric)
    };
    let report = analyse(rows, &a)?;
    let fractions = fraction_axis(report.fractions.iter().copied());
    let arms: Vec<&String> = report.arms.iter().skip(1).collect();
    let width = 0.7;
    let mut out = Vec::new();
    for d in &report.deltas {
        let Some(delta) = d.delta.mean else { continue };
        let k = arms.iter().position(|a| **a == d.task).unwrap_or(0);
        let offset = if arms.len() > 1 {
            -width / 2.0 + width * (k as f64 + 0.5) / arms.len() as f64
        } else {
            0.0
        };
        out.push(DeltaPoint {
            task: d.task.clone(),
            fraction: d.fraction,
            x: category(&fractions, d.fraction) + offset,
            n_pairs: d.delta.n,
            delta,
            bar: d.delta.ci.filter(|_| d.delta.n >= MIN_N_FOR_CI),
        });
    }
    Ok(out)
}

/// The distinct fractions, ascending.
fn fraction_axis(fractions: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut v: Vec<f64> = fractions.collect();
    v.sort_by(f64::total_cmp);
    v.dedup_by(|a, b| (*a - *b).abs() < 1e-9);
    v
}

fn category(axis: &[f64], f: f64) -> f64 {
    axis.iter().position(|&x| (x - f).abs() < 1e-9).unwrap_or(0) as f64
}

fn opt(v: Option<f64>) -> String {
    v.map(|x| x.to_string()).unwrap_or_default()
}

fn write_table(path: &Path, header: &[&str], rows: Vec<Vec<String>>) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(header).map_err(|e| Error::file(path, e))?;
    for r in rows {
        w.write_record(&r).map_err(|e| Error::file(path, e))?;
    }
    let bytes = w.into_inner().map_err(|e| Error::file(path, e))?;
    crate::io::write_atomic(path, &bytes)
}

fn write_curve_table(path: &Path, points: &[CurvePoint]) -> Result<()> {
    let rows = points
        .iter()
        .map(|p| {
            vec![
                p.panel.clone(),
                p.task.clone(),
                p.fraction.to_string(),
                p.x.to_string(),
                p.n.map(|n| n.to_string()).unwrap_or_default(),
                p.undefined.map(|n| n.to_string()).unwrap_or_default(),
                p.mean.to_string(),
                opt(p.band.map(|b| b.lo)),
                opt(p.band.map(|b| b.hi)),
            ]
        })
        .collect();
    write_table(
        path,
        &[
            "panel",
            "task",
            "fraction",
            "x",
            "n",
            "undefined",
            "mean",
            "band_lo",
            "band_hi",
        ],
        rows,
    )
}

fn write_delta_table(path: &Path, points: &[DeltaPoint]) -> Result<()> {
    let rows = points
        .iter()
        .map(|p| {
            vec![
                p.task.clone(),
                p.fraction.to_string(),
                p.x.to_string(),
                p.n_pairs.to_string(),
                p.delta.to_string(),
                opt(p.bar.map(|b| b.lo)),
                opt(p.bar.map(|b| b.hi)),
            ]
        })
        .collect();
    write_table(
        path,
        &[
            "task", "fraction", "x", "n_pairs", "delta", "bar_lo", "bar_hi",
        ],
        rows,
    )
}

type Res = std::result::Result<(), String>;

fn e(x: impl std::fmt::Display) -> String {
    x.to_string()
}

/// Draws `marker` of radius `r` pixels at `at`.
fn draw_marker<DB: DrawingBackend, CT: CoordTranslate>(
    area: &DrawingArea<DB, CT>,
    at: CT::From,
    marker: Marker,
    r: f64,
    style: ShapeStyle,
) -> Res {
    match marker.vertices(r) {
        None => area.draw(&(EmptyElement::at(at) + Circle::new((0, 0), r.round() as i32, style))),
        Some(v) => area.draw(&(EmptyElement::at(at) + Polygon::new(v, style))),
    }
    .map_err(e)
}

/// A y range holding `values`, padded by 6 % (at least ±0.02 around a single value).
fn y_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.06).max(0.02);
    (lo - pad, hi + pad)
}

/// A categorical x axis: categories 0, 1, ..., n − 1 evenly spaced, ticks only there, and
/// positions in between (dodged markers) allowed.
#[derive(Clone, Debug)]
struct Categories {
    n: usize,
}

impl Ranged for Categories {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let (lo, hi) = (-0.5, self.n as f64 - 0.5);
        let t = (value - lo) / (hi - lo);
        limit.0 + (t * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            (0..self.n).map(|i| i as f64).collect()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        -0.5..self.n as f64 - 0.5
    }
}

impl ValueFormatter<f64> for Categories {
    fn format(value: &f64) -> String {
        format!("{value}")
    }
}

type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<Categories, RangedCoordf64>>;

/// A panel over categorical fractions: caption, axes, horizontal major grid lines only.
#[allow(clippy::too_many_arguments)]
fn panel<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    sc: Scale,
    caption: &str,
    fractions: &[f64],
    y: (f64, f64),
    x_desc: &str,
    y_desc: &str,
) -> std::result::Result<Chart<'a, DB>, String> {
    let n = fractions.len().max(1);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, sc.font(9.0))
        .margin(sc.px(5.0))
        .margin_right(sc.px(8.0))
        .x_label_area_size(sc.px(27.0))
        .y_label_area_size(sc.px(42.0))
        .build_cartesian_2d(Categories { n }, y.0..y.1)
        .map_err(e)?;
    let labels: Vec<String> = fractions.iter().map(|&f| percent(f)).collect();
    let x_fmt = |v: &f64| {
        labels
            .get(v.round().max(0.0) as usize)
            .cloned()
            .unwrap_or_default()
    };
    let decimals = if y.1 - y.0 <= 0.12 { 3 } else { 2 };
    // A tick that rounds to zero reads "0.00", not "-0.00".
    let y_fmt = |v: &f64| {
        let r = format!("{v:.decimals$}");
        if r.trim_start_matches('-')
            .chars()
            .all(|c| c == '0' || c == '.')
        {
            format!("{:.decimals$}", 0.0)
        } else {
            r
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .max_light_lines(0)
        .light_line_style(TRANSPARENT)
        .bold_line_style(BLACK.mix(0.15).stroke_width(sc.px(0.5) as u32))
        .axis_style(BLACK.stroke_width(sc.px(0.75) as u32))
        .set_all_tick_mark_size(sc.px(3.0))
        .x_labels(n)
        .y_labels(6)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .x_desc(x_desc)
        .y_desc(y_desc)
        .label_style(sc.font(8.0))
        .axis_desc_style(sc.font(9.0))
        .draw()
        .map_err(e)?;
    Ok(chart)
}

/// The legend, in its own area beside the panels: one row per arm (line sample and marker, or
/// marker alone), then notes.
fn legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    sc: Scale,
    arms: &[String],
    with_line: bool,
    notes: &[String],
) -> Res {
    let x0 = sc.px(4.0);
    let sample = sc.px(22.0);
    let row = sc.px(15.0);
    let mut y = sc.px(30.0);
    let text = sc.font(8.0).pos(Pos::new(HPos::Left, VPos::Center));
    for arm in arms {
        let (c, m) = arm_style(arm);
        if with_line {
            area.draw(&PathElement::new(
                vec![(x0, y), (x0 + sample, y)],
                c.stroke_width(sc.px(1.2) as u32),
            ))
            .map_err(e)?;
        }
        draw_marker(area, (x0 + sample / 2, y), m, sc.pt(2.8), c.filled())?;
        area.draw(&Text::new(
            arm.clone(),
            (x0 + sample + sc.px(5.0), y),
            text.clone(),
        ))
        .map_err(e)?;
        y += row;
    }
    y += sc.px(4.0);
    let grey = BLACK.mix(0.75);
    let small = sc
        .font(7.0)
        .color(&grey)
        .pos(Pos::new(HPos::Left, VPos::Center));
    for note in notes {
        area.draw(&Text::new(note.clone(), (x0, y), small.clone()))
            .map_err(e)?;
        y += sc.px(11.0);
    }
    Ok(())
}

type Areas<DB> = (DrawingArea<DB, Shift>, DrawingArea<DB, Shift>);

/// Paints the figure white and centres its title in a strip on top; returns the area of the
/// panels and, at the right, the legend's.
fn frame<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    sc: Scale,
    title: &str,
) -> std::result::Result<Areas<DB>, String> {
    root.fill(&WHITE).map_err(e)?;
    let (top, body) = root.split_vertically(sc.px(20.0));
    let (w, h) = top.dim_in_pixel();
    top.draw(&Text::new(
        title.to_string(),
        (w as i32 / 2, h as i32 / 2),
        sc.font(10.0).pos(Pos::new(HPos::Center, VPos::Center)),
    ))
    .map_err(e)?;
    let (w, _) = body.dim_in_pixel();
    let legend_w = sc.px(100.0).min(w as i32 / 3);
    Ok(body.split_horizontally(w as i32 - legend_w))
}

/// "n = 3" or "n = 1–3".
fn n_range(ns: impl Iterator<Item = usize>) -> String {
    let (lo, hi) = ns.fold((usize::MAX, 0), |(a, b), n| (a.min(n), b.max(n)));
    match (lo, hi) {
        (usize::MAX, _) => "n = 0".into(),
        (a, b) if a == b => format!("n = {a}"),
        (a, b) => format!("n = {a}–{b}"),
    }
}

/// Draws one panel's lines, bands and markers.
fn draw_series<DB: DrawingBackend>(
    chart: &Chart<'_, DB>,
    sc: Scale,
    points: &[&CurvePoint],
    arms: &[String],
) -> Res {
    let area = chart.plotting_area();
    for arm in arms {
        let pts: Vec<&CurvePoint> = points.iter().copied().filter(|p| &p.task == arm).collect();
        if pts.is_empty() {
            continue;
        }
        let (c, m) = arm_style(arm);
        // Bands over runs of consecutive categories that have one; a lone one is a short band.
        let mut run: Vec<&CurvePoint> = Vec::new();
        let flush = |run: &mut Vec<&CurvePoint>| -> Res {
            let band = |p: &CurvePoint| p.band.unwrap_or_default();
            let poly: Vec<(f64, f64)> = match run.as_slice() {
                [] => return Ok(()),
                [p] => vec![
                    (p.x - 0.12, band(p).hi),
                    (p.x + 0.12, band(p).hi),
                    (p.x + 0.12, band(p).lo),
                    (p.x - 0.12, band(p).lo),
                ],
                many => many
                    .iter()
                    .map(|p| (p.x, band(p).hi))
                    .chain(many.iter().rev().map(|p| (p.x, band(p).lo)))
                    .collect(),
            };
            area.draw(&Polygon::new(poly, c.mix(0.15).filled()))
                .map_err(e)?;
            run.clear();
            Ok(())
        };
        for p in &pts {
            let continues = run.last().is_some_and(|q| (p.x - q.x - 1.0).abs() < 1e-9);
            if p.band.is_none() || !continues {
                flush(&mut run)?;
            }
            if p.band.is_some() {
                run.push(p);
            }
        }
        flush(&mut run)?;
        area.draw(&PathElement::new(
            pts.iter().map(|p| (p.x, p.mean)).collect::<Vec<_>>(),
            c.stroke_width(sc.px(1.2) as u32),
        ))
        .map_err(e)?;
        for p in &pts {
            draw_marker(area, (p.x, p.mean), m, sc.pt(2.8), c.filled())?;
        }
    }
    Ok(())
}

fn draw_curves<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    points: &[CurvePoint],
    cfg: &CurvePlot,
) -> Res {
    let sc = Scale::of(cfg.size);
    let (panels, legend_area) = frame(&root, sc, &cfg.title)?;
    let measured: Vec<&CurvePoint> = points.iter().filter(|p| p.panel == "measured").collect();
    let paper: Vec<&CurvePoint> = points.iter().filter(|p| p.panel == "paper").collect();
    let arms = ordered_arms(points.iter().map(|p| p.task.as_str()));
    let vals = |pts: &[&CurvePoint]| -> Vec<f64> {
        pts.iter()
            .flat_map(|p| {
                let b = p.band.map(|b| [b.lo, b.hi]).unwrap_or([p.mean, p.mean]);
                [p.mean, b[0], b[1]]
            })
            .collect()
    };
    let shared = cfg.paper.is_some_and(|p| p.metric() == cfg.metric);
    let mut measured_vals = vals(&measured);
    if shared {
        measured_vals.extend(vals(&paper));
    }
    let y_measured = y_range(measured_vals.into_iter());
    let fractions = fraction_axis(measured.iter().map(|p| p.fraction));
    let x_desc = "labelled training data";
    let caption = format!(
        "Measured: mean, {} per point",
        n_range(measured.iter().filter_map(|p| p.n))
    );
    let mut notes = vec![
        "line: mean over repetitions".to_string(),
        format!("band: 95 % t CI (n ≥ {MIN_N_FOR_CI})"),
    ];
    // One panel: its axes, then the points' lines, bands and markers.
    let draw = |area: &DrawingArea<DB, Shift>,
                (caption, y_desc): (&str, &str),
                fractions: &[f64],
                y: (f64, f64),
                pts: &[&CurvePoint]|
     -> Res {
        let chart = panel(area, sc, caption, fractions, y, x_desc, y_desc)?;
        draw_series(&chart, sc, pts, &arms)
    };
    let measured_text = (caption.as_str(), cfg.y_label.as_str());
    match cfg.paper {
        Some(p) => {
            let (pw, _) = panels.dim_in_pixel();
            let (left, right) = panels.split_horizontally((pw as f64 * 0.54) as i32);
            draw(&left, measured_text, &fractions, y_measured, &measured)?;
            let y_paper = if shared {
                y_measured
            } else {
                y_range(vals(&paper).into_iter())
            };
            let paper_fractions: Vec<f64> = PAPER_X.iter().map(|x| x / 100.0).collect();
            draw(&right, p.caption(), &paper_fractions, y_paper, &paper)?;
            notes.push("right: the paper's values".into());
        }
        None => draw(&panels, measured_text, &fractions, y_measured, &measured)?,
    }
    legend(&legend_area, sc, &arms, true, &notes)?;
    root.present().map_err(e)
}

/// Draws the data-efficiency figure of `rows` to `stem.png` (300 dpi at the default size) and
/// `stem.svg`, and writes the plotted values to `stem.data.csv`: per arm the mean of the
/// metric over repetitions at each fraction (fractions evenly spaced), the 95 % t interval as
/// a band where n ≥ 3, the legend beside the panel, and with `paper` the paper's values in a
/// panel of their own. Returns the three paths.
pub fn data_efficiency(rows: &[ResultRow], cfg: &CurvePlot, stem: &Path) -> Result<Vec<PathBuf>> {
    let points = curve_points(rows, cfg)?;
    if !points.iter().any(|p| p.panel == "measured") {
        return Err(Error::arg(
            "metric",
            format!("no result row has a defined `{}`", cfg.metric),
        ));
    }
    let mut files = render(
        stem,
        cfg.size,
        |r| draw_curves(r, &points, cfg),
        |r| draw_curves(r, &points, cfg),
    )?;
    let table = with_suffix(stem, ".data.csv");
    write_curve_table(&table, &points)?;
    files.push(table);
    Ok(files)
}

fn draw_delta<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    points: &[DeltaPoint],
    fractions: &[f64],
    cfg: &DeltaPlot,
) -> Res {
    let sc = Scale::of(cfg.size);
    let (left, legend_area) = frame(&root, sc, &cfg.title)?;
    let arms = ordered_arms(points.iter().map(|p| p.task.as_str()));
    let y = y_range(
        points
            .iter()
            .flat_map(|p| {
                let b = p.bar.unwrap_or(Bounds {
                    lo: p.delta,
                    hi: p.delta,
                });
                [p.delta, b.lo, b.hi]
            })
            .chain([0.0]),
    );
    let caption = format!(
        "Paired by repetition: mean Δ, {} pairs per point",
        n_range(points.iter().map(|p| p.n_pairs))
    );
    let chart = panel(
        &left,
        sc,
        &caption,
        fractions,
        y,
        "labelled training data",
        &format!("Δ {} ({} − {})", cfg.y_label, "arm", cfg.baseline),
    )?;
    let area = chart.plotting_area();
    let n = fractions.len().max(1) as f64;
    area.draw(&PathElement::new(
        vec![(-0.5, 0.0), (n - 0.5, 0.0)],
        BLACK.mix(0.6).stroke_width(sc.px(0.75) as u32),
    ))
    .map_err(e)?;
    let cap = sc.pt(2.5).round() as i32;
    for p in points {
        let (c, m) = arm_style(&p.task);
        let stroke = c.stroke_width(sc.px(1.0) as u32);
        if let Some(b) = p.bar {
            area.draw(&PathElement::new(vec![(p.x, b.lo), (p.x, b.hi)], stroke))
                .map_err(e)?;
            for v in [b.lo, b.hi] {
                area.draw(
                    &(EmptyElement::at((p.x, v))
                        + PathElement::new(vec![(-cap, 0), (cap, 0)], stroke)),
                )
                .map_err(e)?;
            }
        }
        draw_marker(area, (p.x, p.delta), m, sc.pt(2.8), c.filled())?;
    }
    let notes = vec![
        format!("Δ = arm − {}", cfg.baseline),
        format!("bar: 95 % t CI (≥ {MIN_N_FOR_CI} pairs)"),
    ];
    legend(&legend_area, sc, &arms, false, &notes)?;
    root.present().map_err(e)
}

/// Draws the difference-from-baseline figure of `rows` to `stem.png` and `stem.svg` and writes
/// the plotted values to `stem.data.csv`: per fraction (evenly spaced) and arm, the mean of
/// arm − baseline paired within repetitions, with its 95 % t interval as an error bar where
/// there are at least 3 pairs, and a zero line. Returns the three paths.
pub fn delta_figure(rows: &[ResultRow], cfg: &DeltaPlot, stem: &Path) -> Result<Vec<PathBuf>> {
    let points = delta_points(rows, cfg)?;
    if points.is_empty() {
        return Err(Error::arg(
            "rows",
            format!(
                "no arm has a repetition paired with `{}` for `{}`",
                cfg.baseline, cfg.metric
            ),
        ));
    }
    let fractions = fraction_axis(points.iter().map(|p| p.fraction));
    let mut files = render(
        stem,
        cfg.size,
        |r| draw_delta(r, &points, &fractions, cfg),
        |r| draw_delta(r, &points, &fractions, cfg),
    )?;
    let table = with_suffix(stem, ".data.csv");
    write_delta_table(&table, &points)?;
    files.push(table);
    Ok(files)
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
