//! The tile stage on real slides (fixtures/slides): CLAM's coordinates on the same slides, an
//! independent tissue estimate, 40x vs 20x coverage, resume after deleted or truncated
//! outputs, and bad slides failing one by one while the good ones complete.

use crate::common;

use std::path::Path;

use common::{copy_slides, fixture};
use hdmoe_pipe::config::Config;
use hdmoe_pipe::shard::Shard;
use hdmoe_pipe::slide::{self, list::SlideEntry, mask::SegOverrides, reader::Slide};

fn config(cache: &Path, sets: &[&str]) -> Config {
    let mut overrides: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    overrides.push(format!("paths.cache={}", cache.display()));
    Config::load(None, &overrides).expect("config")
}

fn entry(name: &str) -> SlideEntry {
    let path = fixture(&format!("slides/{name}"));
    SlideEntry {
        id: slide::list::slide_id(&path),
        path,
        mpp: None,
        overrides: SegOverrides::default(),
    }
}

fn read_coords(path: &Path) -> Vec<[i64; 2]> {
    let file = hdf5::File::open(path).expect("open h5");
    let coords = file.dataset("coords").expect("coords");
    let array: ndarray::Array2<i64> = coords.read_2d().expect("read");
    array.outer_iter().map(|r| [r[0], r[1]]).collect()
}

fn clam_reference(slide: &str) -> Vec<[i64; 2]> {
    let text = std::fs::read_to_string(fixture("slides/clam_reference.json")).expect("reference");
    let value: serde_json::Value = serde_json::from_str(&text).expect("json");
    value[slide]["coords"]
        .as_array()
        .expect("coords")
        .iter()
        .map(|c| [c[0].as_i64().unwrap(), c[1].as_i64().unwrap()])
        .collect()
}

#[test]
fn coordinates_equal_clams_on_the_same_slides() {
    // CMU: single level, 20x; CLAM segments level 0 (our seg_downsample 1), reads 256 px at
    // level 0, i.e. the nominal 0.5 um/px (the slide records 0.499).
    let cmu = config(
        Path::new("unused"),
        &[
            "tile.preset=biopsy",
            "tile.seg_downsample=1",
            "tile.mpp_rounding=nominal",
        ],
    );
    let a = slide::analyse(&entry("cmu_small_region.svs"), &cmu.tile).expect("cmu");
    assert_eq!(a.plan.read_size, 256);
    assert_eq!(a.coords, clam_reference("cmu_small_region"));
    // The 40x pyramid: CLAM segments its 16x level and reads 512 at level 0 (patch_size 512),
    // which is our default 20x plan on a 0.25 um/px slide.
    let p40 = config(Path::new("unused"), &["tile.preset=biopsy"]);
    let a = slide::analyse(&entry("aperio40x.svs"), &p40.tile).expect("40x");
    assert_eq!((a.seg_level, a.seg_factor, a.plan.read_size), (2, 1, 512));
    assert_eq!(a.coords, clam_reference("aperio40x"));
    // With the real mpp (0.499) the CMU grid reads 257 px: a different, equally valid grid.
    let real = config(
        Path::new("unused"),
        &["tile.preset=biopsy", "tile.seg_downsample=1"],
    );
    let a = slide::analyse(&entry("cmu_small_region.svs"), &real.tile).expect("cmu real");
    assert_eq!(a.plan.read_size, 257);
}

/// Fraction of a level-0 square whose pixels look like stained tissue (saturation > 25 of
/// 255), from the raw pixels: no median, no morphology, no contours.
fn tissue_fraction(slide: &Slide, x: i64, y: i64, size: u32) -> f64 {
    let img = slide.read_rgb(x, y, 0, size, size).expect("read");
    let stained = img
        .pixels()
        .filter(|p| {
            let [r, g, b] = p.0;
            let (max, min) = (r.max(g).max(b) as f64, r.min(g).min(b) as f64);
            max > 0.0 && (max - min) / max * 255.0 > 25.0
        })
        .count();
    stained as f64 / f64::from(size * size)
}

