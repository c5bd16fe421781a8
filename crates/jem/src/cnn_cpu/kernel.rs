//! [`CnnKernel`]: the frozen weights of the CNN, packed, and its forward and backward passes.
//! A batch is split into blocks of images, and each block runs through all layers on one
//! thread (one parallel region per pass): the layers of one image never wait on another
//! image, and a block's activations stay close to its core.

use burn::prelude::*;
use rayon::prelude::*;

use super::cols::{Geo, col2im_add, im2col, read_end};
use super::gemm::{self, Epilogue, PackedBf16, PackedF32, to_bf16};
use super::{HostTarget, Precision, WeightGrads, softmax};
use crate::model::{Classifier, LEAKY_SLOPE};

/// One 3x3 convolution, padding 1, with its weights packed for both products.
#[derive(Clone, Debug)]
struct Conv {
    /// `[cout, cin * 9]` row-major (burn's `[cout, cin, 3, 3]` as is).
    w: Vec<f32>,
    b: Vec<f32>,
    cin: usize,
    cout: usize,
    stride: usize,
    /// Forward: `B[(ky, kx, ci), co]` (`kp x cout`).
    fwd: PackedF32,
    /// Input gradient: `B[co, (ky, kx, ci)]` (`cout x kp`).
    bwd: PackedF32,
    fwd16: Option<PackedBf16>,
    bwd16: Option<PackedBf16>,
}

impl Conv {
    fn new(w: Vec<f32>, b: Vec<f32>, cin: usize, cout: usize, stride: usize) -> Self {
        let kp = (9 * cin).next_multiple_of(2);
        // Weight of output channel `co` at column-row index `(ky, kx, ci)` (zero padding).
        let at = |co: usize, r: usize| {
            if r >= 9 * cin {
                return 0.0;
            }
            let (tap, ci) = (r / cin, r % cin);
            w[(co * cin + ci) * 9 + tap]
        };
        let fwd = PackedF32::new(kp, cout, |r, co| at(co, r));
        let bwd = PackedF32::new(cout, kp, at);
        Conv {
            fwd,
            bwd,
            fwd16: None,
            bwd16: None,
            w,
            b,
            cin,
            cout,
            stride,
        }
    }

    fn pack_bf16(&mut self) {
        let (cin, kp) = (self.cin, (9 * self.cin).next_multiple_of(2));
        let w = &self.w;
        let at = |co: usize, r: usize| {
            if r >= 9 * cin {
                return 0.0;
            }
            w[(co * cin + r % cin) * 9 + r / cin]
        };
        self.fwd16 = Some(PackedBf16::new(kp, self.cout, |r, co| at(co, r)));
        self.bwd16 = Some(PackedBf16::new(self.cout, kp, at));
    }
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().expect("f32 weights")
}

fn out_size(n: usize, stride: usize) -> usize {
    (n + 2 - 3) / stride + 1
}

/// `dst[m, n] = (read_dst ? dst : 0) + a * b` through the `gemm` crate (the weight gradients),
/// `a` and `b` given by their (row, column) strides; single-threaded.
///
/// # Safety
/// Every element the strides reach must lie inside the allocations behind the pointers, and
/// `dst` must not alias `a` or `b`.
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
        ::gemm::gemm(
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
            ::gemm::Parallelism::None,
        );
    }
}

