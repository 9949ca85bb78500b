//! torchvision's ResNet-50 (v1.5: stride on the 3×3 convolution) with torchvision's parameter
//! names, so its ImageNet state dict loads as it is. `trunc` stops after layer3 (CLAM's
//! `resnet50_trunc`, 1024-d); the full network gives 2048-d. Both end in global average
//! pooling; the classifier is never built.

use tch::nn::{self, ConvConfig, ModuleT};

use super::registry::{Network, PatchEncoder, VolumeEncoder, VolumeInput, IMAGENET};

const WEIGHTS: &str = "torchvision resnet50 state dict";

/// ResNet-50 through layer3, average pooled: 1024-d (CLAM, the MCAT family).
pub static RESNET50_TRUNC: PatchEncoder = PatchEncoder {
    network: Network {
        name: "resnet50_trunc",
        feature_dim: 1024,
        weights: WEIGHTS,
        build: truncated,
    },
    input_size: None,
    normalization: IMAGENET,
};

/// The full ResNet-50, average pooled: 2048-d.
pub static RESNET50: PatchEncoder = PatchEncoder {
    network: Network {
        name: "resnet50",
        feature_dim: 2048,
        weights: WEIGHTS,
        build: full,
    },
    input_size: None,
    normalization: IMAGENET,
};

/// The full 2-D ResNet-50 over a volume's axial slices, averaged: 2048-d.
pub static RESNET50_SLICES: VolumeEncoder = VolumeEncoder {
    network: Network {
        name: "resnet50_slices",
        feature_dim: 2048,
        weights: WEIGHTS,
        build: full,
    },
    input: VolumeInput::AxialSlices,
};

fn conv(vs: nn::Path, i: i64, o: i64, k: i64, stride: i64, padding: i64) -> nn::Conv2D {
    let config = ConvConfig {
        stride,
        padding,
        bias: false,
        ..Default::default()
    };
    nn::conv2d(vs, i, o, k, config)
}

fn bottleneck(vs: nn::Path, inplanes: i64, planes: i64, stride: i64) -> impl ModuleT {
    let width = planes;
    let out = planes * 4;
    let conv1 = conv(&vs / "conv1", inplanes, width, 1, 1, 0);
    let bn1 = nn::batch_norm2d(&vs / "bn1", width, Default::default());
    let conv2 = conv(&vs / "conv2", width, width, 3, stride, 1);
    let bn2 = nn::batch_norm2d(&vs / "bn2", width, Default::default());
    let conv3 = conv(&vs / "conv3", width, out, 1, 1, 0);
    let bn3 = nn::batch_norm2d(&vs / "bn3", out, Default::default());
    let downsample = (stride != 1 || inplanes != out).then(|| {
        nn::seq_t()
            .add(conv(&vs / "downsample" / "0", inplanes, out, 1, stride, 0))
            .add(nn::batch_norm2d(
                &vs / "downsample" / "1",
                out,
                Default::default(),
            ))
    });
    let body = nn::seq_t()
        .add(conv1)
        .add(bn1)
        .add_fn(|x| x.relu())
        .add(conv2)
        .add(bn2)
        .add_fn(|x| x.relu())
        .add(conv3)
        .add(bn3);
    super::residual(body, downsample)
}

fn layer(vs: nn::Path, inplanes: i64, planes: i64, blocks: i64, stride: i64) -> nn::SequentialT {
    let mut seq = nn::seq_t().add(bottleneck(&vs / "0", inplanes, planes, stride));
    for b in 1..blocks {
        seq = seq.add(bottleneck(&vs / b.to_string(), planes * 4, planes, 1));
    }
    seq
}

/// Output width: 1024 for the truncated network, 2048 for the full one.
pub fn feature_dim(trunc: bool) -> i64 {
    if trunc {
        1024
    } else {
        2048
    }
}

fn truncated(vs: &nn::Path) -> nn::SequentialT {
    resnet50(vs, true)
}

fn full(vs: &nn::Path) -> nn::SequentialT {
    resnet50(vs, false)
}

/// Input [N, 3, H, W] (ImageNet-normalised RGB), output [N, feature_dim].
pub fn resnet50(vs: &nn::Path, trunc: bool) -> nn::SequentialT {
    let mut net = nn::seq_t()
        .add(conv(vs / "conv1", 3, 64, 7, 2, 3))
        .add(nn::batch_norm2d(vs / "bn1", 64, Default::default()))
        .add_fn(|x| x.relu().max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false))
        .add(layer(vs / "layer1", 64, 64, 3, 1))
        .add(layer(vs / "layer2", 256, 128, 4, 2))
        .add(layer(vs / "layer3", 512, 256, 6, 2));
    if !trunc {
        net = net.add(layer(vs / "layer4", 1024, 512, 3, 2));
    }
    net.add_fn(|x| x.adaptive_avg_pool2d([1, 1]).flatten(1, -1))
}
