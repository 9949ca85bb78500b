//! CLAM's tissue segmentation (`WholeSlideImage.segmentTissue`): HSV saturation, median blur,
//! fixed or Otsu threshold, morphological closing, contours with holes, area filters.

use image::{GrayImage, RgbImage};
use imageproc::contours::{find_contours, BorderType, Contour};
use imageproc::contrast::otsu_level;
use imageproc::filter::median_filter;
use imageproc::point::Point;

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

/// OpenCV's fixed-point table for 8-bit HSV saturation: (255 << 12) / v, rounded.
fn saturation_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    for (v, t) in table.iter_mut().enumerate().skip(1) {
        *t = ((255u32 << SAT_SHIFT) as f64 / v as f64).round() as u32;
    }
    table
}

const SAT_SHIFT: u32 = 12;

/// OpenCV's 8-bit RGB→HSV saturation of one pixel: round(255 * (max - min) / max).
fn saturation_of(table: &[u32; 256], [r, g, b]: [u8; 3]) -> u8 {
    let v = r.max(g).max(b);
    let diff = u32::from(v - r.min(g).min(b));
    ((diff * table[usize::from(v)] + (1 << (SAT_SHIFT - 1))) >> SAT_SHIFT).min(255) as u8
}

/// OpenCV's 8-bit RGB→HSV saturation channel, rows in parallel.
pub fn saturation(rgb: &RgbImage) -> GrayImage {
    use rayon::prelude::*;
    let table = saturation_table();
    let w = rgb.width() as usize;
    let mut out = GrayImage::new(rgb.width(), rgb.height());
    out.par_chunks_mut(w.max(1))
        .zip(rgb.as_raw().par_chunks(3 * w.max(1)))
        .for_each(|(dst, src)| {
            for (d, px) in dst.iter_mut().zip(src.chunks_exact(3)) {
                *d = saturation_of(&table, [px[0], px[1], px[2]]);
            }
        });
    out
}

/// 1 where a pixel's saturation exceeds `level`, else 0 (rows in parallel).
fn saturation_above(rgb: &RgbImage, level: u8) -> Vec<u8> {
    use rayon::prelude::*;
    let table = saturation_table();
    let w = rgb.width() as usize;
    let mut out = vec![0u8; w * rgb.height() as usize];
    out.par_chunks_mut(w.max(1))
        .zip(rgb.as_raw().par_chunks(3 * w.max(1)))
        .for_each(|(dst, src)| {
            for (d, px) in dst.iter_mut().zip(src.chunks_exact(3)) {
                *d = u8::from(saturation_of(&table, [px[0], px[1], px[2]]) > level);
            }
        });
    out
}

/// Sums of a 0/1 line over windows [x - before, x + after] (edge pixels repeated when
/// `replicate`, else zero outside). Inside, one vectorisable pass per window offset; wrapping
/// arithmetic, as the sums stay far below 256.
fn row_window(line: &[u8], out: &mut [u8], before: usize, after: usize, replicate: bool) {
    let w = line.len();
    let value = |i: isize| -> u8 {
        if (0..w as isize).contains(&i) {
            line[i as usize]
        } else if replicate {
            line[i.clamp(0, w as isize - 1) as usize]
        } else {
            0
        }
    };
    let span = before + after;
    let direct = |x: usize| -> u8 {
        (x as isize - before as isize..=(x + after) as isize)
            .fold(0u8, |s, i| s.wrapping_add(value(i)))
    };
    if w <= span {
        for (x, o) in out.iter_mut().enumerate() {
            *o = direct(x);
        }
        return;
    }
    // Windows wholly inside the line: x in before..w - after.
    let inner = w - span;
    let dst = &mut out[before..before + inner];
    dst.copy_from_slice(&line[..inner]);
    for d in 1..=span {
        dst.iter_mut()
            .zip(&line[d..d + inner])
            .for_each(|(o, v)| *o = o.wrapping_add(*v));
    }
    for x in (0..before).chain(w - after..w) {
        out[x] = direct(x);
    }
}

