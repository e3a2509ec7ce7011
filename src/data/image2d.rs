//! 2D images (fundus photographs): PNG/JPEG reading, resizing, tensors in [0, 1].

use std::io::Read;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use image::{DynamicImage, RgbImage, imageops::FilterType};

use crate::error::{Error, FileContext, Result};

/// Checks the sampling factors of a JPEG's frame header (SOF) before the decoder sees them:
/// zune-jpeg (the image crate's JPEG decoder) panics on frames whose first (luma) component
/// does not have the largest sampling factors or whose factors do not divide the largest
/// (fuzzing found `Y 1×1, Cb 2×2, Cr 1×1`). Files too malformed to find the frame header in
/// are left to the decoder, which refuses them.
fn jpeg_sampling(r: &mut impl Read) -> std::result::Result<(), String> {
    let mut b2 = [0u8; 2];
    if r.read_exact(&mut b2).is_err() || b2 != [0xFF, 0xD8] {
        return Ok(());
    }
    for _ in 0..10_000 {
        let mut m = [0u8; 1];
        if r.read_exact(&mut m).is_err() || m[0] != 0xFF {
            return Ok(());
        }
        // Fill bytes, then the marker.
        while m[0] == 0xFF {
            if r.read_exact(&mut m).is_err() {
                return Ok(());
            }
        }
        let marker = m[0];
        if marker == 0x01 || (0xD0..=0xD8).contains(&marker) {
            continue;
        }
        if marker == 0xD9 || marker == 0xDA {
            return Ok(());
        }
        if r.read_exact(&mut b2).is_err() {
            return Ok(());
        }
        let len = u16::from_be_bytes(b2) as usize;
        if len < 2 {
            return Ok(());
        }
        let mut seg = vec![0u8; len - 2];
        if r.read_exact(&mut seg).is_err() {
            return Ok(());
        }
        let sof = (0xC0..=0xCF).contains(&marker) && ![0xC4, 0xC8, 0xCC].contains(&marker);
        if !sof {
            continue;
        }
        let n = *seg.get(5).unwrap_or(&0) as usize;
        let factors: Vec<(u8, u8)> = (0..n)
            .filter_map(|c| seg.get(7 + 3 * c).map(|hv| (hv >> 4, hv & 15)))
            .collect();
        if factors.len() < 2 {
            return Ok(());
        }
        let hmax = factors.iter().map(|f| f.0).max().unwrap_or(1);
        let vmax = factors.iter().map(|f| f.1).max().unwrap_or(1);
        let ok = factors[0] == (hmax, vmax)
            && factors
                .iter()
                .all(|&(h, v)| h >= 1 && v >= 1 && hmax % h == 0 && vmax % v == 0);
        if ok {
            return Ok(());
        }
        let shown: Vec<String> = factors.iter().map(|(h, v)| format!("{h}x{v}")).collect();
        return Err(format!(
            "unsupported chroma subsampling (sampling factors {} by component); expected the \
             first (luma) component to have the largest factors and the others to divide them, \
             e.g. 2x2 1x1 1x1 (4:2:0) or 1x1 1x1 1x1 (4:4:4); re-encode the image",
            shown.join(" ")
        ));
    }
    Ok(())
}

/// Decodes an opened PNG or JPEG image, within the decoder's default memory limits; a decoder
/// panic (a bug in it) becomes an error naming the file.
fn decode<R: std::io::BufRead + std::io::Seek>(
    reader: image::ImageReader<R>,
    path: &Path,
) -> Result<Image> {
    let format = reader.format();
    let known = matches!(
        format,
        Some(image::ImageFormat::Png | image::ImageFormat::Jpeg)
    );
    if !known {
        return Err(Error::file(
            path,
            "not a PNG or JPEG image (the first bytes are neither signature)",
        ));
    }
    let reader = if format == Some(image::ImageFormat::Jpeg) {
        let mut r = reader.into_inner();
        let start = r.stream_position().with_file(path)?;
        let checked = jpeg_sampling(&mut r);
        r.seek(std::io::SeekFrom::Start(start)).with_file(path)?;
        checked.map_err(|msg| Error::file(path, format!("not a readable JPEG image: {msg}")))?;
        image::ImageReader::with_format(r, image::ImageFormat::Jpeg)
    } else {
        reader
    };
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reader.decode()));
    let img = match decoded {
        Ok(r) => r.map_err(|e| Error::file(path, format!("not a readable PNG/JPEG image: {e}")))?,
        Err(_) => {
            return Err(Error::file(
                path,
                "not a readable PNG/JPEG image: the decoder failed (please report this)",
            ));
        }
    };
    Ok(Image { img })
}

/// An RGB or grey image held in memory.
#[derive(Clone, Debug)]
pub struct Image {
    img: DynamicImage,
}

