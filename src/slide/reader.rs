//! One slide through OpenSlide: levels, resolution metadata, RGB regions, and the
//! low-resolution image the tissue mask is computed on.

use std::path::{Path, PathBuf};

use image::RgbImage;
use openslide_rs::{Address, OpenSlide, Region, Size};
use rayon::prelude::*;

/// Pixels per strip when building a low-resolution image from a finer level.
const STRIP_PIXELS: u64 = 4 << 20;

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

    /// `openslide.background-color` (white when the slide names none).
    pub fn background(&self) -> [u8; 3] {
        self.property("openslide.background-color")
            .filter(|hex| hex.len() == 6)
            .and_then(|hex| {
                let c = |i: usize| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok();
                Some([c(0)?, c(2)?, c(4)?])
            })
            .unwrap_or([255, 255, 255])
    }

    /// A raw region: premultiplied BGRA bytes, `w` x `h` pixels of `level`.
    fn read_bgra(&self, x: i64, y: i64, level: u32, w: u32, h: u32) -> Result<Vec<u8>, SlideError> {
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
            .read_region(&region)
            .map_err(|e| read_error(e.to_string()))
    }

    /// An RGB region as interleaved bytes (`w` x `h` pixels of `level`, top-left at level-0
    /// `x`, `y`), composited over the slide's background colour.
    pub fn read_rgb_bytes(
        &self,
        x: i64,
        y: i64,
        level: u32,
        w: u32,
        h: u32,
    ) -> Result<Vec<u8>, SlideError> {
        let bgra = self.read_bgra(x, y, level, w, h)?;
        let background = self.background();
        let mut rgb = vec![0u8; bgra.len() / 4 * 3];
        for (out, px) in rgb.chunks_exact_mut(3).zip(bgra.chunks_exact(4)) {
            let c = composite(px, background);
            out.copy_from_slice(&[c[0] as u8, c[1] as u8, c[2] as u8]);
        }
        Ok(rgb)
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
        let bytes = self.read_rgb_bytes(x, y, level, w, h)?;
        RgbImage::from_raw(w, h, bytes).ok_or_else(|| SlideError::Read {
            path: self.path.clone(),
            level,
            x,
            y,
            message: "OpenSlide returned a buffer of the wrong size".into(),
        })
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
        let (w0, h0) = self.dimensions(0);
        if factor == 1 {
            // The level as it is: TurboJPEG decodes a JPEG-tiled level several times faster
            // than OpenSlide's single-threaded read_region (same pixels, checked).
            if let Some(raw) = super::jpeg_tiles::decode_level(&self.path, self, level) {
                if let Some(image) = RgbImage::from_raw(lw as u32, lh as u32, raw) {
                    return Ok(LowRes {
                        scale: [w0 as f64 / lw as f64, h0 as f64 / lh as f64],
                        image,
                        level,
                        factor,
                    });
                }
            }
        }
        let f = u64::from(factor);
        let (ow, oh) = ((lw / f).max(1), (lh / f).max(1));
        // Strips of whole tile rows, so no tile is decoded twice.
        let tile_h = self
            .property(&format!("openslide.level[{level}].tile-height"))
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&t| t > 0)
            .unwrap_or(256);
        let read_rows = (STRIP_PIXELS / (lw.max(1) * tile_h)).max(1) * tile_h;
        let out_rows = (read_rows / f).max(1) as usize;
        let background = self.background();
        let mut raw = vec![0u8; (ow * oh * 3) as usize];
        // Each strip is read and converted (or box-averaged) straight into its output rows.
        raw.par_chunks_mut(out_rows * ow as usize * 3)
            .enumerate()
            .try_for_each(|(i, out)| -> Result<(), SlideError> {
                let out_y = (i * out_rows) as u64;
                let rows = (out.len() / (ow as usize * 3)) as u64;
                let read_h = (rows * f).min(lh - out_y * f);
                let y0 = (out_y as f64 * f as f64 * level_ds).round() as i64;
                let bgra = self.read_bgra(0, y0, level, lw as u32, read_h as u32)?;
                average_into(
                    &bgra,
                    lw as usize,
                    factor as usize,
                    background,
                    out,
                    ow as usize,
                );
                Ok(())
            })?;
        let image = RgbImage::from_raw(ow as u32, oh as u32, raw).unwrap_or_default();
        Ok(LowRes {
            scale: [w0 as f64 / ow as f64, h0 as f64 / oh as f64],
            image,
            level,
            factor,
        })
    }
}

/// Premultiplied BGRA composited over `background`, as RGB.
fn composite(px: &[u8], background: [u8; 3]) -> [u32; 3] {
    let alpha = u32::from(px[3]);
    let over = |c: u8, bg: u8| u32::from(c) + (u32::from(bg) * (255 - alpha) + 127) / 255;
    [
        over(px[2], background[0]).min(255),
        over(px[1], background[1]).min(255),
        over(px[0], background[2]).min(255),
    ]
}

/// Writes the mean of each `factor` x `factor` block of a BGRA strip (`width` pixels wide)
/// into `out`, RGB rows of `out_w` pixels (area downsampling; factor 1 converts only).
fn average_into(
    bgra: &[u8],
    width: usize,
    factor: usize,
    background: [u8; 3],
    out: &mut [u8],
    out_w: usize,
) {
    let area = (factor * factor) as u32;
    let strip_rows = bgra.len() / (4 * width.max(1));
    for (oy, row) in out.chunks_mut(out_w * 3).enumerate() {
        for (ox, px) in row.chunks_mut(3).enumerate() {
            let mut sum = [0u32; 3];
            for y in oy * factor..((oy + 1) * factor).min(strip_rows) {
                let line =
                    &bgra[(y * width + ox * factor) * 4..(y * width + (ox + 1) * factor) * 4];
                for p in line.chunks_exact(4) {
                    let c = composite(p, background);
                    sum[0] += c[0];
                    sum[1] += c[1];
                    sum[2] += c[2];
                }
            }
            for c in 0..3 {
                px[c] = ((sum[c] + area / 2) / area) as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_blocks_over_the_background() {
        // Two 2x2 blocks: opaque black, and transparent (premultiplied 0) → the background.
        let mut bgra = Vec::new();
        for _ in 0..2 {
            bgra.extend_from_slice(&[0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 0, 0, 0, 0, 0]);
        }
        let mut out = vec![0u8; 6];
        average_into(&bgra, 4, 2, [200, 100, 50], &mut out, 2);
        assert_eq!(out, [0, 0, 0, 200, 100, 50]);
        // Factor 1 converts BGRA to RGB.
        let mut out = vec![0u8; 3];
        average_into(&[10, 20, 30, 255], 1, 1, [255, 255, 255], &mut out, 1);
        assert_eq!(out, [30, 20, 10]);
    }
}
