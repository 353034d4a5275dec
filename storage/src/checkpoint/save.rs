//! Saving: a rank hands over its shards, `save_async` copies them into a
//! reused aligned buffer (the only part that blocks training) and a
//! background thread plans, encodes, writes, stages and (on rank 0) commits.
//!
//! Ranks are OS processes (or threads) that coordinate only through files
//! in the checkpoint root:
//! 1. each rank publishes its shard structure (`plans/struct-HASH.json`,
//!    once per structure) and an intent naming that hash;
//! 2. once every rank's intent is there, each computes the same dedup plan:
//!    a shard held by several ranks (same tensor, same region) is written
//!    by one of them, largest first to the least-loaded holder. The plan is
//!    cached by the ranks' structure hashes, so later saves skip it;
//! 3. each rank writes its chunk file (io_uring), fsyncs it, stages its
//!    chunk rows as uncommitted Lance fragments and writes its manifest;
//! 4. rank 0 waits for all manifests and commits (see `store::commit`),
//!    then marks the staging directory COMMITTED (or FAILED, with the reason).

use std::collections::{BTreeMap, HashMap};
use std::io::IoSlice;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lance::table::format::Fragment;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use super::codec::{self, Codec, DEFAULT_BLOCK_BYTES};
use super::dtype::DType;
use super::io::{self, ALIGN, AlignedBuf, BufferPool, Engine};
use super::layout::Region;
use super::meta::{ChunkMeta, StepMeta};
use super::store::{CkptRoot, check_run, fsync_dir, write_atomic};
use crate::error::{Error, Result};

/// One shard a rank holds: a box or a flat range of a tensor, and its bytes
/// (the region's elements in row-major order, little-endian).
#[derive(Debug, Clone)]
pub struct Shard<'a> {
    pub fqn: String,
    pub dtype: DType,
    pub global_shape: Vec<u64>,
    pub region: Region,
    pub data: &'a [u8],
}

/// A shard's description without its bytes: what ranks exchange to plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSpec {
    pub fqn: String,
    pub dtype: DType,
    pub global_shape: Vec<u64>,
    pub region: RegionSpec,
}

/// Serializable [`Region`]; also the layout JSON's spelling of a region.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegionSpec {
    Box {
        offsets: Vec<u64>,
        lengths: Vec<u64>,
    },
    Flat {
        start: u64,
        len: u64,
    },
}

impl From<&Region> for RegionSpec {
    fn from(r: &Region) -> Self {
        match r {
            Region::Box { offsets, lengths } => RegionSpec::Box {
                offsets: offsets.clone(),
                lengths: lengths.clone(),
            },
            Region::Flat { start, len } => RegionSpec::Flat {
                start: *start,
                len: *len,
            },
        }
    }
}

impl From<&RegionSpec> for Region {
    fn from(r: &RegionSpec) -> Self {
        match r {
            RegionSpec::Box { offsets, lengths } => Region::Box {
                offsets: offsets.clone(),
                lengths: lengths.clone(),
            },
            RegionSpec::Flat { start, len } => Region::Flat {
                start: *start,
                len: *len,
            },
        }
    }
}

/// How to save.
#[derive(Debug, Clone)]
pub struct SaveOptions {
    pub codec: Codec,
    pub block_bytes: u64,
    /// Free-form framework tag stored with the step ("granary", "torch", …).
    pub framework: String,
    /// How long a rank waits for the others before giving up.
    pub timeout: Duration,
    /// Store a wide box shard (2-D or more) as column slabs: the largest
    /// divisor `k` of this number whose slabs keep rows of at least
    /// `slab_min_row_bytes`, cut at `cols * j / k` like an even split. A
    /// later load sharded along the last dimension (tensor parallelism)
    /// then reads about the bytes it owns instead of whole rows, and, for
    /// degrees dividing `k`, exactly those. 0 or 1: one chunk per shard.
    pub column_slabs: u32,
    pub slab_min_row_bytes: u64,
    /// Write uncompressed chunk files with `O_DIRECT` where the file system
    /// takes it (else buffered, said once in the log). Bypassing the page
    /// cache keeps the save off the kernel's writeback path, which on the
    /// reference VM swings between 0.4 and 2.4 GB/s for buffered write +
    /// fsync, and leaves the cache to the training data.
    pub direct_io: bool,
}

impl Default for SaveOptions {
    fn default() -> Self {
        SaveOptions {
            codec: Codec::Raw,
            block_bytes: DEFAULT_BLOCK_BYTES,
            framework: "granary".into(),
            timeout: Duration::from_secs(600),
            column_slabs: 12,
            slab_min_row_bytes: 512,
            direct_io: true,
        }
    }
}

