//! Bench `query`: curation queries over a synthetic granary, against DuckDB
//! on the same rows exported to Parquet (measured in the same run), and the
//! same queries on granaries whose images are ~5 KB and ~50 KB (time must
//! not grow with image size: the scan never reads media bytes). Then `plan`
//! on 1M generated rows with 64-dim embeddings, in a child process for its
//! peak RSS. Prints JSON lines with ratios.
//!
//! The query granaries are compacted first (`granary compact`, one
//! fragment each), as DuckDB's data is one Parquet file; `--as-written`
//! keeps the 20 fragments of the 5,000-row commits that wrote them, and
//! each line prints the fragment count.
//!
//! The engines' runs are interleaved: each repetition runs DuckDB (a
//! long-lived Python process), the 5 KB granary and the 50 KB granary back
//! to back, in rotating order, so all three see the same load on a shared
//! machine. A query's time, and the verdict, is its best run; medians and
//! the median of per-repetition paired ratios are printed beside it.
//!
//! Usage: `cargo run --release -p granary-benches --bin query -- [--n 100000] [--plan-n 1000000] [--reps 20] [--dir WORKDIR] [--skip-plan] [--as-written]`
//!
//! Rows are generated directly (random payload bytes stand in for images;
//! captions, defects, scores and embeddings follow the synthetic
//! generator's distributions, skewed). All reads are warm (page cache): the
//! data was just written, for both engines. DuckDB comes from
//! `python3 -m pip install duckdb`; without it those rows are skipped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use granary::query::{Session, plan};
use granary::storage::ingest::{Sample, append_samples};
use granary::storage::media::{Format, MediaInfo};
use granary::storage::sidecar::{Caption, Defect, Sidecar};
use granary::storage::{Granary, schema};
use granary_benches::wait_with_rusage;
use serde_json::json;

/// Curation queries on a synthetic granary (5 KB and 50 KB media), timed
/// against DuckDB on the same rows in Parquet; then `plan` on 1M rows with
/// 64-dim embeddings. Prints JSON lines.
#[derive(clap::Parser)]
#[command(name = "query")]
struct Cli {
    /// Rows of the query granaries.
    #[arg(long, default_value_t = 100_000)]
    n: usize,
    /// Rows of the plan granary.
    #[arg(long, default_value_t = 1_000_000)]
    plan_n: usize,
    /// Repetitions per query after a warm-up. Each repetition runs DuckDB,
    /// the 5 KB granary and the 50 KB granary back to back; a query's time
    /// is its best run (medians are printed too).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    reps: u32,
    /// Keep and reuse the generated data here (default: a temporary
    /// directory, removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Skip the 1M-row plan.
    #[arg(long)]
    skip_plan: bool,
    /// Query the granaries as written (20 fragments of 5,000 rows, one per
    /// commit, as ingest leaves them) instead of compacting them first as
    /// `granary compact` does. DuckDB reads one Parquet file either way.
    /// A kept `--dir` stays compacted once it has been.
    #[arg(long)]
    as_written: bool,
}

type Rng = granary::query::kmeans::SplitMix64;

const SHAPES: [&str; 6] = ["circle", "square", "triangle", "star", "hexagon", "diamond"];
const COLOURS: [&str; 8] = [
    "red", "blue", "green", "yellow", "purple", "orange", "black", "white",
];
const CANVASES: [(u32, u32); 3] = [(256, 256), (320, 192), (192, 320)];

