//! Classifiers whose logits define the energy: the CPU benchmark CNN and a Wide-ResNet.
//!
//! Both use LeakyReLU(0.2) (smooth enough gradients for SGLD) and no normalisation by default,
//! as in the JEM paper; the Wide-ResNet can add batch or group norm and dropout.

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, Dropout, DropoutConfig, GroupNorm, GroupNormConfig, Linear,
    LinearConfig, PaddingConfig2d,
};
use burn::prelude::*;
use burn::tensor::activation::leaky_relu;
use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::rng::Rng;

/// Negative slope of every LeakyReLU.
pub const LEAKY_SLOPE: f64 = 0.2;

/// Normalisation inside Wide-ResNet blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum NormKind {
    /// None (the JEM default: normalisation interferes with SGLD).
    #[default]
    None,
    /// Batch normalisation.
    Batch,
    /// Group normalisation with 16 channels per group (at most 32 groups).
    Group,
}

/// Which network, and its size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "arch", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ModelConfig {
    /// conv3x3 layers with LeakyReLU, global average pool, linear to the classes. By default
    /// the first convolution has stride 1 and each further one stride 2; `strides` sets each
    /// layer's (1 keeps the size, e.g. `[1, 1, 2, 1, 2, 1]` for a deeper net). The benchmark
    /// model is widths `[32, 64, 128, 128]`.
    Cnn {
        /// Channel widths of the convolutions.
        widths: Vec<usize>,
        /// Stride of each convolution, 1 or 2 (empty: 1, then 2 for every further layer).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        strides: Vec<usize>,
    },
    /// Wide-ResNet WRN-depth-widen (Zagoruyko & Komodakis), pre-activation blocks.
    Wrn {
        /// Depth, `6n + 4`.
        depth: usize,
        /// Widen factor.
        widen: usize,
        /// Normalisation in the blocks.
        #[serde(default)]
        norm: NormKind,
        /// Dropout probability between the two convolutions of a block.
        #[serde(default)]
        dropout: f64,
    },
}

/// The architectures, without their sizes (what `--arch` picks).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// The benchmark CNN.
    Cnn,
    /// Wide-ResNet (sized by depth and widen factor).
    Wrn,
}

impl ModelConfig {
    /// The benchmark CNN (default widths), or a Wide-ResNet WRN-`depth`-`widen` without
    /// normalisation or dropout.
    pub fn from_arch(arch: Arch, depth: usize, widen: usize) -> Self {
        match arch {
            Arch::Cnn => ModelConfig::default(),
            Arch::Wrn => ModelConfig::Wrn {
                depth,
                widen,
                norm: NormKind::None,
                dropout: 0.0,
            },
        }
    }

    /// The architecture.
    pub fn arch(&self) -> Arch {
        match self {
            ModelConfig::Cnn { .. } => Arch::Cnn,
            ModelConfig::Wrn { .. } => Arch::Wrn,
        }
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig::cnn(vec![32, 64, 128, 128])
    }
}

/// The stride of each of `n` CNN layers: `strides` when given, else 1 then 2.
pub fn cnn_strides(n: usize, strides: &[usize]) -> Vec<usize> {
    if strides.is_empty() {
        (0..n).map(|i| if i == 0 { 1 } else { 2 }).collect()
    } else {
        strides.to_vec()
    }
}

impl ModelConfig {
    /// The CNN with these widths and the default strides.
    pub fn cnn(widths: Vec<usize>) -> Self {
        ModelConfig::Cnn {
            widths,
            strides: Vec::new(),
        }
    }

