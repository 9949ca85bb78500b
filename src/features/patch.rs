//! One patch from the slide: read at the recorded level and size, resized to the encoder's
//! input (area averaging when shrinking, as CLAM's 40x → 20x users do by hand), RGB bytes.

use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use crate::slide::jpeg_tiles::JpegTiles;
use crate::slide::reader::{Slide, SlideError};

/// How the patches of one slide are read (from its patches file's attributes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub level: u32,
    /// Pixels read at `level`.
    pub read_size: u32,
    /// Pixels the encoder sees (square).
    pub input_size: u32,
}

/// Resizes a square RGB patch of `from` pixels to `to` pixels: area averaging (a box filter
/// scaled to the ratio) when shrinking, bilinear when enlarging.
pub fn resize(rgb: Vec<u8>, from: u32, to: u32) -> Vec<u8> {
    if from == to {
        return rgb;
    }
    let filter = if to < from {
        FilterType::Box
    } else {
        FilterType::Bilinear
    };
    let src = match Image::from_vec_u8(from, from, rgb, PixelType::U8x3) {
        Ok(src) => src,
        // The buffer always holds from x from RGB pixels; keep a blank patch otherwise.
        Err(_) => return vec![0; (to * to * 3) as usize],
    };
    let mut dst = Image::new(to, to, PixelType::U8x3);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(filter));
    if Resizer::new().resize(&src, &mut dst, &options).is_err() {
        return vec![0; (to * to * 3) as usize];
    }
    dst.into_vec()
}

/// One reader's access to a slide: OpenSlide, and the JPEG fast path when it applies.
pub struct Reader {
    pub slide: Slide,
    pub tiles: Option<JpegTiles>,
    background: [u8; 3],
    downsample: f64,
}

impl Reader {
    /// Opens `path` for patches of `geometry`; `fast` allows the JPEG fast path (used when the
    /// read size is 2, 4 or 8 times the input size and the level is JPEG-tiled).
    pub fn open(
        path: &std::path::Path,
        geometry: Geometry,
        fast: bool,
    ) -> Result<Self, SlideError> {
        let slide = Slide::open(path)?;
        let ratio = geometry.read_size / geometry.input_size.max(1);
        let tiles = (fast && geometry.read_size == ratio * geometry.input_size)
            .then(|| JpegTiles::open(path, &slide, geometry.level, ratio))
            .flatten();
        let downsample = slide
            .downsamples()
            .get(geometry.level as usize)
            .copied()
            .unwrap_or(1.0);
        Ok(Self {
            background: slide.background(),
            slide,
            tiles,
            downsample,
        })
    }

    /// Another reader of the same slide for another thread: its own OpenSlide and file
    /// handles, the fast path's layout and check shared (so the slide's TIFF directory is
    /// parsed once, not once per reader).
    pub fn another(&self) -> Result<Self, SlideError> {
        let slide = Slide::open(&self.slide.path)?;
        let tiles = match &self.tiles {
            Some(tiles) => Some(tiles.another().ok_or_else(|| SlideError::Open {
                path: self.slide.path.clone(),
                message: "cannot open another handle on the file".into(),
            })?),
            None => None,
        };
        Ok(Self {
            slide,
            tiles,
            background: self.background,
            downsample: self.downsample,
        })
    }

    /// Reads the patch whose level-0 top-left corner is `(x, y)`, as `input_size`² RGB bytes;
    /// returns the bytes and the seconds spent reading (with decoding) and resizing.
    pub fn read(
        &mut self,
        geometry: Geometry,
        x: i64,
        y: i64,
    ) -> Result<(Vec<u8>, f64, f64), SlideError> {
        let mut out = vec![0u8; (geometry.input_size as usize).pow(2) * 3];
        let (read_s, resize_s) = self.read_into(geometry, x, y, &mut out)?;
        Ok((out, read_s, resize_s))
    }

    /// [`Reader::read`] into `out` (`input_size`² x 3 bytes, e.g. a slot of a batch).
    pub fn read_into(
        &mut self,
        geometry: Geometry,
        x: i64,
        y: i64,
        out: &mut [u8],
    ) -> Result<(f64, f64), SlideError> {
        let started = std::time::Instant::now();
        let failed = |message: String| SlideError::Read {
            path: self.slide.path.clone(),
            level: geometry.level,
            x,
            y,
            message,
        };
        if let Some(tiles) = self.tiles.as_mut() {
            // The fast path snaps the origin down to a multiple of its scale: at most
            // scale - 1 pixels of the level (0.25 um per pixel at 40x).
            let s = i64::from(tiles.scale());
            let lx = (x as f64 / self.downsample).round() as i64;
            let ly = (y as f64 / self.downsample).round() as i64;
            tiles
                .read_into(
                    lx - lx.rem_euclid(s),
                    ly - ly.rem_euclid(s),
                    geometry.read_size,
                    self.background,
                    out,
                )
                .map_err(failed)?;
            return Ok((started.elapsed().as_secs_f64(), 0.0));
        }
        let rgb = self.slide.read_rgb_bytes(
            x,
            y,
            geometry.level,
            geometry.read_size,
            geometry.read_size,
        )?;
        let read_s = started.elapsed().as_secs_f64();
        let started = std::time::Instant::now();
        let resized = resize(rgb, geometry.read_size, geometry.input_size);
        if resized.len() != out.len() {
            return Err(failed(format!(
                "a {0}x{0} RGB patch does not fit {1} bytes",
                geometry.input_size,
                out.len()
            )));
        }
        out.copy_from_slice(&resized);
        Ok((read_s, started.elapsed().as_secs_f64()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halving_averages_two_by_two_blocks() {
        // 4x4 patch: each 2x2 block has one value per channel, except the last, which mixes.
        let mut rgb = Vec::new();
        for y in 0..4u8 {
            for x in 0..4u8 {
                let block = (y / 2) * 2 + x / 2;
                let v = if block == 3 { (x + y) * 20 } else { block * 50 };
                rgb.extend_from_slice(&[v, 255 - v, 7]);
            }
        }
        let out = resize(rgb, 4, 2);
        assert_eq!(&out[0..3], &[0, 255, 7]);
        assert_eq!(&out[3..6], &[50, 205, 7]);
        assert_eq!(&out[6..9], &[100, 155, 7]);
        // Last block: (4 + 5 + 5 + 6) * 20 / 4 = 100.
        assert_eq!(&out[9..12], &[100, 155, 7]);
        assert_eq!(resize(vec![1, 2, 3], 1, 1), vec![1, 2, 3]);
    }
}
