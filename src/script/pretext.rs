//! The `pretext` domain: one batch of any pretext task (for prototyping), permutation sets,
//! pretraining, and the two finetuning protocols, on the prepared datasets or on arrays of
//! tensors.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Tensor;
use rhai::{Array, Dynamic, FLOAT, INT, Map};

use super::HostState;
use super::api::Domain;
use super::convert::{RResult, ScriptResult, rt_err};
use super::options;
use crate::data::{Dataset, FundusSet, Grid, LabelledVolume, NiftiFolderSet, PancreasSet, Subset};
use crate::nn::ParamStore;
use crate::pretext::{PermutationKind, PermutationSet, Sampler, Task, TaskConfig, TaskOptions};
use crate::progress::Progress;
use crate::train::finetune::{
    GradingOptions, SegmentationOptions, finetune_classification, finetune_segmentation,
};
use crate::train::pretrain::{PretrainOptions, Pretrainer, RunFiles, read_log};

/// A dataset argument: a prepared set or an array of volume/image tensors.
enum Data {
    Pancreas(PancreasSet),
    Fundus(FundusSet),
    Folder(NiftiFolderSet),
    Grids(Vec<Grid>),
}

impl Data {
    fn of(v: &Dynamic) -> RResult<Data> {
        if let Some(s) = v.clone().try_cast::<PancreasSet>() {
            return Ok(Data::Pancreas(s));
        }
        if let Some(s) = v.clone().try_cast::<FundusSet>() {
            return Ok(Data::Fundus(s));
        }
        if let Some(s) = v.clone().try_cast::<NiftiFolderSet>() {
            return Ok(Data::Folder(s));
        }
        let arr = v.clone().into_array().map_err(|t| {
            rt_err(format!(
                "data: expected a PancreasSet, a FundusSet, a NiftiFolderSet or an array of tensors, got {t}"
            ))
        })?;
        let grids = arr
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let t = t
                    .clone()
                    .try_cast::<Tensor>()
                    .ok_or_else(|| rt_err(format!("data: element {i} is not a tensor")))?;
                // [D, H, W] volumes; [C, H, W] with C <= 4 are images.
                if t.rank() == 3 && t.dims()[0] <= 4 {
                    Grid::from_image(&t).rt()
                } else {
                    Grid::from_volume(&t).rt()
                }
            })
            .collect::<RResult<_>>()?;
        Ok(Data::Grids(grids))
    }

    fn source(&self) -> &dyn Dataset<Arc<Grid>> {
        match self {
            Data::Pancreas(s) => s,
            Data::Fundus(s) => s,
            Data::Folder(s) => s,
            Data::Grids(g) => g,
        }
    }

    /// Channels and spatial size of the items.
    fn geometry(&self) -> RResult<(usize, [usize; 3])> {
        let src = self.source();
        if src.is_empty() {
            return Err(rt_err("data: the dataset is empty"));
        }
        let g = src.get(0).rt()?;
        Ok((g.c, g.dims))
    }
}

/// The options of a `*_batch` function: which items, its seed, and the task's settings.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(default)]
struct BatchOptions {
    /// The items to sample (indices into the data); () = the first `size`.
    items: Option<Vec<usize>>,
    /// How many items when `items` is not given; () = O's batch size of the task (at least 2).
    size: Option<usize>,
    /// Seed of every random choice in the batch.
    seed: u64,
    /// Training batches draw random patch offsets; validation ones take the cells' centres.
    train: bool,
    /// The task's settings.
    #[serde(flatten)]
    task: TaskOptions,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            items: None,
            size: None,
            seed: 0,
            train: true,
            task: TaskOptions::default(),
        }
    }
}

