//! Defect-aware curation (Seedream 3.0): samples whose defect boxes cover
//! less than a threshold of the image are kept with those boxes as a loss
//! mask; the rest, and samples failing the score or resolution thresholds,
//! get `keep = false` and a reason. Nothing is deleted: the result is a new
//! version of `samples` with the columns of
//! [`granary_storage::schema::curation_fields`].

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray, ListArray, RecordBatch, StringArray};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Field, Float32Type, Float64Type, Int32Type, Schema};
use granary_storage::Granary;
use granary_storage::schema;

use crate::{Error, Result, Session};

/// Thresholds of one curation run.
#[derive(Debug, Clone)]
pub struct CurateOptions {
    /// Keep samples whose defect-area ratio (union of boxes / image area) is
    /// below this, masking the boxes; drop the rest. Seedream 3.0 uses 0.20.
    pub max_defect_ratio: f64,
    /// Drop samples whose aesthetic score is below this (a missing score passes).
    pub min_aesthetic: Option<f64>,
    /// Drop samples whose OCR (text area) ratio is above this.
    pub max_ocr_ratio: Option<f64>,
    /// Drop samples whose shorter side is below this many pixels.
    pub min_side: Option<i32>,
    /// Compute and report, but write nothing.
    pub dry_run: bool,
}

impl Default for CurateOptions {
    fn default() -> Self {
        CurateOptions {
            max_defect_ratio: 0.20,
            min_aesthetic: None,
            max_ocr_ratio: None,
            min_side: None,
            dry_run: false,
        }
    }
}

/// What a curation run decided.
#[derive(Debug, Clone, Default)]
pub struct CurateReport {
    pub total: u64,
    /// Kept with no defects.
    pub kept_clean: u64,
    /// Kept with defect boxes that become the loss mask.
    pub kept_masked: u64,
    pub dropped: u64,
    /// Drops by criterion (`defect_area`, `aesthetic`, `ocr_ratio`,
    /// `resolution`); a sample failing several counts under each.
    pub dropped_by: BTreeMap<&'static str, u64>,
    /// Mean masked fraction of the image over the masked samples.
    pub mean_masked_ratio: f64,
    /// Version of `samples` holding the result (`None` on a dry run).
    pub version: Option<u64>,
}

impl CurateReport {
    /// Samples that would have been lost had every sample with a defect
    /// been dropped, as a fraction of the clean kept ones: what masking gains.
    pub fn masking_gain(&self) -> f64 {
        let without = self.kept_clean.max(1) as f64;
        self.kept_masked as f64 / without
    }
}

fn validate(o: &CurateOptions) -> Result<()> {
    let bad = |m: String| Err(Error::Query(m));
    if !(0.0..=1.0).contains(&o.max_defect_ratio) {
        return bad(format!(
            "--max-defect-ratio must be in [0, 1], got {}",
            o.max_defect_ratio
        ));
    }
    if let Some(r) = o.max_ocr_ratio
        && !(0.0..=1.0).contains(&r)
    {
        return bad(format!("--max-ocr-ratio must be in [0, 1], got {r}"));
    }
    if o.min_aesthetic.is_some_and(|a| !a.is_finite()) {
        return bad("--min-aesthetic must be a number".into());
    }
    if o.min_side.is_some_and(|s| s < 0) {
        return bad("--min-side must not be negative".into());
    }
    Ok(())
}