/// For every pixel, the number of set pixels (0/1 values) in its window [x - before, x + after]
/// x [y - before, y + after]; `finish(counts, out, y)` turns row y's counts into its output
/// pixels. Outside the image the edge pixels repeat (`replicate`, as OpenCV's medianBlur pads)
/// or count as unset. Blocks of rows in parallel, each computing the row sums it needs
/// (cache-sized) and sliding a column sum down them. Windows hold at most 255 pixels.
fn window_filter<F>(
    on: &[u8],
    w: usize,
    h: usize,
    before: usize,
    after: usize,
    replicate: bool,
    finish: F,
) -> Vec<u8>
where
    F: Fn(&[u8], &mut [u8], usize) + Sync,
{
    use rayon::prelude::*;
    const BLOCK_ROWS: usize = 64;
    debug_assert!((before + after + 1).pow(2) <= 255);
    let mut out = vec![0u8; w * h];
    if w == 0 || h == 0 {
        return out;
    }
    let span = before + after;
    out.par_chunks_mut(BLOCK_ROWS * w)
        .enumerate()
        .for_each(|(block, out)| {
            let y0 = block * BLOCK_ROWS;
            let rows = out.len() / w;
            // Row sums of source rows y0 - before ..= y0 + rows - 1 + after.
            let mut sums = vec![0u8; (rows + span) * w];
            for (i, dst) in sums.chunks_mut(w).enumerate() {
                let y = (y0 + i) as isize - before as isize;
                let source = if (0..h as isize).contains(&y) {
                    Some(y as usize)
                } else if replicate {
                    Some(y.clamp(0, h as isize - 1) as usize)
                } else {
                    None
                };
                if let Some(y) = source {
                    row_window(&on[y * w..(y + 1) * w], dst, before, after, replicate);
                }
            }
            let mut column = vec![0u8; w];
            for line in sums.chunks(w).take(span) {
                column
                    .iter_mut()
                    .zip(line)
                    .for_each(|(c, v)| *c = c.wrapping_add(*v));
            }
            for (i, dst) in out.chunks_mut(w).enumerate() {
                let entering = &sums[(i + span) * w..(i + span + 1) * w];
                column
                    .iter_mut()
                    .zip(entering)
                    .for_each(|(c, v)| *c = c.wrapping_add(*v));
                finish(&column, dst, y0 + i);
                let leaving = &sums[i * w..(i + 1) * w];
                column
                    .iter_mut()
                    .zip(leaving)
                    .for_each(|(c, v)| *c = c.wrapping_sub(*v));
            }
        });
    out
}

/// `one` where `count >= at_least`, else 0.
fn at_least(counts: &[u8], out: &mut [u8], at_least: u8, one: u8) {
    out.iter_mut()
        .zip(counts)
        .for_each(|(o, &c)| *o = if c >= at_least { one } else { 0 });
}

/// `median_blur(k)` then `> level` on 0/1 `above` (saturation > level), computed exactly as
/// a majority vote: the median of a k x k window exceeds `level` iff at least (k² + 1) / 2 of
/// its pixels do. Borders replicate the edge pixels, as OpenCV's medianBlur does. Set pixels
/// get the value `one`.
fn median_vote(above: &[u8], w: usize, h: usize, k: u32, one: u8) -> Vec<u8> {
    let r = (k / 2) as usize;
    let need = (k * k).div_ceil(2) as u8;
    window_filter(above, w, h, r, r, true, |counts, out, _| {
        at_least(counts, out, need, one)
    })
}

/// Binary morphology (0/1 pixels) with a k x k kernel anchored at (k/2, k/2), as cv2.dilate /
/// cv2.erode (pixels outside the image do not take part). Set pixels get the value `one`.
fn binary_filter(on: &[u8], w: usize, h: usize, k: u32, dilate: bool, one: u8) -> Vec<u8> {
    let before = (k / 2) as usize;
    let after = k as usize - 1 - before;
    if dilate {
        return window_filter(on, w, h, before, after, false, |counts, out, _| {
            at_least(counts, out, 1, one)
        });
    }
    // Erosion: every pixel of the window that lies inside the image is set.
    let extent = |i: usize, n: usize| (i + after).min(n - 1) + 1 - i.saturating_sub(before);
    window_filter(on, w, h, before, after, false, |counts, out, y| {
        let ey = extent(y, h);
        if w > before + after {
            let full = (ey * (before + after + 1)) as u8;
            at_least(
                &counts[before..w - after],
                &mut out[before..w - after],
                full,
                one,
            );
        }
        for x in (0..before.min(w)).chain(w.saturating_sub(after).max(before.min(w))..w) {
            out[x] = if usize::from(counts[x]) == extent(x, w) * ey {
                one
            } else {
                0
            };
        }
    })
}

