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
use super::model::{densenet_config, pool, unet_config};
use super::opts::Opts;
use crate::data::{FundusSet, PancreasSet};
use crate::nn::{GlobalPool, MlpHeadConfig, ParamStore};
use crate::pretext::model::BackboneConfig;
use crate::pretext::{
    CpcLoss, Grid, Negatives, PermutationKind, PermutationSet, Sampler, Source, Task, TaskConfig,
    TripletLoss,
};
use crate::progress::Progress;
use crate::train::finetune::{
    ClassificationConfig, EncoderInit, GradeEncoding, Schedule, SegmentationConfig,
    finetune_classification, finetune_segmentation,
};
use crate::train::loss::DiceVariant;
use crate::train::optim::AdamConfig;
use crate::train::pretrain::{PretrainConfig, Pretrainer, RunFiles, read_log};
use crate::train::sources::Subset;

/// A dataset argument: a prepared set or an array of volume/image tensors.
enum Data {
    Pancreas(PancreasSet),
    Fundus(FundusSet),
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
        let arr = v.clone().into_array().map_err(|t| {
            rt_err(format!(
                "data: expected a PancreasSet, a FundusSet or an array of tensors, got {t}"
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

    fn source(&self) -> &dyn Source {
        match self {
            Data::Pancreas(s) => s,
            Data::Fundus(s) => s,
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

const TASK_KEYS: [&str; 11] = [
    "grid",
    "jitter",
    "permutations",
    "permutation_kind",
    "permutation_seed",
    "negatives",
    "triplet",
    "margin",
    "hardest",
    "shared_head",
    "cpc_loss",
];

fn task_config(task: &str, m: &Map) -> RResult<TaskConfig> {
    let o = Opts::new("task options", m, &TASK_KEYS)?;
    let mut c = TaskConfig::new(Task::parse(task).rt()?);
    if o.get("grid").is_some() {
        c.grid = Some(o.count("grid", 3)?);
    }
    if o.get("jitter").is_some() {
        c.jitter = Some(o.count("jitter", 3)?);
    }
    c.permutations = o.count("permutations", c.permutations)?;
    c.permutation_seed = o.count("permutation_seed", 0)? as u64;
    c.permutation_kind = match o.string("permutation_kind", "random")?.as_str() {
        "random" => PermutationKind::Random,
        "max_hamming" => PermutationKind::MaxHamming,
        k => {
            return Err(rt_err(format!(
                "permutation_kind: \"random\" or \"max_hamming\", got \"{k}\""
            )));
        }
    };
    c.exemplar.negatives = match o.string("negatives", "dataset")?.as_str() {
        "dataset" => Negatives::Dataset,
        "batch" => Negatives::Batch,
        k => {
            return Err(rt_err(format!(
                "negatives: \"dataset\" or \"batch\", got \"{k}\""
            )));
        }
    };
    c.exemplar.loss = match o.string("triplet", "mean_squared")?.as_str() {
        "mean_squared" => TripletLoss::MeanSquared,
        "euclidean" => TripletLoss::Euclidean,
        k => {
            return Err(rt_err(format!(
                "triplet: \"mean_squared\" or \"euclidean\", got \"{k}\""
            )));
        }
    };
    c.exemplar.margin = o.float("margin", c.exemplar.margin)?;
    c.exemplar.hardest = o.boolean("hardest", false)?;
    c.exemplar.shared_head = o.boolean("shared_head", false)?;
    c.cpc.loss = match o.string("cpc_loss", "binary")?.as_str() {
        "binary" => CpcLoss::Binary,
        "info_nce" => CpcLoss::InfoNce,
        k => {
            return Err(rt_err(format!(
                "cpc_loss: \"binary\" or \"info_nce\", got \"{k}\""
            )));
        }
    };
    Ok(c)
}

fn batch(task: &str, data: &Dynamic, m: &Map) -> RResult<Map> {
    let mut task_opts = m.clone();
    let mut own = Map::new();
    for k in ["items", "size", "seed", "train"] {
        if let Some(v) = task_opts.remove(k) {
            own.insert(k.into(), v);
        }
    }
    let cfg = task_config(task, &task_opts)?;
    let o = Opts::new("batch", &own, &["items", "size", "seed", "train"])?;
    let data = Data::of(data)?;
    let (c, dims) = data.geometry()?;
    let sampler = Sampler::new(&cfg, c, dims).rt()?;
    let n = data.source().len();
    let items = match o.indices("items")? {
        Some(v) => v,
        None => (0..o
            .count("size", cfg.task.batch_size(sampler.planar()).max(2))?
            .min(n))
            .collect(),
    };
    let b = sampler
        .batch(
            data.source(),
            &items,
            o.count("seed", 0)? as u64,
            o.boolean("train", true)?,
        )
        .rt()?;
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
        "One batch #{x, y, context, targets, classes, items} of a task; opts items or size, seed, train, and task options.",
        |t: &str, data: Dynamic, m: Map| batch(t, &data, &m),
    );
    for (name, sig, doc) in [
        (
            "rotation_batch",
            "rotation_batch(data: Any, opts: Map) -> Map",
            "A rotation batch: x rotated volumes/images, y the class (10 in 3D, 4 in 2D).",
        ),
        (
            "jigsaw_batch",
            "jigsaw_batch(data: Any, opts: Map) -> Map",
            "A jigsaw batch: x the 27 (9) patches of each item in permuted order, y the permutation.",
        ),
        (
            "rpl_batch",
            "rpl_batch(data: Any, opts: Map) -> Map",
            "An RPL batch: x centre and query patch per item, y the query's position (26 or 8).",
        ),
        (
            "exemplar_batch",
            "exemplar_batch(data: Any, opts: Map) -> Map",
            "An exemplar batch: x anchors (augmented), positives, then negatives.",
        ),
        (
            "cpc_batch",
            "cpc_batch(data: Any, opts: Map) -> Map",
            "A CPC batch: x every patch, context/targets indices into x, y 1 (positive) or 0.",
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
            let kind = match kind {
                "random" => PermutationKind::Random,
                "max_hamming" => PermutationKind::MaxHamming,
                k => return Err(rt_err(format!("permutations: kind \"random\" or \"max_hamming\", got \"{k}\""))),
            };
            let s = PermutationSet::generate(
                super::convert::index(n, "n")?,
                super::convert::index(tiles, "tiles")?,
                kind,
                seed.max(0) as u64,
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
        "Pretrains on items ids; opts epochs, batch, lr, val_fraction, steps_per_epoch, seed, out, unet|densenet, head, task, config_hash, label. Returns #{best, last, best_epoch, epochs, cached}.",
        move |t: &str, data: Dynamic, ids: Array, m: Map| pretrain(&s, t, &data, &ids, &m),
    );
    let s = state.clone();
    d.func(
        "finetune_segmentation",
        "finetune_segmentation(data: PancreasSet, opts: Map) -> Map",
        "Finetunes a UNet3D on opts.train, evaluates on opts.test: #{dice, dice_mean, soft_dice, soft_dice_mean, losses, train_seconds, eval_seconds, load}.",
        move |data: PancreasSet, m: Map| segmentation(&s, &data, &m),
    );
    let s = state.clone();
    d.func(
        "finetune_grading",
        "finetune_grading(data: FundusSet, opts: Map) -> Map",
        "Finetunes a DenseNet grader on opts.train, evaluates on opts.test: #{qwk, accuracy, confusion, losses, train_seconds, eval_seconds, load}.",
        move |data: FundusSet, m: Map| grading(&s, &data, &m),
    );
    d
}

const PRETRAIN_KEYS: [&str; 16] = [
    "epochs",
    "batch",
    "lr",
    "val_fraction",
    "steps_per_epoch",
    "seed",
    "out",
    "unet",
    "densenet",
    "head",
    "head_dropout",
    "head_momentum",
    "task",
    "config_hash",
    "label",
    "clip",
];

fn hidden(o: &Opts, key: &str, default: Vec<usize>) -> RResult<Vec<usize>> {
    match o.get(key) {
        Some(v) => o.counts_of(key, v),
        None => Ok(default),
    }
}

fn backbone(o: &Opts, planar: bool, default_pool: GlobalPool) -> RResult<BackboneConfig> {
    if planar {
        let m = o.map("densenet")?;
        let dense = Opts::new(
            "densenet",
            &m,
            &[
                "in_channels",
                "growth",
                "blocks",
                "init_features",
                "bn_size",
                "pool",
            ],
        )?;
        Ok(BackboneConfig::Dense(
            densenet_config(&dense)?,
            pool(&dense, default_pool)?,
        ))
    } else {
        let m = o.map("unet")?;
        let u = Opts::new(
            "unet",
            &m,
            &[
                "in_channels",
                "filters",
                "depth",
                "classes",
                "dropout",
                "eps",
                "momentum",
                "seed",
            ],
        )?;
        Ok(BackboneConfig::Unet(unet_config(&u)?))
    }
}

/// A finished run's report, when `out` holds one for the same configuration.
fn cached(out: &Path, hash: &str, epochs: usize) -> Option<Map> {
    let manifest = ParamStore::manifest(out.join("last.safetensors")).ok()?;
    if hash.is_empty()
        || manifest["config_hash"] != hash
        || manifest["epoch"].as_u64()? as usize != epochs
    {
        return None;
    }
    let best = out.join("best.safetensors");
    let log = read_log(&out.join("log.jsonl")).ok()?;
    let best_epoch = ParamStore::manifest(&best).ok()?["epoch"].as_u64()? as INT;
    let mut m = Map::new();
    m.insert("best".into(), best.display().to_string().into());
    m.insert(
        "last".into(),
        out.join("last.safetensors").display().to_string().into(),
    );
    m.insert("best_epoch".into(), best_epoch.into());
    m.insert("epochs".into(), rhai::serde::to_dynamic(&log).ok()?);
    m.insert("cached".into(), true.into());
    Some(m)
}

fn pretrain(state: &HostState, task: &str, data: &Dynamic, ids: &Array, m: &Map) -> RResult<Map> {
    let o = Opts::new("pretrain", m, &PRETRAIN_KEYS)?;
    let data = Data::of(data)?;
    let ids = super::convert::ints(ids, "ids")?
        .into_iter()
        .map(|i| super::convert::index(i, "ids"))
        .collect::<RResult<Vec<_>>>()?;
    let (c, dims) = data.geometry()?;
    let planar = dims[0] == 1;
    let cfg = task_config(task, &o.map("task")?)?;
    let epochs = o.count("epochs", 1000)?;
    let hash = o.string("config_hash", "")?;
    let out = o
        .get("out")
        .map(|_| o.string("out", ""))
        .transpose()?
        .map(PathBuf::from);
    let _lock = lock_out(state, out.as_deref())?;
    if let Some(dir) = &out
        && let Some(report) = cached(dir, &hash, epochs)
    {
        return Ok(report);
    }
    let seed = o.count("seed", state.seed as usize)? as u64;
    let head = MlpHeadConfig {
        hidden: hidden(&o, "head", vec![2048, 1024])?,
        dropout: o.float("head_dropout", 0.5)?,
        seed,
        momentum: o.float("head_momentum", 0.01)?,
    };
    let backbone = match backbone(&o, planar, GlobalPool::Max)? {
        BackboneConfig::Unet(u) => BackboneConfig::Unet(crate::nn::UNet3dConfig { seed, ..u }),
        other => other,
    };
    let dev = state.device();
    let p = Pretrainer::new(&cfg, &backbone, &head, (c, dims), seed, &dev).rt()?;
    let mut adam = AdamConfig::with_lr(o.float("lr", if planar { 1e-5 } else { 1e-4 })?);
    if o.boolean("clip", false)? {
        adam = adam.clipped();
    }
    let pc = PretrainConfig {
        epochs,
        batch_size: o.get("batch").map(|_| o.count("batch", 1)).transpose()?,
        adam,
        val_fraction: o.float("val_fraction", 0.1)?,
        steps_per_epoch: o
            .get("steps_per_epoch")
            .map(|_| o.count("steps_per_epoch", 1))
            .transpose()?,
        seed,
    };
    let manifest = serde_json::json!({
        "task": cfg.task.name(), "task_config": cfg, "backbone": backbone, "head": head,
        "input": {"channels": c, "dims": dims}, "seed": seed, "config_hash": hash,
    });
    let files = out.map(|dir| RunFiles { dir, manifest });
    let subset = Subset::new(data.source(), ids).rt()?;
    let label = o.string("label", cfg.task.name())?;
    let bar = Progress::new(epochs as u64, &format!("pretrain {label}"));
    let report = p
        .run(&subset, &pc, files.as_ref(), &mut |e, _| {
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

const FINETUNE_KEYS: [&str; 22] = [
    "init",
    "train",
    "test",
    "seed",
    "epochs",
    "warmup",
    "batch",
    "lr",
    "clip",
    "freeze_bn",
    "fresh_optimizer",
    "steps_per_epoch",
    "label",
    "save",
    "unet",
    "dice",
    "densenet",
    "head",
    "head_dropout",
    "head_momentum",
    "encoding",
    "augment",
];

fn schedule(o: &Opts, state: &HostState, d: &Schedule) -> RResult<Schedule> {
    let mut adam = AdamConfig::with_lr(o.float("lr", d.adam.lr)?);
    if o.boolean("clip", d.adam.clip_norm.is_some())? {
        adam = adam.clipped();
    }
    Ok(Schedule {
        epochs: o.count("epochs", d.epochs)?,
        warmup_epochs: o.count("warmup", d.warmup_epochs)?,
        batch_size: o.count("batch", d.batch_size)?,
        adam,
        freeze_bn: o.boolean("freeze_bn", d.freeze_bn)?,
        fresh_optimizer: o.boolean("fresh_optimizer", d.fresh_optimizer)?,
        steps_per_epoch: o
            .get("steps_per_epoch")
            .map(|_| o.count("steps_per_epoch", 1))
            .transpose()?,
        seed: o.count("seed", state.seed as usize)? as u64,
        save: o
            .get("save")
            .map(|_| o.string("save", ""))
            .transpose()?
            .map(PathBuf::from),
    })
}

fn init_and_ids(o: &Opts) -> RResult<(EncoderInit, Vec<usize>, Vec<usize>)> {
    let init = match o.string("init", "")?.as_str() {
        "" => EncoderInit::Random,
        p => EncoderInit::Checkpoint(PathBuf::from(p)),
    };
    let train = o
        .indices("train")?
        .ok_or_else(|| rt_err("finetune: option `train` (case indices) is required"))?;
    let test = o
        .indices("test")?
        .ok_or_else(|| rt_err("finetune: option `test` (case indices) is required"))?;
    Ok((init, train, test))
}

fn fit_progress(o: &Opts, epochs: usize, what: &str) -> RResult<Progress> {
    Ok(Progress::new(
        epochs as u64,
        &format!("{what} {}", o.string("label", "")?),
    ))
}

fn segmentation(state: &HostState, data: &PancreasSet, m: &Map) -> RResult<Map> {
    let o = Opts::new("finetune_segmentation", m, &FINETUNE_KEYS)?;
    let (init, train, test) = init_and_ids(&o)?;
    let paper = SegmentationConfig::paper();
    let umap = o.map("unet")?;
    let u = Opts::new(
        "unet",
        &umap,
        &[
            "in_channels",
            "filters",
            "depth",
            "classes",
            "dropout",
            "eps",
            "momentum",
            "seed",
        ],
    )?;
    let cfg = SegmentationConfig {
        unet: unet_config(&u)?,
        schedule: schedule(&o, state, &paper.schedule)?,
        dice: match o.string("dice", "batch")?.as_str() {
            "batch" => DiceVariant::Batch,
            "per_sample" => DiceVariant::PerSample,
            k => {
                return Err(rt_err(format!(
                    "dice: \"batch\" or \"per_sample\", got \"{k}\""
                )));
            }
        },
    };
    let bar = fit_progress(&o, cfg.schedule.epochs, "finetune")?;
    let r = finetune_segmentation(
        &init,
        &cfg,
        data,
        (&train, &test),
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
    let o = Opts::new("finetune_grading", m, &FINETUNE_KEYS)?;
    let (init, train, test) = init_and_ids(&o)?;
    let paper = ClassificationConfig::paper();
    let BackboneConfig::Dense(densenet, pool) = backbone(&o, true, GlobalPool::Avg)? else {
        return Err(rt_err("finetune_grading: expected a DenseNet backbone"));
    };
    let cfg = ClassificationConfig {
        densenet,
        pool,
        head: MlpHeadConfig {
            hidden: hidden(&o, "head", paper.head.hidden.clone())?,
            dropout: o.float("head_dropout", 0.5)?,
            seed: 0,
            momentum: o.float("head_momentum", 0.01)?,
        },
        classes: 5,
        encoding: match o.string("encoding", "cumulative")?.as_str() {
            "cumulative" => GradeEncoding::Cumulative,
            "softmax" => GradeEncoding::Softmax,
            k => {
                return Err(rt_err(format!(
                    "encoding: \"cumulative\" or \"softmax\", got \"{k}\""
                )));
            }
        },
        augment: o.boolean("augment", true)?,
        schedule: schedule(&o, state, &paper.schedule)?,
    };
    let bar = fit_progress(&o, cfg.schedule.epochs, "finetune")?;
    let r = finetune_classification(
        &init,
        &cfg,
        data,
        (&train, &test),
        &state.device(),
        &mut |_, loss| {
            bar.message(&format!("loss {loss:.4}"));
            bar.inc(1);
        },
    )
    .rt()?;
    bar.finish();
    let mut out = Map::new();
    out.insert("qwk".into(), r.qwk.into());
    out.insert("accuracy".into(), r.accuracy.into());
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
