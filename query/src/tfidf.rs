//! Caption text to semantic clusters: tokenising (English and Chinese), TF-IDF and spherical k-means.
//!
//! This is the semantic axis of Seedream-style dual-axis sampling: every
//! sample's captions become one TF-IDF vector, the vectors are grouped by
//! spherical k-means (cosine similarity), and each group is named by the top
//! terms of its centroid.
//!
//! - [`tokenize`] splits Latin text on non-alphanumerics (lowercased, stop
//!   words, one-letter and digit-only tokens dropped) and segments runs of CJK
//!   ideographs with jieba (dictionary only, no HMM), dropping single-character
//!   function words such as 的 and 了.
//! - [`TfIdf::fit`] keeps terms by document frequency and computes smoothed
//!   idf; [`TfIdf::transform`] gives sublinear-tf × idf vectors, L2-normalised.
//! - [`cluster`] fits on a deterministic sample of at most [`FIT_SAMPLE`]
//!   documents, then labels every document in one parallel pass. The result
//!   depends only on the input and the seed, never on the thread count.

use std::collections::HashMap;
use std::sync::OnceLock;

use jieba_rs::Jieba;

use crate::kmeans::SplitMix64;

/// The most documents [`cluster`] fits centroids on; the rest are only assigned.
pub const FIT_SAMPLE: usize = 65_536;

/// The most clusters [`cluster`] makes (its centroids are dense: k × dim floats).
pub const MAX_K: usize = 1024;

/// Seedings [`cluster`] tries; the most cohesive result is kept. Sparse text
/// vectors are nearly orthogonal, so k-means++ seeding alone often puts two
/// seeds in one topic.
const RESTARTS: usize = 4;

/// The jieba segmenter with its built-in dictionary, built once (it takes a
/// few hundred milliseconds).
fn jieba() -> &'static Jieba {
    static JIEBA: OnceLock<Jieba> = OnceLock::new();
    JIEBA.get_or_init(Jieba::new)
}

/// Whether `c` is a CJK ideograph (the unified blocks, extension A and up,
/// compatibility ideographs, and 〇).
fn is_han(c: char) -> bool {
    matches!(c as u32,
        0x3007
        | 0x3400..=0x4DBF
        | 0x4E00..=0x9FFF
        | 0xF900..=0xFAFF
        | 0x20000..=0x2A6DF
        | 0x2A700..=0x2EBEF
        | 0x30000..=0x3134F)
}

/// Maps full-width ASCII (`Ａ`, `１`, `！`) to its ASCII form; other characters unchanged.
fn fold_fullwidth(c: char) -> char {
    match c as u32 {
        v @ 0xFF01..=0xFF5E => char::from_u32(v - 0xFEE0).unwrap_or(c),
        _ => c,
    }
}

/// English words that carry no topic: articles, prepositions, auxiliaries,
/// pronouns. Sorted, for binary search.
const ENGLISH_STOP_WORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "been", "being", "but", "by", "each", "for", "from",
    "had", "has", "have", "her", "here", "his", "in", "into", "is", "it", "its", "of", "on", "one",
    "onto", "or", "over", "some", "that", "the", "their", "there", "these", "they", "this",
    "those", "to", "under", "very", "was", "were", "which", "while", "who", "with", "without",
];

/// Chinese function words (particles, measure words, demonstratives) dropped
/// after segmentation. Sorted, for binary search.
const CHINESE_STOP_WORDS: &[&str] = &[
    "一", "一个", "一些", "一位", "一只", "一幅", "一张", "上", "下", "与", "个", "中", "为", "之",
    "也", "了", "于", "些", "从", "以", "以及", "位", "其", "其中", "内", "及", "只", "向", "和",
    "在", "地", "外", "对", "幅", "得", "或", "把", "是", "有", "的", "着", "等", "而", "被", "过",
    "这", "这个", "这是", "那", "那个", "都", "里",
];