#[test]
fn patches_cover_tissue_and_skip_background_on_the_cmu_slide() {
    let cfg = config(Path::new("unused"), &["tile.preset=biopsy"]);
    let e = entry("cmu_small_region.svs");
    let a = slide::analyse(&e, &cfg.tile).expect("cmu");
    assert!(a.coords.len() >= 30, "{} patches", a.coords.len());
    let s = Slide::open(&e.path).expect("open");
    let size = a.plan.read_size as u32;
    // Every kept patch holds tissue.
    for &[x, y] in &a.coords {
        let f = tissue_fraction(&s, x, y, size);
        assert!(f > 0.05, "patch at ({x}, {y}) is background: {f:.3} tissue");
    }
    // Every square of a regular grid that is mostly tissue overlaps a kept patch by half.
    let (w, h) = s.dimensions(0);
    let mut checked = 0;
    for y in (0..h as i64 - size as i64).step_by(size as usize) {
        for x in (0..w as i64 - size as i64).step_by(size as usize) {
            if tissue_fraction(&s, x, y, size) < 0.6 {
                continue;
            }
            checked += 1;
            let overlap = |c: &[i64; 2]| {
                let ox = (size as i64 - (c[0] - x).abs()).max(0);
                let oy = (size as i64 - (c[1] - y).abs()).max(0);
                (ox * oy) as f64 / f64::from(size * size)
            };
            assert!(
                a.coords.iter().any(|c| overlap(c) >= 0.5),
                "tissue at ({x}, {y}) has no patch"
            );
        }
    }
    assert!(checked >= 10, "only {checked} tissue squares checked");
}

/// Net tissue area (contours minus holes) in square micrometres.
fn tissue_um2(a: &slide::Analysis) -> f64 {
    use hdmoe_pipe::slide::polygon::area;
    let px = a.slide_mpp * a.slide_mpp * a.scale[0] * a.scale[1];
    a.tissue
        .contours
        .iter()
        .zip(&a.tissue.holes)
        .map(|(c, holes)| area(c) - holes.iter().map(|h| area(h)).sum::<f64>())
        .sum::<f64>()
        * px
}

#[test]
fn the_40x_pyramid_covers_the_same_tissue_as_the_20x_image() {
    // Both masks at 1 um/px: the 40x pyramid's 4x level, the 20x image box-averaged by 2.
    let base = [
        "tile.preset=biopsy",
        "tile.a_t=0.1",
        "tile.a_h=0.01",
        "tile.patch_size=64",
        "tile.step=64",
    ];
    let c40 = config(
        Path::new("unused"),
        &[&base[..], &["tile.seg_downsample=4"]].concat(),
    );
    let c20 = config(
        Path::new("unused"),
        &[&base[..], &["tile.seg_strip_mpp=1.0"]].concat(),
    );
    let a40 = slide::analyse(&entry("aperio40x.svs"), &c40.tile).expect("40x");
    let a20 = slide::analyse(&entry("aperio20x.svs"), &c20.tile).expect("20x");
    assert_eq!((a40.plan.level, a40.plan.level_read_size), (0, 128));
    assert_eq!((a20.plan.level, a20.plan.level_read_size), (0, 64));
    assert_eq!((a40.seg_level, a40.seg_factor), (1, 1));
    assert_eq!((a20.seg_level, a20.seg_factor), (0, 2));
    // Coverage: the area the patch grid covers (patches of 32 um, so one patch is ~0.5 %).
    let covered = |a: &slide::Analysis| {
        a.coords.len() as f64 * (a.plan.read_size as f64 * a.slide_mpp).powi(2)
    };
    let (p40, p20) = (covered(&a40), covered(&a20));
    assert!(a40.coords.len() > 150, "{}", a40.coords.len());
    assert!(
        (p40 - p20).abs() / p20 < 0.02,
        "patch area {p40:.0} vs {p20:.0} um2"
    );
    // The masks themselves: the pyramid's own 4x level holds 2.2 % more pixels above the
    // threshold than the 20x image averaged by 2 (measured on the raw pixels with OpenCV's
    // cvtColor + medianBlur, independent of this code), so their areas agree within 3 %.
    let (t40, t20) = (tissue_um2(&a40), tissue_um2(&a20));
    assert!(t40 > 1.0e5, "{t40}");
    assert!(
        (t40 - t20).abs() / t20 < 0.03,
        "tissue {t40:.0} vs {t20:.0} um2"
    );
}

