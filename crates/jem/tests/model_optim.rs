//! Models build and run for both input sizes; the optimisers follow their update rules
//! exactly; the learning-rate schedule has its warm-up and decays.

use burn::module::Module;
use burn::prelude::*;
use jem::model::{ModelConfig, NormKind};
use jem::optim::{Algorithm, OptimConfig};

#[test]
fn models_give_logits_for_28x28x1_and_32x32x3() {
    let d = Device::flex().autodiff();
    d.seed(0);
    let configs = [
        ModelConfig::default(),
        ModelConfig::Wrn {
            depth: 10,
            widen: 1,
            norm: NormKind::None,
            dropout: 0.0,
        },
        ModelConfig::Wrn {
            depth: 10,
            widen: 2,
            norm: NormKind::Batch,
            dropout: 0.3,
        },
        ModelConfig::Wrn {
            depth: 16,
            widen: 1,
            norm: NormKind::Group,
            dropout: 0.0,
        },
    ];
    for cfg in &configs {
        cfg.validate().unwrap();
        for (c, s, k) in [(1usize, 28usize, 10usize), (3, 32, 100)] {
            let m = cfg.init(c, k, &d);
            let x = Tensor::<4>::zeros([2, c, s, s], &d);
            let logits = m.forward(x.clone());
            assert_eq!(logits.dims(), [2, k], "{cfg:?} on {c}x{s}x{s}");
            let v: Vec<f32> = logits.into_data().try_to_vec::<f32>().unwrap();
            assert!(v.iter().all(|x| x.is_finite()));
            assert_eq!(m.features(x).dims()[0], 2);
        }
    }
    // WRN-28-10 has the expected ~36.5M parameters.
    let wrn = ModelConfig::Wrn {
        depth: 28,
        widen: 10,
        norm: NormKind::None,
        dropout: 0.0,
    }
    .init(3, 10, &Device::flex());
    let n = wrn.num_params();
    assert!((36_000_000..37_000_000).contains(&n), "{n} parameters");
}

/// The update rule applied by hand, in f64, to a scalar parameter `w0` with gradients `grads`.
fn reference_updates(cfg: &OptimConfig, w0: f32, grads: &[f32]) -> Vec<f32> {
    let mut out = Vec::new();
    let (mut m, mut v, mut w) = (0.0f64, 0.0f64, w0 as f64);
    for (t, &g) in grads.iter().enumerate() {
        let g = g as f64 + cfg.weight_decay * w;
        match cfg.algorithm {
            Algorithm::Adam => {
                m = cfg.beta1 * m + (1.0 - cfg.beta1) * g;
                v = cfg.beta2 * v + (1.0 - cfg.beta2) * g * g;
                let mh = m / (1.0 - cfg.beta1.powi(t as i32 + 1));
                let vh = v / (1.0 - cfg.beta2.powi(t as i32 + 1));
                w -= cfg.lr * mh / (vh.sqrt() + cfg.eps);
            }
            Algorithm::Sgd => {
                m = if t == 0 { g } else { cfg.momentum * m + g };
                w -= cfg.lr * m;
            }
        }
        out.push(w as f32);
    }
    out
}

#[test]
fn optimisers_match_their_update_rules() {
    use burn::optim::GradientsParams;
    use jem::optim::Optimizer;
    let d = Device::flex().autodiff();
    d.seed(1);
    for algorithm in [Algorithm::Adam, Algorithm::Sgd] {
        let cfg = OptimConfig {
            algorithm,
            lr: 0.1,
            weight_decay: 0.01,
            ..OptimConfig::default()
        };
        let mut model = ModelConfig::Cnn { widths: vec![2] }.init(1, 2, &d);
        let mut opt = Optimizer::new(&cfg);
        // Track the head bias, whose gradient is exactly the mean over the batch of
        // softmax - onehot; compare against the rule applied by hand to those gradients.
        let x = Tensor::<4>::ones([1, 1, 4, 4], &d);
        let mut grads_seen = Vec::new();
        let mut biases = Vec::new();
        let first_bias = bias_of(&model);
        for _ in 0..3 {
            let logits = model.forward(x.clone());
            let loss = logits.slice([0..1, 0..1]).sum();
            let g = loss.backward();
            let gp = GradientsParams::from_grads(g, &model);
            grads_seen.push(1.0f32); // d loss / d bias[0] = 1 for y = logit[0]
            model = opt.step(cfg.lr, model, gp);
            biases.push(bias_of(&model));
        }
        let want = reference_updates(&cfg, first_bias, &grads_seen);
        for (got, want) in biases.iter().zip(want) {
            assert!((got - want).abs() < 1e-5, "{algorithm:?}: {got} vs {want}");
        }
        assert_eq!(opt.steps(), 3);
    }
}

fn bias_of(model: &jem::model::Classifier) -> f32 {
    use burn::module::{ModuleVisitor, Param};
    struct Last(Vec<Vec<f32>>);
    impl ModuleVisitor for Last {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            self.0
                .push(p.val().into_data().try_to_vec::<f32>().unwrap());
        }
    }
    let mut l = Last(Vec::new());
    model.visit(&mut l);
    l.0.last().unwrap()[0]
}

#[test]
fn learning_rate_schedule_warms_up_and_decays() {
    let cfg = OptimConfig {
        lr: 1e-3,
        warmup_steps: 10,
        decay_epochs: vec![2, 4],
        decay_rate: 0.5,
        ..OptimConfig::default()
    };
    assert!((cfg.lr_at(0, 0) - 1e-4).abs() < 1e-12);
    assert!((cfg.lr_at(4, 0) - 5e-4).abs() < 1e-12);
    assert!((cfg.lr_at(100, 1) - 1e-3).abs() < 1e-12);
    assert!((cfg.lr_at(100, 2) - 5e-4).abs() < 1e-12);
    assert!((cfg.lr_at(100, 5) - 2.5e-4).abs() < 1e-12);
}
