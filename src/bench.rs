//! Benchmarks behind `pretext bench`: single ops (`ops`) and whole UNet3D training steps
//! (`models`), timed as medians after a warm-up. The same rows come out of
//! `scripts/bench_torch_ops.py` and `scripts/bench_torch.py`, so the two can be joined.

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};

use crate::Result;
use crate::nn::loss::{DiceVariant, cross_entropy, dice_loss, one_hot};
use crate::nn::{DenseNet, DenseNetConfig, GlobalPool, ParamStore, UNet3d, UNet3dConfig};
use crate::ops::{self, ConvSpec, PoolSpec};
use crate::train::optim::{Adam, AdamConfig};

/// One measured row.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    /// What was measured (`conv3d`, `unet3d_step`, ...).
    pub op: String,
    /// The shape, in the same words as the PyTorch scripts.
    pub shape: String,
    /// Forward time, ms (median).
    pub fwd_ms: f64,
    /// Forward + backward time, ms (median); for models, the whole training step.
    pub fwd_bwd_ms: f64,
    /// Achieved GFLOP/s of the forward + backward pass, where the FLOPs are known.
    pub gflops: Option<f64>,
    /// Peak resident memory of the process so far, MiB (Linux only); for model rows, since
    /// the row started (the peak is reset first where the OS allows it).
    pub peak_rss_mib: Option<f64>,
    /// Model rows: the first step's time, ms (weights just made, nothing warm yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_ms: Option<f64>,
    /// Model rows: user + system CPU time of the process per step, ms (median), which other
    /// work on the machine inflates less than the wall time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<f64>,
    /// Sampler rows: the time to copy as many bytes as the batch holds into a new buffer
    /// (all threads), ms (median): the memory-bound floor of building the batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy_ms: Option<f64>,
}

impl Row {
    /// A row of `op` on `shape` with its times and the peak memory so far, nothing else.
    fn timed(op: impl Into<String>, shape: String, fwd_ms: f64, fwd_bwd_ms: f64) -> Row {
        Row {
            op: op.into(),
            shape,
            fwd_ms,
            fwd_bwd_ms,
            gflops: None,
            peak_rss_mib: peak_rss_mib(),
            first_ms: None,
            cpu_ms: None,
            copy_ms: None,
        }
    }
}

/// User + system CPU time of the process so far, ms (Linux; `None` elsewhere).
pub fn cpu_time_ms() -> Option<f64> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: rusage is a plain C struct of integers, for which all zero bytes are valid.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: getrusage writes the struct it is given.
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } == 0 {
            let t = |v: libc::timeval| v.tv_sec as f64 * 1e3 + v.tv_usec as f64 * 1e-3;
            return Some(t(ru.ru_utime) + t(ru.ru_stime));
        }
    }
    None
}

/// The median wall time and the median CPU time of `f`'s timed runs, ms.
fn wall_and_cpu_ms(t: Timing, mut f: impl FnMut() -> Result<()>) -> Result<(f64, Option<f64>)> {
    for _ in 0..t.warmup {
        f()?;
    }
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..t.reps.max(1) {
        let (start, c0) = (Instant::now(), cpu_time_ms());
        f()?;
        wall.push(start.elapsed().as_secs_f64() * 1e3);
        if let (Some(a), Some(b)) = (c0, cpu_time_ms()) {
            cpu.push(b - a);
        }
    }
    wall.sort_by(f64::total_cmp);
    cpu.sort_by(f64::total_cmp);
    Ok((wall[wall.len() / 2], cpu.get(cpu.len() / 2).copied()))
}

/// How long to measure.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Untimed runs first.
    pub warmup: usize,
    /// Timed runs; the median is reported.
    pub reps: usize,
}

fn median_ms(t: Timing, f: impl FnMut() -> Result<()>) -> Result<f64> {
    Ok(first_and_median_ms(t, f)?.1)
}

/// The first run's time (warm-up or not) and the median of the timed runs, ms.
fn first_and_median_ms(t: Timing, mut f: impl FnMut() -> Result<()>) -> Result<(f64, f64)> {
    let mut first = None;
    let mut timed = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        let start = Instant::now();
        f()?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        first.get_or_insert(ms);
        Ok(ms)
    };
    for _ in 0..t.warmup {
        timed(&mut f)?;
    }
    let mut v = Vec::with_capacity(t.reps);
    for _ in 0..t.reps.max(1) {
        v.push(timed(&mut f)?);
    }
    v.sort_by(f64::total_cmp);
    Ok((first.unwrap_or(f64::NAN), v[v.len() / 2]))
}

