//! Curation UDFs registered in every session: `defect_area_ratio`,
//! `aspect_bucket`, `caption` and `blob_size`.
//!
//! Each is a plain Rust function over one row (tested on its own) wrapped in
//! one `ScalarUDFImpl` that checks argument types at planning time, so a
//! wrong call is a one-line plan error, never a panic at execution.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Builder, StringBuilder, StructArray, UInt64Builder,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type};
use datafusion::common::{Result as DfResult, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;

/// Aspect-ratio buckets (width:height) that mixed-resolution training groups
/// samples into; a sample goes to the nearest one in log space.
pub const ASPECT_BUCKETS: [(u32, u32); 13] = [
    (1, 1),
    (5, 4),
    (4, 5),
    (4, 3),
    (3, 4),
    (3, 2),
    (2, 3),
    (16, 9),
    (9, 16),
    (2, 1),
    (1, 2),
    (21, 9),
    (9, 21),
];

/// Area of the union of `boxes` (`[x0, y0, x1, y1]`, half-open) clipped to
/// the `width × height` image; overlapping boxes count once.
pub fn union_area(boxes: &[[i64; 4]], width: i64, height: i64) -> i64 {
    let clip = |b: &[i64; 4]| {
        [
            b[0].clamp(0, width),
            b[1].clamp(0, height),
            b[2].clamp(0, width),
            b[3].clamp(0, height),
        ]
    };
    // Most samples hold no box or one: no sweep, no allocation.
    match boxes {
        [] => return 0,
        [b] => {
            let c = clip(b);
            return (c[2] - c[0]).max(0) * (c[3] - c[1]).max(0);
        }
        _ => {}
    }
    let clipped: Vec<[i64; 4]> = boxes
        .iter()
        .map(clip)
        .filter(|b| b[0] < b[2] && b[1] < b[3])
        .collect();
    let mut xs: Vec<i64> = clipped.iter().flat_map(|b| [b[0], b[2]]).collect();
    xs.sort_unstable();
    xs.dedup();
    let mut area = 0;
    let mut spans: Vec<(i64, i64)> = Vec::with_capacity(clipped.len());
    for w in xs.windows(2) {
        let (xa, xb) = (w[0], w[1]);
        spans.clear();
        spans.extend(
            clipped
                .iter()
                .filter(|b| b[0] <= xa && b[2] >= xb)
                .map(|b| (b[1], b[3])),
        );
        spans.sort_unstable();
        let mut covered = 0;
        let mut cur: Option<(i64, i64)> = None;
        for &(y0, y1) in &spans {
            cur = match cur {
                Some((a, b)) if y0 <= b => Some((a, b.max(y1))),
                Some((a, b)) => {
                    covered += b - a;
                    Some((y0, y1))
                }
                None => Some((y0, y1)),
            };
        }
        if let Some((a, b)) = cur {
            covered += b - a;
        }
        area += covered * (xb - xa);
    }
    area
}

/// Fraction of the image covered by the union of the defect boxes, or
/// `None` for a degenerate image size.
pub fn defect_area_ratio(boxes: &[[i64; 4]], width: i64, height: i64) -> Option<f64> {
    if width <= 0 || height <= 0 {
        return None;
    }
    Some(union_area(boxes, width, height) as f64 / (width as f64 * height as f64))
}

/// The nearest aspect bucket, as `"W:H"`, or `None` for a degenerate size.
pub fn aspect_bucket(width: i64, height: i64) -> Option<&'static str> {
    if width <= 0 || height <= 0 {
        return None;
    }
    // Nearest in log space = one comparison per boundary of the sorted
    // buckets, so no logarithm per row.
    let b = bucket_bounds();
    let r = width as f64 / height as f64;
    Some(b.names[b.bounds.partition_point(|&x| x < r)])
}

/// The buckets sorted by ratio, and the ratios where the nearest one in log
/// space changes: the geometric mean of each neighbouring pair.
struct BucketBounds {
    names: [&'static str; 13],
    bounds: [f64; 12],
}

fn bucket_bounds() -> &'static BucketBounds {
    static B: std::sync::OnceLock<BucketBounds> = std::sync::OnceLock::new();
    B.get_or_init(|| {
        let ratio = |i: usize| f64::from(ASPECT_BUCKETS[i].0) / f64::from(ASPECT_BUCKETS[i].1);
        let mut order: Vec<usize> = (0..ASPECT_BUCKETS.len()).collect();
        order.sort_by(|&a, &b| ratio(a).total_cmp(&ratio(b)));
        BucketBounds {
            names: std::array::from_fn(|k| BUCKET_NAMES[order[k]]),
            bounds: std::array::from_fn(|k| (ratio(order[k]) * ratio(order[k + 1])).sqrt()),
        }
    })
}

