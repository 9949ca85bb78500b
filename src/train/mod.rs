//! `hdmoe-pipe fit`: HDMoE (or a unimodal baseline) trained fold by fold as MODEL_SPEC 5
//! describes — Adam with coupled L2, per-epoch poly learning rate, one step per patient,
//! class-balanced sampling, genomics standardised on each fold's training patients — with
//! every epoch's losses and C-indices recorded, honest model selection, and exact resumption.

pub mod adam;
pub mod data;
pub mod predict;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::distr::weighted::WeightedIndex;
use rand::prelude::*;
use rand_chacha::ChaCha8Rng;
use tch::{nn, Device, Kind, Tensor};

use crate::atomic;
use crate::cohort::{self, Split};
use crate::config::{Config, Modality, Selection};
use crate::encode;
use crate::model::{self, Architecture, Hdmoe, Inputs, Modality1, ModelSpec, RfrEval};
use crate::survival::{self, N_BINS};
use adam::Adam;
use data::{DataError, Dataset, Scaler};

#[derive(Debug, thiserror::Error)]
pub enum FitError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("{0}")]
    Config(String),
    #[error("{path}: {message}")]
    Output { path: PathBuf, message: String },
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error(transparent)]
    Encode(#[from] encode::EncodeError),
    #[error(transparent)]
    Checkpoint(Box<predict::CheckpointMismatch>),
}

