//! The `data` domain: prepared pancreas and fundus datasets (real or the synthetic default),
//! synthetic generators, verification, preprocessing and splits.

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use rhai::{Array, Dynamic, INT, Map};

use super::api::Domain;
use super::convert::{RResult, ScriptResult, index, ints, number, rt_err};
use crate::data::synthetic::{self, FundusConfig, PhantomConfig, fundus, pancreas};
use crate::data::{
    FundusFilter, FundusPreprocess, FundusSet, Image, Interp, PancreasPreprocess, PancreasSet,
    Volume, split,
};
use crate::progress::Progress;

use super::opts::Opts;

fn int_array(v: &[usize]) -> Array {
    v.iter().map(|&i| Dynamic::from_int(i as INT)).collect()
}

fn indices(arr: &Array, what: &str) -> RResult<Vec<usize>> {
    ints(arr, what)?
        .into_iter()
        .map(|i| index(i, what))
        .collect()
}

fn to_dynamic<T: serde::Serialize>(v: &T) -> RResult<Dynamic> {
    rhai::serde::to_dynamic(v)
}

const PANCREAS_KEYS: &[&str] = &[
    "shape",
    "threshold",
    "off_by_one",
    "labels",
    "clip",
    "anti_alias",
];

fn pancreas_params(o: &Opts) -> RResult<PancreasPreprocess> {
    let d = PancreasPreprocess::default();
    let label_interp = match o.string("labels", "linear")?.as_str() {
        "linear" => Interp::Linear,
        "nearest" => Interp::Nearest,
        other => {
            return Err(rt_err(format!(
                "{}: option `labels` must be \"linear\" or \"nearest\", got \"{other}\"",
                o.what
            )));
        }
    };
    let p = PancreasPreprocess {
        shape: o.shape3("shape", d.shape)?,
        threshold: o.float("threshold", d.threshold)?,
        off_by_one: o.boolean("off_by_one", d.off_by_one)?,
        label_interp,
        clip: o.numbers("clip", 2)?.map(|c| (c[0] as f32, c[1] as f32)),
        anti_alias: o.boolean("anti_alias", d.anti_alias)?,
    };
    p.validate().rt()?;
    Ok(p)
}

fn phantom_config(m: &Map) -> RResult<PhantomConfig> {
    let o = Opts::new(
        "synthetic",
        m,
        &[
            "labelled",
            "unlabelled",
            "shape",
            "seed",
            "tumour_share",
            "out",
        ],
    )?;
    let d = PhantomConfig::default();
    let cfg = PhantomConfig {
        labelled: o.count("labelled", d.labelled)?,
        unlabelled: o.count("unlabelled", d.unlabelled)?,
        shape: o.shape3("shape", d.shape)?,
        seed: o.count("seed", 0)? as u64,
        tumour_share: o.float("tumour_share", d.tumour_share)?,
    };
    cfg.validate().rt()?;
    Ok(cfg)
}

fn fundus_config(m: &Map) -> RResult<FundusConfig> {
    let o = Opts::new("synthetic", m, &["n", "counts", "size", "seed", "out"])?;
    let d = FundusConfig::default();
    let size = o.count("size", d.size)?;
    let seed = o.count("seed", 0)? as u64;
    let counts = match o.numbers("counts", 5)? {
        Some(c) if c.iter().all(|v| v.fract() == 0.0 && *v >= 0.0) => {
            [c[0], c[1], c[2], c[3], c[4]].map(|v| v as usize)
        }
        Some(_) => return Err(o.err("counts", "5 non-negative integers", &m["counts"])),
        None if o.get("n").is_some() => synthetic::fundus::aptos_counts(o.count("n", 0)?),
        None => d.counts,
    };
    let cfg = FundusConfig { counts, size, seed };
    cfg.validate().rt()?;
    Ok(cfg)
}

