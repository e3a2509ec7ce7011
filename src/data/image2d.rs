//! 2D images (fundus photographs): PNG/JPEG reading, resizing, tensors in [0, 1].

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use image::{DynamicImage, RgbImage, imageops::FilterType};

use crate::error::{Error, FileContext, Result};

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
        let reader = image::ImageReader::open(path)
            .with_file(path)?
            .with_guessed_format()
            .with_file(path)?;
        let img = reader
            .decode()
            .map_err(|e| Error::file(path, format!("not a readable PNG/JPEG image: {e}")))?;
        Ok(Image { img })
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
