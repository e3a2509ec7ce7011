//! NIfTI-1 reading: the header is parsed and checked against the data here, and the voxels are
//! decoded straight into the f32 C-order buffer that becomes the volume's tensor.
//!
//! The `nifti` crate's reader is not used for reading: it starts the voxels at byte 352 whatever
//! `vox_offset` says when the extension flag is 0, sizes the data by `bitpix` but decodes it by
//! `datatype` (a mismatch panicked inside the crate), reads negative dims as huge unsigned
//! ones, applies a non-finite `scl_slope`, and goes through several full copies of the volume
//! (raw bytes, typed values, f32 values, an F-order array and its C-order copy). The rules here
//! are nibabel's:
//!
//! - byte order from `sizeof_hdr` (348 in either order; 540 is a NIfTI-2 header);
//! - magic `n+1` (a single file); `dim[0]` in 1..=7 and `dim[1..=dim[0]]` positive;
//! - the voxel type from `datatype` (`bitpix` is not used, as nibabel);
//! - the voxels start at `int(vox_offset)`, which must not lie inside the header
//!   (0, written by some old tools, means 352);
//! - `scl_slope` 0, NaN or infinite means no scaling; with a valid slope the intercept must be
//!   finite.
//!
//! Gzip is recognised by its magic bytes (any number of members, as Python's gzip).

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use nifti::{Endianness, NiftiHeader};

use super::volume::VoxelType;
use crate::error::{Error, Result};

/// The size of the NIfTI-1 header.
const HEADER: usize = 348;
/// The first byte after the header and the 4-byte extension flag.
const DATA_MIN: u64 = 352;

/// What a NIfTI-1 header says about the voxels, after checking.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    /// The header as the `nifti` crate represents it (kept by the volume for writing).
    pub header: NiftiHeader,
    /// `dim[1..=dim[0]]`.
    pub dims: Vec<usize>,
    /// The voxel type (`datatype`).
    pub dtype: VoxelType,
    /// Where the voxels start.
    pub offset: u64,
    /// The scaling nibabel applies, if any: `(slope, intercept)`.
    pub scaling: Option<(f64, f64)>,
    /// Whether the file is little-endian.
    pub little: bool,
}

impl Layout {
    /// The number of voxels (checked not to overflow when parsed).
    pub fn voxels(&self) -> usize {
        self.dims.iter().product()
    }

    /// The bytes of voxel data.
    pub fn data_bytes(&self) -> usize {
        self.voxels() * self.dtype.size()
    }
}

/// The NIfTI-1 `datatype` codes, with their names for messages.
fn dtype_of_code(code: i16) -> std::result::Result<VoxelType, String> {
    Ok(match code {
        2 => VoxelType::U8,
        4 => VoxelType::I16,
        8 => VoxelType::I32,
        16 => VoxelType::F32,
        64 => VoxelType::F64,
        256 => VoxelType::I8,
        512 => VoxelType::U16,
        768 => VoxelType::U32,
        1024 => VoxelType::I64,
        1280 => VoxelType::U64,
        other => {
            let name = match other {
                0 => "unknown (0)",
                1 => "binary (1)",
                32 => "complex64 (32)",
                128 => "RGB24 (128)",
                1536 => "float128 (1536)",
                1792 => "complex128 (1792)",
                2048 => "complex256 (2048)",
                2304 => "RGBA32 (2304)",
                _ => return Err(format!("datatype code {other} is not a NIfTI-1 type")),
            };
            return Err(format!(
                "unsupported voxel type {name}; expected an integer or float type \
                 (u8 i8 u16 i16 u32 i32 u64 i64 f32 f64)"
            ));
        }
    })
}

/// Little-endian or big-endian field reads from the 348 header bytes.
struct Fields<'a> {
    b: &'a [u8],
    little: bool,
}

impl Fields<'_> {
    fn bytes<const N: usize>(&self, at: usize) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.b[at..at + N]);
        out
    }
    fn i16(&self, at: usize) -> i16 {
        let b = self.bytes::<2>(at);
        if self.little {
            i16::from_le_bytes(b)
        } else {
            i16::from_be_bytes(b)
        }
    }
    fn i32(&self, at: usize) -> i32 {
        let b = self.bytes::<4>(at);
        if self.little {
            i32::from_le_bytes(b)
        } else {
            i32::from_be_bytes(b)
        }
    }
    fn f32(&self, at: usize) -> f32 {
        f32::from_bits(self.i32(at) as u32)
    }
    fn f32s<const N: usize>(&self, at: usize) -> [f32; N] {
        std::array::from_fn(|i| self.f32(at + 4 * i))
    }
}

