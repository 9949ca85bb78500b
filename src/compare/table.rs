//! Table 2's shape from finished fits: rows are the systems grouped by modality, columns the
//! studies, a cell the mean ± std over folds of the C-index at the configured selection with
//! the best-epoch figure (optimistic: the paper's protocol) beside it. Against HDMoE, per study:
//! the mean paired per-fold difference with a paired t-test over folds, and a bootstrap over
//! patients of the pooled out-of-fold C-index difference (95 % interval, two-sided p).
//! Written as compare.csv (one row per cell), compare.md and compare.html.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use rand::prelude::*;
use rand_chacha::ChaCha8Rng;

use super::{CompareError, Job};
use crate::config::Modality;
use crate::report::tables::mean_std;
use crate::survival::{concordance_index, ttest::paired_ttest};
use crate::train::FitReport;

/// The paper's Table 2 figures this project has on record (study, system, its modality group,
/// C-index): HDMoE's is the WSI + genomics model, so a genomics-only HDMoE gets none.
const PAPER: &[(&str, &str, &str, f64)] = &[
    ("blca", "snn", "genomics", 0.618),
    ("brca", "snn", "genomics", 0.633),
    ("blca", "hdmoe", "multimodal", 0.664),
    ("brca", "hdmoe", "multimodal", 0.658),
];

fn paper_figure(study: &str, model: &str, group: &str) -> Option<f64> {
    PAPER
        .iter()
        .find(|(s, m, g, _)| study.starts_with(s) && *m == model && *g == group)
        .map(|p| p.3)
}

/// One system on one study.
#[derive(Debug, Clone)]
pub struct Cell {
    pub study: String,
    pub model: &'static str,
    pub group: &'static str,
    pub selection: String,
    /// Per fold, in fold order: (fold, C-index at the selection, best-epoch C-index).
    pub folds: Vec<(usize, f64, f64)>,
    pub paper: Option<f64>,
    pub versus_hdmoe: Option<Versus>,
}

impl Cell {
    pub fn selected(&self) -> (f64, f64) {
        stats(self.folds.iter().map(|f| f.1))
    }

    pub fn best(&self) -> (f64, f64) {
        stats(self.folds.iter().map(|f| f.2))
    }
}

fn stats(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
    mean_std(&v).unwrap_or((f64::NAN, f64::NAN))
}

/// A system against HDMoE on the same study.
#[derive(Debug, Clone)]
pub struct Versus {
    /// Mean over the shared folds of (system − HDMoE) at the selection.
    pub fold_difference: f64,
    /// Paired t-test over those folds (none with fewer than two, or no variance).
    pub p_paired_t: Option<f64>,
    /// Pooled out-of-fold C-index difference on the patients both predicted.
    pub pooled_difference: f64,
    pub bootstrap_interval: (f64, f64),
    pub p_bootstrap: f64,
    pub resamples: usize,
}

/// Every cell of every study.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub studies: Vec<String>,
    pub cells: Vec<Cell>,
}

fn group(modalities: &[Modality]) -> &'static str {
    match modalities {
        [Modality::Wsi] => "pathology",
        [Modality::Genomics] => "genomics",
        [Modality::Mri] => "MRI",
        _ => "multimodal",
    }
}

const GROUPS: [&str; 4] = ["pathology", "genomics", "MRI", "multimodal"];

/// One patient's out-of-fold prediction, from fit's predictions.csv.
struct Predicted {
    time: f64,
    event: bool,
    risk: f64,
}

