//! Our HDMoE and SNN against the official code (fixtures/parity/make_reference.py runs
//! ZJUMAI/HDMoE's `HDMoE` and MCAT's `SNN` on name-hashed weights, in float64): weights load by
//! the official parameter names; eval outputs to 1e-6, train-mode gradients (dropout off) and
//! four Adam steps to 1e-5 relative; each parameter's initial distribution as the release's.

use crate::common;

use common::fixture;
use common::official::*;
use hdmoe_pipe::model::loss::nll_survival;
use hdmoe_pipe::model::{
    self, Architecture, Inputs, LossTerm, Modality1, ModelSpec, Pass, UnchosenExperts,
};
use hdmoe_pipe::train::adam::Adam;
use serde_json::Value;
use tch::{nn, Device, Tensor};

fn load(name: &str) -> Value {
    let path = fixture(&format!("parity/{name}"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("parity fixture")).unwrap()
}

/// MCAT's SNN on one input vector of `n` genes.
fn snn_spec(n: i64) -> ModelSpec {
    let mut spec = ModelSpec::wsi_genomics(vec![n], 256);
    spec.architecture = Architecture::SNN;
    spec.wsi = false;
    spec.modality_1 = Some(Modality1::Genomics);
    spec
}

fn groups(reference: &Value) -> Vec<i64> {
    reference["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_i64().unwrap())
        .collect()
}

fn release_spec(reference: &Value, unchosen: UnchosenExperts) -> ModelSpec {
    let mut spec = ModelSpec::wsi_genomics(
        groups(reference),
        reference["token_length"].as_i64().unwrap(),
    );
    spec.unchosen_experts = unchosen;
    spec
}

fn inputs(case: &Value, groups: &[i64]) -> Inputs {
    let patches = case["patches"].as_i64().unwrap();
    Inputs {
        wsi: Some(hashed_uniform(
            &format!("input.wsi.{patches}"),
            &[patches, 1024],
        )),
        genomics: Some(
            groups
                .iter()
                .enumerate()
                .map(|(i, &n)| hashed_uniform(&format!("input.omic{}", i + 1), &[n]))
                .collect(),
        ),
        mri: None,
    }
}

fn segments(case: &Value) -> (i64, i64) {
    (case["s1"].as_i64().unwrap(), case["s2"].as_i64().unwrap())
}

const TRAIN_NO_DROPOUT: Pass = Pass {
    train: true,
    dropout: false,
    label: None,
    censored: None,
};

/// engine.py's total: NLL + α·(dis1 + dis2) + 0.01·(Σ load balance), α = 1.
fn total_loss(out: &hdmoe_pipe::model::Output, case: &Value) -> Tensor {
    let nll = nll_survival(
        &out.hazards,
        &out.survival,
        case["time_bin"].as_i64().unwrap(),
        case["censored"].as_bool().unwrap(),
    );
    nll + out.loss(LossTerm::Decoupling) + out.loss(LossTerm::Balance) * 0.01
}

fn chosen(out: &hdmoe_pipe::model::Output) -> Vec<Vec<i64>> {
    out.routing
        .iter()
        .map(|c| Vec::<i64>::try_from(c.flatten(0, -1)).unwrap())
        .collect()
}

fn chosen_json(v: &Value) -> Vec<Vec<i64>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m.as_array()
                .unwrap()
                .iter()
                .map(|e| e.as_i64().unwrap())
                .collect()
        })
        .collect()
}

