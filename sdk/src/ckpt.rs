//! `granary ckpt …`: list, inspect, verify, diff, reshard, export, import
//! and garbage-collect checkpoints.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use clap::Subcommand;
use serde::Deserialize;

use crate::output::{self, Format};
use crate::storage::checkpoint::safetensors;
use crate::storage::checkpoint::{
    Checkpoint, CkptRoot, Codec, DType, LoadOptions, Region, RegionSpec, SaveOptions, Saver, Shard,
    Target,
};

#[derive(Subcommand)]
pub enum CkptCommand {
    /// List committed steps: tags, size, the saver's world size, time.
    List {
        root: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Show the tensors of a step (dtype, shape, chunks), or one tensor's chunks.
    Inspect {
        root: PathBuf,
        /// Step to show (default: latest).
        #[arg(long)]
        step: Option<u64>,
        /// Show this tensor's stored chunks: rank, region, file, bytes.
        #[arg(long)]
        tensor: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Read every block of a step and check its checksum. Exit 1 on any
    /// corruption, naming the tensor and the file.
    Verify {
        root: PathBuf,
        #[arg(long)]
        step: Option<u64>,
    },
    /// Compare two checkpoints, each ROOT or ROOT@STEP: tensors added,
    /// removed, changed, and the largest absolute difference. Exit 1 when
    /// they differ.
    Diff {
        a: String,
        b: String,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Rewrite a step under another shard layout (offline resharding), as a
    /// new checkpoint root OUT. LAYOUT.json is either
    /// `{"world_size": K, "split_dim": D}` (every tensor cut into K near-equal
    /// boxes along dimension D, or its last dimension if it has fewer) or
    /// `{"ranks": [{"tensors": {"FQN": {"box": {"offsets": [..], "lengths": [..]}}
    /// | {"flat": {"start": S, "len": N}}}}, …]}` (see docs/checkpoint-format.md).
    Reshard {
        root: PathBuf,
        #[arg(long)]
        step: Option<u64>,
        #[arg(long)]
        layout: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a step's tensors to a safetensors file (Python's `safetensors` reads it).
    Export {
        root: PathBuf,
        #[arg(long)]
        step: Option<u64>,
        /// Output format; safetensors is the one supported.
        #[arg(long, default_value = "safetensors")]
        format: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Import a safetensors file as step STEP of the checkpoint root ROOT (created if missing).
    Import {
        file: PathBuf,
        root: PathBuf,
        #[arg(long)]
        step: u64,
        /// Chunk codec: raw (default) or shuffle-zstd.
        #[arg(long, default_value = "raw")]
        codec: String,
    },
    /// Keep the newest K committed steps; remove older ones and abandoned
    /// partial saves (older than --min-age-s), with their files.
    Gc {
        root: PathBuf,
        #[arg(long)]
        keep_last: usize,
        /// Leave attempts younger than this alone: they may still be saving.
        #[arg(long, default_value_t = 3600)]
        min_age_s: u64,
        /// Also delete Lance data files that no version references (only when no save runs).
        #[arg(long)]
        purge_unverified: bool,
    },
}

enum Col {
    S(&'static str, Vec<String>),
    U(&'static str, Vec<u64>),
    F(&'static str, Vec<Option<f64>>),
}

fn print(format: Format, cols: Vec<Col>) -> Result<()> {
    let mut fields = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    for c in cols {
        match c {
            Col::S(n, v) => {
                fields.push(Field::new(n, DataType::Utf8, false));
                arrays.push(Arc::new(StringArray::from(v)));
            }
            Col::U(n, v) => {
                fields.push(Field::new(n, DataType::UInt64, false));
                arrays.push(Arc::new(UInt64Array::from(v)));
            }
            Col::F(n, v) => {
                fields.push(Field::new(n, DataType::Float64, true));
                arrays.push(Arc::new(Float64Array::from(v)));
            }
        }
    }
    let schema: SchemaRef = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), arrays)?;
    let mut out = std::io::stdout().lock();
    output::write(&mut out, format, &schema, &[batch])?;
    out.flush()?;
    Ok(())
}

fn region_text(r: &Region) -> String {
    match r {
        Region::Box { offsets, lengths } => {
            let parts: Vec<String> = offsets
                .iter()
                .zip(lengths)
                .map(|(o, l)| format!("{o}:{}", o + l))
                .collect();
            format!("[{}]", parts.join(","))
        }
        Region::Flat { start, len } => format!("flat {start}+{len}"),
    }
}

fn fmt_time(ms: i64) -> String {
    // UTC, seconds precision, without a date crate: days since epoch → civil date.
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

async fn open(root: &Path, step: Option<u64>) -> Result<Checkpoint> {
    Checkpoint::open(root, step)
        .await
        .with_context(|| format!("while opening the checkpoint at {}", root.display()))
}

/// `ROOT` or `ROOT@STEP`.
fn parse_ref(s: &str) -> Result<(PathBuf, Option<u64>)> {
    match s.rsplit_once('@') {
        Some((root, step)) if !step.is_empty() && step.bytes().all(|b| b.is_ascii_digit()) => {
            Ok((PathBuf::from(root), Some(step.parse()?)))
        }
        _ => Ok((PathBuf::from(s), None)),
    }
}

fn new_run() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}{:x}", t as u64, std::process::id())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RankLayout {
    tensors: BTreeMap<String, RegionSpec>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum LayoutFile {
    Ranks { ranks: Vec<RankLayout> },
    Split { world_size: u32, split_dim: usize },
}

/// Per rank, the (fqn, region) pairs it should hold.
fn expand_layout(layout: LayoutFile, ck: &Checkpoint) -> Result<Vec<Vec<(String, Region)>>> {
    let tensors = ck.tensors();
    match layout {
        LayoutFile::Ranks { ranks } => {
            if ranks.is_empty() {
                bail!("the layout has no ranks");
            }
            let mut out = Vec::new();
            for (r, rl) in ranks.into_iter().enumerate() {
                let mut v = Vec::new();
                for (fqn, spec) in rl.tensors {
                    let Some(t) = tensors.iter().find(|t| t.fqn == fqn) else {
                        bail!("layout rank {r}: tensor {fqn} is not in the checkpoint");
                    };
                    let region = Region::from(&spec);
                    region.validate(&t.global_shape).map_err(|e| {
                        anyhow::anyhow!("layout rank {r}: tensor {fqn} {:?}: {e}", t.global_shape)
                    })?;
                    v.push((fqn, region));
                }
                out.push(v);
            }
            Ok(out)
        }
        LayoutFile::Split {
            world_size,
            split_dim,
        } => {
            if world_size == 0 {
                bail!("world_size must be at least 1");
            }
            let k = world_size as u64;
            let mut out = vec![Vec::new(); world_size as usize];
            for t in &tensors {
                for (r, v) in out.iter_mut().enumerate() {
                    if t.global_shape.is_empty() && r > 0 {
                        break; // a scalar goes to rank 0 only
                    }
                    v.push((
                        t.fqn.clone(),
                        Region::split_dim(&t.global_shape, split_dim, k, r as u64),
                    ));
                }
            }
            Ok(out)
        }
    }
}

pub async fn run(cmd: CkptCommand) -> Result<ExitCode> {
    match cmd {
        CkptCommand::List { root, format } => {
            let ck = CkptRoot::open(&root, false).await?;
            let steps = ck.committed_steps().await?;
            let m =
                |f: &dyn Fn(&crate::storage::checkpoint::meta::StepMeta) -> String| -> Vec<String> {
                    steps
                        .iter()
                        .map(|s| s.meta.as_ref().map_or("?".into(), f))
                        .collect()
                };
            print(
                format,
                vec![
                    Col::U("step", steps.iter().map(|s| s.step).collect()),
                    Col::S(
                        "tags",
                        steps
                            .iter()
                            .map(|s| {
                                if s.is_latest {
                                    format!("step-{} latest", s.step)
                                } else {
                                    format!("step-{}", s.step)
                                }
                            })
                            .collect(),
                    ),
                    Col::S("run", steps.iter().map(|s| s.run.clone()).collect()),
                    Col::S("world_size", m(&|x| x.world_size.to_string())),
                    Col::S("tensors", m(&|x| x.tensors.to_string())),
                    Col::S("chunks", m(&|x| x.chunks.to_string())),
                    Col::S("size", m(&|x| format!("{:.1} MB", x.bytes as f64 / 1e6))),
                    Col::S("framework", m(&|x| x.framework.clone())),
                    Col::S("saved_utc", m(&|x| fmt_time(x.created_unix_ms))),
                ],
            )?;
        }
        CkptCommand::Inspect {
            root,
            step,
            tensor,
            format,
        } => {
            let ck = open(&root, step).await?;
            match tensor {
                None => {
                    let ts = ck.tensors();
                    print(
                        format,
                        vec![
                            Col::S("tensor", ts.iter().map(|t| t.fqn.clone()).collect()),
                            Col::S("dtype", ts.iter().map(|t| t.dtype.to_string()).collect()),
                            Col::S(
                                "shape",
                                ts.iter().map(|t| format!("{:?}", t.global_shape)).collect(),
                            ),
                            Col::U("chunks", ts.iter().map(|t| t.chunks as u64).collect()),
                            Col::U("stored_bytes", ts.iter().map(|t| t.stored_bytes).collect()),
                            Col::S("codec", ts.iter().map(|t| t.codec.to_string()).collect()),
                        ],
                    )?;
                }
                Some(fqn) => {
                    let cs: Vec<_> = ck.chunks.iter().filter(|c| c.fqn == fqn).collect();
                    if cs.is_empty() {
                        bail!(
                            "tensor {fqn} is not in step {} of {}",
                            ck.step.step,
                            root.display()
                        );
                    }
                    print(
                        format,
                        vec![
                            Col::U("rank", cs.iter().map(|c| c.rank as u64).collect()),
                            Col::S(
                                "region",
                                cs.iter().map(|c| region_text(&c.region)).collect(),
                            ),
                            Col::S("file", cs.iter().map(|c| c.file.clone()).collect()),
                            Col::U("byte_offset", cs.iter().map(|c| c.byte_offset).collect()),
                            Col::U("byte_len", cs.iter().map(|c| c.byte_len).collect()),
                            Col::U(
                                "blocks",
                                cs.iter().map(|c| c.checksums.len() as u64).collect(),
                            ),
                        ],
                    )?;
                }
            }
        }
        CkptCommand::Verify { root, step } => {
            let ck = open(&root, step).await?;
            let started = std::time::Instant::now();
            let r = tokio::task::block_in_place(|| ck.verify())?;
            for f in &r.failures {
                println!("CORRUPT {f}");
            }
            println!(
                "step {}: {} chunks, {} blocks, {:.1} MB verified in {:.2} s: {}",
                ck.step.step,
                r.chunks,
                r.blocks,
                r.bytes as f64 / 1e6,
                started.elapsed().as_secs_f64(),
                if r.failures.is_empty() {
                    "ok".to_string()
                } else {
                    format!("{} corrupt", r.failures.len())
                }
            );
            if !r.failures.is_empty() {
                return Ok(ExitCode::from(1));
            }
        }
        CkptCommand::Diff { a, b, format } => {
            let (ra, sa) = parse_ref(&a)?;
            let (rb, sb) = parse_ref(&b)?;
            let (ca, cb) = (open(&ra, sa).await?, open(&rb, sb).await?);
            let ta: BTreeMap<String, _> = ca
                .tensors()
                .into_iter()
                .map(|t| (t.fqn.clone(), t))
                .collect();
            let tb: BTreeMap<String, _> = cb
                .tensors()
                .into_iter()
                .map(|t| (t.fqn.clone(), t))
                .collect();
            let names: std::collections::BTreeSet<&String> = ta.keys().chain(tb.keys()).collect();
            let (mut name, mut status, mut detail, mut maxd) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            let mut differ = false;
            for n in names {
                let (st, det, md) = match (ta.get(n), tb.get(n)) {
                    (Some(x), None) => {
                        ("removed", format!("{} {:?}", x.dtype, x.global_shape), None)
                    }
                    (None, Some(y)) => ("added", format!("{} {:?}", y.dtype, y.global_shape), None),
                    (Some(x), Some(y))
                        if x.dtype != y.dtype || x.global_shape != y.global_shape =>
                    {
                        (
                            "changed",
                            format!(
                                "{} {:?} -> {} {:?}",
                                x.dtype, x.global_shape, y.dtype, y.global_shape
                            ),
                            None,
                        )
                    }
                    (Some(x), Some(_)) => {
                        let full = Region::full(&x.global_shape);
                        let size = full.numel() as usize * x.dtype.size();
                        let (mut ba, mut bb) = (vec![0u8; size], vec![0u8; size]);
                        tokio::task::block_in_place(|| -> Result<()> {
                            for (ck, buf) in [(&ca, &mut ba), (&cb, &mut bb)] {
                                let t = Target {
                                    fqn: n.clone(),
                                    dtype: x.dtype,
                                    region: full.clone(),
                                    buf,
                                };
                                ck.load(&mut [t], &LoadOptions::default())?;
                            }
                            Ok(())
                        })?;
                        let numel = full.numel() as usize;
                        let (mut diff_n, mut max) = (0usize, 0f64);
                        let es = x.dtype.size();
                        for i in 0..numel {
                            if ba[i * es..(i + 1) * es] != bb[i * es..(i + 1) * es] {
                                diff_n += 1;
                                let d = (x.dtype.get_f64(&ba, i) - x.dtype.get_f64(&bb, i)).abs();
                                max = if d.is_nan() { f64::NAN } else { max.max(d) };
                            }
                        }
                        if diff_n == 0 {
                            (
                                "same",
                                format!("{} {:?}", x.dtype, x.global_shape),
                                Some(0.0),
                            )
                        } else {
                            (
                                "changed",
                                format!("{diff_n} of {numel} elements differ"),
                                Some(max),
                            )
                        }
                    }
                    (None, None) => unreachable!("name comes from one of the maps"),
                };
                differ |= st != "same";
                name.push(n.clone());
                status.push(st.to_string());
                detail.push(det);
                maxd.push(md);
            }
            print(
                format,
                vec![
                    Col::S("tensor", name),
                    Col::S("status", status),
                    Col::S("detail", detail),
                    Col::F("max_abs_diff", maxd),
                ],
            )?;
            if differ {
                return Ok(ExitCode::from(1));
            }
        }
        CkptCommand::Reshard {
            root,
            step,
            layout,
            out,
        } => {
            let ck = open(&root, step).await?;
            let text = std::fs::read_to_string(&layout)
                .with_context(|| format!("reading {}", layout.display()))?;
            let lf: LayoutFile = serde_json::from_str(&text).with_context(|| {
                format!(
                    "{}: not a layout (see `granary ckpt reshard --help`)",
                    layout.display()
                )
            })?;
            let ranks = expand_layout(lf, &ck)?;
            let world = ranks.len() as u32;
            let run = new_run();
            // Tensor → (dtype, global shape), once for all ranks.
            let info: BTreeMap<String, (DType, Vec<u64>)> = ck
                .tensors()
                .into_iter()
                .map(|t| (t.fqn, (t.dtype, t.global_shape)))
                .collect();
            let stepn = ck.step.step;
            let extra = ck.extra().to_vec();
            let reports = tokio::task::block_in_place(|| {
                std::thread::scope(|s| {
                    let hs: Vec<_> = ranks
                        .iter()
                        .enumerate()
                        .map(|(r, regions)| {
                            let (ck, out, run, info, extra) = (&ck, &out, &run, &info, &extra);
                            s.spawn(move || -> Result<crate::storage::checkpoint::SaveReport> {
                                let mut bufs: Vec<Vec<u8>> = regions
                                    .iter()
                                    .map(|(f, reg)| {
                                        vec![0u8; reg.numel() as usize * info[f].0.size()]
                                    })
                                    .collect();
                                let mut targets: Vec<Target> = regions
                                    .iter()
                                    .zip(bufs.iter_mut())
                                    .map(|((f, reg), b)| Target {
                                        fqn: f.clone(),
                                        dtype: info[f].0,
                                        region: reg.clone(),
                                        buf: b,
                                    })
                                    .collect();
                                ck.load(&mut targets, &LoadOptions::default())?;
                                drop(targets);
                                let shards: Vec<Shard> = regions
                                    .iter()
                                    .zip(&bufs)
                                    .map(|((f, reg), b)| Shard {
                                        fqn: f.clone(),
                                        dtype: info[f].0,
                                        global_shape: info[f].1.clone(),
                                        region: reg.clone(),
                                        data: b,
                                    })
                                    .collect();
                                let rt = tokio::runtime::Builder::new_current_thread()
                                    .enable_all()
                                    .build()?;
                                let saver = rt.block_on(Saver::new(
                                    out,
                                    r as u32,
                                    world,
                                    run,
                                    SaveOptions::default(),
                                ))?;
                                Ok(saver.save_async(stepn, &shards, extra)?.wait()?)
                            })
                        })
                        .collect();
                    hs.into_iter()
                        .map(|h| h.join().unwrap_or_else(|_| bail!("a rank thread panicked")))
                        .collect::<Result<Vec<_>>>()
                })
            })?;
            let bytes: u64 = reports.iter().map(|r| r.bytes_written).sum();
            println!(
                "resharded step {stepn} of {} into {world} ranks at {} ({:.1} MB written)",
                root.display(),
                out.display(),
                bytes as f64 / 1e6
            );
        }
        CkptCommand::Export {
            root,
            step,
            format,
            out,
        } => {
            if format != "safetensors" {
                bail!("unknown export format {format:?} (supported: safetensors)");
            }
            let ck = open(&root, step).await?;
            let r = tokio::task::block_in_place(|| safetensors::export(&ck, &out))?;
            println!(
                "exported step {} ({} tensors, {:.1} MB) to {}",
                ck.step.step,
                r.tensors,
                r.bytes as f64 / 1e6,
                out.display()
            );
        }
        CkptCommand::Import {
            file,
            root,
            step,
            codec,
        } => {
            let codec: Codec = codec.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            let opts = SaveOptions {
                codec,
                framework: "safetensors".into(),
                ..SaveOptions::default()
            };
            let r = safetensors::import(&file, &root, step, &new_run(), opts)
                .await
                .with_context(|| format!("while importing {}", file.display()))?;
            println!(
                "imported {} as step {step} of {} ({} chunks, {:.1} MB, {:.2} s)",
                file.display(),
                root.display(),
                r.chunks_written,
                r.bytes_written as f64 / 1e6,
                r.total.as_secs_f64()
            );
        }
        CkptCommand::Gc {
            root,
            keep_last,
            min_age_s,
            purge_unverified,
        } => {
            let ck = CkptRoot::open(&root, false).await?;
            let r = ck
                .gc(keep_last, Duration::from_secs(min_age_s), purge_unverified)
                .await?;
            println!(
                "gc: kept steps {:?}, removed steps {:?}, {} rows and {} directories removed, {:.1} MB freed",
                r.kept_steps,
                r.removed_steps,
                r.rows_deleted,
                r.dirs_removed,
                r.bytes_freed as f64 / 1e6
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
