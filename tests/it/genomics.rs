//! The genomics stage on committed subsets of the real MCAT/PORPOISE tables (every gene column,
//! the first 24 patients) and on hand-made tables for the failure modes.

use crate::common;

use std::path::{Path, PathBuf};

use common::fixture;
use hdmoe_pipe::cache::read_str_list_attr;
use hdmoe_pipe::config::Config;
use hdmoe_pipe::genomics::{self, GenomicsError};

fn config(cohort: &Path, signatures: &Path, cache: &Path, sets: &[&str]) -> Config {
    let mut overrides = vec![
        format!("paths.cohort={}", cohort.display()),
        format!("paths.signatures={}", signatures.display()),
        format!("paths.cache={}", cache.display()),
    ];
    overrides.extend(sets.iter().map(|s| s.to_string()));
    Config::load(None, &overrides).unwrap()
}

fn sizes(report: &genomics::GenomicsSummary) -> Vec<usize> {
    report
        .detail
        .groups
        .iter()
        .map(|g| g.columns.len())
        .collect()
}

#[test]
fn group_sizes_come_from_the_data() {
    // Sizes of the full tables (the subsets keep every column), as MCAT/PORPOISE derive them.
    let cases = [
        (
            "tcga/blca_sig_24cases.csv",
            vec![94, 334, 521, 468, 1496, 479],
        ),
        (
            "tcga/blca_mutsig_24cases.csv",
            vec![102, 336, 518, 434, 199, 444],
        ),
        (
            "tcga/brca_mutsig_24cases.csv",
            vec![93, 330, 529, 460, 223, 450],
        ),
    ];
    for (table, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        let c = config(
            &fixture(table),
            &fixture("tcga/signatures.csv"),
            dir.path(),
            &[],
        );
        let report = genomics::run(&c, &common::forced(false)).unwrap();
        assert_eq!(sizes(&report), want, "{table}");
        assert_eq!(report.done, 24, "{table}");
        assert!(report.failed.is_empty());
        for group in &report.detail.groups {
            let mut sorted = group.columns.clone();
            sorted.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            assert_eq!(group.columns, sorted, "{table} {}: ASCII order", group.key);
        }
    }
}

#[test]
fn release_quirk_drops_the_last_gene_column() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(
        &fixture("tcga/blca_sig_24cases.csv"),
        &fixture("tcga/signatures.csv"),
        dir.path(),
        &["genomics.release_quirk=true"],
    );
    let report = genomics::run(&c, &common::forced(false)).unwrap();
    assert_eq!(sizes(&report), vec![94, 334, 521, 468, 1495, 479]);
    assert!(!report.detail.groups[4]
        .columns
        .contains(&"ZXDC_rnaseq".to_owned()));
}

/// The value of `column` on the first CSV row of `case`, read independently of the stage.
fn csv_value(table: &Path, case: &str, column: &str) -> f64 {
    let mut reader = csv::Reader::from_path(table).unwrap();
    let headers = reader.headers().unwrap().clone();
    let c = headers.iter().position(|h| h == column).unwrap();
    let k = headers.iter().position(|h| h == "case_id").unwrap();
    let row = reader
        .records()
        .map(|r| r.unwrap())
        .find(|r| &r[k] == case)
        .unwrap();
    row[c].parse().unwrap()
}

#[test]
fn written_values_are_the_raw_table_values() {
    let dir = tempfile::tempdir().unwrap();
    let table = fixture("tcga/blca_sig_24cases.csv");
    let c = config(&table, &fixture("tcga/signatures.csv"), dir.path(), &[]);
    let report = genomics::run(&c, &common::forced(false)).unwrap();

    let file = hdf5::File::open(&report.detail.output).unwrap();
    let ids: Vec<String> = file
        .dataset("case_ids")
        .unwrap()
        .read_raw::<hdf5::types::VarLenUnicode>()
        .unwrap()
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(ids.len(), 24);
    assert_eq!(ids[0], "TCGA-2F-A9KO");
    // TCGA-2F-A9KP has two slide rows; it is one patient.
    assert_eq!(ids.iter().filter(|i| *i == "TCGA-2F-A9KP").count(), 1);

    for key in [
        "oncogenes",
        "tumor_suppressor_genes",
        "transcription_factors",
    ] {
        let dataset = file.dataset(key).unwrap();
        let names = read_str_list_attr(&dataset, "feature_names").unwrap();
        let values = dataset.read_2d::<f64>().unwrap();
        assert_eq!(values.shape(), &[24, names.len()]);
        for j in [0, names.len() / 2, names.len() - 1] {
            for (i, id) in ids.iter().enumerate().take(4) {
                let column = &names[j];
                assert_eq!(
                    values[[i, j]],
                    csv_value(&table, id, column),
                    "{id} {column}"
                );
            }
        }
    }
}