impl Image {
    /// Reads a PNG or JPEG file; errors name the file and the decoder's complaint.
    pub fn load(path: impl AsRef<Path>) -> Result<Image> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(Error::file(path, "no such file"));
        }
        if path.is_dir() {
            return Err(Error::file(path, "a folder, expected a PNG or JPEG file"));
        }
        let reader = image::ImageReader::open(path)
            .with_file(path)?
            .with_guessed_format()
            .with_file(path)?;
        decode(reader, path)
    }

    /// [`Image::load`] on the bytes of a PNG or JPEG file; `name` names it in errors.
    pub fn from_bytes(bytes: &[u8], name: impl AsRef<Path>) -> Result<Image> {
        let path = name.as_ref();
        let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .with_file(path)?;
        decode(reader, path)
    }

    /// An image from a tensor `[C, H, W]` (C = 1 or 3) with values in [0, 1] (clamped).
    pub fn from_tensor(t: &Tensor) -> Result<Image> {
        let dims = t.dims();
        if dims.len() != 3 || !(dims[0] == 1 || dims[0] == 3) {
            return Err(Error::shape(
                "image",
                format!("expected a tensor [C, H, W] with C = 1 or 3, got {dims:?}"),
            ));
        }
        let (c, h, w) = (dims[0], dims[1], dims[2]);
        let hwc = t
            .to_dtype(DType::F32)?
            .clamp(0f32, 1f32)?
            .permute((1, 2, 0))?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let bytes: Vec<u8> = hwc.iter().map(|v| (v * 255.0).round() as u8).collect();
        let img = if c == 3 {
            DynamicImage::ImageRgb8(
                RgbImage::from_raw(w as u32, h as u32, bytes)
                    .ok_or_else(|| Error::msg("image buffer size"))?,
            )
        } else {
            DynamicImage::ImageLuma8(
                image::GrayImage::from_raw(w as u32, h as u32, bytes)
                    .ok_or_else(|| Error::msg("image buffer size"))?,
            )
        };
        Ok(Image { img })
    }

    /// Wraps an already decoded image.
    pub fn from_dynamic(img: DynamicImage) -> Image {
        Image { img }
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.img.width() as usize
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.img.height() as usize
    }

    /// Number of colour channels of the tensor form (1 for grey, else 3).
    pub fn channels(&self) -> usize {
        if self.img.color().has_color() { 3 } else { 1 }
    }

    /// Resized to exactly `w`×`h` with a Lanczos3 filter (PIL's LANCZOS, as the paper's code).
    pub fn resize(&self, w: usize, h: usize) -> Result<Image> {
        if w == 0 || h == 0 {
            return Err(Error::arg(
                "size",
                format!("width and height must be positive, got {w}x{h}"),
            ));
        }
        if u32::try_from(w).is_err() || u32::try_from(h).is_err() {
            return Err(Error::arg(
                "size",
                format!("{w}x{h} is too large for an image"),
            ));
        }
        // The resampler works on f32 RGBA rows: 16 bytes a pixel.
        crate::memory::check_shape(&[h, w], 16, "size")?;
        Ok(Image {
            img: self
                .img
                .resize_exact(w as u32, h as u32, FilterType::Lanczos3),
        })
    }

    /// The pixels as an f32 tensor `[C, H, W]` in [0, 1] (C = 3, or 1 for grey images).
    pub fn tensor(&self) -> Result<Tensor> {
        let (w, h) = (self.width(), self.height());
        if self.channels() == 3 {
            let data = self.img.to_rgb32f().into_raw();
            Ok(Tensor::from_vec(data, (h, w, 3), &Device::Cpu)?
                .permute((2, 0, 1))?
                .contiguous()?)
        } else {
            let data = self.img.to_luma32f().into_raw();
            Ok(Tensor::from_vec(data, (1, h, w), &Device::Cpu)?)
        }
    }

    /// The underlying image.
    pub fn dynamic(&self) -> &DynamicImage {
        &self.img
    }

    /// Writes PNG or JPEG (by extension), atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let format = image::ImageFormat::from_path(path)
            .map_err(|_| Error::file(path, "expected a .png, .jpg or .jpeg file name"))?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).with_file(dir)?;
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("image");
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let img = match (&self.img, format) {
            (DynamicImage::ImageRgb8(_) | DynamicImage::ImageLuma8(_), _) => self.img.clone(),
            (_, image::ImageFormat::Jpeg) => DynamicImage::ImageRgb8(self.img.to_rgb8()),
            _ => self.img.clone(),
        };
        img.save_with_format(&tmp, format)
            .map_err(|e| Error::file(path, format!("cannot write image: {e}")))
            .and_then(|_| std::fs::rename(&tmp, path).with_file(path))
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })
    }
}