/// Resets the process's peak resident set size to its current size (Linux: `clear_refs` 5),
/// so that a row reports its own peak; elsewhere a no-op.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's peak resident set size in MiB (`VmHWM`), where the OS reports it.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn sync(dev: &Device) -> Result<()> {
    Ok(dev.synchronize()?)
}

/// The convolution shapes of one UNet3D level: `(c_in, c_out, size)` for a batch of 2.
pub fn unet_conv_shapes(input: usize) -> Vec<(usize, usize, usize)> {
    let cfg = UNet3dConfig::default();
    let mut v = vec![(1, 16, input), (16, 16, input)];
    for l in 1..=cfg.depth {
        let s = input >> l;
        if s >= 2 {
            v.push((cfg.channels(l - 1), cfg.channels(l), s));
            v.push((cfg.channels(l), cfg.channels(l), s));
        }
    }
    v
}

/// Median times of `f` alone and of `f` followed by the backward pass of its output's sum, ms.
fn fwd_and_bwd_ms(t: Timing, dev: &Device, f: impl Fn() -> Result<Tensor>) -> Result<(f64, f64)> {
    let fwd = median_ms(t, || {
        f()?;
        sync(dev)
    })?;
    let fb = median_ms(t, || {
        f()?.sum_all()?.backward()?;
        sync(dev)
    })?;
    Ok((fwd, fb))
}

fn conv_row(c: usize, o: usize, s: usize, batch: usize, t: Timing, dev: &Device) -> Result<Row> {
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (batch, c, s, s, s), dev)?)?;
    let w = Var::from_tensor(&(Tensor::randn(0f32, 1.0, (o, c, 3, 3, 3), dev)? * 0.1)?)?;
    let spec = ConvSpec::uniform(1, 1);
    let (fwd, fb) = fwd_and_bwd_ms(t, dev, || ops::conv3d(x.as_tensor(), w.as_tensor(), spec))?;
    let flops = 2.0 * (batch * o * c * 27 * s * s * s) as f64;
    // The first layer's input gradient is computed here too (x is a variable).
    Ok(Row {
        gflops: Some(3.0 * flops / (fb * 1e6)),
        ..Row::timed("conv3d", format!("{batch}x{c}x{s}^3 {c}->{o} k3"), fwd, fb)
    })
}

/// The 2D convolutions of `bench ops`, DenseNet's: `(batch, c_in, c_out, size, kernel,
/// padding, stride)` (the stems of DenseNet-121 and of the quick profile's DenseNet, the 1×1
/// bottlenecks and the 3×3 convolutions of DenseNet-121's blocks).
pub fn conv2d_shapes() -> Vec<(usize, usize, usize, usize, usize, usize, usize)> {
    vec![
        (8, 3, 64, 224, 7, 3, 2),
        (16, 3, 16, 96, 7, 3, 2),
        (8, 256, 128, 56, 1, 0, 1),
        (8, 512, 128, 28, 1, 0, 1),
        (8, 1024, 128, 14, 1, 0, 1),
        (8, 128, 32, 56, 3, 1, 1),
        (8, 128, 32, 28, 3, 1, 1),
        (8, 128, 32, 14, 3, 1, 1),
        (8, 128, 32, 7, 3, 1, 1),
    ]
}

#[allow(clippy::too_many_arguments)]
fn conv2d_row(
    (n, c, o, s, k, p, st): (usize, usize, usize, usize, usize, usize, usize),
    t: Timing,
    dev: &Device,
) -> Result<Row> {
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, c, s, s), dev)?)?;
    let w = Var::from_tensor(&(Tensor::randn(0f32, 1.0, (o, c, k, k), dev)? * 0.1)?)?;
    let (fwd, fb) = fwd_and_bwd_ms(t, dev, || {
        ops::conv2d(x.as_tensor(), w.as_tensor(), [p; 2], [st; 2])
    })?;
    let so = (s + 2 * p - k) / st + 1;
    let flops = 2.0 * (n * o * c * k * k * so * so) as f64;
    Ok(Row {
        gflops: Some(3.0 * flops / (fb * 1e6)),
        ..Row::timed(
            "conv2d",
            format!("{n}x{c}x{s}^2 {c}->{o} k{k} s{st}"),
            fwd,
            fb,
        )
    })
}

