//! Tests of `kmeans`.
use super::*;

/// Standard normal by Box–Muller.
fn normal(rng: &mut SplitMix64) -> f32 {
    let (u, v) = (1.0 - rng.next_f64(), rng.next_f64());
    ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
}

/// `per` rows around each centre (interleaved), standard deviation
/// `sigma`; returns rows and true blob ids.
fn blobs(centres: &[Vec<f32>], per: usize, sigma: f32, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut rng = SplitMix64::new(seed);
    let truth: Vec<u32> = (0..per * centres.len())
        .map(|i| (i % centres.len()) as u32)
        .collect();
    let data = truth.iter().flat_map(|&b| centres[b as usize].clone());
    (data.map(|c| c + sigma * normal(&mut rng)).collect(), truth)
}

/// True when labels and truth define the same partition.
fn same_partition(labels: &[u32], truth: &[u32]) -> bool {
    let (mut map, mut back) = (
        std::collections::HashMap::new(),
        std::collections::HashMap::new(),
    );
    let mut pairs = labels.iter().zip(truth);
    pairs.all(|(&l, &t)| *map.entry(l).or_insert(t) == t && *back.entry(t).or_insert(l) == l)
}

fn opts(k: usize, seed: u64) -> KMeansOptions {
    let mut o = KMeansOptions::default();
    (o.k, o.seed) = (k, seed);
    o
}

fn sorted(mut c: Vec<f32>) -> Vec<f32> {
    c.sort_by(f32::total_cmp);
    c
}

#[test]
fn splitmix_matches_reference_values() {
    // Vigna's splitmix64.c, seeded with 0 and with 1234567.
    assert_eq!(SplitMix64::new(0).next_u64(), 0xE220_A839_7B1D_CDAF);
    let mut r = SplitMix64::new(1_234_567);
    let got: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
    let want = [
        6457827717110365317,
        3203168211198807973,
        9817491932198370423,
    ];
    assert_eq!(got, want);
    // next_f64 and below are uniform: each of 5 buckets within 5% of 10k.
    let mut hist = [0usize; 5];
    for _ in 0..50_000 {
        assert!((0.0..1.0).contains(&r.next_f64()));
        hist[r.below(5)] += 1;
    }
    assert!(hist.iter().all(|h| (9_500..10_500).contains(h)), "{hist:?}");
    assert_eq!((r.below(0), r.below(1)), (0, 0));
}

#[test]
fn known_centroids_and_inertia() {
    let data = [0.0f32, 1.0, 10.0, 11.0];
    let m = fit(&data, 1, &opts(2, 3)).unwrap();
    assert_eq!(
        (sorted(m.centroids.clone()), m.inertia),
        (vec![0.5, 10.5], 1.0)
    );
    let l = m.assign(&data, 1);
    assert!(l[0] == l[1] && l[2] == l[3] && l[0] != l[2], "{l:?}");
    // Weighted: the mean is 2.5, the inertia 3 × 2.5² + 7.5².
    let m = fit_weighted(&[0.0, 10.0], 1, &[3.0, 1.0], &opts(1, 0)).unwrap();
    assert_eq!((m.centroids, m.inertia), (vec![2.5], 75.0));
    // A zero-weight row is never a seed and never moves a centroid.
    let m = fit_weighted(&[0.0, 10.0, 99.0], 1, &[1.0, 1.0, 0.0], &opts(2, 0)).unwrap();
    assert_eq!(sorted(m.centroids), [0.0, 10.0]);
}

#[test]
fn ties_go_to_lowest_index() {
    // Centroids with mean 0 keep the arithmetic exact, so ties are real.
    let mut m = fit(&[0.0], 1, &opts(1, 0)).unwrap();
    (m.k, m.centroids) = (4, vec![0.0, 2.0, 2.0, -4.0]);
    assert_eq!(m.assign(&[1.0, 2.0, 3.0, -5.0, -2.0], 2), [0, 1, 1, 3, 0]);
}

