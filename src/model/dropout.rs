//! Dropout with libtorch's own masks, drawn about four times faster.
//!
//! On a CPU, `at::dropout` in training draws its mask with `bernoulli_(1 - p)`, and libtorch
//! 2.11 does that in a serial loop that calls the generator's `random64()` once per element
//! (two draws of its MT19937 engine; `u = (random64 & (2^53 - 1)) · 2^-53`, keep when
//! `u < 1 - p`), about 7 ns an element: dropout took more time than the matmul it follows (a
//! [20000, 256] mask: 37 ms against the 1024 -> 256 projection's 28 ms). Here the same engine
//! is run in blocks (the 624-word twist, then the tempering of a whole block in one loop) on
//! the engine state read out of libtorch's default CPU generator and written back after, so the
//! masks are libtorch's to the bit and every later draw (the next dropout, the next fold's
//! initialisation) sees the generator exactly where libtorch's own dropout would have left it.
//! The rest is libtorch's `_dropout_impl`: `noise.div_(1 - p)`, `input * noise`.
//!
//! The engine is reached through two exported members of `at::CPUGeneratorImpl`
//! (`engine()` / `set_engine(mt19937)`), found at run time; where they are missing (another
//! libtorch), for other devices, dtypes and layouts, and under the reference kernels, it is
//! libtorch's dropout itself.

use std::ffi::c_void;
use std::sync::OnceLock;

use tch::{Device, Kind, Tensor};

const N: usize = 624;
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER: u32 = 0x8000_0000;
const LOWER: u32 = 0x7fff_ffff;

/// `at::mt19937_data_pod`, the engine's whole state, as libtorch lays it out.
#[repr(C)]
#[derive(Clone, Copy)]
struct Mt19937 {
    seed: u64,
    left: i32,
    seeded: bool,
    next: u32,
    state: [u32; N],
}

// libtorch copies the engine as 315 quadwords (2520 bytes); a different size is another layout.
const _: () = assert!(std::mem::size_of::<Mt19937>() == 2520);

impl Mt19937 {
    /// The 624-word twist (`at::mt19937_engine::next_state`).
    fn twist(&mut self) {
        let s = &mut self.state;
        let mix = |u: u32, v: u32| {
            let y = (u & UPPER) | (v & LOWER);
            (y >> 1) ^ if v & 1 == 1 { MATRIX_A } else { 0 }
        };
        for j in 0..N - M {
            s[j] = s[j + M] ^ mix(s[j], s[j + 1]);
        }
        for j in N - M..N - 1 {
            s[j] = s[j + M - N] ^ mix(s[j], s[j + 1]);
        }
        s[N - 1] = s[M - 1] ^ mix(s[N - 1], s[0]);
    }

    /// The next `out.len()` outputs of `operator()`, in order, leaving the state where as many
    /// calls would. libtorch keeps `next + left - 1 == 624`: `left - 1` words remain before
    /// the call that twists and returns word 0 (after it: `left == 624`, `next == 1`).
    fn fill(&mut self, out: &mut [u32]) {
        let mut done = 0;
        while done < out.len() {
            if self.left <= 1 {
                self.twist();
                self.left = N as i32 + 1;
                self.next = 0;
            }
            let start = self.next as usize;
            let take = (self.left as usize - 1).min(out.len() - done);
            for (o, &y) in out[done..done + take]
                .iter_mut()
                .zip(&self.state[start..start + take])
            {
                let mut y = y;
                y ^= y >> 11;
                y ^= (y << 7) & 0x9d2c_5680;
                y ^= (y << 15) & 0xefc6_0000;
                y ^= y >> 18;
                *o = y;
            }
            done += take;
            self.left -= take as i32;
            self.next += take as u32;
        }
    }

    /// Advances the engine as `words` calls of `operator()` would, without tempering them.
    fn skip(&mut self, mut words: usize) {
        while words > 0 {
            if self.left <= 1 {
                self.twist();
                self.left = N as i32 + 1;
                self.next = 0;
            }
            let take = (self.left as usize - 1).min(words);
            words -= take;
            self.left -= take as i32;
            self.next += take as u32;
        }
    }

    /// `bernoulli_(keep)` into `mask`: one `random64()` per element, high word drawn first.
    fn bernoulli<T: Copy>(&mut self, keep: f64, mask: &mut [T], one: T, zero: T) {
        const BLOCK: usize = 2048;
        let mut words = [0u32; 2 * BLOCK];
        for chunk in mask.chunks_mut(BLOCK) {
            let words = &mut words[..2 * chunk.len()];
            self.fill(words);
            for (m, pair) in chunk.iter_mut().zip(words.chunks_exact(2)) {
                let bits = ((u64::from(pair[0]) << 32) | u64::from(pair[1])) & ((1 << 53) - 1);
                *m = if (bits as f64) * (1.0 / (1u64 << 53) as f64) < keep {
                    one
                } else {
                    zero
                };
            }
        }
    }
}

