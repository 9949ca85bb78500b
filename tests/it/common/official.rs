//! What the parity tests share: parameters and inputs made from their official names by the
//! fixtures' hash formula (fixtures/parity/make_reference.py `hashed`, `hashed_uniform`), our
//! model built with those weights by official name, and the comparisons against a reference's
//! values, per-tensor summaries and initial distributions.

use std::collections::{BTreeMap, BTreeSet};

use hdmoe_pipe::model::{self, ModelSpec, SurvivalModel};
use serde_json::Value;
use tch::{nn, Device, Kind, Tensor};

pub fn fnv1a32(name: &str) -> u64 {
    let mut h: u64 = 0x811C_9DC5;
    for byte in name.bytes() {
        h ^= u64::from(byte);
        h = (h * 0x0100_0193) & 0xFFFF_FFFF;
    }
    h
}

pub fn uniform(name: &str, n: usize) -> Vec<f64> {
    let base = fnv1a32(name);
    (0..n as u64)
        .map(|i| {
            let mut h = (i * 0x9E37_79B1 + base) & 0xFFFF_FFFF;
            h ^= h >> 16;
            h = (h * 0x045D_9F3B) & 0xFFFF_FFFF;
            h ^= h >> 16;
            h as f64 / 4_294_967_296.0
        })
        .collect()
}

/// make_reference.py's `hashed`: a parameter's value from its official name and shape.
pub fn hashed(name: &str, shape: &[i64]) -> Tensor {
    let n: i64 = shape.iter().product();
    let leaf = name.rsplit('.').next().unwrap_or(name);
    let fan_in = n / shape.first().copied().unwrap_or(1).max(1);
    let v: Vec<f64> = uniform(name, n as usize)
        .into_iter()
        .map(|u| match leaf {
            "bias" => 0.2 * u - 0.1,
            "weight" if shape.len() == 1 => 0.8 + 0.4 * u,
            "weight" => (2.0 * u - 1.0) * (6.0 / fan_in as f64).sqrt(),
            _ => 2.0 * u - 1.0,
        })
        .collect();
    Tensor::from_slice(&v).reshape(shape)
}

pub fn hashed_uniform(name: &str, shape: &[i64]) -> Tensor {
    let n: i64 = shape.iter().product();
    let v: Vec<f64> = uniform(name, n as usize)
        .into_iter()
        .map(|u| 2.0 * u - 1.0)
        .collect();
    Tensor::from_slice(&v).reshape(shape)
}

pub fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

pub fn as_vec(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

/// |got − want| ≤ tol · (|want| + floor): relative, with an absolute floor for values that
/// are zero or cancel (a gradient's sum or probe product).
pub fn check(got: f64, want: f64, tol: f64, floor: f64, what: &str, worst: &mut f64) {
    let error = (got - want).abs() / (want.abs() + floor);
    *worst = worst.max(error);
    assert!(error <= tol, "{what}: got {got:e}, want {want:e}");
}

/// Every element of `got` against the reference's list, relative to `tol` (floor 1e-12).
pub fn check_values(
    got: &Tensor,
    want: &Value,
    tol: f64,
    what: impl std::fmt::Display,
    worst: &mut f64,
) {
    for (g, w) in as_vec(got).iter().zip(floats(want)) {
        check(*g, w, tol, 1e-12, &what.to_string(), worst);
    }
}

/// The per-tensor summary make_reference.py records: sum, norm, probe product, four elements.
pub fn check_summary(name: &str, t: &Tensor, want: &Value, tol: f64, what: &str, worst: &mut f64) {
    let flat = as_vec(t);
    let n = flat.len();
    let norm = flat.iter().map(|x| x * x).sum::<f64>().sqrt();
    let sum: f64 = flat.iter().sum();
    let probe: f64 = uniform(&format!("probe:{name}"), n)
        .iter()
        .zip(&flat)
        .map(|(u, x)| (2.0 * u - 1.0) * x)
        .sum();
    let want_norm = want["norm"].as_f64().unwrap();
    // |sum| ≤ √n‖x‖ and |probe| ≤ ‖x‖‖p‖ ≈ ‖x‖√(n/3): cancellation floors scaled to those.
    let floor = 1e-6 * want_norm * (n as f64).sqrt() + 1e-300;
    check(
        norm,
        want_norm,
        tol,
        1e-300,
        &format!("{what} {name} norm"),
        worst,
    );
    check(
        sum,
        want["sum"].as_f64().unwrap(),
        tol,
        floor,
        &format!("{what} {name} sum"),
        worst,
    );
    check(
        probe,
        want["probe"].as_f64().unwrap(),
        tol,
        floor,
        &format!("{what} {name} probe"),
        worst,
    );
    for e in want["elements"].as_array().unwrap() {
        let k = e[0].as_u64().unwrap() as usize;
        let element_floor = 1e-6 * want_norm / (n as f64).sqrt() + 1e-300;
        check(
            flat[k],
            e[1].as_f64().unwrap(),
            tol,
            element_floor,
            &format!("{what} {name}[{k}]"),
            worst,
        );
    }
}

/// Every parameter's gradient of `loss` is defined and equals the reference's summary.
pub fn check_gradients(
    loss: &Tensor,
    names: &[String],
    params: &[Tensor],
    want: &Value,
    what: &str,
    worst: &mut f64,
) {
    let grads = Tensor::run_backward(&[loss], params, false, false);
    for (name, g) in names.iter().zip(&grads) {
        assert!(g.defined(), "{what}: `{name}` has no gradient");
        check_summary(name, g, &want[name], 1e-5, &format!("{what}: grad"), worst);
    }
}

/// Our model in float64 with the reference's hashed weights, copied in by official name.
/// Every parameter we have must be one of the official ones with the same shape and vice versa:
/// that is the name map (docs/PARAMETERS.md).
pub fn build(
    spec: ModelSpec,
    official: &serde_json::Map<String, Value>,
) -> (
    nn::VarStore,
    Box<dyn SurvivalModel>,
    Vec<String>,
    Vec<Tensor>,
) {
    // Initialisation draws from libtorch's generator, which in-process fits rely on.
    let _generator = hdmoe_pipe::torch_rng::lock();
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = model::build(&vs.root(), spec);
    vs.double();
    let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    let ours: BTreeSet<&str> = variables.iter().map(|(n, _)| n.as_str()).collect();
    let theirs: BTreeSet<&str> = official.keys().map(String::as_str).collect();
    assert_eq!(
        ours.symmetric_difference(&theirs).collect::<Vec<_>>(),
        Vec::<&&str>::new(),
        "parameter names differ from the official state dict's"
    );
    tch::no_grad(|| {
        for (name, var) in &variables {
            let shape: Vec<i64> = official[name]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_i64().unwrap())
                .collect();
            assert_eq!(var.size(), shape, "{name}: shape");
            var.shallow_clone().copy_(&hashed(name, &shape));
        }
    });
    let (names, params): (Vec<String>, Vec<Tensor>) = variables.into_iter().unzip();
    (vs, model, names, params)
}