#[test]
fn recovers_three_blobs() {
    let mut third = vec![0.0f32; 8];
    (third[0], third[7]) = (-6.0, 6.0);
    let centres = vec![vec![0.0f32; 8], vec![6.0f32; 8], third];
    let (data, truth) = blobs(&centres, 300, 0.5, 11);
    for seed in 0..5 {
        let m = fit(&data, 8, &opts(3, seed)).unwrap();
        assert_eq!(m.k, 3);
        assert!(same_partition(&m.assign(&data, 0), &truth), "seed {seed}");
        // Each centroid lies near a true centre.
        for c in m.centroids.chunks_exact(8) {
            assert!(
                centres.iter().any(|t| squared_distance(c, t) < 0.05),
                "{c:?}"
            );
        }
    }
}

#[test]
fn deterministic_for_seed_and_thread_count() {
    let centres: Vec<Vec<f32>> = (0..5).map(|i| vec![i as f32 * 2.0; 16]).collect();
    let (data, _) = blobs(&centres, 2_000, 1.5, 5);
    let mut o = opts(12, 42);
    (o.train_sample, o.threads) = (4_000, 1);
    let a = fit(&data, 16, &o).unwrap();
    let la = a.assign(&data, 1);
    let bits = |m: &KMeans| m.centroids.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for threads in [1, 2, 3, 7] {
        o.threads = threads;
        let b = fit(&data, 16, &o).unwrap();
        assert_eq!(bits(&a), bits(&b), "threads {threads}");
        assert_eq!(
            (a.inertia.to_bits(), a.iterations),
            (b.inertia.to_bits(), b.iterations)
        );
        assert_eq!(la, b.assign(&data, threads));
    }
    o.seed = 43;
    assert_ne!(a.centroids, fit(&data, 16, &o).unwrap().centroids);
}

#[test]
fn k_clamped_to_distinct_rows() {
    let distinct = [
        [0.0f32, 0.0],
        [1.0, 0.0],
        [0.0, 1.0],
        [5.0, 5.0],
        [-3.0, 2.0],
    ];
    let data: Vec<f32> = (0..40).flat_map(|i| distinct[i % 5]).collect();
    let m = fit(&data, 2, &opts(10, 9)).unwrap();
    assert_eq!((m.k, m.inertia), (5, 0.0));
    let truth: Vec<u32> = (0..40).map(|i| (i % 5) as u32).collect();
    assert!(same_partition(&m.assign(&data, 2), &truth));
    // One distinct row, k 4: one centroid.
    let m = fit(&[2.0; 12], 3, &opts(4, 0)).unwrap();
    assert_eq!((m.k, m.centroids), (1, vec![2.0f32; 3]));
}

#[test]
fn training_sample_fits_and_labels_all_rows() {
    let centres = vec![vec![0.0f32; 4], vec![20.0f32; 4]];
    let (data, truth) = blobs(&centres, 1_000, 1.0, 2);
    let mut o = opts(2, 0);
    o.train_sample = 50;
    let m = fit(&data, 4, &o).unwrap();
    assert!(same_partition(&m.assign(&data, 0), &truth));
    let idx = sample_rows(1_000, 50, &mut SplitMix64::new(1));
    assert_eq!(idx.len(), 50);
    assert!(idx.windows(2).all(|w| w[0] < w[1]) && idx[49] < 1_000);
}

