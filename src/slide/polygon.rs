//! Integer polygon geometry with OpenCV's semantics, so grid decisions match CLAM's
//! `cv2.pointPolygonTest`, `cv2.contourArea` and `cv2.boundingRect` exactly.

/// A closed polygon in pixel coordinates (the last point joins the first).
pub type Polygon = Vec<[i64; 2]>;

/// Where a point lies relative to a polygon (`cv2.pointPolygonTest(..., False)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Inside,
    OnEdge,
    Outside,
}

/// Crossing-number test on integer coordinates, counting a point on an edge or vertex as
/// [`Side::OnEdge`], as OpenCV does for integer contours and points.
pub fn point_side(polygon: &[[i64; 2]], point: [i64; 2]) -> Side {
    let n = polygon.len();
    if n == 0 {
        return Side::Outside;
    }
    let [x, y] = point;
    let mut crossings = 0usize;
    let mut previous = polygon[n - 1];
    for &current in polygon {
        let [x0, y0] = previous;
        let [x1, y1] = current;
        previous = current;
        // Point on this edge: collinear and within its bounding box.
        let cross = (x1 - x0) * (y - y0) - (y1 - y0) * (x - x0);
        if cross == 0 && x0.min(x1) <= x && x <= x0.max(x1) && y0.min(y1) <= y && y <= y0.max(y1) {
            return Side::OnEdge;
        }
        // Half-open rule on y so a vertex on the ray is counted once.
        if (y0 > y) != (y1 > y) {
            // x of the edge at height y, compared without division.
            let dy = y1 - y0;
            let lhs = (x - x0) * dy;
            let rhs = (y - y0) * (x1 - x0);
            let right_of_point = if dy > 0 { lhs < rhs } else { lhs > rhs };
            if right_of_point {
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

/// Shoelace area (absolute), `cv2.contourArea`.
pub fn area(polygon: &[[i64; 2]]) -> f64 {
    let n = polygon.len();
    if n < 3 {
        return 0.0;
    }
    let mut twice = 0i128;
    for i in 0..n {
        let [x0, y0] = polygon[i];
        let [x1, y1] = polygon[(i + 1) % n];
        twice += i128::from(x0) * i128::from(y1) - i128::from(x1) * i128::from(y0);
    }
    (twice as f64).abs() / 2.0
}

/// `cv2.boundingRect`: (x, y, width, height) with inclusive pixel extents.
pub fn bounding_rect(polygon: &[[i64; 2]]) -> (i64, i64, i64, i64) {
    let (mut x0, mut y0, mut x1, mut y1) = (i64::MAX, i64::MAX, i64::MIN, i64::MIN);
    for &[x, y] in polygon {
        x0 = x0.min(x);
        y0 = y0.min(y);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    if polygon.is_empty() {
        return (0, 0, 0, 0);
    }
    (x0, y0, x1 - x0 + 1, y1 - y0 + 1)
}

/// CLAM's `np.array(contour * scale, dtype='int32')`: scale each axis and truncate.
pub fn scaled(polygon: &[[i64; 2]], scale: [f64; 2]) -> Polygon {
    polygon
        .iter()
        .map(|&[x, y]| [(x as f64 * scale[0]) as i64, (y as f64 * scale[1]) as i64])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square() -> Polygon {
        vec![[0, 0], [10, 0], [10, 10], [0, 10]]
    }

    #[test]
    fn sides_of_a_square() {
        let s = square();
        assert_eq!(point_side(&s, [5, 5]), Side::Inside);
        assert_eq!(point_side(&s, [0, 5]), Side::OnEdge);
        assert_eq!(point_side(&s, [10, 10]), Side::OnEdge);
        assert_eq!(point_side(&s, [5, 0]), Side::OnEdge);
        assert_eq!(point_side(&s, [11, 5]), Side::Outside);
        assert_eq!(point_side(&s, [-1, 0]), Side::Outside);
        assert_eq!(point_side(&s, [5, 11]), Side::Outside);
    }

    #[test]
    fn concave_polygon_and_vertex_on_the_ray() {
        // A "U": the notch (x in 4..6, y in 4..10) is outside.
        let u: Polygon = vec![
            [0, 0],
            [10, 0],
            [10, 10],
            [6, 10],
            [6, 4],
            [4, 4],
            [4, 10],
            [0, 10],
        ];
        assert_eq!(point_side(&u, [5, 8]), Side::Outside);
        assert_eq!(point_side(&u, [2, 8]), Side::Inside);
        assert_eq!(point_side(&u, [8, 8]), Side::Inside);
        // The ray from (2, 4) passes through the vertices (4, 4) and (6, 4).
        assert_eq!(point_side(&u, [2, 4]), Side::Inside);
        assert_eq!(point_side(&u, [5, 2]), Side::Inside);
        // A triangle whose apex lies on the ray of an outside point.
        let t: Polygon = vec![[5, 0], [10, 5], [5, 10], [0, 5]];
        assert_eq!(point_side(&t, [-3, 5]), Side::Outside);
        assert_eq!(point_side(&t, [4, 5]), Side::Inside);
    }

    #[test]
    fn area_and_bounds() {
        assert_eq!(area(&square()), 100.0);
        let mut reversed = square();
        reversed.reverse();
        assert_eq!(area(&reversed), 100.0);
        assert_eq!(area(&[[3, 3]]), 0.0);
        assert_eq!(bounding_rect(&square()), (0, 0, 11, 11));
        assert_eq!(scaled(&[[3, 5]], [2.5, 1.5]), vec![[7, 7]]);
    }
}
