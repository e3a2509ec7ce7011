//! The results store and sweep bookkeeping: rows survive an interrupted write, shards split
//! the cells without overlap and merge back to the unsharded set, CSV export, stable config
//! hashes, and the figures (PNG and SVG): their plotted values checked against the rows, and
//! their SVG parsed for the series, markers, bands and bars.

use std::collections::BTreeMap;

use pretext::experiment::plot::{
    CurvePlot, CurvePoint, DEFAULT_SIZE, DeltaPlot, PaperFigure, curve_points, data_efficiency,
    delta_figure, delta_points, pretext_curves,
};
use pretext::experiment::results::{write_csv, write_jsonl};
use pretext::experiment::stats;
use pretext::experiment::{ResultRow, ResultsFile, Shard, cells, config_hash, merge};
use pretext::train::pretrain::EpochLog;

fn row(task: &str, fraction: f64, seed: u64, dice: f64) -> ResultRow {
    ResultRow {
        task: task.into(),
        fraction,
        n_train: (fraction * 20.0) as usize,
        seed,
        metrics: BTreeMap::from([("dice_mean".to_string(), serde_json::json!(dice))]),
        timings: BTreeMap::from([("finetune".to_string(), 1.5)]),
        config_hash: "abc".into(),
        version: "test".into(),
        extra: BTreeMap::new(),
    }
}

#[test]
fn a_cut_off_last_line_is_dropped_and_earlier_rows_survive() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.jsonl");
    let mut f = ResultsFile::open(&path).unwrap();
    f.append(row("rotation", 0.1, 0, 0.5)).unwrap();
    f.append(row("rotation", 0.5, 0, 0.6)).unwrap();
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("{\"task\":\"jigsaw\",\"fra");
    std::fs::write(&path, &text).unwrap();
    let f = ResultsFile::open(&path).unwrap();
    assert_eq!(f.rows().len(), 2);
    assert!(f.has(&row("rotation", 0.5, 0, 0.0).key()));
    assert!(!f.has(&row("rotation", 0.25, 0, 0.0).key()));
    assert!(
        std::fs::read_to_string(&path).unwrap().ends_with("}\n"),
        "the stub is removed"
    );
    std::fs::write(&path, "not json\n{}\n").unwrap();
    let e = ResultsFile::open(&path).unwrap_err().to_string();
    assert!(e.contains("r.jsonl") && e.contains("line 1"), "{e}");
}

#[test]
fn shards_partition_the_cells_by_task_and_seed_groups() {
    let tasks: Vec<String> = ["baseline", "rotation", "jigsaw"]
        .map(String::from)
        .to_vec();
    let all = cells(&tasks, &[1.0, 0.1, 0.5], &[0, 1], Shard::ALL);
    assert_eq!(all.len(), 18);
    let mut union = Vec::new();
    for i in 0..4 {
        let part = cells(
            &tasks,
            &[0.5, 1.0, 0.1],
            &[0, 1],
            Shard { index: i, count: 4 },
        );
        for c in &part {
            // A (task, seed) group never spans two shards.
            let group: Vec<_> = all
                .iter()
                .filter(|d| d.task == c.task && d.seed == c.seed)
                .collect();
            assert!(group.iter().all(|d| part.contains(d)));
        }
        union.extend(part);
    }
    assert_eq!(union.len(), all.len());
    assert!(all.iter().all(|c| union.contains(c)));
    assert_eq!(Shard::parse("2/4").unwrap(), Shard { index: 2, count: 4 });
    for bad in ["4/4", "x", "1/0", "-1/3"] {
        assert!(
            Shard::parse(bad).unwrap_err().to_string().contains("shard"),
            "{bad}"
        );
    }
}

