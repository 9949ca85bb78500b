//! torchvision's `r3d_18` (3-D ResNet-18, Kinetics architecture) with torchvision's parameter
//! names, so Kinetics or MedicalNet-style state dicts load as they are. Ends in global average
//! pooling (512-d); the classifier is never built.

use tch::nn::{self, ConvConfigND, ModuleT};

use super::registry::{Network, VolumeEncoder, VolumeInput};

/// torchvision's `r3d_18`, average pooled: 512-d.
pub static R3D_18: VolumeEncoder = VolumeEncoder {
    network: Network {
        name: "resnet3d_18",
        feature_dim: FEATURE_DIM,
        weights: "torchvision r3d_18 state dict",
        build: r3d_18,
    },
    input: VolumeInput::Clip,
};

fn conv3(
    vs: nn::Path,
    i: i64,
    o: i64,
    kernel: [i64; 3],
    stride: [i64; 3],
    padding: [i64; 3],
) -> nn::Conv<[i64; 3]> {
    let config = ConvConfigND {
        stride,
        padding,
        dilation: [1, 1, 1],
        groups: 1,
        bias: false,
        ws_init: nn::init::DEFAULT_KAIMING_UNIFORM,
        bs_init: nn::Init::Const(0.0),
        padding_mode: nn::PaddingMode::Zeros,
    };
    nn::conv(vs, i, o, kernel, config)
}

fn basic_block(vs: nn::Path, inplanes: i64, planes: i64, stride: i64) -> impl ModuleT {
    let s = [stride; 3];
    let conv1 = conv3(&vs / "conv1" / "0", inplanes, planes, [3; 3], s, [1; 3]);
    let bn1 = nn::batch_norm3d(&vs / "conv1" / "1", planes, Default::default());
    let conv2 = conv3(&vs / "conv2" / "0", planes, planes, [3; 3], [1; 3], [1; 3]);
    let bn2 = nn::batch_norm3d(&vs / "conv2" / "1", planes, Default::default());
    let downsample = (stride != 1 || inplanes != planes).then(|| {
        nn::seq_t()
            .add(conv3(
                &vs / "downsample" / "0",
                inplanes,
                planes,
                [1; 3],
                s,
                [0; 3],
            ))
            .add(nn::batch_norm3d(
                &vs / "downsample" / "1",
                planes,
                Default::default(),
            ))
    });
    let body = nn::seq_t()
        .add(conv1)
        .add(bn1)
        .add_fn(|x| x.relu())
        .add(conv2)
        .add(bn2);
    super::residual(body, downsample)
}

pub const FEATURE_DIM: i64 = 512;

/// Input [N, 3, T, H, W], output [N, 512].
pub fn r3d_18(vs: &nn::Path) -> nn::SequentialT {
    let mut net = nn::seq_t()
        .add(conv3(
            vs / "stem" / "0",
            3,
            64,
            [3, 7, 7],
            [1, 2, 2],
            [1, 3, 3],
        ))
        .add(nn::batch_norm3d(vs / "stem" / "1", 64, Default::default()))
        .add_fn(|x| x.relu());
    let mut inplanes = 64;
    for (index, (planes, stride)) in [(64, 1), (128, 2), (256, 2), (512, 2)]
        .into_iter()
        .enumerate()
    {
        let layer = vs / format!("layer{}", index + 1);
        net = net
            .add(basic_block(&layer / "0", inplanes, planes, stride))
            .add(basic_block(&layer / "1", planes, planes, 1));
        inplanes = planes;
    }
    net.add_fn(|x| x.adaptive_avg_pool3d([1, 1, 1]).flatten(1, -1))
}