/// What a finished save reports.
#[derive(Debug, Clone)]
pub struct SaveReport {
    pub step: u64,
    pub rank: u32,
    /// Time `save_async` blocked the caller (the snapshot copy).
    pub stall: Duration,
    /// From the `save_async` call to this rank's completion (commit included).
    pub total: Duration,
    /// Writing this rank's chunk file, fsync included.
    pub write: Duration,
    /// After the write: staging the metadata rows, and waiting for (or on
    /// rank 0, doing) the commit.
    pub commit: Duration,
    /// Bytes this rank wrote to its chunk file (after dedup and encoding).
    pub bytes_written: u64,
    pub chunks_written: usize,
    /// Whether the dedup plan came from the cache.
    pub plan_cache_hit: bool,
    /// The `chunks` version that committed the step.
    pub version: u64,
    pub engine: Engine,
}

/// A save in flight. `wait` blocks until this rank's part, and the commit,
/// are done.
pub struct SaveHandle {
    rx: std::sync::mpsc::Receiver<Result<SaveReport>>,
    pub stall: Duration,
}

impl SaveHandle {
    pub fn wait(self) -> Result<SaveReport> {
        self.rx
            .recv()
            .unwrap_or_else(|_| Err(Error::Internal("the background save thread died".into())))
    }
}

type PlanKey = Vec<u64>;

/// Which shard indices each rank writes.
type Assignment = Vec<Vec<usize>>;

/// One rank's saver, reused across steps.
pub struct Saver {
    root: CkptRoot,
    rank: u32,
    world_size: u32,
    run: String,
    opts: SaveOptions,
    pool: Arc<BufferPool>,
    plans: Arc<Mutex<HashMap<PlanKey, Arc<Assignment>>>>,
    structs: Arc<Mutex<HashMap<u64, Arc<Vec<ShardSpec>>>>>,
}

#[derive(Serialize, Deserialize)]
struct Intent {
    rank: u32,
    world_size: u32,
    structure: String,
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    rank: u32,
    bytes: u64,
    chunks: usize,
    fragments: Vec<Fragment>,
}

#[derive(Serialize, Deserialize)]
struct Committed {
    version: u64,
}

fn hex(h: u64) -> String {
    format!("{h:016x}")
}

impl Saver {
    /// A saver for `rank` of `world_size` in the checkpoint root `root`
    /// (created if missing). `run` identifies this training attempt: every
    /// rank of one attempt passes the same value, a restarted attempt a new one.
    pub async fn new(
        root: &Path,
        rank: u32,
        world_size: u32,
        run: &str,
        opts: SaveOptions,
    ) -> Result<Saver> {
        check_run(run)?;
        if world_size == 0 || rank >= world_size {
            return Err(Error::InvalidInput(format!(
                "rank {rank} is not in a world of {world_size}"
            )));
        }
        if opts.block_bytes == 0 || !opts.block_bytes.is_multiple_of(8) {
            return Err(Error::InvalidInput(format!(
                "block size {} must be a positive multiple of 8",
                opts.block_bytes
            )));
        }
        let root = CkptRoot::open(root, true).await?;
        Ok(Saver {
            root,
            rank,
            world_size,
            run: run.to_string(),
            opts,
            pool: Arc::new(BufferPool::default()),
            plans: Arc::default(),
            structs: Arc::default(),
        })
    }

    pub fn root(&self) -> &CkptRoot {
        &self.root
    }

    /// Allocate and fault in the snapshot buffer for `bytes` of shards now
    /// (at startup), so the first `save_async` stalls only for the copy.
    pub fn reserve(&self, bytes: usize) {
        self.pool.reserve(bytes);
    }

