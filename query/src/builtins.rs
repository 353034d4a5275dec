//! Faster bodies for the DataFusion built-ins that curation queries lean on:
//! `cardinality(list)` and list indexing (`captions[1]`, `array_element`).
//!
//! DataFusion 54 evaluates both row by row: `cardinality` slices every list
//! element into its own array to measure it, and `array_element` copies one
//! element at a time through `MutableArrayData`. On a `List<Struct>` column
//! of 100k rows that was two thirds of `WHERE cardinality(defects) > 0`.
//! Here both read the list offsets once per batch: `cardinality` is the
//! offset difference, indexing is one vectorised `take` of the child values.
//!
//! Each wrapper keeps the built-in's name, signature, return type and
//! display names, and hands every case it does not speed up (maps, nested
//! lists, scalar inputs, list views) back to the built-in, so results never
//! differ. [`install`] puts them in place: by name for `cardinality(…)` and
//! `array_element(…)`, and as the first expression planner for `x[i]`.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, GenericListArray, OffsetSizeTrait, UInt64Array};
use arrow::datatypes::{DataType, FieldRef};
use datafusion::common::{DFSchema, Result as DfResult, ScalarValue};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::expr::{AggregateFunction, ScalarFunction};
use datafusion::logical_expr::planner::{ExprPlanner, PlannerResult, RawFieldAccessExpr};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ExprSchemable, GetFieldAccess, ReturnFieldArgs,
    ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Cardinality,
    Element,
}

/// A built-in with a faster evaluation for plain lists.
#[derive(Debug)]
struct Fast {
    kind: Kind,
    inner: Arc<dyn ScalarUDFImpl>,
}

impl PartialEq for Fast {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind
    }
}

impl Eq for Fast {}

impl Hash for Fast {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.kind.hash(state);
    }
}

impl ScalarUDFImpl for Fast {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn schema_name(&self, args: &[Expr]) -> DfResult<String> {
        self.inner.schema_name(args)
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let fast = match self.kind {
            Kind::Cardinality => cardinality(&args.args),
            Kind::Element => element(&args.args, args.number_rows)?,
        };
        match fast {
            Some(out) => Ok(ColumnarValue::Array(out)),
            None => self.inner.invoke_with_args(args),
        }
    }
}

fn is_nested_list(t: &DataType) -> bool {
    matches!(
        t,
        DataType::List(_)
            | DataType::LargeList(_)
            | DataType::ListView(_)
            | DataType::LargeListView(_)
            | DataType::FixedSizeList(..)
    )
}

/// Element count per row of a list array whose items are not lists
/// (the built-in multiplies the dimensions of nested lists; left to it).
fn cardinality(args: &[ColumnarValue]) -> Option<ArrayRef> {
    let [ColumnarValue::Array(a)] = args else {
        return None;
    };
    fn counts<O: OffsetSizeTrait>(list: &GenericListArray<O>) -> ArrayRef {
        let lens = list
            .offsets()
            .windows(2)
            .map(|w| (w[1] - w[0]).as_usize() as u64);
        let values: Vec<u64> = lens.collect();
        Arc::new(UInt64Array::new(values.into(), list.nulls().cloned()))
    }
    match a.data_type() {
        DataType::List(f) if !is_nested_list(f.data_type()) => Some(counts(a.as_list::<i32>())),
        DataType::LargeList(f) if !is_nested_list(f.data_type()) => {
            Some(counts(a.as_list::<i64>()))
        }
        _ => None,
    }
}

/// `list[index]` for a list array: 1-based, negative from the end, NULL
/// when out of range or when the list is NULL (as the built-in).
fn element(args: &[ColumnarValue], rows: usize) -> DfResult<Option<ArrayRef>> {
    let [ColumnarValue::Array(list), index] = args else {
        return Ok(None);
    };
    let index = match index {
        ColumnarValue::Scalar(ScalarValue::Int64(i)) => Index::Const(*i),
        ColumnarValue::Array(a) if a.data_type() == &DataType::Int64 => {
            Index::PerRow(a.as_primitive::<arrow::datatypes::Int64Type>())
        }
        _ => return Ok(None),
    };
    let (picks, values) = match list.data_type() {
        DataType::List(f) if !f.data_type().is_null() => {
            let list = list.as_list::<i32>();
            (positions(list, &index), list.values())
        }
        DataType::LargeList(f) if !f.data_type().is_null() => {
            let list = list.as_list::<i64>();
            (positions(list, &index), list.values())
        }
        _ => return Ok(None),
    };
    debug_assert_eq!(picks.len(), rows);
    Ok(Some(arrow::compute::take(values.as_ref(), &picks, None)?))
}