/// Pushes the pending Latin word, if it is a keeper, and clears the buffer.
fn flush_latin(word: &mut String, out: &mut Vec<String>) {
    if word.is_empty() {
        return;
    }
    let keep = word.chars().nth(1).is_some()
        && !word.chars().all(char::is_numeric)
        && ENGLISH_STOP_WORDS.binary_search(&word.as_str()).is_err();
    if keep {
        out.push(std::mem::take(word));
    } else {
        word.clear();
    }
}

/// Segments a run of ideographs with jieba and pushes the non-stop words.
fn push_han(run: &str, out: &mut Vec<String>) {
    for token in jieba().cut(run, false) {
        if CHINESE_STOP_WORDS.binary_search(&token.word).is_err() {
            out.push(token.word.to_owned());
        }
    }
}

/// Splits caption text into terms, in text order.
///
/// Latin (any non-CJK alphanumeric) text is lowercased and split on
/// non-alphanumerics; English stop words, one-character and digit-only tokens
/// are dropped. Runs of CJK ideographs are segmented with jieba's dictionary
/// (no HMM) and Chinese function words are dropped; CJK punctuation separates
/// tokens. Full-width ASCII is folded to ASCII first.
pub fn tokenize(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut latin = String::new();
    let mut han_start: Option<usize> = None;
    for (i, c) in text.char_indices() {
        if is_han(c) {
            flush_latin(&mut latin, &mut out);
            han_start.get_or_insert(i);
            continue;
        }
        if let Some(start) = han_start.take() {
            push_han(&text[start..i], &mut out);
        }
        let c = fold_fullwidth(c);
        if c.is_alphanumeric() {
            latin.extend(c.to_lowercase());
        } else {
            flush_latin(&mut latin, &mut out);
        }
    }
    if let Some(start) = han_start {
        push_han(&text[start..], &mut out);
    }
    flush_latin(&mut latin, &mut out);
    out
}

/// Which terms [`TfIdf::fit`] keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct TfIdfOptions {
    /// Drop terms that occur in fewer documents than this.
    pub min_df: usize,
    /// Drop terms that occur in more than this fraction of the documents.
    pub max_df_fraction: f64,
    /// Keep at most this many terms, those with the highest document frequency.
    pub max_features: usize,
}

impl Default for TfIdfOptions {
    fn default() -> Self {
        TfIdfOptions {
            min_df: 2,
            max_df_fraction: 0.9,
            max_features: 4096,
        }
    }
}

/// A fitted vocabulary with its inverse document frequencies.
#[derive(Debug, Clone)]
pub struct TfIdf {
    /// Term of each id, by document frequency descending (ties by term).
    pub vocab: Vec<String>,
    /// Smoothed idf of each id: `ln((1 + n) / (1 + df)) + 1`.
    pub idf: Vec<f32>,
    index: HashMap<String, u32>,
}

impl TfIdf {
    /// Fits the vocabulary on `docs`, each the tokens of one sample's captions.
    ///
    /// A term is kept when `min_df <= df <= max_df_fraction * n`; of those the
    /// `max_features` with the highest df stay. Term ids follow df descending,
    /// ties broken by the term, so the same corpus gives the same ids.
    pub fn fit(docs: &[Vec<String>], opts: &TfIdfOptions) -> TfIdf {
        // term -> (df, index of the last document that counted it)
        let mut df: HashMap<&str, (usize, usize)> = HashMap::new();
        for (d, doc) in docs.iter().enumerate() {
            for term in doc {
                let entry = df.entry(term.as_str()).or_insert((0, usize::MAX));
                if entry.1 != d {
                    entry.0 += 1;
                    entry.1 = d;
                }
            }
        }
        let df = df
            .into_iter()
            .map(|(term, (count, _))| (term.to_owned(), count))
            .collect();
        TfIdf::from_df(df, docs.len(), opts)
    }