/// Checks the 348 header bytes and returns what they say. `path` names the file in errors.
pub(crate) fn parse_header(b: &[u8], path: &Path) -> Result<Layout> {
    let bad = |msg: String| Error::file(path, format!("not a readable NIfTI-1 file: {msg}"));
    if b.len() < HEADER {
        return Err(bad(format!(
            "the file ends after {} bytes, inside the {HEADER}-byte header",
            b.len()
        )));
    }
    let first = [b[0], b[1], b[2], b[3]];
    let little = match (i32::from_le_bytes(first), i32::from_be_bytes(first)) {
        (348, _) => true,
        (_, 348) => false,
        (540, _) | (_, 540) => {
            return Err(Error::file(
                path,
                "a NIfTI-2 file; pretext reads NIfTI-1 only (convert it, e.g. with nibabel: \
                 nib.save(nib.Nifti1Image(img.dataobj, img.affine), 'out.nii.gz'))",
            ));
        }
        (le, _) => {
            return Err(bad(format!(
                "the header size (sizeof_hdr, the first 4 bytes) is {le}, expected 348"
            )));
        }
    };
    let f = Fields { b, little };
    let magic: [u8; 4] = f.bytes(344);
    match &magic {
        b"n+1\0" => {}
        b"ni1\0" => {
            return Err(bad(
                "magic `ni1`: a header whose voxels are in a separate .img file; pretext \
                 reads single-file NIfTI-1 (.nii, .nii.gz, magic `n+1`)"
                    .into(),
            ));
        }
        m => {
            return Err(bad(format!(
                "magic is {:?}, expected \"n+1\\0\"",
                String::from_utf8_lossy(m)
            )));
        }
    }
    let rank = f.i16(40);
    if !(1..=7).contains(&rank) {
        return Err(bad(format!(
            "dim[0] (the number of dimensions) is {rank}, expected 1..7"
        )));
    }
    let mut dims = Vec::with_capacity(rank as usize);
    for i in 1..=rank as usize {
        let d = f.i16(40 + 2 * i);
        if d < 1 {
            return Err(bad(format!(
                "dim[{i}] (the size of dimension {i} of {rank}) is {d}, expected a positive \
                 number of voxels"
            )));
        }
        dims.push(d as usize);
    }
    let code = f.i16(70);
    let dtype = dtype_of_code(code).map_err(bad)?;
    let vox = f.f32(108);
    let offset = if vox == 0.0 {
        DATA_MIN
    } else if vox.is_finite() && vox >= DATA_MIN as f32 && vox < 1e15 {
        vox.trunc() as u64
    } else {
        return Err(bad(format!(
            "vox_offset (where the voxels start) is {vox}, expected 352 or more (after the \
             header and its extensions)"
        )));
    };
    let voxels = dims
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .and_then(|n| n.checked_mul(dtype.size()).map(|_| n));
    if voxels.is_none() {
        return Err(bad(format!(
            "dims {dims:?} of {} hold more voxels than can be addressed",
            dtype.name()
        )));
    }
    let (slope, inter) = (f.f32(112) as f64, f.f32(116) as f64);
    let scaling = if slope == 0.0 || !slope.is_finite() {
        None
    } else if !inter.is_finite() {
        return Err(bad(format!(
            "scl_inter (the intensity offset) is {inter} with scl_slope {slope}; expected a \
             finite number"
        )));
    } else if slope == 1.0 && inter == 0.0 {
        None
    } else {
        Some((slope, inter))
    };
    let mut dim = [1u16; 8];
    dim[0] = rank as u16;
    for (i, d) in dims.iter().enumerate() {
        dim[i + 1] = *d as u16;
    }
    let mut descrip = vec![0u8; 80];
    descrip.copy_from_slice(&b[148..228]);
    let header = NiftiHeader {
        sizeof_hdr: 348,
        data_type: f.bytes(4),
        db_name: f.bytes(14),
        extents: f.i32(32),
        session_error: f.i16(36),
        regular: b[38],
        dim_info: b[39],
        dim,
        intent_p1: f.f32(56),
        intent_p2: f.f32(60),
        intent_p3: f.f32(64),
        intent_code: f.i16(68),
        datatype: code,
        bitpix: (dtype.size() * 8) as i16,
        slice_start: f.i16(74),
        pixdim: f.f32s(76),
        vox_offset: offset as f32,
        scl_slope: f.f32(112),
        scl_inter: f.f32(116),
        slice_end: f.i16(120),
        slice_code: b[122],
        xyzt_units: b[123],
        cal_max: f.f32(124),
        cal_min: f.f32(128),
        slice_duration: f.f32(132),
        toffset: f.f32(136),
        glmax: f.i32(140),
        glmin: f.i32(144),
        descrip,
        aux_file: f.bytes(228),
        qform_code: f.i16(252),
        sform_code: f.i16(254),
        quatern_b: f.f32(256),
        quatern_c: f.f32(260),
        quatern_d: f.f32(264),
        quatern_x: f.f32(268),
        quatern_y: f.f32(272),
        quatern_z: f.f32(276),
        srow_x: f.f32s(280),
        srow_y: f.f32s(296),
        srow_z: f.f32s(312),
        intent_name: f.bytes(328),
        magic,
        endianness: if little {
            Endianness::Little
        } else {
            Endianness::Big
        },
    };
    Ok(Layout {
        header,
        dims,
        dtype,
        offset,
        scaling,
        little,
    })
}

