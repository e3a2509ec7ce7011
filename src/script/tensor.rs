//! The `tensor` domain: candle tensors in scripts.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use rand_distr::{Distribution, StandardNormal, StandardUniform};
use rhai::{Array, Dynamic, FLOAT, INT};

use super::HostState;
use super::api::Domain;
use super::convert::{RResult, ScriptResult, dim, dtype_name, index, number, rt_err, shape};
use crate::streams::{self, Stream};

/// Builds the `tensor` domain. Creation functions use the host's current device.
pub fn domain(state: &Arc<HostState>) -> Domain {
    let mut d = Domain::new(
        "tensor",
        "Tensors (candle): creation, arithmetic, reductions, shape manipulation, conversion. \
         Element-wise binary operations broadcast like NumPy.",
    );
    d.custom_type::<Tensor>("Tensor");
    creation(&mut d, state);
    properties(&mut d);
    arithmetic(&mut d);
    elementwise(&mut d);
    reductions(&mut d);
    shaping(&mut d);
    conversion(&mut d);
    d
}

fn creation(d: &mut Domain, state: &Arc<HostState>) {
    let s = state.clone();
    d.func(
        "zeros",
        "zeros(shape: Array) -> Tensor",
        "A tensor of zeros (f32).",
        move |sh: Array| Tensor::zeros(alloc_shape(&sh, "zeros")?, DType::F32, &s.device()).rt(),
    );
    let s = state.clone();
    d.func(
        "ones",
        "ones(shape: Array) -> Tensor",
        "A tensor of ones (f32).",
        move |sh: Array| Tensor::ones(alloc_shape(&sh, "ones")?, DType::F32, &s.device()).rt(),
    );
    let s = state.clone();
    d.func(
        "full",
        "full(shape: Array, value: FLOAT) -> Tensor",
        "A tensor filled with `value` (f32).",
        move |sh: Array, v: Dynamic| {
            let v = number(&v, "value")?;
            Tensor::full(v as f32, alloc_shape(&sh, "full")?, &s.device()).rt()
        },
    );
    let s = state.clone();
    d.func(
        "arange",
        "arange(end: INT) -> Tensor",
        "0, 1, ..., end-1 as f32.",
        move |end: INT| arange(0.0, end as f64, 1.0, &s.device()),
    );
    let s = state.clone();
    d.func(
        "arange",
        "arange(start: FLOAT, end: FLOAT) -> Tensor",
        "start, start+1, ... below end, as f32.",
        move |a: Dynamic, b: Dynamic| {
            arange(number(&a, "start")?, number(&b, "end")?, 1.0, &s.device())
        },
    );
    let s = state.clone();
    d.func(
        "arange",
        "arange(start: FLOAT, end: FLOAT, step: FLOAT) -> Tensor",
        "start, start+step, ... below end, as f32.",
        move |a: Dynamic, b: Dynamic, st: Dynamic| {
            arange(
                number(&a, "start")?,
                number(&b, "end")?,
                number(&st, "step")?,
                &s.device(),
            )
        },
    );
    let s = state.clone();
    d.func(
        "rand",
        "rand(shape: Array, seed: INT) -> Tensor",
        "Uniform [0, 1) values (f32) drawn from a generator seeded with `seed`.",
        move |sh: Array, seed: INT| random(&sh, seed, false, &s.device()),
    );
    let s = state.clone();
    d.func(
        "randn",
        "randn(shape: Array, seed: INT) -> Tensor",
        "Standard normal values (f32) drawn from a generator seeded with `seed`.",
        move |sh: Array, seed: INT| random(&sh, seed, true, &s.device()),
    );
    let s = state.clone();
    d.func(
        "tensor",
        "tensor(values: Array) -> Tensor",
        "A tensor (f32) from a number or nested arrays of numbers, e.g. tensor([[1, 2], [3, 4]]).",
        move |v: Array| from_nested(&Dynamic::from_array(v), &s.device()),
    );
    let s = state.clone();
    d.overload("tensor", move |v: FLOAT| {
        Tensor::new(v as f32, &s.device()).rt()
    });
}

