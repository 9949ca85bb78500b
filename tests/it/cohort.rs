//! Cohort tables, time bins, splits and sampling weights on the real TCGA label tables
//! (fixtures/tcga, every patient of MCAT's BLCA and PORPOISE's BLCA/BRCA tables).

use crate::common;

use std::path::PathBuf;

use common::fixture;
use hdmoe_pipe::cohort::{read_split, read_splits, split_path, Cohort, CohortError};

const TABLES: [(&str, &str); 3] = [
    ("blca_sig", "tcga/blca_sig_labels.csv"),
    ("blca_mutsig", "tcga/blca_mutsig_labels.csv"),
    ("brca_mutsig", "tcga/brca_mutsig_labels.csv"),
];

fn bins_reference() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("tcga/tcga_bins.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn time_bins_match_the_pandas_reference_exactly() {
    let reference = bins_reference();
    for (key, table) in TABLES {
        let want = &reference[key];
        let cohort = Cohort::read(&fixture(table)).unwrap();
        assert_eq!(
            cohort.len() as u64,
            want["n_cases"].as_u64().unwrap(),
            "{key}"
        );
        assert_eq!(
            cohort.n_slides as u64,
            want["n_slides"].as_u64().unwrap(),
            "{key}"
        );
        assert_eq!(
            cohort.n_events() as u64,
            want["uncensored"].as_u64().unwrap(),
            "{key}"
        );
        for (got, want) in cohort.edges.iter().zip(want["edges"].as_array().unwrap()) {
            let want = want.as_f64().unwrap();
            assert!((got - want).abs() <= 1e-9, "{key}: edge {got} vs {want}");
        }
        let all: Vec<usize> = (0..cohort.len()).collect();
        let counts = cohort.class_counts(&all);
        for bin in 0..4 {
            for censored in 0..2 {
                let want = want["bin_censorship_counts"][format!("{bin},{censored}")]
                    .as_u64()
                    .unwrap();
                assert_eq!(
                    counts[2 * bin + censored] as u64,
                    want,
                    "{key} ({bin},{censored})"
                );
            }
        }
    }
}

#[test]
fn patients_keep_every_slide_and_label() {
    let cohort = Cohort::read(&fixture("tcga/blca_sig_labels.csv")).unwrap();
    // First data row of the MCAT table: TCGA-2F-A9KO, 24.11 months, event observed.
    let first = &cohort.patients[0];
    assert_eq!(first.case_id, "TCGA-2F-A9KO");
    assert_eq!(first.survival_months, 24.11);
    assert!(first.event() && !first.censored);
    // TCGA-2F-A9KP has two diagnostic slides (DX1, DX2) on consecutive rows.
    let p = &cohort.patients[cohort.position("TCGA-2F-A9KP").unwrap()];
    assert_eq!(p.slide_ids.len(), 2);
    assert!(p.slide_ids[0].contains("DX1") && p.slide_ids[1].contains("DX2"));
    let slides: usize = cohort.patients.iter().map(|p| p.slide_ids.len()).sum();
    assert_eq!(slides, cohort.n_slides);
}

#[test]
fn real_splits_have_the_published_sizes() {
    for (table, study, sizes) in [
        (
            "tcga/blca_sig_labels.csv",
            "tcga_blca",
            [(298, 75), (298, 75), (298, 75), (299, 74), (299, 74)],
        ),
        (
            "tcga/brca_mutsig_labels.csv",
            "tcga_brca",
            [(764, 192), (765, 191), (765, 191), (765, 191), (765, 191)],
        ),
    ] {
        let cohort = Cohort::read(&fixture(table)).unwrap();
        let dir = fixture(&format!("tcga/splits/5foldcv/{study}"));
        let splits = read_splits(&dir, &[0, 1, 2, 3, 4], &cohort).unwrap();
        for (split, (train, val)) in splits.iter().zip(sizes) {
            assert_eq!(
                (split.train.len(), split.val.len()),
                (train, val),
                "{study} fold {}",
                split.fold
            );
            // Disjoint and together the whole cohort.
            let mut all: Vec<usize> = split.train.iter().chain(&split.val).copied().collect();
            all.sort_unstable();
            all.dedup();
            assert_eq!(all.len(), cohort.len());
        }
    }
}

#[test]
fn sampling_weights_balance_the_eight_classes() {
    let cohort = Cohort::read(&fixture("tcga/blca_sig_labels.csv")).unwrap();
    let split = read_split(
        &split_path(&fixture("tcga/splits/5foldcv/tcga_blca"), 0),
        0,
        &cohort,
    )
    .unwrap();
    let weights = cohort.sampling_weights(&split.train);
    let counts = cohort.class_counts(&split.train);
    let n = split.train.len() as f64;
    // Each class carries total weight N (N / count per member × count members).
    let mut per_class = [0.0; 8];
    for (&i, w) in split.train.iter().zip(&weights) {
        per_class[cohort.patients[i].class()] += w;
        assert_eq!(*w, n / counts[cohort.patients[i].class()] as f64);
    }
    for (class, total) in per_class.iter().enumerate() {
        if counts[class] > 0 {
            assert!((total - n).abs() < 1e-9, "class {class}: {total}");
        }
    }
}