#[test]
fn hdmoe_eval_outputs_and_gradients_equal_the_released_code() {
    let reference = load("hdmoe_reference.json");
    let official = reference["parameters"].as_object().unwrap();
    let groups = groups(&reference);
    let (_vs, model, names, params) =
        build(release_spec(&reference, UnchosenExperts::Step), official);
    let (mut worst_eval, mut worst_grad) = (0.0f64, 0.0f64);
    for case in reference["cases"].as_array().unwrap() {
        let patches = case["patches"].as_i64().unwrap();
        let x = inputs(case, &groups);
        // Eval, RFR fixed to the reference's draws.
        let want = &case["eval"];
        let out = tch::no_grad(|| model.forward_pass(&x, segments(case), Pass::EVAL));
        for (key, got) in [
            ("logits", &out.logits),
            ("hazards", &out.hazards),
            ("survival", &out.survival),
        ] {
            check_values(
                got,
                &want[key],
                1e-6,
                format!("{patches} patches: {key}"),
                &mut worst_eval,
            );
        }
        check(
            out.risk.double_value(&[]),
            want["risk"].as_f64().unwrap(),
            1e-6,
            0.0,
            &format!("{patches} patches: risk"),
            &mut worst_eval,
        );
        let terms = out.decoupling_terms.as_ref().expect("fused model");
        for (key, got) in [
            ("push_modality1", &terms.push_modality1),
            ("push_wsi", &terms.push_wsi),
            ("push_fusion", &terms.push_fusion),
            ("pull_specific", &terms.pull_specific),
            ("pull_shared", &terms.pull_shared),
        ] {
            check(
                got.double_value(&[]),
                want["decoupling"][key].as_f64().unwrap(),
                1e-6,
                1e-12,
                &format!("{patches} patches: {key}"),
                &mut worst_eval,
            );
        }
        for (m, (got, w)) in out
            .router_probabilities
            .iter()
            .zip(want["router"].as_array().unwrap())
            .enumerate()
        {
            check_values(
                got,
                w,
                1e-6,
                format!("{patches} patches: router {m}"),
                &mut worst_eval,
            );
        }
        assert_eq!(
            chosen(&out),
            chosen_json(&want["chosen"]),
            "{patches} patches: chosen experts"
        );
        assert_eq!(
            out.loss(LossTerm::Balance).double_value(&[]),
            0.0,
            "no load balance at evaluation"
        );

        // Train mode, dropout off: losses and every parameter's gradient.
        let want = &case["train"];
        let out = model.forward_pass(&x, segments(case), TRAIN_NO_DROPOUT);
        assert_eq!(
            chosen(&out),
            chosen_json(&want["chosen"]),
            "{patches} patches: chosen (train)"
        );
        check(
            out.loss(LossTerm::Balance).double_value(&[]),
            want["loss_balance"].as_f64().unwrap(),
            1e-6,
            0.0,
            "load balance",
            &mut worst_eval,
        );
        let total = total_loss(&out, case);
        check(
            total.double_value(&[]),
            want["loss_total"].as_f64().unwrap(),
            1e-6,
            0.0,
            "total loss",
            &mut worst_eval,
        );
        // The release runs every expert, so every parameter has a gradient (zeros for the
        // experts no token chose).
        check_gradients(
            &total,
            &names,
            &params,
            &want["grads"],
            &format!("{patches} patches"),
            &mut worst_grad,
        );
    }
    eprintln!(
        "parity: worst relative difference, eval {worst_eval:.2e}, gradients {worst_grad:.2e}"
    );
}

/// Four Adam steps (one per case, as engine.py) from the same weights: every parameter after
/// them equals the release's, including the experts no token chose (stepped by the coupled L2
/// on zero gradients). With `unchosen_experts: freeze` those stay where they started.
#[test]
fn adam_steps_equal_the_released_code_including_unchosen_experts() {
    let reference = load("hdmoe_reference.json");
    let official = reference["parameters"].as_object().unwrap();
    let groups = groups(&reference);
    let cases = reference["cases"].as_array().unwrap();
    let adam_ref = &reference["adam"];
    let run = |unchosen: UnchosenExperts| {
        let (_vs, model, names, params) = build(release_spec(&reference, unchosen), official);
        let mut adam = Adam::new(
            &params,
            adam_ref["lr"].as_f64().unwrap(),
            adam_ref["weight_decay"].as_f64().unwrap(),
        );
        for (step, case) in cases.iter().enumerate() {
            let out = model.forward_pass(&inputs(case, &groups), segments(case), TRAIN_NO_DROPOUT);
            assert_eq!(
                chosen(&out),
                chosen_json(&adam_ref["chosen"][step]),
                "step {step}: chosen experts"
            );
            let grads = Tensor::run_backward(&[&total_loss(&out, case)], &params, false, false);
            adam.step(&params, &grads);
        }
        (names, params)
    };
    let (names, params) = run(UnchosenExperts::Step);
    let mut worst = 0.0f64;
    for (name, p) in names.iter().zip(&params) {
        check_summary(
            name,
            p,
            &adam_ref["parameters_after"][name],
            1e-5,
            "after 4 Adam steps:",
            &mut worst,
        );
    }
    eprintln!("parity: worst relative difference after 4 Adam steps {worst:.2e}");

    // Expert 1 of the genomic MoE is never chosen in these steps.
    let never = "genomics_moe.experts.1.layer1.weight";
    assert!(chosen_json(&adam_ref["chosen"][0]).len() == 3);
    for step in adam_ref["chosen"].as_array().unwrap() {
        assert!(!chosen_json(step)[0].contains(&1));
    }
    let (names, params) = run(UnchosenExperts::Freeze);
    let k = names.iter().position(|n| n == never).unwrap();
    let start = hashed(never, &params[k].size());
    assert!(params[k].equal(&start), "freeze: an unchosen expert moved");
    let released = adam_ref["parameters_after"][never]["norm"]
        .as_f64()
        .unwrap();
    let start_norm = start.norm().double_value(&[]);
    assert!(
        (released - start_norm).abs() > 1e-4 * start_norm,
        "the release steps unchosen experts: {released} vs {start_norm}"
    );
}

