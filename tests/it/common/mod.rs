//! Helpers shared by the integration tests: fixture paths and the reference survival datasets.
#![allow(dead_code)]

pub mod metrics;
pub mod official;

use std::path::{Path, PathBuf};

/// Stage options as the command line's flags set them.
pub fn options(
    force: bool,
    random_weights: bool,
    shard: hdmoe_pipe::shard::Shard,
) -> hdmoe_pipe::stage::StageOptions {
    hdmoe_pipe::stage::StageOptions {
        force,
        random_weights,
        shard,
    }
}

/// `--force` or not, nothing else.
pub fn forced(force: bool) -> hdmoe_pipe::stage::StageOptions {
    options(force, false, hdmoe_pipe::shard::Shard::ALL)
}

/// A file under `fixtures/`; `HDMOE_REPO` names the repository root when a test binary runs
/// away from the tree it was built in (the GPU script does that).
pub fn fixture(rel: &str) -> PathBuf {
    let root = std::env::var_os("HDMOE_REPO")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf());
    root.join("fixtures").join(rel)
}

/// Relative agreement to 1e-6 (stricter than the absolute 1e-6 asked for wherever |want| < 1,
/// and meaningful for p-values near 1e-11).
pub fn assert_close(got: f64, want: f64, what: &str) {
    let tolerance = 1e-6 * want.abs();
    assert!(
        got == want || (got - want).abs() <= tolerance,
        "{what}: got {got:e}, want {want:e}"
    );
}

/// One reference dataset: the JSON of expected values and its (time, event, risk) columns.
pub struct Reference {
    pub name: String,
    pub json: serde_json::Value,
    pub time: Vec<f64>,
    pub event: Vec<bool>,
    pub risk: Vec<f64>,
}

pub const REFERENCES: [&str; 4] = ["rossi", "lung", "gbsg2", "breast_cancer_gse7390"];