/// A shape for a new f32 tensor: non-negative, countable and under the allocation limit.
fn alloc_shape(sh: &Array, what: &str) -> RResult<Vec<usize>> {
    let dims = shape(sh, "shape")?;
    crate::memory::check_shape(&dims, 4, what).rt()?;
    Ok(dims)
}

fn arange(start: f64, end: f64, step: f64, dev: &Device) -> RResult<Tensor> {
    if step == 0.0 || !step.is_finite() || !start.is_finite() || !end.is_finite() {
        return Err(rt_err(format!(
            "arange: expected finite start/end and a non-zero step, got {start}, {end}, {step}"
        )));
    }
    let nf = ((end - start) / step).ceil().max(0.0);
    if !nf.is_finite() || nf > (1u64 << 52) as f64 {
        return Err(rt_err(format!(
            "arange({start}, {end}, {step}): {nf:e} elements are too many"
        )));
    }
    let n = nf as usize;
    crate::memory::check(n, 4, "arange").rt()?;
    let v: Vec<f32> = (0..n).map(|i| (start + step * i as f64) as f32).collect();
    Tensor::from_vec(v, n, dev).rt()
}

fn random(sh: &Array, seed: INT, normal: bool, dev: &Device) -> RResult<Tensor> {
    let dims = shape(sh, "shape")?;
    let n = crate::memory::check_shape(&dims, 4, if normal { "randn" } else { "rand" }).rt()?;
    let seed = u64::try_from(seed)
        .map_err(|_| crate::Error::arg("seed", format!("expected a seed ≥ 0, got {seed}")))
        .rt()?;
    let mut rng = streams::rng(seed, Stream::Script, 0);
    let v: Vec<f32> = if normal {
        (0..n).map(|_| StandardNormal.sample(&mut rng)).collect()
    } else {
        (0..n).map(|_| StandardUniform.sample(&mut rng)).collect()
    };
    Tensor::from_vec(v, dims, dev).rt()
}

fn from_nested(v: &Dynamic, dev: &Device) -> RResult<Tensor> {
    fn walk(v: &Dynamic, depth: usize, shape: &mut Vec<usize>, out: &mut Vec<f32>) -> RResult<()> {
        if v.is_array() {
            let arr = v
                .read_lock::<Array>()
                .ok_or_else(|| rt_err("tensor: unreadable array"))?;
            if shape.len() == depth {
                shape.push(arr.len());
            } else if shape.len() < depth || shape[depth] != arr.len() {
                return Err(rt_err(format!(
                    "tensor: ragged nested array: expected {} elements at depth {depth}, got {}",
                    shape.get(depth).copied().unwrap_or(0),
                    arr.len()
                )));
            }
            for x in arr.iter() {
                walk(x, depth + 1, shape, out)?;
            }
            Ok(())
        } else {
            if depth != shape.len() {
                return Err(rt_err(format!(
                    "tensor: ragged nested array: a number at depth {depth}"
                )));
            }
            out.push(number(v, "tensor element")? as f32);
            Ok(())
        }
    }
    let (mut shape, mut out) = (Vec::new(), Vec::new());
    walk(v, 0, &mut shape, &mut out)?;
    if out.len() != shape.iter().product::<usize>() {
        return Err(rt_err(format!(
            "tensor: ragged nested array of shape {shape:?}"
        )));
    }
    Tensor::from_vec(out, shape, dev).rt()
}

fn properties(d: &mut Domain) {
    d.getter(
        "shape",
        "t.shape -> Array",
        "The dimensions, e.g. [2, 3].",
        |t: &mut Tensor| {
            Ok(t.dims()
                .iter()
                .map(|&x| Dynamic::from_int(x as INT))
                .collect::<Array>())
        },
    );
    d.getter(
        "rank",
        "t.rank -> INT",
        "The number of dimensions.",
        |t: &mut Tensor| Ok(t.rank() as INT),
    );
    d.getter(
        "dtype",
        "t.dtype -> String",
        "The element type: f32, f64, u8, u32, i64, ...",
        |t: &mut Tensor| Ok(dtype_name(t.dtype()).to_string()),
    );
    d.getter(
        "device",
        "t.device -> String",
        "Where the tensor lives: cpu or cuda.",
        |t: &mut Tensor| Ok(super::convert::device_name(t.device())),
    );
    d.func(
        "numel",
        "t.numel() -> INT",
        "The number of elements.",
        |t: &mut Tensor| Ok(t.elem_count() as INT),
    );
}