#[test]
fn bad_shapes_and_values_are_errors() {
    let o = KMeansOptions::default();
    let d = [1.0f32, 2.0];
    let mut nan_tol = o.clone();
    nan_tol.tol = f64::NAN;
    let shape = [
        fit(&[], 2, &o).err(),
        fit(&d, 0, &o).err(),
        fit(&[1.0, 2.0, 3.0], 2, &o).err(),
        fit_weighted(&d, 1, &[1.0], &o).err(),
        hierarchical(&[], 1, 2, 4, &o).err(),
    ];
    for (i, e) in shape.iter().enumerate() {
        assert!(
            e.as_deref().is_some_and(|m| m.contains("bad shape")),
            "case {i}: {e:?}"
        );
    }
    let value = [
        fit(&[1.0, f32::NAN], 1, &o).err(),
        fit(&[1.0, f32::INFINITY], 2, &o).err(),
        fit(&d, 1, &opts(0, 0)).err(),
        fit(&d, 1, &nan_tol).err(),
        fit_weighted(&d, 1, &[1.0, -1.0], &o).err(),
        fit_weighted(&d, 1, &[0.0, 0.0], &o).err(),
        fit_weighted(&d, 1, &[1.0, f64::NAN], &o).err(),
        hierarchical(&d, 1, 0, 4, &o).err(),
        hierarchical(&d, 1, 2, 0, &o).err(),
    ];
    for (i, e) in value.iter().enumerate() {
        assert!(
            e.as_deref().is_some_and(|m| m.contains("bad value")),
            "case {i}: {e:?}"
        );
    }
    let msg = fit(&[1.0, 2.0, 3.0], 2, &o).unwrap_err().to_string();
    assert!(msg.contains("multiple of dim 2"), "{msg}");
}

#[test]
fn hierarchy_recovers_four_blobs() {
    let centres: Vec<Vec<f32>> = (0..4)
        .map(|b| (0..6).map(|d| if d == b { 10.0 } else { 0.0 }).collect())
        .collect();
    let (data, truth) = blobs(&centres, 500, 0.7, 21);
    let mut o = opts(0, 4);
    let h = hierarchical(&data, 6, 4, 20, &o).unwrap();
    assert_eq!((h.k, h.fine_k, h.labels.len()), (4, 20, 2_000));
    assert!(same_partition(&h.labels, &truth));
    // Fine clusters nest inside coarse ones.
    let mut coarse_of_fine = vec![None; h.fine_k];
    for (&f, &c) in h.fine_labels.iter().zip(&h.labels) {
        assert_eq!(*coarse_of_fine[f as usize].get_or_insert(c), c);
    }
    // Coarse centroids are the means of their rows.
    for (c, centroid) in h.centroids.chunks_exact(6).enumerate() {
        let rows = data
            .chunks_exact(6)
            .zip(&h.labels)
            .filter(|(_, l)| **l == c as u32);
        let (mut sum, mut count) = ([0f64; 6], 0.0);
        for (row, _) in rows {
            sum.iter_mut()
                .zip(row)
                .for_each(|(s, &x)| *s += f64::from(x));
            count += 1.0;
        }
        for (&got, s) in centroid.iter().zip(sum) {
            assert!(
                (f64::from(got) - s / count).abs() < 1e-5,
                "{got} vs {}",
                s / count
            );
        }
    }
    // Thread count does not matter.
    o.threads = 3;
    assert_eq!(h, hierarchical(&data, 6, 4, 20, &o).unwrap());
}

/// 1,000,000 × 64 with k 32, fine_k 256: must take well under 20 s on two
/// cores. Set `GRANARY_SLOW_TESTS=1` to run.
#[test]
fn hierarchical_million_rows_timing() {
    if std::env::var_os("GRANARY_SLOW_TESTS").is_none_or(|v| v != "1") {
        return;
    }
    let (n, dim) = (1_000_000usize, 64usize);
    let mut rng = SplitMix64::new(99);
    let centres: Vec<Vec<f32>> = (0..64)
        .map(|_| (0..dim).map(|_| 4.0 * normal(&mut rng)).collect())
        .collect();
    let (data, _) = blobs(&centres, n / 64, 0.3, 98);
    let mut o = opts(16, 0);
    o.threads = 2;
    let start = std::time::Instant::now();
    let h = hierarchical(&data, dim, 32, 256, &o).unwrap();
    let secs = start.elapsed().as_secs_f64();
    eprintln!("hierarchical 1M x 64, k 32, fine_k 256: {secs:.2} s");
    assert_eq!((h.k, h.fine_k, h.labels.len()), (32, 256, n));
    assert!(secs < 20.0, "{secs:.2} s");
}