    /// Builds the vocabulary from document frequencies counted elsewhere
    /// (e.g. while streaming a corpus too large to hold as strings):
    /// `df` holds each term once with the number of the `n` documents
    /// containing it. Same rules and ids as [`TfIdf::fit`].
    pub fn from_df(df: Vec<(String, usize)>, n: usize, opts: &TfIdfOptions) -> TfIdf {
        let max_df = opts.max_df_fraction * n as f64;
        let mut kept: Vec<(String, usize)> = df
            .into_iter()
            .filter(|(_, count)| *count >= opts.min_df && *count as f64 <= max_df)
            .collect();
        kept.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        kept.truncate(opts.max_features);
        let idf = kept
            .iter()
            .map(|&(_, count)| (((1 + n) as f64 / (1 + count) as f64).ln() + 1.0) as f32)
            .collect();
        let vocab: Vec<String> = kept.into_iter().map(|(t, _)| t).collect();
        let index = (0u32..)
            .zip(&vocab)
            .map(|(id, t)| (t.clone(), id))
            .collect();
        TfIdf { vocab, idf, index }
    }

    /// Number of terms, the dimension of the vectors.
    pub fn dim(&self) -> usize {
        self.vocab.len()
    }

    /// Id of `term`, if it is in the vocabulary.
    pub fn id(&self, term: &str) -> Option<u32> {
        self.index.get(term).copied()
    }

    /// The term with id `id`, if there is one.
    pub fn term(&self, id: u32) -> Option<&str> {
        self.vocab.get(id as usize).map(String::as_str)
    }

    /// The unit-length TF-IDF vector of one document, sorted by term id.
    ///
    /// Weights are `(1 + ln tf) × idf`. Out-of-vocabulary tokens are ignored;
    /// a document with no known term gives an empty vector (all zeros).
    pub fn transform(&self, doc: &[String]) -> Vec<(u32, f32)> {
        let mut ids: Vec<u32> = doc.iter().filter_map(|t| self.id(t)).collect();
        self.transform_ids(&mut ids)
    }

    /// [`TfIdf::transform`] of a document given as term ids (one per
    /// occurrence, any order; sorted in place).
    pub fn transform_ids(&self, ids: &mut [u32]) -> Vec<(u32, f32)> {
        ids.sort_unstable();
        let mut out: Vec<(u32, f32)> = Vec::with_capacity(ids.len());
        for chunk in ids.chunk_by(|a, b| a == b) {
            let id = chunk[0];
            let idf = self.idf.get(id as usize).copied().unwrap_or(0.0);
            let tf = chunk.len() as f32;
            out.push((id, (1.0 + tf.ln()) * idf));
        }
        let norm = out.iter().map(|&(_, w)| w * w).sum::<f32>().sqrt();
        if norm > 0.0 && norm.is_finite() {
            for (_, w) in &mut out {
                *w /= norm;
            }
        } else {
            out.clear();
        }
        out
    }
}

/// The result of [`cluster`].
#[derive(Debug, Clone, PartialEq)]
pub struct SparseKMeans {
    /// Number of clusters, at least 1; smaller than asked when `k` exceeds
    /// [`MAX_K`] or the sample has fewer distinct directions than `k`.
    pub k: usize,
    /// Cluster of each input vector. Empty vectors are labelled 0.
    pub labels: Vec<u32>,
    /// Unit-length centroid of each cluster, dense over the vocabulary. When
    /// no vector has a term below `dim`, the single centroid is all zeros.
    pub centroids: Vec<Vec<f32>>,
    /// Lloyd iterations run on the fitting sample.
    pub iterations: usize,
    /// Vectors with no usable term (labelled 0 without a vote).
    pub empty: usize,
    /// Number of vectors the centroids were fitted on.
    pub fitted_on: usize,
}

/// Rows of sparse `(term, weight)` vectors, by index.
pub trait SparseRows: Sync {
    fn rows(&self) -> usize;
    fn row(&self, i: usize) -> &[(u32, f32)];
}

