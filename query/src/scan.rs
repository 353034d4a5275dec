//! The samples' table provider: Lance's, plus narrow reads of nested
//! columns that only a filter needs.
//!
//! Lance's provider takes every filter into its scan and reads each column a
//! filter names whole, before filtering. Curation filters touch one part of
//! a nested column: `captions[1]['text'] LIKE …` needs the caption texts,
//! not their `lang` and `style` (dictionary strings that Lance expands row
//! by row: a fifth of that query's time); `defect_area_ratio(defects, …)`
//! and `cardinality(defects)` need the box corners, not each box's `kind`.
//!
//! [`GranaryTable`] looks at how the pushed filters use each nested column.
//! When a column that the query does not return is used only through such
//! parts, the scan reads just those parts (Lance's nested projection: the
//! list of structs narrowed to some of its children), Lance applies the
//! filters on plain columns, and a `FilterExec` inside this scan applies the
//! others to the narrowed rows, then drops the helper columns. Every other
//! case goes to Lance's provider unchanged. Filters stay `Exact`: this scan
//! applies all of them, and the types it returns are the table's.

use std::any::Any;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, GenericListArray, OffsetSizeTrait, RecordBatch, RecordBatchOptions,
    UInt64Builder, new_empty_array,
};
use arrow::compute::{cast, concat_batches, lexsort_to_indices, take, take_record_batch};
use arrow::datatypes::{DataType, Fields, SchemaRef, UInt64Type};
use datafusion::catalog::Session as DfSession;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, ScalarValue, plan_err};
use datafusion::datasource::{TableProvider, TableType, provider_as_source, source_as_provider};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ExprSchemable, LogicalPlan, Projection, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Sort, SortExpr, TableProviderFilterPushDown, TableScan, Volatility,
    lit,
};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};
use datafusion::physical_expr::{
    Distribution, EquivalenceProperties, LexOrdering, Partitioning, create_physical_sort_exprs,
};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::filter::FilterExecBuilder;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream,
};
use futures::TryStreamExt;
use lance::Dataset;
use lance::datafusion::LanceTableProvider;
use lance::dataset::ProjectionRequest;
use lance::dataset::scanner::MaterializationStyle;
use lance::io::exec::filtered_read::{FilteredReadExec, FilteredReadThreadingMode};

use crate::udf::list_struct_fields;

/// Lance's table provider, with narrow reads of filter-only nested columns.
#[derive(Debug)]
pub struct GranaryTable {
    dataset: Arc<Dataset>,
    inner: LanceTableProvider,
}

impl GranaryTable {
    /// The provider over `dataset` at its current version (no row ids).
    pub fn new(dataset: Arc<Dataset>) -> Self {
        let inner = LanceTableProvider::new(dataset.clone(), false, false);
        GranaryTable { dataset, inner }
    }
}

/// What a filter needs of one nested column: all of it, or only some
/// children of its (list items') struct. An empty set: only the list
/// structure (`cardinality`).
#[derive(Debug, Clone, PartialEq)]
enum Need {
    Whole,
    Children(BTreeSet<String>),
}

/// The struct a nested column holds, with the path prefix Lance names its
/// children under: `col.item` for a list of structs, `col` for a struct.
fn struct_of(name: &str, t: &DataType) -> Option<(String, Fields)> {
    match t {
        DataType::List(item) | DataType::LargeList(item) => match item.data_type() {
            DataType::Struct(fields) => Some((format!("{name}.{}", item.name()), fields.clone())),
            _ => None,
        },
        DataType::Struct(fields) => Some((name.to_string(), fields.clone())),
        _ => None,
    }
}

fn is_nested(t: &DataType) -> bool {
    t.is_nested() || matches!(t, DataType::Dictionary(_, v) if v.is_nested())
}

fn literal_name(e: &Expr) -> Option<&str> {
    match e {
        Expr::Literal(ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)), _) => {
            Some(s.as_str())
        }
        _ => None,
    }
}

/// The boxes `defect_area_ratio` reads (udf.rs looks them up by name).
const BOX_CORNERS: [&str; 4] = ["x0", "y0", "x1", "y1"];

struct Usage<'a> {
    schema: &'a SchemaRef,
    needs: HashMap<String, Need>,
}