enum Index<'a> {
    Const(Option<i64>),
    PerRow(&'a arrow::array::Int64Array),
}

/// Position in the child values of each row's chosen element, or NULL.
fn positions<O: OffsetSizeTrait>(list: &GenericListArray<O>, index: &Index) -> UInt64Array {
    let offsets = list.offsets();
    (0..list.len())
        .map(|row| {
            let k = match index {
                Index::Const(k) => *k,
                Index::PerRow(a) => (!a.is_null(row)).then(|| a.value(row)),
            }?;
            if list.is_null(row) {
                return None;
            }
            let start = offsets[row].as_usize() as i64;
            let len = offsets[row + 1].as_usize() as i64 - start;
            let at = if k < 0 { k + len } else { k - 1 };
            (0..len).contains(&at).then(|| (start + at) as u64)
        })
        .collect()
}

/// Plans `x[i]` on a list as the fast `array_element`; everything else
/// (struct fields, maps, slices, `array_agg(…)[i]`) goes on to the
/// built-in planners.
#[derive(Debug)]
struct IndexPlanner {
    element: Arc<ScalarUDF>,
}

impl ExprPlanner for IndexPlanner {
    fn plan_field_access(
        &self,
        expr: RawFieldAccessExpr,
        schema: &DFSchema,
    ) -> DfResult<PlannerResult<RawFieldAccessExpr>> {
        let RawFieldAccessExpr { expr, field_access } = expr;
        let is_agg = matches!(&expr, Expr::AggregateFunction(AggregateFunction { .. }));
        match field_access {
            GetFieldAccess::ListIndex { key }
                if !is_agg
                    && matches!(
                        expr.get_type(schema)?,
                        DataType::List(_) | DataType::LargeList(_)
                    ) =>
            {
                Ok(PlannerResult::Planned(Expr::ScalarFunction(
                    ScalarFunction::new_udf(self.element.clone(), vec![expr, *key]),
                )))
            }
            field_access => Ok(PlannerResult::Original(RawFieldAccessExpr {
                expr,
                field_access,
            })),
        }
    }
}