fn batch(task: &str, data: &Dynamic, m: &Map) -> RResult<Map> {
    let o: BatchOptions = options::parse(&format!("{task}_batch"), m)?;
    let cfg = TaskConfig {
        task: Task::parse(task).rt()?,
        options: o.task,
    };
    let data = Data::of(data)?;
    let (c, dims) = data.geometry()?;
    let sampler = Sampler::new(&cfg, c, dims).rt()?;
    let n = data.source().len();
    let items = match o.items {
        Some(v) => v,
        None => (0..o
            .size
            .unwrap_or(cfg.task.batch_size(sampler.planar()).max(2))
            .min(n))
            .collect(),
    };
    let b = sampler.batch(data.source(), &items, o.seed, o.train).rt()?;
    let mut out = Map::new();
    out.insert("x".into(), Dynamic::from(b.x));
    out.insert("task".into(), cfg.task.name().into());
    out.insert("classes".into(), (sampler.classes() as INT).into());
    out.insert("items".into(), (b.items as INT).into());
    for (k, t) in [("y", b.y), ("context", b.context), ("targets", b.targets)] {
        out.insert(k.into(), t.map(Dynamic::from).unwrap_or(Dynamic::UNIT));
    }
    Ok(out)
}

/// Builds the `pretext` domain.
pub fn domain(state: &Arc<HostState>) -> Domain {
    let mut d = Domain::new(
        "pretext",
        "The five pretext tasks (rotation, jigsaw, rpl, exemplar, cpc; 3D on volumes, 2D on images): \
         one batch for prototyping, permutation sets, pretraining, and finetuning for segmentation and grading.",
    );
    d.func(
        "pretext_batch",
        "pretext_batch(task: String, data: Any, opts: Map) -> Map",
        "One batch #{x, y, context, targets, classes, items} of a task (options below).",
        |t: &str, data: Dynamic, m: Map| batch(t, &data, &m),
    )
    .options::<BatchOptions>();
    for (name, sig, doc) in [
        (
            "rotation_batch",
            "rotation_batch(data: Any, opts: Map) -> Map",
            "A rotation batch: x rotated volumes/images, y the class (10 in 3D, 4 in 2D); options as pretext_batch.",
        ),
        (
            "jigsaw_batch",
            "jigsaw_batch(data: Any, opts: Map) -> Map",
            "A jigsaw batch: x the 27 (9) patches of each item in permuted order, y the permutation; options as pretext_batch.",
        ),
        (
            "rpl_batch",
            "rpl_batch(data: Any, opts: Map) -> Map",
            "An RPL batch: x centre and query patch per item, y the query's position (26 or 8); options as pretext_batch.",
        ),
        (
            "exemplar_batch",
            "exemplar_batch(data: Any, opts: Map) -> Map",
            "An exemplar batch: x anchors (augmented), positives, then negatives; options as pretext_batch.",
        ),
        (
            "cpc_batch",
            "cpc_batch(data: Any, opts: Map) -> Map",
            "A CPC batch: x every patch, context/targets indices into x, y 1 (positive) or 0; options as pretext_batch.",
        ),
    ] {
        let task = name.trim_end_matches("_batch");
        d.func(name, sig, doc, move |data: Dynamic, m: Map| {
            batch(task, &data, &m)
        });
        d.overload(name, move |data: Dynamic| batch(task, &data, &Map::new()));
    }
    d.func(
        "permutations",
        "permutations(n: INT, tiles: INT, kind: String, seed: INT) -> Map",
        "A seeded jigsaw permutation set, kind \"random\" (O) or \"max_hamming\": #{perms, min, mean} (Hamming distances).",
        |n: INT, tiles: INT, kind: &str, seed: INT| {
            let kind: PermutationKind = options::enum_arg("permutations", "kind", kind)?;
            let s = PermutationSet::generate(
                super::convert::index(n, "n")?,
                super::convert::index(tiles, "tiles")?,
                kind,
                super::convert::seed(seed, "seed")?,
            )
            .rt()?;
            let st = s.stats();
            let perms: Array = s
                .perms()
                .iter()
                .map(|p| Dynamic::from_array(p.iter().map(|&v| Dynamic::from_int(v as INT)).collect()))
                .collect();
            let mut m = Map::new();
            m.insert("perms".into(), perms.into());
            m.insert("min".into(), (st.min as INT).into());
            m.insert("mean".into(), (st.mean as FLOAT).into());
            Ok(m)
        },
    );
    let s = state.clone();
    d.func(
        "pretrain",
        "pretrain(task: String, data: Any, ids: Array, opts: Map) -> Map",
        "Pretrains a task's encoder and head on items ids (options below); task \"multi\" pretrains one encoder for several tasks at once (option `multi`: one head per task, the weighted sum of their losses; the log gives each task's numbers under `tasks`). Returns #{best, last, best_epoch, epochs, cached}.",
        move |t: &str, data: Dynamic, ids: Array, m: Map| pretrain(&s, t, &data, &ids, &m),
    )
    .options::<PretrainOptions>();
    let s = state.clone();
    d.func(
        "finetune_segmentation",
        "finetune_segmentation(data: PancreasSet | NiftiFolderSet, opts: Map) -> Map",
        "Finetunes a UNet3D on opts.train, evaluates on opts.test: #{dice, dice_mean, soft_dice, soft_dice_mean, losses, validation (per epoch, with opts.val), train_seconds, eval_seconds, load}.",
        move |data: PancreasSet, m: Map| segmentation(&s, &data, &m),
    )
    .options::<SegmentationOptions>();
    let s = state.clone();
    d.overload(
        "finetune_segmentation",
        move |data: NiftiFolderSet, m: Map| segmentation(&s, &data, &m),
    );
    let s = state.clone();
    d.func(
        "finetune_grading",
        "finetune_grading(data: FundusSet, opts: Map) -> Map",
        "Finetunes a DenseNet grader on opts.train, evaluates on opts.test: #{qwk, accuracy, confusion, undecodable, scored, undecodable_excluded, losses, validation (per epoch, with opts.val), train_seconds, eval_seconds, load}. undecodable counts test images whose cumulative outputs decode to -1 (none above 0.5); qwk, accuracy and confusion leave them out (undecodable_excluded: true), as O does; scored is the number they count.",
        move |data: FundusSet, m: Map| grading(&s, &data, &m),
    )
    .options::<GradingOptions>();
    let s = state.clone();
    d.func(
        "finetune_many",
        "finetune_many(data: PancreasSet | NiftiFolderSet | FundusSet, cells: Array) -> Array",
        "Finetunes several cells, each an options map as finetune_segmentation (volumes) or finetune_grading (photographs) takes, cells_at_once() at a time, and returns their results in the cells' order. Every cell's options are checked before any runs; each result equals the one-at-a-time call's.",
        move |data: Dynamic, cells: Array| finetune_many(&s, &data, &cells),
    );
    let s = state.clone();
    d.func(
        "pretrain_many",
        "pretrain_many(data: Any, runs: Array) -> Array",
        "Pretrains several runs, each #{task, ids, opts} as pretrain(task, data, ids, opts) takes them, cells_at_once() at a time, and returns their reports in order; every run's options are checked before any starts, and each report (and checkpoint) equals the one-at-a-time call's.",
        move |data: Dynamic, runs: Array| pretrain_many(&s, &data, &runs),
    );
    let s = state.clone();
    d.func(
        "cells_at_once",
        "cells_at_once() -> INT",
        "How many cells finetune_many runs at once: one per thread on the CPU (RAYON_NUM_THREADS, else the cores; `run --jobs N` gives each shard its share), one on a GPU.",
        move || Ok(crate::train::concurrent::at_once(&s.device()) as INT),
    );
    d
}

