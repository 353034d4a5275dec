//! Dual-axis collaborative sampling (Seedream 3.0): cluster the selected
//! samples on a visual-morphology axis (hierarchical k-means of the
//! embeddings) and a semantic axis (TF-IDF of captions, spherical k-means),
//! then fit per-sample weights by iterative proportional fitting so that
//! both cluster marginals move to tempered targets (mass ∝ count^τ) at once.
//! The result is a named plan in `sampling_plans` plus a [`PlanReport`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    Array, AsArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray, StringBuilder,
};
use arrow::datatypes::{DataType, Float32Type};
use futures::StreamExt;
use granary_storage::Granary;
use granary_storage::schema::{self, KEEP};

use crate::descriptor;
use crate::ipf::{self, IpfOptions};
use crate::kmeans::{self, KMeansOptions};
use crate::tfidf::{self, TfIdf, TfIdfOptions};
use crate::{Error, Result, Session};

/// Column holding the built-in pixel descriptor (see [`crate::descriptor`]).
pub const VISUAL_DESCRIPTOR: &str = "visual_descriptor";

/// Where the visual axis takes its features from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VisualFeatures {
    /// The `embedding` column when any selected sample has one, else the
    /// built-in descriptor.
    Auto,
    /// The `embedding` column (CLIP/SigLIP/DINO features brought at ingest).
    Embedding,
    /// The built-in morphology descriptor computed from the pixels.
    Builtin,
}

/// Options of one plan.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    pub name: String,
    /// Temper exponent in [0, 1]: 1 keeps the raw distribution, 0 is uniform.
    pub tau: f64,
    pub visual_k: usize,
    /// Fine clusters of the first k-means level (0: 8 × visual_k).
    pub visual_fine_k: usize,
    pub semantic_k: usize,
    pub seed: u64,
    /// An SQL predicate over `samples` selecting what the plan covers.
    pub filter: Option<String>,
    pub replace: bool,
    pub visual_features: VisualFeatures,
    /// Caption styles that feed the semantic axis (empty: all).
    pub caption_styles: Vec<String>,
    pub ipf: IpfOptions,
    /// Compute and report, but write nothing.
    pub dry_run: bool,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            name: String::new(),
            tau: 0.5,
            visual_k: 16,
            visual_fine_k: 0,
            semantic_k: 16,
            seed: 0,
            filter: None,
            replace: false,
            visual_features: VisualFeatures::Auto,
            caption_styles: Vec::new(),
            ipf: IpfOptions::default(),
            dry_run: false,
        }
    }
}

/// One cluster of one axis in the report.
#[derive(Debug, Clone)]
pub struct ClusterSummary {
    pub id: u32,
    pub count: u64,
    /// Share of samples before weighting, after, and the tempered target.
    pub before: f64,
    pub after: f64,
    pub target: f64,
    /// Top TF-IDF terms (semantic axis only).
    pub terms: Vec<String>,
    /// Short captions of a few member samples.
    pub examples: Vec<String>,
}

/// One axis of the report.
#[derive(Debug, Clone)]
pub struct AxisReport {
    pub name: &'static str,
    pub clusters: Vec<ClusterSummary>,
    /// Shannon entropy (nats) of the marginal before and after weighting,
    /// and its maximum `ln k`.
    pub entropy_before: f64,
    pub entropy_after: f64,
    pub max_entropy: f64,
}

