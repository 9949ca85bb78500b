//! CLAM's tissue segmentation (`WholeSlideImage.segmentTissue`): HSV saturation, median blur,
//! fixed or Otsu threshold, morphological closing, contours with holes, area filters.

use image::{GrayImage, Luma, RgbImage};
use imageproc::contours::{find_contours, BorderType};
use imageproc::contrast::otsu_level;
use imageproc::filter::median_filter;

use super::polygon::{self, Polygon};
use crate::config::{SegPreset, TileConfig};

/// CLAM's `ref_patch_size`: area thresholds are counted in 512x512 level-0 blocks.
const REF_PATCH_SIZE: f64 = 512.0;

/// The segmentation parameters of one slide (a preset, then any overrides).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SegParams {
    pub sthresh: u8,
    /// Median kernel size (odd).
    pub mthresh: u32,
    /// Closing kernel size (0 = none).
    pub close: u32,
    pub use_otsu: bool,
    /// Minimum tissue area, in 512x512 level-0 blocks (holes subtracted).
    pub a_t: f64,
    /// Minimum hole area, same units.
    pub a_h: f64,
    pub max_n_holes: usize,
}

impl SegParams {
    /// CLAM's values: `create_patches_fp.py` defaults, `presets/tcga.csv`, `presets/bwh_biopsy.csv`.
    pub fn preset(preset: SegPreset) -> Self {
        let (sthresh, mthresh, close, a_t, a_h, max_n_holes) = match preset {
            SegPreset::ClamDefault => (8, 7, 4, 100.0, 16.0, 8),
            SegPreset::Tcga => (8, 7, 4, 16.0, 4.0, 8),
            SegPreset::Biopsy => (15, 11, 2, 1.0, 1.0, 2),
        };
        Self {
            sthresh,
            mthresh,
            close,
            use_otsu: false,
            a_t,
            a_h,
            max_n_holes,
        }
    }

    /// The configured preset with the configuration's overrides applied.
    pub fn from_config(options: &TileConfig) -> Self {
        let mut params = Self::preset(options.preset);
        params.apply(&SegOverrides {
            preset: None,
            sthresh: options.sthresh,
            mthresh: options.mthresh,
            close: options.close,
            use_otsu: options.use_otsu,
            a_t: options.a_t,
            a_h: options.a_h,
            max_n_holes: options.max_n_holes,
        });
        params
    }

    pub fn apply(&mut self, o: &SegOverrides) {
        if let Some(p) = o.preset {
            *self = Self::preset(p);
        }
        self.sthresh = o.sthresh.unwrap_or(self.sthresh);
        self.mthresh = o.mthresh.unwrap_or(self.mthresh);
        self.close = o.close.unwrap_or(self.close);
        self.use_otsu = o.use_otsu.unwrap_or(self.use_otsu);
        self.a_t = o.a_t.unwrap_or(self.a_t);
        self.a_h = o.a_h.unwrap_or(self.a_h);
        self.max_n_holes = o.max_n_holes.unwrap_or(self.max_n_holes);
    }

    /// `key=value` pairs for the output's attributes and parameter stamp.
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        vec![
            ("sthresh", self.sthresh.to_string()),
            ("mthresh", self.mthresh.to_string()),
            ("close", self.close.to_string()),
            ("use_otsu", self.use_otsu.to_string()),
            ("a_t", self.a_t.to_string()),
            ("a_h", self.a_h.to_string()),
            ("max_n_holes", self.max_n_holes.to_string()),
        ]
    }
}

/// Per-slide overrides (a slide list's columns); `None` keeps the current value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SegOverrides {
    pub preset: Option<SegPreset>,
    pub sthresh: Option<u8>,
    pub mthresh: Option<u32>,
    pub close: Option<u32>,
    pub use_otsu: Option<bool>,
    pub a_t: Option<f64>,
    pub a_h: Option<f64>,
    pub max_n_holes: Option<usize>,
}

/// The tissue found on a slide: contours and their holes in the segmentation image's pixels
/// and in level-0 pixels (CLAM's `contours_tissue` / `holes_tissue`).
#[derive(Debug, Clone, Default)]
pub struct Tissue {
    pub contours: Vec<Polygon>,
    pub holes: Vec<Vec<Polygon>>,
    pub contours_level0: Vec<Polygon>,
    pub holes_level0: Vec<Vec<Polygon>>,
    /// The threshold applied (the fixed one, or Otsu's).
    pub threshold: u8,
}

impl Tissue {
    pub fn is_empty(&self) -> bool {
        self.contours.is_empty()
    }
}