/// The element `i` of a `_many` function's array (`what`, e.g. "runs") as a map.
fn element_map(what: &str, i: usize, v: &Dynamic, expected: &str) -> RResult<Map> {
    v.clone().try_cast::<Map>().ok_or_else(|| {
        rt_err(format!(
            "{what}[{i}]: expected {expected}, got {}",
            v.type_name()
        ))
    })
}

/// Runs `run` on every job, checked beforehand, `cells_at_once()` at a time; the results in
/// the jobs' order, an error naming the job (`what[i]`).
fn run_many<T: Send>(
    state: &HostState,
    what: &str,
    jobs: Vec<T>,
    run: impl Fn(&T) -> RResult<Map> + Sync,
) -> RResult<Array> {
    let at_once = crate::train::concurrent::at_once(&state.device());
    let indexed: Vec<(usize, T)> = jobs.into_iter().enumerate().collect();
    crate::train::concurrent::run_each(indexed, at_once, |(i, job)| {
        run(&job)
            .map(Dynamic::from)
            .map_err(|e| rt_err(format!("{what}[{i}]: {e}")))
    })
    .rt()?
    .into_iter()
    .collect()
}

/// The runs of [`pretrain_many`], each `#{task, ids, opts}` checked before any starts.
fn pretrain_many(state: &HostState, data: &Dynamic, runs: &Array) -> RResult<Array> {
    const WHAT: &str = "pretrain_many: runs";
    let mut jobs = Vec::with_capacity(runs.len());
    for (i, r) in runs.iter().enumerate() {
        let m = element_map(WHAT, i, r, "#{task, ids, opts}")?;
        let bad = |msg: String| rt_err(format!("{WHAT}[{i}]: {msg}"));
        let field = |k: &str| {
            m.get(k)
                .cloned()
                .ok_or_else(|| bad(format!("`{k}` is missing (expected #{{task, ids, opts}})")))
        };
        let task = field("task")?
            .into_string()
            .map_err(|t| bad(format!("task must be a string, got {t}")))?;
        let ids = field("ids")?
            .into_array()
            .map_err(|t| bad(format!("ids must be an array, got {t}")))?;
        let opts = field("opts")?
            .try_cast::<Map>()
            .ok_or_else(|| bad("opts must be a map".into()))?;
        let o =
            options::parse::<PretrainOptions>("pretrain", &opts).map_err(|e| bad(e.to_string()))?;
        o.resolve_named(&task, false, 0)
            .map_err(|e| bad(e.to_string()))?;
        jobs.push((task, ids, opts));
    }
    run_many(state, WHAT, jobs, |(task, ids, opts)| {
        pretrain(state, task, data, ids, opts)
    })
}