impl Usage<'_> {
    /// The nested column `e` names, if it is a plain column reference to one
    /// whose struct can be narrowed.
    fn nested_column(&self, e: &Expr) -> Option<(String, Fields)> {
        let Expr::Column(c) = e else { return None };
        let f = self.schema.field_with_name(&c.name).ok()?;
        struct_of(&c.name, f.data_type()).map(|(_, fields)| (c.name.clone(), fields))
    }

    fn whole(&mut self, name: &str) {
        self.needs.insert(name.to_string(), Need::Whole);
    }

    fn children<'n>(
        &mut self,
        name: &str,
        fields: &Fields,
        want: impl IntoIterator<Item = &'n str>,
    ) {
        let mut add = BTreeSet::new();
        for w in want {
            if fields.find(w).is_none() {
                // Let the function report the missing field as it would.
                return self.whole(name);
            }
            add.insert(w.to_string());
        }
        match self
            .needs
            .entry(name.to_string())
            .or_insert_with(|| Need::Children(BTreeSet::new()))
        {
            Need::Whole => {}
            Need::Children(set) => set.extend(add),
        }
    }

    fn visit(&mut self, e: &Expr) -> Result<()> {
        if let Expr::ScalarFunction(f) = e {
            let args = &f.args;
            match (f.name(), args.first()) {
                // `s['a']`, `list[i]['a']`
                ("get_field", Some(target)) if args.len() >= 2 => {
                    if let Some(child) = literal_name(&args[1]) {
                        if let Some((col, fields)) = self.nested_column(target)
                            && matches!(
                                self.schema.field_with_name(&col).map(|f| f.data_type()),
                                Ok(DataType::Struct(_))
                            )
                        {
                            self.children(&col, &fields, [child]);
                            return Ok(());
                        }
                        if let Expr::ScalarFunction(g) = target
                            && g.name() == "array_element"
                            && g.args.len() == 2
                            && let Some((col, fields)) = self.nested_column(&g.args[0])
                        {
                            self.children(&col, &fields, [child]);
                            return self.visit(&g.args[1]);
                        }
                    }
                }
                ("cardinality", Some(target)) if args.len() == 1 => {
                    if let Some((col, fields)) = self.nested_column(target) {
                        self.children(&col, &fields, []);
                        return Ok(());
                    }
                }
                ("defect_area_ratio", Some(target)) => {
                    if let Some((col, fields)) = self.nested_column(target) {
                        self.children(&col, &fields, BOX_CORNERS);
                        for a in &args[1..] {
                            self.visit(a)?;
                        }
                        return Ok(());
                    }
                }
                _ => {}
            }
        }
        if let Expr::Column(c) = e {
            if self
                .schema
                .field_with_name(&c.name)
                .is_ok_and(|f| is_nested(f.data_type()))
            {
                self.whole(&c.name);
            }
            return Ok(());
        }
        e.apply_children(|c| {
            self.visit(c)?;
            Ok(TreeNodeRecursion::Continue)
        })?;
        Ok(())
    }
}

/// The child to read when a filter needs only a list's structure: the
/// first fixed-width one, else the first.
fn cheapest_child(fields: &Fields) -> Option<String> {
    fields
        .iter()
        .find(|f| f.data_type().is_primitive())
        .or_else(|| fields.iter().next())
        .map(|f| f.name().clone())
}

/// The table columns a scan returns: its projection, or all of them.
fn column_indices(projection: Option<&Vec<usize>>, schema: &SchemaRef) -> Vec<usize> {
    match projection {
        Some(p) => p.clone(),
        None => (0..schema.fields().len()).collect(),
    }
}

fn unqualified(e: Expr) -> Result<Expr> {
    e.transform(|e| match e {
        Expr::Column(c) if c.relation.is_some() => Ok(Transformed::yes(Expr::Column(
            Column::new_unqualified(c.name),
        ))),
        e => Ok(Transformed::no(e)),
    })
    .map(|t| t.data)
}

#[async_trait::async_trait]
impl TableProvider for GranaryTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn DfSession,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let plan = match self.narrow_scan(state, projection, filters, limit).await? {
            Some(plan) => plan,
            None => self.inner.scan(state, projection, filters, limit).await?,
        };
        match limit {
            // A limited scan keeps its one ordered stream: `LIMIT 10`
            // returns the first rows.
            Some(_) => Ok(plan),
            None => partitioned(plan, state.config().target_partitions()),
        }
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }
}

/// `plan` with its Lance reads split into `n` output partitions.
///
/// Lance's scan is one stream that decodes on a few spawned tasks; what
/// runs above it (filters, the narrowed scan's nested filter, partial
/// aggregates, top-k heaps) then runs on one core. With `n` partitions the
/// read hands its fragments' batches out to `n` streams (Lance's
/// `MultiplePartitions` mode: they share one task queue, so a slow fragment
/// does not leave a core idle), and DataFusion runs each stream's operators
/// on its own core. Batches then arrive in no fixed order, which is why a
/// scan with a pushed limit stays whole.
fn partitioned(plan: Arc<dyn ExecutionPlan>, n: usize) -> Result<Arc<dyn ExecutionPlan>> {
    if n < 2 {
        return Ok(plan);
    }
    plan.transform_up(|p| {
        let Some(read) = p.downcast_ref::<FilteredReadExec>() else {
            return Ok(Transformed::no(p));
        };
        let o = read.options();
        let whole = matches!(
            o.threading_mode,
            FilteredReadThreadingMode::OnePartitionMultipleThreads(_)
        ) && o.scan_range_before_filter.is_none()
            && o.scan_range_after_filter.is_none()
            && read.row_stream_input().is_none();
        if !whole {
            return Ok(Transformed::no(p));
        }
        let options = o
            .clone()
            .with_threading_mode(FilteredReadThreadingMode::MultiplePartitions(n));
        let split =
            FilteredReadExec::try_new(read.dataset().clone(), options, read.index_input().cloned())
                .map_err(DataFusionError::from)?;
        Ok(Transformed::yes(Arc::new(split) as Arc<dyn ExecutionPlan>))
    })
    .map(|t| t.data)
}