    /// Check the sizes.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self {
            ModelConfig::Cnn { widths, strides } => {
                if widths.is_empty() || widths.contains(&0) {
                    return Err(ConfigError::field(
                        "model.widths",
                        format!("{widths:?}: needs at least one width, all positive"),
                    ));
                }
                if !strides.is_empty()
                    && (strides.len() != widths.len()
                        || strides.iter().any(|s| !(1..=2).contains(s)))
                {
                    return Err(ConfigError::field(
                        "model.strides",
                        format!(
                            "{strides:?}: one stride per width ({} widths), each 1 or 2",
                            widths.len()
                        ),
                    ));
                }
            }
            ModelConfig::Wrn {
                depth,
                widen,
                dropout,
                ..
            } => {
                if *depth < 10 || (depth - 4) % 6 != 0 {
                    return Err(ConfigError::field(
                        "model.depth",
                        format!(
                            "{depth}: a Wide-ResNet depth is 6n + 4 with n >= 1 (10, 16, 22, 28, ...)"
                        ),
                    ));
                }
                if *widen == 0 {
                    return Err(ConfigError::field("model.widen", "must be at least 1"));
                }
                if !(0.0..1.0).contains(dropout) {
                    return Err(ConfigError::field(
                        "model.dropout",
                        format!("{dropout}: must be in [0, 1)"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Build the network for images with `in_channels` channels and `num_classes` outputs,
    /// with the initial weights of seed 0 (for a model whose weights are loaded next).
    pub fn init(&self, in_channels: usize, num_classes: usize, device: &Device) -> Classifier {
        self.init_seeded(in_channels, num_classes, device, 0)
    }

    /// Build the network with the initial weights of `seed`, drawn on the host from jem's
    /// own generator ([`crate::weights`]): the same seed gives the same weights on every
    /// device and whatever other threads do.
    pub fn init_seeded(
        &self,
        in_channels: usize,
        num_classes: usize,
        device: &Device,
        seed: u64,
    ) -> Classifier {
        let mut rng = Rng::new(seed, crate::weights::WEIGHT_STREAM);
        self.init_with(in_channels, num_classes, device, &mut rng)
    }

    /// Build the network with initial weights drawn from `rng` on the host.
    pub fn init_with(
        &self,
        in_channels: usize,
        num_classes: usize,
        device: &Device,
        rng: &mut Rng,
    ) -> Classifier {
        let model = match self {
            ModelConfig::Cnn { widths, strides } => Classifier::Cnn(Cnn::new(
                in_channels,
                widths,
                &cnn_strides(widths.len(), strides),
                num_classes,
                device,
            )),
            ModelConfig::Wrn {
                depth,
                widen,
                norm,
                dropout,
            } => Classifier::Wrn(Wrn::new(
                in_channels,
                *depth,
                *widen,
                *norm,
                *dropout,
                num_classes,
                device,
            )),
        };
        let model = crate::weights::draw_on_host(model, rng)
            .expect("every layer of jem's models has a host initialisation (tested)");
        materialize(&model);
        model
    }
}

/// Initialise every parameter now. burn initialises parameters lazily and a clone shares the
/// pending initialiser, so without this a frozen clone (`no_grad`, as SGLD uses) made before
/// the first forward would initialise the original's parameters without gradients too.
pub(crate) fn materialize<M: Module>(model: &M) {
    struct Touch;
    impl ModuleVisitor for Touch {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let _ = param.val();
        }
    }
    model.visit(&mut Touch);
}

fn conv3(cin: usize, cout: usize, stride: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([cin, cout], [3, 3])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(device)
}

/// Global average pool.
///
/// # Shapes
/// `[b, c, h, w] -> [b, c]`
fn global_avg_pool(x: Tensor<4>) -> Tensor<2> {
    let [b, c, _, _] = x.dims();
    x.mean_dim(3).mean_dim(2).reshape([b, c]) // [b, c]
}

/// The plain strided CNN (the CPU benchmark model with the default widths).
#[derive(Module, Debug)]
pub struct Cnn {
    convs: Vec<Conv2d>,
    head: Linear,
}

impl Cnn {
    fn new(
        in_channels: usize,
        widths: &[usize],
        strides: &[usize],
        num_classes: usize,
        device: &Device,
    ) -> Self {
        let mut convs = Vec::with_capacity(widths.len());
        let mut cin = in_channels;
        for (&w, &s) in widths.iter().zip(strides) {
            convs.push(conv3(cin, w, s, device));
            cin = w;
        }
        Cnn {
            convs,
            head: LinearConfig::new(cin, num_classes).init(device),
        }
    }

    /// The convolutions and the head (for [`crate::cnn_cpu`]).
    pub(crate) fn parts(&self) -> (&[Conv2d], &Linear) {
        (&self.convs, &self.head)
    }

    /// Penultimate features.
    ///
    /// # Shapes
    /// `[b, c, h, w] -> [b, widths.last()]`
    pub fn features(&self, mut x: Tensor<4>) -> Tensor<2> {
        for conv in &self.convs {
            x = leaky_relu(conv.forward(x), LEAKY_SLOPE); // [b, w_i, h_i, w_i]
        }
        global_avg_pool(x) // [b, w_last]
    }
}

/// Batch or group normalisation.
#[derive(Module, Debug)]
pub enum NormLayer {
    /// Batch normalisation.
    Batch(BatchNorm),
    /// Group normalisation.
    Group(GroupNorm),
}

impl NormLayer {
    fn new(kind: NormKind, channels: usize, device: &Device) -> Option<Self> {
        match kind {
            NormKind::None => None,
            NormKind::Batch => Some(NormLayer::Batch(
                BatchNormConfig::new(channels).init(device),
            )),
            NormKind::Group => {
                let groups = (channels / 16).clamp(1, 32);
                Some(NormLayer::Group(
                    GroupNormConfig::new(groups, channels).init(device),
                ))
            }
        }
    }

    fn forward(norm: &Option<NormLayer>, x: Tensor<4>) -> Tensor<4> {
        match norm {
            None => x,
            Some(NormLayer::Batch(n)) => n.forward(x),
            Some(NormLayer::Group(n)) => n.forward(x),
        }
    }
}

/// A pre-activation wide residual block.
#[derive(Module, Debug)]
pub struct WideBlock {
    pub(crate) norm1: Option<NormLayer>,
    pub(crate) conv1: Conv2d,
    pub(crate) norm2: Option<NormLayer>,
    dropout: Dropout,
    pub(crate) conv2: Conv2d,
    pub(crate) shortcut: Option<Conv2d>,
}

impl WideBlock {
    fn new(
        cin: usize,
        cout: usize,
        stride: usize,
        norm: NormKind,
        p: f64,
        device: &Device,
    ) -> Self {
        let shortcut = (cin != cout || stride != 1).then(|| {
            Conv2dConfig::new([cin, cout], [1, 1])
                .with_stride([stride, stride])
                .init(device)
        });
        WideBlock {
            norm1: NormLayer::new(norm, cin, device),
            conv1: conv3(cin, cout, stride, device),
            norm2: NormLayer::new(norm, cout, device),
            dropout: DropoutConfig::new(p).init(),
            conv2: conv3(cout, cout, 1, device),
            shortcut,
        }
    }

    /// # Shapes
    /// `[b, cin, h, w] -> [b, cout, h / stride, w / stride]`
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let o = leaky_relu(NormLayer::forward(&self.norm1, x.clone()), LEAKY_SLOPE); // [b, cin, h, w]
        let y = self.conv1.forward(o.clone()); // [b, cout, h', w']
        let y = leaky_relu(NormLayer::forward(&self.norm2, y), LEAKY_SLOPE);
        let y = self.conv2.forward(self.dropout.forward(y)); // [b, cout, h', w']
        match &self.shortcut {
            Some(s) => y + s.forward(o), // [b, cout, h', w']
            None => y + x,
        }
    }
}

/// Wide-ResNet for 28x28 and 32x32 inputs (any size works: the head pools globally).
#[derive(Module, Debug)]
pub struct Wrn {
    pub(crate) stem: Conv2d,
    pub(crate) blocks: Vec<WideBlock>,
    pub(crate) norm: Option<NormLayer>,
    pub(crate) head: Linear,
}

impl Wrn {
    fn new(
        in_channels: usize,
        depth: usize,
        widen: usize,
        norm: NormKind,
        dropout: f64,
        num_classes: usize,
        device: &Device,
    ) -> Self {
        let n = (depth - 4) / 6;
        let widths = [16 * widen, 32 * widen, 64 * widen];
        let mut blocks = Vec::with_capacity(3 * n);
        let mut cin = 16;
        for (g, &w) in widths.iter().enumerate() {
            for i in 0..n {
                let stride = if i == 0 && g > 0 { 2 } else { 1 };
                blocks.push(WideBlock::new(cin, w, stride, norm, dropout, device));
                cin = w;
            }
        }
        Wrn {
            stem: conv3(in_channels, 16, 1, device),
            blocks,
            norm: NormLayer::new(norm, cin, device),
            head: LinearConfig::new(cin, num_classes).init(device),
        }
    }

    /// Penultimate features.
    ///
    /// # Shapes
    /// `[b, c, h, w] -> [b, 64 * widen]`
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = self.stem.forward(x); // [b, 16, h, w]
        for block in &self.blocks {
            x = block.forward(x);
        }
        let x = leaky_relu(NormLayer::forward(&self.norm, x), LEAKY_SLOPE); // [b, 64k, h/4, w/4]
        global_avg_pool(x) // [b, 64k]
    }
}

/// A classifier `f`; its logits are the negative class energies of the JEM.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)] // one per run; boxing would not fit burn's Module derive
pub enum Classifier {
    /// The strided CNN.
    Cnn(Cnn),
    /// The Wide-ResNet.
    Wrn(Wrn),
}

impl Classifier {
    /// Logits `f(x)`.
    ///
    /// # Shapes
    /// `[b, c, h, w] -> [b, classes]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        match self {
            Classifier::Cnn(m) => m.head.forward(m.features(x)), // [b, classes]
            Classifier::Wrn(m) => m.head.forward(m.features(x)), // [b, classes]
        }
    }

