//! Formatting Arrow results for people and programs: an aligned text table,
//! CSV (RFC 4180 quoting; nested values rendered as text), and JSON Lines
//! (one object per row, nested values as JSON; documented in `docs/cli.md`),
//! and Parquet (the Arrow schema as is, zstd-compressed).

use std::io::Write;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::util::display::{ArrayFormatter, FormatOptions};

/// Output format of data-producing commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
    Parquet,
}

/// Errors while writing output.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    #[error(transparent)]
    Parquet(#[from] parquet::errors::ParquetError),
}

/// Longest cell shown in table output, in characters.
const MAX_CELL: usize = 60;

/// Render every cell of the batches as text, NULL as `null`.
fn cells(batches: &[RecordBatch], null: &str) -> Result<Vec<Vec<String>>, Error> {
    let options = FormatOptions::default().with_null(null);
    let mut rows = Vec::new();
    for batch in batches {
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()?;
        for i in 0..batch.num_rows() {
            rows.push(formatters.iter().map(|f| f.value(i).to_string()).collect());
        }
    }
    Ok(rows)
}

/// Write the result in `format`.
pub fn write(
    out: &mut dyn Write,
    format: Format,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<(), Error> {
    match format {
        Format::Table => table(out, schema, batches),
        Format::Csv => csv(out, schema, batches),
        Format::Json => json(out, batches),
        Format::Parquet => parquet_file(out, schema, batches),
    }
}

fn parquet_file(
    out: &mut dyn Write,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<(), Error> {
    // The writer needs `Send`; results are already in memory, so buffer.
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
        .build();
    let mut buf = Vec::new();
    let mut writer = parquet::arrow::ArrowWriter::try_new(&mut buf, schema.clone(), Some(props))?;
    for b in batches {
        writer.write(b)?;
    }
    writer.close()?;
    out.write_all(&buf)?;
    Ok(())
}

fn truncate(s: &str) -> String {
    let s = s.replace(['\n', '\r', '\t'], " ");
    if s.chars().count() <= MAX_CELL {
        s
    } else {
        let mut t: String = s.chars().take(MAX_CELL - 1).collect();
        t.push('…');
        t
    }
}

/// Display width: CJK characters take two columns in a terminal.
fn width(s: &str) -> usize {
    s.chars()
        .map(|c| {
            if (c as u32) >= 0x1100 && is_wide(c) {
                2
            } else {
                1
            }
        })
        .sum()
}

fn is_wide(c: char) -> bool {
    matches!(c as u32, 0x1100..=0x115F | 0x2E80..=0xA4CF | 0xAC00..=0xD7A3 | 0xF900..=0xFAFF | 0xFE30..=0xFE4F | 0xFF00..=0xFF60 | 0xFFE0..=0xFFE6)
}

fn table(out: &mut dyn Write, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<(), Error> {
    let header: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let rows: Vec<Vec<String>> = cells(batches, "NULL")?
        .into_iter()
        .map(|r| r.iter().map(|c| truncate(c)).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| width(h)).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(width(c));
        }
    }
    let numeric: Vec<bool> = schema
        .fields()
        .iter()
        .map(|f| f.data_type().is_numeric())
        .collect();
    let line = |out: &mut dyn Write, r: &[String]| -> std::io::Result<()> {
        let mut s = String::new();
        for (k, c) in r.iter().enumerate() {
            let pad = " ".repeat(widths[k] - width(c));
            if k > 0 {
                s.push_str("  ");
            }
            if numeric[k] {
                s.push_str(&pad);
                s.push_str(c);
            } else {
                s.push_str(c);
                if k + 1 < r.len() {
                    s.push_str(&pad);
                }
            }
        }
        writeln!(out, "{}", s.trim_end())
    };
    line(out, &header)?;
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    writeln!(out, "{}", rule.join("  "))?;
    for r in &rows {
        line(out, r)?;
    }
    writeln!(
        out,
        "({} row{})",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    )?;
    Ok(())
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn csv(out: &mut dyn Write, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<(), Error> {
    let header: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| csv_field(f.name()))
        .collect();
    writeln!(out, "{}", header.join(","))?;
    for row in cells(batches, "")? {
        let row: Vec<String> = row.iter().map(|c| csv_field(c)).collect();
        writeln!(out, "{}", row.join(","))?;
    }
    Ok(())
}

fn json(out: &mut dyn Write, batches: &[RecordBatch]) -> Result<(), Error> {
    let mut writer = arrow::json::LineDelimitedWriter::new(out);
    for b in batches {
        writer.write(b)?;
    }
    writer.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn sample() -> (SchemaRef, Vec<RecordBatch>) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, true),
            Field::new("n", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![
                    Some("a, \"b\""),
                    None,
                    Some("红色圆形"),
                ])),
                Arc::new(Int64Array::from(vec![1, 200, 3])),
            ],
        )
        .unwrap();
        (schema, vec![batch])
    }

    fn render(f: Format) -> String {
        let (schema, batches) = sample();
        let mut out = Vec::new();
        write(&mut out, f, &schema, &batches).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn table_aligns_numbers_right_and_counts_rows() {
        let t = render(Format::Table);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "name        n");
        assert_eq!(lines[2], "a, \"b\"      1");
        assert_eq!(lines[3], "NULL      200");
        assert_eq!(lines[4], "红色圆形    3");
        assert_eq!(lines[5], "(3 rows)");
    }

    #[test]
    fn csv_quotes_and_json_lines() {
        assert_eq!(
            render(Format::Csv),
            "name,n\n\"a, \"\"b\"\"\",1\n,200\n红色圆形,3\n"
        );
        let j = render(Format::Json);
        let first: serde_json::Value = serde_json::from_str(j.lines().next().unwrap()).unwrap();
        assert_eq!(first["name"], "a, \"b\"");
        assert_eq!(first["n"], 1);
        assert_eq!(j.lines().count(), 3);
    }

    #[test]
    fn parquet_round_trips() {
        let (schema, batches) = sample();
        let mut out = Vec::new();
        write(&mut out, Format::Parquet, &schema, &batches).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            bytes::Bytes::from(out),
        )
        .unwrap()
        .build()
        .unwrap();
        let back: Vec<RecordBatch> = reader.collect::<Result<_, _>>().unwrap();
        assert_eq!(back, batches);
    }
}
