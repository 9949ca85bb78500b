//! `masks/<slide>.png`: the low-resolution image with tissue contours (green), holes (blue)
//! and the patch grid (dark outlines), so a cohort's segmentation can be checked at a glance.

use image::codecs::png::{CompressionType, FilterType as PngFilter, PngEncoder};
use image::{Rgb, RgbImage};
use imageproc::drawing::{draw_hollow_rect_mut, draw_line_segment_mut};
use imageproc::rect::Rect;

use super::mask::Tissue;
use super::polygon::Polygon;

/// Longest side of the preview in pixels.
const MAX_SIDE: u32 = 1536;
const TISSUE: Rgb<u8> = Rgb([0, 200, 0]);
const HOLE: Rgb<u8> = Rgb([0, 60, 255]);
const PATCH: Rgb<u8> = Rgb([40, 40, 40]);

fn draw_polygon(image: &mut RgbImage, polygon: &Polygon, scale: f64, colour: Rgb<u8>) {
    let n = polygon.len();
    for i in 0..n {
        let [x0, y0] = polygon[i];
        let [x1, y1] = polygon[(i + 1) % n];
        let (a, b) = (
            (x0 as f32 * scale as f32, y0 as f32 * scale as f32),
            (x1 as f32 * scale as f32, y1 as f32 * scale as f32),
        );
        // Two offset strokes keep thin contours visible on a large slide.
        draw_line_segment_mut(image, a, b, colour);
        draw_line_segment_mut(image, (a.0 + 1.0, a.1), (b.0 + 1.0, b.1), colour);
    }
}

/// The preview as PNG bytes. `low_res` is the segmentation image, `scale` its level-0 pixels
/// per pixel; `coords` and `read_size` are in level-0 pixels.
pub fn render(
    low_res: &RgbImage,
    scale: [f64; 2],
    tissue: &Tissue,
    coords: &[[i64; 2]],
    read_size: i64,
) -> Result<Vec<u8>, image::ImageError> {
    let (w, h) = low_res.dimensions();
    let shrink = (f64::from(MAX_SIDE) / f64::from(w.max(h))).min(1.0);
    let mut image = if shrink < 1.0 {
        let (nw, nh) = (
            ((f64::from(w) * shrink).round() as u32).max(1),
            ((f64::from(h) * shrink).round() as u32).max(1),
        );
        // Nearest-neighbour sampling: a check image needs no filtering, and on a 16x level of
        // a large slide any filter costs more than the mask itself.
        RgbImage::from_fn(nw, nh, |x, y| {
            let sx = ((f64::from(x) + 0.5) / shrink) as u32;
            let sy = ((f64::from(y) + 0.5) / shrink) as u32;
            *low_res.get_pixel(sx.min(w - 1), sy.min(h - 1))
        })
    } else {
        low_res.clone()
    };
    // Level-0 pixels → preview pixels.
    let to_preview = [shrink / scale[0], shrink / scale[1]];
    let side = (read_size as f64 * to_preview[0]).round().max(1.0) as u32;
    if side >= 3 {
        for &[x, y] in coords {
            let px = (x as f64 * to_preview[0]).round() as i32;
            let py = (y as f64 * to_preview[1]).round() as i32;
            draw_hollow_rect_mut(&mut image, Rect::at(px, py).of_size(side, side), PATCH);
        }
    } else {
        for &[x, y] in coords {
            let px = (x as f64 * to_preview[0]) as u32;
            let py = (y as f64 * to_preview[1]) as u32;
            if px < image.width() && py < image.height() {
                image.put_pixel(px, py, PATCH);
            }
        }
    }
    for (contour, holes) in tissue.contours.iter().zip(&tissue.holes) {
        draw_polygon(&mut image, contour, shrink, TISSUE);
        for hole in holes {
            draw_polygon(&mut image, hole, shrink, HOLE);
        }
    }
    let mut bytes = Vec::new();
    let encoder = PngEncoder::new_with_quality(&mut bytes, CompressionType::Fast, PngFilter::Sub);
    image.write_with_encoder(encoder)?;
    Ok(bytes)
}
