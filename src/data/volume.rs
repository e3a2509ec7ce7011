//! 3D (and 4D) medical volumes: NIfTI-1 reading and writing with spacing and affine.
//!
//! A [`Volume`] holds its voxels as an f32 candle [`Tensor`] on the CPU whose index order is
//! nibabel's: `t[i, j, k]` equals `nib.load(path).get_fdata()[i, j, k]` (axes x, y, z, then t).
//! Integer and float files of every NIfTI-1 dtype are read, with `scl_slope`/`scl_inter` applied.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use ndarray::{ArrayD, IxDyn, ShapeBuilder};
use nifti::NiftiHeader;
use nifti::writer::WriterOptions;

use crate::error::{Error, FileContext, Result};

/// The on-disk voxel type of a NIfTI file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VoxelType {
    /// unsigned 8-bit integer
    U8,
    /// signed 8-bit integer
    I8,
    /// unsigned 16-bit integer
    U16,
    /// signed 16-bit integer (typical for CT)
    I16,
    /// unsigned 32-bit integer
    U32,
    /// signed 32-bit integer
    I32,
    /// unsigned 64-bit integer
    U64,
    /// signed 64-bit integer
    I64,
    /// 32-bit float
    F32,
    /// 64-bit float
    F64,
}

impl VoxelType {
    /// Every supported type, in NIfTI code order.
    pub const ALL: [VoxelType; 10] = [
        VoxelType::U8,
        VoxelType::I8,
        VoxelType::U16,
        VoxelType::I16,
        VoxelType::U32,
        VoxelType::I32,
        VoxelType::U64,
        VoxelType::I64,
        VoxelType::F32,
        VoxelType::F64,
    ];

    /// The short name used in scripts (`"u8"`, `"i16"`, `"f32"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            VoxelType::U8 => "u8",
            VoxelType::I8 => "i8",
            VoxelType::U16 => "u16",
            VoxelType::I16 => "i16",
            VoxelType::U32 => "u32",
            VoxelType::I32 => "i32",
            VoxelType::U64 => "u64",
            VoxelType::I64 => "i64",
            VoxelType::F32 => "f32",
            VoxelType::F64 => "f64",
        }
    }

    /// Parses a short name (`"u8"`, `"int16"`, `"float32"`, ...).
    pub fn parse(name: &str) -> Result<Self> {
        let t = match name.to_ascii_lowercase().as_str() {
            "u8" | "uint8" => VoxelType::U8,
            "i8" | "int8" => VoxelType::I8,
            "u16" | "uint16" => VoxelType::U16,
            "i16" | "int16" => VoxelType::I16,
            "u32" | "uint32" => VoxelType::U32,
            "i32" | "int32" => VoxelType::I32,
            "u64" | "uint64" => VoxelType::U64,
            "i64" | "int64" => VoxelType::I64,
            "f32" | "float32" => VoxelType::F32,
            "f64" | "float64" => VoxelType::F64,
            _ => {
                return Err(Error::arg(
                    "dtype",
                    format!(
                        "unknown voxel type `{name}`; expected one of u8 i8 u16 i16 u32 i32 u64 i64 f32 f64"
                    ),
                ));
            }
        };
        Ok(t)
    }

    /// Bytes per voxel on disk.
    pub fn size(self) -> usize {
        match self {
            VoxelType::U8 | VoxelType::I8 => 1,
            VoxelType::U16 | VoxelType::I16 => 2,
            VoxelType::U32 | VoxelType::I32 | VoxelType::F32 => 4,
            VoxelType::U64 | VoxelType::I64 | VoxelType::F64 => 8,
        }
    }

    /// The range of values the type can hold (for integer types).
    fn range(self) -> Option<(f64, f64)> {
        match self {
            VoxelType::U8 => Some((0.0, u8::MAX as f64)),
            VoxelType::I8 => Some((i8::MIN as f64, i8::MAX as f64)),
            VoxelType::U16 => Some((0.0, u16::MAX as f64)),
            VoxelType::I16 => Some((i16::MIN as f64, i16::MAX as f64)),
            VoxelType::U32 => Some((0.0, u32::MAX as f64)),
            VoxelType::I32 => Some((i32::MIN as f64, i32::MAX as f64)),
            VoxelType::U64 => Some((0.0, u64::MAX as f64)),
            VoxelType::I64 => Some((i64::MIN as f64, i64::MAX as f64)),
            VoxelType::F32 | VoxelType::F64 => None,
        }
    }
}