type DefaultGenerator = unsafe extern "C" fn() -> *const *mut c_void;
type GetEngine = unsafe extern "C" fn(generator: *mut c_void) -> Mt19937;
type SetEngine = unsafe extern "C" fn(generator: *mut c_void, engine: Mt19937);

struct Generator {
    default: DefaultGenerator,
    get: GetEngine,
    set: SetEngine,
}

fn generator() -> Option<&'static Generator> {
    static FOUND: OnceLock<Option<Generator>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let find = |name: &std::ffi::CStr| {
                // Safety: a lookup in the already-loaded objects (libtorch_cpu is linked).
                let symbol = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
                (!symbol.is_null()).then_some(symbol)
            };
            let default = find(c"_ZN2at6detail22getDefaultCPUGeneratorEv")?;
            let get = find(c"_ZN2at16CPUGeneratorImpl6engineEv")?;
            let set = find(c"_ZN2at16CPUGeneratorImpl10set_engineENS_14mt19937_engineE")?;
            // Safety: these are the Itanium-ABI entry points of `const at::Generator&
            // getDefaultCPUGenerator()`, `at::mt19937 CPUGeneratorImpl::engine()` (returned
            // through a hidden pointer, `this` second) and `void set_engine(at::mt19937)` (a
            // trivially copyable struct passed in memory), which the signatures above match.
            unsafe {
                Some(Generator {
                    default: std::mem::transmute::<*mut c_void, DefaultGenerator>(default),
                    get: std::mem::transmute::<*mut c_void, GetEngine>(get),
                    set: std::mem::transmute::<*mut c_void, SetEngine>(set),
                })
            }
        })
        .as_ref()
}

/// Runs `draw` on the default CPU generator's engine and stores the engine back. The caller
/// holds `crate::torch_rng::lock()` where other threads could draw (as `fit` does).
fn with_engine(g: &Generator, draw: impl FnOnce(&mut Mt19937)) {
    // Safety: the default generator lives for the whole process; an `at::Generator` is one
    // intrusive pointer, so its first word is the `CPUGeneratorImpl*`.
    unsafe {
        let generator = *(g.default)();
        let mut engine = (g.get)(generator);
        draw(&mut engine);
        (g.set)(generator, engine);
    }
}

/// Whether `dropout` draws the mask itself (else it is libtorch's dropout).
pub fn exact_masks_available() -> bool {
    generator().is_some()
}

/// `x.fast_dropout(p, train)` where a model would write `x.dropout(p, train)`.
pub trait FastDropout {
    fn fast_dropout(&self, p: f64, train: bool) -> Tensor;
}

impl FastDropout for Tensor {
    fn fast_dropout(&self, p: f64, train: bool) -> Tensor {
        dropout(self, p, train)
    }
}

/// `x.dropout(p, train)`, with the same mask, value and gradient as libtorch's.
pub fn dropout(x: &Tensor, p: f64, train: bool) -> Tensor {
    dropout_within(x, p, train, 0, 0).unwrap_or_else(|| x.dropout(p, train))
}

