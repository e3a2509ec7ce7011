//! Your own data in scripts: NIfTI folder sets (`nifti_folder`), 3D `resample`/`resize` of
//! volumes and tensors, and predictions back in the patient's geometry (`segment`,
//! `sliding_window`, `load_unet3d`). Registered into the `data`, `volume` and `model` domains.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Tensor};
use rhai::{Array, Dynamic, INT, Map};

use super::HostState;
use super::api::Domain;
use super::convert::{RResult, ScriptResult, floats, index, ints, rt_err};
use super::model::Model;
use super::options;
use crate::data::geometry::{ResampleOptions, resample_volume, resize_tensor, resize_volume};
use crate::data::{NiftiFolderOptions, NiftiFolderSet, Volume};
use crate::nn::{ParamStore, UNet3d, UNet3dConfig};
use crate::streams::{Stream, derive};
use crate::train::infer::{self, SlidingWindow};

fn int_array(v: &[usize]) -> Array {
    v.iter().map(|&i| Dynamic::from_int(i as INT)).collect()
}

fn float_array(v: &[f64]) -> Array {
    v.iter().map(|&x| Dynamic::from_float(x)).collect()
}

fn affine_array(a: &crate::data::Affine) -> Array {
    a.iter()
        .map(|r| Dynamic::from_array(float_array(r)))
        .collect()
}

fn three<T: Copy>(v: Vec<T>, what: &str) -> RResult<[T; 3]> {
    let n = v.len();
    v.try_into()
        .map_err(|_| rt_err(format!("{what}: expected 3 values [x, y, z], got {n}")))
}

fn shape3(arr: &Array, what: &str) -> RResult<[usize; 3]> {
    let v = ints(arr, what)?
        .into_iter()
        .map(|i| index(i, what))
        .collect::<RResult<Vec<_>>>()?;
    three(v, what)
}

fn describe(s: &NiftiFolderSet) -> String {
    let shape = match s.shape() {
        Some(sh) => format!("{sh:?}"),
        None => "their own sizes".into(),
    };
    format!(
        "NiftiFolderSet {}: {} labelled + {} unlabelled cases of {shape}",
        s.root().display(),
        s.labelled().len(),
        s.unlabelled().len()
    )
}

