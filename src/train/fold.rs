//! One fold of `fit`: its files under `runs/<name>/fold_<k>/`, the freshness of what is there
//! (the same [`Parameters`] stamp the cache stages use), exact resumption after a kill, one
//! epoch of training and evaluation, and the final model.
//!
//! A fold's files: `parameters.txt` (what it was trained with), `state.safetensors` (model and
//! Adam state after the last finished epoch, removed when the fold is done), `history.csv`,
//! `val_predictions.csv`, `routing.csv` (one block of rows per epoch), `model.safetensors` and
//! `done`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::distr::weighted::WeightedIndex;
use rand::prelude::*;
use rand_chacha::ChaCha8Rng;
use tch::{nn, Device, Tensor};

use super::adam::Adam;
use super::data::{Dataset, Scaler};
use super::{
    c_index, count_routing, fold_parameters, mix, output_error, summarise_fold, FitError,
    FoldPatients, FoldResult, Prediction, Trainer,
};
use crate::atomic;
use crate::cache::Parameters;
use crate::cohort::Split;
use crate::config::Config;
use crate::encode;
use crate::model::{self, loss, LossTerm, ModelSpec, Pass};
use crate::profile;
use crate::survival::N_BINS;

/// history.csv's header: HDMoE's two terms beside the survival loss, and the baselines' terms
/// (`LossTerm::ALL` after those two) last, so that the earlier columns keep their places.
fn history_header() -> String {
    let mut header = String::from(
        "epoch,lr,loss_total,loss_survival,loss_decoupling,loss_balance,train_cindex,val_cindex,nested_cindex,seconds",
    );
    for term in &LossTerm::ALL[2..] {
        header.push(',');
        header.push_str(term.column());
    }
    header
}
const VAL_HEADER: &str = "epoch,case_id,risk,hazard_0,hazard_1,hazard_2,hazard_3";
const ROUTING_HEADER: &str = "epoch,split,moe,expert,count";
const MOE_NAMES: [&str; 3] = ["level1_modality1", "level1_wsi", "level2_fusion"];

/// The pseudo-fold of `train.final`: every usable patient, trained under `runs/<name>/final/`.
pub(super) const FINAL: usize = usize::MAX;

/// `fold_<k>`, or `final`: the fold's folder and its name in the log.
pub(super) fn fold_name(fold: usize) -> String {
    if fold == FINAL {
        "final".into()
    } else {
        format!("fold_{fold}")
    }
}

/// Trains (or keeps, or resumes) one fold; returns its figures and its predictions.csv rows.
pub(super) fn fit_fold(
    config: &Config,
    data: &Dataset,
    spec: &ModelSpec,
    split: &Split,
    run_dir: &Path,
    force: bool,
) -> Result<(FoldResult, Vec<String>), FitError> {
    let fold = split.fold;
    let files = FoldFiles::create(run_dir, fold)?;
    let patients = super::fold_patients(config, data, split)?;
    let (n_train, n_val) = (patients.train.len(), patients.val.len());
    files.check_parameters(&fold_parameters(config, data, split), force)?;
    let epochs = config.train.epochs;
    if let Some(rows) = files.finished(epochs, force) {
        tracing::info!("{}: already trained, kept", fold_name(fold));
        return summarise_fold(config, data, fold, n_train, n_val, &rows.history, &rows.val);
    }
    let _ = std::fs::remove_file(&files.done);

    let mut run = FoldRun::new(config, data, spec, fold, patients, files)?;
    let start = run.resume(force)?;
    let mut rows = run.files.rows_before(start);
    for epoch in start..epochs {
        run.epoch(epoch, &mut rows)?;
    }
    run.save_model()?;
    summarise_fold(config, data, fold, n_train, n_val, &rows.history, &rows.val)
}

/// The files of one fold.
struct FoldFiles {
    dir: PathBuf,
    parameters: PathBuf,
    state: PathBuf,
    history: PathBuf,
    val: PathBuf,
    routing: PathBuf,
    done: PathBuf,
    model: PathBuf,
}

/// The per-epoch rows of a fold's CSV files (without headers).
struct Rows {
    history: Vec<String>,
    val: Vec<String>,
    routing: Vec<String>,
}

impl FoldFiles {
    fn create(run_dir: &Path, fold: usize) -> Result<Self, FitError> {
        let dir = run_dir.join(fold_name(fold));
        std::fs::create_dir_all(&dir).map_err(|e| output_error(&dir, e))?;
        Ok(Self {
            parameters: dir.join("parameters.txt"),
            state: dir.join("state.safetensors"),
            history: dir.join("history.csv"),
            val: dir.join("val_predictions.csv"),
            routing: dir.join("routing.csv"),
            done: dir.join("done"),
            model: dir.join("model.safetensors"),
            dir,
        })
    }

