//! `hdmoe-pipe report`: C-index per fold, Kaplan–Meier by risk group, log-rank and t-tests,
//! survival metrics beside Harrell's C (Uno's C, dynamic AUC, Brier scores, Cox hazard
//! ratios) and calibration by risk quintile, from an out-of-fold predictions table (or an
//! external cohort's predictions), as CSV, Markdown, HTML and PNGs.
//!
//! A new table: compute it in `tables::analyse` (a polars frame), write it in `run`, render it
//! in `render_markdown`, and check it against lifelines/scipy values in `tests/it/report.rs`.

pub mod calibration;
pub mod html;
pub mod markdown;
pub mod metrics;
pub mod plot;
pub mod predictions;
pub mod run_info;
pub mod sources;
pub mod tables;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use polars::prelude::*;

use crate::atomic;
use crate::config::ReportConfig;
pub use predictions::Predictions;
use tables::Analysis;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {message}")]
    Input { path: PathBuf, message: String },
    #[error("{path}: cannot write: {message}")]
    Output { path: PathBuf, message: String },
    #[error("computing the report tables: {0}")]
    Table(#[from] PolarsError),
}

/// What to read and where to write.
#[derive(Debug, Clone)]
pub struct ReportArgs {
    pub predictions: PathBuf,
    pub out: PathBuf,
    /// Per-fold `c_index_best` (the paper's best-epoch protocol) from `fit`'s `summary.csv`.
    /// When `None`, a `summary.csv` beside the predictions is used if it has that column.
    pub summary: Option<PathBuf>,
    /// The run folder (fit's config.yaml, routing, `run`'s stages.csv). When `None`, the
    /// predictions' folder if it holds fit's config.yaml.
    pub run: Option<PathBuf>,
    /// The cache folder whose stage manifests list the failed items.
    pub cache: Option<PathBuf>,
}

/// The files written, in the order they were written.
#[derive(Debug, Clone)]
pub struct ReportOutputs {
    /// The output folder.
    pub out: PathBuf,
    pub files: Vec<PathBuf>,
    /// Mean and population std of the per-fold C-index, and the number of folds behind them.
    pub cindex_mean: Option<(f64, f64, usize)>,
    pub notes: Vec<String>,
}

pub const CINDEX_CSV: &str = "cindex.csv";
pub const KM_CSV: &str = "km.csv";
pub const LOGRANK_CSV: &str = "logrank.csv";
pub const TTEST_CSV: &str = "ttest.csv";
pub const REPORT_MD: &str = "report.md";
pub const KM_PNG: &str = "km.png";
pub const REPORT_HTML: &str = "report.html";
pub const METRICS_CSV: &str = "metrics.csv";
pub const CALIBRATION_CSV: &str = "calibration.csv";
pub const CALIBRATION_PNG: &str = "calibration.png";

impl std::fmt::Display for ReportOutputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some((mean, std, folds)) = self.cindex_mean {
            writeln!(f, "C-index {mean:.4} ± {std:.4} over {folds} folds")?;
        }
        writeln!(f, "report written to {}", self.out.display())
    }
}

impl crate::stage::Outcome for ReportOutputs {}

/// `cindex.csv` as the console shows it: numbers to four decimals, columns right-aligned, each
/// line indented by two spaces. None when the file cannot be read.
pub fn cindex_console_table(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let rows: Vec<Vec<String>> = text
        .lines()
        .map(|line| {
            line.split(',')
                .map(|cell| match cell.parse::<f64>() {
                    Ok(x) if cell.contains('.') => format!("{x:.4}"),
                    _ => cell.to_owned(),
                })
                .collect()
        })
        .collect();
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(String::len)
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut table = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:>w$}"))
            .collect();
        table.push_str(&format!("  {}\n", cells.join("  ")));
    }
    Some(table)
}

