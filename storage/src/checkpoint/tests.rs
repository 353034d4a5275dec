//! Save → load round trips through real files: every dtype, resharding
//! between layouts against a materialised reference, casts, subsets, plan
//! caching, replica dedup, corruption and racing savers.

use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::*;
use crate::error::Error;

/// Default options with a short wait, so a failing rank fails the test fast.
fn quick() -> SaveOptions {
    SaveOptions {
        timeout: std::time::Duration::from_secs(60),
        ..Default::default()
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Deterministic bytes of a whole tensor.
fn tensor_bytes(seed: u64, numel: u64, dtype: DType) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..numel as usize * dtype.size())
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The reference: the region's elements cut out of the full tensor.
fn slice(full: &[u8], shape: &[u64], region: &Region, es: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for r in region.runs(shape) {
        out.extend_from_slice(&full[r.start as usize * es..(r.start + r.len) as usize * es]);
    }
    out
}

/// `n` boxes splitting dimension `dim` into near-equal parts (some may be empty).
fn split_dim(shape: &[u64], n: u64, dim: usize) -> Vec<Region> {
    (0..n)
        .map(|k| Region::split_dim(shape, dim, n, k))
        .collect()
}

/// Flat ranges cut at the given (sorted) points.
fn split_flat(numel: u64, cuts: &[u64]) -> Vec<Region> {
    let mut pts = vec![0];
    pts.extend(cuts.iter().map(|c| c % (numel + 1)));
    pts.push(numel);
    pts.sort_unstable();
    pts.windows(2)
        .map(|w| Region::Flat {
            start: w[0],
            len: w[1] - w[0],
        })
        .collect()
}

struct Tensor {
    fqn: String,
    dtype: DType,
    shape: Vec<u64>,
    full: Vec<u8>,
}

/// Save `tensors` with `layout[rank][tensor]` regions, one thread per rank.
fn save_world(
    root: &Path,
    step: u64,
    run: &str,
    tensors: &[Tensor],
    layout: &[Vec<Region>],
    opts: &SaveOptions,
) -> Vec<SaveReport> {
    let world = layout.len() as u32;
    std::thread::scope(|s| {
        let hs: Vec<_> = layout
            .iter()
            .enumerate()
            .map(|(rank, regions)| {
                s.spawn(move || {
                    let saver = rt()
                        .block_on(Saver::new(root, rank as u32, world, run, opts.clone()))
                        .unwrap();
                    let datas: Vec<Vec<u8>> = tensors
                        .iter()
                        .zip(regions)
                        .map(|(t, r)| slice(&t.full, &t.shape, r, t.dtype.size()))
                        .collect();
                    let shards: Vec<Shard> = tensors
                        .iter()
                        .zip(regions)
                        .zip(&datas)
                        .map(|((t, r), d)| Shard {
                            fqn: t.fqn.clone(),
                            dtype: t.dtype,
                            global_shape: t.shape.clone(),
                            region: r.clone(),
                            data: d,
                        })
                        .collect();
                    saver
                        .save_async(step, &shards, b"{\"optimizer_step\": 1}")
                        .unwrap()
                        .wait()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
    })
}

/// Load every tensor into `layout[rank][tensor]` regions and compare with the reference.
fn check_load(root: &Path, step: Option<u64>, tensors: &[Tensor], layout: &[Vec<Region>]) {
    let ck = rt().block_on(Checkpoint::open(root, step)).unwrap();
    for regions in layout {
        let mut bufs: Vec<Vec<u8>> = tensors
            .iter()
            .zip(regions)
            .map(|(t, r)| vec![0u8; r.numel() as usize * t.dtype.size()])
            .collect();
        let mut targets: Vec<Target> = tensors
            .iter()
            .zip(regions)
            .zip(bufs.iter_mut())
            .map(|((t, r), b)| Target {
                fqn: t.fqn.clone(),
                dtype: t.dtype,
                region: r.clone(),
                buf: b,
            })
            .collect();
        ck.load(&mut targets, &LoadOptions::default()).unwrap();
        for ((t, r), b) in tensors.iter().zip(regions).zip(&bufs) {
            assert!(
                *b == slice(&t.full, &t.shape, r, t.dtype.size()),
                "tensor {} region {r:?}",
                t.fqn
            );
        }
    }
}

#[test]
fn every_dtype_round_trips_bit_exactly_with_both_codecs() {
    for (codec, direct_io) in [
        (Codec::Raw, true),
        (Codec::Raw, false),
        (Codec::ShuffleZstd { level: 3 }, true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let tensors: Vec<Tensor> = DType::ALL
            .iter()
            .enumerate()
            .map(|(i, &d)| {
                let shape = vec![3 + i as u64, 7];
                Tensor {
                    fqn: format!("t.{}", d.name().to_lowercase()),
                    dtype: d,
                    full: tensor_bytes(i as u64, shape.iter().product(), d),
                    shape,
                }
            })
            .collect();
        let whole: Vec<Region> = tensors.iter().map(|t| Region::full(&t.shape)).collect();
        // Small blocks so a tensor spans several.
        let opts = SaveOptions {
            codec,
            block_bytes: 64,
            direct_io,
            ..quick()
        };
        save_world(
            dir.path(),
            1,
            "r1",
            &tensors,
            std::slice::from_ref(&whole),
            &opts,
        );
        check_load(dir.path(), None, &tensors, &[whole]);
        let ck = rt()
            .block_on(Checkpoint::open(dir.path(), Some(1)))
            .unwrap();
        assert_eq!(ck.extra(), b"{\"optimizer_step\": 1}");
        assert_eq!(ck.tensors().len(), DType::ALL.len());
        let v = ck.verify().unwrap();
        assert!(v.failures.is_empty(), "{:?}", v.failures);
    }
}

#[derive(Debug, Clone, Copy)]
enum Scenario {
    Rows2ToCols3,
    Rows3ToRows2,
    Four1,
    BoxToFlat,
    FlatToBox,
}

fn layout_for(s: Scenario, saving: bool, shapes: &[Vec<u64>], cuts: &[u64]) -> Vec<Vec<Region>> {
    let per_rank = |n: u64, f: &dyn Fn(&[u64]) -> Vec<Region>| -> Vec<Vec<Region>> {
        let per_tensor: Vec<Vec<Region>> = shapes.iter().map(|s| f(s)).collect();
        (0..n as usize)
            .map(|r| per_tensor.iter().map(|v| v[r].clone()).collect())
            .collect()
    };
    let numel = |s: &[u64]| s.iter().product::<u64>();
    let flat = |s: &[u64]| split_flat(numel(s), &cuts[..3]);
    let last = |s: &[u64]| s.len() - 1;
    match (s, saving) {
        (Scenario::Rows2ToCols3, true) => per_rank(2, &|s| split_dim(s, 2, 0)),
        (Scenario::Rows2ToCols3, false) => per_rank(3, &|s| split_dim(s, 3, last(s))),
        (Scenario::Rows3ToRows2, true) => per_rank(3, &|s| split_dim(s, 3, 0)),
        (Scenario::Rows3ToRows2, false) => per_rank(2, &|s| split_dim(s, 2, 0)),
        (Scenario::Four1, true) => per_rank(4, &|s| split_dim(s, 4, last(s))),
        (Scenario::Four1, false) => per_rank(1, &|s| vec![Region::full(s)]),
        (Scenario::BoxToFlat, true) => per_rank(2, &|s| split_dim(s, 2, last(s))),
        (Scenario::BoxToFlat, false) => per_rank(4, &flat),
        (Scenario::FlatToBox, true) => per_rank(4, &flat),
        (Scenario::FlatToBox, false) => per_rank(3, &|s| split_dim(s, 3, 0)),
    }
}

#[test]
fn resharding_matches_a_materialised_reference_on_random_odd_shapes() {
    for scenario in [
        Scenario::Rows2ToCols3,
        Scenario::Rows3ToRows2,
        Scenario::Four1,
        Scenario::BoxToFlat,
        Scenario::FlatToBox,
    ] {
        let mut runner = TestRunner::new(Config {
            cases: 6,
            failure_persistence: None,
            ..Config::default()
        });
        let shape = prop::collection::vec(1u64..23, 1..4);
        let strat = (
            prop::collection::vec(shape, 1..4),
            prop::collection::vec(0u64..10_000, 3),
            any::<u64>(),
            8u64..40,
        );
        runner
            .run(&strat, |(shapes, cuts, seed, block)| {
                let dir = tempfile::tempdir().unwrap();
                let tensors: Vec<Tensor> = shapes
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        let dtype = [DType::F32, DType::BF16, DType::I64][i % 3];
                        Tensor {
                            fqn: format!("layers.{i}.w"),
                            dtype,
                            full: tensor_bytes(seed ^ i as u64, s.iter().product(), dtype),
                            shape: s.clone(),
                        }
                    })
                    .collect();
                // Column slabs off, many, or a few (a divisor of 12 that
                // keeps rows of at least 4 bytes).
                let opts = SaveOptions {
                    block_bytes: block * 8,
                    column_slabs: [0, 12, 6][(seed % 3) as usize],
                    slab_min_row_bytes: 4,
                    direct_io: seed % 4 != 0,
                    ..quick()
                };
                save_world(
                    dir.path(),
                    3,
                    "p",
                    &tensors,
                    &layout_for(scenario, true, &shapes, &cuts),
                    &opts,
                );
                check_load(
                    dir.path(),
                    Some(3),
                    &tensors,
                    &layout_for(scenario, false, &shapes, &cuts),
                );
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{scenario:?}: {e}"));
    }
}

#[test]
fn column_slabs_let_a_column_shard_read_only_its_own_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let shape = vec![64u64, 96];
    let tensors = [Tensor {
        fqn: "w".into(),
        dtype: DType::F32,
        full: tensor_bytes(7, 64 * 96, DType::F32),
        shape: shape.clone(),
    }];
    let opts = SaveOptions {
        block_bytes: 4096,
        slab_min_row_bytes: 16,
        ..quick()
    };
    let rows2: Vec<Vec<Region>> = (0..2)
        .map(|k| vec![Region::split_dim(&shape, 0, 2, k)])
        .collect();
    let reports = save_world(dir.path(), 1, "s", &tensors, &rows2, &opts);
    assert_eq!(
        reports.iter().map(|r| r.chunks_written).sum::<usize>(),
        2 * 12
    );
    // Load one region of "w"; its bytes and the bytes read.
    let load = |root: &Path, region: &Region| -> (Vec<u8>, u64) {
        let ck = rt().block_on(Checkpoint::open(root, None)).unwrap();
        let mut buf = vec![0u8; region.numel() as usize * 4];
        let rep = ck
            .load(
                &mut [Target {
                    fqn: "w".into(),
                    dtype: DType::F32,
                    region: region.clone(),
                    buf: &mut buf,
                }],
                &LoadOptions::default(),
            )
            .unwrap();
        (buf, rep.bytes_read)
    };
    for n in [3u64, 4, 5] {
        for k in 0..n {
            let region = Region::split_dim(&shape, 1, n, k);
            let (buf, bytes_read) = load(dir.path(), &region);
            assert!(buf == slice(&tensors[0].full, &shape, &region, 4));
            let owned = buf.len() as u64;
            if 12 % n == 0 {
                // Degrees dividing 12 read exactly their own slabs.
                assert_eq!(bytes_read, owned, "{k} of {n}");
            } else {
                // Others at most one slab more on each side (8 columns of 64 rows).
                assert!(
                    bytes_read <= owned + 2 * 64 * 8 * 4,
                    "{k} of {n}: {bytes_read}"
                );
            }
        }
    }
    // Without slabs the same column shard reads every row in full.
    let dir2 = tempfile::tempdir().unwrap();
    let off = SaveOptions {
        column_slabs: 0,
        ..opts
    };
    save_world(dir2.path(), 1, "s", &tensors, &rows2, &off);
    let (_, bytes_read) = load(dir2.path(), &Region::split_dim(&shape, 1, 3, 1));
    assert_eq!(bytes_read, 64 * 96 * 4);
}

#[test]
fn irregular_flat_shards_spanning_tensors_load_into_boxes() {
    // ZeRO-style: the three tensors concatenated into one flat buffer of
    // 12*5 + 7 + 3*9 = 94 elements, cut at 41 and 63 (inside the first and
    // third tensors). Each rank saves its slice as per-tensor flat chunks.
    let shapes = [vec![12u64, 5], vec![7], vec![3, 9]];
    let tensors: Vec<Tensor> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| Tensor {
            fqn: format!("p{i}"),
            dtype: DType::F32,
            full: tensor_bytes(40 + i as u64, s.iter().product(), DType::F32),
            shape: s.clone(),
        })
        .collect();
    let cuts = [0u64, 41, 63, 94];
    let starts = [0u64, 60, 67];
    let mut layout = Vec::new();
    for r in 0..3 {
        let (lo, hi) = (cuts[r], cuts[r + 1]);
        let regions: Vec<Region> = tensors
            .iter()
            .zip(starts)
            .map(|(t, s0)| {
                let n: u64 = t.shape.iter().product();
                let (a, b) = (lo.clamp(s0, s0 + n) - s0, hi.clamp(s0, s0 + n) - s0);
                Region::Flat {
                    start: a,
                    len: b - a,
                }
            })
            .collect();
        layout.push(regions);
    }
    let dir = tempfile::tempdir().unwrap();
    save_world(dir.path(), 9, "z", &tensors, &layout, &quick());
    let boxes: Vec<Vec<Region>> = (0..2)
        .map(|r| {
            tensors
                .iter()
                .map(|t| split_dim(&t.shape, 2, 0)[r].clone())
                .collect()
        })
        .collect();
    check_load(dir.path(), Some(9), &tensors, &boxes);
}

#[test]
fn subset_cast_missing_policy_and_plan_cache() {
    let dir = tempfile::tempdir().unwrap();
    let t = vec![
        Tensor {
            fqn: "a".into(),
            dtype: DType::BF16,
            shape: vec![8, 3],
            full: tensor_bytes(1, 24, DType::BF16),
        },
        Tensor {
            fqn: "b".into(),
            dtype: DType::F32,
            shape: vec![5],
            full: tensor_bytes(2, 5, DType::F32),
        },
    ];
    let whole: Vec<Region> = t.iter().map(|x| Region::full(&x.shape)).collect();
    let first = save_world(
        dir.path(),
        1,
        "c",
        &t,
        &[whole.clone(), whole.clone()],
        &quick(),
    );
    assert!(first.iter().all(|r| !r.plan_cache_hit));
    // Replicated on both ranks: written once, by different ranks for balance.
    let written: usize = first.iter().map(|r| r.chunks_written).sum();
    assert_eq!(written, 2, "{first:?}");
    assert!(
        first.iter().all(|r| r.chunks_written == 1),
        "balanced: {first:?}"
    );

    // Same savers, second step: the plan comes from the cache.
    let world = 2;
    let reports: Vec<SaveReport> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..world)
            .map(|rank| {
                let (t, whole) = (&t, &whole);
                let root = dir.path();
                s.spawn(move || {
                    let saver = rt()
                        .block_on(Saver::new(root, rank, world, "c2", quick()))
                        .unwrap();
                    let shards: Vec<Shard> = t
                        .iter()
                        .zip(whole)
                        .map(|(x, r)| Shard {
                            fqn: x.fqn.clone(),
                            dtype: x.dtype,
                            global_shape: x.shape.clone(),
                            region: r.clone(),
                            data: &x.full,
                        })
                        .collect();
                    let a = saver.save_async(2, &shards, b"").unwrap().wait().unwrap();
                    let b = saver.save_async(3, &shards, b"").unwrap().wait().unwrap();
                    (a, b)
                })
            })
            .collect();
        hs.into_iter()
            .flat_map(|h| {
                let (a, b) = h.join().unwrap();
                assert!(!a.plan_cache_hit);
                [b]
            })
            .collect()
    });
    assert!(reports.iter().all(|r| r.plan_cache_hit), "{reports:?}");

    let ck = rt().block_on(Checkpoint::open(dir.path(), None)).unwrap();
    assert_eq!(ck.step.step, 3, "latest is the last commit");
    // Subset + bf16 -> f32 cast of one row.
    let mut out = vec![0u8; 3 * 4];
    let region = Region::Box {
        offsets: vec![5, 0],
        lengths: vec![1, 3],
    };
    ck.load(
        &mut [Target {
            fqn: "a".into(),
            dtype: DType::F32,
            region: region.clone(),
            buf: &mut out,
        }],
        &LoadOptions::default(),
    )
    .unwrap();
    let want = slice(&t[0].full, &t[0].shape, &region, 2);
    for k in 0..3 {
        let bf = half::bf16::from_le_bytes([want[2 * k], want[2 * k + 1]]).to_f32();
        let got = f32::from_le_bytes(out[4 * k..4 * k + 4].try_into().unwrap());
        assert_eq!(got.to_bits(), bf.to_bits());
    }
    // A missing tensor: an error when strict, reported when not.
    let mut buf = vec![0u8; 4];
    let mut tg = [Target {
        fqn: "nope".into(),
        dtype: DType::F32,
        region: Region::Flat { start: 0, len: 1 },
        buf: &mut buf,
    }];
    assert!(ck.load(&mut tg, &LoadOptions { strict: true }).is_err());
    let r = ck.load(&mut tg, &LoadOptions { strict: false }).unwrap();
    assert_eq!(r.missing, vec!["nope".to_string()]);
    // A cast between an int and a float type is refused.
    let mut bb = vec![0u8; 20];
    let mut tg = [Target {
        fqn: "b".into(),
        dtype: DType::I32,
        region: Region::full(&[5]),
        buf: &mut bb,
    }];
    assert!(ck.load(&mut tg, &LoadOptions::default()).is_err());
}

#[test]
fn flipped_byte_and_truncated_file_fail_load_and_verify_naming_tensor_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let t = vec![
        Tensor {
            fqn: "enc.w".into(),
            dtype: DType::F32,
            shape: vec![64, 64],
            full: tensor_bytes(5, 4096, DType::F32),
        },
        Tensor {
            fqn: "enc.b".into(),
            dtype: DType::F32,
            shape: vec![64],
            full: tensor_bytes(6, 64, DType::F32),
        },
    ];
    let whole: Vec<Region> = t.iter().map(|x| Region::full(&x.shape)).collect();
    let opts = SaveOptions {
        block_bytes: 4096,
        ..quick()
    };
    save_world(dir.path(), 1, "x", &t, std::slice::from_ref(&whole), &opts);
    let file = dir.path().join("data/step-1-x/rank-0.bin");
    let pristine = std::fs::read(&file).unwrap();

    // One flipped byte inside enc.w.
    let mut bad = pristine.clone();
    bad[5000] ^= 0x10;
    std::fs::write(&file, &bad).unwrap();
    let ck = rt().block_on(Checkpoint::open(dir.path(), None)).unwrap();
    let v = ck.verify().unwrap();
    assert_eq!(v.failures.len(), 1, "{:?}", v.failures);
    assert!(
        v.failures[0].contains("enc.w") && v.failures[0].contains("rank-0.bin"),
        "{}",
        v.failures[0]
    );
    let mut buf = vec![0u8; 4096 * 4];
    let err = ck
        .load(
            &mut [Target {
                fqn: "enc.w".into(),
                dtype: DType::F32,
                region: Region::full(&[64, 64]),
                buf: &mut buf,
            }],
            &LoadOptions::default(),
        )
        .unwrap_err();
    assert!(
        matches!(err, Error::Corrupt(_))
            && err.to_string().contains("enc.w")
            && err.to_string().contains("rank-0.bin"),
        "{err}"
    );
    // Rows the flip does not touch still load.
    let mut row = vec![0u8; 64 * 4];
    ck.load(
        &mut [Target {
            fqn: "enc.w".into(),
            dtype: DType::F32,
            region: Region::Box {
                offsets: vec![0, 0],
                lengths: vec![1, 64],
            },
            buf: &mut row,
        }],
        &LoadOptions::default(),
    )
    .unwrap();

    // Truncated: the tail (enc.b) is gone.
    std::fs::write(&file, &pristine[..16_400]).unwrap();
    let v = ck.verify().unwrap();
    assert!(
        !v.failures.is_empty()
            && v.failures
                .iter()
                .any(|f| f.contains("enc.b") && f.contains("rank-0.bin")),
        "{:?}",
        v.failures
    );
    let mut b = vec![0u8; 256];
    let err = ck
        .load(
            &mut [Target {
                fqn: "enc.b".into(),
                dtype: DType::F32,
                region: Region::full(&[64]),
                buf: &mut b,
            }],
            &LoadOptions::default(),
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("enc.b") && err.to_string().contains("truncated"),
        "{err}"
    );
}