/// An I/O error as words for a message (never Rust's debug form).
fn io_words(e: &std::io::Error, gz: bool) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::UnexpectedEof if gz => "the compressed data ends early (truncated .gz file)".into(),
        K::UnexpectedEof => "the file ends early (truncated)".into(),
        K::InvalidInput | K::InvalidData if gz => format!("corrupt gzip data ({e})"),
        K::IsADirectory => "a folder, expected a NIfTI-1 file (.nii or .nii.gz)".into(),
        K::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// Reads until `buf` is full or the stream ends; returns how many bytes were read.
fn read_full(r: &mut impl Read, buf: &mut [u8], gz: bool, path: &Path) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::file(path, io_words(&e, gz))),
        }
    }
    Ok(n)
}

/// An opened file: a buffered reader of its bytes, decompressed when it is gzip.
fn open(path: &Path) -> Result<(Box<dyn Read>, bool, Option<u64>)> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::file(path, "no such file"),
        _ => Error::file(path, io_words(&e, false)),
    })?;
    if meta.is_dir() {
        return Err(Error::file(
            path,
            "a folder, expected a NIfTI-1 file (.nii or .nii.gz)",
        ));
    }
    let file = std::fs::File::open(path).map_err(|e| Error::file(path, io_words(&e, false)))?;
    let mut br = BufReader::with_capacity(1 << 16, file);
    let head = br
        .fill_buf()
        .map_err(|e| Error::file(path, io_words(&e, false)))?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok((
            Box::new(flate2::bufread::MultiGzDecoder::new(br)),
            true,
            None,
        ))
    } else {
        Ok((Box::new(br), false, Some(meta.len())))
    }
}

/// Reads only the header of a `.nii` or `.nii.gz` file.
pub(crate) fn read_header(path: &Path) -> Result<Layout> {
    let (mut r, gz, _) = open(path)?;
    let mut head = [0u8; HEADER];
    let n = read_full(&mut r, &mut head, gz, path)?;
    parse_header(&head[..n], path)
}

/// Reads a `.nii` or `.nii.gz` file: its checked header and its voxels as f32 in C order
/// (`[x, y, z, ...]`, the last index fastest), scaled as nibabel scales them.
pub(crate) fn read(path: &Path) -> Result<(Layout, Vec<f32>)> {
    let (r, gz, len) = open(path)?;
    read_stream(r, gz, len, path)
}

/// [`read`] on the bytes of a file (gzip recognised by its magic bytes); `path` names it in
/// errors.
pub(crate) fn read_bytes(bytes: &[u8], path: &Path) -> Result<(Layout, Vec<f32>)> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        read_stream(flate2::read::MultiGzDecoder::new(bytes), true, None, path)
    } else {
        read_stream(bytes, false, Some(bytes.len() as u64), path)
    }
}