/// OpenCV's 8-bit RGB→HSV saturation: round(255 * (max - min) / max) via its fixed-point table.
pub fn saturation(rgb: &RgbImage) -> GrayImage {
    const SHIFT: u32 = 12;
    let table: Vec<i64> = (0..256)
        .map(|v: i64| {
            if v == 0 {
                0
            } else {
                ((255i64 << SHIFT) as f64 / v as f64).round() as i64
            }
        })
        .collect();
    let mut out = GrayImage::new(rgb.width(), rgb.height());
    for (dst, px) in out.pixels_mut().zip(rgb.pixels()) {
        let [r, g, b] = px.0;
        let v = r.max(g).max(b);
        let diff = i64::from(v - r.min(g).min(b));
        let s = (diff * table[usize::from(v)] + (1 << (SHIFT - 1))) >> SHIFT;
        *dst = Luma([s.clamp(0, 255) as u8]);
    }
    out
}

/// Number of set pixels (0/1 values) in each pixel's window [x - before, x + after] x
/// [y - before, y + after], by two running-sum passes (rows, then columns), in parallel over
/// blocks of rows. Outside the image the edge pixels repeat (`replicate`, as OpenCV's
/// medianBlur pads) or count as unset. Windows hold at most 255 pixels.
fn window_counts(
    on: &[u8],
    w: usize,
    h: usize,
    before: usize,
    after: usize,
    replicate: bool,
) -> Vec<u8> {
    use rayon::prelude::*;
    const BLOCK_ROWS: usize = 64;
    debug_assert!((before + after + 1).pow(2) <= 255);
    // Index of the pixel that stands for position i in a line of n, or None outside.
    let at = move |i: isize, n: usize| -> Option<usize> {
        if (0..n as isize).contains(&i) {
            Some(i as usize)
        } else if replicate {
            Some(i.clamp(0, n as isize - 1) as usize)
        } else {
            None
        }
    };
    let (b, a) = (before as isize, after as isize);
    let mut rows = vec![0u8; w * h];
    rows.par_chunks_mut(w.max(1))
        .zip(on.par_chunks(w.max(1)))
        .for_each(|(out, line)| {
            let value = |i: isize| at(i, w).map_or(0, |j| line[j]);
            let mut sum: u8 = (-b..=a).map(value).sum();
            let inner = (b as usize + 1)..w.saturating_sub(a as usize + 1);
            for (x, o) in out.iter_mut().enumerate() {
                *o = sum;
                sum = if inner.contains(&x) {
                    sum + line[x + a as usize + 1] - line[x - b as usize]
                } else {
                    sum + value(x as isize + a + 1) - value(x as isize - b)
                };
            }
        });
    let mut counts = vec![0u8; w * h];
    counts
        .par_chunks_mut(BLOCK_ROWS * w.max(1))
        .enumerate()
        .for_each(|(block, out)| {
            let y0 = (block * BLOCK_ROWS) as isize;
            let mut sum = vec![0u8; w];
            let add = |sum: &mut [u8], y: isize, plus: bool| {
                if let Some(y) = at(y, h) {
                    let src = &rows[y * w..(y + 1) * w];
                    if plus {
                        sum.iter_mut().zip(src).for_each(|(s, v)| *s += v);
                    } else {
                        sum.iter_mut().zip(src).for_each(|(s, v)| *s -= v);
                    }
                }
            };
            for y in y0 - b..=y0 + a {
                add(&mut sum, y, true);
            }
            for (i, line) in out.chunks_mut(w.max(1)).enumerate() {
                line.copy_from_slice(&sum);
                let y = y0 + i as isize;
                add(&mut sum, y + a + 1, true);
                add(&mut sum, y - b, false);
            }
        });
    counts
}

fn to_image(w: usize, h: usize, on: Vec<u8>) -> GrayImage {
    let raw = on.into_iter().map(|v| v * 255).collect();
    GrayImage::from_raw(w as u32, h as u32, raw).unwrap_or_default()
}

/// `median_blur(k)` then `> level`, computed exactly as a majority vote: the median of a
/// k x k window exceeds `level` iff at least (k² + 1) / 2 of its pixels do. Borders replicate
/// the edge pixels, as OpenCV's medianBlur does.
fn median_then_threshold(sat: &GrayImage, k: u32, level: u8) -> Vec<u8> {
    let (w, h) = (sat.width() as usize, sat.height() as usize);
    let above: Vec<u8> = sat.as_raw().iter().map(|&v| u8::from(v > level)).collect();
    let r = (k / 2) as usize;
    let need = (k * k).div_ceil(2) as u8;
    window_counts(&above, w, h, r, r, true)
        .into_iter()
        .map(|c| u8::from(c >= need))
        .collect()
}