pub fn run(args: &ReportArgs, config: &ReportConfig) -> Result<ReportOutputs, ReportError> {
    let predictions = Predictions::read(&args.predictions)?;
    let best = read_best_by_fold(args)?;
    let run = run_dir(args);
    let edges = sources::bin_edges(run.as_deref())?;
    let covariates = read_covariates(args, config, run.as_deref(), &predictions)?;
    let extras = tables::Extras {
        edges: &edges,
        covariates: covariates.as_ref(),
    };
    let mut analysis = tables::analyse(&predictions, config, best.as_ref(), &extras)?;

    std::fs::create_dir_all(&args.out).map_err(|e| ReportError::Output {
        path: args.out.clone(),
        message: e.to_string(),
    })?;
    let mut files = Vec::new();
    for (name, df) in [
        (CINDEX_CSV, &mut analysis.cindex),
        (KM_CSV, &mut analysis.km),
        (LOGRANK_CSV, &mut analysis.logrank),
        (TTEST_CSV, &mut analysis.ttest),
        (METRICS_CSV, &mut analysis.metrics_table),
        (CALIBRATION_CSV, &mut analysis.calibration_table),
    ] {
        let path = args.out.join(name);
        write_csv(&path, df)?;
        files.push(path);
    }
    let png = args.out.join(KM_PNG);
    let png_written = if analysis.curves.is_empty() {
        false
    } else {
        atomic::write_with(&png, |temp| {
            plot::draw(
                temp,
                &analysis.curves,
                analysis.logrank_p,
                "Time (survival_months)",
            )
            .map_err(std::io::Error::other)
        })
        .map_err(|e| ReportError::Output {
            path: png.clone(),
            message: e.to_string(),
        })?;
        files.push(png.clone());
        true
    };
    let calibration_png = args.out.join(CALIBRATION_PNG);
    let calibration_written = match &analysis.calibration {
        Ok(rows) if !rows.is_empty() => {
            atomic::write_with(&calibration_png, |temp| {
                plot::draw_calibration(temp, rows, "t =").map_err(std::io::Error::other)
            })
            .map_err(|e| ReportError::Output {
                path: calibration_png.clone(),
                message: e.to_string(),
            })?;
            files.push(calibration_png.clone());
            true
        }
        _ => false,
    };
    // A plot this report has no data for must not survive from an earlier report.
    for (written, path) in [(png_written, &png), (calibration_written, &calibration_png)] {
        if !written && path.exists() {
            std::fs::remove_file(path).map_err(|e| ReportError::Output {
                path: path.clone(),
                message: format!("cannot remove the earlier plot: {e}"),
            })?;
        }
    }
    let info = match &run {
        Some(dir) => Some(run_info::read(
            dir,
            args.cache.as_deref().unwrap_or(Path::new("")),
        )?),
        None => None,
    };
    let md = args.out.join(REPORT_MD);
    let plots = Plots {
        km: png_written,
        calibration: calibration_written,
    };
    let mut text = render_markdown(&predictions, config, &analysis, plots, info.as_ref());
    let external = match &run {
        Some(dir) => external_section(dir, &args.out)?,
        None => None,
    };
    if let Some(section) = &external {
        text.push_str(&section.markdown);
    }
    atomic::write_bytes(&md, text.as_bytes()).map_err(|e| ReportError::Output {
        path: md.clone(),
        message: e.to_string(),
    })?;
    files.push(md);
    let html_path = args.out.join(REPORT_HTML);
    let mut images = Vec::new();
    for (written, name, path) in [
        (png_written, KM_PNG, &png),
        (calibration_written, CALIBRATION_PNG, &calibration_png),
    ] {
        if written {
            let bytes = std::fs::read(path).map_err(|e| ReportError::Output {
                path: path.clone(),
                message: e.to_string(),
            })?;
            images.push((name, bytes));
        }
    }
    let mut images: Vec<(&str, &[u8])> = images.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    if let Some(section) = &external {
        images.extend(
            section
                .images
                .iter()
                .map(|(n, b)| (n.as_str(), b.as_slice())),
        );
    }
    let page = html::page_with_images(&text, &images);
    atomic::write_bytes(&html_path, page.as_bytes()).map_err(|e| ReportError::Output {
        path: html_path.clone(),
        message: e.to_string(),
    })?;
    files.push(html_path);
    for note in &analysis.notes {
        tracing::warn!("not computable: {note}");
    }
    Ok(ReportOutputs {
        out: args.out.clone(),
        files,
        cindex_mean: analysis.cindex_mean,
        notes: analysis.notes,
    })
}