impl GranaryTable {
    /// The narrowed scan, or `None` when nothing can be narrowed.
    async fn narrow_scan(
        &self,
        state: &dyn DfSession,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let schema = self.inner.schema();
        let wanted: Vec<usize> = column_indices(projection, &schema);
        let mut plain = Vec::new();
        let mut nested = Vec::new();
        for f in filters {
            let f = unqualified(f.clone())?;
            let touches_nested = f.column_refs().iter().any(|c| {
                schema
                    .field_with_name(&c.name)
                    .is_ok_and(|f| is_nested(f.data_type()))
            });
            if touches_nested {
                nested.push(f);
            } else {
                plain.push(f);
            }
        }
        if nested.is_empty() {
            return Ok(None);
        }
        let mut usage = Usage {
            schema: &schema,
            needs: HashMap::new(),
        };
        for f in &nested {
            usage.visit(f)?;
        }
        for &i in &wanted {
            usage.whole(schema.field(i).name());
        }
        // Columns the query returns are read whole; the rest narrowed.
        let mut paths: Vec<String> = wanted
            .iter()
            .map(|&i| schema.field(i).name().clone())
            .collect();
        let mut narrowed = false;
        for (col, need) in &usage.needs {
            let Need::Children(set) = need else { continue };
            let Ok(field) = schema.field_with_name(col) else {
                return Ok(None);
            };
            let Some((prefix, fields)) = struct_of(col, field.data_type()) else {
                return Ok(None);
            };
            let mut set = set.clone();
            if set.is_empty() {
                set.extend(cheapest_child(&fields));
            }
            if set.len() == fields.len() || set.iter().chain([col]).any(|n| n.contains(['.', '`']))
            {
                paths.push(col.clone());
                continue;
            }
            narrowed = true;
            paths.extend(set.iter().map(|c| format!("{prefix}.{c}")));
        }
        if !narrowed {
            return Ok(None);
        }
        // Every other column the nested filters read (plain ones, nested
        // ones needed whole), when the query does not return it. A narrowed
        // column is not added whole again.
        for c in nested.iter().flat_map(|f| f.column_refs()) {
            let narrowed_here = matches!(usage.needs.get(&c.name), Some(Need::Children(_)));
            if !narrowed_here && !paths.contains(&c.name) {
                paths.push(c.name.clone());
            }
        }
        // Blob columns keep Lance's own handling.
        let blob = |p: &String| {
            let top = p.split('.').next().unwrap_or(p);
            self.dataset
                .schema()
                .field(top)
                .is_some_and(|f| f.is_blob())
        };
        if paths.iter().any(blob) {
            return Ok(None);
        }
        let lance_schema = self
            .dataset
            .schema()
            .project(&paths)
            .map_err(DataFusionError::from)?;
        let mut scan = self.dataset.scan();
        scan.project_with_schema(&lance_schema)
            .map_err(DataFusionError::from)?;
        if let Some(f) = conjunction(plain) {
            scan.filter_expr(f);
            // Read the narrowed columns in the same pass, not by taking the
            // rows that passed: on the 100k-row bench granary, taking 41k
            // caption texts row by row (24k ranges) was slower than the whole
            // narrowed scan.
            scan.materialization_style(MaterializationStyle::AllEarly);
        }
        let plan = scan.create_plan().await.map_err(DataFusionError::from)?;
        let out = plan.schema();
        // The columns returned must come back exactly as the table types
        // them; otherwise leave the scan to Lance's provider.
        let mut keep = Vec::with_capacity(wanted.len());
        for &i in &wanted {
            let f = schema.field(i);
            match out.index_of(f.name()) {
                Ok(j) if out.field(j).data_type() == f.data_type() => keep.push(j),
                _ => return Ok(None),
            }
        }
        let df_schema = DFSchema::try_from(out.as_ref().clone())?;
        let Some(predicate) = conjunction(nested) else {
            return Ok(None);
        };
        let predicate = element_fields(predicate, &df_schema)?;
        let predicate = state.create_physical_expr(predicate, &df_schema)?;
        let filter = FilterExecBuilder::new(predicate, plan)
            .apply_projection(Some(keep))?
            .with_fetch(limit)
            .build()?;
        Ok(Some(Arc::new(filter)))
    }
}

/// `list[k]['f']` for a literal `k`, as one `take` of the field's column.
///
/// DataFusion evaluates `get_field(array_element(list, k), 'f')` by copying
/// each row's whole struct through `MutableArrayData`, then picking the
/// field: on the bench's caption LIKE that copy cost more than the LIKE.
/// The semantics are `array_element`'s: `k` counts from 1, a negative `k`
/// from the end, and a NULL list or an index out of range gives NULL; the
/// field's own nulls are kept (`get_field` does not apply the struct's).
#[derive(Debug, PartialEq, Eq, Hash)]
struct ElementField {
    index: i64,
    field: String,
    signature: Signature,
}

