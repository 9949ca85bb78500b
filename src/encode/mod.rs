//! Image encoders shared by the features and mri stages: the networks (torchvision-compatible
//! ResNets in libtorch), their weights, and the device they run on. Which encoders exist is
//! [`registry`]'s list; to add one, see its header.

pub mod pth;
pub mod registry;
pub mod resnet2d;
pub mod resnet3d;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("{path}: cannot read weights: {message}")]
    Unreadable { path: PathBuf, message: String },
    #[error("{path}: not a {architecture}: {message}")]
    WrongWeights {
        path: PathBuf,
        architecture: &'static str,
        message: String,
    },
    #[error("no encoder weights given: set `{key}` to torchvision's state dict (.pth or .safetensors), or pass --random-weights to run with seeded random weights (outputs are then stamped as such)")]
    NoWeights { key: &'static str },
    #[error("device `{0}`: expected auto, cpu, cuda or cuda:N")]
    BadDevice(String),
    #[error("device `{0}` asked for, but CUDA is not available to this build")]
    NoCuda(String),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

pub use registry::{Network, PatchEncoder, VolumeEncoder};

/// A residual block's output, relu(body(x) + shortcut(x)), where the shortcut is the identity
/// or the downsampling branch.
pub(crate) fn residual(body: nn::SequentialT, downsample: Option<nn::SequentialT>) -> impl ModuleT {
    nn::func_t(move |x, train| {
        let shortcut = match &downsample {
            Some(d) => x.apply_t(d, train),
            None => x.shallow_clone(),
        };
        (x.apply_t(&body, train) + shortcut).relu()
    })
}

/// Where the weights came from, as stamped into every output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightsSource {
    File {
        path: PathBuf,
        sha256: String,
    },
    /// `--random-weights`: libtorch's default initialisation from this seed.
    Random {
        seed: u64,
    },
}

impl WeightsSource {
    /// The value of the `weights_sha256` attribute.
    pub fn stamp(&self) -> String {
        match self {
            Self::File { sha256, .. } => sha256.clone(),
            Self::Random { seed } => format!("random-weights-seed-{seed} (NOT pretrained)"),
        }
    }
}

/// A built encoder with its weights, ready for inference.
pub struct Encoder {
    pub network: &'static Network,
    pub device: Device,
    pub weights: WeightsSource,
    // Holds the network's parameters.
    vs: nn::VarStore,
    net: nn::SequentialT,
}

impl Encoder {
    /// Builds `network` on `device` and loads `weights` (or seeds a random initialisation).
    pub fn new(
        network: &'static Network,
        device: Device,
        weights: Option<&Path>,
        random_seed: u64,
    ) -> Result<Self, EncodeError> {
        // From seeding to the last initialised parameter, so encoders built on several threads
        // still get their seed's weights.
        let _generator = crate::torch_rng::lock();
        if weights.is_none() {
            tch::manual_seed(random_seed as i64);
        }
        let mut vs = nn::VarStore::new(Device::Cpu);
        let net = (network.build)(&vs.root());
        let weights = match weights {
            Some(path) => {
                let sha256 = load_weights(&mut vs, path, network.weights)?;
                WeightsSource::File {
                    path: path.to_owned(),
                    sha256,
                }
            }
            None => WeightsSource::Random { seed: random_seed },
        };
        vs.set_device(device);
        Ok(Self {
            network,
            device,
            weights,
            vs,
            net,
        })
    }

    /// Casts the parameters to `kind` (Half or BFloat16 for GPU inference) and, on CUDA, lays
    /// the 4-D convolution weights out channels-last, so cuDNN runs its NHWC tensor-core kernels
    /// on channels-last inputs.
    pub fn set_precision(&mut self, kind: Kind) {
        match kind {
            Kind::Half => self.vs.half(),
            Kind::BFloat16 => self.vs.bfloat16(),
            _ => {}
        }
        if self.device.is_cuda() {
            tch::no_grad(|| {
                for (_, mut var) in self.vs.variables() {
                    if var.dim() == 4 {
                        let nhwc = var.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
                        var.set_data(&nhwc);
                    }
                }
            });
        }
    }

    /// Inference on a batch already on the encoder's device and in its precision; the
    /// result stays there.
    pub fn forward_on_device(&self, input: &Tensor) -> Tensor {
        tch::no_grad(|| self.net.forward_t(input, false))
    }

    /// Inference (batch-norm running statistics, no gradients) on `input`, moved to the
    /// encoder's device; the result comes back to the CPU as float32.
    pub fn forward(&self, input: &Tensor) -> Tensor {
        tch::no_grad(|| {
            self.net
                .forward_t(&input.to_device(self.device), false)
                .to_device(Device::Cpu)
                .to_kind(Kind::Float)
        })
    }
}

/// Parses `auto`, `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(text: &str) -> Result<Device, EncodeError> {
    let cuda = |index: usize| {
        if tch::Cuda::is_available() && (index as i64) < tch::Cuda::device_count() {
            Ok(Device::Cuda(index))
        } else {
            Err(EncodeError::NoCuda(text.to_owned()))
        }
    };
    match text.trim() {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(index)) => cuda(index),
            _ => Err(EncodeError::BadDevice(text.to_owned())),
        },
    }
}

/// Reads a state dict, whatever the file's name: `torch.save`'s zip format (`.pth`, `.pt`,
/// `.bin`, as torchvision distributes its weights) or its legacy format, holding a dict, an
/// `OrderedDict` (`model.state_dict()`) or a training checkpoint with a `state_dict` entry; or
/// safetensors.
pub fn read_state_dict(path: &Path) -> Result<HashMap<String, Tensor>, EncodeError> {
    let tensors = pth::read_tensors(path).map_err(|e| EncodeError::Unreadable {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    // DataParallel checkpoints prefix every name with `module.`.
    Ok(tensors
        .into_iter()
        .map(|(name, t)| (name.strip_prefix("module.").unwrap_or(&name).to_owned(), t))
        .collect())
}

/// Copies a state dict's tensors into `vs` by name; returns the file's sha256. Names the file
/// lacks, and shapes that differ, are errors; extra names (the classifier, BN counters) are not.
pub fn load_weights(
    vs: &mut nn::VarStore,
    path: &Path,
    architecture: &'static str,
) -> Result<String, EncodeError> {
    let state = read_state_dict(path)?;
    let wrong = |message: String| EncodeError::WrongWeights {
        path: path.to_owned(),
        architecture,
        message,
    };
    let mut variables = vs.variables();
    let mut missing: Vec<&String> = variables
        .keys()
        .filter(|k| !state.contains_key(*k))
        .collect();
    missing.sort();
    if !missing.is_empty() {
        let shown: Vec<&str> = missing.iter().take(5).map(|s| s.as_str()).collect();
        return Err(wrong(format!(
            "{} of {} parameters missing (e.g. {})",
            missing.len(),
            variables.len(),
            shown.join(", ")
        )));
    }
    for (name, var) in variables.iter_mut() {
        let source = &state[name];
        if source.size() != var.size() {
            return Err(wrong(format!(
                "`{name}` has shape {:?}, expected {:?}",
                source.size(),
                var.size()
            )));
        }
        tch::no_grad(|| var.copy_(&source.to_kind(var.kind())));
    }
    crate::cache::sha256_file(path).map_err(|e| EncodeError::Unreadable {
        path: path.to_owned(),
        message: e.to_string(),
    })
}