/// The binary mask (255 = tissue) of an RGB image before contour finding, and the threshold
/// used.
pub fn binary_mask(rgb: &RgbImage, params: &SegParams) -> (GrayImage, u8) {
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let k = params.mthresh.max(1);
    // The last pass writes 255 for tissue, so no extra pass converts 0/1 to an image.
    let one = if params.close > 0 { 1 } else { 255 };
    let (mut on, level) = if params.use_otsu {
        // Otsu needs the blurred image's histogram, so blur for real.
        let blurred = median_filter(&saturation(rgb), k / 2, k / 2);
        let level = otsu_level(&blurred);
        let on = blurred
            .as_raw()
            .iter()
            .map(|&v| if v > level { one } else { 0 })
            .collect();
        (on, level)
    } else {
        let above = saturation_above(rgb, params.sthresh);
        (median_vote(&above, w, h, k, one), params.sthresh)
    };
    if params.close > 0 {
        // cv2.morphologyEx(MORPH_CLOSE): dilate, then erode, same kernel of ones.
        let dilated = binary_filter(&on, w, h, params.close, true, 1);
        on = binary_filter(&dilated, w, h, params.close, false, 255);
    }
    (
        GrayImage::from_raw(w as u32, h as u32, on).unwrap_or_default(),
        level,
    )
}

/// imageproc's `find_contours` (Suzuki–Abe, OpenCV's order), run separately on each band of
/// rows between rows without tissue, bands in parallel, each cropped to its tissue's columns.
/// The same contours in the same order as on the whole image: no border crosses an empty row,
/// the scan meets the bands top to bottom, and each crop keeps one empty row and column of
/// margin where the image has one, so every neighbourhood the border following examines is
/// unchanged.
fn contours_by_band(binary: &GrayImage) -> Vec<Contour<i32>> {
    use rayon::prelude::*;
    let (w, h) = (binary.width() as usize, binary.height() as usize);
    if w == 0 || h == 0 {
        return Vec::new();
    }
    // Each row's first and last set column.
    let extents: Vec<Option<(usize, usize)>> = binary
        .as_raw()
        .par_chunks(w)
        .map(|row| {
            let first = row.iter().position(|&v| v != 0)?;
            let last = row.iter().rposition(|&v| v != 0)?;
            Some((first, last))
        })
        .collect();
    // Bands: maximal runs of rows with tissue, with their column span.
    let mut bands: Vec<(usize, usize, usize, usize)> = Vec::new();
    for (y, extent) in extents.iter().enumerate() {
        let Some((a, b)) = *extent else { continue };
        match bands.last_mut() {
            Some(band) if band.1 + 1 == y => {
                band.1 = y;
                band.2 = band.2.min(a);
                band.3 = band.3.max(b);
            }
            _ => bands.push((y, y, a, b)),
        }
    }
    let crops: Vec<(usize, usize, usize, usize)> = bands
        .iter()
        .map(|&(y0, y1, x0, x1)| {
            (
                y0.saturating_sub(1),
                (y1 + 1).min(h - 1),
                x0.saturating_sub(1),
                (x1 + 1).min(w - 1),
            )
        })
        .collect();
    let cropped_pixels: usize = crops
        .iter()
        .map(|&(y0, y1, x0, x1)| (y1 - y0 + 1) * (x1 - x0 + 1))
        .sum();
    if crops.len() <= 1 && cropped_pixels * 10 >= w * h * 9 {
        return find_contours::<i32>(binary);
    }
    let found: Vec<Vec<Contour<i32>>> = crops
        .par_iter()
        .map(|&(y0, y1, x0, x1)| {
            let (cw, ch) = (x1 - x0 + 1, y1 - y0 + 1);
            let mut raw = Vec::with_capacity(cw * ch);
            for row in binary.as_raw().chunks(w).skip(y0).take(ch) {
                raw.extend_from_slice(&row[x0..=x1]);
            }
            let crop = GrayImage::from_raw(cw as u32, ch as u32, raw).unwrap_or_default();
            find_contours::<i32>(&crop)
                .into_iter()
                .map(|c| Contour {
                    points: c
                        .points
                        .into_iter()
                        .map(|p| Point::new(p.x + x0 as i32, p.y + y0 as i32))
                        .collect(),
                    ..c
                })
                .collect()
        })
        .collect();
    let mut all = Vec::new();
    for band in found {
        let offset = all.len();
        all.extend(band.into_iter().map(|c| Contour {
            parent: c.parent.map(|p| p + offset),
            ..c
        }));
    }
    all
}