impl ScalarUDFImpl for ElementField {
    fn name(&self) -> &str {
        "element_field"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, t: &[DataType]) -> Result<DataType> {
        let Some(fields) = list_struct_fields(&t[0]) else {
            return plan_err!("element_field: {} is not a list of structs", t[0]);
        };
        match fields.find(&self.field) {
            Some((_, f)) => Ok(f.data_type().clone()),
            None => plan_err!("element_field: no field {} in {}", self.field, t[0]),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let list = args.args[0].to_array(args.number_rows)?;
        let out = match list.data_type() {
            DataType::List(_) => element_field(list.as_list::<i32>(), self.index, &self.field)?,
            DataType::LargeList(_) => {
                element_field(list.as_list::<i64>(), self.index, &self.field)?
            }
            other => return plan_err!("element_field: {other} is not a list"),
        };
        Ok(ColumnarValue::Array(out))
    }
}

fn element_field<O: OffsetSizeTrait>(
    list: &GenericListArray<O>,
    index: i64,
    field: &str,
) -> Result<ArrayRef> {
    let Some(items) = list.values().as_struct_opt() else {
        return plan_err!("element_field: the list does not hold structs");
    };
    let Some(child) = items.column_by_name(field) else {
        return plan_err!("element_field: no field {field}");
    };
    let mut at = UInt64Builder::with_capacity(list.len());
    for (row, w) in list.offsets().windows(2).enumerate() {
        let (start, len) = (w[0].as_usize() as i64, (w[1] - w[0]).as_usize() as i64);
        let k = if index < 0 { index + len } else { index - 1 };
        if list.is_null(row) || k < 0 || k >= len {
            at.append_null();
        } else {
            at.append_value((start + k) as u64);
        }
    }
    Ok(take(child.as_ref(), &at.finish(), None)?)
}

/// Rewrites `get_field(array_element(list, k), 'f')`, with `k` a literal and
/// `list` a list of structs, into [`ElementField`].
fn element_fields(e: Expr, schema: &DFSchema) -> Result<Expr> {
    e.transform_up(|e| {
        let Expr::ScalarFunction(f) = &e else {
            return Ok(Transformed::no(e));
        };
        let (Some(field), [target, _]) = (f.args.get(1).and_then(literal_name), f.args.as_slice())
        else {
            return Ok(Transformed::no(e));
        };
        let Expr::ScalarFunction(g) = target else {
            return Ok(Transformed::no(e));
        };
        let [list, Expr::Literal(k, _)] = g.args.as_slice() else {
            return Ok(Transformed::no(e));
        };
        if f.name() != "get_field" || g.name() != "array_element" || k.is_null() {
            return Ok(Transformed::no(e));
        }
        let Ok(ScalarValue::Int64(Some(index))) = k.cast_to(&DataType::Int64) else {
            return Ok(Transformed::no(e));
        };
        let list_type = list.get_type(schema)?;
        if list_struct_fields(&list_type).is_none_or(|fs| fs.find(field).is_none()) {
            return Ok(Transformed::no(e));
        }
        let udf = ElementField {
            index,
            field: field.to_string(),
            signature: Signature::any(3, Volatility::Immutable),
        };
        let args = vec![list.clone(), lit(index), lit(field)];
        Ok(Transformed::yes(Expr::ScalarFunction(
            ScalarFunction::new_udf(Arc::new(ScalarUDF::new_from_impl(udf)), args),
        )))
    })
    .map(|t| t.data)
}

/// Top-k queries with late materialisation.
///
/// `ORDER BY aesthetic DESC LIMIT 100` over `id, aesthetic` reads every
/// row's `id` (a string) to keep a hundred of them. [`LateTopK`] rewrites
/// such a scan (a `Sort` with a fetch of at most [`LATE_TOPK_MAX`] rows,
/// over a [`GranaryTable`] or a projection that only picks its columns,
/// returning wide columns that are not sort keys) into [`TopKScan`]: the
/// scan reads the sort keys, the other
/// fixed-width columns and Lance's row ids, keeps the top k, and only then
/// takes the wide columns of those k rows by row id. The `Sort` above
/// stays, so the result is what it was.
#[derive(Debug, Default)]
pub struct LateTopK;

/// The largest fetch the rewrite applies to: beyond it, taking rows one by
/// one by id stops being cheaper than reading the column.
pub const LATE_TOPK_MAX: usize = 4096;

/// Read first: fixed-width columns (cheap to decode for every row).
fn is_fixed_width(t: &DataType) -> bool {
    t.is_primitive() || matches!(t, DataType::Boolean | DataType::Null)
}

impl OptimizerRule for LateTopK {
    fn name(&self) -> &str {
        "granary_late_topk"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::TopDown)
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Sort(sort) = &plan else {
            return Ok(Transformed::no(plan));
        };
        let Some(fetch) = sort.fetch.filter(|&f| f <= LATE_TOPK_MAX) else {
            return Ok(Transformed::no(plan));
        };
        // The scan, under at most a projection that only picks columns.
        let (scan, pick) = match sort.input.as_ref() {
            LogicalPlan::TableScan(scan) => (scan, None),
            LogicalPlan::Projection(p) if p.expr.iter().all(|e| matches!(e, Expr::Column(_))) => {
                match p.input.as_ref() {
                    LogicalPlan::TableScan(scan) => (scan, Some(p)),
                    _ => return Ok(Transformed::no(plan)),
                }
            }
            _ => return Ok(Transformed::no(plan)),
        };
        if scan.fetch.is_some() {
            return Ok(Transformed::no(plan));
        }
        let Ok(provider) = source_as_provider(&scan.source) else {
            return Ok(Transformed::no(plan));
        };
        let Some(table) = (provider.as_ref() as &dyn Any).downcast_ref::<GranaryTable>() else {
            return Ok(Transformed::no(plan));
        };
        let schema = table.schema();
        let projected: Vec<usize> = column_indices(scan.projection.as_ref(), &schema);
        let mut order = Vec::with_capacity(sort.expr.len());
        let mut keys = BTreeSet::new();
        for s in &sort.expr {
            let expr = unqualified(s.expr.clone())?;
            keys.extend(expr.column_refs().into_iter().map(|c| c.name.clone()));
            order.push(SortExpr { expr, ..s.clone() });
        }
        let projected_names: BTreeSet<&String> =
            projected.iter().map(|&i| schema.field(i).name()).collect();
        let late: Vec<String> = projected
            .iter()
            .map(|&i| schema.field(i))
            .filter(|f| !is_fixed_width(f.data_type()) && !keys.contains(f.name()))
            .map(|f| f.name().clone())
            .collect();
        let blob = |n: &String| table.dataset.schema().field(n).is_none_or(|f| f.is_blob());
        if late.is_empty()
            || keys.iter().any(|k| !projected_names.contains(k))
            || late.iter().any(blob)
        {
            return Ok(Transformed::no(plan));
        }
        let topk = TopKScan {
            dataset: table.dataset.clone(),
            schema,
            order,
            fetch,
            late,
        };
        let scan = LogicalPlan::TableScan(TableScan {
            source: provider_as_source(Arc::new(topk)),
            ..scan.clone()
        });
        let input = match pick {
            None => scan,
            Some(p) => LogicalPlan::Projection(Projection::try_new_with_schema(
                p.expr.clone(),
                Arc::new(scan),
                p.schema.clone(),
            )?),
        };
        Ok(Transformed::yes(LogicalPlan::Sort(Sort {
            input: Arc::new(input),
            ..sort.clone()
        })))
    }
}