/// A 4×4 voxel-to-world matrix (row-major), as nibabel's `img.affine`.
pub type Affine = [[f64; 4]; 4];

/// A medical volume: voxels, voxel spacing, affine and the NIfTI header it came with.
#[derive(Clone, Debug)]
pub struct Volume {
    tensor: Tensor,
    spacing: [f64; 3],
    affine: Affine,
    dtype: VoxelType,
    header: NiftiHeader,
}

impl Volume {
    /// Reads a `.nii` or `.nii.gz` file (gzip is recognised by its content). Errors name the
    /// file, what was wrong and what was expected; a malformed file is an error, never a
    /// panic. The voxels are decoded straight into the tensor's buffer: the volume as f32 (4
    /// bytes a voxel) and a few MiB are all the memory reading takes.
    pub fn load(path: impl AsRef<Path>) -> Result<Volume> {
        let path = path.as_ref();
        guarded(path, || {
            let (layout, values) = super::nifti1::read(path)?;
            Self::from_layout(layout, values, path)
        })
    }

    /// [`Volume::load`] on the bytes of a `.nii` or `.nii.gz` file; `name` names it in errors.
    pub fn from_bytes(bytes: &[u8], name: impl AsRef<Path>) -> Result<Volume> {
        let path = name.as_ref();
        guarded(path, || {
            let (layout, values) = super::nifti1::read_bytes(bytes, path)?;
            Self::from_layout(layout, values, path)
        })
    }

    /// The shape and voxel type a `.nii`/`.nii.gz` file's header declares (only the header is
    /// read), after the checks of [`Volume::load`].
    pub fn probe(path: impl AsRef<Path>) -> Result<(Vec<usize>, VoxelType)> {
        let path = path.as_ref();
        guarded(path, || {
            let l = super::nifti1::read_header(path)?;
            Ok((l.dims, l.dtype))
        })
    }

    fn from_layout(layout: super::nifti1::Layout, values: Vec<f32>, path: &Path) -> Result<Volume> {
        let header = layout.header;
        let tensor = Tensor::from_vec(values, layout.dims.clone(), &Device::Cpu)?;
        let spacing = [1, 2, 3].map(|i| (header.pixdim[i] as f64).abs());
        let spatial = [0, 1, 2].map(|i| layout.dims.get(i).copied().unwrap_or(1));
        let affine = best_affine(&header, spatial)
            .map_err(|msg| Error::file(path, format!("invalid orientation: {msg}")))?;
        Ok(Volume {
            tensor,
            spacing,
            affine,
            dtype: layout.dtype,
            header,
        })
    }