const BUCKET_NAMES: [&str; 13] = [
    "1:1", "5:4", "4:5", "4:3", "3:4", "3:2", "2:3", "16:9", "9:16", "2:1", "1:2", "21:9", "9:21",
];

/// Register every curation UDF in `ctx`.
pub fn register(ctx: &SessionContext) {
    for kind in [
        Kind::DefectAreaRatio,
        Kind::AspectBucket,
        Kind::Caption,
        Kind::BlobSize,
    ] {
        ctx.register_udf(ScalarUDF::from(CurationUdf::new(kind)));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    DefectAreaRatio,
    AspectBucket,
    Caption,
    BlobSize,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::DefectAreaRatio => "defect_area_ratio",
            Kind::AspectBucket => "aspect_bucket",
            Kind::Caption => "caption",
            Kind::BlobSize => "blob_size",
        }
    }

    fn usage(self) -> &'static str {
        match self {
            Kind::DefectAreaRatio => "defect_area_ratio(defects, width, height)",
            Kind::AspectBucket => "aspect_bucket(width, height)",
            Kind::Caption => "caption(captions, lang, style) (lang/style '*' or NULL for any)",
            Kind::BlobSize => "blob_size(bytes) on a blob column",
        }
    }

    fn arity(self) -> usize {
        match self {
            Kind::DefectAreaRatio | Kind::Caption => 3,
            Kind::AspectBucket => 2,
            Kind::BlobSize => 1,
        }
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct CurationUdf {
    kind: Kind,
    signature: Signature,
}

impl CurationUdf {
    fn new(kind: Kind) -> Self {
        CurationUdf {
            kind,
            signature: Signature::any(kind.arity(), Volatility::Immutable),
        }
    }
}

fn is_int(t: &DataType) -> bool {
    t.is_integer() || matches!(t, DataType::Null)
}

fn is_text(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null
    )
}

/// The struct fields of a `List<Struct>` type, if it is one.
pub(crate) fn list_struct_fields(t: &DataType) -> Option<&arrow::datatypes::Fields> {
    match t {
        DataType::List(f) | DataType::LargeList(f) => match f.data_type() {
            DataType::Struct(fields) => Some(fields),
            _ => None,
        },
        _ => None,
    }
}

fn has_fields(t: &DataType, names: &[&str]) -> bool {
    list_struct_fields(t).is_some_and(|f| names.iter().all(|n| f.find(n).is_some()))
}

