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
    if Path::new(&lib_dir).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