fn output_error(path: &Path, e: impl ToString) -> FitError {
    FitError::Output {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// One fold's figures.
#[derive(Debug, Clone)]
pub struct FoldResult {
    pub fold: usize,
    pub n_train: usize,
    pub n_val: usize,
    pub c_last: f64,
    pub c_best: f64,
    pub best_epoch: usize,
    pub c_nested: Option<(f64, usize)>,
    pub c_selected: f64,
    pub selected_epoch: usize,
}

#[derive(Debug)]
pub struct FitReport {
    pub run_dir: PathBuf,
    pub folds: Vec<FoldResult>,
    /// Patients left out because a modality is missing, with the reason.
    pub excluded: Vec<(String, String)>,
}

/// A stable seed for (seed, fold, epoch, purpose).
fn mix(parts: &[u64]) -> u64 {
    let mut h: u64 = 0x9E37_79B9_7F4A_7C15;
    for &p in parts {
        h ^= p
            .wrapping_add(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(h << 6)
            .wrapping_add(h >> 2);
        h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h ^= h >> 31;
    }
    h
}

fn model_spec(config: &Config, data: &Dataset) -> Result<ModelSpec, FitError> {
    let m = &config.model;
    let modalities = &config.dataset.modalities;
    let modality_1 = if modalities.contains(&Modality::Genomics) {
        Some(Modality1::Genomics)
    } else if modalities.contains(&Modality::Mri) {
        Some(Modality1::Mri)
    } else {
        None
    };
    if m.architecture == Architecture::Snn && modalities.as_slice() != [Modality::Genomics] {
        return Err(FitError::Config(
            "configuration: `model.architecture: snn` is the genomics-only baseline; set dataset.modalities: [genomics]".into(),
        ));
    }
    Ok(ModelSpec {
        architecture: m.architecture,
        dim: m.dim,
        heads: m.heads,
        landmarks: m.landmarks.unwrap_or(m.dim / 2),
        token_length: m.resolved_token_length(),
        experts: m.experts,
        top_k: m.top_k,
        shared_expert: m.shared_expert,
        renormalise_top_k: m.renormalise_top_k,
        unchosen_experts: m.unchosen_experts,
        moe_output: m.moe_output,
        rfr: m.rfr,
        rfr_eval: m.rfr_eval,
        distance: m.dm,
        wsi_dim: data.wsi_dim,
        mri_dim: data.mri_dim,
        genomic_groups: data.group_sizes(),
        modality_1,
        wsi: modalities.contains(&Modality::Wsi),
    })
}

/// What a fold's files must have been made with to be resumed or kept.
fn fold_parameters(config: &Config, data: &Dataset, split: &Split) -> String {
    // A fold's training does not depend on which other folds are listed (each is seeded by its
    // own index), so folds trained in separate processes (`train.folds=[k]`, a Slurm array)
    // are kept by a later run over all of them.
    let mut train = config.train.clone();
    train.folds.clear();
    let sections =
        serde_yaml::to_string(&(&config.dataset, &config.model, &train)).unwrap_or_default();
    let train: Vec<&str> = split
        .train
        .iter()
        .map(|&i| data.cohort.patients[i].case_id.as_str())
        .collect();
    let val: Vec<&str> = split
        .val
        .iter()
        .map(|&i| data.cohort.patients[i].case_id.as_str())
        .collect();
    format!(
        "{sections}fold: {}\ntrain: {}\nval: {}\ngroups: {:?}\nwsi_dim: {}\nmri_dim: {}\nsoftware_version: {}\n",
        split.fold,
        train.join(","),
        val.join(","),
        data.group_sizes(),
        data.wsi_dim,
        data.mri_dim,
        crate::VERSION
    )
}

/// Risk and hazards of one evaluated patient.
struct Prediction {
    patient: usize,
    risk: f64,
    hazards: [f64; N_BINS],
}

fn c_index(data: &Dataset, preds: &[Prediction]) -> f64 {
    let time: Vec<f64> = preds
        .iter()
        .map(|p| data.cohort.patients[p.patient].survival_months)
        .collect();
    let event: Vec<bool> = preds
        .iter()
        .map(|p| data.cohort.patients[p.patient].event())
        .collect();
    let risk: Vec<f64> = preds.iter().map(|p| p.risk).collect();
    survival::concordance_index(&time, &event, &risk).map_or(f64::NAN, |c| c.c_index)
}

struct Trainer<'a> {
    config: &'a Config,
    data: &'a Dataset,
    model: Hdmoe,
    names: Vec<String>,
    params: Vec<Tensor>,
    device: Device,
    scaler: Option<Scaler>,
}

impl Trainer<'_> {
    fn draw_segments(&self, rng: &mut ChaCha8Rng, train: bool) -> (i64, i64) {
        if !train && self.model.spec.rfr_eval == RfrEval::Identity {
            return (1, 1);
        }
        let (s1, s2) = self.model.segment_choices();
        (
            s1[rng.random_range(0..s1.len())],
            s2[rng.random_range(0..s2.len())],
        )
    }

    fn load(&self, patient: usize, seed: u64) -> Result<Inputs, DataError> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let inputs = self.data.inputs(
            patient,
            self.scaler.as_ref(),
            self.config.model.max_patches,
            &mut rng,
        )?;
        let to = |t: Tensor| t.to_device(self.device);
        Ok(Inputs {
            wsi: inputs.wsi.map(to),
            genomics: inputs.genomics.map(|g| g.into_iter().map(to).collect()),
            mri: inputs.mri.map(to),
        })
    }

    /// Visits `patients` in order with the next patient's inputs read on another thread.
    fn for_each_prefetched<F>(
        &self,
        patients: &[usize],
        seed: u64,
        mut f: F,
    ) -> Result<(), FitError>
    where
        F: FnMut(usize, usize, Inputs) -> Result<(), FitError>,
    {
        let data = self.data;
        let scaler = self.scaler.as_ref();
        let max_patches = self.config.model.max_patches;
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel(2);
            scope.spawn(move || {
                for (k, &p) in patients.iter().enumerate() {
                    let mut rng = ChaCha8Rng::seed_from_u64(mix(&[seed, k as u64]));
                    let item = data.inputs(p, scaler, max_patches, &mut rng);
                    if tx.send((k, p, item)).is_err() {
                        break;
                    }
                }
            });
            for (k, p, item) in rx {
                let inputs = item?;
                let to = |t: Tensor| t.to_device(self.device);
                let inputs = Inputs {
                    wsi: inputs.wsi.map(to),
                    genomics: inputs.genomics.map(|g| g.into_iter().map(to).collect()),
                    mri: inputs.mri.map(to),
                };
                f(k, p, inputs)?;
            }
            Ok(())
        })
    }

    fn evaluate(
        &self,
        patients: &[usize],
        seed: u64,
    ) -> Result<(Vec<Prediction>, Vec<Vec<i64>>), FitError> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut preds = Vec::new();
        let mut routing: Vec<Vec<i64>> = Vec::new();
        for &p in patients {
            let inputs = self.load(p, mix(&[seed, p as u64]))?;
            let segments = self.draw_segments(&mut rng, false);
            let out = tch::no_grad(|| self.model.forward(&inputs, segments, false));
            count_routing(&mut routing, &out.routing, self.model.spec.experts);
            let h = Vec::<f64>::try_from(out.hazards.to_kind(Kind::Double).to_device(Device::Cpu))
                .unwrap_or_default();
            let mut hazards = [0.0; N_BINS];
            hazards.copy_from_slice(&h[..N_BINS]);
            preds.push(Prediction {
                patient: p,
                risk: out.risk.double_value(&[]),
                hazards,
            });
        }
        Ok((preds, routing))
    }
}

