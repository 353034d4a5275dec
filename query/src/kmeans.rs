//! Dense k-means over f32 embedding rows: the visual axis of dual-axis sampling.
//!
//! Seedream 3.0 balances its training mix along two axes; the visual axis
//! clusters image embeddings. This module owns that clustering: k-means++
//! seeding (D² sampling), Lloyd iterations, a weighted variant, and a
//! two-level hierarchy in the style of Vo et al. 2024 ("Automatic Data
//! Curation for Self-Supervised Learning"): many fine clusters, then the fine
//! centroids clustered (weighted by their sizes) into a few coarse ones.
//!
//! Invariant: the same data, options and seed give bit-identical centroids
//! and labels whatever the thread count. Work is split into fixed chunks of
//! rows that are computed independently; every reduction (sums, inertia,
//! D² totals) runs sequentially in row order. Arithmetic is plain `f32`
//! multiply and add (Rust does not contract them into FMAs), so results do
//! not depend on the CPU either.
//!
//! The module is self-contained: no external crates, its own [`SplitMix64`].

use std::borrow::Cow;
use std::fmt;

/// Rows per parallel work item. Fixed so that the split of work never
/// depends on the thread count.
const CHUNK_ROWS: usize = 512;

/// Lanes of the distance kernels; eight `f32` lanes vectorise on SSE and AVX.
const LANES: usize = 8;

/// Input errors are one-line messages naming what was wrong; callers wrap
/// them (granary-query reports them as a bad query).
fn bad_shape(what: impl fmt::Display) -> String {
    format!("k-means: bad shape: {what}")
}

fn bad_value(what: impl fmt::Display) -> String {
    format!("k-means: bad value: {what}")
}

/// SplitMix64 (Steele, Lea and Flood 2014; Vigna's reference constants):
/// a tiny, fast, seedable generator. Good enough for sampling and seeding,
/// not for cryptography.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose stream is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform double in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform integer in `0..n`, without modulo bias (Lemire's method).
    /// Returns 0 when `n` is 0 or 1.
    pub fn below(&mut self, n: usize) -> usize {
        if n <= 1 {
            return 0;
        }
        let n = n as u64;
        let mut m = u128::from(self.next_u64()) * u128::from(n);
        if (m as u64) < n {
            let threshold = n.wrapping_neg() % n;
            while (m as u64) < threshold {
                m = u128::from(self.next_u64()) * u128::from(n);
            }
        }
        (m >> 64) as usize
    }
}

/// Options of [`fit`], [`fit_weighted`] and [`hierarchical`].
#[derive(Debug, Clone, PartialEq)]
pub struct KMeansOptions {
    /// Number of clusters; clamped to the number of distinct training rows.
    pub k: usize,
    /// Seed of the training sample and of k-means++.
    pub seed: u64,
    /// Most Lloyd iterations after seeding.
    pub max_iter: usize,
    /// Stop when the relative inertia improvement of an iteration is at most this.
    pub tol: f64,
    /// Fit centroids on at most this many rows, picked by `seed`; 0 = all.
    pub train_sample: usize,
    /// Worker threads; 0 = `std::thread::available_parallelism`.
    pub threads: usize,
}

impl Default for KMeansOptions {
    fn default() -> Self {
        Self {
            k: 16,
            seed: 0,
            max_iter: 25,
            tol: 1e-4,
            train_sample: 65_536,
            threads: 0,
        }
    }
}

/// A fitted k-means model.
#[derive(Debug, Clone, PartialEq)]
pub struct KMeans {
    /// Number of centroids (after clamping to the distinct training rows).
    pub k: usize,
    /// Dimension of a row.
    pub dim: usize,
    /// `k * dim` row-major centroids.
    pub centroids: Vec<f32>,
    /// Lloyd iterations run after seeding.
    pub iterations: usize,
    /// Weighted sum of squared distances of the training rows to their
    /// nearest centroid, for the centroids returned.
    pub inertia: f64,
}