/// Registers `op` for tensor⊕tensor, tensor⊕FLOAT/INT and FLOAT/INT⊕tensor.
macro_rules! binary {
    ($d:expr, $op:literal, $sig:literal, $doc:literal, $tt:expr, $ts:expr, $st:expr) => {{
        $d.func($op, $sig, $doc, |a: Tensor, b: Tensor| ($tt)(&a, &b).rt());
        $d.overload($op, |a: Tensor, b: FLOAT| ($ts)(&a, b).rt());
        $d.overload($op, |a: Tensor, b: INT| ($ts)(&a, b as f64).rt());
        $d.overload($op, |a: FLOAT, b: Tensor| ($st)(a, &b).rt());
        $d.overload($op, |a: INT, b: Tensor| ($st)(a as f64, &b).rt());
    }};
}

fn arithmetic(d: &mut Domain) {
    binary!(
        d,
        "+",
        "a + b (Tensor or number)",
        "Element-wise sum, broadcasting.",
        |a: &Tensor, b: &Tensor| a.broadcast_add(b),
        |a: &Tensor, s: f64| a.affine(1.0, s),
        |s: f64, b: &Tensor| b.affine(1.0, s)
    );
    binary!(
        d,
        "-",
        "a - b (Tensor or number)",
        "Element-wise difference, broadcasting.",
        |a: &Tensor, b: &Tensor| a.broadcast_sub(b),
        |a: &Tensor, s: f64| a.affine(1.0, -s),
        |s: f64, b: &Tensor| b.affine(-1.0, s)
    );
    binary!(
        d,
        "*",
        "a * b (Tensor or number)",
        "Element-wise product, broadcasting.",
        |a: &Tensor, b: &Tensor| a.broadcast_mul(b),
        |a: &Tensor, s: f64| a.affine(s, 0.0),
        |s: f64, b: &Tensor| b.affine(s, 0.0)
    );
    binary!(
        d,
        "/",
        "a / b (Tensor or number)",
        "Element-wise quotient, broadcasting.",
        |a: &Tensor, b: &Tensor| a.broadcast_div(b),
        |a: &Tensor, s: f64| a.affine(1.0 / s, 0.0),
        |s: f64, b: &Tensor| b.recip().and_then(|r| r.affine(s, 0.0))
    );
    d.func("-", "-t", "Negation.", |a: Tensor| a.neg().rt());
    d.func(
        "matmul",
        "a.matmul(b: Tensor) -> Tensor",
        "Matrix product over the last two dimensions, batch dimensions broadcast.",
        |a: Tensor, b: Tensor| a.broadcast_matmul(&b).rt(),
    );
    comparison(d);
}

fn mask(t: candle_core::Result<Tensor>, like: &Tensor) -> RResult<Tensor> {
    let dt = if like.dtype().is_float() {
        like.dtype()
    } else {
        DType::F32
    };
    t.and_then(|m| m.to_dtype(dt)).rt()
}

macro_rules! compare {
    ($d:expr, $name:literal, $op:literal, $sig:literal, $doc:literal, $m:ident, $bm:ident) => {{
        $d.func($name, $sig, $doc, |a: Tensor, b: Tensor| {
            mask(a.$bm(&b), &a)
        });
        $d.overload($name, |a: Tensor, b: FLOAT| mask(a.$m(b), &a));
        $d.overload($name, |a: Tensor, b: INT| mask(a.$m(b as f64), &a));
        $d.document($op, $sig, $doc);
        $d.overload($op, |a: Tensor, b: Tensor| mask(a.$bm(&b), &a));
        $d.overload($op, |a: Tensor, b: FLOAT| mask(a.$m(b), &a));
        $d.overload($op, |a: Tensor, b: INT| mask(a.$m(b as f64), &a));
    }};
}