const SIGNATURES: &str = "Family A,Family B\nG1,G3\nG2,\n";

fn small_case(table: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let cohort = dir.path().join("cohort.csv");
    let signatures = dir.path().join("signatures.csv");
    std::fs::write(&cohort, table).unwrap();
    std::fs::write(&signatures, SIGNATURES).unwrap();
    (dir, cohort, signatures)
}

#[test]
fn disagreeing_and_missing_values_fail_only_their_case() {
    let table = "\
case_id,slide_id,G1_rnaseq,G2_cnv,G3_mut
A,a1,1.5,1,0
A,a2,1.5,2,0
B,b1,2.5,,1
C,c1,3.5,-1,1
D,d1,4.5,0,abc
";
    let (dir, cohort, signatures) = small_case(table);
    let cache = dir.path().join("cache");
    let report = genomics::run(
        &config(&cohort, &signatures, &cache, &[]),
        &common::forced(false),
    )
    .unwrap();
    assert_eq!(report.done, 1, "only C is complete and consistent");
    let failed: Vec<&str> = report.failed.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(failed, vec!["A", "B", "D"]);
    let message = &report.failed[0].1;
    assert!(
        message.contains("cohort.csv")
            && message.contains("case A")
            && message.contains("`G2_cnv`")
            && message.contains("lines 2 and 3"),
        "{message}"
    );
    assert!(
        report.failed[1].1.contains("line 4, column `G2_cnv`"),
        "{}",
        report.failed[1].1
    );
    let manifest = std::fs::read_to_string(cache.join("genomics_manifest.csv")).unwrap();
    assert_eq!(
        manifest.lines().filter(|l| l.contains(",failed,")).count(),
        3
    );
    assert!(manifest.contains("C,done,"));

    // `median` fills over the usable patients (A still fails: its rows disagree): B's blank
    // G2_cnv with the median of C, D (-1, 0) = -0.5, D's "abc" G3_mut with that of B, C = 1.
    let report = genomics::run(
        &config(&cohort, &signatures, &cache, &["genomics.missing=median"]),
        &common::forced(true),
    )
    .unwrap();
    assert_eq!(report.done, 3);
    let file = hdf5::File::open(&report.detail.output).unwrap();
    let a = file.dataset("family_a").unwrap().read_2d::<f64>().unwrap();
    assert_eq!(
        a.row(0).to_vec(),
        vec![2.5, -0.5],
        "B: G1_rnaseq, G2_cnv (filled)"
    );
    let b = file.dataset("family_b").unwrap().read_2d::<f64>().unwrap();
    assert_eq!(
        b.column(0).to_vec(),
        vec![1.0, 1.0, 1.0],
        "G3_mut, D filled with 1"
    );

    let report = genomics::run(
        &config(&cohort, &signatures, &cache, &["genomics.missing=zero"]),
        &common::forced(true),
    )
    .unwrap();
    let file = hdf5::File::open(&report.detail.output).unwrap();
    let a = file.dataset("family_a").unwrap().read_2d::<f64>().unwrap();
    assert_eq!(a.row(0).to_vec(), vec![2.5, 0.0]);
}