/// The cells of [`finetune_many`], each options map checked before any runs.
fn finetune_many(state: &HostState, data: &Dynamic, cells: &Array) -> RResult<Array> {
    const WHAT: &str = "finetune_many: cells";
    let maps = cells
        .iter()
        .enumerate()
        .map(|(i, c)| element_map(WHAT, i, c, "an options map"))
        .collect::<RResult<Vec<Map>>>()?;
    fn check_segmentation(m: &Map) -> RResult<()> {
        options::parse::<SegmentationOptions>("finetune_segmentation", m).map(drop)
    }
    fn check_grading(m: &Map) -> RResult<()> {
        options::parse::<GradingOptions>("finetune_grading", m).map(drop)
    }
    type Run<'a> = Box<dyn Fn(&Map) -> RResult<Map> + Sync + 'a>;
    let (check, run): (fn(&Map) -> RResult<()>, Run) = if let Some(set) =
        data.clone().try_cast::<PancreasSet>()
    {
        (
            check_segmentation,
            Box::new(move |m| segmentation(state, &set, m)),
        )
    } else if let Some(set) = data.clone().try_cast::<NiftiFolderSet>() {
        (
            check_segmentation,
            Box::new(move |m| segmentation(state, &set, m)),
        )
    } else if let Some(set) = data.clone().try_cast::<FundusSet>() {
        (check_grading, Box::new(move |m| grading(state, &set, m)))
    } else {
        return Err(rt_err(format!(
            "finetune_many: data: expected a PancreasSet, a NiftiFolderSet or a FundusSet, got {}",
            data.type_name()
        )));
    };
    for (i, m) in maps.iter().enumerate() {
        check(m).map_err(|e| rt_err(format!("{WHAT}[{i}]: {e}")))?;
    }
    run_many(state, WHAT, maps, |m| run(m))
}

/// A finished run's report, when `out` holds one for the same configuration.
fn cached(out: &Path, hash: &str, epochs: usize) -> Option<Map> {
    let manifest = ParamStore::manifest(out.join(RunFiles::LAST)).ok()?;
    // Runs record whether their last epoch was the final one (a step budget decides the
    // epochs); older ones are finished when their last epoch is `epochs`.
    let finished = match manifest.get("final") {
        Some(f) => f.as_bool()?,
        None => manifest["epoch"].as_u64()? as usize == epochs,
    };
    if hash.is_empty() || manifest["config_hash"] != hash || !finished {
        return None;
    }
    let best = out.join(RunFiles::BEST);
    let log = read_log(&out.join(RunFiles::LOG)).ok()?;
    let best_epoch = ParamStore::manifest(&best).ok()?["epoch"].as_u64()? as INT;
    let mut m = Map::new();
    m.insert("best".into(), best.display().to_string().into());
    m.insert(
        "last".into(),
        out.join(RunFiles::LAST).display().to_string().into(),
    );
    m.insert("best_epoch".into(), best_epoch.into());
    m.insert("epochs".into(), rhai::serde::to_dynamic(&log).ok()?);
    m.insert("cached".into(), true.into());
    Some(m)
}

