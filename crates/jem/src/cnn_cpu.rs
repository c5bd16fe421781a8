//! A hand-written CPU path for the one thing SGLD does thousands of times: the forward pass of
//! the strided CNN ([`crate::model::Cnn`]) and the gradient of `lse f(x)` (or `f(x)[y]`) with
//! respect to the input, with the parameters frozen.
//!
//! Why: through burn's autodiff every SGLD step allocates a graph, computes the input
//! gradient of each convolution by a direct transposed convolution and zeroes fresh pages
//! for every activation. Here each convolution is one im2col + GEMM forward and one GEMM +
//! col2im backward (the `gemm` crate's AVX-512 kernels, the ones burn's CPU backend uses),
//! activations are kept channel-major (`[c, b, h, w]`, so a layer is one large product over
//! the whole batch), bias and LeakyReLU are fused into the GEMM's output pass, no weight
//! gradient is formed, and every buffer is reused from step to step.
//!
//! The result equals the autodiff path up to float rounding; tests compare the two on random
//! inputs and weights (relative error under 1e-4).

use burn::prelude::*;
use rayon::prelude::*;

use crate::energy::Target;
use crate::model::{Classifier, LEAKY_SLOPE};

/// One 3x3 convolution, padding 1.
#[derive(Clone, Debug)]
struct Conv {
    /// `[cout, cin * 9]` row-major (burn's `[cout, cin, 3, 3]` as is).
    w: Vec<f32>,
    b: Vec<f32>,
    cin: usize,
    cout: usize,
    stride: usize,
}

/// Gradients of the CNN's parameters, in burn's layouts.
#[derive(Clone, Debug, PartialEq)]
pub struct WeightGrads {
    /// Per convolution: weight `[cout, cin * 9]` (that is `[cout, cin, 3, 3]`) and bias.
    pub convs: Vec<(Vec<f32>, Vec<f32>)>,
    /// Head weight `[features, classes]`.
    pub head_w: Vec<f32>,
    /// Head bias.
    pub head_b: Vec<f32>,
}

/// `lse` of a row and its softmax.
pub fn softmax(l: &[f32]) -> (f32, Vec<f32>) {
    let m = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = l.iter().map(|v| (v - m).exp()).collect();
    let s: f32 = e.iter().sum();
    (m + s.ln(), e.iter().map(|v| v / s).collect())
}

/// What the chains climb, on the host.
#[derive(Clone, Copy, Debug)]
pub enum HostTarget<'a> {
    /// `lse f(x)`.
    Marginal,
    /// `f(x)[y]`, one class per image.
    Joint(&'a [usize]),
}

/// The frozen weights of a [`Classifier::Cnn`] and the buffers of its passes.
#[derive(Clone, Debug)]
pub struct CnnKernel {
    convs: Vec<Conv>,
    /// `[features, classes]` (burn's Linear layout).
    head_w: Vec<f32>,
    head_b: Vec<f32>,
    classes: usize,
    /// Per layer, the post-activation output `[cout, b, ho, wo]`.
    acts: Vec<Vec<f32>>,
    /// The last input, channel-major.
    input: Vec<f32>,
    /// The last pooled features `[b, features]`.
    feat: Vec<f32>,
    /// Spatial size of every layer's input, then of the last output.
    dims: Vec<(usize, usize)>,
    /// One im2col buffer per batch tile.
    tiles: Vec<Vec<f32>>,
    grad: Vec<f32>,
    next: Vec<f32>,
}

/// Columns of one im2col tile: a few images at a time keep the tile (`9 cin x TILE_COLS`
/// floats) in the core's cache between its writing and the GEMM reading it.
const TILE_COLS: usize = 1024;

/// The image ranges of the tiles of a layer with `hw` output positions per image: at most
/// [`TILE_COLS`] columns each, and at least two tiles per compute thread where the batch
/// allows (the tiles are the unit of parallel work).
fn tile_ranges(b: usize, hw: usize) -> Vec<std::ops::Range<usize>> {
    let threads = rayon::current_num_threads().max(1);
    let per = (TILE_COLS / hw.max(1)).min(b.div_ceil(2 * threads)).max(1);
    (0..b.div_ceil(per))
        .map(|t| t * per..((t + 1) * per).min(b))
        .collect()
}

