//! Link-time set-up for libtorch from the PyPI `torch` wheel.
//!
//! torch-sys (a direct dependency, `links = "tch"`) tells us where libtorch lives through
//! `DEP_TCH_LIBTORCH_LIB`. Two things go wrong without this script:
//! - the binary has no rpath to that directory, so it only starts with LD_LIBRARY_PATH set;
//! - `--as-needed` drops `libtorch_cuda.so` (nothing references it by symbol), so CUDA is
//!   silently unavailable even on a GPU machine.
use std::env;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib_dir) = env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    // `hdmoe-pipe doctor` reports which libtorch this binary was linked against.
    println!("cargo:rustc-env=HDMOE_LIBTORCH_LIB={lib_dir}");
    // The wheel's torch/version.py (one level above lib/) names the libtorch release.
    let version_py = Path::new(&lib_dir).join("../version.py");
    println!("cargo:rerun-if-changed={}", version_py.display());
    let version = std::fs::read_to_string(&version_py)
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("__version__ = "))
                .map(|v| v.trim().trim_matches('\'').to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=HDMOE_TORCH_VERSION={version}");
    if Path::new(&lib_dir).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