fn read_stream(
    mut r: impl Read,
    gz: bool,
    len: Option<u64>,
    path: &Path,
) -> Result<(Layout, Vec<f32>)> {
    let mut head = [0u8; HEADER];
    let n = read_full(&mut r, &mut head, gz, path)?;
    if n == 0 {
        return Err(Error::file(
            path,
            "an empty file, expected a NIfTI-1 file (.nii or .nii.gz)",
        ));
    }
    let layout = parse_header(&head[..n], path)?;
    let (offset, nbytes) = (layout.offset, layout.data_bytes() as u64);
    let describe = || {
        format!(
            "the header's dims {:?} of {} need {nbytes} bytes of voxels from byte {offset} \
             (vox_offset)",
            layout.dims,
            layout.dtype.name()
        )
    };
    if let Some(len) = len
        && len < offset.saturating_add(nbytes)
    {
        return Err(Error::file(
            path,
            format!(
                "not a readable NIfTI-1 file: the file has {len} bytes, but {}",
                describe()
            ),
        ));
    }
    // The decoded volume (f32) is the only allocation of its size.
    crate::memory::check(layout.voxels(), 4, "NIfTI volume").map_err(|e| {
        Error::file(
            path,
            format!(
                "{} voxels ({:?} of {}): {}",
                layout.voxels(),
                layout.dims,
                layout.dtype.name(),
                match e {
                    Error::Arg { msg, .. } => msg,
                    e => e.to_string(),
                }
            ),
        )
    })?;
    // Skip the extensions (or whatever lies between the header and vox_offset).
    let skip = offset - HEADER as u64;
    let skipped = std::io::copy(&mut (&mut r).take(skip), &mut std::io::sink())
        .map_err(|e| Error::file(path, io_words(&e, gz)))?;
    let what = if gz { "decompressed data" } else { "file" };
    if skipped < skip {
        return Err(Error::file(
            path,
            format!(
                "not a readable NIfTI-1 file: the {what} ends at byte {}, before the voxels; {}",
                HEADER as u64 + skipped,
                describe()
            ),
        ));
    }
    let short = |got: usize| {
        Error::file(
            path,
            format!(
                "not a readable NIfTI-1 file: the {what} ends after {got} bytes of voxels, but {}",
                describe()
            ),
        )
    };
    let values = decode(&mut r, &layout, gz, path, short)?;
    if gz {
        // Read on a little, so that the gzip checksum of a complete member is checked.
        let mut rest = [0u8; 4096];
        let _ = read_full(&mut r, &mut rest, gz, path)?;
    }
    Ok((layout, values))
}

/// Reads the voxels (F order, the file's byte order and type) from `r` and returns them as
/// scaled f32 in C order. Nothing but the result and a buffer of a few MiB is allocated.
fn decode(
    r: &mut impl Read,
    l: &Layout,
    gz: bool,
    path: &Path,
    short: impl Fn(usize) -> Error,
) -> Result<Vec<f32>> {
    let mut read = |buf: &mut [u8]| read_full(r, buf, gz, path);
    macro_rules! go {
        ($t:ty) => {{
            const N: usize = std::mem::size_of::<$t>();
            let little = l.little;
            let get = move |b: &[u8], i: usize| -> $t {
                let mut e = [0u8; N];
                e.copy_from_slice(&b[i * N..i * N + N]);
                if little {
                    <$t>::from_le_bytes(e)
                } else {
                    <$t>::from_be_bytes(e)
                }
            };
            match l.scaling {
                Some((s, c)) => fill(&mut read, &l.dims, N, &short, BLOCK, |b, i| {
                    (get(b, i) as f64 * s + c) as f32
                }),
                None => fill(&mut read, &l.dims, N, &short, BLOCK, |b, i| {
                    get(b, i) as f32
                }),
            }
        }};
    }
    match l.dtype {
        VoxelType::U8 => go!(u8),
        VoxelType::I8 => go!(i8),
        VoxelType::U16 => go!(u16),
        VoxelType::I16 => go!(i16),
        VoxelType::U32 => go!(u32),
        VoxelType::I32 => go!(i32),
        VoxelType::U64 => go!(u64),
        VoxelType::I64 => go!(i64),
        VoxelType::F32 => go!(f32),
        VoxelType::F64 => go!(f64),
    }
}

/// The bytes of raw voxels read at a time (rounded to whole slabs of the last axis).
const BLOCK: usize = 4 << 20;