/// A samples scan that returns only the top `fetch` rows by `order`,
/// reading the `late` columns for those rows alone (see [`LateTopK`]).
#[derive(Debug)]
pub struct TopKScan {
    dataset: Arc<Dataset>,
    schema: SchemaRef,
    order: Vec<SortExpr>,
    fetch: usize,
    late: Vec<String>,
}

#[async_trait::async_trait]
impl TableProvider for TopKScan {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn DfSession,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let wanted: Vec<usize> = column_indices(projection, &self.schema);
        let early: Vec<String> = wanted
            .iter()
            .map(|&i| self.schema.field(i).name())
            .filter(|n| !self.late.contains(n))
            .cloned()
            .collect();
        let mut scan = self.dataset.scan();
        scan.with_row_id();
        scan.project(&early).map_err(DataFusionError::from)?;
        let filters = filters
            .iter()
            .map(|f| unqualified(f.clone()))
            .collect::<Result<Vec<_>>>()?;
        if let Some(f) = conjunction(filters) {
            scan.filter_expr(f);
        }
        let input = scan.create_plan().await.map_err(DataFusionError::from)?;
        let input = partitioned(input, state.config().target_partitions())?;
        let df_schema = DFSchema::try_from(input.schema().as_ref().clone())?;
        let order = create_physical_sort_exprs(&self.order, &df_schema, state.execution_props())?;
        let Some(order) = LexOrdering::new(order) else {
            return Err(DataFusionError::Internal("top-k without sort keys".into()));
        };
        let fetch = limit.map_or(self.fetch, |l| l.min(self.fetch));
        // A top-k heap per partition; the late take keeps the k best of
        // their rows before taking.
        let top: Arc<dyn ExecutionPlan> = Arc::new(
            SortExec::new(order.clone(), input)
                .with_fetch(Some(fetch))
                .with_preserve_partitioning(true),
        );
        let top_schema = top.schema();
        let row_id = top_schema.index_of(lance::dataset::ROW_ID)?;
        let mut columns = Vec::with_capacity(wanted.len());
        for &i in &wanted {
            let name = self.schema.field(i).name();
            columns.push(match self.late.iter().position(|l| l == name) {
                Some(j) => Source::Late(j),
                None => Source::Early(top_schema.index_of(name)?),
            });
        }
        let schema = Arc::new(self.schema.project(&wanted)?);
        Ok(Arc::new(LateTake::new(
            top,
            order,
            fetch,
            self.dataset.clone(),
            self.late.clone(),
            row_id,
            columns,
            schema,
        )))
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Exact; filters.len()])
    }
}

/// Where an output column of [`LateTake`] comes from.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// This column of the input.
    Early(usize),
    /// This one of the taken (late) columns.
    Late(usize),
}