/// The held-out patients' report (`run`'s `train.holdout` step) as a section of this one.
struct ExternalSection {
    markdown: String,
    /// (the link as the Markdown writes it, PNG bytes)
    images: Vec<(String, Vec<u8>)>,
}

/// `<run>/report_external/report.md`, its headings one level down and its plots linked from
/// `out`, when the run has one and this is not that report itself.
fn external_section(run: &Path, out: &Path) -> Result<Option<ExternalSection>, ReportError> {
    let dir = run.join(crate::pipeline::EXTERNAL_REPORT_DIR);
    let md_path = dir.join(REPORT_MD);
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    if same(&dir, out) || !md_path.is_file() {
        return Ok(None);
    }
    let read_error = |path: &Path, e: std::io::Error| ReportError::Output {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let body = std::fs::read_to_string(&md_path).map_err(|e| read_error(&md_path, e))?;
    // Beside this report (the pipeline's layout) the link is relative, else absolute.
    let prefix = if out.parent().is_some_and(|p| same(p, run)) {
        format!("../{}/", crate::pipeline::EXTERNAL_REPORT_DIR)
    } else {
        format!("{}/", dir.display())
    };
    let mut markdown = String::from(
        "\n## External validation: the held-out patients\n\n\
         The run's `train.holdout` patients took no part in any fold or in the final model; the \
         fold models scored them (`predict --run --holdout`, survival curves averaged) and they \
         are split at the training cohort's frozen cutoff. Their own report follows.\n\n",
    );
    let mut images = Vec::new();
    let mut text = String::new();
    // The run's own section (versions, stages, configuration) is this report's already.
    for line in body.lines().take_while(|l| *l != "## Run") {
        if line.starts_with('#') {
            text.push_str("##");
        }
        text.push_str(line);
        text.push('\n');
    }
    for name in [KM_PNG, CALIBRATION_PNG] {
        let link = format!("{prefix}{name}");
        if text.contains(&format!("]({name})")) {
            text = text.replace(&format!("]({name})"), &format!("]({link})"));
            let png = dir.join(name);
            let bytes = std::fs::read(&png).map_err(|e| read_error(&png, e))?;
            images.push((link, bytes));
        }
    }
    markdown.push_str(&text);
    Ok(Some(ExternalSection { markdown, images }))
}

fn write_csv(path: &Path, df: &mut DataFrame) -> Result<(), ReportError> {
    atomic::write_with(path, |temp| {
        let mut file = std::fs::File::create(temp)?;
        CsvWriter::new(&mut file)
            .include_header(true)
            .finish(df)
            .map_err(std::io::Error::other)?;
        file.sync_all()
    })
    .map_err(|e| ReportError::Output {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// `--run`, or the predictions' folder when fit wrote its config.yaml there, or the folder
/// above it (`predict` writes to `<run>/predict/` by default).
fn run_dir(args: &ReportArgs) -> Option<PathBuf> {
    args.run.clone().or_else(|| {
        let folder = args.predictions.parent()?;
        [Some(folder), folder.parent()]
            .into_iter()
            .flatten()
            .find(|dir| dir.join("config.yaml").is_file())
            .map(Path::to_path_buf)
    })
}

/// The Cox covariates of `report.cox_covariates`, from `report.covariates_table` or the run's
/// cohort table; refused before anything is written when there is no table or a column is
/// missing or not numeric.
fn read_covariates(
    args: &ReportArgs,
    config: &ReportConfig,
    run: Option<&Path>,
    p: &Predictions,
) -> Result<Option<sources::Covariates>, ReportError> {
    if config.cox_covariates.is_empty() {
        return Ok(None);
    }
    let table = match &config.covariates_table {
        Some(table) => Some(table.clone()),
        None => match run {
            Some(run) => sources::run_cohort(run)?,
            None => None,
        },
    };
    let Some(table) = table else {
        return Err(ReportError::Input {
            path: args.predictions.clone(),
            message: format!(
                "`report.cox_covariates` names {:?} but there is no table to read them from:                  set `report.covariates_table`, or give `--run` with a config.yaml that names                  `paths.cohort`",
                config.cox_covariates
            ),
        });
    };
    sources::read_covariates(&table, &config.cox_covariates, &p.case_id).map(Some)
}

/// Per-fold best-epoch C-index from an explicit `--summary`, or from a `summary.csv` beside the
/// predictions when that file has `fold` and `c_index_best` columns.
fn read_best_by_fold(args: &ReportArgs) -> Result<Option<BTreeMap<i64, f64>>, ReportError> {
    let (path, explicit) = match &args.summary {
        Some(path) => (path.clone(), true),
        None => match args.predictions.parent() {
            Some(dir) if dir.join("summary.csv").is_file() => (dir.join("summary.csv"), false),
            _ => return Ok(None),
        },
    };
    let df = predictions::read_csv(&path)?;
    let has = |name: &str| df.get_column_names().iter().any(|n| n.as_str() == name);
    if !(has("fold") && has("c_index_best")) {
        if explicit {
            return Err(predictions::invalid(
                &path,
                "needs columns `fold` and `c_index_best`".into(),
            ));
        }
        return Ok(None);
    }
    // fit's summary.csv also has mean/std rows; keep the rows whose fold is a number.
    let folds = predictions::strings(&path, &df, "fold")?;
    let best = predictions::strings(&path, &df, "c_index_best")?;
    let mut by_fold = BTreeMap::new();
    for (fold, value) in folds.iter().zip(&best) {
        if let (Ok(fold), Ok(value)) = (fold.trim().parse::<i64>(), value.trim().parse::<f64>()) {
            by_fold.insert(fold, value);
        }
    }
    Ok(Some(by_fold))
}

/// Which PNGs were written (the Markdown links only those).
#[derive(Debug, Clone, Copy)]
struct Plots {
    km: bool,
    calibration: bool,
}

fn render_markdown(
    p: &Predictions,
    config: &ReportConfig,
    a: &Analysis,
    plots: Plots,
    info: Option<&run_info::RunInfo>,
) -> String {
    let events = p.event.iter().filter(|&&e| e).count();
    let mut md = String::from("# Survival report\n\n");
    let folds = if p.single_cohort {
        "one cohort predicted as a whole, no folds".to_owned()
    } else {
        format!("{} folds", p.by_fold().len())
    };
    md.push_str(&format!(
        "Predictions: `{}` ({} patients, {} events, {folds}).\n\n",
        p.path.display(),
        p.len(),
        events,
    ));
    md.push_str("## C-index per fold\n\n");
    md.push_str(
        "Harrell's C on each held-out fold (scikit-survival `concordance_index_censored` \
         conventions, risk ties within 1e-8 count one half); mean and population std over folds.\n\n",
    );
    if let Some((mean, std, folds)) = a.cindex_mean {
        let provenance = match p.selection.as_deref() {
            Some("last") => "`fit`'s last epoch, never selected on the reported fold",
            Some("nested") => {
                "`fit`'s epoch chosen on a slice of the training split, never on the reported fold"
            }
            Some("best") => {
                "`fit`'s best epoch on the reported fold: the paper's protocol, optimistic"
            }
            _ => "the predictions as given",
        };
        md.push_str(&format!(
            "**C-index {} ± {}** over {folds} folds ({provenance}).",
            markdown::format_number(mean),
            markdown::format_number(std)
        ));
        if let Some((best_mean, best_std)) = a.cindex_best_mean {
            md.push_str(&format!(
                " Best epoch on the reported fold (the paper's protocol, optimistic): {} ± {}.",
                markdown::format_number(best_mean),
                markdown::format_number(best_std)
            ));
        }
        md.push_str("\n\n");
    }
    md.push_str(&markdown::table(&a.cindex));
    md.push_str("\n## Risk groups\n\n");
    match (a.split.source, a.split.threshold) {
        (tables::SplitSource::Rule(rule), Some(threshold)) => md.push_str(&format!(
            "High risk iff risk ≥ {} (the {} of all out-of-fold risks): {} high, {} low.\n\n",
            markdown::format_number(threshold),
            format!("{rule:?}").to_lowercase(),
            a.split.n_high(),
            a.split.n_low()
        )),
        (_, threshold) => md.push_str(&format!(
            "Split at the training cohort's cutoff{} (the predictions' `risk_group` column, \
             frozen when the model was trained; not this cohort's own {}): {} high, {} low. \
             The Kaplan–Meier curves, the log-rank test and the Cox hazard ratios use this \
             split.\n\n",
            threshold.map_or_else(String::new, |t| format!(
                ", high risk iff risk ≥ {}",
                markdown::format_number(t)
            )),
            format!("{:?}", config.risk_split).to_lowercase(),
            a.split.n_high(),
            a.split.n_low()
        )),
    }
    if plots.km {
        md.push_str(&format!(
            "![Kaplan–Meier curves by risk group]({KM_PNG})\n\n"
        ));
    }
    md.push_str("### Log-rank test\n\n");
    md.push_str(&markdown::table(&a.logrank));
    md.push_str(
        "\n### t-test of predicted risk, short vs long survivors\n\n\
         Patients split at the median observed survival time (events and censorings alike).\n\n",
    );
    md.push_str(&markdown::table(&a.ttest));
    md.push_str(&render_metrics(a, config));
    md.push_str(&render_calibration(a, plots.calibration));
    if !a.notes.is_empty() {
        md.push_str("\n## Not computable\n\n");
        for note in &a.notes {
            md.push_str(&format!("- {note}\n"));
        }
    }
    md.push_str(&format!(
        "\n## Kaplan–Meier table\n\nlifelines conventions: at-risk counts include those censored \
         at the time; {:.0} % confidence interval by exponential Greenwood.\n\n",
        config.ci_level * 100.0
    ));
    md.push_str(&markdown::table(&a.km));
    if let Some(info) = info {
        md.push_str(&render_run(info));
    }
    md
}

fn times_text(times: &[f64]) -> String {
    let shown: Vec<String> = times.iter().map(|&t| markdown::format_number(t)).collect();
    shown.join(", ")
}

fn render_metrics(a: &Analysis, config: &ReportConfig) -> String {
    let m = &a.metrics;
    let mut md = String::from("\n## Survival metrics\n\n");
    md.push_str(
        "On the pooled predictions (`metrics.csv`), as scikit-survival 0.28 and lifelines 0.30 \
         compute them. The censoring distribution of Uno's C, the AUC and the Brier scores is \
         the Kaplan–Meier estimate of the censoring times of the same patients \
         (`survival_train` = `survival_test`). ",
    );
    md.push_str(&match config.ipcw_tau {
        Some(tau) => format!(
            "Uno's C weighs the pairs whose event is before tau = {} (`report.ipcw_tau`). ",
            markdown::format_number(tau)
        ),
        None => "Uno's C: tau unset, every comparable pair weighs. ".to_owned(),
    });
    let rule = if m.times_from_config {
        "`report.metric_times`"
    } else {
        "the 25th, 50th and 75th percentiles of the event times, numpy's linear quantile"
    };
    md.push_str(&format!(
        "The cumulative/dynamic AUC of the risk and the Brier score are at t = {} ({rule}); \
         the mean AUC weighs each time by the Kaplan–Meier drop before it. ",
        times_text(&m.times)
    ));
    if !m.ibs_grid.is_empty() {
        md.push_str(&format!(
            "The integrated Brier score is the trapezoid rule over {} points from {} to {} \
             (np.linspace between the {}th and {}th percentiles of the event times), divided \
             by that range. ",
            m.ibs_grid.len(),
            markdown::format_number(m.ibs_grid[0]),
            markdown::format_number(m.ibs_grid[m.ibs_grid.len() - 1]),
            metrics::IBS_PERCENTILES.0,
            metrics::IBS_PERCENTILES.1,
        ));
    }
    match &m.edges {
        Ok(edges) => md.push_str(&format!(
            "Predicted survival: S_k = ∏_{{j≤k}} (1 − h_j) from the hazards; at time t it is \
             S_k of the bin [e_k, e_{{k+1}}) that holds t (the probability of surviving through \
             that bin; times outside the edges take the first or last bin), with the model's \
             edges {} from {}. ",
            times_text(&edges.edges),
            edges.source
        )),
        Err(why) => md.push_str(&format!("No Brier scores: {why}. ")),
    }
    md.push_str(
        "A value that is undefined on these data is left empty, with the reason beside it.\n\n",
    );
    match metrics::markdown_frames(&m.rows) {
        Ok((scores, hazards)) => {
            md.push_str(&markdown::table(&scores));
            md.push_str(&format!(
                "\n### Cox hazard ratio of the high-risk group\n\nCox proportional hazards \
                 (lifelines `CoxPHFitter()`: Efron ties, no penalty), the risk group \
                 (high = 1) as the only covariate{}; hazard ratio per unit, {:.0} % Wald \
                 interval, Wald p.\n\n",
                if config.cox_covariates.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", then adjusted for {} (`report.cox_covariates`) on the patients with \
                         every value",
                        config.cox_covariates.join(", ")
                    )
                },
                config.ci_level * 100.0
            ));
            md.push_str(&markdown::table(&hazards));
        }
        Err(e) => md.push_str(&format!("(cannot lay out the metrics: {e})\n")),
    }
    md
}

fn render_calibration(a: &Analysis, plot: bool) -> String {
    let mut md = String::from("\n## Calibration by risk quintile\n\n");
    match &a.calibration {
        Err(why) => md.push_str(&format!("Not computable: {why}.\n")),
        Ok(_) => {
            md.push_str(
                "Quintiles of the risk (cut at np.quantile(risk, [.2, .4, .6, .8]); 1 = lowest \
                 risk, ties at a cut go up). At each bin edge e_k up to the longest observed \
                 time: `predicted` is the quintile's mean S_{k−1}, the model's probability of no \
                 event before e_k; `observed` is the quintile's Kaplan–Meier survival just \
                 before e_k with its exponential-Greenwood interval; `at_risk` counts those \
                 still followed at e_k (`calibration.csv`).\n\n",
            );
            if plot {
                md.push_str(&format!(
                    "![Calibration: predicted vs Kaplan–Meier survival]({CALIBRATION_PNG})\n\n"
                ));
            }
            md.push_str(&markdown::table(&a.calibration_table));
        }
    }
    md
}

fn render_run(info: &run_info::RunInfo) -> String {
    let mut md = format!("\n## Run\n\nRun folder: `{}`.\n\n", info.run_dir.display());
    md.push_str("| component | version |\n|---|---|\n");
    for (name, value) in &info.versions {
        md.push_str(&format!("| {name} | {} |\n", value.replace('|', "\\|")));
    }
    md.push_str("\n### Stages\n\n");
    match &info.stages {
        Some(stages) => {
            md.push_str("Wall time and peak RSS of each stage's process (`hdmoe-pipe run`).\n\n");
            md.push_str(&markdown::table(stages));
        }
        None => {
            md.push_str("No stages.csv: the stages were run one by one, not by `hdmoe-pipe run`.\n")
        }
    }
    md.push_str("\n### Failures\n\n");
    if info.failures.height() == 0 {
        md.push_str("None: every slide, case and patient the stages saw completed.\n");
    } else {
        md.push_str(
            "Items the stages' manifests record as failed or without tissue, and patients fit \
             excluded; every other item completed.\n\n",
        );
        md.push_str(&markdown::table(&info.failures));
    }
    if let Some(routing) = &info.routing {
        md.push_str(
            "\n### Expert routing\n\nHow often each routed expert was chosen on the held-out \
             folds (each fold's last epoch, summed over folds); share within each MoE.\n\n",
        );
        md.push_str(&markdown::table(routing));
    }
    if let Some(yaml) = &info.config_yaml {
        md.push_str(&format!(
            "\n### Configuration\n\nResolved by fit (`config.yaml` in the run folder).\n\n```yaml\n{}```\n",
            yaml
        ));
    }
    md
}