impl ScalarUDFImpl for CurationUdf {
    fn name(&self) -> &str {
        self.kind.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, t: &[DataType]) -> DfResult<DataType> {
        let ok = match self.kind {
            Kind::DefectAreaRatio => {
                has_fields(&t[0], &["x0", "y0", "x1", "y1"]) && is_int(&t[1]) && is_int(&t[2])
            }
            Kind::AspectBucket => is_int(&t[0]) && is_int(&t[1]),
            Kind::Caption => {
                has_fields(&t[0], &["text", "lang", "style"]) && is_text(&t[1]) && is_text(&t[2])
            }
            Kind::BlobSize => match &t[0] {
                // Planning sees the blob v2 logical type `struct<data, uri>`;
                // the scan delivers the descriptor `struct<kind, position, size, …>`.
                DataType::Struct(f) => f.find("size").is_some() || f.find("data").is_some(),
                DataType::Binary | DataType::LargeBinary | DataType::BinaryView => true,
                _ => false,
            },
        };
        if !ok {
            let got: Vec<String> = t.iter().map(|t| t.to_string()).collect();
            return plan_err!(
                "{}: wrong argument types ({}); usage: {}",
                self.kind.name(),
                got.join(", "),
                self.kind.usage()
            );
        }
        Ok(match self.kind {
            Kind::DefectAreaRatio => DataType::Float64,
            Kind::AspectBucket | Kind::Caption => DataType::Utf8,
            Kind::BlobSize => DataType::UInt64,
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let out = match self.kind {
            Kind::DefectAreaRatio => eval_defect_ratio(&arrays)?,
            Kind::AspectBucket => eval_aspect(&arrays)?,
            Kind::Caption => eval_caption(&arrays)?,
            Kind::BlobSize => eval_blob_size(&arrays[0])?,
        };
        Ok(ColumnarValue::Array(out))
    }
}

fn ints(a: &ArrayRef) -> DfResult<ArrayRef> {
    Ok(cast(a, &DataType::Int64)?)
}

fn eval_defect_ratio(a: &[ArrayRef]) -> DfResult<ArrayRef> {
    let (w, h) = (ints(&a[1])?, ints(&a[2])?);
    let (w, h) = (w.as_primitive::<Int64Type>(), h.as_primitive::<Int64Type>());
    // Cast the flattened box columns once per batch, then walk the offsets.
    let (list, items) = flatten(&a[0])?;
    let cols = ["x0", "y0", "x1", "y1"]
        .map(|n| items.column_by_name(n).map(ints).transpose())
        .into_iter()
        .collect::<DfResult<Vec<_>>>()?;
    let cols: Vec<&ArrayRef> = cols.iter().flatten().collect();
    if cols.len() != 4 {
        return plan_err!("defect boxes need x0, y0, x1, y1");
    }
    let c: Vec<_> = cols.iter().map(|c| c.as_primitive::<Int64Type>()).collect();
    let offsets = list.offsets();
    let mut out = Float64Builder::with_capacity(list.len());
    let mut boxes = Vec::new();
    for row in 0..list.len() {
        if list.is_null(row) || w.is_null(row) || h.is_null(row) {
            out.append_null();
            continue;
        }
        boxes.clear();
        for i in offsets[row] as usize..offsets[row + 1] as usize {
            if items.is_null(i) || c.iter().any(|c| c.is_null(i)) {
                continue;
            }
            boxes.push([c[0].value(i), c[1].value(i), c[2].value(i), c[3].value(i)]);
        }
        out.append_option(defect_area_ratio(&boxes, w.value(row), h.value(row)));
    }
    Ok(Arc::new(out.finish()))
}

/// A `List<Struct>` array as a large list and its flattened struct items.
fn flatten(list: &ArrayRef) -> DfResult<(arrow::array::LargeListArray, StructArray)> {
    let list = cast(list, &large_of(list.data_type()))?;
    let list = list.as_list::<i64>().clone();
    let Some(items) = list.values().as_struct_opt().cloned() else {
        return plan_err!("expected a list of structs");
    };
    Ok((list, items))
}

fn large_of(t: &DataType) -> DataType {
    match t {
        DataType::List(f) => DataType::LargeList(f.clone()),
        other => other.clone(),
    }
}

fn eval_aspect(a: &[ArrayRef]) -> DfResult<ArrayRef> {
    let (w, h) = (ints(&a[0])?, ints(&a[1])?);
    let (w, h) = (w.as_primitive::<Int64Type>(), h.as_primitive::<Int64Type>());
    let mut out = StringBuilder::with_capacity(w.len(), w.len() * 4);
    for i in 0..w.len() {
        if w.is_null(i) || h.is_null(i) {
            out.append_null();
        } else {
            out.append_option(aspect_bucket(w.value(i), h.value(i)));
        }
    }
    Ok(Arc::new(out.finish()))
}

fn eval_caption(a: &[ArrayRef]) -> DfResult<ArrayRef> {
    let lang = cast(&a[1], &DataType::Utf8)?;
    let style = cast(&a[2], &DataType::Utf8)?;
    let (lang, style) = (lang.as_string::<i32>(), style.as_string::<i32>());
    let want = |arr: &arrow::array::StringArray, i: usize| -> Option<String> {
        (!arr.is_null(i))
            .then(|| arr.value(i).to_string())
            .filter(|v| v != "*")
    };
    let (list, items) = flatten(&a[0])?;
    let col = |n: &str| items.column_by_name(n).map(|c| cast(c, &DataType::Utf8));
    let (Some(text), Some(l), Some(st)) = (col("text"), col("lang"), col("style")) else {
        return plan_err!("captions need text, lang, style");
    };
    let (text, l, st) = (text?, l?, st?);
    let (text, l, st) = (
        text.as_string::<i32>(),
        l.as_string::<i32>(),
        st.as_string::<i32>(),
    );
    let offsets = list.offsets();
    let mut out = StringBuilder::new();
    for row in 0..list.len() {
        if list.is_null(row) {
            out.append_null();
            continue;
        }
        let (wl, ws) = (want(lang, row), want(style, row));
        let found = (offsets[row] as usize..offsets[row + 1] as usize).find(|&i| {
            !text.is_null(i)
                && wl
                    .as_deref()
                    .is_none_or(|v| !l.is_null(i) && l.value(i) == v)
                && ws
                    .as_deref()
                    .is_none_or(|v| !st.is_null(i) && st.value(i) == v)
        });
        out.append_option(found.map(|i| text.value(i)));
    }
    Ok(Arc::new(out.finish()))
}

fn eval_blob_size(a: &ArrayRef) -> DfResult<ArrayRef> {
    if let Some(s) = a.as_struct_opt() {
        let Some(size) = s.column_by_name("size") else {
            return match s.column_by_name("data") {
                Some(data) => eval_blob_size(data),
                None => plan_err!("blob_size: the struct has no size or data field"),
            };
        };
        let size = cast(size, &DataType::UInt64)?;
        let size = size.as_primitive::<arrow::datatypes::UInt64Type>();
        let mut out = UInt64Builder::with_capacity(s.len());
        for i in 0..s.len() {
            out.append_option((!s.is_null(i) && !size.is_null(i)).then(|| size.value(i)));
        }
        return Ok(Arc::new(out.finish()));
    }
    let bin = cast(a, &DataType::LargeBinary)?;
    let bin = bin.as_binary::<i64>();
    let mut out = UInt64Builder::with_capacity(bin.len());
    for i in 0..bin.len() {
        out.append_option((!bin.is_null(i)).then(|| bin.value(i).len() as u64));
    }
    Ok(Arc::new(out.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition: the bucket whose ratio is nearest in log space.
    fn nearest_by_log_distance(width: i64, height: i64) -> &'static str {
        let r = (width as f64 / height as f64).ln();
        let (i, _) = ASPECT_BUCKETS
            .iter()
            .enumerate()
            .map(|(i, &(w, h))| (i, (r - (f64::from(w) / f64::from(h)).ln()).abs()))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .expect("buckets");
        BUCKET_NAMES[i]
    }

    #[test]
    fn aspect_bucket_is_the_nearest_in_log_space() {
        for w in (1..=4096).step_by(7) {
            for h in (1..=4096).step_by(5) {
                assert_eq!(
                    aspect_bucket(w, h),
                    Some(nearest_by_log_distance(w, h)),
                    "{w}x{h}"
                );
            }
        }
        for &(w, h) in &ASPECT_BUCKETS {
            let (w, h) = (i64::from(w) * 64, i64::from(h) * 64);
            assert_eq!(aspect_bucket(w, h), Some(nearest_by_log_distance(w, h)));
        }
        assert_eq!(aspect_bucket(1920, 1080), Some("16:9"));
        assert_eq!(aspect_bucket(0, 10), None);
    }

    #[test]
    fn union_counts_overlap_once() {
        // Two 10×10 boxes overlapping in a 5×5 square: 100 + 100 - 25.
        let b = [[0, 0, 10, 10], [5, 5, 15, 15]];
        assert_eq!(union_area(&b, 100, 100), 175);
        // A box inside another adds nothing.
        let b = [[0, 0, 10, 10], [2, 2, 4, 4]];
        assert_eq!(union_area(&b, 100, 100), 100);
        // Three boxes in a chain plus a duplicate.
        let b = [[0, 0, 4, 4], [2, 2, 6, 6], [4, 4, 8, 8], [0, 0, 4, 4]];
        assert_eq!(union_area(&b, 100, 100), 16 * 3 - 4 - 4);
    }

    #[test]
    fn union_clips_to_the_image_and_ignores_empty_boxes() {
        let b = [[-5, -5, 5, 5], [8, 8, 20, 20], [3, 3, 3, 9]];
        assert_eq!(union_area(&b, 10, 10), 25 + 4);
        assert_eq!(defect_area_ratio(&b, 10, 10), Some(0.29));
        assert_eq!(defect_area_ratio(&b, 0, 10), None);
        assert_eq!(defect_area_ratio(&[], 10, 10), Some(0.0));
    }

    #[test]
    fn union_matches_a_pixel_count() {
        let mut seed = 7u64;
        let mut next = |m: i64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as i64) % m
        };
        for _ in 0..200 {
            let n = 1 + next(5) as usize;
            let boxes: Vec<[i64; 4]> = (0..n)
                .map(|_| {
                    let (x, y) = (next(30) - 5, next(30) - 5);
                    [x, y, x + next(15), y + next(15)]
                })
                .collect();
            let mut pixels = 0;
            for py in 0..24 {
                for px in 0..24 {
                    if boxes
                        .iter()
                        .any(|b| b[0] <= px && px < b[2] && b[1] <= py && py < b[3])
                    {
                        pixels += 1;
                    }
                }
            }
            assert_eq!(union_area(&boxes, 24, 24), pixels, "{boxes:?}");
        }
    }

    #[test]
    fn aspect_buckets_pick_the_nearest_ratio() {
        assert_eq!(aspect_bucket(256, 256), Some("1:1"));
        assert_eq!(aspect_bucket(320, 192), Some("16:9"));
        assert_eq!(aspect_bucket(192, 320), Some("9:16"));
        assert_eq!(aspect_bucket(1500, 1000), Some("3:2"));
        assert_eq!(aspect_bucket(1000, 1), Some("21:9"));
        assert_eq!(aspect_bucket(0, 10), None);
    }
}
