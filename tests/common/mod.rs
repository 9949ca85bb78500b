//! Helpers shared by the integration tests: fixture paths and the reference survival datasets.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

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

/// Writes the hashed weights of every parameter `kind` has to a safetensors file in `dir`
/// (the state dict fixtures/encoders/make_reference.py gives torchvision).
pub fn hashed_weights(
    kind: hdmoe_pipe::encode::EncoderKind,
    dir: &std::path::Path,
) -> std::path::PathBuf {
    use hdmoe_pipe::encode::EncoderKind;
    use tch::{nn, Device, Tensor};
    let vs = nn::VarStore::new(Device::Cpu);
    match kind {
        EncoderKind::Resnet3d18 => drop(hdmoe_pipe::encode::resnet3d::r3d_18(&vs.root())),
        _ => drop(hdmoe_pipe::encode::resnet2d::resnet50(&vs.root(), false)),
    }
    let named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(name, t)| {
            let value = hashed_tensor(&name, &t.size());
            (name, value)
        })
        .collect();
    let path = dir.join(format!("{}.safetensors", kind.name()));
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
