//! The 20x patch grid: which pyramid level and read size give `target_mpp`, and which grid
//! positions CLAM's contour rules keep (`WholeSlideImage.process_contour`).

use rayon::prelude::*;

use super::mask::Tissue;
use super::polygon::{self, Side};
use crate::config::ContourFn;

/// A level counts as fine enough when its um/px exceeds the target by at most this fraction
/// (so a 20x level recorded as 0.5054 um/px serves a 0.5 target without reading level 0).
const LEVEL_TOLERANCE: f64 = 0.02;

/// How patches are read: `level_read_size` pixels at `level`, resized to `patch_size`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    pub level: u32,
    pub level_mpp: f64,
    pub downsample: f64,
    /// Pixels read at `level` for one patch.
    pub level_read_size: u32,
    /// Level-0 pixels one patch covers.
    pub read_size: i64,
    /// Level-0 pixels between grid positions.
    pub step: i64,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("the slide's {mpp} um/px is coarser than the target {target} um/px; set tile.allow_upsample: true to upsample it, or tile.target_mpp to a coarser value")]
    TooCoarse { mpp: f64, target: f64 },
}

/// Picks the coarsest level whose resolution is at least the target's and the region to read:
/// `round(patch_size * target_mpp / level_mpp)` pixels at that level.
pub fn plan(
    mpp: f64,
    downsamples: &[f64],
    target_mpp: f64,
    patch_size: u32,
    step: u32,
    allow_upsample: bool,
) -> Result<Plan, PlanError> {
    let fine_enough = |ds: f64| mpp * ds <= target_mpp * (1.0 + LEVEL_TOLERANCE);
    let level = downsamples
        .iter()
        .enumerate()
        .filter(|(_, &ds)| fine_enough(ds))
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i as u32);
    let level = match level {
        Some(level) => level,
        None if allow_upsample => 0,
        None => {
            return Err(PlanError::TooCoarse {
                mpp,
                target: target_mpp,
            })
        }
    };
    let downsample = downsamples.get(level as usize).copied().unwrap_or(1.0);
    let level_mpp = mpp * downsample;
    let level_read_size = ((f64::from(patch_size) * target_mpp / level_mpp).round() as u32).max(1);
    let read_size = ((f64::from(level_read_size) * downsample).round() as i64).max(1);
    let step = if step == patch_size {
        read_size
    } else {
        ((read_size as f64 * f64::from(step) / f64::from(patch_size)).round() as i64).max(1)
    };
    Ok(Plan {
        level,
        level_mpp,
        downsample,
        level_read_size,
        read_size,
        step,
    })
}

/// Nominal um/px for CLAM/TRIDENT parity: 10 / objective power (or / the standard
/// magnification nearest 10 / mpp when the slide records none).
pub fn nominal_mpp(mpp: f64, objective_power: Option<f64>) -> f64 {
    let magnification = objective_power.unwrap_or_else(|| {
        let estimate = 10.0 / mpp;
        [1.25, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 80.0]
            .into_iter()
            .min_by(|a, b| {
                (a / estimate)
                    .ln()
                    .abs()
                    .total_cmp(&(b / estimate).ln().abs())
            })
            .unwrap_or(estimate)
    });
    10.0 / magnification
}

/// Edges of a polygon that touch each queried row, in doubled coordinates (so the half-pixel
/// centres CLAM tests against holes stay exact).
struct RowIndex {
    rows: std::collections::HashMap<i64, Vec<[i64; 4]>>,
}

impl RowIndex {
    fn new(polygon: &[[i64; 2]], doubled_rows: &[i64]) -> Self {
        let n = polygon.len();
        let edges: Vec<[i64; 4]> = (0..n)
            .map(|i| {
                let [x0, y0] = polygon[(i + n - 1) % n];
                let [x1, y1] = polygon[i];
                [2 * x0, 2 * y0, 2 * x1, 2 * y1]
            })
            .collect();
        let mut rows = std::collections::HashMap::new();
        for &y in doubled_rows {
            rows.entry(y).or_insert_with(|| {
                edges
                    .iter()
                    .filter(|e| e[1].min(e[3]) <= y && y <= e[1].max(e[3]))
                    .copied()
                    .collect::<Vec<_>>()
            });
        }
        Self { rows }
    }