/// Registers `nifti_folder` and the methods of its sets (data domain).
pub(super) fn sets(d: &mut Domain) {
    d.custom_type::<NiftiFolderSet>("NiftiFolderSet");
    d.func(
        "nifti_folder",
        "nifti_folder(opts: Map) -> NiftiFolderSet",
        "Any folder of NIfTI volumes (a glob; labels from a second folder), each case normalised, \
         resampled and fitted to a shape once into the cache (options below).",
        |m: Map| {
            let o: NiftiFolderOptions = options::parse("nifti_folder", &m)?;
            o.open().rt()
        },
    )
    .options::<NiftiFolderOptions>();
    d.func(
        "len",
        "set.len() -> INT",
        "The number of cases of a NiftiFolderSet.",
        |s: &mut NiftiFolderSet| Ok(s.len() as INT),
    );
    d.func(
        "image",
        "set.image(i: INT) -> Tensor",
        "Case i of a NiftiFolderSet, prepared: f32 [x, y, z] in [0, 1] (CPU).",
        |s: &mut NiftiFolderSet, i: INT| s.image(index(i, "i")?).rt(),
    );
    d.func(
        "label",
        "set.label(i: INT) -> Tensor",
        "The prepared label map of case i: u8 [x, y, z], or () for an unlabelled case.",
        |s: &mut NiftiFolderSet, i: INT| {
            Ok(match s.label(index(i, "i")?).rt()? {
                Some(t) => Dynamic::from(t),
                None => Dynamic::UNIT,
            })
        },
    );
    d.overload("id", |s: &mut NiftiFolderSet, i: INT| {
        Ok(s.id(index(i, "i")?).rt()?.to_string())
    });
    d.overload("ids", |s: &mut NiftiFolderSet, cases: Array| {
        ints(&cases, "cases")?
            .into_iter()
            .map(|i| {
                let i = index(i, "cases")?;
                s.id(i).map(|x| Dynamic::from(x.to_string())).rt()
            })
            .collect::<RResult<Array>>()
    });
    d.getter(
        "labelled",
        "set.labelled -> Array",
        "The indices of the cases of a NiftiFolderSet that have a label map.",
        |s: &mut NiftiFolderSet| Ok(int_array(s.labelled())),
    );
    d.getter(
        "unlabelled",
        "set.unlabelled -> Array",
        "The indices of the cases of a NiftiFolderSet without a label map.",
        |s: &mut NiftiFolderSet| Ok(int_array(s.unlabelled())),
    );
    d.getter(
        "shape",
        "set.shape -> Array",
        "The prepared shape [x, y, z] of a NiftiFolderSet, or () when cases keep their own sizes.",
        |s: &mut NiftiFolderSet| {
            Ok(match s.shape() {
                Some(sh) => Dynamic::from_array(int_array(&sh)),
                None => Dynamic::UNIT,
            })
        },
    );
    d.func(
        "source",
        "set.source(i: INT) -> String",
        "The image file of case i.",
        |s: &mut NiftiFolderSet, i: INT| Ok(s.source(index(i, "i")?).rt()?.display().to_string()),
    );
    d.func(
        "label_source",
        "set.label_source(i: INT) -> String",
        "The label file of case i, or () for an unlabelled case.",
        |s: &mut NiftiFolderSet, i: INT| {
            Ok(match s.label_source(index(i, "i")?).rt()? {
                Some(p) => Dynamic::from(p.display().to_string()),
                None => Dynamic::UNIT,
            })
        },
    );
    d.func(
        "volume",
        "set.volume(i: INT) -> Volume",
        "The prepared image of case i as an f32 volume whose affine places it on the original \
         image (save it and open both in a viewer).",
        |s: &mut NiftiFolderSet, i: INT| s.volume(index(i, "i")?).rt(),
    );
    d.func(
        "geometry",
        "set.geometry(i: INT) -> Map",
        "Where case i's prepared voxels lie in its original image: #{shape, affine, prepared, \
         prepared_affine, scale, offset} (original index = scale * prepared + offset per axis).",
        |s: &mut NiftiFolderSet, i: INT| {
            let g = s.geometry(index(i, "i")?).rt()?;
            let mut m = Map::new();
            m.insert("shape".into(), int_array(&g.shape).into());
            m.insert("affine".into(), affine_array(&g.affine).into());
            m.insert("prepared".into(), int_array(&g.prepared).into());
            m.insert(
                "prepared_affine".into(),
                affine_array(&g.prepared_affine()).into(),
            );
            m.insert("scale".into(), float_array(&g.map.scale).into());
            m.insert("offset".into(), float_array(&g.map.offset).into());
            Ok(m)
        },
    );
    d.func(
        "to_original",
        "set.to_original(i: INT, t: Tensor) -> Volume",
        "A prepared-space tensor back on case i's original image (its shape, affine, header): \
         scores [K, x, y, z] or a u8 label map become a u8 label map, other volumes are \
         interpolated (f32).",
        |s: &mut NiftiFolderSet, i: INT, t: Tensor| infer::to_original(s, index(i, "i")?, &t).rt(),
    );
    d.overload("to_string", |s: &mut NiftiFolderSet| Ok(describe(s)));
    d.overload("to_debug", |s: &mut NiftiFolderSet| Ok(describe(s)));
}

fn resample_opts(what: &str, m: &Map) -> RResult<ResampleOptions> {
    options::parse(what, m)
}

