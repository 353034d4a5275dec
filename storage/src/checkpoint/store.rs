//! A checkpoint root on disk: the two Lance tables, the data and staging
//! directories, the commit protocol and garbage collection.
//!
//! ```text
//! ROOT/CHECKPOINT.json             marker + format version
//! ROOT/chunks.lance                one row per stored chunk (Lance)
//! ROOT/steps.lance                 one row per save attempt (Lance)
//! ROOT/data/step-N-RUN/rank-R.bin  tensor bytes, chunks at 4 KiB-aligned offsets
//! ROOT/staging/step-N-RUN/…        rank intents and manifests, COMMITTED / FAILED
//! ROOT/plans/struct-HASH.json      each rank's shard structure, for dedup planning
//! ```
//!
//! A step is committed when the tag `step-N` exists on `chunks.lance`. The
//! tag points at the version whose transaction appended that save's chunk
//! rows, and that transaction's properties name the winning run; rows of
//! any other run for the same step are leftovers of crashed or beaten savers
//! and are invisible (and removed by `gc`). See `docs/checkpoint-format.md`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatchIterator;
use futures::TryStreamExt;
use lance::Dataset;
use lance::dataset::transaction::{Operation, TransactionBuilder};
use lance::dataset::{CommitBuilder, InsertBuilder, WriteMode, WriteParams};
use lance::table::format::Fragment;

use super::meta::{self, CKPT_FORMAT_VERSION, ChunkMeta, StepMeta};
use crate::error::{Error, Result};
use crate::granary::uri;

const MARKER: &str = "CHECKPOINT.json";
const PROP_RUN: &str = "granary.run";
const PROP_STEP: &str = "granary.step";
pub const LATEST: &str = "latest";

/// A committed step as the tags and the `steps` table describe it.
#[derive(Debug, Clone)]
pub struct CommittedStep {
    pub step: u64,
    pub run: String,
    /// Version of `chunks.lance` the `step-N` tag points at.
    pub version: u64,
    pub meta: Option<StepMeta>,
    pub is_latest: bool,
}

/// An opened checkpoint root.
#[derive(Debug, Clone)]
pub struct CkptRoot {
    root: PathBuf,
}

/// Check a run id: 1..=64 characters of `[A-Za-z0-9_-]`.
pub fn check_run(run: &str) -> Result<()> {
    if run.is_empty()
        || run.len() > 64
        || !run
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Error::InvalidInput(format!(
            "run id {run:?} must be 1 to 64 characters of letters, digits, '-' and '_'"
        )));
    }
    Ok(())
}

pub(crate) fn step_tag(step: u64) -> String {
    format!("step-{step}")
}

fn parse_step_tag(t: &str) -> Option<u64> {
    t.strip_prefix("step-")?.parse().ok()
}

/// Write `bytes` to `path` atomically and durably: temp file, fsync, rename, fsync dir.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().expect("a file path has a parent");
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(
        ".{}.tmp{}-{seq}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("f"),
        std::process::id()
    ));
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    fsync_dir(dir)
}

pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

impl CkptRoot {
    /// Whether `root` holds a checkpoint root (its marker file exists).
    pub fn is_root(root: &Path) -> bool {
        root.join(MARKER).is_file()
    }

