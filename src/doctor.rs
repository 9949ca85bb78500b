//! `hdmoe-pipe doctor`: what this build runs on (libtorch, CUDA), for bug reports and for
//! checking a GPU node before a long run.

/// One line per fact, `name: value`.
pub fn facts() -> Vec<(String, String)> {
    let libtorch = option_env!("HDMOE_LIBTORCH_LIB").unwrap_or("(not recorded at build time)");
    let cuda = tch::Cuda::is_available();
    let mut facts = vec![
        ("hdmoe-pipe".to_owned(), crate::VERSION.to_owned()),
        (
            "libtorch".to_owned(),
            format!(
                "{} ({libtorch})",
                option_env!("HDMOE_TORCH_VERSION").unwrap_or("unknown")
            ),
        ),
        (
            "openslide".to_owned(),
            openslide_rs::OpenSlide::version().unwrap_or_else(|e| format!("unknown ({e})")),
        ),
        ("hdf5".to_owned(), {
            let (major, minor, patch) = hdf5::library_version();
            format!("{major}.{minor}.{patch}")
        }),
        (
            "libtorch threads".to_owned(),
            tch::utils::get_num_threads().to_string(),
        ),
        ("cuda available".to_owned(), cuda.to_string()),
        (
            "cuda devices".to_owned(),
            tch::Cuda::device_count().to_string(),
        ),
    ];
    if cuda {
        facts.push((
            "cudnn available".to_owned(),
            tch::Cuda::cudnn_is_available().to_string(),
        ));
    }
    facts
}