fn comparison(d: &mut Domain) {
    compare!(
        d,
        "gt",
        ">",
        "a.gt(b) / a > b -> Tensor",
        "1.0 where a > b, else 0.0.",
        gt,
        broadcast_gt
    );
    compare!(
        d,
        "ge",
        ">=",
        "a.ge(b) / a >= b -> Tensor",
        "1.0 where a >= b, else 0.0.",
        ge,
        broadcast_ge
    );
    compare!(
        d,
        "lt",
        "<",
        "a.lt(b) / a < b -> Tensor",
        "1.0 where a < b, else 0.0.",
        lt,
        broadcast_lt
    );
    compare!(
        d,
        "le",
        "<=",
        "a.le(b) / a <= b -> Tensor",
        "1.0 where a <= b, else 0.0.",
        le,
        broadcast_le
    );
    d.func(
        "eq",
        "a.eq(b) -> Tensor",
        "1.0 where a == b, else 0.0 (b: Tensor or number).",
        |a: Tensor, b: Tensor| mask(a.broadcast_eq(&b), &a),
    );
    d.overload("eq", |a: Tensor, b: FLOAT| mask(a.eq(b), &a));
    d.overload("eq", |a: Tensor, b: INT| mask(a.eq(b as f64), &a));
    d.func(
        "ne",
        "a.ne(b) -> Tensor",
        "1.0 where a != b, else 0.0 (b: Tensor or number).",
        |a: Tensor, b: Tensor| mask(a.broadcast_ne(&b), &a),
    );
    d.overload("ne", |a: Tensor, b: FLOAT| mask(a.ne(b), &a));
    d.overload("ne", |a: Tensor, b: INT| mask(a.ne(b as f64), &a));
}

fn elementwise(d: &mut Domain) {
    d.func(
        "exp",
        "t.exp() -> Tensor",
        "Element-wise e^x.",
        |t: Tensor| t.exp().rt(),
    );
    d.func(
        "log",
        "t.log() -> Tensor",
        "Element-wise natural logarithm.",
        |t: Tensor| t.log().rt(),
    );
    d.func(
        "sqrt",
        "t.sqrt() -> Tensor",
        "Element-wise square root.",
        |t: Tensor| t.sqrt().rt(),
    );
    d.func(
        "abs",
        "t.abs() -> Tensor",
        "Element-wise absolute value.",
        |t: Tensor| t.abs().rt(),
    );
    d.func(
        "relu",
        "t.relu() -> Tensor",
        "Element-wise max(x, 0).",
        |t: Tensor| crate::ops::relu(&t).rt(),
    );
    d.func(
        "sigmoid",
        "t.sigmoid() -> Tensor",
        "Element-wise 1 / (1 + e^-x).",
        |t: Tensor| candle_nn::ops::sigmoid(&t).rt(),
    );
    d.func(
        "softmax",
        "t.softmax(dim: INT) -> Tensor",
        "Softmax along `dim` (negative counts from the end).",
        |t: Tensor, dm: INT| {
            let dm = dim(&t, dm)?;
            candle_nn::ops::softmax(&t, dm).rt()
        },
    );
    d.func(
        "pow",
        "t.pow(p: FLOAT) -> Tensor",
        "Element-wise x^p.",
        |t: Tensor, p: Dynamic| t.powf(number(&p, "p")?).rt(),
    );
    d.func(
        "clamp",
        "t.clamp(lo: FLOAT, hi: FLOAT) -> Tensor",
        "Element-wise min(max(x, lo), hi).",
        |t: Tensor, lo: Dynamic, hi: Dynamic| t.clamp(number(&lo, "lo")?, number(&hi, "hi")?).rt(),
    );
}