impl SparseRows for [Vec<(u32, f32)>] {
    fn rows(&self) -> usize {
        self.len()
    }
    fn row(&self, i: usize) -> &[(u32, f32)] {
        &self[i]
    }
}

impl SparseRows for Vec<Vec<(u32, f32)>> {
    fn rows(&self) -> usize {
        self.len()
    }
    fn row(&self, i: usize) -> &[(u32, f32)] {
        &self[i]
    }
}

/// Sparse vectors in one buffer (compressed rows): 8 bytes per entry and 4
/// per row, against a `Vec` per row's 24 bytes plus allocator overhead.
#[derive(Debug, Default)]
pub struct Csr {
    ends: Vec<u32>,
    entries: Vec<(u32, f32)>,
}

impl Csr {
    pub fn push(&mut self, row: &[(u32, f32)]) {
        self.entries.extend_from_slice(row);
        self.ends.push(
            u32::try_from(self.entries.len()).expect("fewer than 2^32 sparse entries in a plan"),
        );
    }
}

impl SparseRows for Csr {
    fn rows(&self) -> usize {
        self.ends.len()
    }
    fn row(&self, i: usize) -> &[(u32, f32)] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.entries[start..self.ends[i] as usize]
    }
}

/// Sum of `w²` over the entries with a term below `dim` and a finite weight.
fn norm_sq(v: &[(u32, f32)], dim: usize) -> f32 {
    v.iter()
        .filter(|&&(t, w)| (t as usize) < dim && w.is_finite())
        .map(|&(_, w)| w * w)
        .sum()
}

/// The fitting sample copied into one contiguous array (a scan of scattered
/// `Vec`s is bound by memory latency), each vector cleaned (terms below
/// `dim`, finite weights) and scaled to unit length.
struct Sample {
    offsets: Vec<usize>,
    entries: Vec<(u32, f32)>,
}

impl Sample {
    fn new<R: SparseRows + ?Sized>(vectors: &R, picked: &[u32], dim: usize) -> Sample {
        let mut offsets = Vec::with_capacity(picked.len() + 1);
        let mut entries = Vec::new();
        offsets.push(0);
        for &i in picked {
            let v = vectors.row(i as usize);
            let norm = norm_sq(v, dim).sqrt();
            let clean = v
                .iter()
                .filter(|&&(t, w)| (t as usize) < dim && w.is_finite());
            entries.extend(clean.map(|&(t, w)| (t, w / norm)));
            offsets.push(entries.len());
        }
        Sample { offsets, entries }
    }

    fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    fn row(&self, i: usize) -> &[(u32, f32)] {
        &self.entries[self.offsets[i]..self.offsets[i + 1]]
    }
}

/// Dot product of sparse `v` with every centroid, centroids stored
/// term-major (`ct[t * k + j]`); returns (best cluster, its similarity).
/// Entries outside `ct` or with a non-finite weight are skipped; ties go to
/// the lowest cluster id.
fn best_cluster(ct: &[f32], k: usize, v: &[(u32, f32)], scores: &mut [f32]) -> (u32, f32) {
    scores.fill(0.0);
    let dim = ct.len() / k.max(1);
    for &(t, w) in v {
        let t = t as usize;
        if t < dim && w.is_finite() {
            let row = &ct[t * k..(t + 1) * k];
            for (s, c) in scores.iter_mut().zip(row) {
                *s += w * c;
            }
        }
    }
    let mut best = 0usize;
    let mut best_score = scores.first().copied().unwrap_or(0.0);
    for (j, &s) in scores.iter().enumerate().skip(1) {
        if s > best_score {
            best = j;
            best_score = s;
        }
    }
    (best as u32, best_score)
}