    /// A volume from a tensor of rank 3 or 4 (x, y, z[, t]) with voxel `spacing` in mm.
    /// The affine is `diag(spacing, 1)`; the on-disk type is f32.
    pub fn from_tensor(tensor: &Tensor, spacing: [f64; 3]) -> Result<Volume> {
        let rank = tensor.rank();
        if !(3..=4).contains(&rank) {
            return Err(Error::shape(
                "volume",
                format!(
                    "expected a tensor of rank 3 or 4 (x, y, z[, t]), got shape {:?}",
                    tensor.dims()
                ),
            ));
        }
        if let Some(s) = spacing.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(Error::arg(
                "spacing",
                format!("each spacing must be a positive number, got {s}"),
            ));
        }
        let mut affine = identity();
        for (i, s) in spacing.iter().enumerate() {
            affine[i][i] = *s;
        }
        Ok(Volume {
            tensor: tensor.to_dtype(DType::F32)?.to_device(&Device::Cpu)?,
            spacing,
            affine,
            dtype: VoxelType::F32,
            header: NiftiHeader {
                qform_code: 0,
                sform_code: 2,
                xyzt_units: 2, // mm
                ..NiftiHeader::default()
            },
        })
    }

    /// The same geometry (spacing, affine, header) with other voxels of the same spatial shape.
    pub fn with_tensor(&self, tensor: &Tensor) -> Result<Volume> {
        let (a, b) = (self.spatial_shape(), tensor.dims());
        if b.len() < 3 || b[..3] != a[..] {
            return Err(Error::shape(
                "with_tensor",
                format!("expected spatial shape {a:?}, got {b:?}"),
            ));
        }
        Ok(Volume {
            tensor: tensor.to_dtype(DType::F32)?.to_device(&Device::Cpu)?,
            ..self.clone()
        })
    }

    /// The same volume with another voxel-to-world affine (the spacing is kept).
    pub fn with_affine(mut self, affine: Affine) -> Volume {
        self.affine = affine;
        self
    }

    /// The same space on another voxel grid: `tensor` holds voxels whose index `p` is this
    /// volume's index `scale · p + offset` per axis (a resampling, crop or padding). The
    /// spacing, the affine (sform) and the header's qform follow, so the result overlays this
    /// volume in any viewer; voxel type and the rest of the header are kept.
    pub fn regridded(&self, tensor: &Tensor, map: &super::geometry::IndexMap) -> Result<Volume> {
        if tensor.rank() < 3 {
            return Err(Error::shape(
                "regridded",
                format!("expected a volume [x, y, z(, t)], got {:?}", tensor.dims()),
            ));
        }
        if let Some(s) = map.scale.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(Error::arg(
                "scale",
                format!("expected a positive scale, got {s}"),
            ));
        }
        let mut header = self.header.clone();
        if header.qform_code > 0
            && let Ok(q) = qform_affine(&header)
        {
            let moved = map.affine(&q);
            header.quatern_x = moved[0][3] as f32;
            header.quatern_y = moved[1][3] as f32;
            header.quatern_z = moved[2][3] as f32;
        }
        Ok(Volume {
            tensor: tensor.to_dtype(DType::F32)?.to_device(&Device::Cpu)?,
            spacing: [0, 1, 2].map(|a| self.spacing[a] * map.scale[a]),
            affine: map.affine(&self.affine),
            dtype: self.dtype,
            header,
        })
    }

    /// The same volume stored as f32 with no intensity scaling (for derived values such as
    /// normalised intensities or probabilities).
    pub fn as_float(mut self) -> Volume {
        self.dtype = VoxelType::F32;
        self.header.scl_slope = 1.0;
        self.header.scl_inter = 0.0;
        self.header.cal_min = 0.0;
        self.header.cal_max = 0.0;
        self
    }

    /// A label map `tensor` (whole numbers 0..255, this volume's spatial shape) in this
    /// volume's geometry: the same affine, qform, spacing and header, stored as u8 with no
    /// intensity scaling or display range, so it opens aligned with this volume.
    pub fn with_labels(&self, tensor: &Tensor) -> Result<Volume> {
        let mut v = self.with_tensor(tensor)?;
        v.dtype = VoxelType::U8;
        v.header.scl_slope = 1.0;
        v.header.scl_inter = 0.0;
        v.header.cal_min = 0.0;
        v.header.cal_max = 0.0;
        v.header.intent_code = 0;
        Ok(v)
    }

    /// The voxels, f32 on the CPU, indexed `[x, y, z(, t)]`.
    pub fn tensor(&self) -> &Tensor {
        &self.tensor
    }

    /// The full shape (x, y, z[, t]).
    pub fn shape(&self) -> &[usize] {
        self.tensor.dims()
    }

    /// The first three dimensions.
    pub fn spatial_shape(&self) -> [usize; 3] {
        let d = self.tensor.dims();
        [
            d[0],
            d.get(1).copied().unwrap_or(1),
            d.get(2).copied().unwrap_or(1),
        ]
    }

    /// Voxel size in mm along x, y, z (`pixdim[1..4]`).
    pub fn spacing(&self) -> [f64; 3] {
        self.spacing
    }

    /// The voxel-to-world affine: the sform if set, else the qform, else nibabel's base affine.
    pub fn affine(&self) -> &Affine {
        &self.affine
    }

    /// The voxel type of the file this volume was read from (f32 for new volumes).
    pub fn dtype(&self) -> VoxelType {
        self.dtype
    }

    /// The NIfTI header (of the source file, or a default one).
    pub fn header(&self) -> &NiftiHeader {
        &self.header
    }

    /// The voxels as a C-order `Vec` (x slowest, z fastest).
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        Ok(self.tensor.flatten_all()?.to_vec1::<f32>()?)
    }

    /// Calls `f` with the voxels as a C-order slice (x slowest, z fastest), without copying
    /// them as [`Volume::to_vec`] does.
    pub fn with_values<R>(&self, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
        let t = self.tensor.contiguous()?;
        let (storage, layout) = t.storage_and_layout();
        let candle_core::Storage::Cpu(cpu) = &*storage else {
            return Err(Error::msg("volume voxels are not on the CPU"));
        };
        let all = cpu.as_slice::<f32>()?;
        let (a, b) = layout
            .contiguous_offsets()
            .ok_or_else(|| Error::msg("volume voxels are not contiguous"))?;
        Ok(f(&all[a..b]))
    }

    /// Writes the volume in its own voxel type. See [`Volume::save_as`].
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.save_as(path, self.dtype)
    }

    /// The header's intensity scaling `(scl_slope, scl_inter)`, when it has one that nibabel
    /// applies (a finite slope other than 0, and not the identity).
    pub fn scaling(&self) -> Option<(f64, f64)> {
        let (s, i) = (self.header.scl_slope as f64, self.header.scl_inter as f64);
        let inter = if i.is_finite() { i } else { 0.0 };
        (s.is_finite() && s != 0.0 && (s != 1.0 || inter != 0.0)).then_some((s, inter))
    }

    /// Writes a `.nii` or `.nii.gz` (by extension) file in `dtype`, keeping spacing, affine
    /// (as the sform) and the rest of the header. An integer type stores `(v - scl_inter) /
    /// scl_slope` rounded to nearest when the source had such a scaling (so the values read
    /// back are the source's), else `v` rounded; a value that does not fit the type is an
    /// error. Float types store the values with no scaling. The write is atomic (temporary
    /// file, then rename).
    pub fn save_as(&self, path: impl AsRef<Path>, dtype: VoxelType) -> Result<()> {
        let path = path.as_ref();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::file(path, "not a file name"))?;
        let gz = name.ends_with(".nii.gz");
        if !gz && !name.ends_with(".nii") {
            return Err(Error::file(path, "expected a .nii or .nii.gz file name"));
        }
        let mut values = self.to_vec()?;
        let scaling = dtype.range().and(self.scaling());
        if let Some((slope, inter)) = scaling {
            values
                .iter_mut()
                .for_each(|v| *v = ((*v as f64 - inter) / slope) as f32);
        }
        let out_of_range = |(lo, hi): (f64, f64)| {
            values
                .iter()
                .find(|v| !v.is_finite() || (v.round() as f64) < lo || (v.round() as f64) > hi)
        };
        if let Some(v) = dtype.range().and_then(out_of_range) {
            return Err(Error::file(
                path,
                format!("value {v} does not fit voxel type {}", dtype.name()),
            ));
        }
        let mut header = self.header.clone();
        for (i, s) in self.spacing.iter().enumerate() {
            header.pixdim[i + 1] = *s as f32;
        }
        if header.sform_code == 0 {
            header.sform_code = 2;
        }
        header.srow_x = self.affine[0].map(|v| v as f32);
        header.srow_y = self.affine[1].map(|v| v as f32);
        header.srow_z = self.affine[2].map(|v| v as f32);
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).with_file(dir)?;
        let ext = if gz { "nii.gz" } else { "nii" };
        // The nifti writer rewrites the last extensions of its path, so the temporary name has
        // no other dots than those of the extension.
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(".pretext-tmp-{}-{n}.{ext}", std::process::id()));
        let shape = self.shape().to_vec();
        let opts = WriterOptions::new(&tmp).reference_header(&header);
        let written = write_typed(&opts, &shape, &values, dtype);
        written
            .map_err(|e| Error::file(path, format!("cannot write NIfTI: {e}")))
            .and_then(|_| match scaling {
                Some((slope, inter)) => set_scaling(&tmp, gz, slope as f32, inter as f32),
                None => Ok(()),
            })
            .and_then(|_| std::fs::rename(&tmp, path).with_file(path))
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })
    }
}

