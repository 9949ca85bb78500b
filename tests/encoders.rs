//! Our libtorch ResNets against torchvision's, on the same deterministic weights and inputs
//! (fixtures/encoders/make_reference.py), to 1e-4; and reading state dicts in both file forms.

mod common;

use std::path::Path;

use common::{fixture, hashed_tensor, hashed_weights};
use hdmoe_pipe::encode::{read_state_dict, EncodeError, Encoder, EncoderKind};
use tch::Device;

fn reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("encoders/reference.json")).unwrap())
        .unwrap()
}

fn check(kind: EncoderKind, key: &str, weights: &Path) {
    // The reference ran on one thread; float32 sums in another order differ by up to 2e-4
    // relative on these deep, large-valued activations (PyTorch against itself on 2 threads).
    tch::set_num_threads(1);
    let want = &reference()[key];
    let shape: Vec<i64> = want["input_shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let encoder = Encoder::new(kind, Device::Cpu, Some(weights), 0).unwrap();
    let got = encoder.forward(&hashed_tensor("input", &shape));
    let rows = want["output"].as_array().unwrap();
    assert_eq!(
        got.size(),
        vec![rows.len() as i64, kind.feature_dim()],
        "{key}"
    );
    let mut worst = 0.0f64;
    for (r, row) in rows.iter().enumerate() {
        for (c, value) in row.as_array().unwrap().iter().enumerate() {
            let want = value.as_f64().unwrap();
            let got = got.double_value(&[r as i64, c as i64]);
            worst = worst.max((got - want).abs() / want.abs().max(1.0));
        }
    }
    assert!(worst <= 1e-4, "{key}: worst relative difference {worst:e}");
}

#[test]
fn resnet50_full_and_truncated_match_torchvision() {
    let dir = tempfile::tempdir().unwrap();
    let weights = hashed_weights(EncoderKind::Resnet50, dir.path());
    check(EncoderKind::Resnet50, "resnet50", &weights);
    check(EncoderKind::Resnet50Trunc, "resnet50_trunc", &weights);
}

#[test]
fn r3d_18_matches_torchvision() {
    let dir = tempfile::tempdir().unwrap();
    let weights = hashed_weights(EncoderKind::Resnet3d18, dir.path());
    check(EncoderKind::Resnet3d18, "r3d_18", &weights);
}

#[test]
fn state_dicts_load_from_pth_and_safetensors() {
    for file in [
        "encoders/small_state_dict.pth",
        "encoders/small_state_dict.safetensors",
    ] {
        let state = read_state_dict(&fixture(file)).unwrap();
        assert_eq!(state.len(), 3, "{file}");
        for (name, shape) in [
            ("stem.0.weight", vec![64, 3, 3, 7, 7]),
            ("stem.1.running_var", vec![64]),
            ("fc.bias", vec![400]),
        ] {
            let got = &state[name];
            let want = hashed_tensor(name, &shape);
            assert!(got.equal(&want), "{file}: {name} differs");
        }
    }
}

#[test]
fn wrong_or_missing_weights_are_refused() {
    // A partial state dict (3 tensors) is not an r3d_18 state dict.
    let err = Encoder::new(
        EncoderKind::Resnet3d18,
        Device::Cpu,
        Some(&fixture("encoders/small_state_dict.pth")),
        0,
    )
    .err()
    .unwrap();
    assert!(matches!(err, EncodeError::WrongWeights { .. }), "{err}");
    assert!(err.to_string().contains("parameters missing"), "{err}");
    let err = Encoder::new(
        EncoderKind::Resnet50,
        Device::Cpu,
        Some(&fixture("tcga/signatures.csv")),
        0,
    )
    .err()
    .unwrap();
    assert!(
        err.to_string()
            .contains("signatures.csv: cannot read weights"),
        "{err}"
    );
    // Random weights are seeded: the same seed gives the same encoder.
    let x = hashed_tensor("input", &[1, 3, 4, 16, 16]);
    let a = Encoder::new(EncoderKind::Resnet3d18, Device::Cpu, None, 7)
        .unwrap()
        .forward(&x);
    let b = Encoder::new(EncoderKind::Resnet3d18, Device::Cpu, None, 7)
        .unwrap()
        .forward(&x);
    assert!(a.equal(&b));
}