fn folders(o: &Opts) -> RResult<(PathBuf, PathBuf)> {
    let home = match o.string("data", "")?.as_str() {
        "" => crate::data::home(),
        h => PathBuf::from(h),
    };
    let cache = match o.string("cache", "")?.as_str() {
        "" => home.join("cache"),
        c => PathBuf::from(c),
    };
    Ok((home, cache))
}

fn open_pancreas(m: Map) -> RResult<PancreasSet> {
    let keys: Vec<&str> = PANCREAS_KEYS
        .iter()
        .copied()
        .chain(["root", "cache", "data", "synthetic"])
        .collect();
    let o = Opts::new("pancreas", &m, &keys)?;
    let params = pancreas_params(&o)?;
    let (home, cache) = folders(&o)?;
    let root = match o.string("root", "")?.as_str() {
        "" => {
            let cfg = phantom_config(&o.map("synthetic")?)?;
            synthetic::ensure(&home, "pancreas", &cfg.key(), |dir| {
                let p = Progress::new((cfg.labelled + cfg.unlabelled) as u64, "synth pancreas");
                pancreas::write(&cfg, dir, Some(&p)).inspect(|_| p.finish())
            })
            .rt()?
        }
        r => PathBuf::from(r),
    };
    PancreasSet::open(&root, &params, &cache).rt()
}

fn fundus_params(o: &Opts) -> RResult<FundusPreprocess> {
    let filter = match o.string("filter", "lanczos")?.as_str() {
        "lanczos" => FundusFilter::Lanczos,
        "triangle" | "bilinear" => FundusFilter::Triangle,
        other => {
            return Err(rt_err(format!(
                "{}: option `filter` must be \"lanczos\" or \"triangle\", got \"{other}\"",
                o.what
            )));
        }
    };
    let size = o.count("size", 224)?;
    if size == 0 {
        return Err(rt_err(format!(
            "{}: option `size` must be positive",
            o.what
        )));
    }
    Ok(FundusPreprocess { size, filter })
}

fn open_fundus(m: Map) -> RResult<FundusSet> {
    let o = Opts::new(
        "fundus",
        &m,
        &["root", "size", "filter", "cache", "data", "synthetic"],
    )?;
    let params = fundus_params(&o)?;
    let (home, cache) = folders(&o)?;
    let root = match o.string("root", "")?.as_str() {
        "" => {
            let cfg = fundus_config(&o.map("synthetic")?)?;
            synthetic::ensure(&home, "fundus", &cfg.key(), |dir| {
                let p = Progress::new(cfg.n() as u64, "synth fundus");
                fundus::write(&cfg, dir, Some(&p)).inspect(|_| p.finish())
            })
            .rt()?
        }
        r => PathBuf::from(r),
    };
    FundusSet::open(&root, &params, &cache).rt()
}

fn out_dir(m: &Map, what: &str) -> RResult<PathBuf> {
    match m.get("out").and_then(|v| v.clone().into_string().ok()) {
        Some(s) if !s.is_empty() => Ok(PathBuf::from(s)),
        _ => Err(rt_err(format!(
            "{what}: option `out` (the folder to write) is required"
        ))),
    }
}

/// Builds the `data` domain.
pub fn domain() -> Domain {
    let mut d = Domain::new(
        "data",
        "Datasets: pancreas CT (Decathlon layout) and fundus photographs (APTOS layout), real or \
         the synthetic default (`root: \"\"`), preprocessed once into a cache and read case by \
         case; generators, verification, preprocessing and splits.",
    );
    sets(&mut d);
    tools(&mut d);
    splits(&mut d);
    d
}