fn count_routing(counts: &mut Vec<Vec<i64>>, routing: &[Tensor], experts: i64) {
    if counts.len() < routing.len() {
        counts.resize(routing.len(), vec![0; experts as usize]);
    }
    for (m, chosen) in routing.iter().enumerate() {
        for e in Vec::<i64>::try_from(chosen.flatten(0, -1)).unwrap_or_default() {
            counts[m][e as usize] += 1;
        }
    }
}

const MOE_NAMES: [&str; 3] = ["level1_modality1", "level1_wsi", "level2_fusion"];

/// Class-stratified hold-out of `fraction` of `train` (at least one per class with ≥ 2).
fn nested_split(
    data: &Dataset,
    train: &[usize],
    fraction: f64,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut by_class: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for &i in train {
        by_class
            .entry(data.cohort.patients[i].class())
            .or_default()
            .push(i);
    }
    let (mut keep, mut held) = (Vec::new(), Vec::new());
    for (_, mut members) in by_class {
        members.shuffle(&mut rng);
        let n = if members.len() >= 2 {
            ((members.len() as f64 * fraction).round() as usize).max(1)
        } else {
            0
        };
        held.extend_from_slice(&members[..n]);
        keep.extend_from_slice(&members[n..]);
    }
    keep.sort_unstable();
    held.sort_unstable();
    (keep, held)
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

fn write_rows(path: &Path, header: &str, rows: &[String]) -> Result<(), FitError> {
    let mut text = format!("{header}\n");
    for r in rows {
        text.push_str(r);
        text.push('\n');
    }
    atomic::write_bytes(path, text.as_bytes()).map_err(|e| output_error(path, e))
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

const HISTORY_HEADER: &str = "epoch,lr,loss_total,loss_survival,loss_decoupling,loss_balance,train_cindex,val_cindex,nested_cindex,seconds";
const VAL_HEADER: &str = "epoch,case_id,risk,hazard_0,hazard_1,hazard_2,hazard_3";
const ROUTING_HEADER: &str = "epoch,split,moe,expert,count";

/// A fold's patients as training uses them: those with every modality, the nested slice (for
/// `selection: nested`) held out of the training split.
pub(crate) struct FoldPatients {
    pub train: Vec<usize>,
    pub val: Vec<usize>,
    pub nested: Vec<usize>,
}

pub(crate) fn fold_patients(
    config: &Config,
    data: &Dataset,
    split: &Split,
) -> Result<FoldPatients, FitError> {
    let train_cfg = &config.train;
    let fold = split.fold;
    let usable = |set: &[usize]| -> Vec<usize> {
        set.iter()
            .copied()
            .filter(|&i| data.missing[i].is_none())
            .collect()
    };
    let (mut train, val) = (usable(&split.train), usable(&split.val));
    let mut nested = Vec::new();
    if train_cfg.selection == Selection::Nested {
        let (keep, held) = nested_split(
            data,
            &train,
            train_cfg.nested_fraction,
            mix(&[train_cfg.seed, fold as u64, 7]),
        );
        train = keep;
        nested = held;
    }
    if train.is_empty() || val.is_empty() {
        return Err(FitError::Config(format!(
            "fold {fold}: no usable training or validation patients"
        )));
    }
    Ok(FoldPatients { train, val, nested })
}

fn fit_fold(
    config: &Config,
    data: &Dataset,
    spec: &ModelSpec,
    split: &Split,
    run_dir: &Path,
    force: bool,
) -> Result<(FoldResult, Vec<String>), FitError> {
    let train_cfg = &config.train;
    let fold = split.fold;
    let dir = run_dir.join(format!("fold_{fold}"));
    std::fs::create_dir_all(&dir).map_err(|e| output_error(&dir, e))?;
    let FoldPatients { train, val, nested } = fold_patients(config, data, split)?;

    let parameters = fold_parameters(config, data, split);
    let params_path = dir.join("parameters.txt");
    let state_path = dir.join("state.safetensors");
    match std::fs::read_to_string(&params_path) {
        Ok(recorded) if recorded != parameters && !force => {
            return Err(output_error(
                &dir,
                "was trained with other parameters or data; rerun with --force to replace it",
            ));
        }
        Ok(recorded) if recorded == parameters && !force => {}
        _ => {
            let _ = std::fs::remove_file(&state_path);
            atomic::write_bytes(&params_path, parameters.as_bytes())
                .map_err(|e| output_error(&params_path, e))?;
        }
    }

    let history_path = dir.join("history.csv");
    let val_path = dir.join("val_predictions.csv");
    let routing_path = dir.join("routing.csv");
    let done_path = dir.join("done");
    if !force && done_path.is_file() {
        // Finished earlier with these parameters (checked above): nothing to train.
        let history = rows_before(&history_path, train_cfg.epochs);
        let val_rows = rows_before(&val_path, train_cfg.epochs);
        if history.len() == train_cfg.epochs {
            tracing::info!("fold {fold}: already trained, kept");
            return summarise_fold(
                config,
                data,
                fold,
                train.len(),
                val.len(),
                &history,
                &val_rows,
            );
        }
    }
    let _ = std::fs::remove_file(&done_path);

    let device = encode::parse_device(&train_cfg.device)?;
    tch::manual_seed(mix(&[train_cfg.seed, fold as u64, 0xFF]) as i64);
    let vs = nn::VarStore::new(device);
    let model = Hdmoe::new(&vs.root(), spec.clone());
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
        .map(|g| Scaler::fit(g, &data.genomic_rows(&train)));
    let trainer = Trainer {
        config,
        data,
        model,
        names,
        params,
        device,
        scaler,
    };
    let mut adam = Adam::new(&trainer.params, train_cfg.lr, train_cfg.weight_decay);

    let mut start = 0;
    if state_path.is_file() && !force {
        start = load_state(&state_path, &trainer, &mut adam)?;
        tracing::info!("fold {fold}: resuming after epoch {start}");
    }
    let mut history = rows_before(&history_path, start);
    let mut val_rows = rows_before(&val_path, start);
    let mut routing_rows = rows_before(&routing_path, start);

    let weights = data.cohort.sampling_weights(&train);
    let lambda = (config.model.lambda_decouple, config.model.lambda_balance);
    for epoch in start..train_cfg.epochs {
        let started = Instant::now();
        let seed = mix(&[train_cfg.seed, fold as u64, epoch as u64]);
        tch::manual_seed(seed as i64);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        adam.lr = train_cfg
            .lr_schedule
            .rate(train_cfg.lr, epoch, train_cfg.epochs);
        let order: Vec<usize> = if train_cfg.weighted_sampling {
            let dist = WeightedIndex::new(&weights).map_err(|e| FitError::Config(e.to_string()))?;
            (0..train.len())
                .map(|_| train[dist.sample(&mut rng)])
                .collect()
        } else {
            let mut o = train.clone();
            o.shuffle(&mut rng);
            o
        };
        let segment_rng = std::cell::RefCell::new(ChaCha8Rng::seed_from_u64(mix(&[seed, 1])));
        let mut sums = [0.0f64; 4];
        let mut train_preds = Vec::new();
        let mut train_routing: Vec<Vec<i64>> = Vec::new();
        let mut pending: Vec<Tensor> = Vec::new();
        let accumulate = train_cfg.accumulate;
        let mut progress =
            crate::progress::Progress::new(format!("fold {fold} epoch {epoch}"), order.len());
        trainer.for_each_prefetched(&order, mix(&[seed, 2]), |k, patient, inputs| {
            let p = &data.cohort.patients[patient];
            let segments = trainer.draw_segments(&mut segment_rng.borrow_mut(), true);
            let out = trainer.model.forward(&inputs, segments, true);
            let surv = model::loss::nll_survival(
                &out.hazards,
                &out.survival,
                p.time_bin as i64,
                p.censored,
            );
            let total = &surv + &out.decoupling * lambda.0 + &out.balance * lambda.1;
            let scaled = &total / accumulate as f64;
            let grads = Tensor::run_backward(&[&scaled], &trainer.params, false, false);
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
                adam.step(&trainer.params, &pending);
                pending.clear();
            }
            for (s, t) in sums
                .iter_mut()
                .zip([&total, &surv, &out.decoupling, &out.balance])
            {
                *s += t.double_value(&[]);
            }
            count_routing(&mut train_routing, &out.routing, spec.experts);
            train_preds.push(Prediction {
                patient,
                risk: out.risk.double_value(&[]),
                hazards: [0.0; N_BINS],
            });
            progress.inc();
            Ok(())
        })?;
        let n = order.len() as f64;
        let (val_preds, val_routing) = trainer.evaluate(&val, mix(&[seed, 3]))?;
        let nested_c = if nested.is_empty() {
            f64::NAN
        } else {
            c_index(data, &trainer.evaluate(&nested, mix(&[seed, 4]))?.0)
        };
        history.push(format!(
            "{epoch},{:.8e},{},{},{},{},{},{},{},{:.3}",
            adam.lr,
            sums[0] / n,
            sums[1] / n,
            sums[2] / n,
            sums[3] / n,
            c_index(data, &train_preds),
            c_index(data, &val_preds),
            nested_c,
            started.elapsed().as_secs_f64()
        ));
        for p in &val_preds {
            let h = p.hazards;
            val_rows.push(format!(
                "{epoch},{},{},{},{},{},{}",
                data.cohort.patients[p.patient].case_id, p.risk, h[0], h[1], h[2], h[3]
            ));
        }
        for (split_name, counts) in [("train", &train_routing), ("val", &val_routing)] {
            for (m, row) in counts.iter().enumerate() {
                for (e, c) in row.iter().enumerate() {
                    routing_rows.push(format!("{epoch},{split_name},{},{e},{c}", MOE_NAMES[m]));
                }
            }
        }
        write_rows(&history_path, HISTORY_HEADER, &history)?;
        write_rows(&val_path, VAL_HEADER, &val_rows)?;
        write_rows(&routing_path, ROUTING_HEADER, &routing_rows)?;
        save_state(&state_path, &trainer, &adam, epoch + 1)?;
        tracing::info!(
            "fold {fold} epoch {epoch}: loss {:.4}, val C-index {:.4}",
            sums[0] / n,
            c_index(data, &val_preds)
        );
    }

    let model_path = dir.join("model.safetensors");
    let weights_named: Vec<(String, Tensor)> = trainer
        .names
        .iter()
        .cloned()
        .zip(trainer.params.iter().map(|p| p.to_device(Device::Cpu)))
        .collect();
    atomic::write_with(&model_path, |temp| {
        Tensor::write_safetensors(&weights_named, temp).map_err(std::io::Error::other)
    })
    .map_err(|e| output_error(&model_path, e))?;
    // The optimiser state is only needed to resume an unfinished fold.
    atomic::write_bytes(&done_path, b"trained\n").map_err(|e| output_error(&done_path, e))?;
    let _ = std::fs::remove_file(&state_path);
    summarise_fold(
        config,
        data,
        split.fold,
        train.len(),
        val.len(),
        &history,
        &val_rows,
    )
}

/// Per-epoch (val, nested) C-indices from history rows.
fn history_cindices(history: &[String]) -> Vec<(f64, f64)> {
    history
        .iter()
        .map(|r| {
            let f: Vec<&str> = r.split(',').collect();
            let get = |k: usize| {
                f.get(k)
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(f64::NAN)
            };
            (get(7), get(8))
        })
        .collect()
}

fn argmax(values: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, v) in values.enumerate() {
        // Strictly greater: the first epoch reaching the best value, as the release selects.
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}

fn summarise_fold(
    config: &Config,
    data: &Dataset,
    fold: usize,
    n_train: usize,
    n_val: usize,
    history: &[String],
    val_rows: &[String],
) -> Result<(FoldResult, Vec<String>), FitError> {
    let c = history_cindices(history);
    let last = c.len() - 1;
    let best_epoch = argmax(c.iter().map(|x| x.0));
    let nested = (config.train.selection == Selection::Nested).then(|| {
        let e = argmax(c.iter().map(|x| x.1));
        (c[e].0, e)
    });
    let selected_epoch = match config.train.selection {
        Selection::Last => last,
        Selection::Best => best_epoch,
        Selection::Nested => nested.map_or(last, |(_, e)| e),
    };
    let selection = format!("{:?}", config.train.selection).to_lowercase();
    let mut rows = Vec::new();
    for r in val_rows {
        let f: Vec<&str> = r.split(',').collect();
        if f.first().and_then(|e| e.parse::<usize>().ok()) != Some(selected_epoch) {
            continue;
        }
        let case = f[1];
        let Some(i) = data.cohort.position(case) else {
            continue;
        };
        let p = &data.cohort.patients[i];
        rows.push(format!(
            "{case},{fold},{},{},{},{},{},{},{},{selected_epoch},{selection}",
            f[2],
            f[3],
            f[4],
            f[5],
            f[6],
            p.survival_months,
            u8::from(p.event())
        ));
    }
    Ok((
        FoldResult {
            fold,
            n_train,
            n_val,
            c_last: c[last].0,
            c_best: c[best_epoch].0,
            best_epoch,
            c_nested: nested,
            c_selected: c[selected_epoch].0,
            selected_epoch,
        },
        rows,
    ))
}

fn write_summary(path: &Path, folds: &[FoldResult], selection: Selection) -> Result<(), FitError> {
    let mut text = String::from("fold,n_train,n_val,selection,c_index,epoch,c_index_last,c_index_best,best_epoch,c_index_nested,nested_epoch\n");
    let sel = format!("{selection:?}").to_lowercase();
    for f in folds {
        let (cn, en) = f.c_nested.map_or((String::new(), String::new()), |(c, e)| {
            (c.to_string(), e.to_string())
        });
        let _ = writeln!(
            text,
            "{},{},{},{sel},{},{},{},{},{},{cn},{en}",
            f.fold,
            f.n_train,
            f.n_val,
            f.c_selected,
            f.selected_epoch,
            f.c_last,
            f.c_best,
            f.best_epoch
        );
    }
    let stat = |pick: fn(&FoldResult) -> f64| {
        let v: Vec<f64> = folds.iter().map(pick).filter(|x| x.is_finite()).collect();
        crate::report::tables::mean_std(&v).unwrap_or((f64::NAN, f64::NAN))
    };
    let columns = [
        stat(|f| f.c_selected),
        stat(|f| f.c_last),
        stat(|f| f.c_best),
        stat(|f| f.c_nested.map_or(f64::NAN, |x| x.0)),
    ];
    for (label, k) in [("mean", 0), ("std", 1)] {
        let v = |p: (f64, f64)| if k == 0 { p.0 } else { p.1 };
        let nested = if folds.iter().any(|f| f.c_nested.is_some()) {
            v(columns[3]).to_string()
        } else {
            String::new()
        };
        let _ = writeln!(
            text,
            "{label},,,{sel},{},,{},{},,{nested},",
            v(columns[0]),
            v(columns[1]),
            v(columns[2])
        );
    }
    atomic::write_bytes(path, text.as_bytes()).map_err(|e| output_error(path, e))
}

pub fn run(config: &Config, force: bool) -> Result<FitReport, FitError> {
    let data = Dataset::load(config)?;
    let splits_dir = config
        .paths
        .splits
        .as_deref()
        .ok_or_else(|| FitError::Config("configuration: `paths.splits` is not set".into()))?;
    let splits = cohort::read_splits(splits_dir, &config.train.folds, &data.cohort)
        .map_err(|e| FitError::Config(e.to_string()))?;
    let spec = model_spec(config, &data)?;
    let run_dir = config.run_dir();
    std::fs::create_dir_all(&run_dir).map_err(|e| output_error(&run_dir, e))?;
    let config_path = run_dir.join("config.yaml");
    atomic::write_bytes(&config_path, config.to_yaml().as_bytes())
        .map_err(|e| output_error(&config_path, e))?;

    let excluded: Vec<(String, String)> = data
        .missing
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            m.clone()
                .map(|why| (data.cohort.patients[i].case_id.clone(), why))
        })
        .collect();
    if !excluded.is_empty() {
        tracing::warn!(
            "{} patients left out for a missing modality (listed in {})",
            excluded.len(),
            run_dir.join("excluded.csv").display()
        );
        let rows: Vec<String> = excluded
            .iter()
            .map(|(c, w)| format!("{c},\"{}\"", w.replace('"', "'")))
            .collect();
        write_rows(&run_dir.join("excluded.csv"), "case_id,reason", &rows)?;
    }

    let mut folds = Vec::new();
    let mut predictions = Vec::new();
    for split in &splits {
        let (result, rows) = fit_fold(config, &data, &spec, split, &run_dir, force)?;
        folds.push(result);
        predictions.extend(rows);
    }
    write_rows(
        &run_dir.join("predictions.csv"),
        "case_id,fold,risk,hazard_0,hazard_1,hazard_2,hazard_3,survival_months,event,epoch,selection",
        &predictions,
    )?;
    write_summary(&run_dir.join("summary.csv"), &folds, config.train.selection)?;
    Ok(FitReport {
        run_dir,
        folds,
        excluded,
    })
}