    /// Open a checkpoint root, creating it when `create` and missing.
    /// Several ranks may call this at once: creation is idempotent.
    pub async fn open(root: &Path, create: bool) -> Result<CkptRoot> {
        let marker = root.join(MARKER);
        if !marker.exists() {
            if !create {
                let why = if root.is_dir() {
                    "no CHECKPOINT.json in it"
                } else {
                    "no such directory"
                };
                return Err(Error::InvalidInput(format!(
                    "{} is not a checkpoint root: {why}",
                    root.display()
                )));
            }
            std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
        }
        let root = std::fs::canonicalize(root).map_err(|e| Error::io(root, e))?;
        let me = CkptRoot { root };
        if !marker.exists() {
            for (name, schema) in [
                (meta::CHUNKS, meta::chunks_schema()),
                (meta::STEPS, meta::steps_schema()),
            ] {
                let path = me.table_path(name);
                if path.join("_versions").is_dir() {
                    continue;
                }
                let params = WriteParams {
                    mode: WriteMode::Create,
                    ..Default::default()
                };
                let empty = RecordBatchIterator::new(Vec::new(), schema);
                if let Err(e) = Dataset::write(empty, uri(&path).as_str(), Some(params)).await {
                    // Another rank created it first.
                    if Dataset::open(&uri(&path)).await.is_err() {
                        return Err(e.into());
                    }
                }
            }
            let body = serde_json::json!({ "granary_checkpoint_format": CKPT_FORMAT_VERSION });
            write_atomic(&me.root.join(MARKER), body.to_string().as_bytes())?;
        }
        let text = std::fs::read_to_string(me.root.join(MARKER))
            .map_err(|e| Error::io(me.root.join(MARKER), e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::Corrupt(format!("{}: {e}", me.root.join(MARKER).display())))?;
        let found = v.get("granary_checkpoint_format").and_then(|x| x.as_u64());
        if found != Some(CKPT_FORMAT_VERSION as u64) {
            return Err(Error::UnsupportedVersion {
                path: me.root.clone(),
                found: found.map_or("missing".into(), |f| f.to_string()),
                supported: CKPT_FORMAT_VERSION,
            });
        }
        Ok(me)
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn table_path(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.lance"))
    }

    /// Where one save attempt's rank files live.
    pub fn data_dir(&self, step: u64, run: &str) -> PathBuf {
        self.root.join("data").join(format!("step-{step}-{run}"))
    }

    pub fn staging_dir(&self, step: u64, run: &str) -> PathBuf {
        self.root.join("staging").join(format!("step-{step}-{run}"))
    }

    pub fn plans_dir(&self) -> PathBuf {
        self.root.join("plans")
    }

    /// Resolve a metadata file name (already checked by [`meta::check_rel_path`]).
    pub fn resolve(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub async fn dataset(&self, name: &str) -> Result<Dataset> {
        Ok(Dataset::open(&uri(&self.table_path(name))).await?)
    }

    /// Write chunk rows as uncommitted Lance fragments (a rank's part of the commit).
    pub async fn stage_chunks(&self, rows: &[ChunkMeta]) -> Result<Vec<Fragment>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let batch = meta::chunks_batch(rows)?;
        let params = WriteParams {
            mode: WriteMode::Append,
            ..Default::default()
        };
        let txn = InsertBuilder::new(uri(&self.table_path(meta::CHUNKS)).as_str())
            .with_params(&params)
            .execute_uncommitted(vec![batch])
            .await?;
        match txn.operation {
            Operation::Append { fragments } => Ok(fragments),
            other => Err(Error::Internal(format!(
                "uncommitted append gave {}",
                other.name()
            ))),
        }
    }

    /// Whether `step` is already committed.
    pub async fn is_committed(&self, step: u64) -> Result<bool> {
        let ds = self.dataset(meta::CHUNKS).await?;
        Ok(ds.tags().get_version(&step_tag(step)).await.is_ok())
    }

    /// The coordinator's commit: the step row, then every rank's chunk
    /// fragments in one Lance transaction, then the exclusive `step-N` tag
    /// (the commit point), then `latest`, then a file-system sync.
    pub async fn commit(&self, step_meta: &StepMeta, fragments: Vec<Fragment>) -> Result<u64> {
        let step = step_meta.step;
        if self.is_committed(step).await? {
            return Err(Error::Conflict(format!(
                "step {step} is already committed in {}",
                self.root.display()
            )));
        }
        let params = WriteParams {
            mode: WriteMode::Append,
            ..Default::default()
        };
        InsertBuilder::new(uri(&self.table_path(meta::STEPS)).as_str())
            .with_params(&params)
            .execute(vec![meta::steps_batch(step_meta)?])
            .await?;
        let ds = Arc::new(self.dataset(meta::CHUNKS).await?);
        let props: HashMap<String, String> = [
            (PROP_RUN.to_string(), step_meta.run.clone()),
            (PROP_STEP.to_string(), step.to_string()),
        ]
        .into_iter()
        .collect();
        let txn = TransactionBuilder::new(ds.version().version, Operation::Append { fragments })
            .transaction_properties(Some(Arc::new(props)))
            .build();
        let committed = CommitBuilder::new(ds).execute(txn).await?;
        let version = committed.version().version;
        if let Err(e) = committed.tags().create(&step_tag(step), version).await {
            return Err(match e {
                lance::Error::RefConflict { .. } => Error::Conflict(format!(
                    "step {step} was committed by another saver while run {} was writing; this save is discarded",
                    step_meta.run
                )),
                e => e.into(),
            });
        }
        let moved = match committed.tags().update(LATEST, version).await {
            Err(lance::Error::RefNotFound { .. }) => committed.tags().create(LATEST, version).await,
            r => r,
        };
        moved?;
        sync_fs(&self.root)?;
        Ok(version)
    }

    /// The run whose chunks the version's transaction appended.
    async fn winner(&self, ds: &Dataset, version: u64) -> Result<String> {
        let txn = ds.read_transaction_by_version(version).await?;
        txn.and_then(|t| t.transaction_properties)
            .and_then(|p| p.get(PROP_RUN).cloned())
            .ok_or_else(|| {
                Error::Corrupt(format!(
                    "chunks version {version} has no {PROP_RUN} transaction property"
                ))
            })
    }

    /// Every committed step, oldest first.
    pub async fn committed_steps(&self) -> Result<Vec<CommittedStep>> {
        let ds = self.dataset(meta::CHUNKS).await?;
        let tags = ds.tags().list().await?;
        let latest = tags.get(LATEST).map(|t| t.version);
        let mut by_step: BTreeMap<u64, u64> = BTreeMap::new();
        for (name, t) in &tags {
            if let Some(s) = parse_step_tag(name) {
                by_step.insert(s, t.version);
            }
        }
        let metas = self.step_rows(None).await?;
        let mut out = Vec::new();
        for (step, version) in by_step {
            let run = self.winner(&ds, version).await?;
            let meta = metas
                .iter()
                .find(|m| m.step == step && m.run == run)
                .cloned();
            out.push(CommittedStep {
                step,
                run,
                version,
                meta,
                is_latest: latest == Some(version),
            });
        }
        Ok(out)
    }

    /// The step `latest` names (or the newest committed one if that tag
    /// lags behind after a crash), or a given step.
    pub async fn resolve_step(&self, step: Option<u64>) -> Result<CommittedStep> {
        let all = self.committed_steps().await?;
        let pick = match step {
            Some(s) => all.iter().find(|c| c.step == s),
            None => all
                .iter()
                .find(|c| c.is_latest)
                .or(all.iter().max_by_key(|c| c.version)),
        };
        pick.cloned().ok_or_else(|| match step {
            Some(s) => Error::InvalidInput(format!(
                "{} has no committed step {s} (committed: {})",
                self.root.display(),
                if all.is_empty() {
                    "none".to_string()
                } else {
                    all.iter()
                        .map(|c| c.step.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )),
            None => Error::InvalidInput(format!(
                "{} has no committed checkpoint yet",
                self.root.display()
            )),
        })
    }

    /// Step rows (all attempts, committed or not), optionally of one step.
    pub async fn step_rows(&self, step: Option<u64>) -> Result<Vec<StepMeta>> {
        let ds = self.dataset(meta::STEPS).await?;
        let mut scan = ds.scan();
        if let Some(s) = step {
            scan.filter(&format!("step = {s}"))?;
        }
        let batches: Vec<_> = scan.try_into_stream().await?.try_collect().await?;
        let mut out = Vec::new();
        for b in &batches {
            out.extend(meta::steps_from_batch(b)?);
        }
        Ok(out)
    }

    /// The chunk rows of a committed step, validated.
    pub async fn chunks_of(&self, c: &CommittedStep) -> Result<Vec<ChunkMeta>> {
        let ds = self
            .dataset(meta::CHUNKS)
            .await?
            .checkout_version(c.version)
            .await?;
        let mut scan = ds.scan();
        scan.filter(&format!("step = {} AND run = '{}'", c.step, c.run))?;
        let batches: Vec<_> = scan.try_into_stream().await?.try_collect().await?;
        let mut out = Vec::new();
        for b in &batches {
            out.extend(meta::chunks_from_batch(b)?);
        }
        Ok(out)
    }
}

/// Flush everything this file system holds dirty: the Lance manifests and
/// tag files the commit just wrote (object_store does not fsync them).
fn sync_fs(root: &Path) -> Result<()> {
    let f = std::fs::File::open(root).map_err(|e| Error::io(root, e))?;
    use std::os::unix::io::AsRawFd;
    // SAFETY: syncfs on a valid open descriptor has no memory-safety preconditions.
    let rc = unsafe { libc::syncfs(f.as_raw_fd()) };
    if rc != 0 {
        return Err(Error::io(root, std::io::Error::last_os_error()));
    }
    Ok(())
}

/// What `gc` removed.
#[derive(Debug, Clone, Default)]
pub struct GcReport {
    pub kept_steps: Vec<u64>,
    pub removed_steps: Vec<u64>,
    /// Chunk and step rows of removed steps and of uncommitted attempts.
    pub rows_deleted: u64,
    pub dirs_removed: usize,
    pub bytes_freed: u64,
}

fn age(path: &Path) -> Duration {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .unwrap_or_default()
}

/// `step-N-RUN` → (N, RUN).
fn parse_attempt(name: &str) -> Option<(u64, String)> {
    let rest = name.strip_prefix("step-")?;
    let (n, run) = rest.split_once('-')?;
    Some((n.parse().ok()?, run.to_string()))
}

impl CkptRoot {
    /// Keep the newest `keep_last` committed steps (and the one `latest`
    /// names); remove the others, and every attempt that never committed,
    /// once its files are older than `min_age` (a save still running is
    /// younger). Old Lance versions are cleaned too; `purge_unverified`
    /// also deletes Lance data files no version references (only safe
    /// when no save is running).
    pub async fn gc(
        &self,
        keep_last: usize,
        min_age: Duration,
        purge_unverified: bool,
    ) -> Result<GcReport> {
        let committed = self.committed_steps().await?;
        let mut by_step: Vec<&CommittedStep> = committed.iter().collect();
        by_step.sort_by_key(|c| c.step);
        let cut = by_step.len().saturating_sub(keep_last);
        let keep: Vec<&CommittedStep> = by_step
            .iter()
            .enumerate()
            .filter(|(i, c)| *i >= cut || c.is_latest)
            .map(|(_, c)| *c)
            .collect();
        let keep_set: std::collections::HashSet<(u64, String)> =
            keep.iter().map(|c| (c.step, c.run.clone())).collect();
        let mut report = GcReport {
            kept_steps: keep.iter().map(|c| c.step).collect(),
            ..Default::default()
        };
        // Attempts too young to judge: their staging directory was touched recently.
        let mut young: std::collections::HashSet<(u64, String)> = Default::default();
        let staging = self.root.join("staging");
        if let Ok(rd) = std::fs::read_dir(&staging) {
            for e in rd.flatten() {
                if let Some(a) = e.file_name().to_str().and_then(parse_attempt)
                    && age(&e.path()) < min_age
                {
                    young.insert(a);
                }
            }
        }
        let mut chunks = self.dataset(meta::CHUNKS).await?;
        for c in &committed {
            if !keep_set.contains(&(c.step, c.run.clone())) {
                chunks.tags().delete(&step_tag(c.step)).await?;
                report.removed_steps.push(c.step);
            }
        }
        // Rows to keep: kept steps and young attempts.
        let keep_pred: Vec<String> = keep_set
            .iter()
            .chain(young.iter())
            .map(|(s, r)| format!("(step = {s} AND run = '{r}')"))
            .collect();
        let pred = if keep_pred.is_empty() {
            "true".to_string()
        } else {
            format!("NOT ({})", keep_pred.join(" OR "))
        };
        let mut steps = self.dataset(meta::STEPS).await?;
        for ds in [&mut chunks, &mut steps] {
            let before = ds.count_rows(None).await? as u64;
            ds.delete(&pred).await?;
            report.rows_deleted += before - ds.count_rows(None).await? as u64;
        }
        // Chunk files and staging directories of attempts that are neither kept nor young.
        for sub in ["data", "staging"] {
            let dir = self.root.join(sub);
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                let Some(a) = e.file_name().to_str().and_then(parse_attempt) else {
                    continue;
                };
                let committed_kept = keep_set.contains(&a);
                // Staging of a kept step is only needed until every rank saw COMMITTED.
                let drop = if sub == "data" {
                    !committed_kept && !young.contains(&a)
                } else {
                    age(&e.path()) >= min_age
                };
                if drop {
                    report.bytes_freed += crate::granary::dir_size(&e.path()).unwrap_or(0);
                    std::fs::remove_dir_all(e.path()).map_err(|x| Error::io(e.path(), x))?;
                    report.dirs_removed += 1;
                }
            }
        }
        for ds in [&chunks, &steps] {
            let policy = lance::dataset::cleanup::CleanupPolicy {
                before_version: Some(ds.version().version),
                delete_unverified: purge_unverified,
                error_if_tagged_old_versions: false,
                ..Default::default()
            };
            let stats = ds.cleanup_with_policy(policy).await?;
            report.bytes_freed += stats.bytes_removed;
        }
        report.removed_steps.sort_unstable();
        Ok(report)
    }
}