/// The C-order array of shape `dims` whose F-order element `i` is `get(bytes, i)`, the bytes
/// streamed from `r` (`size` bytes an element) a block of last-axis slabs at a time: NIfTI
/// stores the first index fastest, the tensor the last one. Writes are tiled over the first
/// and last axes so that reads and writes both stay in cache.
fn fill(
    read: &mut impl FnMut(&mut [u8]) -> Result<usize>,
    dims: &[usize],
    size: usize,
    short: &impl Fn(usize) -> Error,
    block: usize,
    get: impl Fn(&[u8], usize) -> f32,
) -> Result<Vec<f32>> {
    let n: usize = dims.iter().product();
    // Trailing axes of size 1 change neither order (a 4D file with one time point is read a
    // block of z slices at a time, not as one block).
    let dims = &dims[..dims.iter().rposition(|&d| d > 1).map_or(1, |i| i + 1)];
    let k = dims.len();
    let dl = dims[k - 1];
    let slab = n / dl.max(1);
    // k = 1: a slab is one voxel and the order is the same.
    let per = (block / (slab * size).max(1)).clamp(1, dl.max(1));
    let mut buf = vec![0u8; per * slab * size];
    let mut out = vec![0f32; n];
    // Strides: C order for the output, F order for the input.
    let mut cs = vec![1usize; k];
    let mut fs = vec![1usize; k];
    for j in (0..k - 1).rev() {
        cs[j] = cs[j + 1] * dims[j + 1];
    }
    for j in 1..k {
        fs[j] = fs[j - 1] * dims[j - 1];
    }
    let (dx, mid) = if k == 1 {
        (1, &dims[..0])
    } else {
        (dims[0], &dims[1..k - 1])
    };
    let nmid: usize = mid.iter().product();
    let (csx, fsl) = if k == 1 { (0, 1) } else { (cs[0], fs[k - 1]) };
    const T: usize = 32;
    let mut l0 = 0;
    while l0 < dl {
        let l1 = (l0 + per).min(dl);
        let bytes = (l1 - l0) * slab * size;
        let got = read(&mut buf[..bytes])?;
        if got < bytes {
            return Err(short(l0 * slab * size + got));
        }
        let b = &buf[..bytes];
        for m in 0..nmid {
            let (mut rest, mut co, mut fo) = (m, 0, 0);
            for (j, &d) in mid.iter().enumerate() {
                let i = rest % d;
                rest /= d;
                co += i * cs[j + 1];
                fo += i * fs[j + 1];
            }
            for x0 in (0..dx).step_by(T) {
                let x1 = (x0 + T).min(dx);
                for l in l0..l1 {
                    let src = fo + (l - l0) * fsl;
                    for x in x0..x1 {
                        out[x * csx + co + l] = get(b, src + x);
                    }
                }
            }
        }
        l0 = l1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::fill;
    use std::path::Path;

    #[test]
    fn fill_reverses_the_index_order() {
        let dims_list = [
            vec![5],
            vec![1],
            vec![3, 4],
            vec![2, 3, 4],
            vec![40, 3, 33],
            vec![3, 1, 2, 5],
            vec![4, 3, 1],
            vec![2, 3, 4, 1, 1],
            vec![1, 1, 3],
        ];
        for dims in dims_list {
            let n: usize = dims.iter().product();
            let raw: Vec<u8> = (0..n as u32).flat_map(|i| i.to_le_bytes()).collect();
            let short = |_| unreachable!();
            let get = |b: &[u8], i: usize| {
                u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]) as f32
            };
            for block in [1, 24, 1 << 20] {
                let mut src = raw.as_slice();
                let mut read = |b: &mut [u8]| super::read_full(&mut src, b, false, Path::new("x"));
                let out = fill(&mut read, &dims, 4, &short, block, get).unwrap();
                check(&dims, &out);
            }
        }
    }

    fn check(dims: &[usize], out: &[f32]) {
        let n = out.len();
        {
            // The F index of each C position.
            for (p, v) in out.iter().enumerate() {
                let mut rest = p;
                let mut idx = vec![0; dims.len()];
                for j in (0..dims.len()).rev() {
                    idx[j] = rest % dims[j];
                    rest /= dims[j];
                }
                let (mut f, mut s) = (0, 1);
                for j in 0..dims.len() {
                    f += idx[j] * s;
                    s *= dims[j];
                }
                assert_eq!(*v as usize, f, "{dims:?} at {p} of {n}");
            }
        }
    }
}