#[test]
fn a_second_saver_on_a_committed_step_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let t = vec![Tensor {
        fqn: "w".into(),
        dtype: DType::F32,
        shape: vec![4],
        full: tensor_bytes(1, 4, DType::F32),
    }];
    let whole = vec![Region::full(&[4])];
    save_world(
        dir.path(),
        5,
        "first",
        &t,
        std::slice::from_ref(&whole),
        &quick(),
    );
    let saver = rt()
        .block_on(Saver::new(dir.path(), 0, 1, "second", quick()))
        .unwrap();
    let other = tensor_bytes(2, 4, DType::F32);
    let shards = [Shard {
        fqn: "w".into(),
        dtype: DType::F32,
        global_shape: vec![4],
        region: whole[0].clone(),
        data: &other,
    }];
    let err = saver
        .save_async(5, &shards, b"")
        .unwrap()
        .wait()
        .unwrap_err();
    assert!(
        matches!(err, Error::Conflict(_)) && err.to_string().contains("step 5"),
        "{err}"
    );
    // The committed data is the first saver's.
    check_load(dir.path(), Some(5), &t, &[whole]);
}

#[test]
fn racing_commits_on_one_step_have_exactly_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    rt().block_on(CkptRoot::open(root, true)).unwrap();
    let datas: Vec<Vec<u8>> = (0..4).map(|i| tensor_bytes(i, 256, DType::F32)).collect();
    let results: Vec<Result<SaveReport, Error>> = std::thread::scope(|s| {
        let hs: Vec<_> = datas
            .iter()
            .enumerate()
            .map(|(i, d)| {
                s.spawn(move || {
                    let saver = rt()
                        .block_on(Saver::new(root, 0, 1, &format!("racer{i}"), quick()))
                        .unwrap();
                    let sh = [Shard {
                        fqn: "w".into(),
                        dtype: DType::F32,
                        global_shape: vec![256],
                        region: Region::full(&[256]),
                        data: d,
                    }];
                    saver.save_async(1, &sh, b"").unwrap().wait()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let winners: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_ok())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    for r in &results {
        if let Err(e) = r {
            assert!(matches!(e, Error::Conflict(_)), "{e}");
        }
    }
    let w = winners[0];
    let t = vec![Tensor {
        fqn: "w".into(),
        dtype: DType::F32,
        shape: vec![256],
        full: datas[w].clone(),
    }];
    check_load(root, Some(1), &t, &[vec![Region::full(&[256])]]);
}