/// One generated row: a skewed shape class drives captions and embedding.
fn row(rng: &mut Rng, i: u64, payload: usize, centres: &[Vec<f32>]) -> Sample {
    let shape = if rng.next_f64() < 0.7 {
        0
    } else {
        1 + rng.below(5)
    };
    let colour = COLOURS[rng.below(COLOURS.len())];
    let (w, h) = CANVASES[rng.below(3)];
    let mut bytes = vec![0u8; payload];
    for chunk in bytes.chunks_mut(8) {
        let v = rng.next_u64().to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
    let mut defects = Vec::new();
    if rng.next_f64() < 0.18 {
        let frac = 0.02 + 0.33 * rng.next_f64();
        let bw = ((f64::from(w * h) * frac).sqrt() as i32).min(w as i32 - 4);
        let bh = ((f64::from(w * h) * frac) as i32 / bw).min(h as i32 - 4);
        defects.push(Defect {
            x0: 2,
            y0: 2,
            x1: 2 + bw,
            y1: 2 + bh,
            kind: "watermark".into(),
        });
    }
    let s = SHAPES[shape];
    let captions = vec![
        Caption {
            text: format!("a {colour} {s} on a plain background"),
            lang: "en".into(),
            style: "short".into(),
        },
        Caption {
            text: format!("背景上的{colour}{s}"),
            lang: "zh".into(),
            style: "short".into(),
        },
    ];
    let mut embedding: Vec<f32> = centres[shape].clone();
    for v in &mut embedding {
        *v += (rng.next_f64() as f32 - 0.5) * 0.2;
    }
    Sample {
        id: format!("{i:032x}"),
        key: format!("gen/{i:08}.jpg"),
        content_hash: format!("{:032x}", rng.next_u64()),
        bytes,
        info: MediaInfo {
            format: Format::Jpeg,
            width: w,
            height: h,
            frames: None,
            fps: None,
            duration_s: None,
        },
        source: Some("bench".into()),
        sidecar: Sidecar {
            captions,
            aesthetic: Some((3.0 + 6.0 * rng.next_f64()) as f32),
            ocr_ratio: Some(0.0),
            motion: None,
            source: None,
            defects,
            embedding: Some(embedding),
        },
    }
}

async fn make_granary(root: &Path, n: usize, payload: usize, seed: u64) -> Result<Granary> {
    if root.join("samples.lance").is_dir() {
        return Ok(Granary::open(root).await?);
    }
    let t = Instant::now();
    let g = Granary::init(root, 64).await?;
    let mut rng = Rng::new(seed);
    let centres: Vec<Vec<f32>> = (0..6)
        .map(|_| (0..64).map(|_| rng.next_f64() as f32 * 2.0 - 1.0).collect())
        .collect();
    // The same rows per commit at every payload size, so both granaries
    // have the same fragments and only the media size differs.
    let batch = 5_000;
    let mut i = 0u64;
    while (i as usize) < n {
        let m = batch.min(n - i as usize);
        let rows: Vec<Sample> = (0..m)
            .map(|k| row(&mut rng, i + k as u64, payload, &centres))
            .collect();
        append_samples(&g, &rows).await?;
        i += m as u64;
    }
    eprintln!(
        "generated {n} rows with {payload}-byte payloads in {} in {:.1} s",
        root.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(g)
}

/// (name, DataFusion SQL, DuckDB SQL): the same question in each dialect.
fn queries() -> Vec<(&'static str, String, String)> {
    // DuckDB has no aspect_bucket: the same nearest-in-log-space rule as a CASE.
    let mut buckets: Vec<(f64, &str)> = granary::query::udf::ASPECT_BUCKETS
        .iter()
        .map(|&(w, h)| (f64::from(w) / f64::from(h), ""))
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut case = String::from("CASE");
    for k in 0..buckets.len() - 1 {
        let mid = (buckets[k].0.ln() + buckets[k + 1].0.ln()) / 2.0;
        let label = granary::query::udf::aspect_bucket((buckets[k].0 * 1e6) as i64, 1_000_000)
            .unwrap_or("?");
        case.push_str(&format!(" WHEN ln(width / height) < {mid} THEN '{label}'"));
    }
    let last =
        granary::query::udf::aspect_bucket((buckets[buckets.len() - 1].0 * 1e6) as i64, 1_000_000)
            .unwrap_or("?");
    case.push_str(&format!(" ELSE '{last}' END"));
    vec![
        (
            "group_by_aspect_bucket",
            "SELECT aspect_bucket(width, height) AS b, count(*) AS n, avg(aesthetic) AS a FROM samples GROUP BY 1 ORDER BY 1".into(),
            format!("SELECT {case} AS b, count(*) AS n, avg(aesthetic) AS a FROM samples GROUP BY 1 ORDER BY 1"),
        ),
        (
            "filter_score_caption_like",
            "SELECT count(*) AS n FROM samples WHERE aesthetic > 6.5 AND captions[1]['text'] LIKE '%red star%'".into(),
            "SELECT count(*) AS n FROM samples WHERE aesthetic > 6.5 AND captions[1].text LIKE '%red star%'".into(),
        ),
        (
            "top_k_by_score",
            "SELECT id, aesthetic FROM samples ORDER BY aesthetic DESC LIMIT 100".into(),
            "SELECT id, aesthetic FROM samples ORDER BY aesthetic DESC LIMIT 100".into(),
        ),
        (
            "defect_ratio_filter",
            "SELECT count(*) AS n FROM samples WHERE cardinality(defects) > 0 AND defect_area_ratio(defects, width, height) < 0.2".into(),
            // The generated rows hold at most one box, so the first box's area is the union.
            "SELECT count(*) AS n FROM samples WHERE len(defects) > 0 AND (defects[1].x1 - defects[1].x0) * (defects[1].y1 - defects[1].y0) / (width * height) < 0.2".into(),
        ),
        (
            "join_samples_plan",
            "SELECT p.visual_cluster, count(*) AS n, sum(p.weight) AS w, avg(s.aesthetic) AS a FROM samples s JOIN sampling_plans p ON s.id = p.sample_id WHERE p.plan = 'bench' GROUP BY 1 ORDER BY 1".into(),
            "SELECT p.visual_cluster, count(*) AS n, sum(p.weight) AS w, avg(s.aesthetic) AS a FROM samples s JOIN plans p ON s.id = p.sample_id WHERE p.plan = 'bench' GROUP BY 1 ORDER BY 1".into(),
        ),
    ]
}

/// One run of `sql` in our session: (seconds, result rows).
async fn run_ours(session: &Session, sql: &str) -> Result<(f64, usize)> {
    let t = Instant::now();
    let (_, b) = session.sql(sql).await?;
    let secs = t.elapsed().as_secs_f64();
    Ok((secs, b.iter().map(|b| b.num_rows()).sum()))
}

/// Export `samples` (all columns, media bytes as binary) and the plans to Parquet.
async fn export_parquet(g: &Granary, dir: &Path) -> Result<()> {
    use futures::StreamExt;
    let ds = g.table(schema::SAMPLES).await?;
    let mut scan = ds.scan();
    scan.project(&[
        "id",
        "key",
        "media",
        "format",
        "width",
        "height",
        "aesthetic",
        "ocr_ratio",
        "captions",
        "defects",
        "size_bytes",
        "embedding",
        "bytes",
    ])?;
    scan.blob_handling(lance::datatypes::BlobHandling::AllBinary);
    let mut stream = scan.try_into_stream().await?;
    let file = std::fs::File::create(dir.join("samples.parquet"))?;
    let mut w: Option<parquet::arrow::ArrowWriter<std::fs::File>> = None;
    let mut file = Some(file);
    while let Some(b) = stream.next().await {
        let b = b?;
        if w.is_none() {
            let f = file.take().context("parquet file")?;
            w = Some(parquet::arrow::ArrowWriter::try_new(f, b.schema(), None)?);
        }
        if let Some(w) = w.as_mut() {
            w.write(&b)?;
        }
    }
    if let Some(w) = w {
        w.close()?;
    }
    let session = Session::open(g).await?;
    let (schema, batches) = session.sql("SELECT * FROM sampling_plans").await?;
    write_parquet(&dir.join("plans.parquet"), &schema, &batches)
}

fn write_parquet(
    path: &Path,
    schema: &arrow::datatypes::SchemaRef,
    batches: &[arrow::array::RecordBatch],
) -> Result<()> {
    let file = std::fs::File::create(path)?;
    let mut w = parquet::arrow::ArrowWriter::try_new(file, schema.clone(), None)?;
    for b in batches {
        w.write(b)?;
    }
    w.close()?;
    Ok(())
}

/// A DuckDB process that answers one query per line of stdin with
/// `[seconds, rows]`, so its runs can be interleaved with ours.
const DUCKDB_SCRIPT: &str = r#"
import json, sys, time
import duckdb
d = sys.argv[1]
qs = dict(json.loads(sys.argv[2]))
con = duckdb.connect()
con.execute(f"CREATE VIEW samples AS SELECT * FROM read_parquet('{d}/samples.parquet')")
con.execute(f"CREATE VIEW plans AS SELECT * FROM read_parquet('{d}/plans.parquet')")
print("ready", flush=True)
for line in sys.stdin:
    sql = qs[line.strip()]
    t = time.perf_counter(); rows = len(con.execute(sql).fetchall()); dt = time.perf_counter() - t
    print(json.dumps([dt, rows]), flush=True)
"#;

struct Duck {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Duck {
    /// Start the DuckDB process over the Parquet export in `dir`; None
    /// (with a message) when python3 or duckdb is missing.
    fn start(dir: &Path, qs: &[(&str, String, String)]) -> Option<Duck> {
        use std::io::BufRead;
        use std::process::Stdio;
        let list: Vec<(&str, &str)> = qs.iter().map(|(n, _, d)| (*n, d.as_str())).collect();
        let spawned = Command::new("python3")
            .args(["-c", DUCKDB_SCRIPT])
            .arg(dir)
            .arg(serde_json::to_string(&list).ok()?)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                eprintln!("duckdb baseline unavailable (python3: {e})");
                return None;
            }
        };
        let stdin = child.stdin.take()?;
        let mut stdout = std::io::BufReader::new(child.stdout.take()?);
        let mut first = String::new();
        if stdout.read_line(&mut first).ok()? == 0 || first.trim() != "ready" {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            let _ = child.wait();
            eprintln!(
                "duckdb baseline unavailable (python3 -m pip install duckdb): {}",
                err.lines().last().unwrap_or("")
            );
            return None;
        }
        Some(Duck {
            child,
            stdin,
            stdout,
        })
    }

    /// One run of the named query: (seconds, result rows).
    fn run(&mut self, name: &str) -> Result<(f64, usize)> {
        use std::io::{BufRead, Write};
        writeln!(self.stdin, "{name}")?;
        self.stdin.flush()?;
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("the duckdb process exited while running {name}");
        }
        let (secs, rows): (f64, usize) = serde_json::from_str(line.trim())?;
        Ok((secs, rows))
    }
}

