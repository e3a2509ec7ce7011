//! A limit on single allocations, so that a mistyped shape is an error naming the request
//! rather than an abort (or a silently wrapped element count).
//!
//! The limit is `PRETEXT_MAX_ALLOC` (bytes, with an optional `K`, `M`, `G` or `T` suffix,
//! powers of 1024; `0` or `off` disables it), else half of the machine's physical memory
//! (else 64 GiB where that cannot be read).

use std::sync::OnceLock;

use crate::error::{Error, Result};

/// The environment variable that sets the allocation limit.
pub const MAX_ALLOC_ENV: &str = "PRETEXT_MAX_ALLOC";

/// The product of `dims`, or an error naming `what` when it does not fit in a `usize`.
pub fn elements(dims: &[usize], what: &str) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| {
            Error::arg(
                what,
                format!("shape {dims:?} has more elements than can be addressed"),
            )
        })
}

/// The physical memory of this machine in bytes, where it can be read.
pub fn physical_memory() -> Option<u64> {
    static MEM: OnceLock<Option<u64>> = OnceLock::new();
    *MEM.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        kb.checked_mul(1024)
    })
}

/// Parses a size such as `8G`, `512M`, `1048576` (bytes; suffixes are powers of 1024).
pub fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'B' => 1,
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1u64 << 40,
                _ => return None,
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let v: f64 = num.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some((v * mult as f64) as u64)
}

/// The current limit in bytes (`None`: no limit).
pub fn limit() -> Option<u64> {
    match std::env::var(MAX_ALLOC_ENV) {
        Ok(v) if matches!(v.trim(), "0" | "off" | "none") => None,
        Ok(v) => Some(parse_size(&v).unwrap_or_else(default_limit)),
        Err(_) => Some(default_limit()),
    }
}

fn default_limit() -> u64 {
    physical_memory().map_or(64 << 30, |m| m / 2)
}

/// Human-readable bytes.
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..1024 => format!("{bytes} B"),
        1024..1_048_576 => format!("{:.1} KiB", b / 1024.0),
        1_048_576..1_073_741_824 => format!("{:.1} MiB", b / 1_048_576.0),
        _ if b < 1_099_511_627_776.0 => format!("{:.1} GiB", b / 1_073_741_824.0),
        _ => format!("{:.1} TiB", b / 1_099_511_627_776.0),
    }
}

/// Checks that `n` elements of `elem_bytes` bytes each fit under the limit; the error names
/// `what` (the request) and the limit.
pub fn check(n: usize, elem_bytes: usize, what: &str) -> Result<()> {
    let bytes = (n as u128) * (elem_bytes as u128);
    if let Some(limit) = limit()
        && bytes > limit as u128
    {
        let shown = u64::try_from(bytes).map_or_else(|_| format!("{bytes} B"), human);
        return Err(Error::arg(
            what,
            format!(
                "{n} elements ({shown}) exceed the allocation limit of {} (set {MAX_ALLOC_ENV}, \
                 e.g. {MAX_ALLOC_ENV}=64G, to change it)",
                human(limit)
            ),
        ));
    }
    Ok(())
}

/// [`elements`] and [`check`] in one: the element count of `dims` if it fits.
pub fn check_shape(dims: &[usize], elem_bytes: usize, what: &str) -> Result<usize> {
    let n = elements(dims, what)?;
    check(n, elem_bytes, what).map_err(|e| match e {
        Error::Arg { name, msg } => Error::Arg {
            name,
            msg: format!("shape {dims:?}: {msg}"),
        },
        e => e,
    })?;
    Ok(n)
}
