//! Device parity: every op and model computed on a device against the CPU kernels, outputs and
//! gradients (`pretext bench parity --device cuda`). On the CPU itself the candidate is the
//! composed implementation that other devices use, so the check also runs without a GPU.

use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};

use crate::Result;
use crate::data::Grid;
use crate::nn::loss::{DiceVariant, dice_loss, one_hot};
use crate::nn::{
    DenseNet, DenseNetConfig, GlobalPool, MlpHeadConfig, ParamStore, UNet3d, UNet3dConfig,
};
use crate::ops::{self, ConvSpec, PoolSpec};
use crate::pretext::model::BackboneConfig;
use crate::pretext::{PretextModel, Sampler, Task, TaskConfig};

/// One comparison.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Check {
    /// What was compared.
    pub name: String,
    /// The largest `max |a - b| / max |b|` over every output and gradient (for a gradient,
    /// `max |b|` is at least a thousandth of the case's largest gradient).
    pub rel_err: f64,
    /// The tolerance.
    pub tol: f64,
    /// Whether `rel_err <= tol`.
    pub ok: bool,
    /// The output or gradient with the largest error; when the error is infinite, also why (a
    /// NaN or an infinity and its position, a missing gradient, a shape mismatch).
    pub worst: String,
    /// The error or panic that stopped the case, if one did (the other cases still run).
    pub error: Option<String>,
}

fn randn(shape: &[usize], seed: u64) -> Result<Tensor> {
    let mut rng = StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

fn values(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?)
}

/// The multi-index of flat position `i` in a tensor of shape `dims`.
fn position(dims: &[usize], mut i: usize) -> Vec<usize> {
    let mut pos = vec![0; dims.len()];
    for (p, &d) in pos.iter_mut().zip(dims).rev() {
        *p = i % d.max(1);
        i /= d.max(1);
    }
    pos
}

/// `max |t|`, or the first NaN or infinity of `t` described with its position (every element
/// is visited: candle's `max` skips NaN).
fn max_abs(t: &Tensor) -> Result<std::result::Result<f64, String>> {
    let v = values(t)?;
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Ok(Err(format!("{} at {:?}", v[i], position(t.dims(), i))));
    }
    Ok(Ok(v.iter().fold(0f64, |m, x| m.max(x.abs()))))
}

/// `max |a - b| / max(max |b|, floor)`, or why it is infinite: the shapes differ or either
/// side holds a NaN or an infinity.
fn rel_err(a: &Tensor, b: &Tensor, floor: f64) -> Result<std::result::Result<f64, String>> {
    if a.dims() != b.dims() {
        return Ok(Err(format!("shape {:?} vs {:?}", a.dims(), b.dims())));
    }
    let scale = match (max_abs(a)?, max_abs(b)?) {
        (Err(at), _) => return Ok(Err(format!("candidate has {at}"))),
        (_, Err(at)) => return Ok(Err(format!("reference has {at}"))),
        (Ok(_), Ok(s)) => s,
    };
    let diff = (a.to_device(&Device::Cpu)?.to_dtype(DType::F64)? - b.to_dtype(DType::F64)?)?;
    Ok(max_abs(&diff)?.map(|d| d / scale.max(floor).max(1e-30)))
}