/// Result of [`hierarchical`].
#[derive(Debug, Clone, PartialEq)]
pub struct Hierarchy {
    /// Coarse label of every row, in `0..k`.
    pub labels: Vec<u32>,
    /// Fine label of every row, in `0..fine_k`.
    pub fine_labels: Vec<u32>,
    /// Number of coarse clusters, all non-empty.
    pub k: usize,
    /// Number of fine centroids fitted.
    pub fine_k: usize,
    /// `k * dim` coarse centroids: the mean of each coarse cluster's rows.
    pub centroids: Vec<f32>,
}

/// Fits k-means to `data`, `n * dim` row-major, all finite.
///
/// Errors when there are no rows, `dim == 0`, `data.len()` is not a multiple
/// of `dim`, `k == 0`, or a coordinate is not finite.
pub fn fit(data: &[f32], dim: usize, opts: &KMeansOptions) -> Result<KMeans, String> {
    fit_impl(data, dim, None, opts)
}

/// Fits k-means where row `i` counts `weights[i]` times (weights finite,
/// non-negative, not all zero). Rows of weight 0 are never chosen as seeds
/// and do not move centroids.
pub fn fit_weighted(
    data: &[f32],
    dim: usize,
    weights: &[f64],
    opts: &KMeansOptions,
) -> Result<KMeans, String> {
    fit_impl(data, dim, Some(weights), opts)
}

impl KMeans {
    /// Index of the nearest centroid of every row of `data` (`n * dim`
    /// row-major; a ragged tail is ignored), ties to the lowest index; empty
    /// when the model has no centroids.
    /// `threads == 0` uses all available cores; the answer never depends on it.
    pub fn assign(&self, data: &[f32], threads: usize) -> Vec<u32> {
        if self.dim == 0 || self.k == 0 {
            return Vec::new();
        }
        let n = data.len() / self.dim;
        let mut labels = vec![0u32; n];
        let prepared = Prepared::new(&self.centroids, self.k, self.dim);
        prepared.assign(&data[..n * self.dim], &mut labels, None, threads);
        labels
    }
}

/// Restarts of the coarse level of [`hierarchical`].
pub const COARSE_RESTARTS: u64 = 16;

/// Two-level hierarchical k-means: `fine_k` centroids fitted on `data`
/// (on a sample of `opts.train_sample` rows), one parallel pass labelling
/// every row, then the fine centroids clustered into `k` coarse clusters
/// weighted by their member counts (best of [`COARSE_RESTARTS`] seeds). A row's coarse label is its fine
/// cluster's coarse cluster. `opts.k` is ignored; coarse clusters left
/// without rows are dropped, so `Hierarchy::k` may be below `k`.
pub fn hierarchical(
    data: &[f32],
    dim: usize,
    k: usize,
    fine_k: usize,
    opts: &KMeansOptions,
) -> Result<Hierarchy, String> {
    if k == 0 || fine_k == 0 {
        return Err(bad_value(format!(
            "k ({k}) and fine_k ({fine_k}) must be at least 1"
        )));
    }
    let fine_opts = KMeansOptions {
        k: fine_k,
        ..opts.clone()
    };
    let fine = fit(data, dim, &fine_opts)?;
    let fine_labels = fine.assign(data, opts.threads);
    let mut sizes = vec![0f64; fine.k];
    for &l in &fine_labels {
        sizes[l as usize] += 1.0;
    }
    // The coarse level fits only `fine_k` weighted points, so restarts are
    // cheap; keep the lowest inertia. On skewed data one run often splits
    // the dominant mode and merges two small ones, a worse local optimum.
    let mut coarse: Option<KMeans> = None;
    for restart in 0..COARSE_RESTARTS {
        let coarse_opts = KMeansOptions {
            k,
            seed: opts.seed.wrapping_add(0x5EED).wrapping_add(restart),
            train_sample: 0,
            ..opts.clone()
        };
        let run = fit_weighted(&fine.centroids, dim, &sizes, &coarse_opts)?;
        if coarse
            .as_ref()
            .is_none_or(|best| run.inertia < best.inertia)
        {
            coarse = Some(run);
        }
    }
    let coarse = coarse.ok_or_else(|| bad_value("no coarse clustering"))?;
    let fine_to_coarse = coarse.assign(&fine.centroids, opts.threads);

    // Renumber the coarse clusters that received rows as 0..k_eff, in order.
    let mut renumber = vec![u32::MAX; coarse.k];
    for (f, &c) in fine_to_coarse.iter().enumerate() {
        if sizes[f] > 0.0 {
            renumber[c as usize] = 0;
        }
    }
    let mut k_eff = 0usize;
    for r in renumber.iter_mut().filter(|r| **r == 0) {
        (*r, k_eff) = (k_eff as u32, k_eff + 1);
    }
    // A fine cluster without rows may map to a dropped coarse cluster; its
    // label never appears, so any value does.
    let labels: Vec<u32> = fine_labels
        .iter()
        .map(|&f| renumber[fine_to_coarse[f as usize] as usize])
        .collect();

    // Coarse centroids: means of member rows (every one has rows).
    let mut centroids = vec![0f32; k_eff * dim];
    weighted_means(data, dim, None, &labels, &mut centroids);
    Ok(Hierarchy {
        labels,
        fine_labels,
        k: k_eff,
        fine_k: fine.k,
        centroids,
    })
}