/// The part of `y.dropout(p, train)` that falls on `x`, where `x` holds elements
/// `before..before + x.numel()` of a contiguous `y` of `before + x.numel() + after` elements
/// (e.g. one row of a matrix that is otherwise not needed): the same mask on `x`, and the
/// generator left where dropping out all of `y` leaves it. `None` where the mask cannot be
/// drawn here (see the module's notes): the caller then drops out `y` itself.
pub fn dropout_within(
    x: &Tensor,
    p: f64,
    train: bool,
    before: usize,
    after: usize,
) -> Option<Tensor> {
    if !train || p == 0.0 || x.numel() + before + after == 0 {
        return Some(x.shallow_clone());
    }
    let fast = x.device() == Device::Cpu
        && matches!(x.kind(), Kind::Float | Kind::Double)
        && x.is_contiguous()
        && p > 0.0
        && p < 1.0
        && !crate::kernels::reference();
    let g = generator().filter(|_| fast)?;
    let noise = tch::no_grad(|| {
        let noise = Tensor::empty_like(x);
        let n = noise.numel();
        let keep = 1.0 - p;
        // Safety: `noise` is a fresh contiguous tensor of `n` elements of the matched type.
        with_engine(g, |engine| {
            // Two 32-bit words per element.
            engine.skip(2 * before);
            match x.kind() {
                Kind::Float => {
                    let mask =
                        unsafe { std::slice::from_raw_parts_mut(noise.data_ptr() as *mut f32, n) };
                    engine.bernoulli(keep, mask, 1.0, 0.0)
                }
                _ => {
                    let mask =
                        unsafe { std::slice::from_raw_parts_mut(noise.data_ptr() as *mut f64, n) };
                    engine.bernoulli(keep, mask, 1.0, 0.0)
                }
            }
            engine.skip(2 * after);
        });
        noise.g_div_scalar(keep)
    });
    Some(x * noise)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draws_after() -> Tensor {
        Tensor::rand([7], (Kind::Double, Device::Cpu))
    }

    /// Masks bit-identical to libtorch's for several sizes (odd, a block's worth, many twists),
    /// starting at odd positions of the engine, and the generator left where libtorch leaves it.
    #[test]
    fn same_masks_and_generator_state_as_libtorch() {
        let _generator = crate::torch_rng::lock();
        assert!(
            exact_masks_available(),
            "libtorch's generator members not found"
        );
        for (seed, numel, kind) in [
            (1, 1, Kind::Float),
            (2, 311, Kind::Float),
            (3, 2048 * 3 + 5, Kind::Float),
            (4, 200_001, Kind::Float),
            (5, 1000, Kind::Double),
        ] {
            let x = Tensor::ones([numel], (kind, Device::Cpu)) * 2.5;
            let run = |ours: bool| {
                tch::manual_seed(seed);
                // Three 32-bit draws first, so the masks start mid-block at an odd word.
                let _ = Tensor::rand([3], (Kind::Float, Device::Cpu));
                let a = if ours {
                    dropout(&x, 0.25, true)
                } else {
                    x.dropout(0.25, true)
                };
                let b = if ours {
                    dropout(&x, 0.1, true)
                } else {
                    x.dropout(0.1, true)
                };
                (a, b, draws_after())
            };
            let (theirs, ours) = (run(false), run(true));
            assert!(theirs.0.equal(&ours.0), "first mask differs ({numel})");
            assert!(theirs.1.equal(&ours.1), "second mask differs ({numel})");
            assert!(
                theirs.2.equal(&ours.2),
                "generator state differs after ({numel})"
            );
            // Not trivially equal: some dropped, some kept.
            let kept = ours.0.ne(0.0).sum(Kind::Int64).int64_value(&[]);
            assert!(numel < 10 || (kept > 0 && kept < numel));
        }
    }

    /// One row of a matrix dropped out alone: that row of libtorch's mask of the whole, and
    /// the generator where the whole's dropout leaves it (rows at the start, middle and end,
    /// over several twists).
    #[test]
    fn a_part_gets_the_wholes_mask() {
        let _generator = crate::torch_rng::lock();
        let (rows, cols) = (700, 9);
        let whole = Tensor::ones([rows, cols], (Kind::Float, Device::Cpu)) * 1.5;
        for row in [0, 1, 350, rows - 1] {
            tch::manual_seed(21);
            let _ = Tensor::rand([5], (Kind::Float, Device::Cpu));
            let theirs = whole.dropout(0.3, true).narrow(0, row, 1);
            let theirs_after = draws_after();
            tch::manual_seed(21);
            let _ = Tensor::rand([5], (Kind::Float, Device::Cpu));
            let part = whole.narrow(0, row, 1).contiguous();
            let before = (row * cols) as usize;
            let after = ((rows - row - 1) * cols) as usize;
            let ours = dropout_within(&part, 0.3, true, before, after).expect("the fast path");
            assert!(ours.equal(&theirs), "row {row}: mask differs");
            assert!(
                draws_after().equal(&theirs_after),
                "row {row}: generator differs"
            );
        }
    }

    #[test]
    fn gradient_is_libtorchs() {
        let _generator = crate::torch_rng::lock();
        let x = Tensor::randn([64, 33], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let grad = |ours: bool| {
            tch::manual_seed(11);
            let y = if ours {
                dropout(&x, 0.25, true)
            } else {
                x.dropout(0.25, true)
            };
            let g = Tensor::run_backward(&[(y * 3.0).sum(Kind::Float)], &[&x], false, false);
            g[0].copy()
        };
        assert!(grad(true).equal(&grad(false)));
        // Evaluation mode and p = 0 are the identity.
        assert!(dropout(&x, 0.25, false).equal(&x));
        assert!(dropout(&x, 0.0, true).equal(&x));
    }
}
