//! Layers initialised as the HDMoE release initialises them (MODEL_SPEC 2.4), not as tch's
//! defaults do (kaiming-uniform with a ReLU gain, uniform bias for Linear; zero bias for
//! convolutions): the release runs `initialize_weights` over the whole model (every
//! `nn.Linear` xavier-normal with zero bias, LayerNorm 1/0) and leaves the convolutions and the
//! router at PyTorch's defaults.

use tch::nn::{self, Init};

/// nn.Linear after the release's `initialize_weights`: xavier-normal weight (gain 1), zero bias.
pub fn xavier_linear(vs: nn::Path, input: i64, output: i64, bias: bool) -> nn::Linear {
    let std = (2.0 / (input + output) as f64).sqrt();
    nn::linear(
        vs,
        input,
        output,
        nn::LinearConfig {
            ws_init: Init::Randn {
                mean: 0.0,
                stdev: std,
            },
            bs_init: bias.then_some(Init::Const(0.0)),
            bias,
        },
    )
}

/// nn.Linear as MCAT's `init_max_weights` leaves it: N(0, 1/√fan_in) weight, zero bias.
pub fn max_linear(vs: nn::Path, input: i64, output: i64) -> nn::Linear {
    nn::linear(
        vs,
        input,
        output,
        nn::LinearConfig {
            ws_init: Init::Randn {
                mean: 0.0,
                stdev: 1.0 / (input as f64).sqrt(),
            },
            bs_init: Some(Init::Const(0.0)),
            bias: true,
        },
    )
}

/// nn.Linear with PyTorch's defaults (the baselines that run no initialiser): weight and bias
/// U(±1/√fan_in).
pub fn torch_linear(vs: nn::Path, input: i64, output: i64) -> nn::Linear {
    nn::linear(
        vs,
        input,
        output,
        nn::LinearConfig {
            ws_init: torch_default_uniform(input),
            bs_init: Some(torch_default_uniform(input)),
            bias: true,
        },
    )
}

/// PyTorch's default for Conv2d weights and biases and for the MoE gate
/// (`kaiming_uniform_(a=√5)`): U(±1/√fan_in).
pub fn torch_default_uniform(fan_in: i64) -> Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// nn.Conv2d with PyTorch's default initialisation; fan_in = in/groups · kh · kw.
pub fn torch_conv2d(
    vs: nn::Path,
    input: i64,
    output: i64,
    kernel: [i64; 2],
    padding: [i64; 2],
    groups: i64,
    bias: bool,
) -> nn::Conv2D {
    let fan_in = input / groups * kernel[0] * kernel[1];
    nn::conv(
        vs,
        input,
        output,
        kernel,
        nn::ConvConfigND {
            padding,
            groups,
            bias,
            ws_init: torch_default_uniform(fan_in),
            bs_init: torch_default_uniform(fan_in),
            ..Default::default()
        },
    )
}