/// Contours of `binary` with CLAM's area filters; `scale` maps segmentation pixels to level 0
/// (CLAM: level-0 dimensions over the segmentation image's).
pub fn tissue_contours(binary: &GrayImage, params: &SegParams, scale: [f64; 2]) -> Tissue {
    let ref_area = (REF_PATCH_SIZE * REF_PATCH_SIZE / (scale[0] * scale[1])).trunc();
    let min_tissue = params.a_t * ref_area;
    let min_hole = params.a_h * ref_area;
    let found = contours_by_band(binary);
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
    let (binary, level) = binary_mask(rgb, params);
    let mut tissue = tissue_contours(&binary, params, scale);
    tissue.threshold = level;
    tissue
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Luma, Rgb};

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
        // Images smaller than a kernel, than one block of rows, and over several blocks.
        for (w, h) in [(5usize, 3usize), (37, 29), (150, 140)] {
            let sat =
                GrayImage::from_fn(w as u32, h as u32, |_, _| Luma([rng.random_range(0..40u8)]));
            let above: Vec<u8> = sat.as_raw().iter().map(|&v| u8::from(v > 18)).collect();
            for k in [1, 3, 7, 11] {
                let fast = median_vote(&above, w, h, k, 255);
                let slow = threshold(
                    &median_filter(&sat, k / 2, k / 2),
                    18,
                    ThresholdType::Binary,
                );
                assert_eq!(&fast, slow.as_raw(), "median kernel {k}, {w}x{h}");
            }
            let binary = threshold(&sat, 30, ThresholdType::Binary);
            let on: Vec<u8> = binary.as_raw().iter().map(|&v| u8::from(v > 0)).collect();
            for k in [2u32, 3, 4, 5] {
                let kernel = GrayImage::from_pixel(k, k, Luma([255]));
                let mask = Mask::from_image(&kernel, (k / 2) as u8, (k / 2) as u8);
                let dilated = binary_filter(&on, w, h, k, true, 255);
                let eroded = binary_filter(&on, w, h, k, false, 255);
                let want_dilated = grayscale_dilate(&binary, &mask);
                let want_eroded = grayscale_erode(&binary, &mask);
                assert_eq!(&dilated, want_dilated.as_raw(), "dilate {k}, {w}x{h}");
                assert_eq!(&eroded, want_eroded.as_raw(), "erode {k}, {w}x{h}");
            }
        }
    }

    #[test]
    fn saturation_mask_equals_thresholded_saturation() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let rgb = RgbImage::from_fn(64, 3, |_, _| {
            image::Rgb([rng.random(), rng.random(), rng.random()])
        });
        let sat = saturation(&rgb);
        let above = saturation_above(&rgb, 100);
        let want: Vec<u8> = sat.as_raw().iter().map(|&v| u8::from(v > 100)).collect();
        assert_eq!(above, want);
    }

    #[test]
    fn contours_by_band_equal_contours_of_the_whole_image() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let mut several_bands = 0;
        for trial in 0..60 {
            let (w, h) = (rng.random_range(1..70u32), rng.random_range(1..70u32));
            // Random blobs (some with holes, some touching the edges) and empty rows between.
            let mut image = GrayImage::new(w, h);
            for _ in 0..rng.random_range(0..6) {
                let (cx, cy) = (rng.random_range(0..w) as i32, rng.random_range(0..h) as i32);
                let (r, hole) = (rng.random_range(1..12i32), rng.random_range(0..4i32));
                for y in 0..h as i32 {
                    for x in 0..w as i32 {
                        let d = (x - cx).pow(2) + (y - cy).pow(2);
                        if d <= r * r && d >= hole * hole && rng.random_range(0..10) > 0 {
                            image.put_pixel(x as u32, y as u32, Luma([255]));
                        }
                    }
                }
            }
            let rows_with_tissue: Vec<bool> = image
                .as_raw()
                .chunks(w as usize)
                .map(|row| row.iter().any(|&v| v != 0))
                .collect();
            let bands = rows_with_tissue
                .iter()
                .enumerate()
                .filter(|&(y, &on)| on && (y == 0 || !rows_with_tissue[y - 1]))
                .count();
            several_bands += usize::from(bands > 1);
            let banded = contours_by_band(&image);
            let whole = find_contours::<i32>(&image);
            assert_eq!(banded.len(), whole.len(), "trial {trial}");
            for (a, b) in banded.iter().zip(&whole) {
                assert_eq!(a.points, b.points, "trial {trial}");
                assert_eq!(a.border_type, b.border_type, "trial {trial}");
                assert_eq!(a.parent, b.parent, "trial {trial}");
            }
        }
        assert!(
            several_bands >= 10,
            "only {several_bands} images had several bands"
        );
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