/// Writes `text` to a file named `name` in a fresh temporary directory.
fn temp_file(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn tolerant_of_real_world_layouts() {
    // Two unnamed index columns (LUAD style), no `train` column, no slide_id, blank clinical
    // cells, columns in another order.
    let text = "\
,,age,censorship,case_id,oncotree_code,survival_months
0,0,,1,A,,10.5
1,1,61,0,B,LUAD,3.0
2,2,70,0,C,,7.25
3,3,,1,D,LUAD,12.0
4,4,55,0,E,,1.0
";
    let (_dir, path) = temp_file("luad.csv", text);
    let cohort = Cohort::read(&path).unwrap();
    assert_eq!(cohort.len(), 5);
    assert_eq!(cohort.n_slides, 0);
    assert!(cohort.patients[0].censored && !cohort.patients[1].censored);
    // Uncensored times 1, 3, 7.25 → quartiles 2, 3, 5.125; outer edges from all times.
    assert_eq!(cohort.edges, [1.0 - 1e-6, 2.0, 3.0, 5.125, 12.0 + 1e-6]);
}

fn error_for(text: &str) -> String {
    let (_dir, path) = temp_file("cohort.csv", text);
    let message = Cohort::read(&path).unwrap_err().to_string();
    assert!(
        message.contains("cohort.csv"),
        "message must name the file: {message}"
    );
    message
}

#[test]
fn bad_tables_are_named_by_line_and_column() {
    let m = error_for("case_id,survival_months\nA,3\n");
    assert!(m.contains("required column `censorship` is missing"), "{m}");
    let m = error_for("case_id,survival_months,censorship\nA,3,0\nB,abc,1\n");
    assert!(
        m.contains("line 3") && m.contains("`survival_months`") && m.contains("not a number"),
        "{m}"
    );
    let m = error_for("case_id,survival_months,censorship\nA,3,0\nB,-2,1\n");
    assert!(m.contains("line 3") && m.contains("negative"), "{m}");
    let m = error_for("case_id,survival_months,censorship\nA,3,0\nB,2,2\n");
    assert!(
        m.contains("line 3") && m.contains("`censorship`") && m.contains("0 (event observed) or 1"),
        "{m}"
    );
    let m = error_for("case_id,survival_months,censorship\nA,3,0\nB,,1\n");
    assert!(m.contains("blank survival time"), "{m}");
    let m = error_for("case_id,slide_id,survival_months,censorship\nA,a1,3,0\nA,a2,4,0\n");
    assert!(
        m.contains("case A") && m.contains("line 3") && m.contains("line 2"),
        "{m}"
    );
    let m = error_for("case_id,survival_months,censorship\n");
    assert!(m.contains("no data rows"), "{m}");
    let m = error_for("case_id,case_id,survival_months,censorship\nA,A,3,0\n");
    assert!(m.contains("`case_id` appears 2 times"), "{m}");
}

#[test]
fn zipped_tables_get_an_unzip_hint() {
    let (_dir, path) = temp_file("tcga_luad_all_clean.csv.zip", "PK\u{3}\u{4}rest-of-zip");
    let err = Cohort::read(&path).unwrap_err();
    assert!(matches!(err, CohortError::Zipped { .. }));
    assert!(err.to_string().contains("unzip"), "{err}");
}

#[test]
fn bad_splits_are_refused_with_the_case() {
    let cohort_text = "case_id,survival_months,censorship\nA,1,0\nB,2,0\nC,3,1\nD,4,0\nE,5,1\n";
    let (dir, cohort_path) = temp_file("cohort.csv", cohort_text);
    let cohort = Cohort::read(&cohort_path).unwrap();
    let split = |text: &str| {
        let path = dir.path().join("splits_0.csv");
        std::fs::write(&path, text).unwrap();
        read_split(&path, 0, &cohort)
    };
    let ok = split(",train,val\n0,A,D\n1,B,\n2,C,\n").unwrap();
    assert_eq!((ok.train.len(), ok.val.len()), (3, 1));

    let m = split(",train,val\n0,A,Z\n").unwrap_err().to_string();
    assert!(
        m.contains("splits_0.csv")
            && m.contains("line 2")
            && m.contains("`val`")
            && m.contains("case Z"),
        "{m}"
    );
    let m = split(",train,val\n0,A,B\n1,B,\n").unwrap_err().to_string();
    assert!(m.contains("case B is in both train and val"), "{m}");
    let m = split(",train,val\n0,A,B\n1,A,\n").unwrap_err().to_string();
    assert!(m.contains("case A is listed twice"), "{m}");
    let m = split(",training,val\n0,A,B\n").unwrap_err().to_string();
    assert!(m.contains("required column `train`"), "{m}");
    let m = split(",train,val\n0,A,\n").unwrap_err().to_string();
    assert!(m.contains("`val` column lists no cases"), "{m}");
}