/// Binary morphology (0/1 pixels) with a k x k kernel anchored at (k/2, k/2), as cv2.dilate /
/// cv2.erode (pixels outside the image do not take part).
fn binary_filter(on: &[u8], w: usize, h: usize, k: u32, dilate: bool) -> Vec<u8> {
    let before = (k / 2) as usize;
    let after = k as usize - 1 - before;
    let counts = window_counts(on, w, h, before, after, false);
    if dilate {
        return counts.into_iter().map(|c| u8::from(c > 0)).collect();
    }
    let extent = |i: usize, n: usize| (i + after).min(n - 1) + 1 - i.saturating_sub(before);
    let mut out = vec![0u8; w * h];
    for (y, (line, cline)) in out
        .chunks_mut(w.max(1))
        .zip(counts.chunks(w.max(1)))
        .enumerate()
    {
        let ey = extent(y, h);
        for (x, (o, &c)) in line.iter_mut().zip(cline).enumerate() {
            *o = u8::from(usize::from(c) == extent(x, w) * ey);
        }
    }
    out
}

/// The binary mask (255 = tissue) before contour finding, and the threshold used.
pub fn binary_mask(sat: &GrayImage, params: &SegParams) -> (GrayImage, u8) {
    let (w, h) = (sat.width() as usize, sat.height() as usize);
    let k = params.mthresh.max(1);
    let (mut on, level) = if params.use_otsu {
        // Otsu needs the blurred image's histogram, so blur for real.
        let blurred = median_filter(sat, k / 2, k / 2);
        let level = otsu_level(&blurred);
        let on = blurred
            .as_raw()
            .iter()
            .map(|&v| u8::from(v > level))
            .collect();
        (on, level)
    } else {
        (
            median_then_threshold(sat, k, params.sthresh),
            params.sthresh,
        )
    };
    if params.close > 0 {
        // cv2.morphologyEx(MORPH_CLOSE): dilate, then erode, same kernel of ones.
        let dilated = binary_filter(&on, w, h, params.close, true);
        on = binary_filter(&dilated, w, h, params.close, false);
    }
    (to_image(w, h, on), level)
}

/// Contours of `binary` with CLAM's area filters; `scale` maps segmentation pixels to level 0
/// (CLAM: level-0 dimensions over the segmentation image's).
pub fn tissue_contours(binary: &GrayImage, params: &SegParams, scale: [f64; 2]) -> Tissue {
    let ref_area = (REF_PATCH_SIZE * REF_PATCH_SIZE / (scale[0] * scale[1])).trunc();
    let min_tissue = params.a_t * ref_area;
    let min_hole = params.a_h * ref_area;
    let found = find_contours::<i32>(binary);
    let points = |i: usize| -> Polygon {
        found[i]
            .points
            .iter()
            .map(|p| [i64::from(p.x), i64::from(p.y)])
            .collect()
    };
    let mut tissue = Tissue::default();
    // RETR_CCOMP semantics: every outer border is a foreground region (islands inside holes
    // included), and a region's holes are the hole borders directly inside it.
    for (i, contour) in found.iter().enumerate() {
        if contour.border_type != BorderType::Outer {
            continue;
        }
        let outer = points(i);
        let mut holes: Vec<(f64, Polygon)> = found
            .iter()
            .enumerate()
            .filter(|(_, c)| c.border_type == BorderType::Hole && c.parent == Some(i))
            .map(|(j, _)| {
                let hole = points(j);
                (polygon::area(&hole), hole)
            })
            .collect();
        let net = polygon::area(&outer) - holes.iter().map(|h| h.0).sum::<f64>();
        if net == 0.0 || net <= min_tissue {
            continue;
        }
        // The largest holes first, at most max_n_holes of them, each above the hole threshold.
        holes.sort_by(|a, b| b.0.total_cmp(&a.0));
        let kept: Vec<Polygon> = holes
            .into_iter()
            .take(params.max_n_holes)
            .filter(|(a, _)| *a > min_hole)
            .map(|(_, h)| h)
            .collect();
        tissue.contours_level0.push(polygon::scaled(&outer, scale));
        tissue
            .holes_level0
            .push(kept.iter().map(|h| polygon::scaled(h, scale)).collect());
        tissue.contours.push(outer);
        tissue.holes.push(kept);
    }
    // OpenCV lists the outer borders in the reverse of their raster discovery order; CLAM's
    // coords follow that order, so ours do too.
    tissue.contours.reverse();
    tissue.holes.reverse();
    tissue.contours_level0.reverse();
    tissue.holes_level0.reverse();
    tissue
}