/// Registers 3D `resample` and `resize` of volumes and tensors (volume domain).
pub(super) fn resampling(d: &mut Domain) {
    d.func(
        "resample",
        "resample(v: Volume, spacing: Array, opts: Map) -> Volume",
        "The volume resampled to voxel spacing [x, y, z] mm over the same field of view; the \
         affine follows, so it stays aligned (options below; nearest for label maps).",
        |v: Volume, spacing: Array, m: Map| {
            let s = three(floats(&spacing, "spacing")?, "spacing")?;
            resample_volume(&v, s, &resample_opts("resample", &m)?).rt()
        },
    )
    .options::<ResampleOptions>();
    d.func(
        "resample",
        "resample(v: Volume, spacing: Array) -> Volume",
        "The same, linear with anti-aliasing.",
        |v: Volume, spacing: Array| {
            let s = three(floats(&spacing, "spacing")?, "spacing")?;
            resample_volume(&v, s, &ResampleOptions::default()).rt()
        },
    );
    d.func(
        "resample",
        "resample(t: Tensor, shape: Array) -> Tensor",
        "A tensor has no spacing: resample(t, shape) is resize(t, shape).",
        |t: Tensor, shape: Array| {
            resize_tensor(&t, shape3(&shape, "shape")?, &ResampleOptions::default()).rt()
        },
    );
    d.func(
        "resize",
        "resize(x: Volume | Tensor, shape: Array, opts: Map) -> Volume | Tensor",
        "A volume or a 3D tensor resized to shape [x, y, z] as scikit-image's resize (a volume \
         keeps its field of view and alignment; options as resample).",
        |v: Volume, shape: Array, m: Map| {
            resize_volume(&v, shape3(&shape, "shape")?, &resample_opts("resize", &m)?).rt()
        },
    )
    .options::<ResampleOptions>();
    d.overload("resize", |t: Tensor, shape: Array, m: Map| {
        resize_tensor(&t, shape3(&shape, "shape")?, &resample_opts("resize", &m)?).rt()
    });
    d.func(
        "resize",
        "resize(x: Volume | Tensor, shape: Array) -> Volume | Tensor",
        "The same, linear with anti-aliasing.",
        |v: Volume, shape: Array| {
            resize_volume(&v, shape3(&shape, "shape")?, &ResampleOptions::default()).rt()
        },
    );
    d.overload("resize", |t: Tensor, shape: Array| {
        resize_tensor(&t, shape3(&shape, "shape")?, &ResampleOptions::default()).rt()
    });
}

fn unet_of(m: &Model) -> RResult<&UNet3d> {
    m.unet()
        .ok_or_else(|| rt_err("segment: the model is not a UNet3D"))
}

/// The options of `segment` and `sliding_window`.
fn window_opts(what: &str, m: &Map) -> RResult<SlidingWindow> {
    let o: SlidingWindow = options::parse(what, m)?;
    o.validate().rt()?;
    Ok(o)
}

/// A UNet3D rebuilt from a finetuned segmentation checkpoint (its manifest records the
/// network), with every tensor loaded.
fn load_unet(state: &HostState, path: &str) -> RResult<Model> {
    let manifest = ParamStore::manifest(path).rt()?;
    let cfg: UNet3dConfig = match manifest.get("unet") {
        Some(u) => serde_json::from_value(u.clone())
            .map_err(|e| rt_err(format!("load_unet3d: {path}: the recorded network: {e}")))?,
        None => {
            return Err(rt_err(format!(
                "load_unet3d: {path} records no UNet3D (a model saved by \
                 finetune_segmentation(#{{ save: ... }}) does; otherwise build it with \
                 unet3d(#{{...}}) and m.load(path))"
            )));
        }
    };
    let store = ParamStore::new(derive(0, Stream::Init, 0));
    let net = UNet3d::new(&cfg, store.builder(DType::F32, &state.device())).rt()?;
    let report = store.load(path, &Default::default()).rt()?;
    if !report.is_complete() {
        return Err(rt_err(format!(
            "load_unet3d: {path} does not fit the recorded network: {} missing, {} unexpected, \
             {} with other shapes",
            report.missing.len(),
            report.unexpected.len(),
            report.mismatched.len()
        )));
    }
    let name = format!(
        "UNet3D(filters {}, depth {}, classes {}) from {path}",
        cfg.filters, cfg.depth, cfg.classes
    );
    Ok(Model::of_unet(net, store, name))
}