/// Checks shapes and values; returns the number of rows.
fn validate(data: &[f32], dim: usize, weights: Option<&[f64]>) -> Result<usize, String> {
    if dim == 0 {
        return Err(bad_shape("dim must be at least 1"));
    }
    if data.is_empty() {
        return Err(bad_shape("no rows"));
    }
    if !data.len().is_multiple_of(dim) {
        return Err(bad_shape(format!(
            "data has {} values, not a multiple of dim {dim}",
            data.len()
        )));
    }
    let n = data.len() / dim;
    if let Some(row) = data
        .chunks_exact(dim)
        .position(|r| r.iter().any(|x| !x.is_finite()))
    {
        return Err(bad_value(format!("row {row} has a non-finite value")));
    }
    if let Some(w) = weights {
        if w.len() != n {
            return Err(bad_shape(format!("{} weights for {n} rows", w.len())));
        }
        if let Some(i) = w.iter().position(|x| !x.is_finite() || *x < 0.0) {
            return Err(bad_value(format!("weight {i} is {}", w[i])));
        }
        if !w.iter().any(|&x| x > 0.0) {
            return Err(bad_value("all weights are zero"));
        }
    }
    Ok(n)
}

fn resolve_threads(threads: usize) -> usize {
    if threads > 0 {
        threads
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// Runs `f` on every item, spread round-robin over up to `threads` scoped
/// threads. Items must be independent; which thread runs an item never
/// changes what it computes.
fn run_parallel<T: Send>(items: Vec<T>, threads: usize, f: impl Fn(T) + Sync) {
    let threads = resolve_threads(threads).min(items.len());
    if threads <= 1 {
        items.into_iter().for_each(f);
        return;
    }
    let mut buckets: Vec<Vec<T>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, item) in items.into_iter().enumerate() {
        buckets[i % threads].push(item);
    }
    let f = &f;
    std::thread::scope(|s| {
        for bucket in buckets {
            s.spawn(move || bucket.into_iter().for_each(f));
        }
    });
}

/// Picks `m` of `n` row indices uniformly without replacement (Floyd's
/// algorithm), returned ascending.
fn sample_rows(n: usize, m: usize, rng: &mut SplitMix64) -> Vec<usize> {
    let mut chosen = vec![false; n];
    for j in n - m..n {
        let t = rng.below(j + 1);
        if chosen[t] {
            chosen[j] = true;
        } else {
            chosen[t] = true;
        }
    }
    (0..n).filter(|&i| chosen[i]).collect()
}

fn fit_impl(
    data: &[f32],
    dim: usize,
    weights: Option<&[f64]>,
    opts: &KMeansOptions,
) -> Result<KMeans, String> {
    let n = validate(data, dim, weights)?;
    if opts.k == 0 {
        return Err(bad_value("k must be at least 1"));
    }
    if opts.tol.is_nan() {
        return Err(bad_value("tol is NaN"));
    }
    let mut rng = SplitMix64::new(opts.seed);
    let (train, w): (Cow<'_, [f32]>, Vec<f64>) = if opts.train_sample > 0 && opts.train_sample < n {
        let idx = sample_rows(n, opts.train_sample, &mut rng);
        let mut rows = Vec::with_capacity(idx.len() * dim);
        for &i in &idx {
            rows.extend_from_slice(&data[i * dim..(i + 1) * dim]);
        }
        let w = idx.iter().map(|&i| weights.map_or(1.0, |w| w[i])).collect();
        (Cow::Owned(rows), w)
    } else {
        (
            Cow::Borrowed(data),
            weights.map_or_else(|| vec![1.0; n], <[f64]>::to_vec),
        )
    };
    if !w.iter().any(|&x| x > 0.0) {
        return Err(bad_value(
            "every row in the training sample has weight zero",
        ));
    }
    let mut centroids = seed_plus_plus(&train, dim, &w, opts.k, &mut rng, opts.threads);
    let k = centroids.len() / dim;
    let (mut labels, mut dists) = (vec![0u32; w.len()], vec![0f64; w.len()]);
    // Labels every training row and returns the weighted inertia.
    let relabel = |c: &[f32], labels: &mut [u32], dists: &mut [f64]| {
        Prepared::new(c, k, dim).assign(&train, labels, Some(&mut *dists), opts.threads);
        dists.iter().zip(&w).map(|(d, w)| d * w).sum::<f64>()
    };
    let mut inertia = relabel(&centroids, &mut labels, &mut dists);
    let mut iterations = 0;
    while iterations < opts.max_iter && inertia > 0.0 {
        update_centroids(&train, dim, &w, &labels, &mut dists, &mut centroids);
        iterations += 1;
        let next = relabel(&centroids, &mut labels, &mut dists);
        let improvement = (inertia - next) / inertia;
        inertia = next;
        if improvement.is_nan() || improvement <= opts.tol {
            break;
        }
    }
    Ok(KMeans {
        k,
        dim,
        centroids,
        iterations,
        inertia,
    })
}

/// Greedy k-means++ seeding (Arthur & Vassilvitskii 2007, with the greedy
/// variant scikit-learn uses): the first centre drawn by weight; for each
/// next one, `2 + ln k` candidates are drawn by weight × squared distance to
/// the nearest centre so far, and the one that lowers the total most is
/// kept. One draw per centre often puts two centres in one dense cluster
/// when clusters are only a few spreads apart. Stops early when every
/// remaining row coincides with a centre, which clamps k to the number of
/// distinct rows of positive weight. Returns `k_eff * dim` centroids.
fn seed_plus_plus(
    rows: &[f32],
    dim: usize,
    w: &[f64],
    k: usize,
    rng: &mut SplitMix64,
    threads: usize,
) -> Vec<f32> {
    let n = w.len();
    let trials = 2 + (k as f64).ln().floor() as usize;
    let mut centroids = Vec::with_capacity(k.min(n) * dim);
    let mut d2 = vec![f64::INFINITY; n];
    let mut mass: Vec<f64> = w.to_vec();
    while centroids.len() / dim < k {
        let tries = if centroids.is_empty() { 1 } else { trials };
        let mut best: Option<(f64, usize, Vec<f64>)> = None;
        for _ in 0..tries {
            let Some(pick) = draw(&mass, rng) else { break };
            let centre = &rows[pick * dim..(pick + 1) * dim];
            let mut cand = d2.clone();
            let items: Vec<_> = cand
                .chunks_mut(CHUNK_ROWS)
                .zip(rows.chunks(CHUNK_ROWS * dim))
                .collect();
            run_parallel(items, threads, |(d2, rows)| {
                for (d, row) in d2.iter_mut().zip(rows.chunks_exact(dim)) {
                    *d = d.min(f64::from(squared_distance(row, centre)));
                }
            });
            let potential: f64 = cand.iter().zip(w).map(|(d, w)| d * w).sum();
            if best.as_ref().is_none_or(|b| potential < b.0) {
                best = Some((potential, pick, cand));
            }
        }
        let Some((_, pick, cand)) = best else { break };
        centroids.extend_from_slice(&rows[pick * dim..(pick + 1) * dim]);
        d2 = cand;
        for ((m, &d), &wi) in mass.iter_mut().zip(&d2).zip(w) {
            *m = wi * d;
        }
    }
    centroids
}

/// Draws an index with probability proportional to `mass`; `None` when the
/// total is zero or not finite. The scan repeats the summation order of the
/// total, so the index drawn always has positive mass.
fn draw(mass: &[f64], rng: &mut SplitMix64) -> Option<usize> {
    let total: f64 = mass.iter().sum();
    if total <= 0.0 || !total.is_finite() {
        return None;
    }
    let r = rng.next_f64() * total;
    let mut cum = 0.0;
    for (i, &m) in mass.iter().enumerate() {
        cum += m;
        if cum > r {
            return Some(i);
        }
    }
    mass.iter().rposition(|&m| m > 0.0)
}

/// Lloyd update: every centroid becomes the weighted mean of its rows. An
/// empty cluster is re-seeded with the row of largest weight × distance to
/// its own centroid (lowest index on ties), which is then not reused.
fn update_centroids(
    rows: &[f32],
    dim: usize,
    w: &[f64],
    labels: &[u32],
    dists: &mut [f64],
    centroids: &mut [f32],
) {
    let mass = weighted_means(rows, dim, Some(w), labels, centroids);
    let empty = centroids
        .chunks_exact_mut(dim)
        .zip(mass)
        .filter(|(_, m)| *m == 0.0);
    for (c, _) in empty {
        let costs = dists.iter().zip(w).map(|(d, w)| d * w).enumerate();
        let best = costs.fold(None, |b: Option<(usize, f64)>, (i, c)| {
            (c > b.map_or(0.0, |b| b.1)).then_some((i, c)).or(b)
        });
        if let Some((i, _)) = best {
            c.copy_from_slice(&rows[i * dim..(i + 1) * dim]);
            dists[i] = 0.0;
        }
    }
}

/// Writes into `centroids` (`k * dim`) the weighted mean of each label's
/// rows, summed in `f64` in row order; labels of no mass keep their centroid.
/// Returns the mass of every label.
fn weighted_means(
    rows: &[f32],
    dim: usize,
    w: Option<&[f64]>,
    labels: &[u32],
    centroids: &mut [f32],
) -> Vec<f64> {
    let k = centroids.len() / dim;
    let (mut sums, mut mass) = (vec![0f64; k * dim], vec![0f64; k]);
    for (i, (row, &l)) in rows.chunks_exact(dim).zip(labels).enumerate() {
        let (l, wi) = (l as usize, w.map_or(1.0, |w| w[i]));
        mass[l] += wi;
        let sum = &mut sums[l * dim..(l + 1) * dim];
        sum.iter_mut()
            .zip(row)
            .for_each(|(s, &x)| *s += wi * f64::from(x));
    }
    let means = centroids.chunks_exact_mut(dim).zip(sums.chunks_exact(dim));
    for ((c, s), &m) in means.zip(&mass).filter(|(_, m)| **m > 0.0) {
        c.iter_mut().zip(s).for_each(|(c, s)| *c = (s / m) as f32);
    }
    mass
}

/// Centroids prepared for the nearest-centroid search. Everything is
/// centred on the mean of the centroids so that the expansion
/// ‖x−c‖² = ‖x‖² − 2x·c + ‖c‖² does not lose precision to a large common
/// offset; ‖x‖² is the same for every centroid and is dropped.
struct Prepared<'a> {
    raw: &'a [f32],
    centred: Vec<f32>,
    norms: Vec<f32>,
    mean: Vec<f32>,
    dim: usize,
}