    /// Snapshot `shards` and `extra` (user state, stored with the step) and
    /// save them as `step` in the background. Returns once the bytes are
    /// copied; the caller may then modify its tensors.
    pub fn save_async(&self, step: u64, shards: &[Shard<'_>], extra: &[u8]) -> Result<SaveHandle> {
        let start = Instant::now();
        let mut seen = std::collections::HashSet::new();
        let mut specs = Vec::with_capacity(shards.len());
        for s in shards {
            if s.fqn.is_empty() {
                return Err(Error::InvalidInput(
                    "a shard has an empty tensor name".into(),
                ));
            }
            s.region
                .validate(&s.global_shape)
                .map_err(|e| Error::InvalidInput(format!("tensor {}: {e}", s.fqn)))?;
            let want = s.region.numel() as u128 * s.dtype.size() as u128;
            if s.data.len() as u128 != want {
                return Err(Error::InvalidInput(format!(
                    "tensor {}: {} bytes given, its region holds {want} bytes of {}",
                    s.fqn,
                    s.data.len(),
                    s.dtype
                )));
            }
            let spec = ShardSpec {
                fqn: s.fqn.clone(),
                dtype: s.dtype,
                global_shape: s.global_shape.clone(),
                region: RegionSpec::from(&s.region),
            };
            if !seen.insert((spec.fqn.clone(), spec.region.clone())) {
                return Err(Error::InvalidInput(format!(
                    "tensor {} region given twice on rank {}",
                    s.fqn, self.rank
                )));
            }
            specs.push(spec);
        }
        // Snapshot: every shard at an aligned offset of one pooled buffer.
        let mut offsets = Vec::with_capacity(shards.len());
        let mut total = 0usize;
        for s in shards {
            offsets.push(total);
            total = (total + s.data.len()).next_multiple_of(ALIGN);
        }
        let mut buf = self.pool.take(total);
        for (s, &o) in shards.iter().zip(&offsets) {
            let end = o + s.data.len();
            buf[o..end].copy_from_slice(s.data);
            // Zero padding: direct writes send whole aligned blocks.
            buf[end..end.next_multiple_of(ALIGN)].fill(0);
        }
        let stall = start.elapsed();

        let job = Job {
            root: self.root.clone(),
            rank: self.rank,
            world_size: self.world_size,
            run: self.run.clone(),
            opts: self.opts.clone(),
            step,
            specs,
            offsets,
            extra: extra.to_vec(),
            pool: self.pool.clone(),
            plans: self.plans.clone(),
            structs: self.structs.clone(),
            start,
            stall,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(format!("ckpt-save-r{}", self.rank))
            .spawn(move || {
                let staging = job.root.staging_dir(job.step, &job.run);
                let rank = job.rank;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                let out = match rt {
                    Ok(rt) => rt.block_on(job.run(buf)),
                    Err(e) => Err(Error::Internal(format!("tokio runtime: {e}"))),
                };
                if let Err(e) = &out {
                    // Tell the other ranks; the first failure's reason is kept.
                    let f = staging.join("FAILED");
                    if !f.exists() && staging.is_dir() {
                        let _ = write_atomic(&f, format!("rank {rank}: {e}").as_bytes());
                    }
                }
                let _ = tx.send(out);
            })
            .map_err(|e| Error::Internal(format!("cannot start the save thread: {e}")))?;
        Ok(SaveHandle { rx, stall })
    }
}

struct Job {
    root: CkptRoot,
    rank: u32,
    world_size: u32,
    run: String,
    opts: SaveOptions,
    step: u64,
    specs: Vec<ShardSpec>,
    offsets: Vec<usize>,
    extra: Vec<u8>,
    pool: Arc<BufferPool>,
    plans: Arc<Mutex<HashMap<PlanKey, Arc<Assignment>>>>,
    structs: Arc<Mutex<HashMap<u64, Arc<Vec<ShardSpec>>>>>,
    start: Instant,
    stall: Duration,
}

/// Poll until `path` exists, failing early when the save is marked FAILED.
async fn wait_for(path: &Path, staging: &Path, deadline: Instant, what: &str) -> Result<()> {
    let mut nap = Duration::from_millis(1);
    loop {
        if path.exists() {
            return Ok(());
        }
        let failed = staging.join("FAILED");
        if failed.exists() && path != failed {
            let why = std::fs::read_to_string(&failed).unwrap_or_default();
            return Err(Error::Conflict(format!("save aborted: {why}")));
        }
        if Instant::now() > deadline {
            return Err(Error::Conflict(format!(
                "timed out waiting for {what} ({})",
                path.display()
            )));
        }
        tokio::time::sleep(nap).await;
        nap = (nap * 2).min(Duration::from_millis(50));
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&text).map_err(|e| Error::Corrupt(format!("{}: {e}", path.display())))
}

impl Job {
    async fn run(self, buf: AlignedBuf) -> Result<SaveReport> {
        let out = self.pipeline(&buf).await;
        self.pool.give(buf);
        out
    }

    async fn pipeline(&self, buf: &AlignedBuf) -> Result<SaveReport> {
        let step = self.step;
        if self.root.is_committed(step).await? {
            return Err(Error::Conflict(format!(
                "step {step} is already committed in {}",
                self.root.path().display()
            )));
        }
        let staging = self.root.staging_dir(step, &self.run);
        std::fs::create_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
        let deadline = Instant::now() + self.opts.timeout;

        // 1. Publish the structure and the intent.
        let struct_json =
            serde_json::to_vec(&self.specs).map_err(|e| Error::Internal(e.to_string()))?;
        let hash = xxh3_64(&struct_json);
        let plans_dir = self.root.plans_dir();
        std::fs::create_dir_all(&plans_dir).map_err(|e| Error::io(&plans_dir, e))?;
        let struct_path = plans_dir.join(format!("struct-{}.json", hex(hash)));
        if !struct_path.exists() {
            write_atomic(&struct_path, &struct_json)?;
        }
        self.structs
            .lock()
            .expect("lock")
            .entry(hash)
            .or_insert_with(|| Arc::new(self.specs.clone()));
        let intent = Intent {
            rank: self.rank,
            world_size: self.world_size,
            structure: hex(hash),
        };
        write_atomic(
            &staging.join(format!("intent-{}.json", self.rank)),
            &serde_json::to_vec(&intent).map_err(|e| Error::Internal(e.to_string()))?,
        )?;

        // 2. Everyone's intent, then the (cached) dedup plan.
        let mut key: PlanKey = Vec::with_capacity(self.world_size as usize);
        for r in 0..self.world_size {
            let p = staging.join(format!("intent-{r}.json"));
            wait_for(&p, &staging, deadline, &format!("rank {r} to start saving")).await?;
            let i: Intent = read_json(&p)?;
            if i.world_size != self.world_size {
                return Err(Error::InvalidInput(format!(
                    "rank {r} saves with world size {}, rank {} with {}",
                    i.world_size, self.rank, self.world_size
                )));
            }
            key.push(
                u64::from_str_radix(&i.structure, 16)
                    .map_err(|e| Error::Corrupt(format!("{}: {e}", p.display())))?,
            );
        }
        let cached = self.plans.lock().expect("lock").get(&key).cloned();
        let plan_cache_hit = cached.is_some();
        let assignment = match cached {
            Some(a) => a,
            None => {
                let mut all = Vec::with_capacity(key.len());
                for h in &key {
                    let known = self.structs.lock().expect("lock").get(h).cloned();
                    let s = match known {
                        Some(s) => s,
                        None => {
                            let p = plans_dir.join(format!("struct-{}.json", hex(*h)));
                            let s: Arc<Vec<ShardSpec>> = Arc::new(read_json(&p)?);
                            self.structs.lock().expect("lock").insert(*h, s.clone());
                            s
                        }
                    };
                    all.push(s);
                }
                let a = Arc::new(assign(&all)?);
                self.plans
                    .lock()
                    .expect("lock")
                    .insert(key.clone(), a.clone());
                a
            }
        };

        // 3. Write this rank's chunks.
        let mine = &assignment[self.rank as usize];
        let rel = format!("data/step-{step}-{}/rank-{}.bin", self.run, self.rank);
        let write_start = Instant::now();
        let (rows, bytes_written) = if mine.is_empty() {
            (Vec::new(), 0)
        } else {
            let data_dir = self.root.data_dir(step, &self.run);
            std::fs::create_dir_all(&data_dir).map_err(|e| Error::io(&data_dir, e))?;
            let path = self.root.resolve(&rel);
            let root = self.root.clone();
            let (specs, offsets, opts, rank, run) =
                (&self.specs, &self.offsets, &self.opts, self.rank, &self.run);
            let out = write_chunks(
                &path, &rel, buf, specs, offsets, mine, opts, rank, run, step,
            )?;
            fsync_dir(&data_dir)?;
            fsync_dir(&root.path().join("data"))?;
            out
        };
        let write = write_start.elapsed();
        let commit_start = Instant::now();
        let fragments = self.root.stage_chunks(&rows).await?;
        let manifest = Manifest {
            rank: self.rank,
            bytes: bytes_written,
            chunks: rows.len(),
            fragments,
        };
        write_atomic(
            &staging.join(format!("rank-{}.json", self.rank)),
            &serde_json::to_vec(&manifest).map_err(|e| Error::Internal(e.to_string()))?,
        )?;

        // 4. Commit (rank 0) or wait for it.
        let committed = staging.join("COMMITTED");
        let version = if self.rank == 0 {
            let mut frags = Vec::new();
            let (mut total_bytes, mut total_chunks) = (0, 0);
            for r in 0..self.world_size {
                let p = staging.join(format!("rank-{r}.json"));
                wait_for(
                    &p,
                    &staging,
                    deadline,
                    &format!("rank {r} to finish writing"),
                )
                .await?;
                let m: Manifest = read_json(&p)?;
                total_bytes += m.bytes;
                total_chunks += m.chunks as u64;
                frags.extend(m.fragments);
            }
            let structs: Vec<Arc<Vec<ShardSpec>>> = {
                let map = self.structs.lock().expect("lock");
                key.iter().map(|h| map[h].clone()).collect()
            };
            let tensors: std::collections::BTreeSet<&str> = structs
                .iter()
                .flat_map(|s| s.iter().map(|x| x.fqn.as_str()))
                .collect();
            let layout = serde_json::json!({
                "world_size": self.world_size,
                "ranks": structs.iter().enumerate().map(|(r, s)| serde_json::json!({
                    "rank": r,
                    "shards": s.iter().map(|x| serde_json::json!({"fqn": x.fqn, "dtype": x.dtype, "global_shape": x.global_shape, "region": x.region})).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            });
            let meta = StepMeta {
                step,
                run: self.run.clone(),
                world_size: self.world_size,
                framework: self.opts.framework.clone(),
                layout: layout.to_string(),
                extra: self.extra.clone(),
                created_unix_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64),
                tensors: tensors.len() as u64,
                chunks: total_chunks,
                bytes: total_bytes,
            };
            let version = self.root.commit(&meta, frags).await?;
            write_atomic(
                &committed,
                &serde_json::to_vec(&Committed { version })
                    .map_err(|e| Error::Internal(e.to_string()))?,
            )?;
            version
        } else {
            wait_for(
                &committed,
                &staging,
                deadline + Duration::from_secs(60),
                "rank 0 to commit",
            )
            .await?;
            read_json::<Committed>(&committed)?.version
        };
        Ok(SaveReport {
            step,
            rank: self.rank,
            stall: self.stall,
            total: self.start.elapsed(),
            write,
            commit: commit_start.elapsed(),
            bytes_written,
            chunks_written: rows.len(),
            plan_cache_hit,
            version,
            engine: io::engine(),
        })
    }
}

/// One chunk to write: a whole shard, or one column slab of it. Its raw
/// bytes are `rows` segments of `seg` bytes in the snapshot buffer, the
/// first at `base`, the others `stride` apart.
struct Part {
    spec: usize,
    region: Region,
    base: usize,
    seg: usize,
    stride: usize,
    rows: usize,
    block_bytes: u64,
}

impl Part {
    fn segs<'b>(&self, buf: &'b [u8]) -> impl Iterator<Item = &'b [u8]> + use<'b, '_> {
        (0..self.rows).map(move |r| &buf[self.base + r * self.stride..][..self.seg])
    }

    fn raw_len(&self) -> usize {
        self.seg * self.rows
    }
}

/// The chunks shard `i` (snapshotted at `offset`) is stored as.
fn parts(i: usize, spec: &ShardSpec, offset: usize, opts: &SaveOptions) -> Vec<Part> {
    let region = Region::from(&spec.region);
    let es = spec.dtype.size() as u64;
    let raw = region.numel() * es;
    if let Region::Box { offsets, lengths } = &region
        && lengths.len() >= 2
        && opts.column_slabs > 1
        && raw >= opts.block_bytes
    {
        let last = lengths.len() - 1;
        let cols = lengths[last];
        let row_bytes = cols * es;
        let k = (2..=opts.column_slabs as u64)
            .rev()
            .filter(|k| (opts.column_slabs as u64).is_multiple_of(*k))
            .find(|&k| cols >= k && row_bytes / k >= opts.slab_min_row_bytes.max(1));
        if let Some(k) = k {
            let rows: u64 = lengths[..last].iter().product();
            return (0..k)
                .map(|j| {
                    let (a, b) = (cols * j / k, cols * (j + 1) / k);
                    let seg = (b - a) * es;
                    // Blocks of whole slab rows (a multiple of 8 of them),
                    // about an eighth of the usual block: a row reshard
                    // then reads little past its own rows.
                    let per_block = (opts.block_bytes / 8 / seg / 8 * 8).max(8);
                    let (mut o, mut l) = (offsets.clone(), lengths.clone());
                    o[last] += a;
                    l[last] = b - a;
                    Part {
                        spec: i,
                        region: Region::Box {
                            offsets: o,
                            lengths: l,
                        },
                        base: offset + (a * es) as usize,
                        seg: seg as usize,
                        stride: row_bytes as usize,
                        rows: rows as usize,
                        block_bytes: per_block * seg,
                    }
                })
                .collect();
        }
    }
    vec![Part {
        spec: i,
        region,
        base: offset,
        seg: raw as usize,
        stride: 0,
        rows: 1,
        block_bytes: opts.block_bytes,
    }]
}

/// Bytes of raw chunk data handed to one gather write: bounds the segment
/// lists of column slabs (one entry per slab row).
const WRITE_BATCH: usize = 64 << 20;

/// Encode and write the assigned shards to one file; returns their rows.
#[allow(clippy::too_many_arguments)]
fn write_chunks(
    path: &PathBuf,
    rel: &str,
    buf: &AlignedBuf,
    specs: &[ShardSpec],
    offsets: &[usize],
    mine: &[usize],
    opts: &SaveOptions,
    rank: u32,
    run: &str,
    step: u64,
) -> Result<(Vec<ChunkMeta>, u64)> {
    let direct = opts.direct_io && opts.codec == Codec::Raw;
    let mut file = open_chunk_file(path, direct)?;
    let parts: Vec<Part> = mine
        .iter()
        .flat_map(|&i| parts(i, &specs[i], offsets[i], opts))
        .collect();
    let mut rows = Vec::with_capacity(parts.len());
    let mut at = 0u64;
    // Compressed chunks, whole; raw ones are written from the snapshot.
    let mut encoded: Vec<Vec<u8>> = Vec::new();
    let mut places: Vec<u64> = Vec::with_capacity(parts.len());
    for p in &parts {
        let s = &specs[p.spec];
        let bb = p.block_bytes;
        let (block_lens, byte_len) = match opts.codec {
            Codec::Raw => {
                let n = p.raw_len() as u64;
                let lens: Vec<u64> = (0..codec::block_count(n, bb))
                    .map(|b| bb.min(n - b * bb))
                    .collect();
                (lens, n)
            }
            Codec::ShuffleZstd { .. } => {
                let raw: Vec<u8> = p.segs(buf).flatten().copied().collect();
                let mut lens = Vec::new();
                let mut whole = Vec::new();
                let mut block = Vec::new();
                for c in raw.chunks(bb as usize) {
                    codec::encode_block(opts.codec, s.dtype.size(), c, &mut block)
                        .map_err(|e| Error::io(path, e))?;
                    lens.push(block.len() as u64);
                    whole.extend_from_slice(&block);
                }
                let n = whole.len() as u64;
                encoded.push(whole);
                (lens, n)
            }
        };
        places.push(at);
        rows.push(ChunkMeta {
            step,
            run: run.to_string(),
            fqn: s.fqn.clone(),
            dtype: s.dtype,
            global_shape: s.global_shape.clone(),
            region: p.region.clone(),
            rank,
            file: rel.to_string(),
            byte_offset: at,
            byte_len,
            raw_len: p.raw_len() as u64,
            codec: opts.codec,
            block_bytes: bb,
            block_lens,
            checksums: Vec::new(),
        });
        at = (at + byte_len).next_multiple_of(ALIGN as u64);
    }
    io::preallocate(&file, path, at)?;
    // Checksums on a second core while the first one drives the writes.
    let sums: Vec<Vec<u64>> = std::thread::scope(|sc| {
        let hasher = sc.spawn(|| {
            parts
                .iter()
                .enumerate()
                .map(|(k, p)| match opts.codec {
                    Codec::Raw => codec::block_checksums(p.segs(buf), p.block_bytes),
                    Codec::ShuffleZstd { .. } => {
                        let mut at = 0usize;
                        rows[k]
                            .block_lens
                            .iter()
                            .map(|&l| {
                                let h = codec::checksum(&encoded[k][at..at + l as usize]);
                                at += l as usize;
                                h
                            })
                            .collect()
                    }
                })
                .collect::<Vec<Vec<u64>>>()
        });
        let mut direct = direct;
        if direct {
            match write_direct(&file, buf, &parts, &places) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    // The file system took O_DIRECT at open but not these writes.
                    tracing::info!(
                        "checkpoint save: {} refuses direct writes ({e}); writing through the page cache",
                        path.display()
                    );
                    direct = false;
                }
                Err(e) => return Err(Error::io(path, e)),
                Ok(()) => {}
            }
            if !direct {
                file = open_chunk_file(path, false)?;
            }
        }
        let w = match opts.codec {
            Codec::Raw if direct => Ok(()),
            Codec::Raw => {
                // Gather writes straight from the snapshot, in batches.
                let mut batch: Vec<(u64, Vec<IoSlice<'_>>)> = Vec::new();
                let mut size = 0usize;
                let mut res = Ok(());
                for (k, p) in parts.iter().enumerate() {
                    batch.push((places[k], p.segs(buf).map(IoSlice::new).collect()));
                    size += p.raw_len();
                    if size >= WRITE_BATCH || k + 1 == parts.len() {
                        let reqs: Vec<(u64, &[IoSlice<'_>])> =
                            batch.iter().map(|(o, v)| (*o, &v[..])).collect();
                        res = io::write_at_vectored(&file, path, &reqs);
                        if res.is_err() {
                            break;
                        }
                        batch.clear();
                        size = 0;
                    }
                }
                res
            }
            Codec::ShuffleZstd { .. } => {
                let list: Vec<(u64, &[u8])> = places
                    .iter()
                    .zip(&encoded)
                    .map(|(o, e)| (*o, &e[..]))
                    .collect();
                io::write_at(&file, path, &list)
            }
        };
        let sums = hasher.join().expect("checksum thread panicked");
        w.map(|_| sums)
    })?;
    for (r, s) in rows.iter_mut().zip(sums) {
        r.checksums = s;
    }
    file.sync_all().map_err(|e| Error::io(path, e))?;
    Ok((rows, at))
}

/// Create (truncate) a chunk file, with `O_DIRECT` when `direct` and the
/// file system takes it.
fn open_chunk_file(path: &Path, direct: bool) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = |flags: i32| {
        std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .custom_flags(flags)
            .open(path)
    };
    if direct {
        match open(libc::O_DIRECT) {
            Ok(f) => return Ok(f),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| {
                    tracing::info!(
                        "checkpoint save: the file system under {} refuses O_DIRECT; writing through the page cache",
                        path.display()
                    )
                });
            }
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    open(0).map_err(|e| Error::io(path, e))
}

/// Bytes of one staging buffer for direct writes of column slabs, and how
/// many of them are gathered ahead of the disk. Tests use small stages so
/// that their small tensors span several.
const STAGE: usize = if cfg!(test) { 2 * ALIGN } else { 16 << 20 };
const STAGES: usize = 4;

/// Write raw parts to a file opened with `O_DIRECT`: every request starts
/// at an aligned file offset and memory address and spans whole aligned
/// blocks. A contiguous part that starts aligned in the snapshot goes
/// straight from it (its padding there is zero); any other part is gathered into aligned staging buffers
/// on this thread while a writer thread keeps the previous ones in flight.
fn write_direct(
    file: &std::fs::File,
    buf: &AlignedBuf,
    parts: &[Part],
    places: &[u64],
) -> std::io::Result<()> {
    enum Req<'b> {
        Snapshot(u64, &'b [u8]),
        Staged(u64, AlignedBuf),
    }
    impl Req<'_> {
        fn seg(&self) -> (u64, &[u8]) {
            match self {
                Req::Snapshot(o, b) => (*o, b),
                Req::Staged(o, b) => (*o, &b[..]),
            }
        }
    }
    let (tx, rx) = std::sync::mpsc::sync_channel::<Req<'_>>(STAGES);
    let (back_tx, back_rx) = std::sync::mpsc::channel::<AlignedBuf>();
    std::thread::scope(|sc| {
        let writer = sc.spawn(move || -> std::io::Result<()> {
            while let Ok(first) = rx.recv() {
                // Whatever else is ready goes in the same ring run.
                let mut batch = vec![first];
                let mut size = batch[0].seg().1.len();
                while size < WRITE_BATCH {
                    match rx.try_recv() {
                        Ok(r) => {
                            size += r.seg().1.len();
                            batch.push(r);
                        }
                        Err(_) => break,
                    }
                }
                let segs: Vec<(u64, &[u8])> = batch.iter().map(Req::seg).collect();
                io::write_at_raw(file, &segs)?;
                for r in batch {
                    if let Req::Staged(_, b) = r {
                        let _ = back_tx.send(b);
                    }
                }
            }
            Ok(())
        });
        let mut made = 0;
        // A free staging buffer: a returned one, a new one while fewer than
        // STAGES exist, else wait for the writer. None once it has stopped.
        let mut stage = || -> Option<AlignedBuf> {
            if let Ok(b) = back_rx.try_recv() {
                return Some(b);
            }
            if made < STAGES {
                made += 1;
                return Some(AlignedBuf::new(STAGE));
            }
            back_rx.recv().ok()
        };
        'parts: for (p, &at) in parts.iter().zip(places) {
            if p.base.is_multiple_of(ALIGN) && (p.rows == 1 || p.stride == p.seg) {
                let len = p.raw_len().next_multiple_of(ALIGN);
                if tx
                    .send(Req::Snapshot(at, &buf[p.base..p.base + len]))
                    .is_err()
                {
                    break;
                }
                continue;
            }
            let (mut cur, mut fill, mut off) = (None::<AlignedBuf>, 0usize, at);
            for seg in p.segs(buf) {
                let mut seg = seg;
                while !seg.is_empty() {
                    let b = match &mut cur {
                        Some(b) => b,
                        None => match stage() {
                            Some(mut b) => {
                                b.set_len(STAGE);
                                fill = 0;
                                cur.insert(b)
                            }
                            None => break 'parts,
                        },
                    };
                    let n = (STAGE - fill).min(seg.len());
                    b[fill..fill + n].copy_from_slice(&seg[..n]);
                    fill += n;
                    seg = &seg[n..];
                    if fill == STAGE {
                        let full = cur.take().expect("a current stage");
                        if tx.send(Req::Staged(off, full)).is_err() {
                            break 'parts;
                        }
                        off += STAGE as u64;
                    }
                }
            }
            if let Some(mut b) = cur.take() {
                let end = fill.next_multiple_of(ALIGN);
                b[fill..end].fill(0);
                b.set_len(end);
                if tx.send(Req::Staged(off, b)).is_err() {
                    break;
                }
            }
        }
        drop(tx);
        writer.join().expect("direct writer thread panicked")
    })
}