/// Registers `segment`, `sliding_window` and `load_unet3d` (model domain).
pub(super) fn predictions(d: &mut Domain, state: &Arc<HostState>) {
    let s = state.clone();
    d.func(
        "load_unet3d",
        "load_unet3d(path: String) -> Model",
        "The UNet3D of a checkpoint saved by finetune_segmentation(#{ save }), rebuilt from its \
         manifest and loaded, for inference.",
        move |path: &str| load_unet(&s, path),
    );
    let s = state.clone();
    d.func(
        "segment",
        "m.segment(set: NiftiFolderSet, case: INT | String, opts: Map) -> Volume",
        "The u8 label map of case i of the set, or of a NIfTI file preprocessed as the set's \
         cases, in the original image's geometry (its shape, affine and header): sliding windows \
         (options below), softmax, mapped back. Save it with save_nifti.",
        move |m: &mut Model, set: NiftiFolderSet, i: INT, o: Map| {
            let cfg = window_opts("segment", &o)?;
            infer::segment_case(unet_of(m)?, &set, index(i, "case")?, &cfg, &s.device()).rt()
        },
    )
    .options::<SlidingWindow>();
    let s = state.clone();
    d.overload(
        "segment",
        move |m: &mut Model, set: NiftiFolderSet, path: &str, o: Map| {
            let cfg = window_opts("segment", &o)?;
            infer::segment_file(unet_of(m)?, &set, Path::new(path), &cfg, &s.device()).rt()
        },
    );
    let s = state.clone();
    d.overload(
        "segment",
        move |m: &mut Model, set: NiftiFolderSet, i: INT| {
            let cfg = SlidingWindow::default();
            infer::segment_case(unet_of(m)?, &set, index(i, "case")?, &cfg, &s.device()).rt()
        },
    );
    let s = state.clone();
    d.overload(
        "segment",
        move |m: &mut Model, set: NiftiFolderSet, path: &str| {
            let cfg = SlidingWindow::default();
            infer::segment_file(unet_of(m)?, &set, Path::new(path), &cfg, &s.device()).rt()
        },
    );
    let s = state.clone();
    d.func(
        "sliding_window",
        "m.sliding_window(x: Tensor, opts: Map) -> Tensor",
        "Class probabilities of a UNet3D by MONAI-style sliding windows (options as segment; \
         window required unless x fits one): x [x, y, z] gives [K, x, y, z], x [N, C, D, H, W] \
         gives [N, K, D, H, W].",
        move |m: &mut Model, x: Tensor, o: Map| {
            let cfg = window_opts("sliding_window", &o)?;
            let net = unet_of(m)?;
            let dev = s.device();
            match x.rank() {
                3 => {
                    let dims = x.dims();
                    let w = infer::unet_window(net, cfg.window, Some([dims[0], dims[1], dims[2]]))
                        .rt()?;
                    infer::segment_probabilities(net, &x, w, &cfg, &dev).rt()
                }
                5 => {
                    let dims = x.dims();
                    let w = infer::unet_window(net, cfg.window, Some([dims[2], dims[3], dims[4]]))
                        .rt()?;
                    let mut predict = |t: &Tensor| -> crate::Result<Tensor> {
                        crate::ops::no_grad(|| -> crate::Result<Tensor> {
                            let logits = net.forward_t(&t.to_device(&dev)?, false)?;
                            Ok(candle_nn::ops::softmax(&logits, 1)?)
                        })
                    };
                    infer::sliding_window(&x, w, &cfg, &mut predict).rt()
                }
                _ => Err(rt_err(format!(
                    "sliding_window: expected x [x, y, z] or [N, C, D, H, W], got {:?}",
                    x.dims()
                ))),
            }
        },
    );
}
