//! Adam with coupled L2 weight decay, as `torch.optim.Adam(weight_decay=…)` (its single-tensor
//! path, which the official code runs on a CPU): parameters that took no part in a step
//! (undefined gradient) are skipped, moments included. Its state is plain tensors so a
//! checkpoint can hold it and a resumed fit continues exactly.
//!
//! On the CPU every parameter is updated in one fused pass over its memory (read p, g, m, v;
//! write p, m, v), the parameters split into chunks run on libtorch's OpenMP threads: the tensor
//! form below walks each parameter about twelve times with six temporaries, which made the
//! optimiser the largest part of a step. tch exposes neither `_fused_adam_` nor the `_foreach_`
//! kernels, so the pass is written here; other devices and layouts keep the tensor form.
//! Both compute torch's sequence of roundings (`lerp_`, `mul_`/`addcmul_`, `sqrt`/`div`/`add_`,
//! `addcdiv_`), so they agree to the last bit or two (torch's vector kernels contract some of
//! these into fused multiply-adds).

use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

/// Elements per unit of work for the threads: large enough that scheduling is noise, small
/// enough that the two halves of a big weight run on both cores.
const CHUNK: usize = 1 << 15;

pub struct Adam {
    pub lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    /// Steps taken, per parameter (torch keeps one count per parameter).
    pub steps: Vec<i64>,
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    pool: Option<rayon::ThreadPool>,
}

/// One step's scalars for one parameter, in torch's forms.
#[derive(Clone, Copy)]
struct Coefficients {
    weight_decay: f64,
    one_minus_beta1: f64,
    beta2: f64,
    one_minus_beta2: f64,
    bias2_sqrt: f64,
    eps: f64,
    neg_step_size: f64,
}

/// The float types the fused pass handles.
trait Element: Copy + Send + Sync + 'static {
    fn of(x: f64) -> Self;
    fn update(p: &mut Self, g: Self, m: &mut Self, v: &mut Self, c: &Scalars<Self>);
}

/// [`Coefficients`] cast to the element type once, as ATen casts a Scalar for a float kernel.
struct Scalars<T> {
    weight_decay: T,
    one_minus_beta1: T,
    beta2: T,
    one_minus_beta2: T,
    bias2_sqrt: T,
    eps: T,
    neg_step_size: T,
    decay: bool,
}

macro_rules! element {
    ($t:ty) => {
        impl Element for $t {
            fn of(x: f64) -> Self {
                x as $t
            }
            #[inline(always)]
            fn update(p: &mut $t, g: $t, m: &mut $t, v: &mut $t, c: &Scalars<$t>) {
                // grad.add(param, alpha=weight_decay)
                let g = if c.decay { g + c.weight_decay * *p } else { g };
                // exp_avg.lerp_(grad, 1 - beta1), weight < 0.5: self + weight * (end - self)
                *m = *m + c.one_minus_beta1 * (g - *m);
                // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                *v = *v * c.beta2 + c.one_minus_beta2 * g * g;
                // denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
                let denom = v.sqrt() / c.bias2_sqrt + c.eps;
                // param.addcdiv_(exp_avg, denom, value=-step_size)
                *p += c.neg_step_size * *m / denom;
            }
        }
    };
}
element!(f32);
element!(f64);

impl<T: Element> Scalars<T> {
    fn new(c: &Coefficients) -> Self {
        Self {
            weight_decay: T::of(c.weight_decay),
            one_minus_beta1: T::of(c.one_minus_beta1),
            beta2: T::of(c.beta2),
            one_minus_beta2: T::of(c.one_minus_beta2),
            bias2_sqrt: T::of(c.bias2_sqrt),
            eps: T::of(c.eps),
            neg_step_size: T::of(c.neg_step_size),
            decay: c.weight_decay != 0.0,
        }
    }
}

/// A contiguous piece of one parameter and its state, by address. The tensors it points into
/// outlive the step and no two pieces overlap.
struct Piece<T> {
    p: *mut T,
    g: *const T,
    m: *mut T,
    v: *mut T,
    len: usize,
    coefficients: Coefficients,
}

// Safety: pieces are disjoint ranges of tensors held alive by `Adam::step` for the whole pass.
unsafe impl<T: Send> Send for Piece<T> {}
unsafe impl<T: Sync> Sync for Piece<T> {}