/// Each parameter's distribution at construction (our seeded init against one official
/// construction): means and standard deviations within sampling error, constants exact, and
/// the value range (uniform bounds, zero biases) the same.
#[test]
fn initialisation_is_the_released_codes() {
    let reference = load("hdmoe_reference.json");
    check_init(
        &reference["init"],
        release_spec(&reference, UnchosenExperts::Step),
    );
    let snn = load("snn_reference.json");
    let spec = snn_spec(snn["input_dim"].as_i64().unwrap());
    check_init(&snn["init"], spec);
}

/// MCAT's SNN (the genomics-only baseline): eval outputs and gradients.
#[test]
fn snn_equals_mcats() {
    let reference = load("snn_reference.json");
    let official = reference["parameters"].as_object().unwrap();
    let n = reference["input_dim"].as_i64().unwrap();
    let spec = snn_spec(n);
    let (_vs, model, names, params) = build(spec, official);
    let (mut worst_eval, mut worst_grad) = (0.0f64, 0.0f64);
    for (k, case) in reference["cases"].as_array().unwrap().iter().enumerate() {
        let x = Inputs {
            wsi: None,
            genomics: Some(vec![hashed_uniform(&format!("input.snn.{k}"), &[n])]),
            mri: None,
        };
        let want = &case["eval"];
        let out = tch::no_grad(|| model.forward_pass(&x, (1, 1), Pass::EVAL));
        for (key, got) in [("hazards", &out.hazards), ("survival", &out.survival)] {
            check_values(
                got,
                &want[key],
                1e-6,
                format!("SNN case {k}: {key}"),
                &mut worst_eval,
            );
        }
        check(
            out.risk.double_value(&[]),
            want["risk"].as_f64().unwrap(),
            1e-6,
            0.0,
            "SNN risk",
            &mut worst_eval,
        );
        let want = &case["train"];
        let out = model.forward_pass(&x, (1, 1), TRAIN_NO_DROPOUT);
        let loss = nll_survival(
            &out.hazards,
            &out.survival,
            case["time_bin"].as_i64().unwrap(),
            case["censored"].as_bool().unwrap(),
        );
        check(
            loss.double_value(&[]),
            want["loss_survival"].as_f64().unwrap(),
            1e-6,
            0.0,
            "SNN loss",
            &mut worst_eval,
        );
        check_gradients(
            &loss,
            &names,
            &params,
            &want["grads"],
            &format!("SNN case {k}"),
            &mut worst_grad,
        );
    }
    eprintln!("parity (SNN): worst relative difference, eval {worst_eval:.2e}, gradients {worst_grad:.2e}");
}

/// A checkpoint as the official code writes it (`torch.save(SNN.state_dict())`: an OrderedDict
/// in torch's zip format, float16 here to keep it small) loads by name through `predict`'s
/// loader, as it is, and gives MCAT's eval outputs for those weights.
#[test]
fn an_official_state_dict_loads_as_it_is_and_predicts_what_the_official_code_does() {
    let reference = load("snn_reference.json");
    let want = &reference["official_checkpoint"];
    let n = want["input_dim"].as_i64().unwrap();
    let spec = snn_spec(n);
    // Initialisation draws from libtorch's generator, which in-process fits rely on.
    let _generator = hdmoe_pipe::torch_rng::lock();
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = model::build(&vs.root(), spec);
    let file = fixture(&format!("parity/{}", want["file"].as_str().unwrap()));
    hdmoe_pipe::train::predict::load_checkpoint(&mut vs, &file, "snn").unwrap();
    vs.double();
    let x = Inputs {
        wsi: None,
        genomics: Some(vec![hashed_uniform("input.snn.small", &[n])]),
        mri: None,
    };
    let out = tch::no_grad(|| model.forward_pass(&x, (1, 1), Pass::EVAL));
    let mut worst = 0.0f64;
    check_values(
        &out.hazards,
        &want["hazards"],
        1e-9,
        "official checkpoint: hazards",
        &mut worst,
    );
    check(
        out.risk.double_value(&[]),
        want["risk"].as_f64().unwrap(),
        1e-9,
        0.0,
        "official checkpoint: risk",
        &mut worst,
    );
    // The HDMoE model refuses it, naming what is missing (still under the lock taken above).
    let mut vs = nn::VarStore::new(Device::Cpu);
    let _hdmoe = model::build(&vs.root(), ModelSpec::wsi_genomics(vec![n], 256));
    let err = hdmoe_pipe::train::predict::load_checkpoint(&mut vs, &file, "hdmoe")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("snn_official_state_dict.pth")
            && err.contains("parameters missing")
            && err.contains("fc_omic.0.0.weight"),
        "{err}"
    );
}
