//! The `granary` command line. Flags are validated here and turned into the
//! plain option structs the libraries take; this is the only place that
//! knows argv, stdout and exit codes (0 ok, 1 negative answer, 2 usage or
//! error, 130 interrupted). `main.rs` only calls [`main`], so the end-to-end
//! tests can build the same command line as a binary of their own.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use crate::output::{self, Format};
use crate::storage::{self, Granary, IngestOptions, ParquetColumns, SourceFormat};
use crate::synth::{self, SynthOptions};
use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

/// Granary: a Lance store for diffusion-transformer training data and
/// checkpoints, with SQL over all of it.
#[derive(Parser)]
#[command(name = "granary", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new granary (a directory of Lance tables) at ROOT.
    Init {
        /// Directory to create; must not exist or be empty.
        root: PathBuf,
        /// Dimension of the `embedding` column, fixed for the granary's life.
        #[arg(long, default_value_t = storage::schema::DEFAULT_EMBEDDING_DIM)]
        embedding_dim: usize,
    },
    /// Ingest images and videos from SRC into the granary at ROOT.
    ///
    /// Idempotent and resumable: re-running on the same source adds nothing,
    /// and an interrupted run can simply be run again. Samples that cannot be
    /// read are skipped and recorded in the `ingest_errors` table.
    Ingest {
        /// The granary (made by `granary init`).
        root: PathBuf,
        /// The source: a folder, a .tar shard or folder of shards, or a .parquet file or folder.
        src: PathBuf,
        /// Layout of SRC.
        #[arg(long, value_enum, default_value_t = SourceArg::Folder)]
        format: SourceArg,
        /// Parquet: column holding the encoded media (binary or struct{bytes, path}).
        #[arg(long, default_value = "image")]
        image_column: String,
        /// Parquet: column holding a caption; "" for none.
        #[arg(long, default_value = "caption")]
        caption_column: String,
        /// Parquet: column holding the sample key (default: image path, else FILE/ROW).
        #[arg(long)]
        key_column: Option<String>,
        /// Parquet: column holding JSON metadata in the sidecar format.
        #[arg(long)]
        meta_column: Option<String>,
        /// Value of the `source` column for samples whose sidecar names none.
        #[arg(long)]
        source: Option<String>,
        /// Commit a batch every this many MiB of media.
        #[arg(long, default_value_t = 64)]
        batch_mb: usize,
    },
    /// Generate a deterministic synthetic captioned dataset in the folder format.
    Synth {
        /// Output directory; must not exist or be empty.
        out: PathBuf,
        /// Number of images.
        #[arg(long, default_value_t = 1000)]
        n: usize,
        /// Number of short H.264 MP4 clips.
        #[arg(long, default_value_t = 0)]
        videos: usize,
        /// Random seed: same seed and options, same bytes.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Skew the shape classes, e.g. `circle=0.8` or `circle=0.5,star=0.2`.
        #[arg(long, default_value = "")]
        skew: String,
    },
    /// Run SQL over the granary's tables (samples, ingest_errors,
    /// sampling_plans, and chunks/steps/committed of ROOT/checkpoints), or,
    /// when ROOT is a checkpoint root, over its tables.
    ///
    /// UDFs: defect_area_ratio(defects, width, height), aspect_bucket(width,
    /// height), caption(captions, lang, style), blob_size(bytes). Without a
    /// query, opens an interactive shell (history, Tab completion).
    ///
    /// Scans run on all cores, so rows come in no fixed order unless the
    /// query has ORDER BY (a plain LIMIT still returns the first rows).
    Sql {
        /// The granary (or checkpoint root) to query.
        root: PathBuf,
        /// The query, e.g. "SELECT media, count(*) FROM samples GROUP BY media".
        /// Omit it for the interactive shell.
        query: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Write the result to FILE instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Allow statements beyond queries: session-local CREATE VIEW,
        /// CREATE TABLE … AS and SET. Granary tables stay read-only.
        #[arg(long)]
        allow_write: bool,
    },
    /// Defect-aware curation (Seedream 3.0): keep samples whose defect boxes
    /// cover less than --max-defect-ratio of the image, with the boxes as a
    /// loss mask; mark the rest keep=false with a reason. Writes a new
    /// version of `samples` (columns keep, drop_reason, loss_mask); nothing
    /// is deleted and earlier versions stay readable.
    Curate {
        /// The granary.
        root: PathBuf,
        /// Drop samples whose defect-area ratio (union of boxes / image area) is at least this.
        #[arg(long, default_value_t = 0.20)]
        max_defect_ratio: f64,
        /// Drop samples whose aesthetic score is below this.
        #[arg(long)]
        min_aesthetic: Option<f64>,
        /// Drop samples whose OCR (text area) ratio is above this.
        #[arg(long)]
        max_ocr_ratio: Option<f64>,
        /// Drop samples whose shorter side is below this many pixels.
        #[arg(long)]
        min_side: Option<i32>,
        /// Report what would happen; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Dual-axis collaborative sampling (Seedream 3.0): cluster samples on a
    /// visual axis (hierarchical k-means of `embedding`, or of a built-in
    /// pixel descriptor) and a semantic axis (TF-IDF of captions, English
    /// and Chinese), then weight samples so both cluster distributions move
    /// to tempered targets (mass ∝ count^tau). Writes the plan to the
    /// `sampling_plans` table and prints a report. Samples curated out
    /// (keep = false) are excluded.
    Plan {
        /// The granary.
        root: PathBuf,
        /// Name of the plan (rows of `sampling_plans` with plan = NAME).
        #[arg(long)]
        name: String,
        /// Temper exponent in [0, 1]: 1 keeps the raw distribution, 0 makes clusters uniform.
        #[arg(long, default_value_t = 0.5)]
        tau: f64,
        /// Clusters on the visual axis.
        #[arg(long, default_value_t = 16)]
        visual_k: usize,
        /// Clusters on the semantic axis.
        #[arg(long, default_value_t = 16)]
        semantic_k: usize,
        /// Random seed: same seed and data, same plan.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// SQL predicate over `samples` selecting what the plan covers, e.g. "media = 'image'".
        #[arg(long = "where")]
        filter: Option<String>,
        /// Overwrite an existing plan of this name (atomically).
        #[arg(long)]
        replace: bool,
        /// Draw both marginals before and after to this PNG.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Visual features: the embedding column, the built-in pixel descriptor, or auto
        /// (embedding when present).
        #[arg(long, value_enum, default_value_t = VisualArg::Auto)]
        visual_features: VisualArg,
        /// Caption styles feeding the semantic axis (repeatable; default all).
        #[arg(long)]
        caption_style: Vec<String>,
        /// Cap on a sample's weight, as a multiple of the mean weight.
        #[arg(long, default_value_t = 50.0)]
        max_weight_ratio: f64,
        /// Floor on the effective sample size, as a fraction of the samples.
        #[arg(long, default_value_t = 0.05)]
        min_ess: f64,
        /// Report what would happen; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Show tables, row counts, versions, sizes on disk and schemas.
    Info {
        /// The granary.
        root: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Merge each table's small fragments into larger ones.
    ///
    /// Every ingest batch and every plan adds a fragment, and each query
    /// pays a file open and a few reads per fragment: after many small
    /// ingests, compacting makes scans faster. Rows and columns are kept
    /// (media bytes are copied into the new files, so it writes about the
    /// granary's size once); it is one new version per table, the earlier
    /// versions stay readable, and nothing is deleted. Safe to run while
    /// ingest appends.
    Compact {
        /// The granary.
        root: PathBuf,
        /// Fragments with fewer rows than this are merged, into fragments of
        /// up to this many rows.
        #[arg(long, default_value_t = 1_048_576, value_parser = clap::value_parser!(u64).range(1..))]
        target_rows: u64,
        /// Print one JSON object per table.
        #[arg(long)]
        json: bool,
    },
    /// Checkpoints: list, inspect, verify, diff, reshard, export/import safetensors, gc.
    Ckpt {
        #[command(subcommand)]
        command: crate::ckpt::CkptCommand,
    },
    /// Run the main job end to end on built-in synthetic data:
    /// synth → init → ingest → a few SQL queries → curate → sampling plan
    /// (with its plot) → re-ingest (adds nothing).
    Demo {
        /// Working directory (default: a new directory under the system temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Number of synthetic images.
        #[arg(long, default_value_t = 400)]
        n: usize,
        /// Number of synthetic videos.
        #[arg(long, default_value_t = 6)]
        videos: usize,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum VisualArg {
    Auto,
    Embedding,
    Builtin,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SourceArg {
    Folder,
    Webdataset,
    Parquet,
}

/// Parse argv, run the command, and return the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Init {
            root,
            embedding_dim,
        } => {
            let g = Granary::init(&root, embedding_dim)
                .await
                .with_context(|| format!("while creating a granary at {}", root.display()))?;
            println!(
                "created granary {} (embedding dim {})",
                g.root().display(),
                g.embedding_dim()
            );
        }
        Command::Ingest {
            root,
            src,
            format,
            image_column,
            caption_column,
            key_column,
            meta_column,
            source,
            batch_mb,
        } => {
            if !src.exists() {
                bail!("{}: no such file or directory", src.display());
            }
            if batch_mb == 0 {
                bail!("--batch-mb must be at least 1");
            }
            let opts = IngestOptions {
                format: match format {
                    SourceArg::Folder => SourceFormat::Folder,
                    SourceArg::Webdataset => SourceFormat::WebDataset,
                    SourceArg::Parquet => SourceFormat::Parquet,
                },
                parquet: ParquetColumns {
                    image: image_column,
                    caption: Some(caption_column).filter(|c| !c.is_empty()),
                    key: key_column,
                    meta: meta_column,
                },
                source_name: source,
                batch_bytes: batch_mb << 20,
                ..IngestOptions::default()
            };
            return ingest(&root, &src, &opts).await;
        }
        Command::Synth {
            out,
            n,
            videos,
            seed,
            skew,
        } => {
            let opts = SynthOptions {
                n,
                videos,
                seed,
                skew: synth::parse_skew(&skew)?,
                ..SynthOptions::default()
            };
            run_synth(&out, &opts)?;
        }
        Command::Sql {
            root,
            query,
            format,
            out,
            allow_write,
        } => {
            let session = if crate::storage::checkpoint::CkptRoot::is_root(&root) {
                crate::query::Session::open_checkpoint(&root).await?
            } else {
                crate::query::Session::open(&open(&root).await?).await?
            }
            .allow_write(allow_write);
            let Some(query) = query else {
                if out.is_some() {
                    bail!("--out needs a query");
                }
                crate::repl::run(&session, format).await?;
                return Ok(ExitCode::SUCCESS);
            };
            if format == Format::Parquet && out.is_none() && std::io::stdout().is_terminal() {
                bail!("--format parquet writes binary; give --out FILE or redirect stdout");
            }
            let (schema, batches) = session.sql(&query).await?;
            match out {
                Some(path) => {
                    let mut file = std::fs::File::create(&path)
                        .with_context(|| format!("while creating {}", path.display()))?;
                    output::write(&mut file, format, &schema, &batches)?;
                    file.sync_all()?;
                    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
                    eprintln!("wrote {rows} rows to {}", path.display());
                }
                None => {
                    let mut stdout = std::io::stdout().lock();
                    output::write(&mut stdout, format, &schema, &batches)?;
                    stdout.flush()?;
                }
            }
        }
        Command::Curate {
            root,
            max_defect_ratio,
            min_aesthetic,
            max_ocr_ratio,
            min_side,
            dry_run,
            json,
        } => {
            let g = open(&root).await?;
            let opts = crate::query::curate::CurateOptions {
                max_defect_ratio,
                min_aesthetic,
                max_ocr_ratio,
                min_side,
                dry_run,
            };
            crate::curation::curate(&g, &opts, json).await?;
        }
        Command::Plan {
            root,
            name,
            tau,
            visual_k,
            semantic_k,
            seed,
            filter,
            replace,
            plot,
            visual_features,
            caption_style,
            max_weight_ratio,
            min_ess,
            dry_run,
            json,
        } => {
            let g = open(&root).await?;
            let opts = crate::query::plan::PlanOptions {
                name,
                tau,
                visual_k,
                semantic_k,
                seed,
                filter,
                replace,
                visual_features: match visual_features {
                    VisualArg::Auto => crate::query::plan::VisualFeatures::Auto,
                    VisualArg::Embedding => crate::query::plan::VisualFeatures::Embedding,
                    VisualArg::Builtin => crate::query::plan::VisualFeatures::Builtin,
                },
                caption_styles: caption_style,
                ipf: crate::query::ipf::IpfOptions {
                    max_weight_ratio,
                    min_ess_fraction: min_ess,
                    ..Default::default()
                },
                dry_run,
                ..Default::default()
            };
            crate::curation::plan(&g, &opts, plot.as_deref(), json).await?;
        }
        Command::Compact {
            root,
            target_rows,
            json,
        } => compact(&open(&root).await?, target_rows as usize, json).await?,
        Command::Info { root, format } => {
            let g = open(&root).await?;
            info(&g, format).await?;
        }
        Command::Demo { dir, n, videos } => demo(dir, n, videos).await?,
        Command::Ckpt { command } => return crate::ckpt::run(command).await,
    }
    Ok(ExitCode::SUCCESS)
}

async fn open(root: &Path) -> Result<Granary> {
    Granary::open(root)
        .await
        .with_context(|| format!("while opening the granary at {}", root.display()))
}

const BAR_WITH_TOTAL: &str =
    "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})";

fn bar(total: Option<u64>, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = match total {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::no_length(),
    };
    let template = if total.is_some() {
        BAR_WITH_TOTAL
    } else {
        "{prefix} [{elapsed_precise}] {pos} ({per_sec})"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        pb.set_style(style);
    }
    pb.set_prefix(what.to_string());
    pb
}

fn run_synth(out: &Path, opts: &SynthOptions) -> Result<synth::SynthSummary> {
    let pb = bar(Some((opts.n + opts.videos) as u64), "synth");
    let started = Instant::now();
    let summary = synth::synth(out, opts, &|done| pb.set_position(done))
        .with_context(|| format!("while generating {}", out.display()))?;
    pb.finish_and_clear();
    println!(
        "synth: wrote {} images and {} videos ({:.1} MB, {} with defects) to {} in {:.1} s",
        summary.images,
        summary.videos,
        summary.bytes as f64 / 1e6,
        summary.with_defects,
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(summary)
}

struct BarProgress(ProgressBar);

impl storage::IngestProgress for BarProgress {
    fn total(&self, items: u64) {
        self.0.set_length(items);
        if let Ok(style) = ProgressStyle::with_template(BAR_WITH_TOTAL) {
            self.0.set_style(style);
        }
    }
    fn advance(&self, _bytes: u64) {
        self.0.inc(1);
    }
}

async fn ingest(root: &Path, src: &Path, opts: &IngestOptions) -> Result<ExitCode> {
    let g = open(root).await?;
    let pb = bar(None, "ingest");
    let progress = Arc::new(BarProgress(pb.clone()));
    let s = storage::ingest::ingest(&g, src, opts, progress)
        .await
        .with_context(|| format!("while ingesting {} into {}", src.display(), root.display()))?;
    pb.finish_and_clear();
    let secs = s.elapsed.as_secs_f64().max(1e-9);
    println!(
        "ingest: {} new samples ({} images, {} videos, {:.1} MB) in {:.1} s ({:.0} samples/s, {:.1} MB/s); {} already present; {} rejected{}",
        s.ingested,
        s.images,
        s.videos,
        s.bytes as f64 / 1e6,
        secs,
        s.ingested as f64 / secs,
        s.bytes as f64 / 1e6 / secs,
        s.already_present,
        s.errors,
        if s.errors > 0 {
            " (see the ingest_errors table)"
        } else {
            ""
        }
    );
    if s.scanned == 0 {
        bail!(
            "no samples found in {} (format {})",
            src.display(),
            opts.format.as_str()
        );
    }
    if s.ingested == 0 && s.already_present == 0 {
        bail!(
            "nothing could be ingested: all {} samples were rejected (see the ingest_errors table)",
            s.errors
        );
    }
    if s.ingested > 0 {
        // Every committed batch is a fragment; many small ones slow queries.
        let ds = g.table(storage::schema::SAMPLES).await?;
        let fragments = ds.count_fragments();
        let per = ds.count_rows(None).await? / fragments.max(1);
        if fragments >= 16 && per < 1 << 20 {
            eprintln!(
                "hint: samples is in {fragments} fragments of ~{per} rows; `granary compact {}` merges them, and queries get faster",
                root.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn compact(g: &Granary, target_rows: usize, json: bool) -> Result<()> {
    let t = Instant::now();
    let reports = g
        .compact(target_rows, &|what| eprintln!("compacting {what}"))
        .await?;
    let mut out = std::io::stdout().lock();
    for r in &reports {
        if json {
            let line = serde_json::json!({
                "table": r.table, "rows": r.rows, "fragments_before": r.fragments_before,
                "fragments_after": r.fragments_after, "fragments_rewritten": r.fragments_removed,
                "version_before": r.version_before, "version": r.version,
            });
            writeln!(out, "{line}")?;
        } else if r.version == r.version_before {
            writeln!(
                out,
                "{}: {} fragments, nothing to merge (version {})",
                r.table, r.fragments_before, r.version
            )?;
        } else {
            writeln!(
                out,
                "{}: {} rows, {} → {} fragments, version {} → {}",
                r.table, r.rows, r.fragments_before, r.fragments_after, r.version_before, r.version
            )?;
        }
    }
    if !json {
        writeln!(out, "done in {:.1} s", t.elapsed().as_secs_f64())?;
    }
    out.flush()?;
    Ok(())
}

async fn info(g: &Granary, format: Format) -> Result<()> {
    if format == Format::Parquet {
        bail!("info prints table, csv or json; --format parquet is for sql results");
    }
    let tables = g.info().await?;
    let mut out = std::io::stdout().lock();
    match format {
        Format::Json => {
            for t in &tables {
                let fields: Vec<serde_json::Value> = t
                    .schema
                    .fields()
                    .iter()
                    .map(|f| serde_json::json!({"name": f.name(), "type": f.data_type().to_string(), "nullable": f.is_nullable()}))
                    .collect();
                let line = serde_json::json!({
                    "table": t.name, "rows": t.rows, "version": t.version,
                    "fragments": t.fragments, "size_bytes": t.size_bytes, "fields": fields,
                });
                writeln!(out, "{line}")?;
            }
        }
        Format::Table | Format::Csv | Format::Parquet => {
            writeln!(
                out,
                "granary {} (embedding dim {})",
                g.root().display(),
                g.embedding_dim()
            )?;
            for t in &tables {
                writeln!(
                    out,
                    "\n{}: {} rows, version {}, {} fragments, {:.1} MB on disk",
                    t.name,
                    t.rows,
                    t.version,
                    t.fragments,
                    t.size_bytes as f64 / 1e6
                )?;
                for f in t.schema.fields() {
                    writeln!(
                        out,
                        "  {:<14} {}{}",
                        f.name(),
                        f.data_type(),
                        if f.is_nullable() { "" } else { " NOT NULL" }
                    )?;
                }
            }
        }
    }
    out.flush()?;
    Ok(())
}

async fn demo(dir: Option<PathBuf>, n: usize, videos: usize) -> Result<()> {
    let dir = match dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("granary-demo-{}", std::process::id())),
    };
    let src = dir.join("synth");
    let root = dir.join("granary");
    println!("== granary demo in {}", dir.display());
    println!("\n== 1. synth: {n} images + {videos} videos");
    run_synth(
        &src,
        &SynthOptions {
            n,
            videos,
            seed: 42,
            ..SynthOptions::default()
        },
    )?;
    println!("\n== 2. init");
    let g = Granary::init(&root, storage::schema::DEFAULT_EMBEDDING_DIM)
        .await
        .with_context(|| format!("while creating {}", root.display()))?;
    println!("created {}", g.root().display());
    println!("\n== 3. ingest");
    let code = ingest(&root, &src, &IngestOptions::default()).await?;
    if code != ExitCode::SUCCESS {
        bail!("demo ingest failed");
    }
    let queries = [
        "SELECT media, format, count(*) AS n, round(avg(width), 1) AS avg_width, round(avg(height), 1) AS avg_height, sum(size_bytes) AS bytes FROM samples GROUP BY media, format ORDER BY media, format",
        "SELECT width || 'x' || height AS resolution, count(*) AS n FROM samples WHERE media = 'image' GROUP BY 1 ORDER BY n DESC",
        "SELECT key, frames, round(fps, 1) AS fps, round(duration_s, 2) AS seconds, captions[1]['text'] AS caption FROM samples WHERE media = 'video' ORDER BY key LIMIT 5",
        "SELECT key, defects[1]['kind'] AS defect, captions[4]['text'] AS zh_caption, aesthetic FROM samples WHERE cardinality(defects) > 0 ORDER BY key LIMIT 5",
    ];
    let g = open(&root).await?;
    let session = crate::query::Session::open(&g).await?;
    for (i, q) in queries.iter().enumerate() {
        println!("\n== 4.{} sql: {q}", i + 1);
        let (schema, batches) = session.sql(q).await?;
        let mut out = std::io::stdout().lock();
        output::write(&mut out, Format::Table, &schema, &batches)?;
    }
    println!(
        "\n== 5. curate: defect area < 20% kept with the boxes as loss mask, the rest dropped"
    );
    crate::curation::curate(&g, &crate::query::curate::CurateOptions::default(), false).await?;
    let plot = dir.join("plan.png");
    println!("\n== 6. plan: dual-axis sampling, tau 0.5");
    let opts = crate::query::plan::PlanOptions {
        name: "demo".into(),
        visual_k: 6,
        semantic_k: 6,
        ..Default::default()
    };
    crate::curation::plan(&g, &opts, Some(&plot), false).await?;
    println!("\n== 7. ingest again: idempotent, adds nothing");
    ingest(&root, &src, &IngestOptions::default()).await?;
    println!(
        "\n== done. Explore it:\n  granary info {r}\n  granary sql {r}\n  granary sql {r} \"SELECT plan, visual_cluster, count(*), sum(weight) FROM sampling_plans GROUP BY 1, 2 ORDER BY 2\"\n  plot: {}",
        plot.display(),
        r = root.display(),
    );
    Ok(())
}