/// Labels `labels.len()` vectors (`get(i)`) against term-major centroids
/// `ct`, writing `labels` and `sims`. Each vector is scored alone, so the
/// output does not depend on `threads`.
fn assign_all<'v>(
    ct: &[f32],
    k: usize,
    get: &(dyn Fn(usize) -> &'v [(u32, f32)] + Sync),
    labels: &mut [u32],
    sims: &mut [f32],
    threads: usize,
) {
    let n = labels.len();
    let chunk = n.div_ceil(threads.max(1)).max(4096);
    let last = n.div_ceil(chunk).saturating_sub(1);
    std::thread::scope(|scope| {
        for (c, (lab, sim)) in labels
            .chunks_mut(chunk)
            .zip(sims.chunks_mut(chunk))
            .enumerate()
        {
            let base = c * chunk;
            let mut work = move || {
                let mut scores = vec![0.0f32; k];
                for (j, (l, s)) in lab.iter_mut().zip(sim.iter_mut()).enumerate() {
                    (*l, *s) = best_cluster(ct, k, get(base + j), &mut scores);
                }
            };
            if c == last {
                work(); // the last chunk runs on this thread
            } else {
                scope.spawn(work);
            }
        }
    });
}

/// Transposes row-major `k × dim` centroids into term-major `dim × k`.
fn term_major(rows: &[f32], k: usize, dim: usize) -> Vec<f32> {
    let mut ct = vec![0.0f32; k * dim];
    for (j, row) in rows.chunks_exact(dim).enumerate() {
        for (t, &x) in row.iter().enumerate() {
            ct[t * k + j] = x;
        }
    }
    ct
}

/// Sets `row` to the dense form of the unit sample vector `v`.
fn set_row_from(row: &mut [f32], v: &[(u32, f32)]) {
    row.fill(0.0);
    for &(t, w) in v {
        row[t as usize] = w;
    }
}

/// `out[i]` = cosine similarity of sample vector `i` with the unit `row`.
fn sims_to(row: &[f32], sample: &Sample, out: &mut [f32]) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = sample
            .row(i)
            .iter()
            .map(|&(t, w)| w * row[t as usize])
            .sum();
    }
}

/// k-means++ distance of a vector whose best cosine similarity is `s`: `1 − s`, at least 0.
fn seed_distance(s: f32) -> f64 {
    f64::from(1.0 - s).max(0.0)
}

/// Greedy k-means++ seeding (as in scikit-learn): each new seed is the best,
/// by total `1 − cos` distance, of `2 + ln k` candidates drawn with
/// probability proportional to that distance. Returns row-major unit rows,
/// fewer than `k_max` when every vector already coincides with a seed.
fn seed_centroids(sample: &Sample, dim: usize, k_max: usize, rng: &mut SplitMix64) -> Vec<f32> {
    let m = sample.len();
    let trials = 2 + (k_max as f64).ln() as usize;
    let mut rows = Vec::with_capacity(k_max * dim);
    let mut row = vec![0.0f32; dim];
    set_row_from(&mut row, sample.row(rng.below(m)));
    rows.extend_from_slice(&row);
    let mut best = vec![0.0f32; m];
    sims_to(&row, sample, &mut best);
    let mut cand = vec![0.0f32; m];
    let mut chosen_sims = vec![0.0f32; m];
    let mut prefix = Vec::with_capacity(m);
    while rows.len() < k_max * dim {
        prefix.clear();
        let mut total = 0.0f64;
        for &s in &best {
            total += seed_distance(s);
            prefix.push(total);
        }
        if total <= 1e-9 {
            break;
        }
        let mut chosen: Option<(f64, usize)> = None;
        for _ in 0..trials {
            let r = rng.next_f64() * total;
            let c = prefix.partition_point(|&p| p <= r).min(m - 1);
            set_row_from(&mut row, sample.row(c));
            sims_to(&row, sample, &mut cand);
            let potential: f64 = best
                .iter()
                .zip(&cand)
                .map(|(&b, &s)| seed_distance(b.max(s)))
                .sum();
            if chosen.is_none_or(|(p, _)| potential < p) {
                chosen = Some((potential, c));
                chosen_sims.copy_from_slice(&cand);
            }
        }
        let Some((_, c)) = chosen else { break };
        set_row_from(&mut row, sample.row(c));
        rows.extend_from_slice(&row);
        for (b, &s) in best.iter_mut().zip(&chosen_sims) {
            *b = b.max(s);
        }
    }
    rows
}

