//! Replay buffer: reinit frequency statistics, class partitions, exact save/load.

use jem::buffer::{BufferConfig, ReplayBuffer};
use jem::rng::Rng;

#[test]
fn reinit_frequency_matches_its_setting() {
    let cfg = BufferConfig::default();
    let mut rng = Rng::new(1, 0);
    let buf = ReplayBuffer::uniform(
        &BufferConfig {
            size: 1000,
            ..cfg.clone()
        },
        [1, 4, 4],
        10,
        &mut rng,
    );
    let (batches, b) = (2000, 64);
    let mut n = 0;
    for _ in 0..batches {
        n += buf.draw(b, None, 0.05, &mut rng).n_reinit;
    }
    let trials = (batches * b) as f64;
    let sd = (trials * 0.05 * 0.95).sqrt();
    assert!(
        (n as f64 - trials * 0.05).abs() < 4.0 * sd,
        "{n} reinits in {trials} draws"
    );
    assert_eq!(buf.draw(b, None, 0.0, &mut rng).n_reinit, 0);
    assert_eq!(buf.draw(b, None, 1.0, &mut rng).n_reinit, b);
}

#[test]
fn drawn_chains_are_the_stored_ones_or_fresh_uniform_noise() {
    let mut rng = Rng::new(2, 0);
    let cfg = BufferConfig {
        size: 50,
        reinit_freq: 0.5,
        conditional: false,
        ..Default::default()
    };
    let mut buf = ReplayBuffer::uniform(&cfg, [1, 2, 2], 10, &mut rng);
    // Mark every stored chain with a value noise can never produce.
    let marks: Vec<f32> = (0..50).flat_map(|i| vec![10.0 + i as f32; 4]).collect();
    buf.store(&(0..50).collect::<Vec<_>>(), &marks);
    let d = buf.draw(200, None, 0.5, &mut rng);
    let mut fresh = 0;
    for (k, &slot) in d.slots.iter().enumerate() {
        let chain = &d.start[k * 4..(k + 1) * 4];
        if chain[0] >= 10.0 {
            assert_eq!(chain, buf.chain(slot));
        } else {
            fresh += 1;
            assert!(chain.iter().all(|v| (-1.0..1.0).contains(v)));
        }
    }
    assert_eq!(fresh, d.n_reinit);
}

#[test]
fn conditional_draws_stay_in_their_class_partition() {
    let mut rng = Rng::new(3, 0);
    let cfg = BufferConfig {
        size: 100,
        reinit_freq: 0.05,
        conditional: true,
        ..Default::default()
    };
    let buf = ReplayBuffer::uniform(&cfg, [1, 2, 2], 10, &mut rng);
    let labels: Vec<usize> = (0..500).map(|i| i % 10).collect();
    let d = buf.draw(500, Some(&labels), 0.0, &mut rng);
    for (&slot, &y) in d.slots.iter().zip(&labels) {
        assert_eq!(slot / 10, y, "slot {slot} is not in class {y}'s partition");
    }
    let free = buf.draw(300, None, 0.0, &mut rng);
    let ys = free.labels.unwrap();
    for (&slot, &y) in free.slots.iter().zip(&ys) {
        assert_eq!(slot / 10, y);
    }
    assert!(cfg.validate(10, 64).is_ok());
    let err = BufferConfig { size: 105, ..cfg }
        .validate(10, 64)
        .unwrap_err();
    assert!(err.to_string().contains("buffer.size"), "{err}");
}

#[test]
fn save_and_load_round_trip_exactly_and_reject_mismatches() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buffer.safetensors");
    let cfg = BufferConfig {
        size: 30,
        reinit_freq: 0.05,
        conditional: true,
        ..Default::default()
    };
    let buf = ReplayBuffer::uniform(&cfg, [3, 4, 4], 10, &mut Rng::new(4, 0));
    buf.save(&path, 17).unwrap();
    let back = ReplayBuffer::load(&path, 17, &cfg, [3, 4, 4], 10).unwrap();
    assert_eq!(buf, back);
    let wrong_step = ReplayBuffer::load(&path, 18, &cfg, [3, 4, 4], 10).unwrap_err();
    assert!(
        wrong_step.to_string().contains("inconsistent"),
        "{wrong_step}"
    );
    let wrong_size = ReplayBuffer::load(
        &path,
        17,
        &BufferConfig {
            size: 40,
            ..cfg.clone()
        },
        [3, 4, 4],
        10,
    )
    .unwrap_err();
    assert!(
        wrong_size.to_string().contains("buffer shape"),
        "{wrong_size}"
    );
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let truncated = ReplayBuffer::load(&path, 17, &cfg, [3, 4, 4], 10).unwrap_err();
    assert!(
        truncated.to_string().contains("buffer.safetensors"),
        "{truncated}"
    );
}