fn unary_row(
    op: &str,
    shape: (usize, usize, usize),
    t: Timing,
    dev: &Device,
    f: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Row> {
    let (b, c, s) = shape;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, c, s, s, s), dev)?)?;
    let (fwd, fb) = fwd_and_bwd_ms(t, dev, || f(x.as_tensor()))?;
    Ok(Row::timed(op, format!("{b}x{c}x{s}^3"), fwd, fb))
}

/// `pretext bench ops`: the UNet's convolutions at `sizes` and its other ops, batch 2, then
/// (with `conv2d`) DenseNet's 2D convolutions ([`conv2d_shapes`]).
pub fn ops(sizes: &[usize], conv2d: bool, t: Timing, dev: &Device) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    // `--sizes 0` leaves out the 3D rows.
    for &size in sizes.iter().filter(|&&s| s > 0) {
        for (c, o, s) in unet_conv_shapes(size) {
            rows.push(conv_row(c, o, s, 2, t, dev)?);
        }
        let (c, s) = (16, size);
        rows.push(unary_row("max_pool3d", (2, c, s), t, dev, |x| {
            ops::max_pool3d(x, PoolSpec::cube(2))
        })?);
        rows.push(unary_row(
            "upsample_nearest3d",
            (2, 2 * c, s / 2),
            t,
            dev,
            |x| ops::upsample_nearest3d(x, 2),
        )?);
        let w = Var::from_tensor(&(Tensor::randn(0f32, 1.0, (2 * c, c, 2, 2, 2), dev)? * 0.1)?)?;
        rows.push(unary_row(
            "conv_transpose3d",
            (2, 2 * c, s / 2),
            t,
            dev,
            |x| ops::conv_transpose3d(x, w.as_tensor(), ConvSpec::uniform(0, 2)),
        )?);
        let gamma = Var::from_tensor(&Tensor::ones(c, DType::F32, dev)?)?;
        let beta = Var::from_tensor(&Tensor::zeros(c, DType::F32, dev)?)?;
        rows.push(unary_row("batch_norm", (2, c, s), t, dev, |x| {
            Ok(ops::batch_norm_train(x, gamma.as_tensor(), beta.as_tensor(), 1e-3)?.0)
        })?);
        rows.push(unary_row("relu", (2, c, s), t, dev, |x| Ok(x.relu()?))?);
    }
    if conv2d {
        for shape in conv2d_shapes() {
            rows.push(conv2d_row(shape, t, dev)?);
        }
    }
    Ok(rows)
}

/// Which networks `pretext bench models` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    /// The UNet3D at each of `--sizes`.
    Unet,
    /// DenseNet at the quick profile's shape and DenseNet-121 at the paper's.
    Densenet,
    /// The quick profile's DenseNet alone.
    DensenetQuick,
    /// DenseNet-121 alone.
    Densenet121,
    /// Both.
    All,
}

/// `pretext bench models`: training steps (forward, loss, backward, Adam) of the UNet3D at each
/// of `sizes` with `batch` volumes (Dice loss) and of the DenseNets of [`densenet_shapes`]
/// (linear head, cross-entropy) with `dense_batch` images (their own default when `None`); the
/// forward time is in training mode. Each row's peak memory is its own (reset before the row,
/// Linux).
pub fn models(
    kind: ModelKind,
    sizes: &[usize],
    (batch, dense_batch): (usize, Option<usize>),
    cfg: &UNet3dConfig,
    t: Timing,
    dev: &Device,
) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    if matches!(kind, ModelKind::Unet | ModelKind::All) {
        for &s in sizes {
            rows.push(unet_step(s, batch, cfg, t, dev)?);
        }
    }
    for (i, (shape, b, s, dcfg)) in densenet_shapes(dense_batch).into_iter().enumerate() {
        let wanted = match kind {
            ModelKind::Unet => false,
            ModelKind::DensenetQuick => i == 0,
            ModelKind::Densenet121 => i == 1,
            ModelKind::Densenet | ModelKind::All => true,
        };
        if wanted {
            rows.push(densenet_step(&shape, b, s, &dcfg, t, dev)?);
        }
    }
    Ok(rows)
}