fn reductions(d: &mut Domain) {
    d.func(
        "sum",
        "t.sum() -> Tensor",
        "Sum of all elements (a rank-0 tensor).",
        |t: Tensor| t.sum_all().rt(),
    );
    d.func(
        "sum",
        "t.sum(dim: INT) -> Tensor",
        "Sum along `dim`, which is removed.",
        |t: Tensor, dm: INT| t.sum(dim(&t, dm)?).rt(),
    );
    d.func(
        "mean",
        "t.mean() -> Tensor",
        "Mean of all elements.",
        |t: Tensor| t.mean_all().rt(),
    );
    d.func(
        "mean",
        "t.mean(dim: INT) -> Tensor",
        "Mean along `dim`, which is removed.",
        |t: Tensor, dm: INT| t.mean(dim(&t, dm)?).rt(),
    );
    d.func(
        "max",
        "t.max() -> Tensor",
        "Largest element.",
        |t: Tensor| t.flatten_all().and_then(|f| f.max(0)).rt(),
    );
    d.func(
        "max",
        "t.max(dim: INT) -> Tensor",
        "Largest values along `dim`, which is removed.",
        |t: Tensor, dm: INT| t.max(dim(&t, dm)?).rt(),
    );
    d.func(
        "min",
        "t.min() -> Tensor",
        "Smallest element.",
        |t: Tensor| t.flatten_all().and_then(|f| f.min(0)).rt(),
    );
    d.func(
        "min",
        "t.min(dim: INT) -> Tensor",
        "Smallest values along `dim`, which is removed.",
        |t: Tensor, dm: INT| t.min(dim(&t, dm)?).rt(),
    );
    d.func(
        "l2_normalize",
        "t.l2_normalize(dim: INT) -> Tensor",
        "x / max(‖x‖₂, 1e-12) along `dim` (PyTorch's F.normalize): unit vectors, e.g. rows of \
         embeddings before cosine similarities.",
        |t: Tensor, dm: INT| l2_normalize(&t, dim(&t, dm)?).rt(),
    );
    d.func(
        "argmax",
        "t.argmax() -> Tensor",
        "Flat index of the largest element (u32).",
        |t: Tensor| t.flatten_all().and_then(|f| f.argmax(0)).rt(),
    );
    d.func(
        "argmax",
        "t.argmax(dim: INT) -> Tensor",
        "Indices of the largest values along `dim` (u32).",
        |t: Tensor, dm: INT| t.argmax(dim(&t, dm)?).rt(),
    );
}

/// `t` divided by its L2 norm along `dim`, the norm floored at 1e-12 as PyTorch's.
fn l2_normalize(t: &Tensor, dim: usize) -> candle_core::Result<Tensor> {
    let norm = t.sqr()?.sum_keepdim(dim)?.sqrt()?.maximum(1e-12)?;
    t.broadcast_div(&norm)
}