pub fn reference(name: &str) -> Reference {
    let path = fixture(&format!("survival/reference/{name}.json"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let input = &json["input"];
    let file = fixture(&format!("survival/{}", input["file"].as_str().unwrap()));
    let column = |key: &str| input[key].as_str().unwrap().to_owned();
    let (time_col, event_col, risk_col) = (
        column("time_column"),
        column("event_column"),
        column("risk"),
    );
    // Written as a string ("1") in the JSON; the CSVs hold 1 or 1.0.
    let event_value: f64 = match &input["event_value"] {
        serde_json::Value::String(s) => s.parse().unwrap(),
        other => other.as_f64().unwrap(),
    };

    let mut reader = csv::Reader::from_path(&file).unwrap();
    let headers = reader.headers().unwrap().clone();
    let at = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let (ti, ei, ri) = (at(&time_col), at(&event_col), at(&risk_col));
    let (mut time, mut event, mut risk) = (Vec::new(), Vec::new(), Vec::new());
    for record in reader.records() {
        let record = record.unwrap();
        let parse = |i: usize| {
            record[i]
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
        };
        // Rows with a missing value in any of the three columns are dropped, as in the reference.
        if let (Some(t), Some(e), Some(r)) = (parse(ti), parse(ei), parse(ri)) {
            time.push(t);
            event.push(e == event_value);
            risk.push(r);
        }
    }
    assert_eq!(time.len() as u64, input["n"].as_u64().unwrap(), "{name}: n");
    Reference {
        name: name.to_owned(),
        json,
        time,
        event,
        risk,
    }
}

/// The deterministic pseudo-random tensor that fixtures/encoders/make_reference.py defines
/// (see its docstring): a function of the tensor's name and shape only.
pub fn hashed_tensor(name: &str, shape: &[i64]) -> tch::Tensor {
    let mut base: u64 = 0x811C_9DC5;
    for byte in name.bytes() {
        base ^= u64::from(byte);
        base = (base * 0x0100_0193) & 0xFFFF_FFFF;
    }
    let n: i64 = shape.iter().product();
    let leaf = name.rsplit('.').next().unwrap_or(name);
    let fan_in = if shape.is_empty() { 1 } else { n / shape[0] };
    let values: Vec<f32> = (0..n as u64)
        .map(|i| {
            let mut h = (i * 0x9E37_79B1 + base) & 0xFFFF_FFFF;
            h ^= h >> 16;
            h = (h * 0x045D_9F3B) & 0xFFFF_FFFF;
            h ^= h >> 16;
            let u = h as f64 / 4_294_967_296.0;
            let v = match leaf {
                "running_var" => 0.5 + u,
                "running_mean" | "bias" => 0.2 * u - 0.1,
                "weight" if shape.len() == 1 => 0.8 + 0.4 * u,
                "weight" => (2.0 * u - 1.0) * (6.0 / fan_in as f64).sqrt(),
                _ => 2.0 * u - 1.0,
            };
            v as f32
        })
        .collect();
    tch::Tensor::from_slice(&values).reshape(shape)
}

/// Writes the hashed weights of every parameter `network` has to a safetensors file in `dir`
/// (the state dict fixtures/encoders/make_reference.py gives torchvision).
pub fn hashed_weights(
    network: &hdmoe_pipe::encode::Network,
    dir: &std::path::Path,
) -> std::path::PathBuf {
    use tch::{nn, Device, Tensor};
    // Initialisation draws from libtorch's generator, which in-process fits rely on.
    let _generator = hdmoe_pipe::torch_rng::lock();
    let vs = nn::VarStore::new(Device::Cpu);
    drop((network.build)(&vs.root()));
    let named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(name, t)| {
            let value = hashed_tensor(&name, &t.size());
            (name, value)
        })
        .collect();
    let path = dir.join(format!("{}.safetensors", network.name));
    Tensor::write_safetensors(&named, &path).expect("write safetensors");
    path
}

/// `dir/slides` holding copies of the named fixture slides (fixtures/slides/<name>).
pub fn copy_slides(dir: &Path, names: &[&str]) -> PathBuf {
    let slides = dir.join("slides");
    std::fs::create_dir_all(&slides).expect("slides folder");
    for name in names {
        std::fs::copy(fixture(&format!("slides/{name}")), slides.join(name))
            .expect("copy fixture slide");
    }
    slides
}

/// Unit roundoff (half the machine epsilon) of float32: 2^-24.
pub const U_F32: f64 = f32::EPSILON as f64 / 2.0;
/// Unit roundoff of TF32 and of float16 (10 explicit mantissa bits): 2^-11.
pub const U_F16: f64 = 1.0 / 2048.0;
/// Unit roundoff of bfloat16 (7 explicit mantissa bits): 2^-8.
pub const U_BF16: f64 = 1.0 / 256.0;

/// How far rounding may move a ResNet's output from its exact value, as a fraction of the
/// output's largest magnitude:
/// `2 · sqrt(depth) · (sqrt(roundings) · u_operands + U_F32 · sqrt(fan_in))`.
///
/// - `depth`: convolutions on the longest path (a layer is a convolution with its BN, ReLU and
///   shortcut add), plus one for an input computed in the working precision.
/// - `fan_in`: the largest fan-in (k·k·c_in) of those convolutions; the sums run in float32 on
///   every path we have (CPU float32; cuDNN's TF32, fp16 and bf16 kernels accumulate in float32).
/// - `u_operands`, `roundings`: the unit roundoff of the format the layer's values are rounded
///   to and how many times each value is, per layer (float32 on the CPU: the BN output and the
///   shortcut add, 2; TF32: the weight and the input of the convolution, 2; fp16 and bf16:
///   the weight and the stored convolution, BN and add outputs, 4).
///
/// Derivation. One output of a layer is y = Σ_{i≤n} w_i·x_i. Summing n terms of random sign
/// and size σ recursively rounds each partial sum s_k (|s_k| ≈ √k·σ) by ≤ u·|s_k|; these
/// independent errors total ≈ u·σ·n/√2 while |y| ≈ √n·σ: ≈ u·√n relative (blocked GEMM and
/// pairwise sums do better). Rounding each value r times perturbs each product by ≤ r·u at
/// random signs: ≈ √r·u relative to y. A layer's error then passes through the following
/// layers, which keep a perturbation's relative size about constant (BN gains near 1, ReLU,
/// identity shortcuts) while adding their own, independent of it: L layers add in quadrature,
/// √L times one layer's. The final average pool only averages independent errors down. The
/// factor 2 (eps32 = 2·u32) is the margin on these one-sigma estimates.
///
/// Against the float64 references (fixtures/*/make_reference.py) the measured float32 errors
/// are 50-200 times below this (1.9e-7 to 7.4e-7 against bounds of 3.7e-5 to 5.9e-5, on an
/// AVX-512 CPU with its own kernels, ATEN_CPU_CAPABILITY=avx2 or default, and
/// ONEDNN_MAX_CPU_ISA=AVX2), and torchvision run wholly in fp16 or bf16 on the CPU 11-14 times
/// below the fp16 and bf16 bounds. Real defects are above it: in float32, a batch-norm eps of
/// 2e-5 instead of torchvision's 1e-5 moves the resnet50 output by 1.8e-4 of its scale (3 times
/// the bound; tests/it/encoders.rs checks that it fails), an eps of 1e-4 by 1.6e-3, a dropped ReLU
/// (layer3's last block) by 1.3, and computing in fp16 or bf16 instead by 1e-3 or 9e-3.
pub fn rounding_bound(u_operands: f64, roundings: f64, fan_in: i64, depth: i64) -> f64 {
    2.0 * (depth as f64).sqrt() * (roundings.sqrt() * u_operands + U_F32 * (fan_in as f64).sqrt())
}

/// A JSON array of equal-length number rows, flattened, with the row length.
pub fn json_rows(value: &serde_json::Value) -> (Vec<f64>, usize) {
    let rows = value.as_array().expect("rows");
    let width = rows.first().and_then(|r| r.as_array()).map_or(0, Vec::len);
    let flat: Vec<f64> = rows
        .iter()
        .flat_map(|r| {
            let r = r.as_array().expect("row");
            assert_eq!(r.len(), width, "ragged rows");
            r.iter().map(|v| v.as_f64().expect("number"))
        })
        .collect();
    (flat, width)
}

/// The worst row's max |got - want| / max |want| (the error as a fraction of the output's
/// scale) and the worst row's ||got - want||₂ / ||want||₂, rows being `width` values long.
pub fn scaled_errors(got: &[f64], want: &[f64], width: usize) -> (f64, f64) {
    assert_eq!(got.len(), want.len(), "output sizes differ");
    assert!(width > 0 && want.len() % width == 0, "width {width}");
    // NaN, which `f64::max` would drop, counts as the worst.
    let worse = |m: f64, v: f64| {
        if m.is_nan() || v.is_nan() {
            f64::NAN
        } else {
            m.max(v)
        }
    };
    let (mut max_over_max, mut relative_l2) = (0f64, 0f64);
    for (g, w) in got.chunks(width).zip(want.chunks(width)) {
        let scale = w.iter().fold(0f64, |m, v| m.max(v.abs()));
        let norm = w.iter().map(|v| v * v).sum::<f64>().sqrt();
        assert!(scale > 0.0, "a reference row is all zeros");
        let worst = g
            .iter()
            .zip(w)
            .fold(0f64, |m, (a, b)| worse(m, (a - b).abs()));
        let l2 = g
            .iter()
            .zip(w)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>()
            .sqrt();
        max_over_max = worse(max_over_max, worst / scale);
        relative_l2 = worse(relative_l2, l2 / norm);
    }
    (max_over_max, relative_l2)
}

/// A tensor's values as float64, row-major.
pub fn tensor_values(t: &tch::Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_kind(tch::Kind::Double).reshape([-1])).expect("tensor values")
}