    /// Refuses a fold trained with other parameters (unless forced); starts a new fold's
    /// record, dropping any checkpoint of other parameters.
    fn check_parameters(&self, wanted: &Parameters, force: bool) -> Result<(), FitError> {
        if let (Ok(text), false) = (std::fs::read_to_string(&self.parameters), force) {
            let differences = Parameters::parse(&text).differences(wanted);
            if differences.is_empty() {
                return Ok(());
            }
            let shown: Vec<String> = differences
                .iter()
                .take(4)
                .map(|(key, old, new)| format!("{key}: {} → {}", clip(old), clip(new)))
                .collect();
            return Err(output_error(
                &self.dir,
                format!(
                    "was trained with other parameters or data ({}{}); rerun with --force to replace it",
                    shown.join("; "),
                    if differences.len() > 4 { "; …" } else { "" }
                ),
            ));
        }
        let _ = std::fs::remove_file(&self.state);
        atomic::write_bytes(&self.parameters, wanted.joined().as_bytes())
            .map_err(|e| output_error(&self.parameters, e))
    }

    /// The rows of a fold finished earlier with these parameters, if it is.
    fn finished(&self, epochs: usize, force: bool) -> Option<Rows> {
        if force || !self.done.is_file() {
            return None;
        }
        let rows = self.rows_before(epochs);
        (rows.history.len() == epochs).then_some(rows)
    }

    /// Rows of the epochs before `epochs` (what a resumed fold keeps).
    fn rows_before(&self, epochs: usize) -> Rows {
        Rows {
            history: rows_before(&self.history, epochs),
            val: rows_before(&self.val, epochs),
            routing: rows_before(&self.routing, epochs),
        }
    }

    fn write(&self, rows: &Rows) -> Result<(), FitError> {
        write_rows(&self.history, &history_header(), &rows.history)?;
        write_rows(&self.val, VAL_HEADER, &rows.val)?;
        write_rows(&self.routing, ROUTING_HEADER, &rows.routing)
    }
}

/// A value shown in a message: long ones (patient lists) cut to their start.
fn clip(value: &str) -> String {
    if value.chars().count() > 60 {
        format!("{}…", value.chars().take(60).collect::<String>())
    } else {
        value.to_owned()
    }
}

/// Lines of a CSV file after its header whose first field (an epoch) is < `epochs`.
fn rows_before(path: &Path, epochs: usize) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|l| {
            l.split(',')
                .next()
                .and_then(|e| e.parse::<usize>().ok())
                .is_some_and(|e| e < epochs)
        })
        .map(str::to_owned)
        .collect()
}

pub(super) fn write_rows(path: &Path, header: &str, rows: &[String]) -> Result<(), FitError> {
    let mut text = format!("{header}\n");
    for r in rows {
        text.push_str(r);
        text.push('\n');
    }
    atomic::write_bytes(path, text.as_bytes()).map_err(|e| output_error(path, e))
}

/// What one training epoch measured.
struct EpochTrain {
    /// Summed total and survival losses, then each of `LossTerm::ALL`.
    sums: [f64; 2 + LossTerm::ALL.len()],
    preds: Vec<Prediction>,
    routing: Vec<Vec<i64>>,
}

/// A fold being trained: the model and data ([`Trainer`]), its patients, Adam, its files.
struct FoldRun<'a> {
    trainer: Trainer<'a>,
    fold: usize,
    patients: FoldPatients,
    adam: Adam,
    files: FoldFiles,
}

impl<'a> FoldRun<'a> {
    /// Builds the model from the fold's seed and the scaler from its training patients.
    fn new(
        config: &'a Config,
        data: &'a Dataset,
        spec: &ModelSpec,
        fold: usize,
        patients: FoldPatients,
        files: FoldFiles,
    ) -> Result<Self, FitError> {
        let train_cfg = &config.train;
        let device = encode::parse_device(&train_cfg.device)?;
        tch::manual_seed(mix(&[train_cfg.seed, fold as u64, 0xFF]) as i64);
        let vs = nn::VarStore::new(device);
        let model = model::build(&vs.root(), spec.clone());
        let mut named: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let (names, params): (Vec<String>, Vec<Tensor>) = named.into_iter().unzip();
        let scaler = data
            .genomics
            .as_ref()
            .map(|g| Scaler::fit(g, &data.genomic_rows(&patients.train)));
        let adam = Adam::new(&params, train_cfg.lr, train_cfg.weight_decay);
        Ok(Self {
            trainer: Trainer {
                config,
                data,
                model,
                names,
                params,
                device,
                scaler,
            },
            fold,
            patients,
            adam,
            files,
        })
    }

    /// The first epoch to train: after the checkpoint's last finished epoch, or 0.
    fn resume(&mut self, force: bool) -> Result<usize, FitError> {
        if force || !self.files.state.is_file() {
            return Ok(0);
        }
        let start = load_state(&self.files.state, &self.trainer, &mut self.adam)?;
        tracing::info!("{}: resuming after epoch {start}", fold_name(self.fold));
        Ok(start)
    }