fn shaping(d: &mut Domain) {
    d.func(
        "reshape",
        "t.reshape(shape: Array) -> Tensor",
        "Same elements in a new shape; one entry may be -1 (inferred).",
        |t: Tensor, sh: Array| {
            let dims = super::convert::ints(&sh, "shape")?;
            let known: i64 = dims.iter().filter(|&&x| x >= 0).product();
            let unknown = dims.iter().filter(|&&x| x < 0).count();
            if unknown > 1 || dims.iter().any(|&x| x < -1) {
                return Err(rt_err(format!(
                    "reshape: at most one -1 allowed, got {dims:?}"
                )));
            }
            let n = t.elem_count() as i64;
            let dims: Vec<usize> = dims
                .iter()
                .map(|&x| {
                    if x < 0 && known > 0 {
                        (n / known) as usize
                    } else {
                        x.max(0) as usize
                    }
                })
                .collect();
            if dims.iter().product::<usize>() != t.elem_count() {
                return Err(rt_err(format!(
                    "reshape: cannot view shape {:?} ({n} elements) as {dims:?}",
                    t.dims()
                )));
            }
            t.reshape(dims).rt()
        },
    );
    d.func(
        "permute",
        "t.permute(dims: Array) -> Tensor",
        "Reorders the dimensions.",
        |t: Tensor, p: Array| {
            let p = super::convert::ints(&p, "dims")?;
            let dims = p.iter().map(|&x| dim(&t, x)).collect::<RResult<Vec<_>>>()?;
            t.permute(dims).rt()
        },
    );
    d.func(
        "transpose",
        "t.transpose(a: INT, b: INT) -> Tensor",
        "Swaps two dimensions.",
        |t: Tensor, a: INT, b: INT| t.transpose(dim(&t, a)?, dim(&t, b)?).rt(),
    );
    d.func(
        "narrow",
        "t.narrow(dim: INT, start: INT, len: INT) -> Tensor",
        "The slice start..start+len along `dim`.",
        |t: Tensor, dm: INT, start: INT, len: INT| {
            t.narrow(dim(&t, dm)?, index(start, "start")?, index(len, "len")?)
                .rt()
        },
    );
    d.func(
        "cat",
        "cat(ts: Array, dim: INT) -> Tensor",
        "Concatenates tensors along an existing dimension.",
        |ts: Array, dm: INT| {
            let ts = tensors(ts)?;
            let dm = dim(&ts[0], dm)?;
            Tensor::cat(&ts, dm).rt()
        },
    );
    d.func(
        "stack",
        "stack(ts: Array, dim: INT) -> Tensor",
        "Stacks tensors along a new dimension.",
        |ts: Array, dm: INT| {
            let ts = tensors(ts)?;
            let rank = ts[0].rank() as INT + 1;
            let dm = if dm < 0 { dm + rank } else { dm };
            if !(0..rank).contains(&dm) {
                return Err(rt_err(format!(
                    "stack: dimension out of range for rank {rank}"
                )));
            }
            Tensor::stack(&ts, dm as usize).rt()
        },
    );
    d.func(
        "squeeze",
        "t.squeeze(dim: INT) -> Tensor",
        "Removes a dimension of size 1.",
        |t: Tensor, dm: INT| {
            let dm = dim(&t, dm)?;
            if t.dims()[dm] != 1 {
                return Err(rt_err(format!(
                    "squeeze: dimension {dm} of shape {:?} has size {}, not 1",
                    t.dims(),
                    t.dims()[dm]
                )));
            }
            t.squeeze(dm).rt()
        },
    );
    d.func(
        "unsqueeze",
        "t.unsqueeze(dim: INT) -> Tensor",
        "Inserts a dimension of size 1.",
        |t: Tensor, dm: INT| {
            let rank = t.rank() as INT + 1;
            let dm = if dm < 0 { dm + rank } else { dm };
            if !(0..rank).contains(&dm) {
                return Err(rt_err(format!(
                    "unsqueeze: dimension out of range for rank {rank}"
                )));
            }
            t.unsqueeze(dm as usize).rt()
        },
    );
    d.func(
        "flatten",
        "t.flatten() -> Tensor",
        "All elements in one dimension.",
        |t: Tensor| t.flatten_all().rt(),
    );
    d.module_mut()
        .set_indexer_get_fn(|t: &mut Tensor, i: INT| -> RResult<Dynamic> { get(t, i) });
    d.document(
        "[]",
        "t[i] -> Tensor or FLOAT",
        "The i-th sub-tensor along dim 0 (a number for rank 1); negative i counts from the end.",
    );
}

fn get(t: &Tensor, i: INT) -> RResult<Dynamic> {
    if t.rank() == 0 {
        return Err(rt_err("cannot index a rank-0 tensor; use to_float()"));
    }
    let n = t.dims()[0] as INT;
    let j = if i < 0 { i + n } else { i };
    if !(0..n).contains(&j) {
        return Err(rt_err(format!(
            "index {i} out of range for dimension 0 of size {n} (shape {:?})",
            t.dims()
        )));
    }
    let sub = t.get(j as usize).rt()?;
    if sub.rank() == 0 {
        scalar(&sub)
    } else {
        Ok(Dynamic::from(sub))
    }
}

fn tensors(ts: Array) -> RResult<Vec<Tensor>> {
    if ts.is_empty() {
        return Err(rt_err("expected a non-empty array of tensors"));
    }
    ts.into_iter()
        .enumerate()
        .map(|(i, v)| {
            let tn = v.type_name();
            v.try_cast::<Tensor>()
                .ok_or_else(|| rt_err(format!("element {i}: expected a Tensor, got {tn}")))
        })
        .collect()
}