/// What a plan run did.
#[derive(Debug, Clone)]
pub struct PlanReport {
    pub name: String,
    pub tau: f64,
    /// Samples in the plan.
    pub samples: usize,
    /// Selected samples skipped: NaN/infinite features, no features at all.
    pub skipped_nan: usize,
    pub skipped_missing: usize,
    /// Samples outside the selection because curation dropped them.
    pub excluded_by_curation: Option<usize>,
    /// Which features fed the visual axis.
    pub visual_source: &'static str,
    pub visual: AxisReport,
    pub semantic: AxisReport,
    /// Effective sample size `(Σw)²/Σw²` and its fraction of `samples`.
    pub ess: f64,
    pub ipf_iterations: usize,
    pub ipf_converged: bool,
    pub ipf_max_error: f64,
    pub capped: bool,
    pub max_weight: f64,
    /// Seconds spent reading, clustering each axis, fitting and writing.
    pub timings: Vec<(&'static str, f64)>,
    /// Version of `sampling_plans` holding the plan (`None` on a dry run).
    pub version: Option<u64>,
}

fn validate(o: &PlanOptions) -> Result<()> {
    let bad = |m: String| Err(Error::Query(m));
    if o.name.trim().is_empty() || o.name.len() > 200 || o.name.chars().any(char::is_control) {
        return bad(format!(
            "--name must be 1-200 printable characters, got {:?}",
            o.name
        ));
    }
    if !(0.0..=1.0).contains(&o.tau) {
        return bad(format!("--tau must be in [0, 1], got {}", o.tau));
    }
    if o.visual_k == 0 || o.semantic_k == 0 || o.visual_k > 4096 || o.semantic_k > 4096 {
        return bad("--visual-k and --semantic-k must be in 1..=4096".into());
    }
    Ok(())
}

/// Cluster, fit and (unless a dry run) write plan `opts.name`. `progress`
/// receives one line per phase.
pub async fn plan(g: &Granary, opts: &PlanOptions, progress: &dyn Fn(&str)) -> Result<PlanReport> {
    validate(opts)?;
    if !opts.dry_run && !opts.replace && g.plan_exists(&opts.name).await? {
        return Err(Error::Query(format!(
            "sampling plan {:?} already exists; pass --replace to overwrite it",
            opts.name
        )));
    }
    let mut timings = Vec::new();
    let t = Instant::now();
    let samples = g.table(schema::SAMPLES).await?;
    if samples.count_rows(None).await? == 0 {
        return Err(Error::Query(
            "the selection is empty: the granary has no samples (ingest some first)".into(),
        ));
    }
    let samples_schema = samples.schema().clone();
    let has_keep = samples_schema.field(KEEP).is_some();
    let use_embedding = match opts.visual_features {
        VisualFeatures::Embedding => true,
        VisualFeatures::Builtin => false,
        VisualFeatures::Auto => {
            samples
                .count_rows(Some("embedding IS NOT NULL".into()))
                .await?
                > 0
        }
    };
    let (visual_col, visual_source) = if use_embedding {
        ("embedding", "embedding")
    } else {
        progress("computing built-in visual descriptors from the pixels");
        ensure_descriptors(g, progress).await?;
        let ds = g.table(schema::SAMPLES).await?;
        if ds.schema().field(VISUAL_DESCRIPTOR).is_none() {
            return Err(Error::Query(
                "no sample has visual features: no embeddings, and no image could be \
                     decoded for the built-in descriptor"
                    .into(),
            ));
        }
        (VISUAL_DESCRIPTOR, "built-in descriptor")
    };
    let session = Session::open(g).await?;
    // The features and the captions are read in two scans, lined up by
    // `_rowid`, so that the feature matrix is freed before any per-row
    // caption state exists: peak memory is the matrix plus a small constant.
    session.expose_row_ids(g, schema::SAMPLES).await?;
    let mut predicate = opts.filter.clone().map(|f| format!("({f})"));
    let mut excluded_by_curation = None;
    if has_keep {
        let base = predicate.clone().unwrap_or_else(|| "TRUE".into());
        let q = format!("SELECT count(*) FROM samples WHERE {base} AND keep = false");
        let (_, b) = session.sql(&q).await?;
        excluded_by_curation = Some(count_of(&b) as usize);
        predicate = Some(format!("{base} AND keep IS NOT FALSE"));
    }
    let filter = predicate.map(|p| format!(" WHERE {p}")).unwrap_or_default();
    // The row count first, so the matrix is allocated once at its final
    // size (growing it by doubling would peak at 1.5-2x).
    let (_, b) = session
        .sql(&format!("SELECT count(*) FROM samples{filter}"))
        .await?;
    let expected = count_of(&b).max(0) as usize;
    progress("reading features");
    let query = format!("SELECT _rowid, {visual_col} AS features FROM samples{filter}");
    let features = read_features(&session, &query, expected).await?;
    release_free_memory();
    timings.push(("read features", t.elapsed().as_secs_f64()));
    let (skipped_nan, skipped_missing) = (features.skipped_nan, features.skipped_missing);
    if features.rowids.is_empty() {
        return Err(Error::Query(format!(
            "the selection is empty{}: nothing to plan (skipped {skipped_nan} with NaN features, {skipped_missing} without features)",
            opts.filter
                .as_ref()
                .map(|f| format!(" (--where {f})"))
                .unwrap_or_default(),
        )));
    }
    let n = features.rowids.len();

    let t = Instant::now();
    progress(&format!("visual axis: hierarchical k-means of {n} samples"));
    let km = KMeansOptions {
        k: opts.visual_k,
        seed: opts.seed,
        ..KMeansOptions::default()
    };
    let fine_k = if opts.visual_fine_k == 0 {
        (opts.visual_k * 8).min(n / 4).max(opts.visual_k)
    } else {
        opts.visual_fine_k
    };
    let mut visual =
        kmeans::hierarchical(&features.values, features.dim, opts.visual_k, fine_k, &km)
            .map_err(Error::Query)?;
    visual.fine_labels = Vec::new();
    let rowids = features.rowids;
    drop(features.values);
    release_free_memory();
    timings.push(("visual clustering", t.elapsed().as_secs_f64()));

    let t = Instant::now();
    progress("reading captions");
    let query = format!("SELECT _rowid, id, captions FROM samples{filter}");
    let mut rows = read_captions(&session, &query, &opts.caption_styles, &rowids).await?;
    drop(rowids);
    if !rows.order.iter().enumerate().all(|(j, &p)| p as usize == j) {
        visual.labels = rows
            .order
            .iter()
            .map(|&p| visual.labels[p as usize])
            .collect();
    }
    rows.order = Vec::new();
    let ids = rows.ids.finish();
    release_free_memory();
    timings.push(("read captions", t.elapsed().as_secs_f64()));

    let t = Instant::now();
    progress("semantic axis: TF-IDF of captions, spherical k-means");
    let tfidf = TfIdf::from_df(rows.vocab_df(), n, &TfIdfOptions::default());
    let remap = rows.remap_to(&tfidf);
    let mut vectors = tfidf::Csr::default();
    let mut doc = Vec::new();
    for i in 0..n {
        doc.clear();
        doc.extend(rows.doc(i).iter().filter_map(|&t| remap[t as usize]));
        vectors.push(&tfidf.transform_ids(&mut doc));
    }
    // The tokens are not needed any more: give their memory back before clustering.
    rows.tokens = Vec::new();
    let semantic = tfidf::cluster(&vectors, tfidf.dim(), opts.semantic_k, opts.seed, 25);
    drop(vectors);
    let terms = semantic.top_terms(&tfidf, 4);
    timings.push(("semantic clustering", t.elapsed().as_secs_f64()));

    let t = Instant::now();
    progress("fitting weights (iterative proportional fitting)");
    let (v, s) = (visual.k, semantic.k);
    let mut table = vec![0u64; v * s];
    for i in 0..n {
        table[visual.labels[i] as usize * s + semantic.labels[i] as usize] += 1;
    }
    let count_v: Vec<f64> = (0..v)
        .map(|a| table[a * s..(a + 1) * s].iter().sum::<u64>() as f64)
        .collect();
    let count_s: Vec<f64> = (0..s)
        .map(|b| (0..v).map(|a| table[a * s + b]).sum::<u64>() as f64)
        .collect();
    let target_v = ipf::tempered_targets(&count_v, opts.tau);
    let target_s = ipf::tempered_targets(&count_s, opts.tau);
    let fit = ipf::fit(&table, v, s, &target_v, &target_s, &opts.ipf).map_err(Error::Query)?;
    let weights: Vec<f64> = (0..n)
        .map(|i| fit.cell_weight[visual.labels[i] as usize * s + semantic.labels[i] as usize])
        .collect();
    timings.push(("fit", t.elapsed().as_secs_f64()));

    let total_w: f64 = weights.iter().sum();
    let mut after_v = vec![0.0; v];
    let mut after_s = vec![0.0; s];
    for i in 0..n {
        after_v[visual.labels[i] as usize] += weights[i] / total_w;
        after_s[semantic.labels[i] as usize] += weights[i] / total_w;
    }
    drop(rows);
    let (examples_v, examples_s) =
        examples(&session, &ids, [(&visual.labels, v), (&semantic.labels, s)]).await?;
    let visual_report = axis_report("visual", &count_v, &after_v, &target_v, &[], examples_v);
    let semantic_report = axis_report(
        "semantic", &count_s, &after_s, &target_s, &terms, examples_s,
    );

    let max_weight = weights.iter().copied().fold(0.0, f64::max);
    let mut version = None;
    if !opts.dry_run {
        let t = Instant::now();
        progress(&format!("writing plan {:?} ({n} rows)", opts.name));
        let batch = plan_batch(&opts.name, ids, weights, &visual.labels, &semantic.labels)?;
        // Handed over in slices (zero-copy) so the writer's encoders work
        // on bounded pieces rather than the whole plan at once.
        let slices = (0..batch.num_rows())
            .step_by(PLAN_WRITE_ROWS)
            .map(|at| batch.slice(at, PLAN_WRITE_ROWS.min(batch.num_rows() - at)))
            .collect();
        version = Some(g.write_plan(&opts.name, slices, opts.replace).await?);
        timings.push(("write", t.elapsed().as_secs_f64()));
    }
    Ok(PlanReport {
        name: opts.name.clone(),
        tau: opts.tau,
        samples: n,
        skipped_nan,
        skipped_missing,
        excluded_by_curation,
        visual_source,
        visual: visual_report,
        semantic: semantic_report,
        ess: fit.ess,
        ipf_iterations: fit.iterations,
        ipf_converged: fit.converged,
        ipf_max_error: fit.max_error,
        capped: fit.capped,
        max_weight,
        timings,
        version,
    })
}

/// Give memory that the scan's threads freed back to the OS: glibc keeps
/// it in per-thread arenas otherwise, and the clustering phases would then
/// sit on top of the scan's high-water mark.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn count_of(batches: &[RecordBatch]) -> i64 {
    batches
        .first()
        .filter(|b| b.num_rows() > 0)
        .and_then(|b| {
            b.column(0)
                .as_primitive_opt::<arrow::datatypes::Int64Type>()
        })
        .map_or(0, |a| a.value(0))
}