#[test]
fn merged_shards_equal_the_unsharded_results_and_export_to_csv() {
    let dir = tempfile::tempdir().unwrap();
    let rows = [
        row("rotation", 0.1, 0, 0.4),
        row("rotation", 1.0, 0, 0.6),
        row("baseline", 0.1, 0, 0.3),
        row("baseline", 1.0, 1, 0.5),
    ];
    let mut whole = ResultsFile::open(dir.path().join("all.jsonl")).unwrap();
    let mut a = ResultsFile::open(dir.path().join("a.jsonl")).unwrap();
    let mut b = ResultsFile::open(dir.path().join("b.jsonl")).unwrap();
    for (i, r) in rows.iter().enumerate() {
        whole.append(r.clone()).unwrap();
        if i % 2 == 0 {
            a.append(r.clone()).unwrap()
        } else {
            b.append(r.clone()).unwrap()
        }
    }
    b.append(rows[0].clone()).unwrap(); // a duplicate of the same cell is fine
    let merged = merge(&[a.path().to_path_buf(), b.path().to_path_buf()]).unwrap();
    let single = merge(&[whole.path().to_path_buf()]).unwrap();
    assert_eq!(merged, single);
    assert_eq!(merged.len(), 4);
    let csv = dir.path().join("r.csv");
    write_csv(&csv, &merged).unwrap();
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(
        text.starts_with("task,fraction,n_train,seed,dice_mean,finetune_s,config_hash\n"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 5);
    // Each line holds its row's values, in the header's columns.
    for (line, r) in text.lines().skip(1).zip(&merged) {
        let want = format!(
            "{},{},{},{},{},{:.3},{}",
            r.task,
            r.fraction,
            r.n_train,
            r.seed,
            r.metric("dice_mean").unwrap(),
            r.timings["finetune"],
            r.config_hash
        );
        assert_eq!(line, want);
    }
    write_jsonl(&dir.path().join("m.jsonl"), &merged).unwrap();
    let mut conflict = ResultsFile::open(dir.path().join("c.jsonl")).unwrap();
    conflict.append(row("rotation", 0.1, 0, 0.99)).unwrap();
    let e = merge(&[a.path().to_path_buf(), conflict.path().to_path_buf()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("c.jsonl") && e.contains("a.jsonl"), "{e}");
}

#[test]
fn config_hashes_ignore_key_order_and_see_values() {
    let a = serde_json::json!({"lr": 0.001, "epochs": 10, "unet": {"filters": 16, "depth": 4}});
    let b = serde_json::json!({"unet": {"depth": 4, "filters": 16}, "epochs": 10, "lr": 0.001});
    let c = serde_json::json!({"lr": 0.001, "epochs": 11, "unet": {"filters": 16, "depth": 4}});
    assert_eq!(config_hash(&a), config_hash(&b));
    assert_ne!(config_hash(&a), config_hash(&c));
    assert_eq!(config_hash(&a).len(), 16);
}

/// Seeds 0-2 of baseline and rotation (rotation undefined at 5 % seed 1) and seeds 0-1 of cpc,
/// at 5/10/25/50/100 %: baseline 0.3 + 0.05 i + 0.01 s, rotation 0.35 + 0.05 i + 0.02 s,
/// cpc 0.4 + 0.05 i + 0.01 s.
fn figure_rows() -> Vec<ResultRow> {
    let mut rows = Vec::new();
    for (t, base, step, seeds) in [
        ("baseline", 0.3, 0.01, 3),
        ("rotation", 0.35, 0.02, 3),
        ("cpc", 0.4, 0.01, 2),
    ] {
        for (i, f) in [0.05, 0.1, 0.25, 0.5, 1.0].iter().enumerate() {
            for s in 0..seeds {
                let mut r = row(t, *f, s, base + 0.05 * i as f64 + step * s as f64);
                if t == "rotation" && i == 0 && s == 1 {
                    r.metrics
                        .insert("dice_mean".into(), serde_json::Value::Null);
                }
                rows.push(r);
            }
        }
    }
    rows
}

/// The value of attribute `name` in an SVG element's line.
fn attr<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {name}=\""))? + name.len() + 3;
    line[at..].split('"').next()
}

/// The SVG elements `tag` whose attribute `key` is `value` and whose opacity is `opacity`.
fn elements<'a>(svg: &'a str, tag: &str, key: &str, value: &str, opacity: &str) -> Vec<&'a str> {
    svg.lines()
        .filter(|l| l.starts_with(&format!("<{tag} ")))
        .filter(|l| attr(l, key) == Some(value) && attr(l, "opacity") == Some(opacity))
        .collect()
}

/// The centre x of a marker (a circle, or a polygon's mean vertex).
fn centre_x(line: &str) -> f64 {
    if let Some(cx) = attr(line, "cx") {
        return cx.parse().unwrap();
    }
    let xs: Vec<f64> = attr(line, "points")
        .unwrap()
        .split_whitespace()
        .map(|p| p.split(',').next().unwrap().parse().unwrap())
        .collect();
    xs.iter().sum::<f64>() / xs.len() as f64
}

fn png_dpi(path: &std::path::Path) -> f64 {
    let bytes = std::fs::read(path).unwrap();
    let at = bytes
        .windows(4)
        .position(|w| w == b"pHYs")
        .expect("a pHYs chunk")
        + 4;
    let per_metre = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    assert_eq!(bytes[at + 8], 1, "unit: metre");
    f64::from(per_metre) * 0.0254
}

