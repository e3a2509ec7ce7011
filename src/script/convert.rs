//! Conversions between Rhai values and Rust/candle values, and error mapping.

use candle_core::{DType, Device, Tensor};
use rhai::{Array, Dynamic, EvalAltResult, FLOAT, INT, Position};

/// The result type of every script function.
pub type RResult<T> = Result<T, Box<EvalAltResult>>;

/// A runtime error carrying `msg`; Rhai fills in the script position of the call.
pub fn rt_err(msg: impl std::fmt::Display) -> Box<EvalAltResult> {
    EvalAltResult::ErrorRuntime(msg.to_string().into(), Position::NONE).into()
}

/// Maps any displayable error into a script runtime error.
pub trait ScriptResult<T> {
    /// The error becomes a script runtime error with the same message.
    fn rt(self) -> RResult<T>;
}

impl<T, E: std::fmt::Display> ScriptResult<T> for Result<T, E> {
    fn rt(self) -> RResult<T> {
        self.map_err(rt_err)
    }
}

/// A number (INT or FLOAT) as f64; `what` names the argument in the error.
pub fn number(v: &Dynamic, what: &str) -> RResult<f64> {
    if let Some(f) = v.clone().try_cast::<FLOAT>() {
        Ok(f)
    } else if let Some(i) = v.clone().try_cast::<INT>() {
        Ok(i as f64)
    } else {
        Err(rt_err(format!(
            "{what}: expected a number, got {}",
            v.type_name()
        )))
    }
}

/// A non-negative integer argument as usize.
pub fn index(v: INT, what: &str) -> RResult<usize> {
    usize::try_from(v)
        .map_err(|_| rt_err(format!("{what}: expected a non-negative integer, got {v}")))
}

/// A seed argument: a non-negative integer.
pub fn seed(v: INT, what: &str) -> RResult<u64> {
    u64::try_from(v).map_err(|_| rt_err(format!("{what}: expected a seed ≥ 0, got {v}")))
}

/// A shape given as an array of non-negative integers.
pub fn shape(arr: &Array, what: &str) -> RResult<Vec<usize>> {
    let dims = arr
        .iter()
        .map(|d| match d.as_int() {
            Ok(i) if i >= 0 => Ok(i as usize),
            _ => Err(rt_err(format!(
                "{what}: expected an array of non-negative integers, got element {d} ({})",
                d.type_name()
            ))),
        })
        .collect::<RResult<Vec<usize>>>()?;
    crate::memory::elements(&dims, what).map_err(|e| rt_err(e.to_string()))?;
    Ok(dims)
}

/// An array of integers (may be negative).
pub fn ints(arr: &Array, what: &str) -> RResult<Vec<INT>> {
    arr.iter()
        .map(|d| {
            d.as_int()
                .map_err(|t| rt_err(format!("{what}: expected integers, got {t}")))
        })
        .collect()
}

/// An array of numbers as f64.
pub fn floats(arr: &Array, what: &str) -> RResult<Vec<f64>> {
    arr.iter().map(|d| number(d, what)).collect()
}

/// Resolves a possibly negative dimension index against `rank`.
pub fn dim(t: &Tensor, d: INT) -> RResult<usize> {
    let rank = t.rank() as INT;
    let r = if d < 0 { d + rank } else { d };
    if r < 0 || r >= rank.max(1) || (rank == 0) {
        return Err(rt_err(format!(
            "dimension {d} out of range for a tensor of rank {rank} (shape {:?})",
            t.dims()
        )));
    }
    Ok(r as usize)
}

/// The name scripts use for a dtype.
pub fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::U8 => "u8",
        DType::U32 => "u32",
        DType::I64 => "i64",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        DType::F32 => "f32",
        DType::F64 => "f64",
        _ => "other",
    }
}

/// Parses a dtype name.
pub fn parse_dtype(name: &str) -> RResult<DType> {
    Ok(match name {
        "u8" => DType::U8,
        "u32" => DType::U32,
        "i64" => DType::I64,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        "f32" => DType::F32,
        "f64" => DType::F64,
        _ => {
            return Err(rt_err(format!(
                "unknown dtype `{name}`; expected u8 u32 i64 bf16 f16 f32 f64"
            )));
        }
    })
}

/// The name scripts use for a device.
pub fn device_name(d: &Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => "cuda".into(),
        Device::Metal(_) => "metal".into(),
    }
}

/// Parses `cpu`, `cuda` or `cuda:N`; says plainly when this build has no CUDA.
pub fn parse_device(name: &str) -> crate::Result<Device> {
    let name = name.trim();
    if name == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match name.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| {
                crate::Error::arg(
                    "device",
                    format!("expected cpu, cuda or cuda:N, got `{name}`"),
                )
            })?,
        None => {
            return Err(crate::Error::arg(
                "device",
                format!("expected cpu, cuda or cuda:N, got `{name}`"),
            ));
        }
    };
    if !candle_core::utils::cuda_is_available() {
        return Err(crate::Error::arg(
            "device",
            "CUDA is not available: this pretext binary was built without the `cuda` feature \
             (build one with scripts/build-cuda.sh), or no NVIDIA driver/GPU was found",
        ));
    }
    Device::new_cuda(ordinal).map_err(|e| {
        // candle's message may carry a backtrace; its first line says what failed.
        let what = e.to_string();
        let first = what.lines().next().unwrap_or("").trim();
        crate::Error::arg(
            "device",
            format!(
                "cannot open cuda:{ordinal} ({first}); is an NVIDIA GPU with its driver present?"
            ),
        )
    })
}