fn sets(d: &mut Domain) {
    d.custom_type::<PancreasSet>("PancreasSet");
    d.custom_type::<FundusSet>("FundusSet");
    d.func(
        "pancreas",
        "pancreas(opts: Map) -> PancreasSet",
        "A prepared Decathlon set. Keys: root (\"\" = synthetic default), shape [128,128,128], \
         threshold 0.05, off_by_one true, labels \"linear\"|\"nearest\", clip [lo, hi], \
         anti_alias true, cache, data, synthetic #{labelled 24, unlabelled 12, shape \
         [128,128,64], seed 0, tumour_share 0.7}.",
        open_pancreas,
    );
    d.func(
        "fundus",
        "fundus(opts: Map) -> FundusSet",
        "A prepared APTOS set. Keys: root (\"\" = synthetic default), size 224, filter \
         \"lanczos\"|\"triangle\", cache, data, synthetic #{n 500 (APTOS balance) or counts \
         [5 numbers], size 320, seed 0}.",
        open_fundus,
    );
    d.func(
        "len",
        "set.len() -> INT",
        "The number of cases of a PancreasSet.",
        |s: &mut PancreasSet| Ok(s.len() as INT),
    );
    d.overload("len", |s: &mut FundusSet| Ok(s.len() as INT));
    d.func(
        "image",
        "set.image(i: INT) -> Tensor",
        "Case i: PancreasSet f32 [x, y, z] in [0, 1]; FundusSet f32 [3, H, W] in [0, 1] (CPU).",
        |s: &mut PancreasSet, i: INT| s.image(index(i, "i")?).rt(),
    );
    d.overload("image", |s: &mut FundusSet, i: INT| {
        s.image(index(i, "i")?).rt()
    });
    d.func(
        "label",
        "set.label(i: INT) -> Tensor",
        "The label of pancreas case i: u8 [x, y, z] with 0/1/2, or () for an unlabelled case.",
        |s: &mut PancreasSet, i: INT| {
            Ok(match s.label(index(i, "i")?).rt()? {
                Some(t) => Dynamic::from(t),
                None => Dynamic::UNIT,
            })
        },
    );
    d.func(
        "grade",
        "set.grade(i: INT) -> INT",
        "The diabetic-retinopathy grade (0..4) of fundus photograph i.",
        |s: &mut FundusSet, i: INT| Ok(s.grade(index(i, "i")?).rt()? as INT),
    );
    d.func(
        "id",
        "set.id(i: INT) -> String",
        "The case id (file name or id_code) of case i.",
        |s: &mut PancreasSet, i: INT| Ok(s.id(index(i, "i")?).rt()?.to_string()),
    );
    d.overload("id", |s: &mut FundusSet, i: INT| {
        Ok(s.id(index(i, "i")?).rt()?.to_string())
    });
    d.func(
        "ids",
        "set.ids(cases: Array) -> Array",
        "The ids of the given case indices (to save a split by name).",
        |s: &mut PancreasSet, cases: Array| {
            indices(&cases, "cases")?
                .into_iter()
                .map(|i| s.id(i).map(|x| Dynamic::from(x.to_string())).rt())
                .collect::<RResult<Array>>()
        },
    );
    d.overload("ids", |s: &mut FundusSet, cases: Array| {
        indices(&cases, "cases")?
            .into_iter()
            .map(|i| s.id(i).map(|x| Dynamic::from(x.to_string())).rt())
            .collect::<RResult<Array>>()
    });
    d.getter(
        "labelled",
        "set.labelled -> Array",
        "The indices of the labelled pancreas cases (imagesTr).",
        |s: &mut PancreasSet| Ok(int_array(s.labelled())),
    );
    d.getter(
        "unlabelled",
        "set.unlabelled -> Array",
        "The indices of the unlabelled pancreas cases (imagesTs).",
        |s: &mut PancreasSet| Ok(int_array(s.unlabelled())),
    );
    d.getter(
        "shape",
        "set.shape -> Array",
        "The preprocessed shape [x, y, z] of a PancreasSet.",
        |s: &mut PancreasSet| Ok(int_array(&s.shape())),
    );
    d.getter(
        "grades",
        "set.grades -> Array",
        "Every fundus grade, in order.",
        |s: &mut FundusSet| {
            Ok(s.grades()
                .iter()
                .map(|&g| Dynamic::from_int(g as INT))
                .collect::<Array>())
        },
    );
    d.func(
        "to_string",
        "set.to_string() -> String",
        "A one-line description of the set.",
        |s: &mut PancreasSet| Ok(describe_pancreas(s)),
    );
    d.overload("to_debug", |s: &mut PancreasSet| Ok(describe_pancreas(s)));
    d.overload("to_string", |s: &mut FundusSet| Ok(describe_fundus(s)));
    d.overload("to_debug", |s: &mut FundusSet| Ok(describe_fundus(s)));
}