/// `rows` column rows (`kp` values each) times a packed `B`, into `c` (row stride `c_rs`).
#[allow(clippy::too_many_arguments)]
fn product(
    rows: usize,
    a32: &[f32],
    a16: &[u16],
    a_rs: usize,
    f32_b: &PackedF32,
    bf16_b: Option<&PackedBf16>,
    c: &mut [f32],
    c_rs: usize,
    epi: Epilogue,
) {
    assert!(c.len() >= rows.saturating_sub(1) * c_rs, "output rows");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller built the kernel only where `Isa::detect` found AVX-512 or AVX2 with
    // FMA (and AVX512-BF16 for a bf16 `B`); the f32 product is the AVX-512 one where the CPU
    // has it; the slices hold `rows` rows at the strides given.
    unsafe {
        match bf16_b {
            None => {
                assert!(a32.len() >= rows * a_rs, "input rows");
                let (a, c) = (a32.as_ptr(), c.as_mut_ptr());
                if gemm::Isa::detect().avx512 {
                    gemm::gemm_f32(rows, a, a_rs, f32_b, c, c_rs, epi)
                } else {
                    gemm::avx2::gemm_f32(rows, a, a_rs, f32_b, c, c_rs, epi)
                }
            }
            Some(b) => {
                assert!(a16.len() >= rows * a_rs, "input rows");
                gemm::gemm_bf16(
                    rows,
                    a16.as_ptr() as *const u32,
                    a_rs / 2,
                    b,
                    c.as_mut_ptr(),
                    c_rs,
                    epi,
                )
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("the kernel is built only on x86-64 with AVX-512 or AVX2");
}

/// The frozen weights of a [`Classifier::Cnn`] and the buffers of its passes.
#[derive(Clone, Debug)]
pub struct CnnKernel {
    convs: Vec<Conv>,
    /// `[features, classes]` (burn's Linear layout).
    head_w: Vec<f32>,
    head_b: Vec<f32>,
    classes: usize,
    precision: Precision,
    /// Images per block of the last batch.
    per: usize,
    /// Every layer's shape for the last batch.
    geos: Vec<Geo>,
    /// The last input, channels-last `[b, h, w, c]`.
    input: Vec<f32>,
    /// Per layer, the post-activation output `[b, ho, wo, cout]`.
    acts: Vec<Vec<f32>>,
    /// bf16 chains: the outputs of all but the top layer, in bf16 only (`acts` holds the top).
    acts16: Vec<Vec<u16>>,
    /// The last pooled features `[b, features]`.
    feat: Vec<f32>,
    /// One scratch space per block.
    scratch: Vec<Scratch>,
}

/// The buffers of one block of images.
#[derive(Clone, Debug, Default)]
struct Scratch {
    cols: Vec<f32>,
    cols16: Vec<u16>,
    dcols: Vec<f32>,
    /// bf16 mode: the current layer's input.
    src16: Vec<u16>,
    grad: Vec<f32>,
    grad16: Vec<u16>,
    next: Vec<f32>,
}

/// Bytes of column rows per piece: with a weight panel they stay in a core's L2 cache.
const PIECE_BYTES: usize = 160 * 1024;

/// Images per block: at least two blocks per compute thread where the batch allows, at most
/// eight images (whose activations stay near the core).
fn images_per_block(b: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    b.div_ceil(2 * threads).clamp(1, 8)
}

/// Column rows per piece for rows of `kp` values (a multiple of the micro-tile's rows: those of
/// the AVX-512 product, or of the AVX2 one on a CPU without AVX-512).
fn piece_rows(kp: usize) -> usize {
    let mr = if gemm::Isa::detect().avx512 {
        gemm::MR
    } else {
        gemm::avx2::MR
    };
    (PIECE_BYTES / (4 * kp)).max(mr) / mr * mr
}

/// `x` (`[n, plane, c]` or `[n, c, plane]` as `to_last`) transposed between channels-first and
/// channels-last.
fn transpose(src: &[f32], dst: &mut [f32], c: usize, plane: usize, to_last: bool) {
    if c == 1 {
        dst.copy_from_slice(src);
        return;
    }
    for (s, d) in src
        .chunks_exact(c * plane)
        .zip(dst.chunks_exact_mut(c * plane))
    {
        for ci in 0..c {
            for p in 0..plane {
                if to_last {
                    d[p * c + ci] = s[ci * plane + p];
                } else {
                    d[ci * plane + p] = s[p * c + ci];
                }
            }
        }
    }
}

/// An activation value whose sign the LeakyReLU's backward reads (f32, or bf16 bits).
trait Negative: Copy {
    fn negative(self) -> bool;
}

impl Negative for f32 {
    #[inline(always)]
    fn negative(self) -> bool {
        self < 0.0
    }
}

impl Negative for u16 {
    #[inline(always)]
    fn negative(self) -> bool {
        self & 0x8000 != 0 && self & 0x7fff != 0
    }
}

/// `g *= slope` where the activation `a` is negative (the LeakyReLU's backward: its output
/// has the sign of its input).
fn leaky_back<A: Negative>(g: &mut [f32], a: &[A]) {
    let s = LEAKY_SLOPE as f32;
    g.iter_mut()
        .zip(a)
        .for_each(|(g, &a)| *g = if a.negative() { *g * s } else { *g });
}

/// `out = bf16(g * (a < 0 ? slope : 1))`: [`leaky_back`] and the conversion in one pass.
fn leaky_back_bf16<A: Negative>(g: &[f32], a: &[A], out: &mut [u16]) {
    let slope = LEAKY_SLOPE as f32;
    for ((o, &g), &a) in out.iter_mut().zip(g).zip(a) {
        let v = if a.negative() { g * slope } else { g };
        *o = gemm::bf16(v);
    }
}

/// Each layer's buffer (`b` images) cut into `blocks` pieces of `per` images (empty pieces
/// for an unused buffer).
fn split<T>(
    bufs: &mut [Vec<T>],
    b: usize,
    per: usize,
    blocks: usize,
) -> Vec<std::vec::IntoIter<&mut [T]>> {
    bufs.iter_mut()
        .map(|a| {
            if a.is_empty() {
                (0..blocks)
                    .map(|_| <&mut [T]>::default())
                    .collect::<Vec<_>>()
            } else {
                let len = a.len() / b;
                a.chunks_mut(per * len).collect()
            }
            .into_iter()
        })
        .collect()
}

/// Grow `v` to at least `n` values (never shrinks it).
fn grow<T: Copy + Default>(v: &mut Vec<T>, n: usize) {
    if v.len() < n {
        v.resize(n, T::default());
    }
}

/// What one block of images reads and writes in a pass.
struct Block<'a> {
    /// `[n, c, h, w]` (forward: the images; backward: where their gradient goes).
    x: &'a mut [f32],
    input: &'a mut [f32],
    acts: Vec<&'a mut [f32]>,
    acts16: Vec<&'a mut [u16]>,
    feat: &'a mut [f32],
    /// Forward: the logits; backward: the gradient in the pooled features.
    head: &'a mut [f32],
    sc: &'a mut Scratch,
}

impl CnnKernel {
    /// The kernel of `model` in f32, or `None` for a model it does not cover (the
    /// Wide-ResNet, a convolution that is not 3x3 with padding 1, or a CPU with neither AVX-512
    /// nor AVX2 and FMA).
    pub fn from_model(model: &Classifier) -> Option<Self> {
        Self::with_precision(model, Precision::F32)
    }

    /// [`CnnKernel::from_model`] at `precision` (`None` also where the CPU lacks it).
    pub fn with_precision(model: &Classifier, precision: Precision) -> Option<Self> {
        let precision = precision.resolve(super::supports(Precision::Bf16));
        if !super::supports(precision) {
            return None;
        }
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
            let mut conv = Conv::new(
                host(c.weight.val()),
                c.bias.as_ref().map_or(vec![0.0; cout], |b| host(b.val())),
                dims[1],
                cout,
                c.stride[0],
            );
            if precision != Precision::F32 {
                conv.pack_bf16();
            }
            out.push(conv);
        }
        let [_, classes] = head.weight.dims();
        Some(CnnKernel {
            head_w: host(head.weight.val()),
            head_b: head
                .bias
                .as_ref()
                .map_or(vec![0.0; classes], |b| host(b.val())),
            classes,
            precision,
            per: 1,
            acts: vec![Vec::new(); out.len()],
            acts16: vec![Vec::new(); out.len()],
            convs: out,
            geos: Vec::new(),
            input: Vec::new(),
            feat: Vec::new(),
            scratch: Vec::new(),
        })
    }

    /// Outputs per image (classes, or 1 for a scalar energy).
    pub fn outputs(&self) -> usize {
        self.classes
    }

    /// The precision of the products.
    pub fn precision(&self) -> Precision {
        self.precision
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

    /// Split the batch's buffers into blocks: `x` and `head` (`head_len` values per image)
    /// are the pass's own.
    fn blocks<'a>(
        &'a mut self,
        b: usize,
        x: &'a mut [f32],
        head: &'a mut [f32],
        head_len: usize,
    ) -> (Vec<Block<'a>>, &'a [Conv], &'a [Geo]) {
        let per = self.per;
        let blocks = b.div_ceil(per);
        if self.scratch.len() < blocks {
            self.scratch.resize(blocks, Scratch::default());
        }
        let img = x.len() / b;
        let feats = self.feat.len() / b;
        let mut xs = x.chunks_mut(per * img);
        let mut inputs = self.input.chunks_mut(per * img);
        let mut heads = head.chunks_mut(per * head_len);
        let mut feat = self.feat.chunks_mut(per * feats);
        let mut acts = split(&mut self.acts, b, per, blocks);
        let mut acts16 = split(&mut self.acts16, b, per, blocks);
        let out = self.scratch[..blocks]
            .iter_mut()
            .map(|sc| Block {
                x: xs.next().expect("a block of images"),
                input: inputs.next().expect("a block of images"),
                acts: acts
                    .iter_mut()
                    .map(|a| a.next().expect("a block"))
                    .collect(),
                acts16: acts16
                    .iter_mut()
                    .map(|a| a.next().expect("a block"))
                    .collect(),
                feat: feat.next().expect("a block of images"),
                head: heads.next().expect("a block of images"),
                sc,
            })
            .collect();
        (out, &self.convs, &self.geos)
    }

    /// Logits `[b, classes]` of `x` (`[b, c, h, w]`); keeps what [`CnnKernel::backward`]
    /// needs.
    pub fn forward(&mut self, x: &[f32], b: usize, [c, h, w]: [usize; 3]) -> Vec<f32> {
        assert_eq!(x.len(), b * c * h * w, "input of the wrong size");
        assert_eq!(c, self.convs[0].cin, "input channels");
        self.per = images_per_block(b);
        self.geos.clear();
        let (mut hh, mut ww) = (h, w);
        let layers = self.convs.len();
        let bf16 = self.precision == Precision::Bf16;
        for (l, ((conv, act), act16)) in self
            .convs
            .iter()
            .zip(&mut self.acts)
            .zip(&mut self.acts16)
            .enumerate()
        {
            let s = conv.stride;
            let g = Geo {
                cin: conv.cin,
                h: hh,
                w: ww,
                ho: out_size(hh, s),
                wo: out_size(ww, s),
                s,
            };
            let len = b * g.hw_out() * conv.cout;
            if bf16 && l + 1 < layers {
                act.clear();
                act16.resize(len, 0);
            } else {
                act.resize(len, 0.0);
                act16.clear();
            }
            self.geos.push(g);
            (hh, ww) = (g.ho, g.wo);
        }
        self.input.resize(x.len(), 0.0);
        let feats = self.convs.last().expect("a CNN has a convolution").cout;
        self.feat.resize(b * feats, 0.0);
        let k = self.classes;
        let mut logits = vec![0.0f32; b * k];
        let mut x = x.to_vec();
        let (precision, head_w, head_b) =
            (self.precision, self.head_w.clone(), self.head_b.clone());
        let (blocks, convs, geos) = self.blocks(b, &mut x, &mut logits, k);
        blocks.into_par_iter().for_each(|mut blk| {
            forward_block(convs, geos, precision, &mut blk, [c, h, w]);
            // Head: global average pool, then the linear layer.
            let top = blk.acts.last().expect("activations");
            let hw = top.len() / blk.feat.len();
            for (f, act) in blk
                .feat
                .chunks_exact_mut(feats)
                .zip(top.chunks_exact(hw * feats))
            {
                f.fill(0.0);
                for row in act.chunks_exact(feats) {
                    f.iter_mut().zip(row).for_each(|(f, v)| *f += v);
                }
                f.iter_mut().for_each(|f| *f /= hw as f32);
            }
            for (l, f) in blk
                .head
                .chunks_exact_mut(k)
                .zip(blk.feat.chunks_exact(feats))
            {
                l.copy_from_slice(&head_b);
                for (ci, &fv) in f.iter().enumerate() {
                    l.iter_mut()
                        .zip(&head_w[ci * k..(ci + 1) * k])
                        .for_each(|(v, w)| *v += fv * w);
                }
            }
        });
        logits
    }

    /// Back from `dlogits` (`[b, classes]`, the gradient of a scalar in the logits of the
    /// last [`CnnKernel::forward`]): the input gradient (`[b, c, h, w]`) if `input`, the
    /// weight gradients if `weights` (always in f32).
    ///
    /// # Panics
    /// If `weights` on a [`Precision::Bf16`] kernel (whose lower activations exist in bf16
    /// only; training steps use f32 kernels).
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
        assert_eq!(
            self.input.len(),
            b * c * h * w,
            "backward of the last forward"
        );
        let feats = self.convs.last().expect("a CNN has a convolution").cout;
        let mut dfeat = vec![0.0f32; b * feats];
        for (df, d) in dfeat.chunks_exact_mut(feats).zip(dlogits.chunks_exact(k)) {
            for (ci, v) in df.iter_mut().enumerate() {
                *v = d
                    .iter()
                    .zip(&self.head_w[ci * k..(ci + 1) * k])
                    .map(|(a, w)| a * w)
                    .sum();
            }
        }
        let mut grads = weights.then(|| {
            let mut hw_grad = vec![0.0f32; feats * k];
            let mut hb_grad = vec![0.0f32; k];
            for (d, f) in dlogits.chunks_exact(k).zip(self.feat.chunks_exact(feats)) {
                hb_grad.iter_mut().zip(d).for_each(|(h, v)| *h += v);
                for (ci, &fv) in f.iter().enumerate() {
                    hw_grad[ci * k..(ci + 1) * k]
                        .iter_mut()
                        .zip(d)
                        .for_each(|(h, v)| *h += fv * v);
                }
            }
            WeightGrads {
                convs: Vec::new(),
                head_w: hw_grad,
                head_b: hb_grad,
            }
        });
        let mut dx = vec![0.0f32; b * c * h * w];
        let precision = self.precision;
        let (blocks, convs, geos) = self.blocks(b, &mut dx, &mut dfeat, feats);
        let partial: Vec<Vec<(Vec<f32>, Vec<f32>)>> = blocks
            .into_par_iter()
            .map(|mut blk| {
                backward_block(convs, geos, precision, &mut blk, [c, h, w], input, weights)
            })
            .collect();
        if let Some(g) = grads.as_mut() {
            let mut sums: Vec<(Vec<f32>, Vec<f32>)> = Vec::new();
            for p in partial {
                if sums.is_empty() {
                    sums = p;
                    continue;
                }
                for ((dw, db), (pw, pb)) in sums.iter_mut().zip(p) {
                    dw.iter_mut().zip(&pw).for_each(|(a, b)| *a += b);
                    db.iter_mut().zip(&pb).for_each(|(a, b)| *a += b);
                }
            }
            // Per layer, `[cout, kp]` over column-row indices back to burn's `[cout, cin, 3, 3]`.
            g.convs = sums
                .into_iter()
                .zip(&self.convs)
                .map(|((sum, db), conv)| {
                    let (cin, kp) = (conv.cin, (9 * conv.cin).next_multiple_of(2));
                    let mut dw = vec![0.0f32; conv.cout * cin * 9];
                    for co in 0..conv.cout {
                        for tap in 0..9 {
                            for ci in 0..cin {
                                dw[(co * cin + ci) * 9 + tap] = sum[co * kp + tap * cin + ci];
                            }
                        }
                    }
                    (dw, db)
                })
                .collect();
        }
        (input.then_some(dx), grads)
    }
}