fn scalar(t: &Tensor) -> RResult<Dynamic> {
    let v = t
        .to_dtype(DType::F64)
        .and_then(|x| x.to_scalar::<f64>())
        .rt()?;
    Ok(if t.dtype().is_int() {
        Dynamic::from_int(v as INT)
    } else {
        Dynamic::from_float(v)
    })
}

fn conversion(d: &mut Domain) {
    d.func(
        "to_float",
        "t.to_float() -> FLOAT",
        "The value of a one-element tensor.",
        |t: Tensor| {
            if t.elem_count() != 1 {
                return Err(rt_err(format!(
                    "to_float: expected a one-element tensor, got shape {:?}",
                    t.dims()
                )));
            }
            t.flatten_all()
                .and_then(|f| f.to_dtype(DType::F64)?.get(0)?.to_scalar::<f64>())
                .rt()
        },
    );
    d.func(
        "to_array",
        "t.to_array() -> Array",
        "Nested arrays of numbers (INT for integer dtypes).",
        |t: Tensor| to_array(&t),
    );
    d.func(
        "to_dtype",
        "t.to_dtype(name: String) -> Tensor",
        "Converts the element type (f32, f64, u8, u32, i64, bf16, f16).",
        |t: Tensor, n: &str| t.to_dtype(super::convert::parse_dtype(n)?).rt(),
    );
    d.func(
        "to_device",
        "t.to_device(name: String) -> Tensor",
        "Copies the tensor to cpu or cuda[:N].",
        |t: Tensor, n: &str| {
            let dev = super::convert::parse_device(n).rt()?;
            t.to_device(&dev).rt()
        },
    );
    d.func(
        "to_string",
        "t.to_string() -> String",
        "Shape, dtype, device and a few values (what print shows).",
        |t: &mut Tensor| Ok(describe(t)),
    );
    d.func(
        "to_debug",
        "t.to_debug() -> String",
        "Same as to_string.",
        |t: &mut Tensor| Ok(describe(t)),
    );
}

fn to_array(t: &Tensor) -> RResult<Array> {
    if t.rank() == 0 {
        return Ok(vec![scalar(t)?]);
    }
    let flat = t
        .flatten_all()
        .and_then(|f| f.to_dtype(DType::F64)?.to_vec1::<f64>())
        .rt()?;
    let int = t.dtype().is_int();
    fn build(flat: &[f64], dims: &[usize], int: bool) -> Array {
        if dims.len() == 1 {
            return flat
                .iter()
                .map(|&v| {
                    if int {
                        Dynamic::from_int(v as INT)
                    } else {
                        Dynamic::from_float(v)
                    }
                })
                .collect();
        }
        let step = dims[1..].iter().product::<usize>().max(1);
        (0..dims[0])
            .map(|i| Dynamic::from_array(build(&flat[i * step..(i + 1) * step], &dims[1..], int)))
            .collect()
    }
    Ok(build(&flat, t.dims(), int))
}

/// One-line description of a tensor with a few of its values.
pub fn describe(t: &Tensor) -> String {
    let head = format!(
        "Tensor[{}] {} {}",
        t.dims()
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        dtype_name(t.dtype()),
        super::convert::device_name(t.device())
    );
    let n = t.elem_count();
    let values = t.flatten_all().and_then(|f| {
        let idx: Vec<usize> = if n <= 8 {
            (0..n).collect()
        } else {
            (0..3).chain(n - 3..n).collect()
        };
        let f = f.to_dtype(DType::F64)?;
        idx.iter()
            .map(|&i| f.get(i)?.to_scalar::<f64>())
            .collect::<candle_core::Result<Vec<f64>>>()
    });
    match values {
        Ok(v) => {
            let fmt = |x: &f64| {
                if t.dtype().is_int() {
                    format!("{}", *x as i64)
                } else {
                    format!("{x:.4}")
                }
            };
            let parts: Vec<String> = v.iter().map(fmt).collect();
            if n <= 8 {
                format!("{head} [{}]", parts.join(", "))
            } else {
                format!(
                    "{head} [{}, ..., {}]",
                    parts[..3].join(", "),
                    parts[3..].join(", ")
                )
            }
        }
        Err(_) => head,
    }
}