/// The feature matrix of the selected rows (first scan), with each kept
/// row's `_rowid` so the caption scan can be lined up with it.
struct Features {
    rowids: Vec<u64>,
    dim: usize,
    values: Vec<f32>,
    skipped_nan: usize,
    skipped_missing: usize,
}

async fn read_features(session: &Session, query: &str, expected: usize) -> Result<Features> {
    let mut stream = session.stream(query).await?;
    let mut out = Features {
        rowids: Vec::new(),
        dim: 0,
        values: Vec::new(),
        skipped_nan: 0,
        skipped_missing: 0,
    };
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let rowids = row_ids(&batch)?;
        let Some(features) = batch.column(1).as_fixed_size_list_opt() else {
            return Err(Error::Query(format!(
                "the feature column has type {}, expected a fixed-size list of float32",
                batch.column(1).data_type()
            )));
        };
        if !matches!(features.value_type(), DataType::Float32) {
            return Err(Error::Query("features must be float32".into()));
        }
        let dim = features.value_length() as usize;
        if out.values.capacity() == 0 && batch.num_rows() > 0 {
            out.values.reserve_exact(expected * dim);
            out.rowids.reserve_exact(expected);
        }
        out.dim = dim;
        let values = features.values().as_primitive::<Float32Type>();
        for i in 0..batch.num_rows() {
            if features.is_null(i) {
                out.skipped_missing += 1;
                continue;
            }
            let start = features.value_offset(i) as usize;
            let f = &values.values()[start..start + dim];
            if f.iter().any(|x| !x.is_finite()) {
                out.skipped_nan += 1;
                continue;
            }
            out.rowids.push(rowids.value(i));
            out.values.extend_from_slice(f);
        }
    }
    Ok(out)
}