#[test]
fn curve_figures_draw_the_mean_and_t_bands_of_the_rows() {
    let dir = tempfile::tempdir().unwrap();
    let rows = figure_rows();
    let cfg = CurvePlot {
        metric: "dice_mean".into(),
        title: "Pancreas".into(),
        y_label: "Dice".into(),
        paper: Some(PaperFigure::Fig3),
        size: DEFAULT_SIZE,
    };
    // What is plotted: per arm and fraction the mean of the defined values, a 95 % t band
    // only where n >= 3, fractions on an even categorical axis; then the paper's values.
    let points = curve_points(&rows, &cfg).unwrap();
    let measured: Vec<&CurvePoint> = points.iter().filter(|p| p.panel == "measured").collect();
    assert_eq!(measured.len(), 15);
    for p in &measured {
        let values: Vec<f64> = rows
            .iter()
            .filter(|r| r.task == p.task && r.fraction == p.fraction)
            .filter_map(|r| r.metric("dice_mean"))
            .collect();
        let i = [0.05, 0.1, 0.25, 0.5, 1.0]
            .iter()
            .position(|f| *f == p.fraction)
            .unwrap();
        assert_eq!(p.x, i as f64, "{p:?}");
        assert_eq!(p.n, Some(values.len()));
        assert!((p.mean - values.iter().sum::<f64>() / values.len() as f64).abs() < 1e-12);
        let want = (values.len() >= 3).then(|| stats::mean_ci_t(&values, 0.95).unwrap());
        assert_eq!(
            p.band.map(|b| (b.lo, b.hi)),
            want.map(|w| (w.lo, w.hi)),
            "{p:?}"
        );
        if p.task == "baseline" {
            // 0.3 + 0.05 i + {0, 0.01, 0.02}: mean + 0.01, t interval ± t(0.975, 2) · 0.01/√3.
            let b = p.band.unwrap();
            let half = 4.302652729749462 * 0.01 / 3f64.sqrt();
            assert!((b.hi - p.mean - half).abs() < 1e-12 && (p.mean - b.lo - half).abs() < 1e-12);
        }
    }
    let rot5 = measured
        .iter()
        .find(|p| p.task == "rotation" && p.x == 0.0)
        .unwrap();
    assert_eq!(
        (rot5.n, rot5.undefined, rot5.band),
        (Some(2), Some(1), None)
    );
    assert!(
        measured
            .iter()
            .filter(|p| p.task == "cpc")
            .all(|p| p.band.is_none())
    );
    let paper: Vec<&CurvePoint> = points.iter().filter(|p| p.panel == "paper").collect();
    assert_eq!(paper.len(), 30);
    for (task, values) in PaperFigure::Fig3.values() {
        let got: Vec<f64> = paper
            .iter()
            .filter(|p| p.task == *task)
            .map(|p| p.mean)
            .collect();
        assert_eq!(got, values.to_vec(), "{task}");
    }

    let files = data_efficiency(&rows, &cfg, &dir.path().join("fig3")).unwrap();
    assert_eq!(files.len(), 3);
    // The table beside the figure holds exactly the plotted values.
    let table = std::fs::read_to_string(&files[2]).unwrap();
    let mut lines = table.lines();
    assert_eq!(
        lines.next().unwrap(),
        "panel,task,fraction,x,n,undefined,mean,band_lo,band_hi"
    );
    let parsed: Vec<Vec<String>> = lines
        .map(|l| l.split(',').map(String::from).collect())
        .collect();
    assert_eq!(parsed.len(), points.len());
    for (cells, p) in parsed.iter().zip(&points) {
        assert_eq!(
            (cells[0].as_str(), cells[1].as_str()),
            (p.panel.as_str(), p.task.as_str())
        );
        assert_eq!(cells[6].parse::<f64>().unwrap(), p.mean);
        let band = p.band.map(|b| (b.lo.to_string(), b.hi.to_string()));
        assert_eq!(
            band.unwrap_or_default(),
            (cells[7].clone(), cells[8].clone())
        );
    }
    // PNG: 6.5 in at 300 dpi, recorded in the file.
    let png = image::open(&files[0]).unwrap();
    assert_eq!((png.width(), png.height()), (1950, 1050));
    assert!((png_dpi(&files[0]) - 300.0).abs() < 0.01);
    // SVG: per arm one marker per plotted point plus one in the legend (the shapes differ per
    // arm: circles for the baseline, polygons for the others), one line per panel plus the
    // legend's, and one band per run of fractions with n >= 3.
    let svg = std::fs::read_to_string(&files[1]).unwrap();
    let rotation = "#E69F00";
    let cpc = "#0072B2";
    assert_eq!(
        elements(&svg, "circle", "fill", "#000000", "1").len(),
        5 + 5 + 1
    );
    assert_eq!(
        elements(&svg, "polygon", "fill", rotation, "1").len(),
        5 + 5 + 1
    );
    assert_eq!(elements(&svg, "polygon", "fill", cpc, "1").len(), 5 + 5 + 1);
    assert_eq!(
        elements(&svg, "polygon", "fill", "#56B4E9", "1").len(),
        5 + 1,
        "jigsaw: paper"
    );
    assert_eq!(elements(&svg, "polyline", "stroke", rotation, "1").len(), 3);
    assert_eq!(elements(&svg, "polygon", "fill", rotation, "0.15").len(), 1);
    assert_eq!(
        elements(&svg, "polygon", "fill", "#000000", "0.15").len(),
        1
    );
    assert_eq!(elements(&svg, "polygon", "fill", cpc, "0.15").len(), 0);
    assert!(svg.lines().filter(|l| l.starts_with("<circle")).count() == 11);
    // The fractions are evenly spaced categories, labelled in percent.
    let mut xs: Vec<f64> = elements(&svg, "circle", "fill", "#000000", "1")
        .iter()
        .map(|l| centre_x(l))
        .collect();
    xs.sort_by(f64::total_cmp);
    let gaps: Vec<f64> = xs[..5].windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.iter().all(|g| (g - gaps[0]).abs() <= 1.0), "{gaps:?}");
    for label in ["5 %", "10 %", "25 %", "50 %", "100 %"] {
        assert!(svg.lines().any(|l| l.trim() == label), "{label}");
    }
    // The legend is outside the panels: its labels right of every data marker.
    for (arm, colour) in [
        ("baseline", "#000000"),
        ("rotation", rotation),
        ("cpc", cpc),
    ] {
        let at = svg.lines().position(|l| l.trim() == arm).unwrap();
        let text_x: f64 = attr(svg.lines().nth(at - 1).unwrap(), "x")
            .unwrap()
            .parse()
            .unwrap();
        let tag = if arm == "baseline" {
            "circle"
        } else {
            "polygon"
        };
        let mut marks: Vec<f64> = elements(&svg, tag, "fill", colour, "1")
            .iter()
            .map(|l| centre_x(l))
            .collect();
        marks.sort_by(f64::total_cmp);
        let legend_marker = marks.pop().unwrap();
        assert!(
            marks.iter().all(|&x| x < legend_marker - 100.0),
            "{arm}: {marks:?}"
        );
        assert!(text_x > legend_marker, "{arm}");
    }
    assert!(svg.contains("Taleb et al. 2020, Fig. 3"));

    let missing = CurvePlot {
        metric: "qwk".into(),
        ..cfg
    };
    assert!(
        data_efficiency(&rows, &missing, &dir.path().join("x"))
            .unwrap_err()
            .to_string()
            .contains("qwk")
    );
}