fn unet_step(s: usize, batch: usize, cfg: &UNet3dConfig, t: Timing, dev: &Device) -> Result<Row> {
    reset_peak_rss();
    let store = ParamStore::new(0);
    let net = UNet3d::new(cfg, store.builder(DType::F32, dev))?;
    let mut opt = Adam::new(store.trainable(""), AdamConfig::with_lr(1e-4))?;
    let x = Tensor::rand(0f32, 1.0, (batch, cfg.in_channels, s, s, s), dev)?;
    let labels = (Tensor::rand(0f32, cfg.classes as f32, (batch, s, s, s), dev)?.floor()?)
        .clamp(0.0, (cfg.classes - 1) as f64)?
        .to_dtype(DType::U32)?;
    let y = one_hot(&labels, cfg.classes, DType::F32)?;
    let mut step = || -> Result<()> {
        let p = candle_nn::ops::softmax(&net.forward_t(&x, true)?, 1)?;
        opt.backward_step(&dice_loss(&p, &y, DiceVariant::Batch)?)?;
        sync(dev)
    };
    // The first step is timed before anything else ran on these weights.
    let (first, _) = first_and_median_ms(Timing { warmup: 0, reps: 1 }, &mut step)?;
    let fwd = median_ms(t, || {
        net.forward_t(&x, true)?;
        sync(dev)
    })?;
    let _ = ops::profile_report();
    let (step_ms, cpu_ms) = wall_and_cpu_ms(t, step)?;
    eprint!("{}", ops::profile_report());
    let shape = format!("{batch}x{}x{s}^3 f{}", cfg.in_channels, cfg.filters);
    Ok(Row {
        first_ms: Some(first),
        cpu_ms,
        ..Row::timed("unet3d_step", shape, fwd, step_ms)
    })
}

/// The DenseNet rows of `bench models`: `(shape name, batch, image size, network)`, the quick
/// profile's network on 16×3×96² and DenseNet-121 on the paper's 8×3×224², or both with
/// `batch` images. The names are those of `scripts/bench_torch.py`.
pub fn densenet_shapes(batch: Option<usize>) -> Vec<(String, usize, usize, DenseNetConfig)> {
    let quick = DenseNetConfig {
        in_channels: 3,
        growth: 8,
        blocks: vec![2, 4, 4],
        init_features: 16,
        bn_size: 2,
        ..Default::default()
    };
    let (b_quick, b_121) = (batch.unwrap_or(16), batch.unwrap_or(8));
    vec![
        (
            format!("{b_quick}x3x96^2 g8 b2-4-4 i16 bn2"),
            b_quick,
            96,
            quick,
        ),
        (
            format!("{b_121}x3x224^2 densenet121"),
            b_121,
            224,
            DenseNetConfig::densenet121(),
        ),
    ]
}

/// Classes of the DenseNet rows' linear head.
const DENSE_CLASSES: usize = 5;

fn densenet_step(
    shape: &str,
    batch: usize,
    s: usize,
    cfg: &DenseNetConfig,
    t: Timing,
    dev: &Device,
) -> Result<Row> {
    reset_peak_rss();
    let store = ParamStore::new(0);
    let vb = store.builder(DType::F32, dev);
    let net = DenseNet::new(cfg, vb.pp("encoder"))?;
    let head = crate::nn::linear(cfg.feature_channels(), DENSE_CLASSES, vb.pp("head"))?;
    let mut opt = Adam::new(store.trainable(""), AdamConfig::with_lr(1e-4))?;
    let x = Tensor::rand(0f32, 1.0, (batch, cfg.in_channels, s, s), dev)?;
    let labels: Vec<u32> = (0..batch).map(|i| (i % DENSE_CLASSES) as u32).collect();
    let labels = Tensor::from_vec(labels, batch, dev)?;
    let forward = || -> Result<Tensor> {
        let f = net.embed(&x, GlobalPool::Avg, true)?;
        Ok(candle_core::Module::forward(&head, &f)?)
    };
    let mut step = || -> Result<()> {
        opt.backward_step(&cross_entropy(&forward()?, &labels)?)?;
        sync(dev)
    };
    let (first, _) = first_and_median_ms(Timing { warmup: 0, reps: 1 }, &mut step)?;
    let fwd = median_ms(t, || {
        forward()?;
        sync(dev)
    })?;
    let _ = ops::profile_report();
    let (step_ms, cpu_ms) = wall_and_cpu_ms(t, step)?;
    eprint!("{}", ops::profile_report());
    Ok(Row {
        first_ms: Some(first),
        cpu_ms,
        ..Row::timed("densenet_step", shape.into(), fwd, step_ms)
    })
}