impl<'a> Prepared<'a> {
    fn new(centroids: &'a [f32], k: usize, dim: usize) -> Self {
        let mut mean64 = vec![0f64; dim];
        for c in centroids.chunks_exact(dim) {
            for (m, &x) in mean64.iter_mut().zip(c) {
                *m += f64::from(x);
            }
        }
        let mean: Vec<f32> = mean64.iter().map(|m| (m / k as f64) as f32).collect();
        let mut centred = centroids.to_vec();
        for c in centred.chunks_exact_mut(dim) {
            for (x, m) in c.iter_mut().zip(&mean) {
                *x -= m;
            }
        }
        let norms = centred.chunks_exact(dim).map(|c| dot(c, c)).collect();
        Self {
            raw: centroids,
            centred,
            norms,
            mean,
            dim,
        }
    }

    /// Labels every row of `rows`; with `dists`, also its exact squared
    /// distance to the chosen centroid.
    fn assign(&self, rows: &[f32], labels: &mut [u32], dists: Option<&mut [f64]>, threads: usize) {
        let mut dists = dists.map(|d| d.chunks_mut(CHUNK_ROWS));
        let items: Vec<_> = labels
            .chunks_mut(CHUNK_ROWS)
            .zip(rows.chunks(CHUNK_ROWS * self.dim))
            .map(|(labels, rows)| (labels, rows, dists.as_mut().and_then(Iterator::next)))
            .collect();
        run_parallel(items, threads, |(labels, rows, dists)| {
            self.assign_chunk(rows, labels, dists);
        });
    }