fn read_predictions(path: &Path) -> Result<BTreeMap<String, Predicted>, CompareError> {
    let bad = |message: String| CompareError::Output {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let column = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| bad(format!("no `{name}` column")))
    };
    let (case, risk, time, event) = (
        column("case_id")?,
        column("risk")?,
        column("survival_months")?,
        column("event")?,
    );
    let mut out = BTreeMap::new();
    for (k, line) in lines.enumerate() {
        let cells: Vec<&str> = line.split(',').collect();
        let number = |i: usize| {
            cells
                .get(i)
                .and_then(|c| c.parse::<f64>().ok())
                .ok_or_else(|| bad(format!("line {}: column {} is not a number", k + 2, i + 1)))
        };
        out.insert(
            cells[case].to_string(),
            Predicted {
                time: number(time)?,
                event: number(event)? != 0.0,
                risk: number(risk)?,
            },
        );
    }
    Ok(out)
}

/// The pooled out-of-fold C-index of `a` minus `b` on their shared patients, and its bootstrap
/// over patients (resampled with replacement; resamples without an event are dropped).
fn bootstrap(
    a: &BTreeMap<String, Predicted>,
    b: &BTreeMap<String, Predicted>,
    resamples: usize,
    seed: u64,
) -> Option<(f64, (f64, f64), f64, usize)> {
    let shared: Vec<(&Predicted, &Predicted)> = a
        .iter()
        .filter_map(|(case, p)| b.get(case).map(|q| (p, q)))
        .collect();
    let c = |rows: &[usize]| -> Option<f64> {
        let time: Vec<f64> = rows.iter().map(|&i| shared[i].0.time).collect();
        let event: Vec<bool> = rows.iter().map(|&i| shared[i].0.event).collect();
        let ra: Vec<f64> = rows.iter().map(|&i| shared[i].0.risk).collect();
        let rb: Vec<f64> = rows.iter().map(|&i| shared[i].1.risk).collect();
        let ca = concordance_index(&time, &event, &ra).ok()?.c_index;
        let cb = concordance_index(&time, &event, &rb).ok()?.c_index;
        Some(ca - cb)
    };
    let n = shared.len();
    let all: Vec<usize> = (0..n).collect();
    let observed = c(&all)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut draws: Vec<f64> = (0..resamples)
        .filter_map(|_| {
            let rows: Vec<usize> = (0..n).map(|_| rng.random_range(0..n)).collect();
            c(&rows)
        })
        .collect();
    if draws.is_empty() {
        return None;
    }
    draws.sort_by(f64::total_cmp);
    let at = |q: f64| draws[((draws.len() - 1) as f64 * q).round() as usize];
    let below = draws.iter().filter(|&&d| d <= 0.0).count() as f64;
    let above = draws.iter().filter(|&&d| d >= 0.0).count() as f64;
    let p = (2.0 * below.min(above) / draws.len() as f64).min(1.0);
    Some((observed, (at(0.025), at(0.975)), p, draws.len()))
}

impl Comparison {
    pub fn new(finished: &[(Job, FitReport)], resamples: usize) -> Result<Self, CompareError> {
        let mut studies: Vec<String> = Vec::new();
        let mut cells = Vec::new();
        let mut predictions = Vec::new();
        for (job, fitted) in finished {
            if !studies.contains(&job.study) {
                studies.push(job.study.clone());
            }
            let model = job.model.name();
            let group = group(&job.config.dataset.modalities);
            cells.push(Cell {
                study: job.study.clone(),
                model,
                group,
                selection: format!("{:?}", job.config.train.selection).to_lowercase(),
                folds: fitted
                    .folds
                    .iter()
                    .map(|f| (f.fold, f.c_selected, f.c_best))
                    .collect(),
                paper: paper_figure(&job.study, model, group),
                versus_hdmoe: None,
            });
            predictions.push(read_predictions(&fitted.run_dir.join("predictions.csv"))?);
        }
        for (study, seed) in studies.iter().map(|s| {
            let seed = finished
                .iter()
                .find(|(j, _)| &j.study == s)
                .map_or(0, |(j, _)| j.config.train.seed);
            (s.clone(), seed)
        }) {
            let Some(h) = cells
                .iter()
                .position(|c| c.study == study && c.model == "hdmoe")
            else {
                continue;
            };
            for k in 0..cells.len() {
                if k == h || cells[k].study != study {
                    continue;
                }
                let reference = &cells[h].folds;
                let (ours, theirs): (Vec<f64>, Vec<f64>) = cells[k]
                    .folds
                    .iter()
                    .filter_map(|(fold, c, _)| {
                        reference.iter().find(|r| r.0 == *fold).map(|r| (*c, r.1))
                    })
                    .unzip();
                let fold_difference = stats(ours.iter().zip(&theirs).map(|(a, b)| a - b)).0;
                let p_paired_t = paired_ttest(&ours, &theirs).ok().map(|t| t.p_value);
                let pooled = bootstrap(&predictions[k], &predictions[h], resamples, seed);
                cells[k].versus_hdmoe = pooled.map(|(d, interval, p, n)| Versus {
                    fold_difference,
                    p_paired_t,
                    pooled_difference: d,
                    bootstrap_interval: interval,
                    p_bootstrap: p,
                    resamples: n,
                });
            }
        }
        Ok(Self { studies, cells })
    }