/// Column 0 of a scan batch: Lance's `_rowid`.
fn row_ids(batch: &RecordBatch) -> Result<&arrow::array::UInt64Array> {
    batch
        .column(0)
        .as_primitive_opt::<arrow::datatypes::UInt64Type>()
        .ok_or_else(|| Error::Query("the scan returned no _rowid column".into()))
}

/// Finds the first scan's index of a `_rowid` met in the second scan: the
/// next one in order when the scans agree (the usual case), else a binary
/// search.
struct RowIndex<'a> {
    rowids: &'a [u64],
    /// Indices of `rowids` in ascending rowid order, when `rowids` is not
    /// already ascending.
    sorted: Option<Vec<u32>>,
    next: usize,
}

impl<'a> RowIndex<'a> {
    fn new(rowids: &'a [u64]) -> Self {
        let sorted = (!rowids.is_sorted()).then(|| {
            let mut idx: Vec<u32> = (0..rowids.len() as u32).collect();
            idx.sort_unstable_by_key(|&i| rowids[i as usize]);
            idx
        });
        RowIndex {
            rowids,
            sorted,
            next: 0,
        }
    }

    fn find(&mut self, rowid: u64) -> Option<usize> {
        let hit = if self.rowids.get(self.next) == Some(&rowid) {
            Some(self.next)
        } else if let Some(sorted) = &self.sorted {
            sorted
                .binary_search_by_key(&rowid, |&i| self.rowids[i as usize])
                .ok()
                .map(|at| sorted[at] as usize)
        } else {
            self.rowids.binary_search(&rowid).ok()
        };
        if let Some(i) = hit {
            self.next = i + 1;
        }
        hit
    }
}