    /// One epoch: train, evaluate, append the rows, save them and the checkpoint.
    fn epoch(&mut self, epoch: usize, rows: &mut Rows) -> Result<(), FitError> {
        let started = Instant::now();
        let train_cfg = &self.trainer.config.train;
        let seed = mix(&[train_cfg.seed, self.fold as u64, epoch as u64]);
        tch::manual_seed(seed as i64);
        self.adam.lr = train_cfg
            .lr_schedule
            .rate(train_cfg.lr, epoch, train_cfg.epochs);
        let profiling = profile::requested();
        if profiling {
            profile::start(self.trainer.device);
        }
        let trained = self.train_epoch(epoch, seed)?;
        let data = self.trainer.data;
        let n = trained.preds.len() as f64;
        let (val_preds, val_routing) = profile::phase("validation", || {
            self.trainer.evaluate(&self.patients.val, mix(&[seed, 3]))
        })?;
        let nested_c = if self.patients.nested.is_empty() {
            f64::NAN
        } else {
            let nested = profile::phase("validation", || {
                self.trainer
                    .evaluate(&self.patients.nested, mix(&[seed, 4]))
            })?;
            c_index(data, &nested.0)
        };
        if profiling {
            let phases = profile::take();
            tracing::info!(
                "{} epoch {epoch}: {:.1} s\n{}",
                fold_name(self.fold),
                started.elapsed().as_secs_f64(),
                profile::table(&phases, started.elapsed())
            );
        }
        let sums = trained.sums;
        let mean = |k: usize| trained.sums[k] / n;
        let mut row = format!(
            "{epoch},{:.8e},{},{},{},{},{},{},{},{:.3}",
            self.adam.lr,
            mean(0),
            mean(1),
            mean(2),
            mean(3),
            c_index(data, &trained.preds),
            c_index(data, &val_preds),
            nested_c,
            started.elapsed().as_secs_f64(),
        );
        for k in 4..trained.sums.len() {
            row.push_str(&format!(",{}", mean(k)));
        }
        rows.history.push(row);
        for p in &val_preds {
            let h = p.hazards;
            rows.val.push(format!(
                "{epoch},{},{},{},{},{},{}",
                data.cohort.patients[p.patient].case_id, p.risk, h[0], h[1], h[2], h[3]
            ));
        }
        for (split_name, counts) in [("train", &trained.routing), ("val", &val_routing)] {
            for (m, row) in counts.iter().enumerate() {
                for (e, c) in row.iter().enumerate() {
                    rows.routing
                        .push(format!("{epoch},{split_name},{},{e},{c}", MOE_NAMES[m]));
                }
            }
        }
        self.files.write(rows)?;
        save_state(&self.files.state, &self.trainer, &self.adam, epoch + 1)?;
        tracing::info!(
            "{} epoch {epoch}: loss {:.4}, val C-index {:.4}",
            fold_name(self.fold),
            sums[0] / n,
            c_index(data, &val_preds)
        );
        Ok(())
    }