fn pretrain(state: &HostState, task: &str, data: &Dynamic, ids: &Array, m: &Map) -> RResult<Map> {
    let o: PretrainOptions = options::parse("pretrain", m)?;
    let data = Data::of(data)?;
    let ids = super::convert::ints(ids, "ids")?
        .into_iter()
        .map(|i| super::convert::index(i, "ids"))
        .collect::<RResult<Vec<_>>>()?;
    let (c, dims) = data.geometry()?;
    let planar = dims[0] == 1;
    let plan = o.resolve_named(task, planar, state.seed).rt()?;
    let _lock = lock_out(state, o.out.as_deref())?;
    if let Some(dir) = &o.out
        && let Some(report) = cached(dir, &o.config_hash, o.epochs)
    {
        return Ok(report);
    }
    let dev = state.device();
    let p = Pretrainer::from_plan(&plan, (c, dims), &dev).rt()?;
    let mut manifest = serde_json::json!({
        "task": plan.name(), "backbone": plan.backbone,
        "head": plan.head, "input": {"channels": c, "dims": dims}, "seed": plan.train.seed,
        "config_hash": o.config_hash,
    });
    // One task: its settings; joint pretraining: every task with its weight, and the schedule.
    manifest["task_config"] = match plan.tasks.as_slice() {
        [one] => serde_json::to_value(&one.config).rt()?,
        many => serde_json::to_value(many).rt()?,
    };
    if plan.tasks.len() > 1 {
        manifest["schedule"] = serde_json::to_value(plan.schedule).rt()?;
    }
    if !plan.levels.is_empty() {
        manifest["levels"] = serde_json::to_value(&plan.levels).rt()?;
    }
    if let Some(dir) = &o.out {
        // The resolved configuration, beside the log and checkpoints it produced.
        // Without `out`: the file is in it, and the same run into another folder must write
        // the same bytes.
        let mut options = serde_json::to_value(&o).rt()?;
        if let Some(m) = options.as_object_mut() {
            m.remove("out");
        }
        let config = serde_json::json!({
            "options": options, "resolved": plan, "input": {"channels": c, "dims": dims},
        });
        let text = serde_json::to_string_pretty(&config).rt()?;
        crate::io::write_atomic(&dir.join(RunFiles::CONFIG), text.as_bytes()).rt()?;
    }
    let files = o.out.clone().map(|dir| RunFiles { dir, manifest });
    let subset = Subset::new(data.source(), ids).rt()?;
    let label = o.label.clone().unwrap_or_else(|| plan.name().into());
    let bar = Progress::new(o.epochs as u64, &format!("pretrain {label}"));
    let report = p
        .run(&subset, &plan.train, files.as_ref(), &mut |e, _| {
            bar.message(&format!(
                "loss {:.4} acc {:.3} val {:.4}/{:.3}",
                e.loss, e.accuracy, e.val_loss, e.val_accuracy
            ));
            bar.inc(1);
        })
        .rt()?;
    bar.finish();
    let path = |p: &Option<PathBuf>| {
        p.as_ref()
            .map(|p| Dynamic::from(p.display().to_string()))
            .unwrap_or(Dynamic::UNIT)
    };
    let mut r = Map::new();
    r.insert("best".into(), path(&report.best_checkpoint));
    r.insert("last".into(), path(&report.last_checkpoint));
    r.insert("best_epoch".into(), (report.best_epoch as INT).into());
    r.insert("epochs".into(), rhai::serde::to_dynamic(&report.epochs)?);
    r.insert("cached".into(), false.into());
    Ok(r)
}

fn fit_progress(label: &str, epochs: usize, what: &str) -> Progress {
    Progress::new(epochs as u64, &format!("{what} {label}"))
}

