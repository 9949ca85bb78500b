//! The mri stage: NIfTI reading against nibabel, and whole runs over case folders built from
//! the real nibabel volumes (fixtures/mri), with masks made here.

use crate::common;

use std::path::{Path, PathBuf};

use common::fixture;
use hdmoe_pipe::cache::read_str_attr;
use hdmoe_pipe::config::Config;
use hdmoe_pipe::mri::{self, nifti, synthetic};
use hdmoe_pipe::shard::Shard;

#[test]
fn nifti_volumes_read_as_nibabel_reads_them() {
    // (file, dims, spacing, sum, voxel at (3, 4, 2[, 1]), version) from nibabel 5.4.2 get_fdata().
    type Expected = (&'static str, Vec<usize>, [f64; 3], f64, f64, u8);
    let cases: [Expected; 4] = [
        (
            "nibabel_anatomical.nii",
            vec![33, 41, 25],
            [2.0, 2.0, 2.0],
            284166082.0,
            11153.0,
            1,
        ),
        (
            "nibabel_functional.nii",
            vec![17, 21, 3, 20],
            [4.0, 4.0, 8.0],
            77913290.36292362,
            3698.814386665821,
            1,
        ),
        (
            "nibabel_example4d.nii.gz",
            vec![128, 96, 24, 2],
            [2.0, 2.0, 2.199999],
            101985356.0,
            0.0,
            1,
        ),
        (
            "nibabel_example_nifti2.nii.gz",
            vec![32, 20, 12, 2],
            [2.0, 2.0, 2.199999094],
            6926802.0,
            396.0,
            2,
        ),
    ];
    for (file, dims, spacing, sum, voxel, version) in cases {
        let v = nifti::read(&fixture(&format!("mri/{file}"))).unwrap();
        assert_eq!(v.dims, dims, "{file}");
        assert_eq!(v.version, version, "{file}");
        for (got, want) in v.spacing.iter().zip(spacing) {
            assert!((got - want).abs() < 1e-6, "{file}: spacing {:?}", v.spacing);
        }
        let got: f64 = v.data.iter().map(|&x| f64::from(x)).sum();
        assert!(
            (got - sum).abs() <= 1e-6 * sum,
            "{file}: sum {got} vs {sum}"
        );
        let t = usize::from(dims.len() == 4);
        assert!(
            (f64::from(v.at(3, 4, 2, t)) - voxel).abs() <= 1e-6 * voxel.max(1.0),
            "{file}"
        );
    }
    let err = nifti::read(&fixture("tcga/signatures.csv"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("signatures.csv: not a NIfTI file"), "{err}");
}

/// An LC-layout case from the anatomical scan (33×41×25, 2 mm) with a box mask.
fn write_case(dir: &Path, mask_box: ([usize; 3], [usize; 3])) {
    let anatomy = nifti::read(&fixture("mri/nibabel_anatomical.nii")).unwrap();
    synthetic::write_case(dir, &anatomy, mask_box).unwrap();
}

/// x 10..=14, y 12..=20, z 8..=11.
const TUMOUR: ([usize; 3], [usize; 3]) = ([10, 12, 8], [14, 20, 11]);

fn config(root: &Path, cache: &Path, extra: &[&str]) -> Config {
    let mut overrides = vec![
        format!("paths.mri={}", root.display()),
        format!("paths.cache={}", cache.display()),
        "mri.output_size=[16, 16, 8]".to_owned(),
        "mri.margin_mm=4".to_owned(),
        "mri.device=cpu".to_owned(),
    ];
    overrides.extend(extra.iter().map(|s| s.to_string()));
    Config::load(None, &overrides).unwrap()
}

/// Good cases LC001 and LC002, and one case per kind of bad input.
fn cohort(root: &Path) -> Vec<(&'static str, &'static str)> {
    write_case(&root.join("LC001"), TUMOUR);
    write_case(&root.join("LC002"), ([20, 5, 3], [22, 9, 3]));

    // A box outside the volume marks nothing.
    write_case(&root.join("bad_empty"), ([40, 0, 0], [50, 0, 0]));
    write_case(&root.join("bad_missing"), TUMOUR);
    std::fs::remove_file(root.join("bad_missing/t2.nii.gz")).unwrap();
    write_case(&root.join("bad_notnifti"), TUMOUR);
    std::fs::write(root.join("bad_notnifti/t1.nii.gz"), "not an image").unwrap();
    write_case(&root.join("bad_shape"), TUMOUR);
    nifti::write_f32(
        &root.join("bad_shape/mask.nii.gz"),
        [10, 10, 10],
        [2.0; 3],
        &[1.0; 1000],
    )
    .unwrap();
    // A 4-D series (17×21×3×20) as every sequence, with a mask on its grid.
    let dir = root.join("fmri");
    std::fs::create_dir_all(&dir).unwrap();
    for sequence in synthetic::SEQUENCES {
        std::fs::copy(
            fixture("mri/nibabel_functional.nii"),
            dir.join(format!("{sequence}.nii")),
        )
        .unwrap();
    }
    let mask: Vec<f32> = (0..17 * 21 * 3)
        .map(|i| f32::from(u8::from(i % 17 > 5 && i % 17 < 9)))
        .collect();
    nifti::write_f32(&dir.join("mask.nii"), [17, 21, 3], [4.0, 4.0, 8.0], &mask).unwrap();
    vec![
        ("bad_empty", "mask is empty"),
        ("bad_missing", "sequence `t2` is missing"),
        ("bad_notnifti", "t1.nii.gz: not a NIfTI file"),
        (
            "bad_shape",
            "mask shape [10, 10, 10] differs from the volume's [33, 41, 25]",
        ),
        ("fmri", "is 4-D"),
    ]
}

fn h5(cache: &Path, case: &str) -> PathBuf {
    cache.join("mri").join(format!("{case}.h5"))
}

#[test]
fn each_bad_case_fails_alone_and_good_cases_are_encoded() {
    let dir = tempfile::tempdir().unwrap();
    let (root, cache) = (dir.path().join("mri"), dir.path().join("cache"));
    let expected_failures = cohort(&root);
    let c = config(&root, &cache, &[]);

    let refused = mri::run(&c, &common::options(false, false, Shard::ALL))
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("mri.weights") && refused.contains("--random-weights"),
        "{refused}"
    );

    let report = mri::run(&c, &common::options(false, true, Shard::ALL)).unwrap();
    assert_eq!(report.done, 2, "{:?}", report.failed);
    let failed: Vec<&str> = report.failed.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(
        failed,
        expected_failures
            .iter()
            .map(|(c, _)| *c)
            .collect::<Vec<_>>()
    );
    for ((case, message), (_, needle)) in report.failed.iter().zip(&expected_failures) {
        assert!(message.contains(needle), "{case}: {message}");
        assert!(!h5(&cache, case).exists(), "{case}: nothing written");
    }
    let manifest = std::fs::read_to_string(&report.manifest).unwrap();
    assert_eq!(manifest.lines().count(), 8, "header + 7 cases");

    // LC001: five 512-d rows; the crop is the mask box plus 2 voxels (4 mm at 2 mm) a side.
    let file = hdf5::File::open(h5(&cache, "LC001")).unwrap();
    let features = file.dataset("features").unwrap().read_2d::<f32>().unwrap();
    assert_eq!(features.shape(), &[5, 512]);
    assert!(features.iter().all(|v| v.is_finite()));
    let boxes = file
        .dataset("crop_boxes")
        .unwrap()
        .read_2d::<i64>()
        .unwrap();
    assert_eq!(boxes.row(0).to_vec(), vec![8, 10, 6, 17, 23, 14]);
    let mm = file
        .dataset("crop_boxes_mm")
        .unwrap()
        .read_2d::<f64>()
        .unwrap();
    assert_eq!(mm.row(0).to_vec(), vec![16.0, 20.0, 12.0, 34.0, 46.0, 28.0]);
    assert!(read_str_attr(&file, "weights_sha256")
        .unwrap()
        .contains("NOT pretrained"));
    assert_eq!(read_str_attr(&file, "encoder").unwrap(), "resnet3d_18");
    // Different sequences give different features.
    assert_ne!(features.row(0), features.row(3));

    // The 4-D case works once the rule says which volume to use.
    let c4 = config(&root, &cache, &["mri.volume_4d=first"]);
    let report = mri::run(&c4, &common::options(false, true, Shard::ALL)).unwrap();
    assert!(!report.failed.iter().any(|(c, _)| c == "fmri"));
    assert!(h5(&cache, "fmri").exists());
}

#[test]
fn reruns_keep_refuse_and_shard() {
    let dir = tempfile::tempdir().unwrap();
    let (root, cache) = (dir.path().join("mri"), dir.path().join("cache"));
    for case in ["A", "B", "C"] {
        write_case(&root.join(case), TUMOUR);
    }
    let c = config(&root, &cache, &[]);

    // Shards 0/2 and 1/2 together make every case, each once.
    let first = mri::run(&c, &common::options(false, true, "0/2".parse().unwrap())).unwrap();
    let second = mri::run(&c, &common::options(false, true, "1/2".parse().unwrap())).unwrap();
    assert_eq!((first.done, second.done), (2, 1));
    let sharded: Vec<Vec<u8>> = ["A", "B", "C"]
        .iter()
        .map(|k| std::fs::read(h5(&cache, k)).unwrap())
        .collect();

    // A whole run keeps them all, byte for byte.
    let again = mri::run(&c, &common::options(false, true, Shard::ALL)).unwrap();
    assert_eq!((again.done, again.kept), (0, 3));
    // --force remakes them identically (deterministic encoder and files).
    let forced = mri::run(&c, &common::options(true, true, Shard::ALL)).unwrap();
    assert_eq!(forced.done, 3);
    for (k, bytes) in ["A", "B", "C"].iter().zip(&sharded) {
        let now = std::fs::read(h5(&cache, k)).unwrap();
        let first_diff = now.iter().zip(bytes.iter()).position(|(a, b)| a != b);
        assert_eq!((now.len(), first_diff), (bytes.len(), None), "{k}");
    }

    // A changed mask changes the inputs: refused without --force, named.
    nifti::write_f32(
        &root.join("B/mask.nii.gz"),
        [33, 41, 25],
        [2.0; 3],
        &vec![1.0; 33 * 41 * 25],
    )
    .unwrap();
    let report = mri::run(&c, &common::options(false, true, Shard::ALL)).unwrap();
    assert_eq!(report.failed.len(), 1);
    assert!(
        report.failed[0].1.contains("inputs_sha256") && report.failed[0].1.contains("--force"),
        "{:?}",
        report.failed
    );

    // Other settings too (here the encoder).
    let slices = config(&root, &cache, &["mri.encoder=resnet50_slices"]);
    let report = mri::run(&slices, &common::options(false, true, Shard::ALL)).unwrap();
    assert_eq!(report.failed.len(), 3);
    let report = mri::run(&slices, &common::options(true, true, Shard::ALL)).unwrap();
    assert_eq!(report.done, 3);
    let file = hdf5::File::open(h5(&cache, "A")).unwrap();
    assert_eq!(file.dataset("features").unwrap().shape(), vec![5, 2048]);
}