/// Takes the `late` columns of its input's rows (at most a top-k's worth)
/// by Lance row id, and returns the input's rows with them, in order.
#[derive(Debug)]
struct LateTake {
    input: Arc<dyn ExecutionPlan>,
    /// The top-k's order and k: the input may hold each partition's top k.
    order: LexOrdering,
    fetch: usize,
    dataset: Arc<Dataset>,
    late: Vec<String>,
    row_id: usize,
    columns: Vec<Source>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl LateTake {
    #[allow(clippy::too_many_arguments)]
    fn new(
        input: Arc<dyn ExecutionPlan>,
        order: LexOrdering,
        fetch: usize,
        dataset: Arc<Dataset>,
        late: Vec<String>,
        row_id: usize,
        columns: Vec<Source>,
        schema: SchemaRef,
    ) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        LateTake {
            input,
            order,
            fetch,
            dataset,
            late,
            row_id,
            columns,
            schema,
            properties,
        }
    }
}

impl DisplayAs for LateTake {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "GranaryLateTake: columns=[{}]", self.late.join(", "))
    }
}

impl ExecutionPlan for LateTake {
    fn name(&self) -> &str {
        "GranaryLateTake"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::SinglePartition]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let Some(input) = children.pop().filter(|_| children.is_empty()) else {
            return Err(DataFusionError::Internal(
                "GranaryLateTake takes one child".into(),
            ));
        };
        Ok(Arc::new(LateTake::new(
            input,
            self.order.clone(),
            self.fetch,
            self.dataset.clone(),
            self.late.clone(),
            self.row_id,
            self.columns.clone(),
            self.schema.clone(),
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "GranaryLateTake has one partition, not {partition}"
            )));
        }
        let input_schema = self.input.schema();
        let input = self.input.execute(0, context)?;
        let (order, fetch) = (self.order.clone(), self.fetch);
        let dataset = self.dataset.clone();
        let late = self.late.clone();
        let row_id = self.row_id;
        let columns = self.columns.clone();
        let schema = self.schema.clone();
        let out = schema.clone();
        let batch = futures::stream::once(async move {
            let batches: Vec<RecordBatch> = input.try_collect().await?;
            let mut top = concat_batches(&input_schema, &batches)?;
            // Each partition's top k came in: keep the k best of them.
            if top.num_rows() > fetch {
                let keys = order
                    .iter()
                    .map(|e| e.evaluate_to_sort_column(&top))
                    .collect::<Result<Vec<_>>>()?;
                let best = lexsort_to_indices(&keys, Some(fetch))?;
                top = take_record_batch(&top, &best)?;
            }
            let ids = top
                .column(row_id)
                .as_primitive::<UInt64Type>()
                .values()
                .to_vec();
            let taken = if ids.is_empty() {
                None
            } else {
                let projection = dataset
                    .schema()
                    .project(&late)
                    .map_err(DataFusionError::from)?;
                let taken = dataset
                    .take_rows(&ids, ProjectionRequest::from_schema(projection))
                    .await
                    .map_err(DataFusionError::from)?;
                Some(taken)
            };
            let mut arrays = Vec::with_capacity(columns.len());
            for (c, field) in columns.iter().zip(out.fields()) {
                let a = match (c, &taken) {
                    (Source::Early(i), _) => top.column(*i).clone(),
                    (Source::Late(j), Some(t)) => {
                        let a = t.column_by_name(&late[*j]).ok_or_else(|| {
                            DataFusionError::Internal(format!("take lost column {}", late[*j]))
                        })?;
                        a.clone()
                    }
                    (Source::Late(_), None) => new_empty_array(field.data_type()),
                };
                arrays.push(if a.data_type() == field.data_type() {
                    a
                } else {
                    cast(&a, field.data_type())?
                });
            }
            let options = RecordBatchOptions::new().with_row_count(Some(top.num_rows()));
            Ok(RecordBatch::try_new_with_options(out, arrays, &options)?)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batch)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kmeans::SplitMix64;
    use arrow::util::pretty::pretty_format_batches;
    use datafusion::prelude::SessionContext;
    use granary_storage::Granary;
    use granary_storage::ingest::{Sample, append_samples};
    use granary_storage::media::{Format, MediaInfo};
    use granary_storage::sidecar::{Caption, Defect, Sidecar};

    const COLOURS: [&str; 4] = ["red", "blue", "green", "white"];
    const SHAPES: [&str; 3] = ["star", "circle", "square"];

    fn sample(rng: &mut SplitMix64, i: usize) -> Sample {
        let colour = COLOURS[rng.below(COLOURS.len())];
        let shape = SHAPES[rng.below(SHAPES.len())];
        let defects = (0..rng.below(3))
            .map(|k| {
                let x0 = rng.below(40) as i32;
                let y0 = rng.below(40) as i32;
                Defect {
                    x0,
                    y0,
                    x1: x0 + 4 + rng.below(30) as i32,
                    y1: y0 + 4 + rng.below(30) as i32,
                    kind: if k == 0 { "watermark" } else { "logo" }.into(),
                }
            })
            .collect();
        Sample {
            id: format!("{i:08x}"),
            key: format!("k/{i:05}.jpg"),
            content_hash: format!("{:016x}", rng.next_u64()),
            bytes: vec![i as u8; 16 + i % 7],
            info: MediaInfo {
                format: Format::Jpeg,
                width: 64 + 16 * rng.below(3) as u32,
                height: 64,
                frames: None,
                fps: None,
                duration_s: None,
            },
            source: None,
            sidecar: Sidecar {
                captions: vec![
                    Caption {
                        text: format!("a {colour} {shape}"),
                        lang: "en".into(),
                        style: "short".into(),
                    },
                    Caption {
                        text: format!("{colour}的{shape}"),
                        lang: "zh".into(),
                        style: if i.is_multiple_of(2) { "short" } else { "long" }.into(),
                    },
                ],
                // Distinct scores, so that every ORDER BY has one answer.
                aesthetic: Some(i as f32 * 0.01 + (rng.below(500) as f32) * 10.0),
                ocr_ratio: Some(0.0),
                motion: None,
                source: None,
                defects,
                embedding: None,
            },
        }
    }

    /// Three fragments of samples, and a reference context over the same
    /// table through Lance's own provider (no narrowing, no late take).
    async fn granary() -> (tempfile::TempDir, crate::Session, SessionContext) {
        let dir = tempfile::tempdir().unwrap();
        let g = Granary::init(dir.path(), 8).await.unwrap();
        let mut rng = SplitMix64::new(7);
        for part in 0..3 {
            let rows: Vec<Sample> = (0..200).map(|k| sample(&mut rng, part * 200 + k)).collect();
            append_samples(&g, &rows).await.unwrap();
        }
        let session = crate::Session::open(&g).await.unwrap();
        let reference = SessionContext::new();
        crate::udf::register(&reference);
        let ds = g.table(granary_storage::schema::SAMPLES).await.unwrap();
        reference
            .register_table(
                "samples",
                Arc::new(LanceTableProvider::new(Arc::new(ds), false, false)),
            )
            .unwrap();
        (dir, session, reference)
    }

    /// The result as printed lines (sorted when the query has no order),
    /// and its row count.
    async fn rows(ctx: &SessionContext, sql: &str, sorted: bool) -> (Vec<String>, usize) {
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let n = batches.iter().map(RecordBatch::num_rows).sum();
        let text = pretty_format_batches(&batches).unwrap().to_string();
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        if sorted {
            lines.sort();
        }
        (lines, n)
    }

    async fn explain(ctx: &SessionContext, sql: &str) -> String {
        let batches = ctx
            .sql(&format!("EXPLAIN {sql}"))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        pretty_format_batches(&batches).unwrap().to_string()
    }

    /// Each query gives what Lance's provider gives, and takes the path
    /// named beside it (`None`: neither narrowing nor a late take).
    #[tokio::test]
    async fn narrow_scans_and_late_takes_give_the_same_rows() {
        let (_dir, session, reference) = granary().await;
        let narrowed = Some("FilterExec");
        let late = Some("GranaryLateTake");
        let cases: [(&str, bool, Option<&str>); 17] = [
            (
                "SELECT id FROM samples WHERE defects[-1]['kind'] = 'logo'",
                true,
                narrowed,
            ),
            (
                "SELECT count(*) AS n FROM samples WHERE defects[2]['x0'] IS NULL",
                false,
                narrowed,
            ),
            (
                "SELECT count(*) AS n FROM samples WHERE defects[0]['y1'] IS NULL AND width > 64",
                false,
                narrowed,
            ),
            (
                "SELECT count(*) AS n FROM samples WHERE aesthetic > 2000 AND captions[1]['text'] LIKE '%red star%'",
                false,
                narrowed,
            ),
            (
                "SELECT id FROM samples WHERE captions[1]['text'] LIKE '%red%'",
                true,
                narrowed,
            ),
            (
                "SELECT id, captions FROM samples WHERE captions[2]['style'] = 'long' AND aesthetic < 1000",
                true,
                None,
            ),
            (
                "SELECT count(*) AS n FROM samples WHERE cardinality(defects) > 0 AND defect_area_ratio(defects, width, height) < 0.2",
                false,
                narrowed,
            ),
            (
                "SELECT id, aesthetic FROM samples WHERE aesthetic > 4000 OR captions[1]['text'] LIKE '%blue%'",
                true,
                narrowed,
            ),
            (
                "SELECT count(*) AS n FROM (SELECT id FROM samples WHERE captions[1]['text'] LIKE '%a%' LIMIT 5)",
                false,
                narrowed,
            ),
            (
                "SELECT id, width FROM samples WHERE defects[1]['kind'] = 'watermark' AND defects[2]['x0'] > 10",
                true,
                narrowed,
            ),
            (
                "SELECT id, key, aesthetic, captions FROM samples ORDER BY aesthetic DESC LIMIT 10",
                false,
                late,
            ),
            (
                "SELECT id, captions FROM samples WHERE aesthetic > 1000 ORDER BY aesthetic LIMIT 5 OFFSET 2",
                false,
                late,
            ),
            (
                "SELECT key, aesthetic FROM samples WHERE captions[1]['text'] LIKE '%red%' ORDER BY aesthetic DESC LIMIT 3",
                false,
                late,
            ),
            (
                "SELECT id FROM samples WHERE aesthetic > 100000 ORDER BY aesthetic LIMIT 3",
                false,
                late,
            ),
            (
                "SELECT id, aesthetic FROM samples ORDER BY id DESC LIMIT 4",
                false,
                None,
            ),
            (
                "SELECT id, key, width, height, size_bytes FROM samples ORDER BY aesthetic, width LIMIT 4",
                false,
                late,
            ),
            (
                "SELECT upper(id) AS u, aesthetic FROM samples ORDER BY aesthetic DESC LIMIT 4",
                false,
                None,
            ),
        ];
        for (sql, sorted, path) in cases {
            let (ours, _) = rows(session.context(), sql, sorted).await;
            let (want, n) = rows(&reference, sql, sorted).await;
            assert_eq!(ours, want, "{sql}");
            // Only the query asking for scores above every score is empty.
            assert_eq!(n == 0, sql.contains("100000"), "{sql}: {n} rows");
            let plan = explain(session.context(), sql).await;
            let uses = |n: &str| plan.contains(n);
            match path {
                Some(node) => {
                    assert!(uses(node), "{sql}: no {node}:\n{plan}");
                    // `list[k]['f']` in a narrowed filter is one take.
                    if node == "FilterExec" && sql.contains("]['") {
                        assert!(uses("element_field"), "{sql}:\n{plan}");
                    }
                }
                None => assert!(
                    !uses("GranaryLateTake") && !uses("FilterExec"),
                    "{sql}: rewritten:\n{plan}"
                ),
            }
        }
    }

    /// `element_field` against DataFusion's `l[k]['a']` on lists with a
    /// NULL list, an empty one and NULL field values, for every `k` from
    /// past the front to past the end.
    #[tokio::test]
    async fn element_field_is_array_element_then_get_field() {
        use arrow::array::{Int32Array, ListArray, StructArray};
        use arrow::buffer::{NullBuffer, OffsetBuffer};
        use arrow::datatypes::{Field, Schema};
        use datafusion::datasource::MemTable;

        let a = Field::new("a", DataType::Int32, true);
        let b = Field::new("b", DataType::Int32, true);
        let items = StructArray::new(
            vec![a, b].into(),
            vec![
                Arc::new(Int32Array::from(vec![
                    Some(1),
                    None,
                    Some(3),
                    Some(4),
                    Some(5),
                    Some(6),
                ])),
                Arc::new(Int32Array::from(vec![10, 20, 30, 40, 50, 60])),
            ],
            None,
        );
        let item = Arc::new(Field::new("item", items.data_type().clone(), true));
        // [1, NULL, 3], NULL, [], [4], [5, 6]
        let list = ListArray::new(
            item.clone(),
            OffsetBuffer::from_lengths([3, 1, 0, 1, 1]),
            Arc::new(items),
            Some(NullBuffer::from(vec![true, false, true, true, true])),
        );
        let schema = Arc::new(Schema::new(vec![Field::new(
            "l",
            list.data_type().clone(),
            true,
        )]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(list.clone())]).unwrap();
        let ctx = SessionContext::new();
        let table = MemTable::try_new(schema, vec![vec![batch]]).unwrap();
        ctx.register_table("t", Arc::new(table)).unwrap();
        for k in -4i64..=4 {
            let want = ctx
                .sql(&format!("SELECT l[{k}]['a'] AS v FROM t"))
                .await
                .unwrap()
                .collect()
                .await
                .unwrap();
            let got = element_field(&list, k, "a").unwrap();
            assert_eq!(got.as_ref(), want[0].column(0).as_ref(), "k = {k}");
        }
    }

    /// A scan without a limit reads in the session's partitions and loses
    /// no row; a limited one stays one ordered stream.
    #[tokio::test]
    async fn unlimited_scans_split_into_the_sessions_partitions() {
        use datafusion::prelude::SessionConfig;

        let (_dir, session, _) = granary().await;
        let ds = session.context().table_provider("samples").await.unwrap();
        let config = SessionConfig::new().with_target_partitions(3);
        let ctx = SessionContext::new_with_config(config);
        let state = ctx.state();
        let schema = ds.schema();
        let cols = vec![
            schema.index_of("id").unwrap(),
            schema.index_of("aesthetic").unwrap(),
        ];
        let filter = datafusion::prelude::col("aesthetic").gt(lit(100.0f32));
        for (filters, limit, parts) in [
            (vec![], None, 3),
            (vec![filter.clone()], None, 3),
            (vec![filter], Some(5), 1),
        ] {
            let plan = ds.scan(&state, Some(&cols), &filters, limit).await.unwrap();
            assert_eq!(plan.properties().partitioning.partition_count(), parts);
            let got = datafusion::physical_plan::collect(plan, ctx.task_ctx())
                .await
                .unwrap();
            let n: usize = got.iter().map(|b| b.num_rows()).sum();
            let want = match (filters.is_empty(), limit) {
                (true, _) => 600,
                (false, Some(l)) => l,
                (false, None) => {
                    let sql = "SELECT id FROM samples WHERE aesthetic > 100";
                    rows(session.context(), sql, true).await.1
                }
            };
            assert_eq!(n, want, "{filters:?} {limit:?}");
        }
    }
}