    /// `point` in doubled coordinates; rows not indexed are outside.
    fn side(&self, point: [i64; 2]) -> Side {
        let Some(edges) = self.rows.get(&point[1]) else {
            return Side::Outside;
        };
        // The edges touching this row are all that can cross or contain the point; they are
        // tested as one open chain list, each edge on its own.
        let [x, y] = point;
        let mut crossings = 0usize;
        for &[x0, y0, x1, y1] in edges {
            let cross = (x1 - x0) * (y - y0) - (y1 - y0) * (x - x0);
            if cross == 0 && x0.min(x1) <= x && x <= x0.max(x1) {
                return Side::OnEdge;
            }
            if (y0 > y) != (y1 > y) {
                let dy = y1 - y0;
                let lhs = (x - x0) * dy;
                let rhs = (y - y0) * (x1 - x0);
                if (dy > 0 && lhs < rhs) || (dy < 0 && lhs > rhs) {
                    crossings += 1;
                }
            }
        }
        if crossings % 2 == 1 {
            Side::Inside
        } else {
            Side::Outside
        }
    }
}

/// CLAM's grid positions that pass `contour_fn` for a contour and lie outside its holes,
/// contour by contour, each grid anchored at its contour's bounding box, x-major order.
pub fn patch_coords(tissue: &Tissue, plan: &Plan, contour_fn: ContourFn) -> Vec<[i64; 2]> {
    let ps = plan.read_size;
    let half = ps / 2;
    let shift = ((half as f64) * 0.5) as i64;
    // Points tested against the contour, relative to a patch's top-left corner (doubled).
    let offsets: Vec<[i64; 2]> = match contour_fn {
        ContourFn::Basic => vec![[0, 0]],
        ContourFn::Center => vec![[2 * half, 2 * half]],
        ContourFn::FourPt | ContourFn::FourPtHard if shift > 0 => vec![
            [2 * (half - shift), 2 * (half - shift)],
            [2 * (half + shift), 2 * (half + shift)],
            [2 * (half + shift), 2 * (half - shift)],
            [2 * (half - shift), 2 * (half + shift)],
        ],
        ContourFn::FourPt | ContourFn::FourPtHard => vec![[2 * half, 2 * half]],
    };
    let all = matches!(contour_fn, ContourFn::FourPtHard);
    let mut coords = Vec::new();
    for (contour, holes) in tissue.contours_level0.iter().zip(&tissue.holes_level0) {
        let (sx, sy, w, h) = polygon::bounding_rect(contour);
        let xs: Vec<i64> = (sx..sx + w).step_by(plan.step as usize).collect();
        let ys: Vec<i64> = (sy..sy + h).step_by(plan.step as usize).collect();
        let mut contour_rows: Vec<i64> = ys
            .iter()
            .flat_map(|&y| offsets.iter().map(move |o| 2 * y + o[1]))
            .collect();
        contour_rows.sort_unstable();
        contour_rows.dedup();
        let index = RowIndex::new(contour, &contour_rows);
        // CLAM's isInHoles tests the centre pt + patch_size / 2 (true division).
        let hole_rows: Vec<i64> = ys.iter().map(|&y| 2 * y + ps).collect();
        let hole_index: Vec<RowIndex> =
            holes.iter().map(|h| RowIndex::new(h, &hole_rows)).collect();
        let keep = |x: i64, y: i64| -> bool {
            let mut sides = offsets
                .iter()
                .map(|o| index.side([2 * x + o[0], 2 * y + o[1]]));
            let in_contour = if all {
                sides.all(|s| s != Side::Outside)
            } else {
                sides.any(|s| s != Side::Outside)
            };
            in_contour
                && !hole_index
                    .iter()
                    .any(|hi| hi.side([2 * x + ps, 2 * y + ps]) == Side::Inside)
        };
        let kept: Vec<[i64; 2]> = xs
            .par_iter()
            .flat_map_iter(|&x| {
                ys.iter()
                    .filter(move |&&y| keep(x, y))
                    .map(move |&y| [x, y])
            })
            .collect();
        coords.extend(kept);
    }
    coords
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_sizes_for_common_resolutions() {
        // 40x Aperio pyramid (levels 1, 4, 16): level 0, 512 px read.
        let p = plan(0.25, &[1.0, 4.0, 16.0], 0.5, 256, 256, false).unwrap();
        assert_eq!(
            (p.level, p.level_read_size, p.read_size, p.step),
            (0, 512, 512, 512)
        );
        // 0.2527 um/px: 256 * 0.5 / 0.2527 = 506.53 → 507 (the real mpp, not 512).
        let p = plan(0.2527, &[1.0, 4.0, 16.0], 0.5, 256, 256, false).unwrap();
        assert_eq!((p.level, p.level_read_size, p.read_size), (0, 507, 507));
        // 20x: read 256 at level 0.
        let p = plan(0.5, &[1.0, 4.0], 0.5, 256, 256, false).unwrap();
        assert_eq!((p.level, p.level_read_size), (0, 256));
        // 80x with a 4x level (0.5 um/px): that level, 256 px, covering 1024 level-0 px.
        let p = plan(0.125, &[1.0, 4.0, 16.0], 0.5, 256, 256, false).unwrap();
        assert_eq!((p.level, p.level_read_size, p.read_size), (1, 256, 1024));
        // A 20x level recorded as 0.5054 um/px (2 x 0.2527) is used, reading 253 px.
        let p = plan(0.2527, &[1.0, 2.0, 8.0], 0.5, 256, 256, false).unwrap();
        assert_eq!((p.level, p.level_read_size, p.read_size), (1, 253, 506));
        // 10x: too coarse unless upsampling is allowed (then 128 px read).
        assert!(matches!(
            plan(1.0, &[1.0], 0.5, 256, 256, false),
            Err(PlanError::TooCoarse { .. })
        ));
        let p = plan(1.0, &[1.0], 0.5, 256, 256, true).unwrap();
        assert_eq!((p.level, p.level_read_size, p.read_size), (0, 128, 128));
        // Half-overlapping grid.
        let p = plan(0.25, &[1.0], 0.5, 256, 128, false).unwrap();
        assert_eq!(p.step, 256);
    }

    #[test]
    fn nominal_magnification() {
        assert_eq!(nominal_mpp(0.2527, Some(40.0)), 0.25);
        assert_eq!(nominal_mpp(0.2527, None), 0.25);
        assert_eq!(nominal_mpp(0.499, None), 0.5);
    }

    #[test]
    fn row_index_agrees_with_the_plain_test() {
        let poly: Vec<[i64; 2]> = vec![
            [0, 0],
            [20, 0],
            [20, 20],
            [12, 20],
            [12, 6],
            [6, 6],
            [6, 20],
            [0, 20],
        ];
        for y in -2..23 {
            for x in -2..23 {
                for (dx, dy) in [(0, 0), (1, 1), (1, 0)] {
                    let p2 = [2 * x + dx, 2 * y + dy];
                    let doubled: Vec<[i64; 2]> =
                        poly.iter().map(|p| [2 * p[0], 2 * p[1]]).collect();
                    let index = RowIndex::new(&poly, &[p2[1]]);
                    assert_eq!(index.side(p2), polygon::point_side(&doubled, p2), "{p2:?}");
                }
            }
        }
    }

    #[test]
    fn grid_keeps_tissue_and_skips_holes() {
        // A 4096x2048 level-0 rectangle with a 1024x1024 hole at (1024, 512).
        let tissue = Tissue {
            contours_level0: vec![vec![[0, 0], [4095, 0], [4095, 2047], [0, 2047]]],
            holes_level0: vec![vec![vec![
                [1024, 512],
                [2047, 512],
                [2047, 1535],
                [1024, 1535],
            ]]],
            ..Tissue::default()
        };
        let plan = plan(0.25, &[1.0], 0.5, 256, 256, false).unwrap();
        let coords = patch_coords(&tissue, &plan, ContourFn::FourPt);
        // 8 x 4 positions, minus the 2 x 2 whose centres fall in the hole.
        assert_eq!(coords.len(), 32 - 4);
        assert!(!coords.contains(&[1024, 512]));
        assert!(coords.contains(&[0, 0]));
        assert_eq!(coords[1], [0, 512], "x-major order like CLAM's meshgrid");
    }
}
