//! One slide through OpenSlide: levels, resolution metadata, RGB regions, and the
//! low-resolution image the tissue mask is computed on.

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use openslide_rs::{Address, OpenSlide, Region, Size};
use rayon::prelude::*;

/// Pixels per strip when building a low-resolution image from a finer level.
const STRIP_PIXELS: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SlideError {
    #[error("{path}: not a slide OpenSlide can read ({message}); supported: Aperio .svs, generic tiled .tif, Hamamatsu .ndpi/.vms, MIRAX .mrxs, Leica .scn, Ventana .bif, Philips .tiff, Sakura .svslide")]
    Open { path: PathBuf, message: String },
    #[error("{path}: reading level {level} at ({x}, {y}) failed: {message} (truncated or corrupt file?)")]
    Read {
        path: PathBuf,
        level: u32,
        x: i64,
        y: i64,
        message: String,
    },
}

pub struct Slide {
    pub path: PathBuf,
    osr: OpenSlide,
}

/// The image a tissue mask is computed on.
pub struct LowRes {
    pub image: RgbImage,
    /// The pyramid level it was read from.
    pub level: u32,
    /// Box-averaging factor applied to that level (1 = the level as it is).
    pub factor: u32,
    /// Level-0 pixels per low-resolution pixel on x and y (CLAM's estimated downsample).
    pub scale: [f64; 2],
}

impl Slide {
    pub fn open(path: &Path) -> Result<Self, SlideError> {
        let open_error = |message: String| SlideError::Open {
            path: path.to_owned(),
            message,
        };
        // detect_vendor first: OpenSlide's open of a non-slide gives a bare "unsupported format".
        match OpenSlide::detect_vendor(path) {
            Ok(v) if !v.is_empty() => {}
            Ok(_) => return Err(open_error("unrecognised format".into())),
            Err(e) => return Err(open_error(e.to_string())),
        }
        let osr = OpenSlide::new(path).map_err(|e| open_error(e.to_string()))?;
        if osr.level_count() == 0 {
            return Err(open_error("no pyramid levels".into()));
        }
        Ok(Self {
            path: path.to_owned(),
            osr,
        })
    }

    pub fn level_count(&self) -> u32 {
        self.osr.level_count()
    }

    pub fn dimensions(&self, level: u32) -> (u64, u64) {
        self.osr
            .all_level_dimensions()
            .get(level as usize)
            .map_or((0, 0), |s| (u64::from(s.w), u64::from(s.h)))
    }

    pub fn downsamples(&self) -> Vec<f64> {
        self.osr.all_level_downsamples().to_vec()
    }

    fn property(&self, name: &str) -> Option<String> {
        self.osr.property_value(name).ok().filter(|v| !v.is_empty())
    }

