//! The results store and sweep bookkeeping: rows survive an interrupted write, shards split
//! the cells without overlap and merge back to the unsharded set, CSV export, stable config
//! hashes, and the figures (PNG and SVG).

use std::collections::BTreeMap;

use pretext::experiment::plot::{
    CurvePlot, PaperFigure, data_efficiency, pretext_curves, summarise,
};
use pretext::experiment::results::{write_csv, write_jsonl};
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

#[test]
fn figures_are_written_as_png_and_svg() {
    let dir = tempfile::tempdir().unwrap();
    let mut rows = Vec::new();
    for (t, base) in [("baseline", 0.3), ("rotation", 0.35), ("cpc", 0.4)] {
        for (i, f) in [0.05, 0.1, 0.25, 0.5, 1.0].iter().enumerate() {
            for s in 0..2 {
                rows.push(row(t, *f, s, base + 0.05 * i as f64 + 0.01 * s as f64));
            }
        }
    }
    let cfg = CurvePlot {
        metric: "dice_mean".into(),
        title: "Pancreas".into(),
        y_label: "Dice".into(),
        paper: Some(PaperFigure::Fig3),
        size: (900, 600),
    };
    // What is plotted: per task and fraction (in %), the mean over seeds and the band from the
    // smallest to the largest value (here seed 1 is 0.01 above seed 0).
    let series = summarise(&rows, "dice_mean");
    assert_eq!(series.len(), 3);
    for (t, base) in [("baseline", 0.3), ("rotation", 0.35), ("cpc", 0.4)] {
        let pts = &series[t];
        assert_eq!(pts.len(), 5, "{t}");
        for (i, (p, f)) in pts.iter().zip([5.0, 10.0, 25.0, 50.0, 100.0]).enumerate() {
            let lo = base + 0.05 * i as f64;
            let want = (f, lo + 0.005, lo, lo + 0.01);
            let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
            assert!(
                close(p.0, want.0)
                    && close(p.1, want.1)
                    && close(p.2, want.2)
                    && close(p.3, want.3),
                "{t}: {p:?} vs {want:?}"
            );
        }
    }
    let files = data_efficiency(&rows, &cfg, &dir.path().join("fig3")).unwrap();
    let png = image::open(&files[0]).unwrap();
    assert_eq!((png.width(), png.height()), (900, 600));
    let svg = std::fs::read_to_string(&files[1]).unwrap();
    assert!(svg.contains("<svg") && svg.contains("Pancreas"));
    // One marker per task and fraction, one band per task, every task in the legend.
    assert_eq!(svg.matches("<circle").count(), 15);
    assert_eq!(svg.matches("<polygon").count(), 3);
    for t in ["baseline", "rotation", "cpc"] {
        assert!(svg.lines().any(|l| l.trim() == t), "{t} not in the legend");
    }
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
    let log = |k: f64| {
        (1..=5)
            .map(|e| EpochLog {
                epoch: e,
                loss: k / e as f64,
                accuracy: 0.1 * e as f64,
                val_loss: k / e as f64 + 0.1,
                val_accuracy: 0.08 * e as f64,
                seconds: 1.0,
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