/// Compares a candidate's outputs and gradients with the reference's, named alike and in the
/// same order: the largest relative error and the tensor it was measured on. A NaN or an
/// infinity on either side, a missing gradient (`None`, on either side or both), or differing
/// names, counts or shapes give an infinite error, and the description says which tensor and
/// where.
pub fn compare(
    candidate: &[(String, Option<Tensor>)],
    reference: &[(String, Option<Tensor>)],
) -> Result<(f64, String)> {
    if candidate.len() != reference.len() {
        let (a, b) = (candidate.len(), reference.len());
        return Ok((
            f64::INFINITY,
            format!("{a} tensors vs {b} in the reference"),
        ));
    }
    // A gradient far smaller than the case's largest (a bias feeding a BatchNorm is a sum
    // that nearly cancels) is measured against a thousandth of the largest.
    let mut largest: f64 = 0.0;
    for (what, b) in reference {
        if let (true, Some(b)) = (what.starts_with("gradient"), b)
            && let Ok(m) = max_abs(b)?
        {
            largest = largest.max(m);
        }
    }
    let mut err: f64 = 0.0;
    let mut worst = String::new();
    for ((what, a), (ref_what, b)) in candidate.iter().zip(reference) {
        if what != ref_what {
            return Ok((
                f64::INFINITY,
                format!("{what} vs {ref_what} in the reference"),
            ));
        }
        let (a, b) = match (a, b) {
            (Some(a), Some(b)) => (a, b),
            (None, None) => return Ok((f64::INFINITY, format!("{what}: missing on both paths"))),
            (None, _) => return Ok((f64::INFINITY, format!("{what}: missing on the candidate"))),
            (_, None) => return Ok((f64::INFINITY, format!("{what}: missing on the reference"))),
        };
        let floor = if what.starts_with("gradient") {
            1e-3 * largest
        } else {
            0.0
        };
        match rel_err(a, b, floor)? {
            Err(why) => return Ok((f64::INFINITY, format!("{what}: {why}"))),
            Ok(e) if e > err || worst.is_empty() => {
                err = err.max(e);
                worst = what.clone();
            }
            Ok(_) => {}
        }
    }
    Ok((err, worst))
}

/// A computation on a device: from inputs (on that device) to outputs and gradients.
/// A gradient is `None` when backpropagation produced none for its input or parameter.
type Case = Box<dyn Fn(&Device) -> Result<Vec<(String, Option<Tensor>)>>>;

/// `op(inputs)` and the gradients of `sum(op · g)` with respect to every input.
fn op_case(shapes: Vec<Vec<usize>>, op: impl Fn(&[Tensor]) -> Result<Tensor> + 'static) -> Case {
    Box::new(move |dev| {
        let vars: Vec<Var> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| Ok(Var::from_tensor(&randn(s, 10 + i as u64)?.to_device(dev)?)?))
            .collect::<Result<_>>()?;
        let xs: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = op(&xs)?;
        let g = randn(y.dims(), 99)?.to_device(dev)?;
        let grads = (&y * &g)?.sum_all()?.backward()?;
        let mut out = vec![("output".to_string(), Some(y))];
        for (i, v) in vars.iter().enumerate() {
            out.push((
                format!("gradient of input {i}"),
                grads.get(v.as_tensor()).cloned(),
            ));
        }
        Ok(out)
    })
}

/// The loss and every parameter gradient of a model built by `build` from a store on `dev`.
fn model_case(build: impl Fn(&ParamStore, &Device) -> Result<Tensor> + 'static) -> Case {
    Box::new(move |dev| {
        let store = ParamStore::new(3);
        let loss = build(&store, dev)?;
        let grads = loss.backward()?;
        let mut out = vec![("loss".to_string(), Some(loss))];
        for (n, v) in store.trainable("") {
            out.push((
                format!("gradient of {n}"),
                grads.get(v.as_tensor()).cloned(),
            ));
        }
        Ok(out)
    })
}

fn ties(shape: &[usize], seed: u64) -> Result<Tensor> {
    Ok(randn(shape, seed)?.relu()?)
}