/// Lloyd rounds of spherical k-means on the sample, updating the row-major
/// unit `rows` in place (a cluster left empty is re-seeded with the vector
/// least similar to its centroid). Returns the rounds run and the cohesion:
/// the summed cosine similarity of each vector to its centroid in the last round.
fn lloyd(
    sample: &Sample,
    dim: usize,
    rows: &mut [f32],
    max_iter: usize,
    threads: usize,
) -> (usize, f64) {
    let m = sample.len();
    let k = rows.len() / dim;
    let get = |i: usize| sample.row(i);
    let mut labels = vec![u32::MAX; m];
    let mut next = vec![0u32; m];
    let mut sims = vec![0.0f32; m];
    let mut sums = vec![0.0f64; k * dim];
    let mut iterations = 0;
    for _ in 0..max_iter {
        let ct = term_major(rows, k, dim);
        assign_all(&ct, k, &get, &mut next, &mut sims, threads);
        iterations += 1;
        let changed = labels.iter().zip(&next).filter(|(a, b)| a != b).count();
        std::mem::swap(&mut labels, &mut next);

        sums.fill(0.0);
        for (i, &l) in labels.iter().enumerate() {
            let row = &mut sums[l as usize * dim..(l as usize + 1) * dim];
            for &(t, w) in sample.row(i) {
                row[t as usize] += f64::from(w);
            }
        }
        // Sample vectors least similar to their centroid, for re-seeding.
        let mut outliers: Vec<usize> = Vec::new();
        let mut reseeded = 0;
        for (sum, row) in sums.chunks_exact(dim).zip(rows.chunks_exact_mut(dim)) {
            let norm = sum.iter().map(|x| x * x).sum::<f64>().sqrt();
            if norm > 0.0 {
                for (r, s) in row.iter_mut().zip(sum) {
                    *r = (s / norm) as f32;
                }
                continue;
            }
            if outliers.is_empty() {
                outliers = (0..m).collect();
                // descending, so that pop() yields the least similar first
                outliers.sort_by(|&a, &b| sims[b].total_cmp(&sims[a]).then(b.cmp(&a)));
            }
            if let Some(p) = outliers.pop() {
                set_row_from(row, sample.row(p));
                reseeded += 1;
            }
        }
        if changed == 0 && reseeded == 0 {
            break;
        }
    }
    (iterations, sims.iter().map(|&s| f64::from(s)).sum())
}

/// Spherical k-means (cosine similarity) over sparse vectors of dimension `dim`.
///
/// Fits on a deterministic sample of at most [`FIT_SAMPLE`] non-empty
/// vectors: greedy k-means++ seeding (distance `1 − cos` to the nearest
/// seed), then up to `max_iter` Lloyd rounds (a cluster left empty is
/// re-seeded with the sample vector least similar to its centroid); this is
/// repeated for several seedings and the most cohesive result kept. Then
/// every vector is assigned in one parallel pass. Entries with a term
/// `>= dim` or a non-finite weight are ignored; vectors with nothing left
/// are labelled 0 and counted in [`SparseKMeans::empty`]. Same input and
/// seed give the same result on any number of cores.
pub fn cluster<R: SparseRows + ?Sized>(
    vectors: &R,
    dim: usize,
    k: usize,
    seed: u64,
    max_iter: usize,
) -> SparseKMeans {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    cluster_with_threads(vectors, dim, k, seed, max_iter, threads)
}