/// The convolutions of one block, from `blk.x` to its activations.
fn forward_block(
    convs: &[Conv],
    geos: &[Geo],
    precision: Precision,
    blk: &mut Block,
    [c, h, w]: [usize; 3],
) {
    transpose(blk.x, blk.input, c, h * w, true);
    let images = blk.input.len() / (c * h * w);
    // bf16 chains: every layer but the top stores its output in bf16 only, straight from the
    // product's store, and the next layer's column rows are built from it.
    let bf16 = precision == Precision::Bf16;
    let sc = &mut *blk.sc;
    if bf16 {
        sc.src16.resize(blk.input.len(), 0);
        to_bf16(blk.input, &mut sc.src16);
    }
    let top = convs.len() - 1;
    for (l, (conv, g)) in convs.iter().zip(geos).enumerate() {
        let (kp, cout) = (g.kp(), conv.cout);
        let rows = images * g.hw_out();
        let piece = piece_rows(kp);
        let (lo16, hi16) = blk.acts16.split_at_mut(l);
        let (lo, hi) = blk.acts.split_at_mut(l);
        for p0 in (0..rows).step_by(piece) {
            let n = piece.min(rows - p0);
            if bf16 {
                let src16: &[u16] = if l == 0 { &sc.src16 } else { lo16[l - 1] };
                sc.cols16.resize(n * kp, 0);
                im2col(src16, g, p0..p0 + n, &mut sc.cols16);
            } else {
                let src: &[f32] = if l == 0 { blk.input } else { lo[l - 1] };
                sc.cols.resize(n * kp, 0.0);
                im2col(src, g, p0..p0 + n, &mut sc.cols);
            }
            if bf16 && l < top {
                let dst = &mut hi16[0][p0 * cout..(p0 + n) * cout];
                let b16 = conv.fwd16.as_ref().expect("bf16 weights packed");
                assert!(sc.cols16.len() >= n * kp, "input rows");
                #[cfg(target_arch = "x86_64")]
                // SAFETY: a bf16 kernel is built only where `Isa::detect` found AVX512-BF16 and
                // AVX512-BW; `cols16` holds `n` rows of `kp` bf16, `dst` `n` rows of `cout`.
                unsafe {
                    gemm::gemm_bf16_to_bf16(
                        n,
                        sc.cols16.as_ptr() as *const u32,
                        kp / 2,
                        b16,
                        dst.as_mut_ptr(),
                        cout,
                        &conv.b,
                        LEAKY_SLOPE as f32,
                    );
                }
            } else {
                let dst = &mut hi[0][p0 * cout..(p0 + n) * cout];
                product(
                    n,
                    &sc.cols,
                    &sc.cols16,
                    kp,
                    &conv.fwd,
                    conv.fwd16.as_ref().filter(|_| bf16),
                    dst,
                    cout,
                    Epilogue::BiasLeaky(&conv.b, LEAKY_SLOPE as f32),
                );
            }
        }
    }
}