/// The selected rows' ids and captions (second scan), held compactly: ids
/// in one Arrow string buffer and caption tokens as interned ids (captions
/// themselves are not kept; the report's examples are fetched again by id).
/// Row `j` here is row `order[j]` of the feature scan.
struct Rows {
    ids: StringBuilder,
    tokens: Vec<u32>,
    offsets: Vec<usize>,
    interned: HashMap<String, u32>,
    order: Vec<u32>,
}

impl Rows {
    fn doc(&self, i: usize) -> &[u32] {
        &self.tokens[self.offsets[i]..self.offsets[i + 1]]
    }

    fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// (term, document frequency) of every interned token.
    fn vocab_df(&self) -> Vec<(String, usize)> {
        let mut df = vec![0usize; self.interned.len()];
        let mut seen = vec![usize::MAX; self.interned.len()];
        for i in 0..self.len() {
            for &t in self.doc(i) {
                if seen[t as usize] != i {
                    seen[t as usize] = i;
                    df[t as usize] += 1;
                }
            }
        }
        self.interned
            .iter()
            .map(|(term, &id)| (term.clone(), df[id as usize]))
            .collect()
    }

    /// Interned id → TF-IDF term id (None when pruned).
    fn remap_to(&self, tfidf: &TfIdf) -> Vec<Option<u32>> {
        let mut out = vec![None; self.interned.len()];
        for (term, &id) in &self.interned {
            out[id as usize] = tfidf.id(term);
        }
        out
    }
}

