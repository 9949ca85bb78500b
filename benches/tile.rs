//! `make bench`: the tile stage per slide — tissue mask and patch grid timed separately,
//! patches per second, peak RSS of a process that tiles only that slide — on the real CMU slide,
//! the 40x fixture pyramid and (when present) the large generated 40x slide
//! (`bench-out/large40x.svs`, made by `make bench`). With `CLAM_DIR` (a CLAM checkout) and
//! `CLAM_PYTHON` (a Python with its requirements) set, CLAM's `create_patches_fp.py` runs on the
//! same slides with the same parameters, and its own segmentation/patching timers and patch
//! counts are printed beside ours.
//!
//! Each slide is measured in a child process (this binary, re-run with `HDMOE_BENCH_SLIDE`), so
//! its peak RSS is that slide's alone.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use hdmoe_pipe::config::Config;
use hdmoe_pipe::slide::{self, list::SlideEntry, mask::SegOverrides};

/// One benchmark case: the slide, our settings, CLAM's equivalent arguments.
struct Case {
    name: &'static str,
    path: PathBuf,
    sets: Vec<String>,
    clam_args: Vec<String>,
    runs: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Child: tile one slide `runs` times in memory, then once through the stage (writing the
/// h5 and preview), and print `mask grid total patches rss`.
fn child(path: &Path, sets: &[String], runs: usize) {
    let work = tempfile::tempdir().expect("temporary directory");
    let mut overrides = sets.to_vec();
    overrides.push(format!("paths.cache={}", work.path().display()));
    let config = Config::load(None, &overrides).expect("configuration");
    let entry = SlideEntry {
        id: slide::list::slide_id(path),
        path: path.to_owned(),
        mpp: None,
        overrides: SegOverrides::default(),
    };
    let (mut mask, mut grid, mut total) = (Vec::new(), Vec::new(), Vec::new());
    let mut patches = 0;
    for _ in 0..runs {
        let a = slide::analyse(&entry, &config.tile).expect("analyse");
        mask.push(a.seconds_mask);
        grid.push(a.seconds_grid);
        patches = a.coords.len();
    }
    let dir = work.path().join("slides");
    std::fs::create_dir_all(&dir).expect("dir");
    let link = dir.join(path.file_name().expect("file name"));
    std::os::unix::fs::symlink(path, &link).expect("symlink");
    for _ in 0..runs {
        let start = Instant::now();
        let report = slide::run(
            &config,
            Some(&dir),
            &hdmoe_pipe::stage::StageOptions::default().force(true),
        )
        .expect("tile stage");
        assert_eq!(report.done, 1, "{report:?}");
        total.push(start.elapsed().as_secs_f64());
    }
    println!(
        "{} {} {} {} {}",
        median(mask),
        median(grid),
        median(total),
        patches,
        peak_rss_mb()
    );
}

/// CLAM's own timers (medians over `case.runs` runs, like ours) and patch count, or None when
/// CLAM is not configured.
fn clam(case: &Case, work: &Path) -> Option<(f64, f64, usize)> {
    let (mut seg, mut patch, mut count) = (Vec::new(), Vec::new(), 0);
    for run in 0..case.runs {
        let (s, p, c) = clam_once(case, &work.join(format!("run{run}")))?;
        seg.push(s);
        patch.push(p);
        count = c;
    }
    Some((median(seg), median(patch), count))
}

/// One run of CLAM's `create_patches_fp.py` on the case's slide.
fn clam_once(case: &Case, work: &Path) -> Option<(f64, f64, usize)> {
    let dir = std::env::var_os("CLAM_DIR")?;
    let python = std::env::var_os("CLAM_PYTHON")?;
    let source = work.join("source");
    let out = work.join("out");
    std::fs::create_dir_all(&source).ok()?;
    std::os::unix::fs::symlink(&case.path, source.join(case.path.file_name()?)).ok()?;
    let output = Command::new(python)
        .current_dir(&dir)
        .arg("create_patches_fp.py")
        .arg("--source")
        .arg(&source)
        .arg("--save_dir")
        .arg(&out)
        .args(["--seg", "--patch"])
        .args(&case.clam_args)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let timer = |label: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    let seg = timer("segmentation took ")?;
    let patch = timer("patching took ")?;
    let h5 = out
        .join("patches")
        .join(format!("{}.h5", slide::list::slide_id(&case.path)));
    let count = hdf5::File::open(h5)
        .and_then(|f| f.dataset("coords"))
        .map(|d| d.shape()[0])
        .unwrap_or(0);
    Some((seg, patch, count))
}

/// A cohort of `n` copies of `slide` (symbolic links): ours (the whole stage, slides in
/// parallel) and CLAM's script (its whole run, Python start included) in wall seconds per slide.
fn cohort(slide: &Path, n: usize, work: &Path) -> (f64, Option<f64>) {
    let dir = work.join("cohort");
    std::fs::create_dir_all(&dir).expect("cohort dir");
    for i in 0..n {
        let link = dir.join(format!("slide{i}.svs"));
        if !link.exists() {
            std::os::unix::fs::symlink(slide, &link).expect("symlink");
        }
    }
    let config = Config::load(
        None,
        &[format!(
            "paths.cache={}",
            work.join("cohort_cache").display()
        )],
    )
    .expect("configuration");
    let started = Instant::now();
    let report = slide::run(
        &config,
        Some(&dir),
        &hdmoe_pipe::stage::StageOptions::default().force(true),
    )
    .expect("tile");
    assert_eq!(report.done, n, "{report:?}");
    let ours = started.elapsed().as_secs_f64() / n as f64;
    let theirs = (|| {
        let clam_dir = std::env::var_os("CLAM_DIR")?;
        let python = std::env::var_os("CLAM_PYTHON")?;
        let started = Instant::now();
        let status = Command::new(python)
            .current_dir(clam_dir)
            .args([
                "create_patches_fp.py",
                "--seg",
                "--patch",
                "--patch_size",
                "512",
                "--step_size",
                "512",
                "--source",
            ])
            .arg(&dir)
            .arg("--save_dir")
            .arg(work.join("cohort_clam"))
            .output()
            .ok()?;
        status
            .status
            .success()
            .then(|| started.elapsed().as_secs_f64() / n as f64)
    })();
    (ours, theirs)
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if let Ok(path) = std::env::var("HDMOE_BENCH_SLIDE") {
        let sets: Vec<String> = std::env::var("HDMOE_BENCH_SETS")
            .unwrap_or_default()
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        let runs = std::env::var("HDMOE_BENCH_RUNS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(3);
        child(Path::new(&path), &sets, runs);
        return;
    }
    let sets = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut cases = vec![
        Case {
            name: "cmu_small_region (20x, single level, 2220x2967)",
            path: root.join("fixtures/slides/cmu_small_region.svs"),
            // CLAM segments a single-level slide at level 0 and reads 256 px at level 0.
            sets: sets(&[
                "tile.preset=biopsy",
                "tile.seg_downsample=1",
                "tile.mpp_rounding=nominal",
            ]),
            clam_args: sets(&[
                "--patch_size",
                "256",
                "--step_size",
                "256",
                "--preset",
                "bwh_biopsy.csv",
            ]),
            runs: 5,
        },
        Case {
            name: "aperio40x fixture (40x pyramid, 3328x2560)",
            path: root.join("fixtures/slides/aperio40x.svs"),
            sets: sets(&["tile.preset=biopsy"]),
            clam_args: sets(&[
                "--patch_size",
                "512",
                "--step_size",
                "512",
                "--preset",
                "bwh_biopsy.csv",
            ]),
            runs: 5,
        },
    ];
    let large = root.join("bench-out/large40x.svs");
    let mut cohort_row = None;
    if large.is_file() {
        cohort_row = Some(large.clone());
        cases.push(Case {
            name: "large40x (40x pyramid, generated)",
            path: large,
            sets: Vec::new(),
            clam_args: sets(&["--patch_size", "512", "--step_size", "512"]),
            runs: 3,
        });
    } else {
        eprintln!("bench-out/large40x.svs missing: `make bench` generates it (fixtures/slides/make_slides.py --large)");
    }
    let work = tempfile::tempdir().expect("temporary directory");
    let exe = std::env::current_exe().expect("bench binary");
    println!("Medians of {} runs per slide (ours and CLAM's alike); CLAM's timers are its own `segmentation took` / `patching took`.",
        cases.iter().map(|c| c.runs.to_string()).collect::<Vec<_>>().join("/"));
    println!("| tile (CPU, {} cores) | mask s | grid s | whole stage s (with preview + h5) | patches | patches/s (mask+grid) | peak RSS MB | CLAM seg s | CLAM patch s | CLAM patches | speed-up (CLAM seg+patch / ours mask+grid) | patch count diff |",
        std::thread::available_parallelism().map_or(1, |n| n.get()));
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for case in &cases {
        let output = Command::new(&exe)
            .env("HDMOE_BENCH_SLIDE", &case.path)
            .env("HDMOE_BENCH_SETS", case.sets.join(" "))
            .env("HDMOE_BENCH_RUNS", case.runs.to_string())
            .output()
            .expect("child");
        let text = String::from_utf8_lossy(&output.stdout);
        let v: Vec<f64> = text
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if v.len() != 5 {
            println!(
                "| {} | failed: {} |",
                case.name,
                String::from_utf8_lossy(&output.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            );
            continue;
        }
        let (mask, grid, total, patches, rss) = (v[0], v[1], v[2], v[3] as usize, v[4]);
        let ours = mask + grid;
        let clam_cols = match clam(case, &work.path().join(slide::list::slide_id(&case.path))) {
            Some((seg, patch, count)) => format!(
                "{seg:.3} | {patch:.3} | {count} | {:.1}x | {:+.1} % |",
                (seg + patch) / ours,
                100.0 * (patches as f64 - count as f64) / (count.max(1) as f64)
            ),
            None => "not run (set CLAM_DIR, CLAM_PYTHON) | | | | |".to_owned(),
        };
        println!(
            "| {} | {mask:.3} | {grid:.3} | {total:.3} | {patches} | {:.0} | {rss:.0} | {clam_cols}",
            case.name,
            patches as f64 / ours
        );
    }
    if let Some(slide) = cohort_row {
        let n = 4;
        let (ours, theirs) = cohort(&slide, n, work.path());
        println!("\n| cohort of {n} large40x slides (whole runs) | ours s / slide | CLAM s / slide (its script, Python start included) | speed-up |");
        println!("|---|---:|---:|---:|");
        match theirs {
            Some(t) => println!("| tile, clam_default, 512 px at level 0 | {ours:.2} | {t:.2} | {:.1}x |", t / ours),
            None => println!("| tile, clam_default, 512 px at level 0 | {ours:.2} | not run (set CLAM_DIR, CLAM_PYTHON) | |"),
        }
    }
}
