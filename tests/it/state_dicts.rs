//! `read_state_dict` on every form torch.save writes (fixtures/state_dicts/, made by
//! make_state_dicts.py with torch itself), checked against the values torch wrote.

use crate::common;

use common::fixture;
use hdmoe_pipe::encode::{read_state_dict, EncodeError};
use tch::Kind;

fn expected() -> serde_json::Value {
    let path = fixture("state_dicts/expected.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn kind(dtype: &str) -> Kind {
    match dtype {
        "float32" => Kind::Float,
        "float64" => Kind::Double,
        "float16" => Kind::Half,
        "bfloat16" => Kind::BFloat16,
        "int64" => Kind::Int64,
        "int32" => Kind::Int,
        "uint8" => Kind::Uint8,
        "bool" => Kind::Bool,
        other => panic!("expected.json has dtype {other}"),
    }
}

#[test]
fn every_form_reads_as_torch_wrote_it() {
    let expected = expected();
    let files = expected["files"].as_object().unwrap();
    assert_eq!(files.len(), 8);
    for (file, names) in files {
        let state = read_state_dict(&fixture(&format!("state_dicts/{file}")))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let mut got: Vec<&String> = state.keys().collect();
        got.sort();
        let want: Vec<&str> = names
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        assert_eq!(got, want, "{file}: names");
        for name in want {
            let spec = &expected["tensors"][name];
            let tensor = &state[name];
            let what = format!("{file}: {name}");
            assert_eq!(
                tensor.kind(),
                kind(spec["dtype"].as_str().unwrap()),
                "{what}"
            );
            let shape: Vec<i64> = spec["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_i64().unwrap())
                .collect();
            assert_eq!(tensor.size(), shape, "{what}: shape");
            assert!(tensor.is_contiguous(), "{what}: not contiguous");
            let values: Vec<f64> = Vec::try_from(&tensor.to_kind(Kind::Double).flatten(0, -1))
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let want: Vec<f64> = spec["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert_eq!(values.len(), want.len(), "{what}: element count");
            for (i, (&g, &w)) in values.iter().zip(&want).enumerate() {
                // Every dtype here converts to float64 exactly; the slack only covers JSON's
                // decimal round trip.
                assert!(
                    g == w || (g - w).abs() <= 1e-15 * w.abs(),
                    "{what}[{i}]: got {g:e}, want {w:e}"
                );
            }
        }
    }
}

#[test]
fn views_of_one_storage_come_back_as_separate_layouts() {
    let state = read_state_dict(&fixture("state_dicts/plain_dict.pth")).unwrap();
    let base = &state["view.base"];
    assert!(state["view.transposed"].equal(&base.tr()));
    assert!(state["view.slice"].equal(&base.narrow(0, 1, 2).narrow(1, 2, 3)));
    assert!(state["view.every_other"].equal(&base.slice(1, 0, 6, 2)));
}

#[test]
fn the_encoder_fixtures_still_read() {
    // A plain dict by torch.save, and the same by safetensors (tests/it/encoders.rs uses them).
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
            assert!(
                state[name].equal(&common::hashed_tensor(name, &shape)),
                "{file}: {name} differs"
            );
        }
    }
}

fn assert_unreadable(path: &std::path::Path, what: &str) -> String {
    match read_state_dict(path) {
        Err(EncodeError::Unreadable {
            path: named,
            message,
        }) => {
            assert_eq!(named, path, "{what}: names another path");
            let shown = EncodeError::Unreadable {
                path: named,
                message: message.clone(),
            }
            .to_string();
            assert!(
                shown.contains(&path.display().to_string()),
                "{what}: {shown}"
            );
            message
        }
        Err(other) => panic!("{what}: {other}"),
        Ok(state) => panic!("{what}: read {} tensors", state.len()),
    }
}

#[test]
fn files_that_are_not_checkpoints_are_unreadable() {
    let message = assert_unreadable(&fixture("tcga/signatures.csv"), "a CSV");
    assert!(message.contains("not a PyTorch checkpoint"), "{message}");
    assert!(message.contains("found text starting"), "{message}");

    let dir = tempfile::tempdir().unwrap();
    for file in [
        "ordered_zip.pth",
        "ordered_legacy.pth",
        "checkpoint.pth.tar",
    ] {
        let bytes = std::fs::read(fixture(&format!("state_dicts/{file}"))).unwrap();
        for cut in [bytes.len() / 3, bytes.len() * 2 / 3, bytes.len() - 1] {
            let path = dir.path().join(format!("cut_{cut}_{file}"));
            std::fs::write(&path, &bytes[..cut]).unwrap();
            assert_unreadable(&path, &format!("{file} cut at {cut} bytes"));
        }
    }

    let empty = dir.path().join("empty.pth");
    std::fs::write(&empty, b"").unwrap();
    let message = assert_unreadable(&empty, "an empty file");
    assert!(message.contains("empty"), "{message}");

    let missing = dir.path().join("missing.pth");
    assert_unreadable(&missing, "a missing file");
}