/// Sets `scl_slope` and `scl_inter` (bytes 112..120 of the NIfTI-1 header, in the file's byte
/// order) of a file the `nifti` crate wrote, which always writes 1 and 0.
fn set_scaling(path: &Path, gz: bool, slope: f32, inter: f32) -> Result<()> {
    use std::io::{Read, Write};
    let raw = std::fs::read(path).with_file(path)?;
    let mut bytes = if gz {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .with_file(path)?;
        out
    } else {
        raw
    };
    if bytes.len() < 348 {
        return Err(Error::file(
            path,
            "written header is shorter than 348 bytes",
        ));
    }
    let little = i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) == 348;
    let enc = |v: f32| {
        if little {
            v.to_le_bytes()
        } else {
            v.to_be_bytes()
        }
    };
    bytes[112..116].copy_from_slice(&enc(slope));
    bytes[116..120].copy_from_slice(&enc(inter));
    let out = if gz {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&bytes).with_file(path)?;
        e.finish().with_file(path)?
    } else {
        bytes
    };
    std::fs::write(path, out).with_file(path)
}

/// Runs a reader, turning a panic (a bug: every malformed input should be refused by the
/// checks before) into an error naming the file.
fn guarded<T>(path: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let what = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(Error::file(
            path,
            format!("not a readable NIfTI-1 file: the reader failed ({what}); please report this"),
        ))
    })
}