/// A pointer shared by the tiles of one layer; every tile touches only the columns of its own
/// images, so no two threads write the same element.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: used only for the disjoint per-tile regions described above.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// # Safety
    /// `offset + len` must lie within the allocation and no other thread may touch it.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self, offset: usize, len: usize) -> &mut [f32] {
        unsafe { std::slice::from_raw_parts_mut(self.0.add(offset), len) }
    }
}

/// Whether the kernel serves `model`: a CNN whose parameters live on the CPU backend.
pub fn available(model: &Classifier) -> bool {
    if !matches!(model, Classifier::Cnn(_)) {
        return false;
    }
    #[cfg(feature = "flex")]
    {
        crate::eval::accuracy::model_device(model).inner() == Device::flex()
    }
    #[cfg(not(feature = "flex"))]
    {
        false
    }
}

/// The class of each row of a [`Target::Joint`] (`None` for the marginal).
pub fn labels_of(target: &Target) -> Option<Vec<usize>> {
    match target {
        Target::Marginal => None,
        Target::Joint(oh) => Some(
            oh.clone()
                .inner()
                .argmax(1)
                .into_data()
                .convert::<i64>()
                .try_into_vec::<i64>()
                .expect("class indices")
                .into_iter()
                .map(|v| v as usize)
                .collect(),
        ),
    }
}

/// [`crate::energy::input_grad`] through the kernel, when [`available`].
///
/// # Shapes
/// `x: [b, c, h, w] -> ([b, c, h, w] gradient, [b] per-image target)`
pub fn input_grad(
    model: &Classifier,
    x: &Tensor<4>,
    target: &Target,
) -> Option<(Tensor<4>, Tensor<1>)> {
    if !available(model) {
        return None;
    }
    let mut kernel = CnnKernel::from_model(model)?;
    let dims = x.dims();
    let [b, c, h, w] = dims;
    let labels = labels_of(target);
    let host_target = match &labels {
        None => HostTarget::Marginal,
        Some(ys) => HostTarget::Joint(ys),
    };
    let values: Vec<f32> = x.clone().into_data().try_to_vec().ok()?;
    let (g, v) = kernel.input_grad(&values, b, [c, h, w], host_target);
    let device = x.device().inner();
    Some((
        Tensor::from_data(TensorData::new(g, dims), &device),
        Tensor::from_data(TensorData::new(v, [b]), &device),
    ))
}

/// `grads` as burn's [`GradientsParams`] for `model` (the CNN they were computed for), on
/// `device` (the model's non-autodiff device), ready for [`crate::optim::Optimizer::step`].
pub fn gradients_params(
    model: &Classifier,
    grads: &WeightGrads,
    device: &Device,
) -> burn::optim::GradientsParams {
    let mut out = burn::optim::GradientsParams::new();
    let Classifier::Cnn(cnn) = model else {
        return out;
    };
    let (convs, head) = cnn.parts();
    for (conv, (dw, db)) in convs.iter().zip(&grads.convs) {
        let dims = conv.weight.dims();
        out.register::<4>(
            conv.weight.id,
            Tensor::from_data(TensorData::new(dw.clone(), dims), device),
        );
        if let Some(bias) = &conv.bias {
            out.register::<1>(
                bias.id,
                Tensor::from_data(TensorData::new(db.clone(), [db.len()]), device),
            );
        }
    }
    out.register::<2>(
        head.weight.id,
        Tensor::from_data(
            TensorData::new(grads.head_w.clone(), head.weight.dims()),
            device,
        ),
    );
    if let Some(bias) = &head.bias {
        out.register::<1>(
            bias.id,
            Tensor::from_data(
                TensorData::new(grads.head_b.clone(), [grads.head_b.len()]),
                device,
            ),
        );
    }
    out
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().expect("f32 weights")
}

fn out_size(n: usize, stride: usize) -> usize {
    (n + 2 - 3) / stride + 1
}

