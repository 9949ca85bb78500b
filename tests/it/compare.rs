//! `compare`: several systems on the same folds of the synthetic cohort, the table written,
//! sharded training that a later full run reuses, and the statistics against HDMoE.

use hdmoe_pipe::compare::{self, CompareOptions};
use hdmoe_pipe::model::Architecture;
use hdmoe_pipe::shard::Shard;

#[test]
fn compare_trains_each_system_on_the_same_folds_and_writes_table_2() {
    let _one = crate::fit::ONE_FIT_AT_A_TIME
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let data = crate::fit::synthetic(&dir.path().join("study"), 80, false, true);
    let study = data.config(&["train.epochs=3", "train.lr=1e-3", "dataset.name=synthetic"]);
    let models: Vec<Architecture> = ["hdmoe", "snn", "maxmil"]
        .iter()
        .map(|m| Architecture::find(m).unwrap())
        .collect();
    let out = dir.path().join("table");
    let mut options = CompareOptions {
        models,
        force: false,
        shard: Shard { index: 0, count: 2 },
        out: out.clone(),
        bootstrap: 200,
    };
    // Shard 0 of 2: jobs 0, 2, 4 of (hdmoe f0, hdmoe f1, snn f0, snn f1, maxmil f0, maxmil f1).
    let sharded = compare::run(std::slice::from_ref(&study), &options).unwrap();
    assert!(sharded.comparison.is_none());
    assert!(!out.join("compare.csv").exists());
    let runs = study.run_dir().join("compare");
    for model in ["hdmoe", "snn", "maxmil"] {
        assert!(
            runs.join(model).join("fold_0/model.safetensors").is_file(),
            "{model}"
        );
        assert!(!runs.join(model).join("fold_1").exists(), "{model}");
    }
    let trained_at = std::fs::metadata(runs.join("snn/fold_0/history.csv"))
        .unwrap()
        .modified()
        .unwrap();

    // The full run keeps shard 0's folds and trains the rest.
    options.shard = Shard::ALL;
    let report = compare::run(std::slice::from_ref(&study), &options).unwrap();
    let kept = std::fs::metadata(runs.join("snn/fold_0/history.csv"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(trained_at, kept, "a sharded fold was retrained");
    let table = report.comparison.expect("the table");
    assert_eq!(table.studies, vec!["synthetic".to_string()]);
    let cell = |m: &str| table.cells.iter().find(|c| c.model == m).unwrap();
    assert_eq!(cell("maxmil").group, "pathology");
    assert_eq!(cell("snn").group, "genomics");
    assert_eq!(cell("hdmoe").group, "multimodal");
    for m in ["hdmoe", "snn", "maxmil"] {
        // Each cell's folds are the fits' own summaries.
        let summary = std::fs::read_to_string(runs.join(m).join("summary.csv")).unwrap();
        let c = cell(m);
        assert_eq!(c.folds.len(), 2);
        for (fold, selected, best) in &c.folds {
            let row = summary
                .lines()
                .find(|l| l.starts_with(&format!("{fold},")))
                .unwrap();
            let cols: Vec<&str> = row.split(',').collect();
            assert_eq!(cols[4].parse::<f64>().unwrap(), *selected);
            assert_eq!(cols[7].parse::<f64>().unwrap(), *best);
        }
    }
    assert!(cell("hdmoe").versus_hdmoe.is_none());
    for m in ["snn", "maxmil"] {
        let v = cell(m).versus_hdmoe.as_ref().expect("against HDMoE");
        let (ours, theirs) = (&cell(m).folds, &cell("hdmoe").folds);
        let by_fold = (ours[0].1 - theirs[0].1 + ours[1].1 - theirs[1].1) / 2.0;
        assert!((v.fold_difference - by_fold).abs() < 1e-12);
        assert!(v.p_paired_t.is_some_and(|p| (0.0..=1.0).contains(&p)));
        assert!(v.bootstrap_interval.0 <= v.pooled_difference);
        assert!(v.pooled_difference <= v.bootstrap_interval.1);
        assert!((0.0..=1.0).contains(&v.p_bootstrap) && v.resamples == 200);
    }
    let md = std::fs::read_to_string(out.join("compare.md")).unwrap();
    assert!(md.contains("| pathology | maxmil |") && md.contains("### Against HDMoE"));
    let csv = std::fs::read_to_string(out.join("compare.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4);
    assert!(std::fs::read_to_string(out.join("compare.html"))
        .unwrap()
        .contains("<table>"));
}