fn cluster_with_threads<R: SparseRows + ?Sized>(
    vectors: &R,
    dim: usize,
    k: usize,
    seed: u64,
    max_iter: usize,
    threads: usize,
) -> SparseKMeans {
    let mut rng = SplitMix64::new(seed);
    let n = vectors.rows();
    let is_usable: Vec<bool> = (0..n).map(|i| norm_sq(vectors.row(i), dim) > 0.0).collect();
    let mut usable: Vec<u32> = (0u32..)
        .zip(&is_usable)
        .filter(|(_, u)| **u)
        .map(|(i, _)| i)
        .collect();
    let empty = n - usable.len();

    // Deterministic sample: a partial Fisher-Yates shuffle, then input order.
    let m = usable.len().min(FIT_SAMPLE);
    for i in 0..m {
        let j = i + rng.below(usable.len() - i);
        usable.swap(i, j);
    }
    usable.truncate(m);
    usable.sort_unstable();
    if m == 0 || dim == 0 {
        return SparseKMeans {
            k: 1,
            labels: vec![0; n],
            centroids: vec![vec![0.0; dim]],
            iterations: 0,
            empty,
            fitted_on: 0,
        };
    }
    let sample = Sample::new(vectors, &usable, dim);

    // Several seedings; keep the one whose Lloyd rounds end most cohesive.
    let k_max = k.min(MAX_K).clamp(1, m);
    let mut rows = seed_centroids(&sample, dim, k_max, &mut rng);
    let (mut iterations, mut cohesion) = lloyd(&sample, dim, &mut rows, max_iter, threads);
    for _ in 1..RESTARTS {
        let mut other = seed_centroids(&sample, dim, k_max, &mut rng);
        let (its, c) = lloyd(&sample, dim, &mut other, max_iter, threads);
        if c > cohesion {
            (rows, iterations, cohesion) = (other, its, c);
        }
    }
    let k = rows.len() / dim;

    // One pass over everything.
    let ct = term_major(&rows, k, dim);
    let mut labels = vec![0u32; n];
    let mut sims = vec![0.0f32; n];
    let get_all = |i: usize| vectors.row(i);
    assign_all(&ct, k, &get_all, &mut labels, &mut sims, threads);
    for (l, &u) in labels.iter_mut().zip(&is_usable) {
        if !u {
            *l = 0;
        }
    }
    SparseKMeans {
        k,
        labels,
        centroids: rows.chunks(dim).map(<[f32]>::to_vec).collect(),
        iterations,
        empty,
        fitted_on: m,
    }
}

impl SparseKMeans {
    /// Number of vectors in each cluster (empty vectors count in cluster 0).
    pub fn sizes(&self) -> Vec<usize> {
        let mut sizes = vec![0; self.k];
        for &l in &self.labels {
            if let Some(s) = sizes.get_mut(l as usize) {
                *s += 1;
            }
        }
        sizes
    }

    /// The cluster a new vector falls in (the most cosine-similar centroid;
    /// 0 for an empty vector).
    pub fn assign(&self, v: &[(u32, f32)]) -> u32 {
        let mut best = 0u32;
        let mut best_score = f32::NEG_INFINITY;
        for (j, c) in (0u32..).zip(&self.centroids) {
            let s: f32 = v
                .iter()
                .filter_map(|&(t, w)| c.get(t as usize).map(|x| x * w))
                .sum();
            if s > best_score {
                best = j;
                best_score = s;
            }
        }
        best
    }

    /// The `n` highest-weighted terms of each centroid, for naming clusters
    /// ("circle, red, ..."). Terms with zero weight are left out.
    pub fn top_terms(&self, tfidf: &TfIdf, n: usize) -> Vec<Vec<String>> {
        self.centroids
            .iter()
            .map(|c| {
                let mut ids: Vec<usize> = (0..c.len()).filter(|&t| c[t] > 0.0).collect();
                ids.sort_by(|&a, &b| c[b].total_cmp(&c[a]).then(a.cmp(&b)));
                ids.iter()
                    .filter_map(|&t| tfidf.vocab.get(t).cloned())
                    .take(n)
                    .collect()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