    fn cell(&self, study: &str, model: &str) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| c.study == study && c.model == model)
    }

    /// Rows in group order, each system once, in the order first trained.
    fn rows(&self) -> Vec<(&'static str, &'static str)> {
        let mut rows = Vec::new();
        for g in GROUPS {
            for c in self.cells.iter().filter(|c| c.group == g) {
                if !rows.contains(&(g, c.model)) {
                    rows.push((g, c.model));
                }
            }
        }
        rows
    }

    pub fn markdown(&self) -> String {
        let mut md = String::from("## Comparison (Table 2)\n\n");
        let selection = self.cells.first().map_or("last", |c| c.selection.as_str());
        let _ = writeln!(
            md,
            "C-index, mean ± std over folds at the `{selection}` selection; in brackets the \
             best epoch on the reported fold (optimistic: the paper's protocol) and the paper's \
             figure where this project has it.\n"
        );
        let _ = writeln!(md, "| modality | system | {} |", self.studies.join(" | "));
        let _ = writeln!(md, "|---|---|{}", "---|".repeat(self.studies.len()));
        for (g, model) in self.rows() {
            let cells: Vec<String> = self
                .studies
                .iter()
                .map(|s| match self.cell(s, model) {
                    Some(c) => {
                        let (m, sd) = c.selected();
                        let (b, _) = c.best();
                        let paper = c.paper.map_or(String::new(), |p| format!("; paper {p:.3}"));
                        format!("{m:.4} ± {sd:.4} (best {b:.4}{paper})")
                    }
                    None => "—".into(),
                })
                .collect();
            let _ = writeln!(md, "| {g} | {model} | {} |", cells.join(" | "));
        }
        if self.cells.iter().any(|c| c.versus_hdmoe.is_some()) {
            md.push_str(
                "\n### Against HDMoE\n\nΔ = system − HDMoE. Per fold: the mean paired \
                 difference and a paired t-test over folds. Pooled: the out-of-fold C-index \
                 difference on the patients both predicted, with a bootstrap over patients \
                 (95 % interval, two-sided p).\n\n\
                 | study | system | Δ per fold | p (paired t) | Δ pooled | 95 % interval | p (bootstrap) |\n\
                 |---|---|---|---|---|---|---|\n",
            );
            for c in &self.cells {
                if let Some(v) = &c.versus_hdmoe {
                    let t = v.p_paired_t.map_or("—".into(), |p| format!("{p:.3}"));
                    let _ = writeln!(
                        md,
                        "| {} | {} | {:+.4} | {t} | {:+.4} | [{:+.4}, {:+.4}] | {:.3} |",
                        c.study,
                        c.model,
                        v.fold_difference,
                        v.pooled_difference,
                        v.bootstrap_interval.0,
                        v.bootstrap_interval.1,
                        v.p_bootstrap
                    );
                }
            }
        }
        md
    }

    pub fn csv(&self) -> String {
        let mut text = String::from(
            "study,group,model,selection,folds,c_index_mean,c_index_std,c_index_best_mean,\
             c_index_best_std,paper,diff_vs_hdmoe,p_paired_t,pooled_diff_vs_hdmoe,\
             bootstrap_lo,bootstrap_hi,p_bootstrap,bootstrap_resamples\n",
        );
        let opt = |x: Option<f64>| x.map_or(String::new(), |v| v.to_string());
        for c in &self.cells {
            let (m, sd) = c.selected();
            let (b, bsd) = c.best();
            let v = c.versus_hdmoe.as_ref();
            let _ = writeln!(
                text,
                "{},{},{},{},{},{m},{sd},{b},{bsd},{},{},{},{},{},{},{},{}",
                c.study,
                c.group,
                c.model,
                c.selection,
                c.folds.len(),
                opt(c.paper),
                opt(v.map(|v| v.fold_difference)),
                opt(v.and_then(|v| v.p_paired_t)),
                opt(v.map(|v| v.pooled_difference)),
                opt(v.map(|v| v.bootstrap_interval.0)),
                opt(v.map(|v| v.bootstrap_interval.1)),
                opt(v.map(|v| v.p_bootstrap)),
                v.map_or(String::new(), |v| v.resamples.to_string()),
            );
        }
        text
    }

    /// compare.csv, compare.md and compare.html in `out`.
    pub fn write(&self, out: &Path) -> Result<Vec<PathBuf>, CompareError> {
        let fail = |path: &Path, e: std::io::Error| CompareError::Output {
            path: path.to_owned(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(out).map_err(|e| fail(out, e))?;
        let markdown = self.markdown();
        let mut written = Vec::new();
        for (name, body) in [
            ("compare.csv", self.csv()),
            ("compare.md", markdown.clone()),
            ("compare.html", crate::report::html::page(&markdown, None)),
        ] {
            let path = out.join(name);
            crate::atomic::write_bytes(&path, body.as_bytes()).map_err(|e| fail(&path, e))?;
            written.push(path);
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn predictions(rows: &[(f64, bool, f64)]) -> BTreeMap<String, Predicted> {
        rows.iter()
            .enumerate()
            .map(|(i, &(time, event, risk))| (format!("P{i}"), Predicted { time, event, risk }))
            .collect()
    }

    #[test]
    fn the_paper_figure_is_the_same_system_on_the_same_modalities() {
        assert_eq!(paper_figure("blca", "snn", "genomics"), Some(0.618));
        assert_eq!(
            paper_figure("brca_genomics", "snn", "genomics"),
            Some(0.633)
        );
        assert_eq!(paper_figure("blca", "hdmoe", "multimodal"), Some(0.664));
        assert_eq!(paper_figure("blca", "hdmoe", "genomics"), None);
        assert_eq!(paper_figure("luad", "snn", "genomics"), None);
    }

    #[test]
    fn a_perfect_ranker_beats_a_reversed_one_in_the_bootstrap() {
        let n = 60;
        let rows = |sign: f64| -> Vec<(f64, bool, f64)> {
            (0..n)
                .map(|i| (1.0 + i as f64, i % 3 != 0, sign * -(i as f64)))
                .collect()
        };
        let good = predictions(&rows(1.0));
        let bad = predictions(&rows(-1.0));
        let (d, (lo, hi), p, used) = bootstrap(&good, &bad, 200, 7).unwrap();
        assert!((d - 1.0).abs() < 1e-12, "C = 1 against C = 0: {d}");
        assert!(lo > 0.9 && hi <= 1.0 + 1e-12 && p < 0.01 && used == 200);
        // Against itself: no difference, p = 1.
        let (d, _, p, _) = bootstrap(&good, &good, 100, 7).unwrap();
        assert_eq!((d, p), (0.0, 1.0));
    }
}