/// `dst[m, n] = (read_dst ? dst : 0) + a * b`, `dst` row-major with row stride `dst_rs`,
/// `a` and `b` given by their (row, column) strides; single-threaded (the tiles run in
/// parallel).
///
/// # Safety
/// Every element the strides reach must lie inside the allocations behind the pointers, and
/// `dst` must not alias `a` or `b` nor be touched by another thread meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    read_dst: bool,
    a: *const f32,
    (a_rs, a_cs): (usize, usize),
    b: *const f32,
    (b_rs, b_cs): (usize, usize),
) {
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            read_dst,
            a,
            a_cs as isize,
            a_rs as isize,
            b,
            b_cs as isize,
            b_rs as isize,
            if read_dst { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

impl CnnKernel {
    /// The kernel of `model`, or `None` for a model it does not cover (the Wide-ResNet, or a
    /// convolution that is not 3x3 with padding 1).
    pub fn from_model(model: &Classifier) -> Option<Self> {
        let Classifier::Cnn(cnn) = model else {
            return None;
        };
        let (convs, head) = cnn.parts();
        let mut out = Vec::with_capacity(convs.len());
        for c in convs {
            let dims = c.weight.dims();
            let padded = matches!(c.padding, burn::nn::PaddingConfig2d::Explicit(1, 1, 1, 1));
            if c.kernel_size != [3, 3]
                || c.stride[0] != c.stride[1]
                || c.groups != 1
                || c.dilation != [1, 1]
                || !padded
            {
                return None;
            }
            let cout = dims[0];
            out.push(Conv {
                w: host(c.weight.val()),
                b: c.bias.as_ref().map_or(vec![0.0; cout], |b| host(b.val())),
                cin: dims[1],
                cout,
                stride: c.stride[0],
            });
        }
        let [_, classes] = head.weight.dims();
        Some(CnnKernel {
            head_w: host(head.weight.val()),
            head_b: head
                .bias
                .as_ref()
                .map_or(vec![0.0; classes], |b| host(b.val())),
            classes,
            acts: vec![Vec::new(); out.len()],
            convs: out,
            input: Vec::new(),
            feat: Vec::new(),
            dims: Vec::new(),
            tiles: Vec::new(),
            grad: Vec::new(),
            next: Vec::new(),
        })
    }

    /// Outputs per image (classes, or 1 for a scalar energy).
    pub fn outputs(&self) -> usize {
        self.classes
    }

    /// The target's gradient with respect to `x` (`[b, c, h, w]` row-major) and its value per
    /// image.
    pub fn input_grad(
        &mut self,
        x: &[f32],
        b: usize,
        shape: [usize; 3],
        target: HostTarget,
    ) -> (Vec<f32>, Vec<f32>) {
        let logits = self.forward(x, b, shape);
        let k = self.classes;
        let mut value = vec![0.0f32; b];
        let mut dlogits = vec![0.0f32; b * k];
        for bi in 0..b {
            let l = &logits[bi * k..(bi + 1) * k];
            let d = &mut dlogits[bi * k..(bi + 1) * k];
            match target {
                HostTarget::Marginal => {
                    let (lse, p) = softmax(l);
                    value[bi] = lse;
                    d.copy_from_slice(&p);
                }
                HostTarget::Joint(ys) => {
                    value[bi] = l[ys[bi]];
                    d[ys[bi]] = 1.0;
                }
            }
        }
        let (dx, _) = self.backward(b, shape, &dlogits, true, false);
        (dx.expect("input gradient requested"), value)
    }

    /// Logits `[b, classes]` of `x` (`[b, c, h, w]`); keeps what [`CnnKernel::backward`]
    /// needs.
    pub fn forward(&mut self, x: &[f32], b: usize, [c, h, w]: [usize; 3]) -> Vec<f32> {
        assert_eq!(x.len(), b * c * h * w, "input of the wrong size");
        assert_eq!(c, self.convs[0].cin, "input channels");
        // Channel-major input `[c, b, h, w]`.
        let plane = h * w;
        let mut input = std::mem::take(&mut self.input);
        input.resize(x.len(), 0.0);
        for bi in 0..b {
            for ci in 0..c {
                input[(ci * b + bi) * plane..(ci * b + bi + 1) * plane]
                    .copy_from_slice(&x[(bi * c + ci) * plane..(bi * c + ci + 1) * plane]);
            }
        }
        self.input = input;
        self.dims.clear();
        let (mut hh, mut ww) = (h, w);
        self.dims.push((hh, ww));
        for l in 0..self.convs.len() {
            let conv = &self.convs[l];
            let (ho, wo) = (out_size(hh, conv.stride), out_size(ww, conv.stride));
            let n = b * ho * wo;
            let k = conv.cin * 9;
            let mut act = std::mem::take(&mut self.acts[l]);
            let src: &[f32] = if l == 0 {
                &self.input
            } else {
                &self.acts[l - 1]
            };
            let ranges = tile_ranges(b, ho * wo);
            if self.tiles.len() < ranges.len() {
                self.tiles.resize(ranges.len(), Vec::new());
            }
            act.resize(conv.cout * n, 0.0);
            let out = Shared(act.as_mut_ptr());
            ranges
                .par_iter()
                .zip(self.tiles[..ranges.len()].par_iter_mut())
                .for_each(|(r, cols)| {
                    let (c0, nt) = (r.start * ho * wo, r.len() * ho * wo);
                    im2col(
                        src,
                        conv.cin,
                        b,
                        r.clone(),
                        (hh, ww),
                        (ho, wo),
                        conv.stride,
                        cols,
                    );
                    for (co, &bias) in conv.b.iter().enumerate() {
                        // SAFETY: row `co`, this tile's columns: in bounds, this tile's only.
                        unsafe { out.slice(co * n + c0, nt) }.fill(bias);
                    }
                    // SAFETY: `cout x nt` elements from column `c0` with row stride `n` lie in
                    // `act` (`cout x n`) and belong to this tile; `w` is `cout x k`, the tile
                    // `k x nt`.
                    unsafe {
                        matmul(
                            (conv.cout, nt, k),
                            out.0.add(c0),
                            n,
                            true,
                            conv.w.as_ptr(),
                            (k, 1),
                            cols.as_ptr(),
                            (nt, 1),
                        );
                    }
                    for co in 0..conv.cout {
                        // SAFETY: as above.
                        for v in unsafe { out.slice(co * n + c0, nt) } {
                            if *v < 0.0 {
                                *v *= LEAKY_SLOPE as f32;
                            }
                        }
                    }
                });
            self.acts[l] = act;
            (hh, ww) = (ho, wo);
            self.dims.push((hh, ww));
        }
        // Head: global average pool, then the linear layer.
        let feats = self.convs.last().expect("a CNN has a convolution").cout;
        let hw = hh * ww;
        let top = self.acts.last().expect("activations");
        self.feat.resize(b * feats, 0.0);
        for ci in 0..feats {
            for bi in 0..b {
                let s: f32 = top[(ci * b + bi) * hw..(ci * b + bi + 1) * hw].iter().sum();
                self.feat[bi * feats + ci] = s / hw as f32;
            }
        }
        let k = self.classes;
        let mut logits = vec![0.0f32; b * k];
        for bi in 0..b {
            let l = &mut logits[bi * k..(bi + 1) * k];
            l.copy_from_slice(&self.head_b);
            for ci in 0..feats {
                let f = self.feat[bi * feats + ci];
                for (j, v) in l.iter_mut().enumerate() {
                    *v += f * self.head_w[ci * k + j];
                }
            }
        }
        logits
    }

    /// Back from `dlogits` (`[b, classes]`, the gradient of a scalar in the logits of the
    /// last [`CnnKernel::forward`]): the input gradient (`[b, c, h, w]`) if `input`, the
    /// weight gradients if `weights`.
    pub fn backward(
        &mut self,
        b: usize,
        [c, h, w]: [usize; 3],
        dlogits: &[f32],
        input: bool,
        weights: bool,
    ) -> (Option<Vec<f32>>, Option<WeightGrads>) {
        let k = self.classes;
        assert_eq!(dlogits.len(), b * k, "one gradient row per image");
        let feats = self.convs.last().expect("a CNN has a convolution").cout;
        let mut dfeat = vec![0.0f32; b * feats];
        for bi in 0..b {
            let d = &dlogits[bi * k..(bi + 1) * k];
            for ci in 0..feats {
                dfeat[bi * feats + ci] = d
                    .iter()
                    .zip(&self.head_w[ci * k..(ci + 1) * k])
                    .map(|(a, w)| a * w)
                    .sum();
            }
        }
        let mut grads = weights.then(|| {
            let mut hw_grad = vec![0.0f32; feats * k];
            let mut hb_grad = vec![0.0f32; k];
            for bi in 0..b {
                let d = &dlogits[bi * k..(bi + 1) * k];
                for (j, &v) in d.iter().enumerate() {
                    hb_grad[j] += v;
                }
                for ci in 0..feats {
                    let f = self.feat[bi * feats + ci];
                    for (j, &v) in d.iter().enumerate() {
                        hw_grad[ci * k + j] += f * v;
                    }
                }
            }
            WeightGrads {
                convs: Vec::with_capacity(self.convs.len()),
                head_w: hw_grad,
                head_b: hb_grad,
            }
        });
        // The top layer's output gradient is the pooled gradient spread over its positions.
        let (hh, ww) = *self.dims.last().expect("forward ran");
        let hw = hh * ww;
        self.grad.resize(feats * b * hw, 0.0);
        for ci in 0..feats {
            for bi in 0..b {
                let g = dfeat[bi * feats + ci] / hw as f32;
                self.grad[(ci * b + bi) * hw..(ci * b + bi + 1) * hw].fill(g);
            }
        }
        let mut conv_grads = Vec::new();
        for l in (0..self.convs.len()).rev() {
            let conv = &self.convs[l];
            let (ho, wo) = self.dims[l + 1];
            let (hi, wi) = self.dims[l];
            let n = b * ho * wo;
            let kk = conv.cin * 9;
            // Through the LeakyReLU: its output has the sign of its input.
            self.grad
                .par_chunks_mut(4096)
                .zip(self.acts[l].par_chunks(4096))
                .for_each(|(g, a)| {
                    for (g, &a) in g.iter_mut().zip(a) {
                        if a < 0.0 {
                            *g *= LEAKY_SLOPE as f32;
                        }
                    }
                });
            let ranges = tile_ranges(b, ho * wo);
            if self.tiles.len() < ranges.len() {
                self.tiles.resize(ranges.len(), Vec::new());
            }
            let grad = &self.grad;
            if weights {
                // dW = dz cols' per tile (cols recomputed from the layer's input), summed.
                let src: &[f32] = if l == 0 {
                    &self.input
                } else {
                    &self.acts[l - 1]
                };
                let partial: Vec<Vec<f32>> = ranges
                    .par_iter()
                    .zip(self.tiles[..ranges.len()].par_iter_mut())
                    .map(|(r, cols)| {
                        let (c0, nt) = (r.start * ho * wo, r.len() * ho * wo);
                        im2col(
                            src,
                            conv.cin,
                            b,
                            r.clone(),
                            (hi, wi),
                            (ho, wo),
                            conv.stride,
                            cols,
                        );
                        let mut dw = vec![0.0f32; conv.cout * kk];
                        // SAFETY: `dw` is `cout x kk`; the gradient's columns `c0..c0 + nt`
                        // of its `cout` rows (stride `n`) and the tile read transposed
                        // (`kk x nt` as `nt x kk`) lie in their buffers.
                        unsafe {
                            matmul(
                                (conv.cout, kk, nt),
                                dw.as_mut_ptr(),
                                kk,
                                false,
                                grad.as_ptr().add(c0),
                                (n, 1),
                                cols.as_ptr(),
                                (1, nt),
                            );
                        }
                        dw
                    })
                    .collect();
                let mut dw = vec![0.0f32; conv.cout * kk];
                for p in partial {
                    dw.iter_mut().zip(&p).for_each(|(a, b)| *a += b);
                }
                let db: Vec<f32> = grad.par_chunks(n).map(|row| row.iter().sum()).collect();
                conv_grads.push((dw, db));
            }
            if l == 0 && !input {
                break;
            }
            // Per tile: d cols = W' d z, then scatter back onto the input positions.
            self.next.resize(conv.cin * b * hi * wi, 0.0);
            let dx = Shared(self.next.as_mut_ptr());
            ranges
                .par_iter()
                .zip(self.tiles[..ranges.len()].par_iter_mut())
                .for_each(|(r, cols)| {
                    let (c0, nt) = (r.start * ho * wo, r.len() * ho * wo);
                    cols.resize(kk * nt, 0.0);
                    // SAFETY: the tile is `kk x nt`; `w'` is `w` (`cout x kk`) read with
                    // strides (1, kk); the gradient columns `c0..c0 + nt` of each of the
                    // `cout` rows (stride `n`) lie in `grad`.
                    unsafe {
                        matmul(
                            (kk, nt, conv.cout),
                            cols.as_mut_ptr(),
                            nt,
                            false,
                            conv.w.as_ptr(),
                            (1, kk),
                            grad.as_ptr().add(c0),
                            (n, 1),
                        );
                    }
                    col2im(
                        cols,
                        conv.cin,
                        b,
                        r.clone(),
                        (hi, wi),
                        (ho, wo),
                        conv.stride,
                        dx,
                    );
                });
            std::mem::swap(&mut self.grad, &mut self.next);
        }
        if let Some(g) = grads.as_mut() {
            conv_grads.reverse();
            g.convs = conv_grads;
        }
        let dx = input.then(|| {
            // Back to `[b, c, h, w]`.
            let plane = h * w;
            let mut out = vec![0.0f32; b * c * plane];
            for bi in 0..b {
                for ci in 0..c {
                    out[(bi * c + ci) * plane..(bi * c + ci + 1) * plane].copy_from_slice(
                        &self.grad[(ci * b + bi) * plane..(ci * b + bi + 1) * plane],
                    );
                }
            }
            out
        });
        (dx, grads)
    }
}

/// The output columns `ox` whose input column `ox * s + k - 1` lies inside `0..w`.
fn valid(k: usize, s: usize, w: usize, wo: usize) -> std::ops::Range<usize> {
    let lo = if k == 0 { 1usize.div_ceil(s) } else { 0 };
    // ox * s + k - 1 <= w - 1  <=>  ox <= (w - k) / s
    let hi = if k > w { 0 } else { ((w - k) / s + 1).min(wo) };
    lo.min(hi)..hi
}

/// The tile of images `imgs`: `cols[(ci, ky, kx), (b - imgs.start, oy, ox)] =
/// x[ci, b, oy * s + ky - 1, ox * s + kx - 1]` (zero outside the image).
#[allow(clippy::too_many_arguments)]
fn im2col(
    x: &[f32],
    cin: usize,
    b: usize,
    imgs: std::ops::Range<usize>,
    (h, w): (usize, usize),
    (ho, wo): (usize, usize),
    s: usize,
    cols: &mut Vec<f32>,
) {
    let nt = imgs.len() * ho * wo;
    cols.resize(cin * 9 * nt, 0.0);
    for (row, out) in cols.chunks_exact_mut(nt).enumerate() {
        let (ci, ky, kx) = (row / 9, (row % 9) / 3, row % 3);
        let xs = valid(kx, s, w, wo);
        let ys = valid(ky, s, h, ho);
        let first = xs.start * s + kx - 1;
        for (j, bi) in imgs.clone().enumerate() {
            let src = &x[(ci * b + bi) * h * w..(ci * b + bi + 1) * h * w];
            for oy in 0..ho {
                let dst = &mut out[(j * ho + oy) * wo..(j * ho + oy + 1) * wo];
                if !ys.contains(&oy) {
                    dst.fill(0.0);
                    continue;
                }
                let iy = oy * s + ky - 1;
                let line = &src[iy * w..(iy + 1) * w];
                dst[..xs.start].fill(0.0);
                dst[xs.end..].fill(0.0);
                if s == 1 {
                    dst[xs.clone()].copy_from_slice(&line[first..first + xs.len()]);
                } else {
                    for (d, v) in dst[xs.clone()]
                        .iter_mut()
                        .zip(line[first..].iter().step_by(s))
                    {
                        *d = *v;
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`] for the tile of images `imgs`: their planes of `dx`
/// (`[cin, b, h, w]`) are overwritten with the sums of the columns reading each position.
#[allow(clippy::too_many_arguments)]
fn col2im(
    cols: &[f32],
    cin: usize,
    b: usize,
    imgs: std::ops::Range<usize>,
    (h, w): (usize, usize),
    (ho, wo): (usize, usize),
    s: usize,
    dx: Shared,
) {
    let nt = imgs.len() * ho * wo;
    for ci in 0..cin {
        for (j, bi) in imgs.clone().enumerate() {
            // SAFETY: plane (ci, bi) of `dx` lies in it, and image `bi` belongs to this tile.
            let dst = unsafe { dx.slice((ci * b + bi) * h * w, h * w) };
            dst.fill(0.0);
            for r in 0..9 {
                let (ky, kx) = (r / 3, r % 3);
                let xs = valid(kx, s, w, wo);
                let first = xs.start * s + kx - 1;
                let row = &cols[(ci * 9 + r) * nt..(ci * 9 + r + 1) * nt];
                for oy in valid(ky, s, h, ho) {
                    let iy = oy * s + ky - 1;
                    let src = &row[(j * ho + oy) * wo..(j * ho + oy + 1) * wo];
                    let line = &mut dst[iy * w..(iy + 1) * w];
                    if s == 1 {
                        for (d, v) in line[first..first + xs.len()]
                            .iter_mut()
                            .zip(&src[xs.clone()])
                        {
                            *d += v;
                        }
                    } else {
                        for (d, v) in line[first..].iter_mut().step_by(s).zip(&src[xs.clone()]) {
                            *d += v;
                        }
                    }
                }
            }
        }
    }
}
