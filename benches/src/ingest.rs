//! Bench `ingest`: ingest a synthetic folder source and compare with the
//! baseline measured in the same run on the same files: a plain read +
//! xxh3-128 hash of every file. Prints JSON lines; the last one holds the
//! ratio and whether the targets hold (ingest ≥ 0.7 × baseline MB/s, peak
//! RSS < 512 MiB).
//!
//! Usage: `cargo run --release -p granary-benches --bin ingest -- [--n 20000] [--src DIR] [--dir WORKDIR] [--warm]`
//!
//! Where `/proc/sys/vm/drop_caches` is writable the page cache is dropped
//! before each run and the output says `"cold": true`; with `--warm` (or
//! where it is not writable) both runs read the source from the page cache,
//! which shows CPU overhead rather than disk speed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, bail};
use granary_benches::{drop_caches, wait_with_rusage};
use serde_json::json;

/// Ingests a folder of synthetic images (or --src DIR) and compares with a
/// plain read + hash of the same files. Prints JSON lines.
#[derive(clap::Parser)]
#[command(name = "ingest")]
struct Cli {
    /// Synthetic images to generate when no --src is given.
    #[arg(long, default_value_t = 20_000)]
    n: usize,
    /// Ingest this folder instead of generating one.
    #[arg(long)]
    src: Option<PathBuf>,
    /// Work here and keep the source (default: a temporary directory,
    /// removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Read both from the page cache instead of dropping it before each run.
    #[arg(long)]
    warm: bool,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child-ingest") {
        return child_ingest(Path::new(&args[2]), Path::new(&args[3]));
    }
    let cli = <Cli as clap::Parser>::parse();
    let n = cli.n;
    let work = match &cli.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("granary-bench-ingest-{}", std::process::id())),
    };
    std::fs::create_dir_all(&work)?;
    let src = match &cli.src {
        Some(s) => s.clone(),
        None => {
            let src = work.join("src");
            if !src.exists() {
                let t = Instant::now();
                let opts = granary::synth::SynthOptions {
                    n,
                    videos: 0,
                    seed: 1,
                    ..Default::default()
                };
                granary::synth::synth(&src, &opts, &|_| {})?;
                eprintln!("synth: {n} images in {:.1} s", t.elapsed().as_secs_f64());
            }
            src
        }
    };

    let warm = cli.warm;
    let drop_caches = || !warm && drop_caches();
    if warm {
        read_and_hash(&src)?; // fill the page cache
    }

    // Baseline: read and hash every file of the source.
    let cold = drop_caches();
    let t = Instant::now();
    let (files, bytes, samples, media_bytes) = read_and_hash(&src)?;
    let base_secs = t.elapsed().as_secs_f64();
    let base_mbs = bytes as f64 / 1e6 / base_secs;
    println!(
        "{}",
        json!({"bench": "ingest", "what": "baseline_read_hash", "files": files, "bytes": bytes,
               "secs": base_secs, "mb_per_s": base_mbs, "cold": cold})
    );

    // Ingest, in a child process so its peak RSS is its own.
    let root = work.join(format!("g-{}", std::process::id()));
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(granary_storage::Granary::init(
        &root,
        granary_storage::schema::DEFAULT_EMBEDDING_DIM,
    ))?;
    let cold = drop_caches();
    let t = Instant::now();
    let child = Command::new(std::env::current_exe()?)
        .args([
            "--child-ingest",
            root.to_str().unwrap(),
            src.to_str().unwrap(),
        ])
        .spawn()?;
    let (status, max_rss_kib) = wait_with_rusage(child.id() as i32)?;
    let secs = t.elapsed().as_secs_f64();
    if status != 0 {
        bail!("child ingest failed with status {status}");
    }
    let mbs = bytes as f64 / 1e6 / secs;
    let rss_mib = max_rss_kib as f64 / 1024.0;
    println!(
        "{}",
        json!({"bench": "ingest", "what": "ingest", "samples": samples, "secs": secs,
               "samples_per_s": samples as f64 / secs, "mb_per_s": mbs,
               "media_mb_per_s": media_bytes as f64 / 1e6 / secs,
               "peak_rss_mib": rss_mib, "cold": cold})
    );
    let ratio = mbs / base_mbs;
    println!(
        "{}",
        json!({"bench": "ingest", "what": "ratio", "ingest_over_baseline_mb_per_s": ratio,
               "target_ratio": 0.7, "peak_rss_mib": rss_mib, "target_rss_mib": 512,
               "pass": ratio >= 0.7 && rss_mib < 512.0})
    );
    if cli.dir.is_none() {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        let _ = std::fs::remove_dir_all(&root);
    }
    Ok(())
}

fn child_ingest(root: &Path, src: &Path) -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let g = granary_storage::Granary::open(root).await?;
        let s = granary_storage::ingest::ingest(
            &g,
            src,
            &granary_storage::IngestOptions::default(),
            Arc::new(granary_storage::ingest::NoProgress),
        )
        .await?;
        eprintln!("child: {s:?}");
        Ok(())
    })
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

/// Returns (files, all bytes, media files, media bytes); the hashes are folded so the work is not optimised away.
fn read_and_hash(src: &Path) -> Result<(usize, u64, usize, u64)> {
    let mut all = Vec::new();
    walk(src, &mut all)?;
    all.sort();
    let (mut bytes, mut media, mut media_files, mut fold) = (0u64, 0u64, 0usize, 0u128);
    for p in &all {
        let b = std::fs::read(p)?;
        fold ^= xxhash_rust::xxh3::xxh3_128(&b);
        bytes += b.len() as u64;
        if granary_storage::media::Format::from_extension(
            p.extension().and_then(|e| e.to_str()).unwrap_or(""),
        )
        .is_some()
        {
            media += b.len() as u64;
            media_files += 1;
        }
    }
    std::hint::black_box(fold);
    Ok((all.len(), bytes, media_files, media))
}
