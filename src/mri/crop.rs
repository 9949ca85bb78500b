//! The tumour crop: the mask's bounding box plus a margin in millimetres, intensity
//! normalisation within the crop, and trilinear resampling to a fixed size.

use tch::{Kind, Tensor};

use super::nifti::Volume;
use crate::survival::quantile;

/// A box of voxels, `start` inclusive and `end` exclusive, in (x, y, z) order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    pub start: [usize; 3],
    pub end: [usize; 3],
}

impl CropBox {
    pub fn size(&self) -> [usize; 3] {
        [0, 1, 2].map(|a| self.end[a] - self.start[a])
    }

    /// The box in millimetres from the centre of voxel (0, 0, 0) along each axis:
    /// [x0, y0, z0, x1, y1, z1] with the end exclusive (as the voxel box).
    pub fn millimetres(&self, spacing: [f64; 3]) -> [f64; 6] {
        [
            self.start[0] as f64 * spacing[0],
            self.start[1] as f64 * spacing[1],
            self.start[2] as f64 * spacing[2],
            self.end[0] as f64 * spacing[0],
            self.end[1] as f64 * spacing[1],
            self.end[2] as f64 * spacing[2],
        ]
    }
}

/// The smallest box holding every voxel of `mask` that is > 0; `None` for an empty mask.
pub fn mask_bounds(mask: &Volume) -> Option<CropBox> {
    let [nx, ny, nz] = mask.shape3();
    let mut start = [usize::MAX; 3];
    let mut end = [0usize; 3];
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                if mask.at(x, y, z, 0) > 0.0 {
                    for (a, v) in [x, y, z].into_iter().enumerate() {
                        start[a] = start[a].min(v);
                        end[a] = end[a].max(v + 1);
                    }
                }
            }
        }
    }
    (start[0] != usize::MAX).then_some(CropBox { start, end })
}

/// `bounds` grown by `margin_mm` on every side (rounded up to whole voxels with the voxel
/// spacing of each axis) and clipped to a volume of `shape`.
pub fn with_margin(
    bounds: CropBox,
    margin_mm: f64,
    spacing: [f64; 3],
    shape: [usize; 3],
) -> CropBox {
    let mut out = bounds;
    for a in 0..3 {
        let voxels = if spacing[a] > 0.0 {
            (margin_mm / spacing[a]).ceil() as usize
        } else {
            0
        };
        out.start[a] = bounds.start[a].saturating_sub(voxels);
        out.end[a] = (bounds.end[a] + voxels).min(shape[a]);
    }
    out
}

/// The voxels of `volume` (its first 3-D volume) inside `b`, x fastest.
pub fn extract(volume: &Volume, b: &CropBox) -> Vec<f32> {
    let mut out = Vec::with_capacity(b.size().iter().product());
    for z in b.start[2]..b.end[2] {
        for y in b.start[1]..b.end[1] {
            for x in b.start[0]..b.end[0] {
                out.push(volume.at(x, y, z, 0));
            }
        }
    }
    out
}