impl Drop for Duck {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs of one query: DuckDB (when present) and our two granaries.
#[derive(Default)]
struct Runs {
    duck: Vec<f64>,
    ours5: Vec<f64>,
    ours50: Vec<f64>,
}

fn best(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Per-repetition ratios `a[i] / b[i]`: both were timed within one
/// repetition, so load on the machine hits both alike.
fn paired(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x / y).collect()
}

fn plan_opts(name: &str) -> plan::PlanOptions {
    plan::PlanOptions {
        name: name.into(),
        tau: 0.5,
        visual_k: 16,
        semantic_k: 16,
        replace: true,
        ..Default::default()
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child-plan") {
        let g = Granary::open(Path::new(&args[2])).await?;
        let t = Instant::now();
        // Resident memory, and the peak so far, as each phase starts.
        let marks = std::sync::Mutex::new(Vec::new());
        let r = plan::plan(&g, &plan_opts("bench"), &|phase| {
            let rss = std::fs::read_to_string("/proc/self/statm")
                .ok()
                .and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
                .map_or(f64::NAN, |pages| pages * 4096.0 / 1048576.0);
            let hwm = granary_benches::peak_rss_mib().unwrap_or(f64::NAN);
            marks
                .lock()
                .expect("marks")
                .push(json!({"phase": phase, "rss_mib": rss, "peak_so_far_mib": hwm}));
        })
        .await?;
        println!(
            "{}",
            json!({"seconds": t.elapsed().as_secs_f64(), "samples": r.samples, "peak_rss_mib": granary_benches::peak_rss_mib()?,
                   "rss_at_phase_start": *marks.lock().expect("marks"),
                   "timings": r.timings.iter().map(|(k, s)| json!({"phase": k, "seconds": s})).collect::<Vec<_>>()})
        );
        return Ok(());
    }
    let cli = <Cli as clap::Parser>::parse();
    let (n, plan_n, reps) = (cli.n, cli.plan_n, cli.reps as usize);
    let work = match &cli.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("granary-bench-query-{}", std::process::id())),
    };
    std::fs::create_dir_all(&work)?;
    let small = make_granary(&work.join("g5k"), n, 5_000, 1).await?;
    let large = make_granary(&work.join("g50k"), n, 50_000, 1).await?;
    for g in [&small, &large] {
        if !g.plan_exists("bench").await? {
            plan::plan(g, &plan_opts("bench"), &|_| {}).await?;
        }
    }
    if !cli.as_written {
        for g in [&small, &large] {
            let t = Instant::now();
            let reports = g.compact(1 << 20, &|_| {}).await?;
            for r in reports.iter().filter(|r| r.fragments_removed > 0) {
                eprintln!(
                    "compacted {} {}: {} -> {} fragments in {:.1} s",
                    g.root().display(),
                    r.table,
                    r.fragments_before,
                    r.fragments_after,
                    t.elapsed().as_secs_f64()
                );
            }
        }
    }
    let fragments = small.table(schema::SAMPLES).await?.count_fragments();
    let pq = work.join("parquet");
    if !pq.join("plans.parquet").exists() {
        std::fs::create_dir_all(&pq)?;
        export_parquet(&small, &pq).await?;
    }
    let qs = queries();
    let mut duck = Duck::start(&pq, &qs);
    let s5 = Session::open(&small).await?;
    let s50 = Session::open(&large).await?;
    let mut all_ok = true;
    for (name, ours, _) in &qs {
        // One warm-up run each, then `reps` repetitions with the three runs
        // back to back (their order rotating), so the ratios compare runs
        // made under the same load on this shared machine.
        let (_, rows5) = run_ours(&s5, ours).await?;
        let (_, rows50) = run_ours(&s50, ours).await?;
        let duck_rows = match duck.as_mut() {
            Some(d) => Some(d.run(name)?.1),
            None => None,
        };
        let mut runs = Runs::default();
        for rep in 0..reps {
            for k in 0..3 {
                match (rep + k) % 3 {
                    0 => {
                        if let Some(d) = duck.as_mut() {
                            runs.duck.push(d.run(name)?.0);
                        }
                    }
                    1 => runs.ours5.push(run_ours(&s5, ours).await?.0),
                    _ => runs.ours50.push(run_ours(&s50, ours).await?.0),
                }
            }
        }
        let (t5, t50) = (best(&runs.ours5), best(&runs.ours50));
        let size_ratio = t50 / t5;
        let mut line = json!({
            "bench": "query", "query": name, "rows": n, "reps": reps, "fragments": fragments,
            "granary_s_5kb": t5, "granary_s_50kb": t50,
            "median_s_5kb": median(runs.ours5.clone()), "median_s_50kb": median(runs.ours50.clone()),
            "ratio_50kb_over_5kb": size_ratio,
            "median_paired_50kb_over_5kb": median(paired(&runs.ours50, &runs.ours5)),
            "size_target_ok": size_ratio <= 1.2, "result_rows": rows5, "page_cache": "warm",
        });
        all_ok &= size_ratio <= 1.2 && rows5 == rows50;
        match duck_rows {
            Some(drows) => {
                let dt = best(&runs.duck);
                line["duckdb_s"] = json!(dt);
                line["duckdb_median_s"] = json!(median(runs.duck.clone()));
                line["ratio_vs_duckdb"] = json!(t5 / dt);
                line["median_paired_ratio_vs_duckdb"] =
                    json!(median(paired(&runs.ours5, &runs.duck)));
                line["duckdb_target_ok"] = json!(t5 / dt <= 1.5);
                line["same_rows_as_duckdb"] = json!(drows == rows5);
                all_ok &= t5 / dt <= 1.5 && drows == rows5;
            }
            None => line["duckdb"] = json!("skipped: duckdb unavailable"),
        }
        println!("{line}");
    }
    drop(duck);
    if !cli.skip_plan {
        let root = work.join("g1m");
        make_granary(&root, plan_n, 16, 2).await?;
        let exe = std::env::current_exe()?;
        let child = Command::new(&exe)
            .args(["--child-plan", root.to_str().unwrap_or_default()])
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let pid = child.id() as i32;
        let (code, _) = wait_with_rusage(pid)?;
        let mut stdout = String::new();
        if let Some(mut s) = child.stdout {
            use std::io::Read;
            s.read_to_string(&mut stdout)?;
        }
        if code != 0 {
            bail!("plan child failed with {code}");
        }
        let r: serde_json::Value = serde_json::from_str(stdout.trim())?;
        let secs = r["seconds"].as_f64().unwrap_or(f64::NAN);
        let matrix = (plan_n * 64 * 4) as f64;
        let rss = r["peak_rss_mib"].as_f64().context("child peak RSS")? * 1048576.0;
        println!(
            "{}",
            json!({"bench": "plan", "rows": plan_n, "dim": 64, "seconds": secs,
                   "target_s": 60, "time_ok": secs < 60.0, "peak_rss_mib": rss / 1048576.0,
                   "embedding_matrix_mib": matrix / 1048576.0, "rss_over_matrix": rss / matrix,
                   "rss_beyond_matrix_mib": (rss - matrix) / 1048576.0,
                   "phases": r["timings"], "rss_at_phase_start": r["rss_at_phase_start"]})
        );
        all_ok &= secs < 60.0;
    }
    println!("{}", json!({"bench": "query", "all_targets_ok": all_ok}));
    if cli.dir.is_none() {
        let _ = std::fs::remove_dir_all(&work);
    }
    Ok(())
}