    /// One pass over the (class-balanced) training sample: a step after every `accumulate`
    /// patients.
    fn train_epoch(&mut self, epoch: usize, seed: u64) -> Result<EpochTrain, FitError> {
        let trainer = &self.trainer;
        let (config, data) = (trainer.config, trainer.data);
        let train_cfg = &config.train;
        let train = &self.patients.train;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let order: Vec<usize> = if train_cfg.weighted_sampling {
            let weights = data.cohort.sampling_weights(train);
            let dist = WeightedIndex::new(&weights).map_err(|e| FitError::Config(e.to_string()))?;
            (0..train.len())
                .map(|_| train[dist.sample(&mut rng)])
                .collect()
        } else {
            let mut o = train.clone();
            o.shuffle(&mut rng);
            o
        };
        let mut segment_rng = ChaCha8Rng::seed_from_u64(mix(&[seed, 1]));
        let terms = trainer.model.loss_terms();
        let experts = trainer.model.spec().experts;
        let accumulate = train_cfg.accumulate;
        let adam = &mut self.adam;
        let mut result = EpochTrain {
            sums: [0.0; 2 + LossTerm::ALL.len()],
            preds: Vec::new(),
            routing: Vec::new(),
        };
        let mut pending: Vec<Tensor> = Vec::new();
        let mut progress = crate::progress::Progress::new(
            format!("{} epoch {epoch}", fold_name(self.fold)),
            order.len(),
        );
        trainer.for_each_prefetched(&order, mix(&[seed, 2]), |k, patient, inputs| {
            let p = &data.cohort.patients[patient];
            let segments = trainer.draw_segments(&mut segment_rng, true);
            let pass = Pass {
                label: Some(p.time_bin as i64),
                censored: Some(p.censored),
                ..Pass::TRAIN
            };
            let out = trainer.model.forward_pass(&inputs, segments, pass);
            let (total, surv) = profile::phase("loss", || {
                let surv =
                    loss::nll_survival(&out.hazards, &out.survival, p.time_bin as i64, p.censored);
                let weighted = &surv * trainer.model.survival_weight();
                let total = terms.iter().fold(weighted, |total, &term| {
                    total + out.loss(term) * term.weight(&config.model)
                });
                (total, surv)
            });
            let scaled = &total / accumulate as f64;
            let grads = profile::phase("backward", || {
                Tensor::run_backward(&[&scaled], &trainer.params, false, false)
            });
            if pending.is_empty() {
                pending = grads;
            } else {
                for (acc, g) in pending.iter_mut().zip(grads) {
                    if g.defined() {
                        *acc = if acc.defined() { &*acc + g } else { g };
                    }
                }
            }
            if (k + 1) % accumulate == 0 || k + 1 == order.len() {
                profile::phase("Adam", || adam.step(&trainer.params, &pending));
                pending.clear();
            }
            profile::phase("bookkeeping (losses, routing, progress)", || {
                let values: Vec<Tensor> = [total, surv]
                    .into_iter()
                    .chain(LossTerm::ALL.iter().map(|&term| out.loss(term)))
                    .collect();
                for (s, t) in result.sums.iter_mut().zip(&values) {
                    *s += t.double_value(&[]);
                }
                count_routing(&mut result.routing, &out.routing, experts);
                result.preds.push(Prediction {
                    patient,
                    risk: out.risk.double_value(&[]),
                    hazards: [0.0; N_BINS],
                });
                progress.inc();
            });
            Ok(())
        })?;
        Ok(result)
    }

    /// Writes model.safetensors and `done`; the optimiser state is only needed to resume an
    /// unfinished fold, so it goes.
    fn save_model(&self) -> Result<(), FitError> {
        let trainer = &self.trainer;
        let weights_named: Vec<(String, Tensor)> = trainer
            .names
            .iter()
            .cloned()
            .zip(trainer.params.iter().map(|p| p.to_device(Device::Cpu)))
            .collect();
        let path = &self.files.model;
        atomic::write_with(path, |temp| {
            Tensor::write_safetensors(&weights_named, temp).map_err(std::io::Error::other)
        })
        .map_err(|e| output_error(path, e))?;
        let done = &self.files.done;
        atomic::write_bytes(done, b"trained\n").map_err(|e| output_error(done, e))?;
        let _ = std::fs::remove_file(&self.files.state);
        Ok(())
    }
}

fn save_state(
    path: &Path,
    trainer: &Trainer,
    adam: &Adam,
    epochs_done: usize,
) -> Result<(), FitError> {
    let mut named: Vec<(String, Tensor)> = Vec::new();
    for (name, p) in trainer.names.iter().zip(&trainer.params) {
        named.push((format!("model.{name}"), p.to_device(Device::Cpu)));
    }
    for (k, name) in trainer.names.iter().enumerate() {
        named.push((format!("adam.m.{name}"), adam.m[k].to_device(Device::Cpu)));
        named.push((format!("adam.v.{name}"), adam.v[k].to_device(Device::Cpu)));
    }
    named.push(("adam.steps".into(), adam.steps_tensor()));
    named.push((
        "epochs_done".into(),
        Tensor::from_slice(&[epochs_done as i64]),
    ));
    atomic::write_with(path, |temp| {
        Tensor::write_safetensors(&named, temp).map_err(std::io::Error::other)
    })
    .map_err(|e| output_error(path, e))
}

fn load_state(path: &Path, trainer: &Trainer, adam: &mut Adam) -> Result<usize, FitError> {
    let tensors: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(path)
        .map_err(|e| output_error(path, e))?
        .into_iter()
        .collect();
    let get = |name: &str| {
        tensors.get(name).ok_or_else(|| {
            output_error(
                path,
                format!("checkpoint lacks `{name}`; rerun with --force"),
            )
        })
    };
    tch::no_grad(|| -> Result<(), FitError> {
        for (k, (name, p)) in trainer.names.iter().zip(&trainer.params).enumerate() {
            let mut p = p.shallow_clone();
            p.copy_(get(&format!("model.{name}"))?);
            adam.m[k] = get(&format!("adam.m.{name}"))?.to_device(trainer.device);
            adam.v[k] = get(&format!("adam.v.{name}"))?.to_device(trainer.device);
        }
        Ok(())
    })?;
    adam.steps = Vec::<i64>::try_from(get("adam.steps")?).map_err(|e| output_error(path, e))?;
    Ok(get("epochs_done")?.int64_value(&[0]) as usize)
}
