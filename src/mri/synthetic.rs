//! A liver-cancer-layout case built from one real volume, for the demo, tests and benchmarks:
//! five "sequences" that are intensity transforms of the volume, and a box-shaped tumour mask.
//! It exercises the layout and the arithmetic; it is not liver MRI.

use std::fmt;
use std::path::{Path, PathBuf};

use super::nifti::{self, Volume};
use super::MriError;
use crate::cohort::Cohort;
use crate::config::Config;
use crate::stage::Outcome;

/// What `demo-mri` wrote.
#[derive(Debug)]
pub struct DemoCohort {
    pub root: PathBuf,
    pub written: usize,
    pub kept: usize,
}

impl fmt::Display for DemoCohort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "demo-mri: {} case folders written, {} kept, in {}",
            self.written,
            self.kept,
            self.root.display()
        )
    }
}

impl Outcome for DemoCohort {}

/// `hdmoe-pipe demo-mri`: a case folder under `paths.mri` for every patient of
/// `paths.cohort`, derived from the volume `source`; existing case folders are kept.
pub fn write_demo(config: &Config, source: &Path) -> Result<DemoCohort, MriError> {
    let root = config.paths.mri.clone().ok_or(MriError::NoRoot)?;
    let cohort_path = config.paths.cohort.as_deref().ok_or(MriError::NoCohort)?;
    let cohort = Cohort::read(cohort_path)?;
    let source = nifti::read(source)?;
    let cases: Vec<String> = cohort.patients.iter().map(|p| p.case_id.clone()).collect();
    let written = write_cohort(&root, &source, &cases).map_err(|source| MriError::Write {
        path: root.clone(),
        source,
    })?;
    Ok(DemoCohort {
        kept: cases.len() - written,
        written,
        root,
    })
}

/// Names of the paper's five sequences, in the pipeline's default order.
pub const SEQUENCES: [&str; 5] = ["arterial", "delay", "hepatobiliary", "t1", "t2"];

/// Writes `<dir>/<sequence>.nii.gz` for the five sequences and `<dir>/mask.nii.gz`, where the
/// mask is 1 on `mask_box` = ([x0, y0, z0], [x1, y1, z1]) inclusive.
pub fn write_case(
    dir: &Path,
    source: &Volume,
    mask_box: ([usize; 3], [usize; 3]),
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let dims = source.shape3();
    let spacing = source.spacing.map(|s| s as f32);
    let base = source.volume(0);
    for (k, sequence) in SEQUENCES.iter().enumerate() {
        let data: Vec<f32> = base
            .data
            .iter()
            .map(|&v| match k {
                0 => v,
                1 => 0.8 * v + 100.0,
                2 => v.max(0.0).sqrt(),
                3 => 30000.0 - v,
                _ => (v / 1000.0).powi(2),
            })
            .collect();
        nifti::write_f32(
            &dir.join(format!("{sequence}.nii.gz")),
            dims,
            spacing,
            &data,
        )?;
    }
    let (lo, hi) = mask_box;
    let mut mask = Vec::with_capacity(dims.iter().product());
    for z in 0..dims[2] {
        for y in 0..dims[1] {
            for x in 0..dims[0] {
                let inside = [x, y, z]
                    .iter()
                    .enumerate()
                    .all(|(a, &v)| lo[a] <= v && v <= hi[a]);
                mask.push(f32::from(u8::from(inside)));
            }
        }
    }
    nifti::write_f32(&dir.join("mask.nii.gz"), dims, spacing, &mask)
}

/// Writes a case folder for every case id under `root` (the `demo_lc` cohort), each with its
/// own box-shaped tumour inside `source`, placed by the case's index so reruns give the same
/// files. A case folder that exists is kept; a new one appears only when complete (written
/// beside it, then renamed). Returns how many were written.
pub fn write_cohort(root: &Path, source: &Volume, case_ids: &[String]) -> std::io::Result<usize> {
    std::fs::create_dir_all(root)?;
    let dims = source.shape3();
    let mut written = 0;
    for (i, case) in case_ids.iter().enumerate() {
        let dir = root.join(case);
        if dir.is_dir() {
            continue;
        }
        // Boxes of 3..=8 voxels a side (6..=16 mm at 2 mm), moved through the volume.
        let size = [3 + i % 6, 3 + (i / 2) % 6, 2 + (i / 3) % 4];
        let lo: [usize; 3] = std::array::from_fn(|a| {
            let room = dims[a].saturating_sub(size[a] + 2).max(1);
            1 + (i * [7, 11, 5][a]) % room
        });
        let hi: [usize; 3] = std::array::from_fn(|a| (lo[a] + size[a] - 1).min(dims[a] - 1));
        let partial = root.join(format!(".{case}.partial"));
        if partial.exists() {
            std::fs::remove_dir_all(&partial)?;
        }
        write_case(&partial, source, (lo, hi))?;
        std::fs::rename(&partial, &dir)?;
        written += 1;
    }
    Ok(written)
}