fn describe_pancreas(s: &PancreasSet) -> String {
    format!(
        "PancreasSet `{}`: {} labelled + {} unlabelled cases of {:?}",
        s.name(),
        s.labelled().len(),
        s.unlabelled().len(),
        s.shape()
    )
}

fn describe_fundus(s: &FundusSet) -> String {
    let mut c = [0usize; 5];
    for &g in s.grades() {
        c[g as usize] += 1;
    }
    format!(
        "FundusSet: {} photographs of {}x{}, grades 0-4: {:?}",
        s.len(),
        s.size(),
        s.size(),
        c
    )
}

fn tools(d: &mut Domain) {
    d.func(
        "synth_pancreas",
        "synth_pancreas(opts: Map) -> String",
        "Writes CT phantoms as a Decathlon folder. Keys: out (required), labelled 24, \
         unlabelled 12, shape [128,128,64], seed 0, tumour_share 0.7. Returns out.",
        |m: Map| {
            let out = out_dir(&m, "synth_pancreas")?;
            let cfg = phantom_config(&m)?;
            pancreas::write(&cfg, &out, None).rt()?;
            Ok(out.display().to_string())
        },
    );
    d.func(
        "synth_fundus",
        "synth_fundus(opts: Map) -> String",
        "Writes fundus photographs as an APTOS folder. Keys: out (required), n 500 (APTOS \
         balance) or counts [5 numbers], size 320, seed 0. Returns out.",
        |m: Map| {
            let out = out_dir(&m, "synth_fundus")?;
            let cfg = fundus_config(&m)?;
            fundus::write(&cfg, &out, None).rt()?;
            Ok(out.display().to_string())
        },
    );
    d.func(
        "verify_dataset",
        "verify_dataset(dir: String) -> Map",
        "Checks a Decathlon or APTOS folder: #{layout, name, root, cases, problems, warnings}; \
         each problem names its file.",
        |dir: &str| to_dynamic(&crate::data::verify(Path::new(dir)).rt()?),
    );
    d.func(
        "preprocess_ct",
        "preprocess_ct(image: Volume, opts: Map) -> Tensor",
        "The paper's pancreas preprocessing of one CT (keys as pancreas(): shape, threshold, \
         off_by_one, clip, anti_alias): f32 [x, y, z] in [0, 1].",
        |v: Volume, m: Map| {
            let o = Opts::new("preprocess_ct", &m, PANCREAS_KEYS)?;
            Ok(pancreas_params(&o)?.apply(&v, None).rt()?.image)
        },
    );
    d.func(
        "preprocess_ct",
        "preprocess_ct(image: Volume, label: Volume, opts: Map) -> Map",
        "The same for a CT with its label: #{image, label (u8), bbox: [x0, x1, y0, y1, z0, z1]}.",
        |v: Volume, l: Volume, m: Map| {
            let o = Opts::new("preprocess_ct", &m, PANCREAS_KEYS)?;
            let out = pancreas_params(&o)?.apply(&v, Some(&l)).rt()?;
            let b = out.bbox;
            let bbox: Vec<usize> = (0..3).flat_map(|a| [b.start[a], b.end[a]]).collect();
            let mut r = Map::new();
            r.insert("image".into(), Dynamic::from(out.image));
            r.insert(
                "label".into(),
                out.label.map(Dynamic::from).unwrap_or(Dynamic::UNIT),
            );
            r.insert("bbox".into(), Dynamic::from_array(int_array(&bbox)));
            Ok(r)
        },
    );
    d.func(
        "preprocess_fundus",
        "preprocess_fundus(img: Image, opts: Map) -> Tensor",
        "The paper's fundus preprocessing (keys: size 224, filter \"lanczos\"|\"triangle\"): \
         f32 [3, size, size] in [0, 1].",
        |img: Image, m: Map| -> RResult<Tensor> {
            let o = Opts::new("preprocess_fundus", &m, &["size", "filter"])?;
            fundus_params(&o)?.apply(&img).rt()
        },
    );
}