/// The whole segmentation of an RGB image at `scale` (see [`tissue_contours`]).
pub fn segment(rgb: &RgbImage, params: &SegParams, scale: [f64; 2]) -> Tissue {
    let (binary, level) = binary_mask(&saturation(rgb), params);
    let mut tissue = tissue_contours(&binary, params, scale);
    tissue.threshold = level;
    tissue
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn saturation_matches_opencv() {
        // Values from cv2.cvtColor(..., COLOR_RGB2HSV)[..., 1].
        let img = RgbImage::from_fn(4, 1, |x, _| match x {
            0 => Rgb([255, 255, 255]),
            1 => Rgb([0, 0, 0]),
            2 => Rgb([200, 100, 50]),
            _ => Rgb([10, 20, 30]),
        });
        let s = saturation(&img);
        // 255*150/200 = 191.25 → 191; 255*20/30 = 170.
        assert_eq!(s.as_raw(), &vec![0, 0, 191, 170]);
    }

    fn blob_image() -> RgbImage {
        // White background, a 60x40 pink tissue block with a 10x10 white hole, and a 3x3 speck.
        RgbImage::from_fn(100, 80, |x, y| {
            let in_block = (10..70).contains(&x) && (10..50).contains(&y);
            let in_hole = (30..40).contains(&x) && (20..30).contains(&y);
            let speck = (85..88).contains(&x) && (70..73).contains(&y);
            if (in_block && !in_hole) || speck {
                Rgb([200, 120, 180])
            } else {
                Rgb([245, 245, 245])
            }
        })
    }

    #[test]
    fn finds_the_block_with_its_hole_and_drops_the_speck() {
        let mut params = SegParams::preset(SegPreset::ClamDefault);
        params.close = 0;
        // Scale 16: one 512x512 block = 32x32 = 1024 px here; a_t = 1 block, a_h = 0.05 blocks.
        params.a_t = 1.0;
        params.a_h = 0.05;
        let tissue = segment(&blob_image(), &params, [16.0, 16.0]);
        assert_eq!(tissue.contours.len(), 1, "{:?}", tissue.contours.len());
        assert_eq!(tissue.holes[0].len(), 1);
        let (x, y, w, h) = polygon::bounding_rect(&tissue.contours[0]);
        assert_eq!((x, y, w, h), (10, 10, 60, 40));
        let (x0, y0, _, _) = polygon::bounding_rect(&tissue.contours_level0[0]);
        assert_eq!((x0, y0), (160, 160));
        // A larger area threshold removes everything.
        params.a_t = 3.0;
        assert!(segment(&blob_image(), &params, [16.0, 16.0]).is_empty());
    }

    #[test]
    fn fast_paths_equal_imageproc_median_and_morphology() {
        use imageproc::contrast::{threshold, ThresholdType};
        use imageproc::morphology::{grayscale_dilate, grayscale_erode, Mask};
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let sat = GrayImage::from_fn(37, 29, |_, _| Luma([rng.random_range(0..40u8)]));
        let (w, h) = (37, 29);
        for k in [1, 3, 7, 11] {
            let fast = to_image(w, h, median_then_threshold(&sat, k, 18));
            let slow = threshold(
                &median_filter(&sat, k / 2, k / 2),
                18,
                ThresholdType::Binary,
            );
            assert_eq!(fast, slow, "median kernel {k}");
        }
        let binary = threshold(&sat, 30, ThresholdType::Binary);
        for k in [2u32, 3, 4, 5] {
            let kernel = GrayImage::from_pixel(k, k, Luma([255]));
            let mask = Mask::from_image(&kernel, (k / 2) as u8, (k / 2) as u8);
            let on: Vec<u8> = binary.as_raw().iter().map(|&v| u8::from(v > 0)).collect();
            let dilated = to_image(w, h, binary_filter(&on, w, h, k, true));
            let eroded = to_image(w, h, binary_filter(&on, w, h, k, false));
            assert_eq!(dilated, grayscale_dilate(&binary, &mask), "dilate {k}");
            assert_eq!(eroded, grayscale_erode(&binary, &mask), "erode {k}");
        }
    }

    #[test]
    fn otsu_picks_a_level_between_the_modes() {
        let mut params = SegParams::preset(SegPreset::Tcga);
        params.use_otsu = true;
        params.a_t = 1.0;
        let tissue = segment(&blob_image(), &params, [16.0, 16.0]);
        // Background saturation 0, tissue 102: any level in [0, 102) separates them.
        assert!(tissue.threshold < 102, "{}", tissue.threshold);
        assert_eq!(tissue.contours.len(), 1);
    }
}
