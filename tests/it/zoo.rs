//! The Table 2 baselines against their official code. fixtures/zoo/make_<repo>.py imports each
//! official class from a checkout, fills every parameter from its official name (the hash of
//! fixtures/parity), runs bags and genomic vectors in float64 and records eval outputs, the
//! train-mode losses and every parameter's gradient (dropout off). Here the same weights are
//! loaded into our model by those names (the name sets must be equal), and the outputs must
//! agree to 1e-6 and the gradients to 1e-5 relative; each parameter's initial distribution must
//! be the official constructor's.

use crate::common;

use common::fixture;
use common::official::*;
use hdmoe_pipe::config::ModelConfig;
use hdmoe_pipe::model::loss::nll_survival;
use hdmoe_pipe::model::{Architecture, Inputs, ModelSpec, Output, Pass, SurvivalModel};
use serde_json::Value;
use tch::Tensor;

fn reference(architecture: &str) -> Value {
    let path = fixture(&format!("zoo/{architecture}_reference.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("zoo fixture is JSON")
}

fn shape(v: &Value) -> Vec<i64> {
    v.as_array()
        .expect("a shape")
        .iter()
        .map(|d| d.as_i64().expect("a dimension"))
        .collect()
}

/// A hashed input as the fixture names it: {"name": …, "shape": […]}.
fn input(v: &Value) -> Tensor {
    hashed_uniform(v["name"].as_str().expect("input name"), &shape(&v["shape"]))
}

fn inputs(case: &Value) -> Inputs {
    let given = &case["inputs"];
    Inputs {
        wsi: given.get("wsi").map(|w| {
            let t = input(w);
            // Some official forwards take [1, N, d]; ours take the bag [N, d].
            let size = t.size();
            t.view([size[size.len() - 2], size[size.len() - 1]])
        }),
        genomics: given
            .get("genomics")
            .map(|g| g.as_array().expect("groups").iter().map(input).collect()),
        mri: None,
    }
}

/// The spec `fit` would resolve for this system on the fixture's inputs.
fn spec(architecture: &str, reference: &Value) -> ModelSpec {
    let case = &reference["cases"][0]["inputs"];
    let groups: Vec<i64> = case
        .get("genomics")
        .map(|g| {
            g.as_array()
                .unwrap()
                .iter()
                .map(|x| *shape(&x["shape"]).last().unwrap())
                .collect()
        })
        .unwrap_or_default();
    let mut spec = ModelSpec::wsi_genomics(groups, 256);
    spec.architecture = Architecture::find(architecture).expect("a registered model");
    spec.wsi = case.get("wsi").is_some();
    if case.get("genomics").is_none() {
        spec.modality_1 = None;
    }
    if let Some(w) = case.get("wsi") {
        spec.wsi_dim = *shape(&w["shape"]).last().unwrap();
    }
    spec
}

/// The official training script's total: NLL (MCAT's, α = 0) plus the system's own terms,
/// weighted as the fixture's `loss_weights` says (CLAM: 0.7 and 0.3; a case without them is
/// NLL alone). Our model must weigh them the same in `fit`.
fn total_loss(model: &dyn SurvivalModel, out: &Output, case: &Value) -> Tensor {
    let nll = nll_survival(
        &out.hazards,
        &out.survival,
        case["time_bin"].as_i64().unwrap(),
        case["censored"].as_bool().unwrap(),
    );
    let Some(weights) = case["train"].get("loss_weights") else {
        return nll;
    };
    let config = ModelConfig::default();
    let survival = weights["survival"].as_f64().unwrap();
    assert!(
        (model.survival_weight() - survival).abs() < 1e-12,
        "survival weight"
    );
    // A fold, not `+=`, which would add in place into the NLL's storage.
    model
        .loss_terms()
        .iter()
        .fold(nll * survival, |total, term| {
            let name = term.column().trim_start_matches("loss_");
            let weight = weights[name].as_f64().unwrap();
            assert!(
                (term.weight(&config) - weight).abs() < 1e-12,
                "{name} weight"
            );
            total + out.loss(*term) * weight
        })
}

/// LD-CVAE's reparameterisation draws as the fixture fixed them: per role, the Box–Muller
/// normal of two `uniform` streams of the draw's name (make_ldcvae.py's `fixed_normal`).
fn with_draws<T>(architecture: &str, case: &Value, pass: &str, f: impl FnOnce() -> T) -> T {
    if architecture != "ld_cvae" {
        return f();
    }
    let draws = case["draws"][pass]
        .as_object()
        .expect("the case's draws")
        .iter()
        .map(|(role, name)| {
            let name = name.as_str().unwrap();
            let u1 = uniform(&format!("{name}.u1"), 256);
            let u2 = uniform(&format!("{name}.u2"), 256);
            let e: Vec<f64> = u1
                .iter()
                .zip(&u2)
                .map(|(a, b)| {
                    (-2.0 * (1.0 - a).ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()
                })
                .collect();
            (role.clone(), Tensor::from_slice(&e).view([1, 256]))
        })
        .collect();
    hdmoe_pipe::model::ld_cvae::with_fixed_draws(draws, f)
}

fn check_system(architecture: &str) {
    let reference = reference(architecture);
    let official = reference["parameters"].as_object().expect("parameters");
    let spec = spec(architecture, &reference);
    let (_vs, model, names, params) = build(spec.clone(), official);
    let (mut worst_eval, mut worst_grad) = (0.0f64, 0.0f64);
    for case in reference["cases"].as_array().unwrap() {
        let x = inputs(case);
        let what = format!(
            "{architecture}, case of {} patches, bin {}",
            x.wsi.as_ref().map_or(0, |w| w.size()[0]),
            case["time_bin"]
        );
        let want = &case["eval"];
        // PIBD's eval re-seeds libtorch's generator before each draw, as the release does:
        // nothing else may draw meanwhile.
        let out = {
            let _generator = (architecture == "pibd").then(hdmoe_pipe::torch_rng::lock);
            with_draws(architecture, case, "eval", || {
                tch::no_grad(|| model.forward_pass(&x, (1, 1), Pass::EVAL))
            })
        };
        for (key, got) in [
            ("logits", &out.logits),
            ("hazards", &out.hazards),
            ("survival", &out.survival),
        ] {
            if want.get(key).is_some() {
                check_values(
                    got,
                    &want[key],
                    1e-6,
                    format!("{what}: {key}"),
                    &mut worst_eval,
                );
            }
        }
        check(
            out.risk.double_value(&[]),
            want["risk"].as_f64().unwrap(),
            1e-6,
            1e-12,
            &format!("{what}: risk"),
            &mut worst_eval,
        );
        let train = &case["train"];
        let pass = Pass {
            train: true,
            dropout: false,
            label: Some(case["time_bin"].as_i64().unwrap()),
            censored: Some(case["censored"].as_bool().unwrap()),
        };
        // PIBD's training draws (noise, patch subsets) are the fixture's hashed stand-ins.
        let out = if architecture == "pibd" {
            hdmoe_pipe::model::pibd::with_fixed_draws(hashed_uniform, || {
                model.forward_pass(&x, (1, 1), pass)
            })
        } else {
            with_draws(architecture, case, "train", || {
                model.forward_pass(&x, (1, 1), pass)
            })
        };
        let loss = total_loss(model.as_ref(), &out, case);
        check(
            loss.double_value(&[]),
            train["loss_total"].as_f64().unwrap(),
            1e-6,
            1e-12,
            &format!("{what}: total loss"),
            &mut worst_eval,
        );
        // Parameters the official backward leaves without a gradient (a CLAM instance
        // classifier of another bin) must get none or zeros here.
        let no_grad: Vec<&str> = train
            .get("no_grad")
            .and_then(Value::as_array)
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let grads = Tensor::run_backward(&[&loss], &params, false, false);
        // Some gradients are zero in exact arithmetic and round-off in both codes (the bias
        // of a score before a softmax, which shifts every score alike): they are compared
        // to the case's largest gradient, at float64 round-off.
        let scale = train["grads"]
            .as_object()
            .unwrap()
            .values()
            .map(|g| g["norm"].as_f64().unwrap())
            .fold(0.0, f64::max);
        for (name, g) in names.iter().zip(&grads) {
            if no_grad.contains(&name.as_str()) {
                let zero = !g.defined() || g.abs().max().double_value(&[]) == 0.0;
                assert!(
                    zero,
                    "{what}: `{name}` has a gradient; the official code gives none"
                );
                continue;
            }
            assert!(g.defined(), "{what}: `{name}` has no gradient");
            let summary = &train["grads"][name.as_str()];
            if summary["norm"].as_f64().unwrap() < 1e-12 * scale {
                let norm = g.norm().double_value(&[]);
                assert!(
                    norm < 1e-12 * scale,
                    "{what}: `{name}` gradient {norm:e}, official ~0"
                );
                continue;
            }
            check_summary(
                name,
                g,
                summary,
                1e-5,
                &format!("{what}: grad"),
                &mut worst_grad,
            );
        }
    }
    println!("{architecture}: worst relative difference eval {worst_eval:.1e}, gradients {worst_grad:.1e}");
    check_init(&reference["init"], spec);
}

#[test]
fn maxmil_equals_mambamils() {
    check_system("maxmil");
}

#[test]
fn meanmil_equals_mambamils() {
    check_system("meanmil");
}

#[test]
fn clam_sb_equals_motcats() {
    check_system("clam_sb");
}

#[test]
fn clam_mb_equals_motcats() {
    check_system("clam_mb");
}

#[test]
fn motcat_equals_motcats() {
    check_system("motcat");
}

#[test]
fn cmta_equals_cmtas() {
    check_system("cmta");
}

#[test]
fn survpath_equals_survpaths() {
    check_system("survpath");
}

#[test]
fn mome_equals_momes() {
    check_system("mome");
}

#[test]
fn ccl_equals_ccls() {
    check_system("ccl");
}

#[test]
fn pibd_equals_pibds() {
    check_system("pibd");
}

#[test]
fn ld_cvae_equals_robust_mcats() {
    check_system("ld_cvae");
}

#[test]
fn transmil_equals_mambamils() {
    check_system("transmil");
}

#[test]
fn abmil_equals_mcats_attention_mil() {
    check_system("abmil");
}

#[test]
fn mcat_equals_mcats() {
    check_system("mcat");
}

#[test]
fn snn_trans_equals_mcats_genomic_branch() {
    check_system("snn_trans");
}

/// Every baseline trains through the unchanged `fit` (its own losses included) and learns the
/// planted signal of the synthetic cohort: the bags' mean of the first 4 feature dimensions and
/// three genes set the risk (chance 0.5).
#[test]
fn every_baseline_fits_and_learns_the_planted_signal() {
    let _one = crate::fit::ONE_FIT_AT_A_TIME
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let data = crate::fit::synthetic(&dir.path().join("cohort"), 120, false, true);
    let mut learnt = Vec::new();
    for (architecture, modalities) in [
        ("maxmil", "[wsi]"),
        ("meanmil", "[wsi]"),
        ("abmil", "[wsi]"),
        ("clam_sb", "[wsi]"),
        ("clam_mb", "[wsi]"),
        ("transmil", "[wsi]"),
        ("snn_trans", "[genomics]"),
        ("mcat", "[wsi, genomics]"),
        ("motcat", "[wsi, genomics]"),
        ("cmta", "[wsi, genomics]"),
        ("survpath", "[wsi, genomics]"),
    ] {
        let runs = dir.path().join("runs").join(architecture);
        let config = data.config(&[
            &format!("model.architecture={architecture}"),
            &format!("dataset.modalities={modalities}"),
            &format!("paths.runs={}", runs.display()),
            "train.epochs=8",
            "train.lr=1e-3",
        ]);
        let report = hdmoe_pipe::train::run(&config, false).unwrap();
        let mean = report.folds.iter().map(|f| f.c_last).sum::<f64>() / 2.0;
        learnt.push(format!("{architecture} {mean:.3}"));
        let history = std::fs::read_to_string(runs.join("fold_0/history.csv")).unwrap();
        let last: Vec<f64> = history
            .lines()
            .last()
            .unwrap()
            .split(',')
            .map(|v| v.parse().unwrap())
            .collect();
        // CLAM's total is 0.7 NLL + 0.3 instance loss, CMTA's adds its alignment; the others
        // have no term of their own.
        let (total, survival, instance, alignment) = (last[2], last[3], last[10], last[11]);
        if architecture.starts_with("clam") {
            assert!(instance > 0.0, "{architecture}: instance loss {instance}");
            assert!((total - (0.7 * survival + 0.3 * instance)).abs() < 1e-6 * total.abs());
        } else if architecture == "cmta" {
            // CMTA: NLL + alignment_weight (1.0) · alignment.
            assert!(alignment > 0.0, "cmta: alignment loss {alignment}");
            assert!((total - (survival + alignment)).abs() < 1e-6 * total.abs());
        } else {
            assert_eq!((instance, alignment), (0.0, 0.0), "{architecture}");
            assert!(
                (total - survival).abs() < 1e-9 * total.abs(),
                "{architecture}"
            );
        }
    }
    println!("last-epoch C-index: {}", learnt.join(", "));
    for line in &learnt {
        let c: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(
            c > 0.6,
            "did not learn the planted signal: {}",
            learnt.join(", ")
        );
    }
}

/// MOTCat's transport plan is POT 0.9.3's `sinkhorn_knopp_unbalanced` (as MOTCat calls it):
/// the same iterations and plan on the fixture's standalone cost matrices.
#[test]
fn motcat_ot_solver_equals_pots() {
    use hdmoe_pipe::model::ot;
    let reference = reference("motcat");
    let cases = reference["ot_solver"].as_array().expect("solver cases");
    assert!(!cases.is_empty());
    let mut worst = 0.0;
    for case in cases {
        let cost = &case["cost"];
        let h =
            (hashed_uniform(cost["name"].as_str().unwrap(), &shape(&cost["shape"])) + 1.0) / 2.0;
        let m = &h / h.max();
        let (n, k) = (m.size()[0], m.size()[1]);
        let device = tch::Device::Cpu;
        let plan = ot::sinkhorn_knopp_unbalanced(
            &ot::uniform(n, device),
            &ot::uniform(k, device),
            &m,
            case["reg"].as_f64().unwrap(),
            case["reg_m"].as_f64().unwrap(),
        );
        assert_eq!(
            plan.iterations as i64,
            case["iterations"].as_i64().unwrap(),
            "iterations, reg {}",
            case["reg"]
        );
        check_values(
            &plan.plan.flatten(0, -1),
            &case["plan"],
            1e-12,
            format!("plan, reg {}", case["reg"]),
            &mut worst,
        );
    }
    println!("OT plans: worst relative difference {worst:.1e}");
}

/// The heavy baselines (MoME 21.7 M parameters, LD-CVAE 17.3 M, PIBD's eight passes per
/// patient, CCL's clustering), too slow for the planted-signal test's epochs: each trains
/// through `fit`, records its own loss terms in history.csv, and its checkpoint holds every
/// official parameter name.
#[test]
fn the_heavy_baselines_fit_and_keep_the_official_names() {
    let _one = crate::fit::ONE_FIT_AT_A_TIME
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let data = crate::fit::synthetic(&dir.path().join("cohort"), 40, false, true);
    for architecture in ["mome", "ccl", "pibd", "ld_cvae"] {
        let runs = dir.path().join("runs").join(architecture);
        let config = data.config(&[
            &format!("model.architecture={architecture}"),
            &format!("paths.runs={}", runs.display()),
            "train.epochs=2",
            "train.lr=1e-4",
        ]);
        let report = hdmoe_pipe::train::run(&config, false).unwrap();
        assert_eq!(report.folds.len(), 2);
        for fold in &report.folds {
            assert!(fold.c_last.is_finite(), "{architecture} fold {}", fold.fold);
        }
        let history = std::fs::read_to_string(runs.join("fold_0/history.csv")).unwrap();
        let header: Vec<&str> = history.lines().next().unwrap().split(',').collect();
        let model = hdmoe_pipe::model::Architecture::find(architecture).unwrap();
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let spec_terms = {
            let _generator = hdmoe_pipe::torch_rng::lock();
            let mut spec = ModelSpec::wsi_genomics(vec![4, 4], 256);
            spec.architecture = model;
            spec.wsi_dim = 16;
            hdmoe_pipe::model::build(&vs.root(), spec).loss_terms()
        };
        for row in history.lines().skip(1) {
            let cells: Vec<f64> = row.split(',').map(|c| c.parse().unwrap()).collect();
            assert!(
                cells[2].is_finite() && cells[2] > 0.0,
                "{architecture}: {row}"
            );
            for term in spec_terms {
                let k = header.iter().position(|h| *h == term.column()).unwrap();
                assert!(
                    cells[k].is_finite(),
                    "{architecture} {}: {row}",
                    term.column()
                );
            }
        }
        let saved: std::collections::BTreeSet<String> =
            Tensor::read_safetensors(runs.join("fold_0/model.safetensors"))
                .unwrap()
                .into_iter()
                .map(|(name, _)| name)
                .collect();
        // The fixtures' groups are TCGA's six; the synthetic cohort has two.
        for name in reference(architecture)["parameters"]
            .as_object()
            .unwrap()
            .keys()
        {
            let group = name
                .split('.')
                .skip_while(|part| {
                    ![
                        "sig_networks",
                        "genomics_fc",
                        "decoders",
                        "latent_generators",
                    ]
                    .contains(part)
                })
                .nth(1)
                .and_then(|g| g.parse::<usize>().ok());
            if group.is_some_and(|g| g >= 2) {
                continue;
            }
            assert!(
                saved.contains(name),
                "{architecture}: checkpoint lacks `{name}`"
            );
        }
    }
}