impl<T: Element> Piece<T> {
    fn run(&self) {
        let scalars = Scalars::<T>::new(&self.coefficients);
        // Safety: see `Piece`; the four ranges are distinct allocations of `len` elements.
        let (p, g, m, v) = unsafe {
            (
                std::slice::from_raw_parts_mut(self.p, self.len),
                std::slice::from_raw_parts(self.g, self.len),
                std::slice::from_raw_parts_mut(self.m, self.len),
                std::slice::from_raw_parts_mut(self.v, self.len),
            )
        };
        // Zipped, so the four equal lengths need no bounds checks and the loop vectorises.
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            T::update(p, g, m, v, &scalars);
        }
    }
}

/// Whether the fused pass can update this parameter in place.
fn fusable(p: &Tensor, m: &Tensor, v: &Tensor) -> bool {
    p.device() == Device::Cpu
        && matches!(p.kind(), Kind::Float | Kind::Double)
        && [p, m, v]
            .iter()
            .all(|t| t.is_contiguous() && t.kind() == p.kind())
}

impl Adam {
    pub fn new(params: &[Tensor], lr: f64, weight_decay: f64) -> Self {
        let on_cpu = params.iter().any(|p| p.device() == Device::Cpu);
        // Only where the fused pass cannot use libtorch's OpenMP team.
        let pool = (on_cpu && !crate::omp::available())
            .then(|| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(tch::get_num_threads().max(1) as usize)
                    .build()
                    .ok()
            })
            .flatten();
        Self {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            steps: vec![0; params.len()],
            m: params.iter().map(Tensor::zeros_like).collect(),
            v: params.iter().map(Tensor::zeros_like).collect(),
            pool,
        }
    }

    fn coefficients(&self, step: i64) -> Coefficients {
        let t = step as i32;
        Coefficients {
            weight_decay: self.weight_decay,
            one_minus_beta1: 1.0 - self.beta1,
            beta2: self.beta2,
            one_minus_beta2: 1.0 - self.beta2,
            bias2_sqrt: (1.0 - self.beta2.powi(t)).sqrt(),
            eps: self.eps,
            neg_step_size: -(self.lr / (1.0 - self.beta1.powi(t))),
        }
    }

    /// One update with `grads[i]` for `params[i]` (undefined = not used this step).
    pub fn step(&mut self, params: &[Tensor], grads: &[Tensor]) {
        tch::no_grad(|| {
            let mut pieces_f32 = Vec::new();
            let mut pieces_f64 = Vec::new();
            // Contiguous copies of strided gradients, alive until the pass is done.
            let mut held = Vec::new();
            for (i, (p, g)) in params.iter().zip(grads).enumerate() {
                if !g.defined() {
                    continue;
                }
                self.steps[i] += 1;
                let c = self.coefficients(self.steps[i]);
                if !fusable(p, &self.m[i], &self.v[i]) || crate::kernels::reference() {
                    self.tensor_step(i, p, g, &c);
                    continue;
                }
                let g = g.to_kind(p.kind()).contiguous();
                let n = p.numel();
                let (pp, gp, mp, vp) = (
                    p.data_ptr(),
                    g.data_ptr(),
                    self.m[i].data_ptr(),
                    self.v[i].data_ptr(),
                );
                for start in (0..n).step_by(CHUNK) {
                    let len = CHUNK.min(n - start);
                    match p.kind() {
                        Kind::Float => pieces_f32.push(piece::<f32>(pp, gp, mp, vp, start, len, c)),
                        _ => pieces_f64.push(piece::<f64>(pp, gp, mp, vp, start, len, c)),
                    }
                }
                held.push(g);
            }
            // On libtorch's own OpenMP team when there is one (see `crate::omp`), else rayon.
            let (n32, n64) = (pieces_f32.len(), pieces_f64.len());
            let run = |i: usize| match i < n32 {
                true => pieces_f32[i].run(),
                false => pieces_f64[i - n32].run(),
            };
            let threads = tch::get_num_threads().max(1) as usize;
            if !crate::omp::for_each(n32 + n64, threads, &run) {
                let pass = || (0..n32 + n64).into_par_iter().for_each(run);
                match &self.pool {
                    Some(pool) => pool.install(pass),
                    None => pass(),
                }
            }
            drop(held);
        });
    }

    /// The same update in tensor operations, for devices and layouts the fused pass leaves.
    fn tensor_step(&mut self, i: usize, p: &Tensor, g: &Tensor, c: &Coefficients) {
        let g = if c.weight_decay != 0.0 {
            g + p * c.weight_decay
        } else {
            g.shallow_clone()
        };
        let _ = self.m[i].lerp_(&g, c.one_minus_beta1);
        let _ = self.v[i]
            .g_mul_scalar_(c.beta2)
            .addcmul_(&g, &g.g_mul_scalar(c.one_minus_beta2));
        let mut denom = self.v[i].sqrt();
        let _ = denom.g_div_scalar_(c.bias2_sqrt).g_add_scalar_(c.eps);
        let mut p = p.shallow_clone();
        let _ = p.addcdiv_(&self.m[i], &denom.g_mul_scalar(1.0 / c.neg_step_size));
    }

    /// The step counts as a tensor, for checkpoints.
    pub fn steps_tensor(&self) -> Tensor {
        Tensor::from_slice(&self.steps).to_kind(Kind::Int64)
    }
}