fn regions_overlap(shape: &[u64], a: &Region, b: &Region) -> bool {
    if let (
        Region::Box {
            offsets: ao,
            lengths: al,
        },
        Region::Box {
            offsets: bo,
            lengths: bl,
        },
    ) = (a, b)
    {
        return (0..shape.len()).all(|d| ao[d] < bo[d] + bl[d] && bo[d] < ao[d] + al[d])
            && a.numel() > 0
            && b.numel() > 0;
    }
    let (ra, rb) = (a.runs(shape), b.runs(shape));
    let (mut i, mut j) = (0, 0);
    while i < ra.len() && j < rb.len() {
        let (x, y) = (ra[i], rb[j]);
        if x.start.max(y.start) < (x.start + x.len).min(y.start + y.len) {
            return true;
        }
        if x.start + x.len <= y.start + y.len {
            i += 1;
        } else {
            j += 1;
        }
    }
    false
}

/// The dedup plan: for every rank, the indices of its shards it writes.
/// Identical (tensor, region) shards on several ranks are written once:
/// shards with one holder first, then replicated ones largest first, each
/// to its least-loaded holder (ties to the lower rank).
pub fn assign(structs: &[Arc<Vec<ShardSpec>>]) -> Result<Assignment> {
    let mut groups: BTreeMap<(&str, &RegionSpec), Vec<(usize, usize)>> = BTreeMap::new();
    let mut tensors: BTreeMap<&str, (&ShardSpec, usize)> = BTreeMap::new();
    for (r, specs) in structs.iter().enumerate() {
        for (i, s) in specs.iter().enumerate() {
            match tensors.get(s.fqn.as_str()) {
                Some((first, fr))
                    if first.dtype != s.dtype || first.global_shape != s.global_shape =>
                {
                    return Err(Error::InvalidInput(format!(
                        "tensor {}: rank {fr} saves {} {:?}, rank {r} saves {} {:?}",
                        s.fqn, first.dtype, first.global_shape, s.dtype, s.global_shape
                    )));
                }
                Some(_) => {}
                None => {
                    tensors.insert(&s.fqn, (s, r));
                }
            }
            groups.entry((&s.fqn, &s.region)).or_default().push((r, i));
        }
    }
    // Distinct regions of one tensor must not overlap: a load could not tell which to trust.
    let mut by_tensor: BTreeMap<&str, Vec<&RegionSpec>> = BTreeMap::new();
    for (fqn, region) in groups.keys() {
        by_tensor.entry(fqn).or_default().push(region);
    }
    for (fqn, regions) in &by_tensor {
        let shape = &tensors[fqn].0.global_shape;
        let rs: Vec<Region> = regions.iter().map(|r| Region::from(*r)).collect();
        for a in 0..rs.len() {
            for b in a + 1..rs.len() {
                if regions_overlap(shape, &rs[a], &rs[b]) {
                    return Err(Error::InvalidInput(format!(
                        "tensor {fqn}: ranks save overlapping but different regions {:?} and {:?}",
                        regions[a], regions[b]
                    )));
                }
            }
        }
    }
    let bytes = |s: &ShardSpec| Region::from(&s.region).numel() * s.dtype.size() as u64;
    let mut load = vec![0u64; structs.len()];
    let mut out: Assignment = vec![Vec::new(); structs.len()];
    let mut replicated = Vec::new();
    for holders in groups.values() {
        if let [(r, i)] = holders.as_slice() {
            load[*r] += bytes(&structs[*r][*i]);
            out[*r].push(*i);
        } else {
            replicated.push(holders);
        }
    }
    replicated.sort_by_key(|h| std::cmp::Reverse(bytes(&structs[h[0].0][h[0].1])));
    for holders in replicated {
        let &(r, i) = holders
            .iter()
            .min_by_key(|(r, _)| (load[*r], *r))
            .expect("a group has a holder");
        load[r] += bytes(&structs[r][i]);
        out[r].push(i);
    }
    for v in &mut out {
        v.sort_unstable();
    }
    Ok(out)
}