/// A forward pass alone (inference mode) at `size`, batch `batch`: time and peak memory.
pub fn forward_only(size: usize, batch: usize, cfg: &UNet3dConfig, dev: &Device) -> Result<Row> {
    let store = ParamStore::new(0);
    let net = UNet3d::new(cfg, store.builder(DType::F32, dev))?;
    let x = Tensor::rand(0f32, 1.0, (batch, cfg.in_channels, size, size, size), dev)?;
    let t = median_ms(Timing { warmup: 0, reps: 1 }, || {
        crate::ops::no_grad(|| net.forward_t(&x, false))?;
        sync(dev)
    })?;
    let shape = format!("{batch}x{}x{size}^3 f{}", cfg.in_channels, cfg.filters);
    Ok(Row::timed("unet3d_forward", shape, t, f64::NAN))
}

/// Renders rows as an aligned text table.
pub fn table(rows: &[Row]) -> String {
    let mut s = format!(
        "{:<20} {:<28} {:>10} {:>12} {:>8} {:>10} {:>10} {:>10} {:>8}\n",
        "op",
        "shape",
        "fwd ms",
        "fwd+bwd ms",
        "GFLOP/s",
        "peak MiB",
        "first ms",
        "CPU ms",
        "copy ms"
    );
    for r in rows {
        let opt =
            |v: Option<f64>, p: usize| v.map(|x| format!("{x:.p$}")).unwrap_or_else(|| "-".into());
        s.push_str(&format!(
            "{:<20} {:<28} {:>10.2} {:>12.2} {:>8} {:>10} {:>10} {:>10} {:>8}\n",
            r.op,
            r.shape,
            r.fwd_ms,
            r.fwd_bwd_ms,
            opt(r.gflops, 1),
            opt(r.peak_rss_mib, 0),
            opt(r.first_ms, 1),
            opt(r.cpu_ms, 1),
            opt(r.copy_ms, 2)
        ));
    }
    s
}

/// The time to copy `len` f32 values into a new buffer with every thread, ms (median).
fn copy_ms(len: usize, t: Timing) -> Result<f64> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 16;
    let src = vec![1f32; len];
    median_ms(t, || {
        let mut dst: Vec<f32> = Vec::with_capacity(len);
        dst.spare_capacity_mut()
            .par_chunks_mut(CHUNK)
            .zip(src.par_chunks(CHUNK))
            .for_each(|(d, s)| {
                for (a, &b) in d.iter_mut().zip(s) {
                    a.write(b);
                }
            });
        // SAFETY: the chunks above wrote all `len` values.
        unsafe { dst.set_len(len) };
        std::hint::black_box(&dst);
        Ok(())
    })
}

/// `pretext bench pretext`: the samplers at O's batch sizes on `size³` volumes held in memory
/// (`fwd_ms` is the time to build one batch; no model runs; `copy_ms` the time to copy as many
/// bytes). Compare with `scripts/bench_pretext_ref.py`.
pub fn pretext(size: usize, t: Timing) -> Result<Vec<Row>> {
    use crate::data::Grid;
    use crate::pretext::{Sampler, Task, TaskConfig};
    use rand::{RngExt, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    // Shared, as an in-memory dataset would hold them (no copy per batch).
    let vols: Vec<std::sync::Arc<Grid>> = (0..8)
        .map(|_| {
            let v = (0..size * size * size)
                .map(|_| rng.random::<f32>())
                .collect();
            Grid::new(v, 1, [size; 3]).map(std::sync::Arc::new)
        })
        .collect::<Result<_>>()?;
    let mut rows = Vec::new();
    for task in Task::ALL {
        let s = Sampler::new(&TaskConfig::new(task), 1, [size; 3])?;
        let bs = task.batch_size(false);
        let ids: Vec<usize> = (0..bs).map(|i| i % vols.len()).collect();
        let mut seed = 0;
        let mut elems = 0;
        let ms = median_ms(t, || {
            seed += 1;
            let b = s.batch(&vols, &ids, seed, true)?;
            elems = [
                Some(&b.x),
                b.y.as_ref(),
                b.context.as_ref(),
                b.targets.as_ref(),
            ]
            .into_iter()
            .flatten()
            .map(|t| t.elem_count())
            .sum();
            Ok(())
        })?;
        // The peak memory before the copy's buffers.
        let row = Row::timed(
            format!("sample_{}", task.name()),
            format!("{bs}x1x{size}^3"),
            ms,
            f64::NAN,
        );
        rows.push(Row {
            copy_ms: Some(copy_ms(elems, t)?),
            ..row
        });
    }
    Ok(rows)
}