#[test]
fn resumes_after_deleted_and_truncated_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let slides = copy_slides(dir.path(), &["aperio40x.svs", "cmu_small_region.svs"]);
    let cache = dir.path().join("cache");
    let cfg = config(&cache, &["tile.preset=biopsy"]);
    let first = slide::run(
        &cfg,
        Some(&slides),
        &common::options(false, false, Shard::ALL),
    )
    .expect("run");
    assert_eq!((first.done, first.kept), (2, 0));
    let h40 = cache.join("patches/aperio40x.h5");
    let hcmu = cache.join("patches/cmu_small_region.h5");
    let want40 = read_coords(&h40);
    let wantcmu = read_coords(&hcmu);
    assert!(cache.join("masks/aperio40x.png").is_file());

    // Everything kept on a plain rerun.
    let again = slide::run(
        &cfg,
        Some(&slides),
        &common::options(false, false, Shard::ALL),
    )
    .expect("rerun");
    assert_eq!((again.done, again.kept), (0, 2));

    // A deleted output is remade, the other kept.
    std::fs::remove_file(&h40).unwrap();
    let r = slide::run(
        &cfg,
        Some(&slides),
        &common::options(false, false, Shard::ALL),
    )
    .expect("after delete");
    assert_eq!((r.done, r.kept), (1, 1));
    assert_eq!(read_coords(&h40), want40);

    // A truncated output (a killed writer of another tool) is remade, not trusted.
    let bytes = std::fs::read(&hcmu).unwrap();
    std::fs::write(&hcmu, &bytes[..bytes.len() / 3]).unwrap();
    let r = slide::run(
        &cfg,
        Some(&slides),
        &common::options(false, false, Shard::ALL),
    )
    .expect("after truncation");
    assert_eq!((r.done, r.kept), (1, 1));
    assert_eq!(read_coords(&hcmu), wantcmu);

    // Other parameters: refused without --force, remade with it.
    let other = config(&cache, &["tile.preset=biopsy", "tile.step=128"]);
    let r = slide::run(
        &other,
        Some(&slides),
        &common::options(false, false, Shard::ALL),
    )
    .expect("mismatch");
    assert_eq!(r.failed.len(), 2);
    assert!(r.failed[0].1.contains("--force"), "{}", r.failed[0].1);
    assert_eq!(
        read_coords(&h40),
        want40,
        "a refused rerun must not touch the output"
    );
    let r = slide::run(
        &other,
        Some(&slides),
        &common::options(true, false, Shard::ALL),
    )
    .expect("force");
    assert_eq!(r.done, 2);
    assert!(read_coords(&h40).len() > want40.len());

    // Shards split the slides and their union is the whole set.
    let sharded = dir.path().join("sharded");
    let cfg = config(&sharded, &["tile.preset=biopsy"]);
    for i in 0..2 {
        let shard = Shard { index: i, count: 2 };
        let r =
            slide::run(&cfg, Some(&slides), &common::options(false, false, shard)).expect("shard");
        assert_eq!(r.done, 1);
    }
    assert_eq!(read_coords(&sharded.join("patches/aperio40x.h5")), want40);
    assert_eq!(
        read_coords(&sharded.join("patches/cmu_small_region.h5")),
        wantcmu
    );
}