fn write_typed(
    opts: &WriterOptions,
    shape: &[usize],
    values: &[f32],
    dtype: VoxelType,
) -> std::result::Result<(), nifti::NiftiError> {
    fn arr<T: Clone>(shape: &[usize], v: Vec<T>) -> ArrayD<T> {
        ArrayD::from_shape_vec(IxDyn(shape).set_f(false), v).expect("length matches shape")
    }
    macro_rules! write_as {
        ($t:ty) => {
            opts.write_nifti(&arr(
                shape,
                values.iter().map(|v| v.round() as $t).collect(),
            ))
        };
    }
    match dtype {
        VoxelType::U8 => write_as!(u8),
        VoxelType::I8 => write_as!(i8),
        VoxelType::U16 => write_as!(u16),
        VoxelType::I16 => write_as!(i16),
        VoxelType::U32 => write_as!(u32),
        VoxelType::I32 => write_as!(i32),
        VoxelType::U64 => write_as!(u64),
        VoxelType::I64 => write_as!(i64),
        VoxelType::F32 => opts.write_nifti(&arr(shape, values.to_vec())),
        VoxelType::F64 => opts.write_nifti(&arr(shape, values.iter().map(|v| *v as f64).collect())),
    }
}

fn identity() -> Affine {
    let mut a = [[0.0; 4]; 4];
    for (i, row) in a.iter_mut().enumerate() {
        row[i] = 1.0;
    }
    a
}

/// nibabel's `get_best_affine`: sform, else qform, else the centred base affine.
fn best_affine(h: &NiftiHeader, shape: [usize; 3]) -> std::result::Result<Affine, String> {
    let zooms = [1, 2, 3].map(|i| h.pixdim[i] as f64);
    if h.sform_code > 0 {
        let mut a = identity();
        for (row, src) in a.iter_mut().zip([h.srow_x, h.srow_y, h.srow_z]) {
            *row = src.map(|v| v as f64);
        }
        return Ok(a);
    }
    if h.qform_code > 0 {
        return qform_affine(h);
    }
    let z = [-zooms[0], zooms[1], zooms[2]];
    let mut m = identity();
    for i in 0..3 {
        m[i][i] = z[i];
        m[i][3] = -((shape[i] as f64 - 1.0) / 2.0) * z[i];
    }
    Ok(m)
}

/// nibabel's `get_qform`: the affine of the header's quaternion, offsets and pixdim.
fn qform_affine(h: &NiftiHeader) -> std::result::Result<Affine, String> {
    let zooms = [1, 2, 3].map(|i| h.pixdim[i] as f64);
    {
        let (b, c, d) = (h.quatern_b as f64, h.quatern_c as f64, h.quatern_d as f64);
        let w2 = 1.0 - (b * b + c * c + d * d);
        let a = if w2 < 0.0 {
            if w2 < -1e-6 {
                return Err(format!(
                    "qform quaternion (b,c,d)=({b},{c},{d}) has norm > 1"
                ));
            }
            0.0
        } else {
            w2.sqrt()
        };
        let r = quat_to_mat(a, b, c, d);
        let qfac = if h.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
        let z = [zooms[0], zooms[1], zooms[2] * qfac];
        let mut m = identity();
        for i in 0..3 {
            for j in 0..3 {
                m[i][j] = r[i][j] * z[j];
            }
        }
        m[0][3] = h.quatern_x as f64;
        m[1][3] = h.quatern_y as f64;
        m[2][3] = h.quatern_z as f64;
        Ok(m)
    }
}

/// Rotation matrix of the unit quaternion (w, x, y, z), as nibabel's `quat2mat`.
fn quat_to_mat(w: f64, x: f64, y: f64, z: f64) -> [[f64; 3]; 3] {
    let n = w * w + x * x + y * y + z * z;
    if n < f64::EPSILON {
        return [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    }
    let s = 2.0 / n;
    let (xs, ys, zs) = (x * s, y * s, z * s);
    let (wx, wy, wz) = (w * xs, w * ys, w * zs);
    let (xx, xy, xz) = (x * xs, x * ys, x * zs);
    let (yy, yz, zz) = (y * ys, y * zs, z * zs);
    [
        [1.0 - (yy + zz), xy - wz, xz + wy],
        [xy + wz, 1.0 - (xx + zz), yz - wx],
        [xz - wy, yz + wx, 1.0 - (xx + yy)],
    ]
}