    fn property_f64(&self, name: &str) -> Option<f64> {
        self.property(name)?
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v > 0.0)
    }

    /// Level-0 um/px from `openslide.mpp-x` (averaged with mpp-y when both are present).
    pub fn mpp(&self) -> Option<f64> {
        let x = self.property_f64("openslide.mpp-x");
        let y = self.property_f64("openslide.mpp-y");
        match (x, y) {
            (Some(x), Some(y)) => Some((x + y) / 2.0),
            (x, y) => x.or(y),
        }
    }

    /// `openslide.objective-power` as a number ("40.0" included).
    pub fn objective_power(&self) -> Option<f64> {
        self.property_f64("openslide.objective-power")
    }

    pub fn vendor(&self) -> String {
        self.property("openslide.vendor").unwrap_or_default()
    }

    /// Level 0 fingerprint for cache stamps: vendor, level-0 size, level count.
    pub fn describe(&self) -> String {
        let (w, h) = self.dimensions(0);
        format!(
            "{} {}x{} levels={}",
            self.vendor(),
            w,
            h,
            self.level_count()
        )
    }

    /// `openslide_get_best_level_for_downsample`, CLAM's choice of segmentation level.
    pub fn best_level_for_downsample(&self, downsample: f64) -> u32 {
        self.osr.best_level_for_downsample(downsample).unwrap_or(0)
    }

    /// An RGB region (`x`, `y` in level-0 pixels; `w`, `h` in pixels of `level`), transparent
    /// areas composited over the slide's background colour.
    pub fn read_rgb(
        &self,
        x: i64,
        y: i64,
        level: u32,
        w: u32,
        h: u32,
    ) -> Result<RgbImage, SlideError> {
        let read_error = |message: String| SlideError::Read {
            path: self.path.clone(),
            level,
            x,
            y,
            message,
        };
        let (Ok(ax), Ok(ay)) = (u32::try_from(x), u32::try_from(y)) else {
            return Err(read_error("negative or too large coordinates".into()));
        };
        let region = Region {
            address: Address { x: ax, y: ay },
            level,
            size: Size { w, h },
        };
        self.osr
            .read_image_rgb(&region)
            .map_err(|e| read_error(e.to_string()))
    }

    /// The slide at about `downsample` (relative to level 0): the level OpenSlide picks for it
    /// (CLAM's choice); when that level is more than 8x finer (a single-level file), it is
    /// box-averaged to `strip_downsample` instead, read in strips so that a large single-level
    /// slide is never held whole in memory.
    pub fn low_res(&self, downsample: f64, strip_downsample: f64) -> Result<LowRes, SlideError> {
        let level = self.best_level_for_downsample(downsample);
        let level_ds = self
            .downsamples()
            .get(level as usize)
            .copied()
            .unwrap_or(1.0);
        // A pyramid level within 8x of the target is used as it is (CLAM's choice); only a
        // slide without one (a single-level file) is box-averaged down from a finer level.
        let factor = if level_ds >= downsample / 8.0 {
            1
        } else {
            ((strip_downsample / level_ds).round() as u32).max(1)
        };
        let (lw, lh) = self.dimensions(level);
        let (ow, oh) = (
            (lw / u64::from(factor)).max(1),
            (lh / u64::from(factor)).max(1),
        );
        let rows_per_strip = (STRIP_PIXELS / lw.max(1)).max(1);
        let out_rows_per_strip = (rows_per_strip / u64::from(factor)).max(1);
        let strips: Vec<u64> = (0..oh).step_by(out_rows_per_strip as usize).collect();
        let pieces: Vec<Result<(u64, RgbImage), SlideError>> = strips
            .par_iter()
            .map(|&out_y| {
                let rows = out_rows_per_strip.min(oh - out_y);
                let read_h = (rows * u64::from(factor)).min(lh - out_y * u64::from(factor));
                let y0 = (out_y as f64 * f64::from(factor) * level_ds).round() as i64;
                let strip = self.read_rgb(0, y0, level, lw as u32, read_h as u32)?;
                Ok((out_y, box_average(&strip, factor, ow as u32, rows as u32)))
            })
            .collect();
        let mut image = RgbImage::new(ow as u32, oh as u32);
        for piece in pieces {
            let (out_y, strip) = piece?;
            image::imageops::replace(&mut image, &strip, 0, out_y as i64);
        }
        let (w0, h0) = self.dimensions(0);
        Ok(LowRes {
            scale: [w0 as f64 / ow as f64, h0 as f64 / oh as f64],
            image,
            level,
            factor,
        })
    }
}

/// Mean of each `factor` x `factor` block (area downsampling); `out_w` x `out_h` blocks.
fn box_average(strip: &RgbImage, factor: u32, out_w: u32, out_h: u32) -> RgbImage {
    if factor == 1 {
        return image::imageops::crop_imm(strip, 0, 0, out_w, out_h).to_image();
    }
    let mut out = RgbImage::new(out_w, out_h);
    let area = u32::pow(factor, 2);
    for oy in 0..out_h {
        for ox in 0..out_w {
            let mut sum = [0u32; 3];
            for y in oy * factor..((oy + 1) * factor).min(strip.height()) {
                for x in ox * factor..(ox + 1) * factor {
                    let p = strip.get_pixel(x, y).0;
                    for c in 0..3 {
                        sum[c] += u32::from(p[c]);
                    }
                }
            }
            let px = sum.map(|s| ((s + area / 2) / area) as u8);
            out.put_pixel(ox, oy, Rgb(px));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_average_means_blocks() {
        let strip = RgbImage::from_fn(4, 2, |x, _| {
            if x < 2 {
                Rgb([0, 0, 0])
            } else {
                Rgb([100, 50, 255])
            }
        });
        let out = box_average(&strip, 2, 2, 1);
        assert_eq!(out.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(out.get_pixel(1, 0).0, [100, 50, 255]);
    }
}