#[test]
fn bad_slides_fail_one_by_one_and_good_ones_complete() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let cfg = config(&cache, &["tile.preset=biopsy", "tile.a_t=0.1"]);
    let slides = fixture("slides");
    let report = slide::run(
        &cfg,
        Some(&slides),
        &common::options(false, false, Shard::ALL),
    )
    .expect("run");
    assert_eq!(report.done, 3, "{report:?}");
    let message = |id: &str| {
        report
            .failed
            .iter()
            .chain(&report.no_tissue)
            .find(|(s, _)| s == id)
            .map(|(_, m)| m.clone())
            .unwrap_or_else(|| panic!("{id} not reported: {report:?}"))
    };
    assert!(message("nompp").contains("--mpp"));
    assert!(message("nompp").contains("nompp.tif"));
    assert!(message("not_a_slide").contains("not a slide OpenSlide can read"));
    assert!(message("truncated").contains("truncated.svs"));
    assert!(message("blank").contains("no tissue"));
    assert!(report.no_tissue.iter().any(|(s, _)| s == "blank"));
    // No output for a slide without tissue, but its preview is there to look at.
    assert!(!cache.join("patches/blank.h5").exists());
    assert!(cache.join("masks/blank.png").is_file());
    let manifest = std::fs::read_to_string(&report.manifest).unwrap();
    assert!(manifest.contains("blank,no tissue,"), "{manifest}");
    assert!(manifest.contains("nompp,failed,"), "{manifest}");
    assert_eq!(manifest.lines().count(), 1 + 7);

    // With a fallback mpp the slide without metadata is tiled too.
    let cfg = config(
        &cache,
        &[
            "tile.preset=biopsy",
            "tile.a_t=0.1",
            "tile.fallback_mpp=0.5",
        ],
    );
    let report = slide::run(
        &cfg,
        Some(&slides),
        &common::options(false, false, Shard::ALL),
    )
    .expect("rerun");
    assert_eq!((report.done, report.kept), (1, 3), "{report:?}");
    assert!(cache.join("patches/nompp.h5").is_file());
}

#[test]
fn a_slide_list_gives_mpp_and_segmentation_per_slide() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("slides.csv");
    std::fs::write(
        &list,
        format!(
            "slide_id,mpp,preset,a_t\n{},0.5,biopsy,0.1\n{},,biopsy,\n",
            fixture("slides/nompp.tif").display(),
            fixture("slides/aperio40x.svs").display()
        ),
    )
    .unwrap();
    let cache = dir.path().join("cache");
    let cfg = config(&cache, &[]);
    let report = slide::run(
        &cfg,
        Some(&list),
        &common::options(false, false, Shard::ALL),
    )
    .expect("run");
    assert_eq!(report.done, 2, "{report:?}");
    let file = hdf5::File::open(cache.join("patches/nompp.h5")).unwrap();
    let coords = file.dataset("coords").unwrap();
    let mpp: f64 = coords.attr("slide_mpp").unwrap().read_scalar().unwrap();
    assert_eq!(mpp, 0.5);
    let level: i64 = coords.attr("patch_level").unwrap().read_scalar().unwrap();
    let size: i64 = coords.attr("patch_size").unwrap().read_scalar().unwrap();
    assert_eq!((level, size), (0, 256));
    let source = hdmoe_pipe::cache::read_str_attr(&file, "mpp_source").unwrap();
    assert_eq!(source, "slide list");
}

#[test]
fn turbojpeg_decodes_whole_levels_exactly_as_openslide() {
    // Aperio RGB-photometric tiles (the CMU slide: 240 px tiles, edge tiles cut at 2220 x 2967)
    // and YCbCr pyramids (256 px tiles, levels whose edges cut tiles).
    for (name, levels) in [
        ("cmu_small_region.svs", 1u32),
        ("aperio40x.svs", 3),
        ("nompp.tif", 1),
    ] {
        let path = fixture(&format!("slides/{name}"));
        let slide = Slide::open(&path).expect("open");
        assert_eq!(slide.level_count(), levels, "{name}");
        for level in 0..levels {
            let (w, h) = slide.dimensions(level);
            let fast = slide::jpeg_tiles::decode_level(&path, &slide, level)
                .unwrap_or_else(|| panic!("{name} level {level}: fast path declined"));
            let openslide = slide
                .read_rgb_bytes(0, 0, level, w as u32, h as u32)
                .expect("OpenSlide read");
            assert!(fast == openslide, "{name} level {level}: pixels differ");
        }
    }
}
