//! The `data` domain: prepared pancreas and fundus datasets (real or the synthetic default),
//! synthetic generators, verification, preprocessing and splits.

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use rhai::{Array, Dynamic, INT, Map};

use super::api::Domain;
use super::convert::{RResult, ScriptResult, index, ints, number, rt_err, seed as seed_arg};
use super::options;
use crate::data::synthetic::{PhantomConfig, fundus, pancreas};
use crate::data::{
    FundusOptions, FundusPreprocess, FundusSet, FundusSynthOptions, Image, PancreasOptions,
    PancreasPreprocess, PancreasSet, Volume, split,
};

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

/// The options of `synth_pancreas`: the phantoms and where to write them.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(default)]
struct SynthPancreasOptions {
    /// The folder to write (required).
    out: String,
    /// What to generate.
    #[serde(flatten)]
    phantoms: PhantomConfig,
}

/// The options of `synth_fundus`: the photographs and where to write them.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(default)]
struct SynthFundusOptions {
    /// The folder to write (required).
    out: String,
    /// What to generate.
    #[serde(flatten)]
    photos: FundusSynthOptions,
}

fn required_out(out: &str, what: &str) -> RResult<PathBuf> {
    if out.is_empty() {
        return Err(rt_err(format!(
            "{what}: option `out` (the folder to write) is required"
        )));
    }
    Ok(PathBuf::from(out))
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
    super::folder::sets(&mut d);
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
        "A prepared Decathlon set, real or the synthetic default (options below).",
        |m: Map| {
            let o: PancreasOptions = options::parse("pancreas", &m)?;
            o.open().rt()
        },
    )
    .options::<PancreasOptions>();
    d.func(
        "fundus",
        "fundus(opts: Map) -> FundusSet",
        "A prepared APTOS set, real or the synthetic default (options below).",
        |m: Map| {
            let o: FundusOptions = options::parse("fundus", &m)?;
            o.open().rt()
        },
    )
    .options::<FundusOptions>();
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
        "Writes CT phantoms as a Decathlon folder (options below). Returns out.",
        |m: Map| {
            let o: SynthPancreasOptions = options::parse("synth_pancreas", &m)?;
            let out = required_out(&o.out, "synth_pancreas")?;
            o.phantoms.validate().rt()?;
            pancreas::write(&o.phantoms, &out, None).rt()?;
            Ok(out.display().to_string())
        },
    )
    .options::<SynthPancreasOptions>();
    d.func(
        "synth_fundus",
        "synth_fundus(opts: Map) -> String",
        "Writes fundus photographs as an APTOS folder (options below). Returns out.",
        |m: Map| {
            let o: SynthFundusOptions = options::parse("synth_fundus", &m)?;
            let out = required_out(&o.out, "synth_fundus")?;
            fundus::write(&o.photos.config().rt()?, &out, None).rt()?;
            Ok(out.display().to_string())
        },
    )
    .options::<SynthFundusOptions>();
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
        "The paper's pancreas preprocessing of one CT (options below): f32 [x, y, z] in [0, 1].",
        |v: Volume, m: Map| {
            let p = ct_params(&m)?;
            Ok(p.apply(&v, None).rt()?.image)
        },
    )
    .options::<PancreasPreprocess>();
    d.func(
        "preprocess_ct",
        "preprocess_ct(image: Volume, label: Volume, opts: Map) -> Map",
        "The same for a CT with its label: #{image, label (u8), bbox: [x0, x1, y0, y1, z0, z1]}.",
        |v: Volume, l: Volume, m: Map| {
            let out = ct_params(&m)?.apply(&v, Some(&l)).rt()?;
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
        "The paper's fundus preprocessing (options below): f32 [3, size, size] in [0, 1].",
        |img: Image, m: Map| -> RResult<Tensor> {
            let p: FundusPreprocess = options::parse("preprocess_fundus", &m)?;
            if p.size == 0 {
                return Err(rt_err("preprocess_fundus: option `size` must be positive"));
            }
            p.apply(&img).rt()
        },
    )
    .options::<FundusPreprocess>();
}

fn ct_params(m: &Map) -> RResult<PancreasPreprocess> {
    let p: PancreasPreprocess = options::parse("preprocess_ct", m)?;
    p.validate().rt()?;
    Ok(p)
}

fn splits(d: &mut Domain) {
    d.func(
        "split_train_test",
        "split_train_test(n: INT, test_frac: FLOAT, seed: INT) -> Map",
        "A seeded split of the positions 0..n (not case ids: index your list of cases with them, e.g. s.train.map(|i| cases[i])): #{train, test}, test = round(n * test_frac) positions (at least 1).",
        |n: INT, f: Dynamic, seed: INT| {
            let s = split::train_test(
                index(n, "n")?,
                number(&f, "test_frac")?,
                seed_arg(seed, "seed")?,
            )
            .rt()?;
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
            let subsets = split::nested_fractions(&cases, &fr, seed_arg(seed, "seed")?).rt()?;
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
            let folds =
                split::kfold(index(n, "n")?, index(k, "k")?, seed_arg(seed, "seed")?).rt()?;
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