/// Reads ids and caption tokens of the rows the feature scan kept (by
/// `_rowid`; rows it skipped are skipped here too). Fails when the two
/// scans disagree on the set of rows.
async fn read_captions(
    session: &Session,
    query: &str,
    styles: &[String],
    rowids: &[u64],
) -> Result<Rows> {
    let n = rowids.len();
    let mut stream = session.stream(query).await?;
    let mut rows = Rows {
        ids: StringBuilder::new(),
        tokens: Vec::new(),
        offsets: Vec::with_capacity(n + 1),
        interned: HashMap::new(),
        order: Vec::with_capacity(n),
    };
    rows.offsets.push(0);
    let mut index = RowIndex::new(rowids);
    let mut seen = vec![false; n];
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let rids = row_ids(&batch)?;
        let Some(ids) = batch.column(1).as_string_opt::<i32>() else {
            return Err(Error::Query("samples.id is not a utf8 column".into()));
        };
        let Some(captions) = batch.column(2).as_list_opt::<i32>() else {
            return Err(Error::Query("samples.captions is not a list column".into()));
        };
        if rows.len() == 0 && batch.num_rows() > 0 {
            // Sized from the first batch, with a margin over its average.
            let per_row = ids.value_data().len().div_ceil(batch.num_rows()) * 5 / 4;
            rows.ids = StringBuilder::with_capacity(n, n * per_row);
        } else if rows.len() > 0 {
            // Tokens grow by the expected rest (from the average so far),
            // not by doubling.
            let per_row = rows.tokens.len().div_ceil(rows.len()) + 1;
            let free = rows.tokens.capacity() - rows.tokens.len();
            if free < batch.num_rows() * per_row {
                let rest = n.saturating_sub(rows.len()).max(batch.num_rows());
                rows.tokens.reserve_exact(rest * per_row * 9 / 8);
            }
        }
        for i in 0..batch.num_rows() {
            let Some(p) = index.find(rids.value(i)) else {
                continue;
            };
            if std::mem::replace(&mut seen[p], true) {
                return Err(Error::Query(format!(
                    "the caption scan returned _rowid {} twice",
                    rids.value(i)
                )));
            }
            rows.order.push(p as u32);
            rows.ids.append_value(ids.value(i));
            for tok in tfidf::tokenize(&caption_text(captions, i, styles)) {
                let next = rows.interned.len() as u32;
                let id = *rows.interned.entry(tok).or_insert(next);
                rows.tokens.push(id);
            }
            rows.offsets.push(rows.tokens.len());
        }
    }
    if rows.len() != n {
        return Err(Error::Query(format!(
            "the caption scan found {} of the {n} rows the feature scan selected",
            rows.len()
        )));
    }
    Ok(rows)
}

/// The text, lang and style arrays of row `i`'s captions; None when the row
/// is null or the list does not hold caption structs.
fn caption_items(
    list: &arrow::array::ListArray,
    i: usize,
) -> Option<(StringArray, StringArray, StringArray)> {
    if list.is_null(i) {
        return None;
    }
    let items = list.value(i);
    let s = items.as_struct_opt()?;
    let col = |n: &str| {
        s.column_by_name(n)
            .and_then(|c| c.as_string_opt::<i32>().cloned())
    };
    Some((col("text")?, col("lang")?, col("style")?))
}

/// All caption texts of row `i` in the chosen styles, joined.
fn caption_text(list: &arrow::array::ListArray, i: usize, styles: &[String]) -> String {
    let Some((text, _, style)) = caption_items(list, i) else {
        return String::new();
    };
    let mut all = String::new();
    for j in 0..text.len() {
        if styles.is_empty() || styles.iter().any(|st| st == style.value(j)) {
            all.push_str(text.value(j));
            all.push('\n');
        }
    }
    all
}

/// The first English short caption of row `i` (or its first caption), for
/// the report.
fn short_caption(list: &arrow::array::ListArray, i: usize) -> String {
    let Some((text, lang, style)) = caption_items(list, i) else {
        return String::new();
    };
    (0..text.len())
        .find(|&j| lang.value(j) == "en" && style.value(j) == "short")
        .or((!text.is_empty()).then_some(0))
        .map_or_else(String::new, |j| text.value(j).to_string())
}

/// Rows per batch handed to the plan writer.
const PLAN_WRITE_ROWS: usize = 65_536;

/// Members of each cluster looked at for example captions.
const EXAMPLE_CANDIDATES: usize = 8;