fn segmentation(state: &HostState, data: &dyn Dataset<LabelledVolume>, m: &Map) -> RResult<Map> {
    let o: SegmentationOptions = options::parse("finetune_segmentation", m)?;
    let (init, cfg) = o.resolve(state.seed).rt()?;
    let bar = fit_progress(
        &o.common.label,
        cfg.schedule.passes(o.common.train.len()),
        "finetune",
    );
    let r = finetune_segmentation(
        &init,
        &cfg,
        data,
        (&o.common.train, &o.common.test),
        &state.device(),
        &mut |_, loss| {
            bar.message(&format!("loss {loss:.4}"));
            bar.inc(1);
        },
    )
    .rt()?;
    bar.finish();
    let mut out = Map::new();
    out.insert("dice".into(), rhai::serde::to_dynamic(&r.dice)?);
    out.insert("dice_mean".into(), r.dice_mean.into());
    out.insert("soft_dice".into(), rhai::serde::to_dynamic(&r.soft_dice)?);
    out.insert(
        "soft_dice_mean".into(),
        crate::train::metrics::mean(&r.soft_dice).into(),
    );
    common(&mut out, &r.log, &r.load)?;
    Ok(out)
}

fn common(
    out: &mut Map,
    log: &crate::train::finetune::FitLog,
    load: &Option<crate::nn::LoadReport>,
) -> RResult<()> {
    out.insert("losses".into(), rhai::serde::to_dynamic(&log.losses)?);
    out.insert(
        "validation".into(),
        rhai::serde::to_dynamic(&log.validation)?,
    );
    out.insert("train_seconds".into(), log.train_seconds.into());
    out.insert("eval_seconds".into(), log.eval_seconds.into());
    out.insert(
        "load".into(),
        match load {
            Some(r) => rhai::serde::to_dynamic(r)?,
            None => Dynamic::UNIT,
        },
    );
    Ok(())
}

fn grading(state: &HostState, data: &FundusSet, m: &Map) -> RResult<Map> {
    let o: GradingOptions = options::parse("finetune_grading", m)?;
    let (init, cfg) = o.resolve(state.seed).rt()?;
    let bar = fit_progress(
        &o.common.label,
        cfg.schedule.passes(o.common.train.len()),
        "finetune",
    );
    let r = finetune_classification(
        &init,
        &cfg,
        data,
        (&o.common.train, &o.common.test),
        &state.device(),
        &mut |_, loss| {
            bar.message(&format!("loss {loss:.4}"));
            bar.inc(1);
        },
    )
    .rt()?;
    bar.finish();
    let label = if o.common.label.is_empty() {
        "finetune_grading"
    } else {
        o.common.label.as_str()
    };
    if r.undecodable > 0 {
        eprintln!(
            "{label}: {} of {} test predictions undecodable (no cumulative output above 0.5, grade -1): \
             left out of qwk and accuracy, as O does",
            r.undecodable,
            r.undecodable + r.scored
        );
    }
    let mut out = Map::new();
    out.insert("qwk".into(), r.qwk.into());
    out.insert("accuracy".into(), r.accuracy.into());
    out.insert("undecodable".into(), (r.undecodable as i64).into());
    out.insert("scored".into(), (r.scored as i64).into());
    // O's convention, stated in the result: qwk and accuracy count the decodable predictions.
    out.insert("undecodable_excluded".into(), true.into());
    out.insert(
        "confusion".into(),
        rhai::serde::to_dynamic(&r.confusion.counts)?,
    );
    common(&mut out, &r.log, &r.load)?;
    Ok(out)
}

/// The lock of the pretraining folder `out`: one process at a time writes it, another one
/// waits (saying who writes it) and then reuses the finished run.
fn lock_out(state: &HostState, out: Option<&Path>) -> RResult<Option<crate::lock::Lock>> {
    let Some(dir) = out else { return Ok(None) };
    crate::train::pretrain::lock_run_dir(
        dir,
        |h| match h {
            Some(h) => eprintln!(
                "pretrain: {} is being written by {h}; waiting",
                dir.display()
            ),
            None => eprintln!(
                "pretrain: {} is being written by another process; waiting",
                dir.display()
            ),
        },
        || state.interrupt.load(std::sync::atomic::Ordering::Relaxed),
    )
    .map(Some)
    .rt()
}