#[test]
fn delta_figures_draw_paired_differences_with_t_bars_and_a_zero_line() {
    let dir = tempfile::tempdir().unwrap();
    let rows = figure_rows();
    let cfg = DeltaPlot {
        metric: "dice_mean".into(),
        baseline: "baseline".into(),
        title: "Pancreas".into(),
        y_label: "Dice".into(),
        size: DEFAULT_SIZE,
    };
    let points = delta_points(&rows, &cfg).unwrap();
    assert_eq!(points.len(), 10);
    for p in &points {
        // rotation − baseline = 0.05 + 0.01 s for s = 0, 1, 2 (s = 1 undefined at 5 %);
        // cpc − baseline = 0.1 for s = 0, 1.
        let i = [0.05, 0.1, 0.25, 0.5, 1.0]
            .iter()
            .position(|f| *f == p.fraction)
            .unwrap() as f64;
        let (want, n, dodge) = match (p.task.as_str(), p.fraction) {
            ("rotation", 0.05) => (0.06, 2, -0.175),
            ("rotation", _) => (0.06, 3, -0.175),
            _ => (0.1, 2, 0.175),
        };
        assert!((p.delta - want).abs() < 1e-12, "{p:?}");
        assert_eq!(p.n_pairs, n, "{p:?}");
        assert!((p.x - (i + dodge)).abs() < 1e-12, "{p:?}");
        match p.bar {
            Some(b) => {
                assert_eq!(n, 3);
                let half = 4.302652729749462 * 0.01 / 3f64.sqrt();
                assert!(
                    (b.hi - p.delta - half).abs() < 1e-9 && (p.delta - b.lo - half).abs() < 1e-9
                );
            }
            None => assert!(n < 3, "{p:?}"),
        }
    }
    let files = delta_figure(&rows, &cfg, &dir.path().join("fig3_delta")).unwrap();
    let table = std::fs::read_to_string(&files[2]).unwrap();
    let mut lines = table.lines();
    assert_eq!(
        lines.next().unwrap(),
        "task,fraction,x,n_pairs,delta,bar_lo,bar_hi"
    );
    for (line, p) in lines.zip(&points) {
        let c: Vec<&str> = line.split(',').collect();
        assert_eq!(c[0], p.task);
        assert_eq!(c[3].parse::<usize>().unwrap(), p.n_pairs);
        assert_eq!(c[4].parse::<f64>().unwrap(), p.delta);
        assert_eq!(c[5].is_empty(), p.bar.is_none());
    }
    assert!((png_dpi(&files[0]) - 300.0).abs() < 0.01);
    let svg = std::fs::read_to_string(&files[1]).unwrap();
    // One marker per point plus the legend's; a bar (line and two caps) where n >= 3; the
    // zero line.
    assert_eq!(
        elements(&svg, "polygon", "fill", "#E69F00", "1").len(),
        5 + 1
    );
    assert_eq!(
        elements(&svg, "polygon", "fill", "#0072B2", "1").len(),
        5 + 1
    );
    assert_eq!(
        elements(&svg, "polyline", "stroke", "#E69F00", "1").len(),
        4 * 3
    );
    assert_eq!(
        elements(&svg, "polyline", "stroke", "#0072B2", "1").len(),
        0
    );
    assert_eq!(
        elements(&svg, "polyline", "stroke", "#000000", "0.6").len(),
        1
    );
    assert!(
        !svg.lines().any(|l| l.trim() == "baseline"),
        "the baseline is not an arm here"
    );
    let no_baseline = DeltaPlot {
        baseline: "random".into(),
        ..cfg
    };
    assert!(
        delta_figure(&rows, &no_baseline, &dir.path().join("x"))
            .unwrap_err()
            .to_string()
            .contains("random")
    );
}