/// Up to three distinct example captions per cluster of each axis: the
/// short captions of the cluster's first members (among the first
/// [`EXAMPLE_CANDIDATES`]), read again by id so that no caption is held
/// for every row.
async fn examples(
    session: &Session,
    ids: &StringArray,
    axes: [(&[u32], usize); 2],
) -> Result<(Vec<Vec<String>>, Vec<Vec<String>>)> {
    let members: Vec<Vec<Vec<usize>>> = axes
        .iter()
        .map(|&(labels, k)| {
            let mut m = vec![Vec::new(); k];
            for (i, &l) in labels.iter().enumerate() {
                let c: &mut Vec<usize> = &mut m[l as usize];
                if c.len() < EXAMPLE_CANDIDATES {
                    c.push(i);
                }
            }
            m
        })
        .collect();
    let mut wanted: Vec<&str> = members
        .iter()
        .flatten()
        .flatten()
        .map(|&i| ids.value(i))
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    let mut short: HashMap<String, String> = HashMap::new();
    if !wanted.is_empty() {
        let list: Vec<String> = wanted
            .iter()
            .map(|id| format!("'{}'", id.replace('\'', "''")))
            .collect();
        let q = format!(
            "SELECT id, captions FROM samples WHERE id IN ({})",
            list.join(", ")
        );
        let (_, batches) = session.sql(&q).await?;
        for b in &batches {
            let (Some(id), Some(caps)) = (
                b.column(0).as_string_opt::<i32>(),
                b.column(1).as_list_opt::<i32>(),
            ) else {
                continue;
            };
            for i in 0..b.num_rows() {
                short.insert(id.value(i).to_string(), short_caption(caps, i));
            }
        }
    }
    let pick = |m: &Vec<Vec<usize>>| -> Vec<Vec<String>> {
        m.iter()
            .map(|rows| {
                let mut e: Vec<String> = Vec::new();
                for &i in rows {
                    match short.get(ids.value(i)) {
                        Some(c) if !c.is_empty() && e.len() < 3 && !e.contains(c) => {
                            e.push(c.clone())
                        }
                        _ => {}
                    }
                }
                e
            })
            .collect()
    };
    Ok((pick(&members[0]), pick(&members[1])))
}

fn entropy(p: &[f64]) -> f64 {
    let t: f64 = p.iter().sum();
    if t <= 0.0 {
        return 0.0;
    }
    -p.iter()
        .filter(|&&x| x > 0.0)
        .map(|&x| (x / t) * (x / t).ln())
        .sum::<f64>()
}

fn axis_report(
    name: &'static str,
    counts: &[f64],
    after: &[f64],
    target: &[f64],
    terms: &[Vec<String>],
    examples: Vec<Vec<String>>,
) -> AxisReport {
    let total: f64 = counts.iter().sum();
    let before: Vec<f64> = counts.iter().map(|c| c / total.max(1.0)).collect();
    let mut clusters: Vec<ClusterSummary> = examples
        .into_iter()
        .enumerate()
        .map(|(i, ex)| ClusterSummary {
            id: i as u32,
            count: counts[i] as u64,
            before: before[i],
            after: after[i],
            target: target[i],
            terms: terms.get(i).cloned().unwrap_or_default(),
            examples: ex,
        })
        .collect();
    clusters.sort_by(|a, b| b.count.cmp(&a.count).then(a.id.cmp(&b.id)));
    let nonempty = counts.iter().filter(|&&c| c > 0.0).count();
    AxisReport {
        name,
        clusters,
        entropy_before: entropy(&before),
        entropy_after: entropy(after),
        max_entropy: (nonempty.max(1) as f64).ln(),
    }
}

fn plan_batch(
    name: &str,
    ids: StringArray,
    weights: Vec<f64>,
    visual: &[u32],
    semantic: &[u32],
) -> Result<RecordBatch> {
    let n = ids.len();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    RecordBatch::try_new(
        schema::sampling_plans(),
        vec![
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n(name, n))),
            Arc::new(ids),
            Arc::new(Float64Array::from(weights)),
            Arc::new(Int32Array::from_iter_values(
                visual.iter().map(|&l| l as i32),
            )),
            Arc::new(Int32Array::from_iter_values(
                semantic.iter().map(|&l| l as i32),
            )),
            Arc::new(Int64Array::from(vec![now; n])),
        ],
    )
    .map_err(|e| Error::Query(format!("building the plan rows: {e}")))
}