fn splits(d: &mut Domain) {
    d.func(
        "split_train_test",
        "split_train_test(n: INT, test_frac: FLOAT, seed: INT) -> Map",
        "A seeded split of 0..n: #{train, test}, test = round(n * test_frac) cases (at least 1).",
        |n: INT, f: Dynamic, seed: INT| {
            let s =
                split::train_test(index(n, "n")?, number(&f, "test_frac")?, seed as u64).rt()?;
            to_dynamic(&s)
        },
    );
    d.func(
        "nested_fractions",
        "nested_fractions(cases: Array, fractions: Array, seed: INT) -> Array",
        "Nested subsets: per fraction, the first max(1, round(p * n)) cases of one seeded \
         permutation of `cases`.",
        |cases: Array, fr: Array, seed: INT| {
            let cases = indices(&cases, "cases")?;
            let fr = fr
                .iter()
                .map(|f| number(f, "fractions"))
                .collect::<RResult<Vec<f64>>>()?;
            let subsets = split::nested_fractions(&cases, &fr, seed as u64).rt()?;
            Ok(subsets
                .iter()
                .map(|s| Dynamic::from_array(int_array(s)))
                .collect::<Array>())
        },
    );
    d.func(
        "original_fraction",
        "original_fraction(cases: Array, p: FLOAT, val_frac: FLOAT) -> Map",
        "The original code's label-fraction split (no shuffle): #{train: first int(n p (1 - \
         val_frac)), val: next int(n val_frac)}.",
        |cases: Array, p: Dynamic, v: Dynamic| {
            let cases = indices(&cases, "cases")?;
            let s =
                split::original_fraction(&cases, number(&p, "p")?, number(&v, "val_frac")?).rt()?;
            to_dynamic(&s)
        },
    );
    d.func(
        "strided_folds",
        "strided_folds(cases: Array, k: INT, p: FLOAT, val_frac: FLOAT) -> Array",
        "The original code's fundus cross-validation: fold i tests on cases[i::k]; #{train, \
         val, test} per fold.",
        |cases: Array, k: INT, p: Dynamic, v: Dynamic| {
            let cases = indices(&cases, "cases")?;
            let folds = split::strided_folds(
                &cases,
                index(k, "k")?,
                number(&p, "p")?,
                number(&v, "val_frac")?,
            )
            .rt()?;
            folds.iter().map(to_dynamic).collect::<RResult<Array>>()
        },
    );
    d.func(
        "kfold",
        "kfold(n: INT, k: INT, seed: INT) -> Array",
        "Seeded K-fold cross-validation of 0..n: #{train, test} per fold.",
        |n: INT, k: INT, seed: INT| {
            let folds = split::kfold(index(n, "n")?, index(k, "k")?, seed as u64).rt()?;
            folds.iter().map(to_dynamic).collect::<RResult<Array>>()
        },
    );
    d.func(
        "save_splits",
        "save_splits(dir: String, splits: Map) -> String",
        "Writes the case lists (e.g. #{train: set.ids(tr), test: set.ids(te)}) to \
         dir/splits.json; returns the file's path.",
        |dir: &str, m: Map| {
            let json: serde_json::Value = rhai::serde::from_dynamic(&Dynamic::from_map(m))?;
            let p = split::save_splits(Path::new(dir), &json).rt()?;
            Ok(p.display().to_string())
        },
    );
}