/// Put the fast built-ins into a session being built (after its default
/// features): they replace the registered `cardinality` and
/// `array_element`, and a planner in front of the defaults routes `x[i]`.
pub fn install(builder: &mut SessionStateBuilder) {
    let wrap = |kind, inner: Arc<ScalarUDF>| {
        Arc::new(ScalarUDF::new_from_impl(Fast {
            kind,
            inner: inner.inner().clone(),
        }))
    };
    let card = wrap(
        Kind::Cardinality,
        datafusion::functions_nested::cardinality::cardinality_udf(),
    );
    let element = wrap(
        Kind::Element,
        datafusion::functions_nested::extract::array_element_udf(),
    );
    if let Some(fns) = builder.scalar_functions() {
        for f in [&card, &element] {
            fns.retain(|g| g.name() != f.name());
            fns.push(f.clone());
        }
    }
    let planner: Arc<dyn ExprPlanner> = Arc::new(IndexPlanner { element });
    match builder.expr_planners() {
        Some(p) => p.insert(0, planner),
        None => *builder.expr_planners() = Some(vec![planner]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int32Array, ListArray, StringArray, StructArray};
    use arrow::datatypes::{Field, Fields, Int32Type};
    use datafusion::config::ConfigOptions;

    fn call(f: &dyn ScalarUDFImpl, args: Vec<ColumnarValue>, rows: usize) -> ArrayRef {
        let arg_fields = args
            .iter()
            .map(|a| Arc::new(Field::new("a", a.data_type(), true)))
            .collect();
        let out = f
            .invoke_with_args(ScalarFunctionArgs {
                args,
                arg_fields,
                number_rows: rows,
                return_field: Arc::new(Field::new("r", DataType::Null, true)),
                config_options: Arc::new(ConfigOptions::default()),
            })
            .expect("invoke");
        out.into_array(rows).expect("array")
    }

    /// Rows: [1,2,3], NULL, [], [4], [5,6] over a struct{x int, s utf8} child.
    fn structs() -> ArrayRef {
        let fields = Fields::from(vec![
            Field::new("x", DataType::Int32, true),
            Field::new("s", DataType::Utf8, true),
        ]);
        let child = StructArray::new(
            fields.clone(),
            vec![
                Arc::new(Int32Array::from(vec![1, 2, 3, 4, 5, 6])),
                Arc::new(StringArray::from(vec![
                    Some("a"),
                    None,
                    Some("c"),
                    Some("d"),
                    Some("e"),
                    Some("f"),
                ])),
            ],
            None,
        );
        let offsets = arrow::buffer::OffsetBuffer::new(vec![0, 3, 3, 3, 4, 6].into());
        let nulls = arrow::buffer::NullBuffer::from(vec![true, false, true, true, true]);
        Arc::new(ListArray::new(
            Arc::new(Field::new("item", DataType::Struct(fields), true)),
            offsets,
            Arc::new(child),
            Some(nulls),
        ))
    }

    fn ints() -> ArrayRef {
        Arc::new(ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
            Some(vec![Some(1), None, Some(3)]),
            None,
            Some(vec![]),
            Some(vec![Some(7)]),
        ]))
    }

    fn builtin(kind: Kind) -> Arc<ScalarUDF> {
        match kind {
            Kind::Cardinality => datafusion::functions_nested::cardinality::cardinality_udf(),
            Kind::Element => datafusion::functions_nested::extract::array_element_udf(),
        }
    }

    fn fast(kind: Kind) -> Fast {
        Fast {
            kind,
            inner: builtin(kind).inner().clone(),
        }
    }

    #[test]
    fn cardinality_matches_the_builtin() {
        for list in [structs(), ints()] {
            let rows = list.len();
            let args = || vec![ColumnarValue::Array(list.clone())];
            let ours = call(&fast(Kind::Cardinality), args(), rows);
            let theirs = call(builtin(Kind::Cardinality).inner().as_ref(), args(), rows);
            assert_eq!(ours.as_ref(), theirs.as_ref());
            assert!(cardinality(&args()).is_some(), "the fast path ran");
        }
    }

    #[test]
    fn element_matches_the_builtin_for_every_index() {
        for list in [structs(), ints()] {
            let rows = list.len();
            let per_row: ArrayRef = Arc::new(arrow::array::Int64Array::from(
                (0..rows as i64).map(|r| Some(r - 2)).collect::<Vec<_>>(),
            ));
            let mut indexes: Vec<ColumnarValue> = (-4..=4)
                .map(|k| ColumnarValue::Scalar(ScalarValue::Int64(Some(k))))
                .collect();
            indexes.push(ColumnarValue::Array(per_row));
            for index in indexes {
                let args = || vec![ColumnarValue::Array(list.clone()), index.clone()];
                let ours = call(&fast(Kind::Element), args(), rows);
                let theirs = call(builtin(Kind::Element).inner().as_ref(), args(), rows);
                assert_eq!(ours.len(), theirs.len());
                assert_eq!(ours.data_type(), theirs.data_type());
                // Compare row by row: child values under a NULL row may differ.
                for r in 0..rows {
                    assert_eq!(
                        ours.is_null(r),
                        theirs.is_null(r),
                        "row {r} index {index:?}"
                    );
                    if !ours.is_null(r) {
                        assert_eq!(ours.slice(r, 1).to_data(), theirs.slice(r, 1).to_data());
                    }
                }
                assert!(element(&args(), rows).expect("element").is_some());
            }
        }
    }

    #[tokio::test]
    async fn sql_with_the_fast_builtins_keeps_names_and_results() {
        let ctx = crate::new_context();
        let batch =
            arrow::array::RecordBatch::try_from_iter(vec![("l", structs())]).expect("batch");
        ctx.register_batch("t", batch).expect("register");
        let df = ctx
            .sql("SELECT cardinality(l) AS n, l[1]['x'] AS x, l[-1], array_element(l, 2)['s'] AS s FROM t")
            .await
            .expect("plan");
        let plan = format!("{:?}", df.logical_plan());
        assert!(plan.contains("l[Int64(-1)]"), "{plan}");
        let out = arrow::compute::concat_batches(
            &df.schema().as_arrow().clone().into(),
            &df.collect().await.expect("run"),
        )
        .expect("concat");
        let n = out.column(0).as_primitive::<arrow::datatypes::UInt64Type>();
        assert_eq!(
            n.iter().collect::<Vec<_>>(),
            vec![Some(3), None, Some(0), Some(1), Some(2)]
        );
        let x = out.column(1).as_primitive::<Int32Type>();
        assert_eq!(
            x.iter().collect::<Vec<_>>(),
            vec![Some(1), None, None, Some(4), Some(5)]
        );
        let s = out.column(3).as_string::<i32>();
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            vec![None, None, None, None, Some("f")]
        );
    }
}