/// Clips to the [lo, hi] percentiles of the values (numpy's linear interpolation), then
/// z-scores (population standard deviation). A constant crop becomes all zeros.
pub fn normalise(values: &mut [f32], percentiles: [f64; 2]) {
    if values.is_empty() {
        return;
    }
    let as_f64: Vec<f64> = values.iter().map(|&v| f64::from(v)).collect();
    let lo = quantile(&as_f64, percentiles[0] / 100.0).unwrap_or(f64::NEG_INFINITY);
    let hi = quantile(&as_f64, percentiles[1] / 100.0).unwrap_or(f64::INFINITY);
    let clipped: Vec<f64> = as_f64.iter().map(|v| v.clamp(lo, hi)).collect();
    let n = clipped.len() as f64;
    let mean = clipped.iter().sum::<f64>() / n;
    let std = (clipped.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    for (out, v) in values.iter_mut().zip(clipped) {
        *out = if std > 0.0 {
            ((v - mean) / std) as f32
        } else {
            0.0
        };
    }
}

/// Trilinear resampling of an x-fastest crop of `size` (x, y, z) to `output` (x, y, z), as
/// PyTorch's `interpolate(mode="trilinear", align_corners=False)`. Returns [z, y, x].
pub fn resample(values: &[f32], size: [usize; 3], output: [usize; 3]) -> Tensor {
    let [sx, sy, sz] = size.map(|s| s as i64);
    let [ox, oy, oz] = output.map(|s| s as i64);
    Tensor::from_slice(values)
        .to_kind(Kind::Float)
        .reshape([1, 1, sz, sy, sx])
        .upsample_trilinear3d([oz, oy, ox], false, None, None, None)
        .reshape([oz, oy, ox])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(
        dims: [usize; 3],
        spacing: [f64; 3],
        f: impl Fn(usize, usize, usize) -> f32,
    ) -> Volume {
        let mut data = Vec::new();
        for z in 0..dims[2] {
            for y in 0..dims[1] {
                for x in 0..dims[0] {
                    data.push(f(x, y, z));
                }
            }
        }
        Volume {
            dims: dims.to_vec(),
            spacing,
            data,
            version: 1,
        }
    }

    #[test]
    fn crop_box_in_voxels_and_millimetres() {
        // Mask voxels x 4..=6, y 5..=5, z 2..=3 in a 20×20×10 volume of 2×2×4 mm voxels.
        let mask = volume([20, 20, 10], [2.0, 2.0, 4.0], |x, y, z| {
            f32::from(u8::from(
                (4..=6).contains(&x) && y == 5 && (2..=3).contains(&z),
            ))
        });
        let bounds = mask_bounds(&mask).unwrap();
        assert_eq!(
            bounds,
            CropBox {
                start: [4, 5, 2],
                end: [7, 6, 4]
            }
        );
        // 5 mm margin: ceil(5/2) = 3 voxels in x and y, ceil(5/4) = 2 in z (clipped at 0).
        let b = with_margin(bounds, 5.0, [2.0, 2.0, 4.0], [20, 20, 10]);
        assert_eq!(
            b,
            CropBox {
                start: [1, 2, 0],
                end: [10, 9, 6]
            }
        );
        assert_eq!(b.size(), [9, 7, 6]);
        assert_eq!(
            b.millimetres([2.0, 2.0, 4.0]),
            [2.0, 4.0, 0.0, 20.0, 18.0, 24.0]
        );
        // Clipped at the far side too.
        let b = with_margin(bounds, 100.0, [2.0, 2.0, 4.0], [20, 20, 10]);
        assert_eq!(
            b,
            CropBox {
                start: [0, 0, 0],
                end: [20, 20, 10]
            }
        );
        assert!(mask_bounds(&volume([3, 3, 3], [1.0; 3], |_, _, _| 0.0)).is_none());
    }

    #[test]
    fn extraction_keeps_x_fastest_order() {
        let v = volume([4, 3, 2], [1.0; 3], |x, y, z| (100 * z + 10 * y + x) as f32);
        let b = CropBox {
            start: [1, 1, 0],
            end: [3, 3, 2],
        };
        assert_eq!(
            extract(&v, &b),
            vec![11.0, 12.0, 21.0, 22.0, 111.0, 112.0, 121.0, 122.0]
        );
    }

    #[test]
    fn resampling_matches_hand_computed_values() {
        // Along x, 2 → 4 voxels with half-pixel centres: sources -0.25, 0.25, 0.75, 1.25,
        // clamped to the edges: values 0, 0.25, 0.75, 1.
        let out = resample(&[0.0, 1.0], [2, 1, 1], [4, 1, 1]);
        let got: Vec<f32> = Vec::<f32>::try_from(out.flatten(0, -1)).unwrap();
        assert_eq!(got, vec![0.0, 0.25, 0.75, 1.0]);
        // 2×2×2 → 1×1×1 is the mean of the 8 corners.
        let corners: Vec<f32> = (0..8).map(|v| v as f32).collect();
        let out = resample(&corners, [2, 2, 2], [1, 1, 1]);
        assert_eq!(out.double_value(&[0, 0, 0]), 3.5);
        // The result is [z, y, x].
        assert_eq!(
            resample(&corners, [2, 2, 2], [3, 4, 5]).size(),
            vec![5, 4, 3]
        );
    }

    #[test]
    fn normalisation_clips_then_standardises() {
        // Percentiles 0 and 75 of 1, 2, 3, 100: 1 and 27.25 (linear); clipped 1, 2, 3, 27.25.
        let mut v = vec![1.0, 2.0, 3.0, 100.0];
        normalise(&mut v, [0.0, 75.0]);
        let clipped = [1.0, 2.0, 3.0, 27.25];
        let mean = clipped.iter().sum::<f64>() / 4.0;
        let std = (clipped.iter().map(|c| (c - mean) * (c - mean)).sum::<f64>() / 4.0).sqrt();
        for (got, c) in v.iter().zip(clipped) {
            assert!((f64::from(*got) - (c - mean) / std).abs() < 1e-6);
        }
        let mut flat = vec![5.0; 6];
        normalise(&mut flat, [0.5, 99.5]);
        assert!(flat.iter().all(|&x| x == 0.0));
    }
}