/// The backward pass of one block from the gradient in its pooled features (`blk.head`): the
/// input gradient into `blk.x` if `input`, and per layer the block's share of `dW` (`[cout,
/// kp]`) and `db` if `weights`.
fn backward_block(
    convs: &[Conv],
    geos: &[Geo],
    precision: Precision,
    blk: &mut Block,
    [c, h, w]: [usize; 3],
    input: bool,
    weights: bool,
) -> Vec<(Vec<f32>, Vec<f32>)> {
    let bf16 = precision != Precision::F32;
    // Full bf16: the activations below the top exist in bf16 only.
    let full16 = precision == Precision::Bf16;
    assert!(
        !(weights && full16),
        "weight gradients need an f32 or mixed-bf16 kernel"
    );
    let images = blk.input.len() / (c * h * w);
    let sc = &mut *blk.sc;
    let last = convs.len() - 1;
    let feats = convs[last].cout;
    // The top layer's output gradient is the pooled gradient spread over its positions.
    let top = &blk.acts[last];
    let hw = geos[last].hw_out();
    // `grad` and `next` only grow (their live lengths are tracked), so no pass re-zeroes
    // them when the layers' sizes alternate.
    let mut grad_len = top.len();
    grow(&mut sc.grad, grad_len);
    for (g, d) in sc.grad[..grad_len]
        .chunks_exact_mut(hw * feats)
        .zip(blk.head.chunks_exact(feats))
    {
        for row in g.chunks_exact_mut(feats) {
            row.iter_mut().zip(d).for_each(|(r, d)| *r = d / hw as f32);
        }
    }
    leaky_back(&mut sc.grad[..grad_len], top);
    // bf16 chains: whether `sc.grad16` already holds the current output gradient.
    let mut grad16_ready = false;
    let mut out = Vec::new();
    for l in (0..convs.len()).rev() {
        let (conv, g) = (&convs[l], &geos[l]);
        let (kp, cout) = (g.kp(), conv.cout);
        let rows = grad_len / cout;
        let piece = piece_rows(kp);
        // The layer's input: f32 (empty below the top for full bf16), and in bf16.
        let src: &[f32] = if l == 0 { blk.input } else { blk.acts[l - 1] };
        let src16: &[u16] = if l == 0 { &[] } else { blk.acts16[l - 1] };
        let src_len = images * g.h * g.w * g.cin;
        if weights {
            let mut dw = vec![0.0f32; cout * kp];
            for p0 in (0..rows).step_by(piece) {
                let n = piece.min(rows - p0);
                sc.cols.resize(n * kp, 0.0);
                im2col(src, g, p0..p0 + n, &mut sc.cols);
                // SAFETY: `dw` is `cout x kp`; the gradient rows `p0..p0 + n` (`cout` values
                // each) are read transposed, the column rows are `n x kp`.
                unsafe {
                    matmul(
                        (cout, kp, n),
                        dw.as_mut_ptr(),
                        kp,
                        p0 > 0,
                        sc.grad[p0 * cout..].as_ptr(),
                        (1, cout),
                        sc.cols.as_ptr(),
                        (kp, 1),
                    );
                }
            }
            let mut db = vec![0.0f32; cout];
            for row in sc.grad[..grad_len].chunks_exact(cout) {
                db.iter_mut().zip(row).for_each(|(d, v)| *d += v);
            }
            out.push((dw, db));
        }
        if l == 0 && !input {
            break;
        }
        // The product's `A` is the output gradient, `cout` values a row (bf16: an even
        // number of them).
        let a_rs = if bf16 { cout.next_multiple_of(2) } else { cout };
        if bf16 && !grad16_ready {
            sc.grad16.clear();
            sc.grad16.resize(rows * a_rs, 0);
            if a_rs == cout {
                to_bf16(&sc.grad[..grad_len], &mut sc.grad16);
            } else {
                for (d, s) in sc
                    .grad16
                    .chunks_exact_mut(a_rs)
                    .zip(sc.grad[..grad_len].chunks_exact(cout))
                {
                    to_bf16(s, &mut d[..cout]);
                }
            }
        }
        // Column-row gradients = dz W, added back onto the input positions; the input
        // gradient is zeroed piece by piece just ahead of the first additions into it.
        grow(&mut sc.next, src_len);
        let next = &mut sc.next[..src_len];
        let mut zeroed = 0;
        for p0 in (0..rows).step_by(piece) {
            let n = piece.min(rows - p0);
            sc.dcols.resize(n * kp, 0.0);
            let (a32, a16): (&[f32], &[u16]) = if bf16 {
                (&[], &sc.grad16[p0 * a_rs..(p0 + n) * a_rs])
            } else {
                (&sc.grad[p0 * cout..(p0 + n) * cout], &[])
            };
            product(
                n,
                a32,
                a16,
                a_rs,
                &conv.bwd,
                conv.bwd16.as_ref(),
                &mut sc.dcols,
                kp,
                Epilogue::Store,
            );
            let end = read_end(g, p0..p0 + n).max(zeroed);
            next[zeroed..end].fill(0.0);
            zeroed = end;
            col2im_add(&sc.dcols, g, p0..p0 + n, next, 0);
        }
        next[zeroed..].fill(0.0);
        // Through the LeakyReLU of the layer below; for bf16 chains straight into the next
        // product's bf16 input when nothing else needs the f32 gradient.
        grad16_ready = l > 0 && bf16 && !weights && g.cin % 2 == 0;
        if grad16_ready {
            grow(&mut sc.grad16, src_len);
            let out16 = &mut sc.grad16[..src_len];
            if full16 {
                leaky_back_bf16(next, src16, out16);
            } else {
                leaky_back_bf16(next, src, out16);
            }
        } else if l > 0 {
            if full16 {
                leaky_back(next, src16);
            } else {
                leaky_back(next, src);
            }
        }
        std::mem::swap(&mut sc.grad, &mut sc.next);
        grad_len = src_len;
    }
    if input {
        transpose(&sc.grad[..grad_len], blk.x, c, h * w, false);
    }
    out.reverse();
    out
}