/// Compute the built-in descriptor of every image sample that lacks one
/// and store it in `visual_descriptor` (one commit; later plans reuse it).
/// Videos and undecodable images keep a null descriptor and are skipped by
/// plans that use it. Returns how many descriptors were stored.
pub async fn ensure_descriptors(g: &Granary, progress: &dyn Fn(&str)) -> Result<usize> {
    let ds = g.table(schema::SAMPLES).await?;
    let has_col = ds.schema().field(VISUAL_DESCRIPTOR).is_some();
    let mut scan = ds.scan();
    scan.project(&["id", "bytes"])
        .map_err(granary_storage::Error::from)?;
    scan.blob_handling(lance::datatypes::BlobHandling::AllBinary);
    let filter = if has_col {
        format!("media = 'image' AND {VISUAL_DESCRIPTOR} IS NULL")
    } else {
        "media = 'image'".to_string()
    };
    scan.filter(&filter).map_err(granary_storage::Error::from)?;
    let mut stream = scan
        .try_into_stream()
        .await
        .map_err(granary_storage::Error::from)?;
    let mut ids = Vec::new();
    let mut values: Vec<f32> = Vec::new();
    let (mut seen, mut failed) = (0usize, 0usize);
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(granary_storage::Error::from)?;
        let (Some(id), Some(bytes)) = (
            batch.column(0).as_string_opt::<i32>(),
            batch.column(1).as_binary_opt::<i64>(),
        ) else {
            return Err(Error::Query(
                "samples.id/bytes have unexpected types".into(),
            ));
        };
        let items: Vec<Option<&[u8]>> = (0..batch.num_rows())
            .map(|i| (!bytes.is_null(i)).then(|| bytes.value(i)))
            .collect();
        for (i, d) in describe_parallel(&items).into_iter().enumerate() {
            match d {
                Some(v) => {
                    ids.push(id.value(i).to_string());
                    values.extend_from_slice(&v);
                }
                None => failed += 1,
            }
        }
        seen += batch.num_rows();
        progress(&format!("described {seen} images"));
    }
    if failed > 0 {
        tracing::warn!("{failed} images could not be decoded; they get no visual descriptor");
    }
    if ids.is_empty() {
        return Ok(0);
    }
    // A nullable item: the column is first added as all-null, and Lance
    // refuses null child slots under a non-nullable item field.
    let item = Arc::new(arrow::datatypes::Field::new(
        "item",
        DataType::Float32,
        true,
    ));
    let list = arrow::array::FixedSizeListArray::try_new(
        item.clone(),
        descriptor::DIM as i32,
        Arc::new(arrow::array::Float32Array::from(values)),
        None,
    )
    .map_err(|e| Error::Query(e.to_string()))?;
    let out_schema = Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("id", DataType::Utf8, false),
        arrow::datatypes::Field::new(
            VISUAL_DESCRIPTOR,
            DataType::FixedSizeList(item, descriptor::DIM as i32),
            true,
        ),
    ]));
    let n = ids.len();
    let batch = RecordBatch::try_new(
        out_schema.clone(),
        vec![Arc::new(StringArray::from(ids)), Arc::new(list)],
    )
    .map_err(|e| Error::Query(e.to_string()))?;
    g.update_columns(schema::SAMPLES, "id", out_schema, vec![batch])
        .await?;
    Ok(n)
}

/// Describe encoded images on every core; `None` for non-images and failures.
fn describe_parallel(items: &[Option<&[u8]>]) -> Vec<Option<Vec<f32>>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = items.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|b| {
                            let b = (*b)?;
                            // Untrusted bytes: a decoder panic loses one sample, not the run.
                            std::panic::catch_unwind(|| descriptor::describe_encoded(b))
                                .ok()?
                                .ok()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .zip(items.chunks(chunk))
            .flat_map(|(h, part)| h.join().unwrap_or_else(|_| vec![None; part.len()]))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::RowIndex;

    #[test]
    fn row_index_lines_up_scans_in_any_order() {
        // Ascending row ids (the usual ordered scan), with gaps where the
        // feature scan skipped rows.
        let asc = [3u64, 4, 9, 10, 11, 40];
        let mut ix = RowIndex::new(&asc);
        let found: Vec<_> = [3u64, 4, 5, 9, 10, 11, 12, 40]
            .iter()
            .map(|&r| ix.find(r))
            .collect();
        assert_eq!(
            found,
            [
                Some(0),
                Some(1),
                None,
                Some(2),
                Some(3),
                Some(4),
                None,
                Some(5)
            ]
        );
        // Out of order in both scans.
        let mixed = [40u64, 3, 11, 9];
        let mut ix = RowIndex::new(&mixed);
        let found: Vec<_> = [9u64, 11, 2, 40, 3].iter().map(|&r| ix.find(r)).collect();
        assert_eq!(found, [Some(3), Some(2), None, Some(0), Some(1)]);
        assert!(RowIndex::new(&[]).find(7).is_none());
    }
}