    /// The device the parameters live on (an autodiff device for a trainable model).
    pub fn device(&self) -> Device {
        self.devices()
            .into_iter()
            .next()
            .expect("a classifier has parameters")
    }

    /// Penultimate activations (the feature space used for FID-style comparisons).
    ///
    /// # Shapes
    /// `[b, c, h, w] -> [b, features]`
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        match self {
            Classifier::Cnn(m) => m.features(x),
            Classifier::Wrn(m) => m.features(x),
        }
    }

    /// Penultimate activations and logits from one pass.
    ///
    /// # Shapes
    /// `[b, c, h, w] -> ([b, features], [b, classes])`
    pub fn features_and_logits(&self, x: Tensor<4>) -> (Tensor<2>, Tensor<2>) {
        let f = self.features(x); // [b, features]
        let logits = match self {
            Classifier::Cnn(m) => m.head.forward(f.clone()), // [b, classes]
            Classifier::Wrn(m) => m.head.forward(f.clone()), // [b, classes]
        };
        (f, logits)
    }

    /// The features and logits of host images (`[n, c, h, w]` row-major, each of `shape`), by
    /// batches of at most `batch_size`, without autodiff: the one batching loop of every
    /// evaluation that reads a model's outputs through burn.
    pub fn outputs(&self, images: &[f32], shape: [usize; 3], batch_size: usize) -> Outputs {
        let mut out = Outputs::default();
        self.by_batches(images, shape, batch_size, |plain, x| {
            let (f, l) = plain.features_and_logits(x); // [b, d], [b, k]
            (out.dim, out.classes) = (f.dims()[1], l.dims()[1]);
            out.features.extend(host(f));
            out.logits.extend(host(l));
        });
        out
    }

    /// The logits alone of host images, as [`Classifier::outputs`] computes them, `[n, classes]`
    /// row-major (no features leave the device: what serving needs).
    pub fn logits(&self, images: &[f32], shape: [usize; 3], batch_size: usize) -> Vec<f32> {
        let mut out = Vec::new();
        self.by_batches(images, shape, batch_size, |plain, x| {
            out.extend(host(plain.forward(x))); // [b, k]
        });
        out
    }

    /// `f(plain, x)` for each batch `x` (`[b, c, h, w]`, at most `batch_size` images) of host
    /// `images`, `plain` being this model without autodiff.
    fn by_batches(
        &self,
        images: &[f32],
        shape: [usize; 3],
        batch_size: usize,
        mut f: impl FnMut(&Classifier, Tensor<4>),
    ) {
        let device = self.device().inner();
        let plain = self.valid();
        let len: usize = shape.iter().product();
        let [c, h, w] = shape;
        for chunk in images.chunks(batch_size.max(1) * len.max(1)) {
            let b = chunk.len() / len.max(1);
            let x = Tensor::<4>::from_data(TensorData::new(chunk.to_vec(), [b, c, h, w]), &device); // [b, c, h, w]
            f(&plain, x);
        }
    }
}

/// A 2-D f32 tensor's values on the host, row-major.
fn host(t: Tensor<2>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().expect("f32 outputs")
}

/// What [`Classifier::outputs`] computes for `n` images.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outputs {
    /// Penultimate features, `[n, dim]` row-major.
    pub features: Vec<f32>,
    /// Features per image (0 when there were no images).
    pub dim: usize,
    /// Logits, `[n, classes]` row-major.
    pub logits: Vec<f32>,
    /// Logits per image (0 when there were no images).
    pub classes: usize,
}