    fn assign_chunk(&self, rows: &[f32], labels: &mut [u32], mut dists: Option<&mut [f64]>) {
        let dim = self.dim;
        let mut x = vec![0f32; dim];
        for (i, row) in rows.chunks_exact(dim).enumerate() {
            for ((x, &r), &m) in x.iter_mut().zip(row).zip(&self.mean) {
                *x = r - m;
            }
            let best = self.nearest(&x);
            labels[i] = best as u32;
            if let Some(d) = dists.as_deref_mut() {
                let c = &self.raw[best * dim..(best + 1) * dim];
                d[i] = f64::from(squared_distance(row, c));
            }
        }
    }

    /// Nearest centroid of a centred row, ties to the lowest index.
    fn nearest(&self, x: &[f32]) -> usize {
        let mut best = 0usize;
        let mut best_score = f32::INFINITY;
        for (j, (c, &norm)) in self
            .centred
            .chunks_exact(self.dim)
            .zip(&self.norms)
            .enumerate()
        {
            let score = norm - 2.0 * dot(x, c);
            if score < best_score {
                best_score = score;
                best = j;
            }
        }
        best
    }
}

/// Sums eight lanes in a fixed tree order: the two halves first, then the
/// halves of the half. This order matches SSE registers, so LLVM keeps the
/// accumulators in plain vector lanes (another order costs a shuffle per
/// step and halves the speed).
#[inline(always)]
fn reduce(acc: [f32; LANES]) -> f32 {
    let h: [f32; 4] = std::array::from_fn(|l| acc[l] + acc[l + 4]);
    (h[0] + h[2]) + (h[1] + h[3])
}

/// Dot product in eight `f32` lanes.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let (ca, ta) = a.as_chunks::<LANES>();
    let (cb, tb) = b.as_chunks::<LANES>();
    let mut acc = [0f32; LANES];
    for (x, y) in ca.iter().zip(cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = ta.iter().zip(tb).map(|(x, y)| x * y).sum();
    reduce(acc) + tail
}

/// Squared Euclidean distance in eight `f32` lanes; zero only for equal rows
/// (barring underflow of differences below 1e-19).
#[inline(always)]
fn squared_distance(a: &[f32], b: &[f32]) -> f32 {
    let (ca, ta) = a.as_chunks::<LANES>();
    let (cb, tb) = b.as_chunks::<LANES>();
    let mut acc = [0f32; LANES];
    for (x, y) in ca.iter().zip(cb) {
        for l in 0..LANES {
            let d = x[l] - y[l];
            acc[l] += d * d;
        }
    }
    let tail: f32 = ta.iter().zip(tb).map(|(x, y)| (x - y) * (x - y)).sum();
    reduce(acc) + tail
}

#[cfg(test)]
mod tests;