#[test]
fn pretext_curves_are_written_as_png_and_svg() {
    let dir = tempfile::tempdir().unwrap();
    let log = |k: f64| {
        (1..=5)
            .map(|e| EpochLog {
                epoch: e,
                loss: k / e as f64,
                accuracy: 0.1 * e as f64,
                val_loss: k / e as f64 + 0.1,
                val_accuracy: 0.08 * e as f64,
                val_swap_loss: None,
                val_swap_accuracy: None,
                seconds: 1.0,
                tasks: None,
            })
            .collect()
    };
    let files = pretext_curves(
        &[("rotation".into(), log(2.0)), ("jigsaw".into(), log(4.0))],
        "Pretext",
        &dir.path().join("pretext"),
    )
    .unwrap();
    assert!(
        files
            .iter()
            .all(|f| std::fs::metadata(f).unwrap().len() > 1000 && f.starts_with(dir.path()))
    );
    let svg = std::fs::read_to_string(&files[1]).unwrap();
    for t in ["rotation train", "jigsaw train"] {
        assert!(svg.lines().any(|l| l.trim() == t), "{t} not in the legend");
    }
}

#[test]
fn an_axis_tick_at_zero_reads_zero_not_minus_zero() {
    let dir = tempfile::tempdir().unwrap();
    // rotation − baseline is −0.1 at 5 % and +0.1 at 100 %: the axis spans zero.
    let mut rows = Vec::new();
    for s in 0..3 {
        rows.push(row("baseline", 0.05, s, 0.5));
        rows.push(row("baseline", 1.0, s, 0.5));
        rows.push(row("rotation", 0.05, s, 0.4 + 0.001 * s as f64));
        rows.push(row("rotation", 1.0, s, 0.6 + 0.001 * s as f64));
    }
    let cfg = DeltaPlot {
        metric: "dice_mean".into(),
        baseline: "baseline".into(),
        title: "Pancreas".into(),
        y_label: "Dice".into(),
        size: DEFAULT_SIZE,
    };
    let files = delta_figure(&rows, &cfg, &dir.path().join("delta")).unwrap();
    let svg = std::fs::read_to_string(&files[1]).unwrap();
    // Tick labels are the text lines between the SVG's <text> tags.
    let ticks: Vec<&str> = svg.lines().map(str::trim).collect();
    assert!(
        !ticks.iter().any(|t| *t == "-0.00" || *t == "-0.000"),
        "{svg}"
    );
    assert!(ticks.iter().any(|t| *t == "0.00" || *t == "0.000"), "{svg}");
}