#[test]
fn bad_signature_files_and_tables_are_refused() {
    let table = "case_id,G1_rnaseq,G2_cnv,G3_mut\nA,1,2,3\n";
    let (dir, cohort, signatures) = small_case(table);
    let cache = dir.path().join("cache");
    let run = |cohort: &Path, signatures: &Path| {
        genomics::run(
            &config(cohort, signatures, &cache, &[]),
            &common::forced(false),
        )
    };

    // A family whose genes the table lacks.
    std::fs::write(&signatures, "Family A,Family C\nG1,G9\n").unwrap();
    let e = run(&cohort, &signatures).unwrap_err().to_string();
    assert!(
        e.contains("gene family `Family C`") && e.contains("matches no column"),
        "{e}"
    );
    // The cohort table given as the signature file.
    let e = run(&cohort, &fixture("tcga/blca_sig_labels.csv")).unwrap_err();
    assert!(matches!(e, GenomicsError::Signatures { .. }), "{e}");
    assert!(e.to_string().contains("not a gene-signature table"), "{e}");
    // A duplicated gene column.
    std::fs::write(&signatures, SIGNATURES).unwrap();
    std::fs::write(
        &cohort,
        "case_id,G1_rnaseq,G1_rnaseq,G2_cnv,G3_mut\nA,1,1,2,3\n",
    )
    .unwrap();
    let e = run(&cohort, &signatures).unwrap_err().to_string();
    assert!(
        e.contains("column `G1_rnaseq` appears more than once"),
        "{e}"
    );
    // Nothing was written by any of these.
    assert!(!cache.join("genomics.h5").exists());
}

#[test]
fn reruns_keep_refuse_or_redo() {
    let table = "case_id,G1_rnaseq,G2_cnv,G3_mut\nA,1,2,3\nB,4,5,6\n";
    let (dir, cohort, signatures) = small_case(table);
    let cache = dir.path().join("cache");
    let output = cache.join("genomics.h5");
    let first = genomics::run(
        &config(&cohort, &signatures, &cache, &[]),
        &common::forced(false),
    )
    .unwrap();
    assert_eq!(first.kept, 0);
    let bytes = std::fs::read(&output).unwrap();

    let again = genomics::run(
        &config(&cohort, &signatures, &cache, &[]),
        &common::forced(false),
    )
    .unwrap();
    assert!(again.kept > 0);
    assert_eq!(sizes(&again), sizes(&first));

    let e = genomics::run(
        &config(&cohort, &signatures, &cache, &["genomics.missing=zero"]),
        &common::forced(false),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("missing: error → zero") && e.contains("--force"),
        "{e}"
    );
    // A changed input table is a changed parameter too.
    std::fs::write(
        &cohort,
        "case_id,G1_rnaseq,G2_cnv,G3_mut\nA,1,2,3\nB,4,5,7\n",
    )
    .unwrap();
    let e = genomics::run(
        &config(&cohort, &signatures, &cache, &[]),
        &common::forced(false),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("cohort_sha256"), "{e}");
    std::fs::write(&cohort, table).unwrap();

    // A truncated output is remade, identical to the first.
    std::fs::write(&output, &bytes[..bytes.len() / 2]).unwrap();
    let remade = genomics::run(
        &config(&cohort, &signatures, &cache, &[]),
        &common::forced(false),
    )
    .unwrap();
    assert_eq!(remade.kept, 0);
    assert_eq!(
        std::fs::read(&output).unwrap(),
        bytes,
        "byte-identical rerun"
    );
}

/// On the full tables in the project's shared data folder, when present (run with
/// `cargo test -- --ignored`).
#[test]
#[ignore = "reads ../shared/data/tcga, which users do not have"]
fn full_tables_give_the_published_sizes() {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/tcga");
    for (table, want) in [
        (
            "mcat_datasets_csv_sig/tcga_blca_all_clean.csv",
            vec![94, 334, 521, 468, 1496, 479],
        ),
        (
            "porpoise_datasets_csv_mutsig/tcga_blca_all_clean.csv",
            vec![102, 336, 518, 434, 199, 444],
        ),
        (
            "porpoise_datasets_csv_mutsig/tcga_brca_all_clean.csv",
            vec![93, 330, 529, 460, 223, 450],
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let c = config(
            &shared.join(table),
            &shared.join("signatures.csv"),
            dir.path(),
            &[],
        );
        let report = genomics::run(&c, &common::forced(false)).unwrap();
        assert_eq!(sizes(&report), want, "{table}");
        assert!(report.failed.is_empty(), "{:?}", report.failed);
    }
}