/// Decide every sample of the granary and (unless a dry run) write the
/// decision as one new version of `samples`.
pub async fn curate(g: &Granary, opts: &CurateOptions) -> Result<CurateReport> {
    validate(opts)?;
    let session = Session::open(g).await?;
    let (_, batches) = session
        .sql(
            "SELECT id, defects, width, height, aesthetic, ocr_ratio, \
             defect_area_ratio(defects, width, height) AS defect_ratio FROM samples",
        )
        .await?;
    let mut report = CurateReport::default();
    let mut masked_sum = 0.0;
    let out_schema = Arc::new(Schema::new(
        std::iter::once(Field::new("id", DataType::Utf8, false))
            .chain(schema::curation_fields())
            .collect::<Vec<_>>(),
    ));
    let mut out = Vec::with_capacity(batches.len());
    for b in &batches {
        let n = b.num_rows();
        let col = |i: usize| b.column(i);
        let unexpected = |name: &str| {
            Error::Query(format!(
                "samples.{name} has an unexpected type; is this a granary of schema version {}?",
                schema::SCHEMA_VERSION
            ))
        };
        let defects = col(1)
            .as_list_opt::<i32>()
            .ok_or_else(|| unexpected("defects"))?;
        let w = col(2).as_primitive_opt::<Int32Type>();
        let h = col(3).as_primitive_opt::<Int32Type>();
        let (Some(w), Some(h)) = (w, h) else {
            return Err(unexpected("width/height"));
        };
        let aesthetic = col(4)
            .as_primitive_opt::<Float32Type>()
            .ok_or_else(|| unexpected("aesthetic"))?;
        let ocr = col(5)
            .as_primitive_opt::<Float32Type>()
            .ok_or_else(|| unexpected("ocr_ratio"))?;
        let ratio = col(6)
            .as_primitive_opt::<Float64Type>()
            .ok_or_else(|| unexpected("defect_area_ratio"))?;
        let mut keep = Vec::with_capacity(n);
        let mut reasons: Vec<Option<String>> = Vec::with_capacity(n);
        for i in 0..n {
            let mut why = Vec::new();
            let r = if ratio.is_null(i) {
                0.0
            } else {
                ratio.value(i)
            };
            if r >= opts.max_defect_ratio && r > 0.0 {
                why.push((
                    "defect_area",
                    format!(
                        "defect area {:.1}% >= {:.1}%",
                        r * 100.0,
                        opts.max_defect_ratio * 100.0
                    ),
                ));
            }
            if let Some(min) = opts.min_aesthetic
                && !aesthetic.is_null(i)
                && f64::from(aesthetic.value(i)) < min
            {
                why.push((
                    "aesthetic",
                    format!("aesthetic {:.2} < {min}", aesthetic.value(i)),
                ));
            }
            if let Some(max) = opts.max_ocr_ratio
                && !ocr.is_null(i)
                && f64::from(ocr.value(i)) > max
            {
                why.push((
                    "ocr_ratio",
                    format!("ocr ratio {:.3} > {max}", ocr.value(i)),
                ));
            }
            if let Some(min) = opts.min_side
                && w.value(i).min(h.value(i)) < min
            {
                why.push((
                    "resolution",
                    format!("{}x{} shorter side < {min}", w.value(i), h.value(i)),
                ));
            }
            report.total += 1;
            if why.is_empty() {
                if defects.value_length(i) > 0 && r > 0.0 {
                    report.kept_masked += 1;
                    masked_sum += r;
                } else {
                    report.kept_clean += 1;
                }
                keep.push(true);
                reasons.push(None);
            } else {
                report.dropped += 1;
                for (k, _) in &why {
                    *report.dropped_by.entry(k).or_default() += 1;
                }
                keep.push(false);
                let text: Vec<&str> = why.iter().map(|(_, t)| t.as_str()).collect();
                reasons.push(Some(text.join("; ")));
            }
        }
        let keep = BooleanArray::from(keep);
        // The loss mask is the sample's defect list where kept, null where dropped.
        let item = Arc::new(Field::new(
            "item",
            DataType::Struct(schema::defect_fields()),
            false,
        ));
        let mask = ListArray::try_new(
            item,
            defects.offsets().clone(),
            defects.values().clone(),
            Some(NullBuffer::from(keep.values().clone())),
        )
        .map_err(|e| Error::Query(format!("defects column has an unexpected type: {e}")))?;
        out.push(
            RecordBatch::try_new(
                out_schema.clone(),
                vec![
                    col(0).clone(),
                    Arc::new(keep),
                    Arc::new(StringArray::from(reasons)),
                    Arc::new(mask),
                ],
            )
            .map_err(|e| Error::Query(e.to_string()))?,
        );
    }
    if report.kept_masked > 0 {
        report.mean_masked_ratio = masked_sum / report.kept_masked as f64;
    }
    if report.total == 0 {
        return Err(Error::Query("the granary has no samples to curate".into()));
    }
    if !opts.dry_run {
        let (version, _) = g
            .update_columns(schema::SAMPLES, "id", out_schema, out)
            .await?;
        report.version = Some(version);
    }
    Ok(report)
}