fn cases() -> Vec<(&'static str, f64, Case)> {
    let c = |p, s| ConvSpec::uniform(p, s);
    vec![
        (
            "conv3d k3",
            1e-4,
            op_case(vec![vec![2, 4, 6, 7, 5], vec![3, 4, 3, 3, 3]], move |x| {
                ops::conv3d(&x[0], &x[1], c(1, 1))
            }),
        ),
        (
            "conv3d k3 stride 2",
            1e-4,
            op_case(vec![vec![1, 3, 7, 6, 9], vec![2, 3, 3, 3, 3]], move |x| {
                ops::conv3d(&x[0], &x[1], c(1, 2))
            }),
        ),
        (
            "conv3d k1",
            1e-4,
            op_case(vec![vec![2, 5, 4, 3, 5], vec![3, 5, 1, 1, 1]], move |x| {
                ops::conv3d(&x[0], &x[1], c(0, 1))
            }),
        ),
        (
            "conv2d k7 stride 2",
            1e-4,
            op_case(vec![vec![1, 3, 11, 13], vec![4, 3, 7, 7]], |x| {
                ops::conv2d(&x[0], &x[1], [3, 3], [2, 2])
            }),
        ),
        (
            "conv_transpose3d k2 stride 2",
            1e-4,
            op_case(vec![vec![2, 4, 3, 4, 5], vec![4, 3, 2, 2, 2]], move |x| {
                ops::conv_transpose3d(&x[0], &x[1], c(0, 2))
            }),
        ),
        (
            "max_pool3d (ties)",
            1e-5,
            op_case(vec![vec![2, 3, 6, 5, 7]], |x| {
                ops::max_pool3d(&x[0].relu()?, PoolSpec::cube(2))
            }),
        ),
        (
            "avg_pool3d",
            1e-5,
            op_case(vec![vec![2, 3, 5, 6, 7]], |x| {
                ops::avg_pool3d(&x[0], PoolSpec::cube(2))
            }),
        ),
        (
            "max_pool2d k3 stride 2 pad 1",
            1e-5,
            op_case(vec![vec![2, 3, 9, 8]], |x| {
                ops::max_pool2d(&x[0].relu()?, [3, 3], [2, 2], [1, 1])
            }),
        ),
        (
            "upsample_nearest3d",
            1e-5,
            op_case(vec![vec![2, 3, 3, 4, 2]], |x| {
                ops::upsample_nearest3d(&x[0], 2)
            }),
        ),
        (
            "global_max_pool",
            1e-5,
            op_case(vec![vec![2, 4, 3, 4, 5]], |x| {
                ops::global_max_pool(&x[0].relu()?)
            }),
        ),
        (
            "batch_norm (train)",
            1e-4,
            op_case(vec![vec![2, 4, 3, 5, 4], vec![4], vec![4]], |x| {
                Ok(ops::batch_norm_train(&x[0], &x[1], &x[2], 1e-3)?.0)
            }),
        ),
        (
            "bias_relu_affine (inference)",
            1e-5,
            Box::new(|dev: &Device| {
                let t =
                    |s: &[usize], seed| -> Result<Tensor> { Ok(randn(s, seed)?.to_device(dev)?) };
                let (x, b, sc, sh) = (
                    t(&[2, 4, 3, 5, 4], 20)?,
                    t(&[4], 21)?,
                    t(&[4], 22)?,
                    t(&[4], 23)?,
                );
                let y = ops::no_grad(|| ops::bias_relu_affine(&x, &b, &sc, &sh))?;
                Ok(vec![("output".to_string(), Some(y))])
            }),
        ),
        (
            "unet3d forward + backward",
            1e-3,
            model_case(|store, dev| {
                let cfg = UNet3dConfig {
                    filters: 2,
                    depth: 2,
                    dropout: 0.0,
                    ..Default::default()
                };
                let net = UNet3d::new(&cfg, store.builder(DType::F32, dev))?;
                let x = ties(&[2, 1, 8, 8, 8], 1)?.to_device(dev)?;
                let labels = (ties(&[2, 8, 8, 8], 2)? * 1.5)?
                    .clamp(0.0, 2.0)?
                    .floor()?
                    .to_dtype(DType::U32)?
                    .to_device(dev)?;
                let p = candle_nn::ops::softmax(&net.forward_t(&x, true)?, 1)?;
                dice_loss(&p, &one_hot(&labels, 3, DType::F32)?, DiceVariant::Batch)
            }),
        ),
        // In f64: the stem's max pooling follows a ReLU, and in f32 a value within rounding of
        // zero on one side and exactly zero on the other moves a window's first maximum.
        (
            "densenet forward + backward (f64)",
            1e-8,
            model_case(|store, dev| {
                let cfg = DenseNetConfig {
                    in_channels: 3,
                    growth: 4,
                    blocks: vec![2, 2],
                    init_features: 8,
                    bn_size: 2,
                    ..Default::default()
                };
                let net = DenseNet::new(&cfg, store.builder(DType::F64, dev))?;
                let x = randn(&[2, 3, 32, 32], 3)?
                    .to_dtype(DType::F64)?
                    .to_device(dev)?;
                Ok(net.embed(&x, GlobalPool::Avg, true)?.sqr()?.mean_all()?)
            }),
        ),
    ]
}