/// The piece `start..start + len` of one parameter's four tensors (element addresses).
fn piece<T: Element>(
    p: *mut std::ffi::c_void,
    g: *mut std::ffi::c_void,
    m: *mut std::ffi::c_void,
    v: *mut std::ffi::c_void,
    start: usize,
    len: usize,
    coefficients: Coefficients,
) -> Piece<T> {
    // Safety: `start + len` is within each tensor's `numel` elements of type T.
    unsafe {
        Piece {
            p: (p as *mut T).add(start),
            g: (g as *const T).add(start),
            m: (m as *mut T).add(start),
            v: (v as *mut T).add(start),
            len,
            coefficients,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_torch_adam_by_hand() {
        let _generator = crate::torch_rng::lock();
        // One parameter p = 1, gradient 0.5, lr 0.1, wd 0.01: g = 0.51; m = 0.051; v = 0.00026010;
        // m̂ = 0.51, v̂ = 0.2601, step = 0.1 · 0.51 / (0.51 + 1e-8).
        let p = Tensor::from_slice(&[1.0f64]).set_requires_grad(true);
        let mut adam = Adam::new(std::slice::from_ref(&p), 0.1, 0.01);
        adam.step(std::slice::from_ref(&p), &[Tensor::from_slice(&[0.5f64])]);
        let expected = 1.0 - 0.1 * 0.51 / (0.51 + 1e-8);
        assert!((p.double_value(&[0]) - expected).abs() < 1e-12);
        // An undefined gradient leaves the parameter and its count alone.
        adam.step(std::slice::from_ref(&p), &[Tensor::new()]);
        assert!((p.double_value(&[0]) - expected).abs() < 1e-12);
        assert_eq!(adam.steps, vec![1]);
    }

    /// The fused pass and the tensor form agree over several steps on parameters larger than a
    /// chunk, a strided gradient, a skipped parameter and both float types.
    #[test]
    fn the_fused_pass_equals_the_tensor_form() {
        let _generator = crate::torch_rng::lock();
        for kind in [Kind::Float, Kind::Double] {
            tch::manual_seed(9);
            let opts = (kind, Device::Cpu);
            let shapes: [&[i64]; 3] = [&[3 * CHUNK as i64 + 17], &[40, 30], &[7]];
            let params: Vec<Tensor> = shapes.iter().map(|s| Tensor::randn(*s, opts)).collect();
            let reference: Vec<Tensor> = params.iter().map(|p| p.copy()).collect();
            let mut fused = Adam::new(&params, 1e-2, 1e-3);
            let mut plain = Adam::new(&reference, 1e-2, 1e-3);
            for step in 0..5 {
                let grads: Vec<Tensor> = shapes
                    .iter()
                    .enumerate()
                    .map(|(i, s)| match (i, step % 2) {
                        // The small parameter takes no part in odd steps.
                        (2, 1) => Tensor::new(),
                        // A transposed (non-contiguous) gradient.
                        (1, _) => Tensor::randn([30, 40], opts).transpose(0, 1),
                        _ => Tensor::randn(*s, opts),
                    })
                    .collect();
                fused.step(&params, &grads);
                for (i, (p, g)) in reference.iter().zip(&grads).enumerate() {
                    if g.defined() {
                        plain.steps[i] += 1;
                        let c = plain.coefficients(plain.steps[i]);
                        tch::no_grad(|| plain.tensor_step(i, p, g, &c));
                    }
                }
            }
            assert_eq!(fused.steps, plain.steps);
            assert_eq!(fused.steps, vec![5, 5, 3]);
            let ulp = if kind == Kind::Float { 1e-6 } else { 1e-14 };
            for (a, b) in params.iter().zip(&reference) {
                let scale = b.abs().max().double_value(&[]);
                let error = (a - b).abs().max().double_value(&[]);
                assert!(error <= ulp * scale, "{kind:?}: {error} of {scale}");
            }
            // Changed from the start, so the comparison above compares updates.
            tch::manual_seed(9);
            let start = Tensor::randn(shapes[0], opts);
            assert!((&params[0] - start).abs().max().double_value(&[]) > 1e-3);
        }
    }
}