pub fn check_init(init: &Value, spec: ModelSpec) {
    // Initialisation draws from libtorch's generator, which in-process fits rely on.
    let _generator = hdmoe_pipe::torch_rng::lock();
    tch::manual_seed(11);
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = model::build(&vs.root(), spec);
    let variables: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    assert_eq!(variables.len(), init.as_object().unwrap().len());
    for (name, want) in init.as_object().unwrap() {
        let t = variables
            .get(name)
            .unwrap_or_else(|| panic!("no parameter `{name}`"))
            .to_kind(Kind::Double)
            .flatten(0, -1);
        let n = t.size()[0] as f64;
        let (mean, std) = (
            t.mean(Kind::Double).double_value(&[]),
            t.std(false).double_value(&[]),
        );
        let (min, max) = (t.min().double_value(&[]), t.max().double_value(&[]));
        let want_std = want["std"].as_f64().unwrap();
        let want_mean = want["mean"].as_f64().unwrap();
        if want_std == 0.0 && n == 1.0 {
            // One drawn element (an attention head's bias of size 1): a single value says
            // nothing about the distribution.
            continue;
        }
        if want_std == 0.0 {
            assert_eq!((mean, std), (want_mean, 0.0), "{name}: a constant");
            continue;
        }
        // Two independent samples of n: the difference of means has sd σ√(2/n), of standard
        // deviations about σ√(1/n); 6 of those is far outside chance, and a wrong scheme (tch's
        // kaiming-uniform is 1.4-2.6x the release's spread) lies far outside it.
        let se = want_std * (2.0 / n).sqrt();
        assert!(
            (mean - want_mean).abs() <= 6.0 * se,
            "{name}: mean {mean:e}, release {want_mean:e} (se {se:e})"
        );
        assert!(
            (std - want_std).abs() <= 6.0 * want_std / n.sqrt() + 1e-12,
            "{name}: std {std:e}, release {want_std:e}"
        );
        // A uniform init (range ≈ 2√3 σ, where a normal sample's is wider) has hard bounds:
        // ours must lie inside the release's.
        let (want_min, want_max) = (want["min"].as_f64().unwrap(), want["max"].as_f64().unwrap());
        let range = want_max - want_min;
        // (Only with enough elements for the sample's extremes to near the bounds.)
        if range <= 3.6 * want_std && n >= 64.0 {
            assert!(
                min >= want_min - 0.02 * range && max <= want_max + 0.02 * range,
                "{name}: range [{min:e}, {max:e}], release [{want_min:e}, {want_max:e}]"
            );
        }
    }
}