/// One step of a pretext task's model, in f64: in f32, whole-model gradients of two correct
/// implementations differ by up to about 1e-2 (sums in another order, near-ties in pooling).
fn task_case(task: Task) -> Case {
    Box::new(move |dev| {
        let backbone = BackboneConfig::Unet(UNet3dConfig {
            filters: 2,
            depth: 2,
            dropout: 0.0,
            ..Default::default()
        });
        let head = MlpHeadConfig {
            hidden: vec![8],
            dropout: 0.0,
            seed: 0,
            momentum: 0.1,
        };
        let size = if task == Task::Rotation || task == Task::Exemplar {
            16
        } else {
            33
        };
        let sampler = Sampler::new(&TaskConfig::new(task), 1, [size; 3])?;
        let store = ParamStore::new(1);
        let model = PretextModel::new(&sampler, &backbone, &head, store.builder(DType::F64, dev))?;
        let data: Vec<Grid> = (0..4)
            .map(|i| {
                Grid::new(
                    randn(&[size * size * size], 50 + i)?.to_vec1::<f32>()?,
                    1,
                    [size; 3],
                )
            })
            .collect::<Result<_>>()?;
        let mut batch = sampler.batch(&data, &[0, 1, 2, 3], 5, true)?;
        batch.x = batch.x.to_dtype(DType::F64)?;
        let out = model.step(&batch, dev, true)?;
        let grads = out.loss.backward()?;
        let mut v = vec![("loss".to_string(), Some(out.loss.clone()))];
        for (n, var) in store.trainable("") {
            v.push((
                format!("gradient of {n}"),
                grads.get(var.as_tensor()).cloned(),
            ));
        }
        Ok(v)
    })
}

/// One parity case: a computation run on the CPU (the reference) and on the device.
pub struct ParityCase {
    /// What it computes.
    pub name: String,
    /// The largest relative error accepted.
    pub tol: f64,
    run: Case,
}

impl ParityCase {
    /// A case from a computation of outputs and gradients on a device.
    pub fn new(
        name: impl Into<String>,
        tol: f64,
        run: impl Fn(&Device) -> Result<Vec<(String, Option<Tensor>)>> + 'static,
    ) -> ParityCase {
        ParityCase {
            name: name.into(),
            tol,
            run: Box::new(run),
        }
    }
}

/// Every case: each op and layer, the models, and one step of each pretext task.
pub fn all_cases() -> Vec<ParityCase> {
    let mut all: Vec<ParityCase> = cases()
        .into_iter()
        .map(|(name, tol, run)| ParityCase {
            name: name.to_string(),
            tol,
            run,
        })
        .collect();
    for t in Task::ALL {
        all.push(ParityCase {
            name: format!("pretext {} step (f64)", t.name()),
            tol: 1e-8,
            run: task_case(t),
        });
    }
    all
}

/// Runs `cases` on `dev` against the CPU, one after another, and hands each finished check to
/// `report` at once (a hang later loses nothing printed). A case that fails with an error or
/// a panic is recorded as failed with its message, and the next case runs.
pub fn run_cases(
    cases: Vec<ParityCase>,
    dev: &Device,
    report: &mut dyn FnMut(&Check),
) -> Vec<Check> {
    let mut out = Vec::new();
    for ParityCase { name, tol, run } in cases {
        let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<_> {
            let reference = run(&Device::Cpu)?;
            let candidate = if dev.is_cpu() {
                ops::with_composed(|| run(dev))?
            } else {
                run(dev)?
            };
            compare(&candidate, &reference)
        }));
        let error = match &attempt {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(panic) => Some(format!(
                "panicked: {}",
                panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)")
            )),
        };
        let (rel_err, worst) = match attempt {
            Ok(Ok(r)) => r,
            _ => (f64::INFINITY, String::new()),
        };
        let check = Check {
            name,
            rel_err,
            tol,
            ok: error.is_none() && rel_err <= tol,
            worst,
            error,
        };
        report(&check);
        out.push(check);
    }
    out
}

/// Runs every case, or those whose name contains `filter`, on `dev` against the CPU kernels.
pub fn parity(dev: &Device, filter: Option<&str>, report: &mut dyn FnMut(&Check)) -> Vec<Check> {
    let cases = all_cases()
        .into_iter()
        .filter(|c| filter.is_none_or(|f| c.name.contains(f)))
        .collect();
    run_cases(cases, dev, report)
}
