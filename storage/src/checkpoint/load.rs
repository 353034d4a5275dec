//! Loading with online resharding, and verification.
//!
//! A target is any region of a tensor (a box, or a flat range over the
//! row-major order) with a caller-provided buffer. The planner maps it onto
//! the stored chunks from metadata alone; only the blocks holding needed
//! elements are read, in file order, coalesced into large reads. Raw blocks
//! that need no cast are read by parallel workers, a small group at a time
//! into a scratch buffer that stays in the CPU cache, checked there, and
//! copied into the target rows they fill. Compressed blocks and casts go batch by batch (so memory stays at the
//! targets plus a few read batches) through a reader thread while the
//! calling thread verifies, decodes and copies.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::Path;
use std::sync::mpsc::sync_channel;

use super::codec::{self, Codec};
use super::dtype::{self, DType};
use super::io;
use super::layout::Region;
use super::meta::ChunkMeta;
use super::plan::{check_disjoint, plan_region};
use super::store::{CkptRoot, CommittedStep};
use crate::error::{Error, Result};

/// Upper bound on the bytes of one read batch.
const BATCH_BYTES: u64 = 32 << 20;
/// Bytes one read worker takes at a time on the raw path, in file order:
/// it reads them into its scratch buffer, then checks and copies them out
/// while they are still in the CPU cache. On the bench's cold loads, 2 MiB
/// beat 8 MiB groups read in 512 KiB pieces, and 1 and 4 MiB groups
/// (docs/checkpoint-format.md).
const GROUP_BYTES: u64 = 2 << 20;
/// Blocks closer than this in one file are read with one request.
const MERGE_GAP: u64 = 64 << 10;

/// Read workers: each reads its own groups and verifies them, so reading
/// and checksumming use every core.
fn workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4))
}

/// The error for block `b` of `c` failing its checksum, naming the tensor,
/// the file and the byte range.
fn checksum_mismatch(c: &ChunkMeta, b: usize) -> Error {
    let (off, len) = c.block_span(b);
    Error::Corrupt(format!(
        "tensor {}: checksum mismatch in {} block {b} (bytes {off}..{})",
        c.fqn,
        c.file,
        off + len
    ))
}

/// A region of a tensor to fill, and where.
pub struct Target<'a> {
    pub fqn: String,
    /// Element type of `buf`; a float target may differ from the stored
    /// float type (the values are cast).
    pub dtype: DType,
    pub region: Region,
    pub buf: &'a mut [u8],
}

/// How to load.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Fail when a target names a tensor the checkpoint lacks (else skip it
    /// and report it in [`LoadReport::missing`]).
    pub strict: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { strict: true }
    }
}

#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub targets: usize,
    pub missing: Vec<String>,
    /// Bytes read from chunk files (whole blocks, verified).
    pub bytes_read: u64,
    /// Bytes written into target buffers.
    pub bytes_out: u64,
    pub read_requests: usize,
}

/// A tensor as stored in a step.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub fqn: String,
    pub dtype: DType,
    pub global_shape: Vec<u64>,
    pub chunks: usize,
    pub stored_bytes: u64,
    pub codec: Codec,
}

/// What `verify` found.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub chunks: usize,
    pub blocks: usize,
    pub bytes: u64,
    /// One line per failure, naming the tensor and the file.
    pub failures: Vec<String>,
}

/// One committed step, opened for reading.
pub struct Checkpoint {
    root: CkptRoot,
    pub step: CommittedStep,
    pub chunks: Vec<ChunkMeta>,
    by_fqn: BTreeMap<String, Vec<usize>>,
}

/// A strided copy out of one block: `rows` runs of `elems` elements; run
/// `r` starts at byte `src + r * src_stride` of the block's raw bytes and
/// lands at element `dst + r * dst_stride` of the target buffer.
#[derive(Clone, Copy)]
struct Copy {
    target: usize,
    src: usize,
    dst: u64,
    elems: u64,
    rows: u64,
    src_stride: usize,
    dst_stride: u64,
}

impl Copy {
    /// (byte in the block, element in the target) of each run.
    fn runs(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        (0..self.rows).map(|r| {
            (
                self.src + r as usize * self.src_stride,
                self.dst + r * self.dst_stride,
            )
        })
    }

    /// Take the run at (`src`, `dst`) of the same length as the next row.
    fn extend(&mut self, target: usize, src: usize, dst: u64, elems: u64) -> bool {
        if self.target != target || self.elems != elems {
            return false;
        }
        if self.rows == 1 {
            if src <= self.src || dst <= self.dst {
                return false;
            }
            self.src_stride = src - self.src;
            self.dst_stride = dst - self.dst;
        } else if src != self.src + self.rows as usize * self.src_stride
            || dst != self.dst + self.rows * self.dst_stride
        {
            return false;
        }
        self.rows += 1;
        true
    }
}

/// A target buffer as raw parts, for read workers that fill disjoint
/// ranges of it at once.
#[derive(Clone, Copy)]
struct RawBuf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: workers only touch disjoint byte ranges of a buffer the caller
// lends exclusively for the whole load (see `read_raw`).
unsafe impl Send for RawBuf {}
// SAFETY: as above.
unsafe impl Sync for RawBuf {}

#[derive(Clone, Copy)]
struct BlockRef {
    chunk: usize,
    block: usize,
    off: u64,
    len: u64,
}

/// One read request of a batch: (span index in the batch, file offset, destination).
type Req<'a> = (usize, u64, &'a mut [u8]);

struct Span {
    file: usize,
    off: u64,
    len: u64,
    blocks: Vec<BlockRef>,
}

impl Checkpoint {
    /// Open `step` (or `latest` when `None`) of the checkpoint at `root`.
    pub async fn open(root: &Path, step: Option<u64>) -> Result<Checkpoint> {
        let root = CkptRoot::open(root, false).await?;
        let step = root.resolve_step(step).await?;
        let chunks = root.chunks_of(&step).await?;
        let mut by_fqn: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, c) in chunks.iter().enumerate() {
            by_fqn.entry(c.fqn.clone()).or_default().push(i);
        }
        for (fqn, idx) in &by_fqn {
            let first = &chunks[idx[0]];
            if idx.iter().any(|&i| {
                chunks[i].dtype != first.dtype || chunks[i].global_shape != first.global_shape
            }) {
                return Err(Error::Corrupt(format!(
                    "tensor {fqn}: chunks disagree on dtype or shape"
                )));
            }
            let regions: Vec<Region> = idx.iter().map(|&i| chunks[i].region.clone()).collect();
            check_disjoint(&first.global_shape, &regions)
                .map_err(|e| Error::Corrupt(format!("tensor {fqn}: {e}")))?;
        }
        Ok(Checkpoint {
            root,
            step,
            chunks,
            by_fqn,
        })
    }

    pub fn root(&self) -> &CkptRoot {
        &self.root
    }

    /// The user state saved with the step.
    pub fn extra(&self) -> &[u8] {
        self.step.meta.as_ref().map_or(&[], |m| m.extra.as_slice())
    }

    /// Every tensor, by name.
    pub fn tensors(&self) -> Vec<TensorInfo> {
        self.by_fqn
            .iter()
            .map(|(fqn, idx)| {
                let c = &self.chunks[idx[0]];
                TensorInfo {
                    fqn: fqn.clone(),
                    dtype: c.dtype,
                    global_shape: c.global_shape.clone(),
                    chunks: idx.len(),
                    stored_bytes: idx.iter().map(|&i| self.chunks[i].byte_len).sum(),
                    codec: c.codec,
                }
            })
            .collect()
    }

    /// Fill `targets` from the stored chunks, resharding as needed.
    pub fn load(&self, targets: &mut [Target<'_>], opts: &LoadOptions) -> Result<LoadReport> {
        let mut report = LoadReport {
            targets: targets.len(),
            ..Default::default()
        };
        let mut copies: HashMap<(usize, usize), Vec<Copy>> = HashMap::new();
        for (ti, t) in targets.iter().enumerate() {
            let Some(idx) = self.by_fqn.get(&t.fqn) else {
                if opts.strict {
                    return Err(Error::InvalidInput(format!(
                        "tensor {} is not in step {} of {}",
                        t.fqn,
                        self.step.step,
                        self.root.path().display()
                    )));
                }
                report.missing.push(t.fqn.clone());
                continue;
            };
            let first = &self.chunks[idx[0]];
            let shape = &first.global_shape;
            if !dtype::can_cast(first.dtype, t.dtype) {
                return Err(Error::InvalidInput(format!(
                    "tensor {}: stored as {}, cannot load as {} (casts are between float types only)",
                    t.fqn, first.dtype, t.dtype
                )));
            }
            t.region
                .validate(shape)
                .map_err(|e| Error::InvalidInput(format!("tensor {} {shape:?}: {e}", t.fqn)))?;
            let want = t.region.numel() as u128 * t.dtype.size() as u128;
            if t.buf.len() as u128 != want {
                return Err(Error::InvalidInput(format!(
                    "tensor {}: target buffer has {} bytes, the region needs {want}",
                    t.fqn,
                    t.buf.len()
                )));
            }
            let regions: Vec<Region> = idx.iter().map(|&i| self.chunks[i].region.clone()).collect();
            let ops = plan_region(shape, &regions, &t.region)
                .map_err(|e| Error::Corrupt(format!("tensor {}: {e}", t.fqn)))?;
            let es = first.dtype.size() as u64;
            for op in ops {
                let ci = idx[op.chunk];
                let c = &self.chunks[ci];
                // Runs that stay inside one block join a strided copy of that
                // block; a run crossing a block boundary is cut in pieces.
                let mut cur: Option<(usize, Copy)> = None;
                for (src, dst, len) in op.runs() {
                    let (mut at, end) = (src * es, (src + len) * es);
                    let b = (at / c.block_bytes) as usize;
                    let (b_start, b_len) = c.block_raw(b);
                    if end <= b_start + b_len {
                        let s = (at - b_start) as usize;
                        if let Some((cb, cp)) = &mut cur
                            && *cb == b
                            && cp.extend(ti, s, dst, len)
                        {
                            continue;
                        }
                        if let Some((cb, cp)) = cur.take() {
                            copies.entry((ci, cb)).or_default().push(cp);
                        }
                        cur = Some((
                            b,
                            Copy {
                                target: ti,
                                src: s,
                                dst,
                                elems: len,
                                rows: 1,
                                src_stride: 0,
                                dst_stride: 0,
                            },
                        ));
                        continue;
                    }
                    while at < end {
                        let b = (at / c.block_bytes) as usize;
                        let (b_start, b_len) = c.block_raw(b);
                        let stop = end.min(b_start + b_len);
                        copies.entry((ci, b)).or_default().push(Copy {
                            target: ti,
                            src: (at - b_start) as usize,
                            dst: dst + (at / es - src),
                            elems: (stop - at) / es,
                            rows: 1,
                            src_stride: 0,
                            dst_stride: 0,
                        });
                        at = stop;
                    }
                }
                if let Some((cb, cp)) = cur.take() {
                    copies.entry((ci, cb)).or_default().push(cp);
                }
            }
        }
        // Raw blocks whose elements land without a cast are read, checked
        // and copied by parallel workers; the others (casts, compressed
        // blocks) are decoded and copied on this thread.
        let mut raw_blocks: Vec<(usize, usize, Vec<Copy>)> = Vec::new();
        let mut staged: HashMap<(usize, usize), Vec<Copy>> = HashMap::new();
        for ((ci, b), cps) in copies {
            let c = &self.chunks[ci];
            if c.codec == Codec::Raw && cps.iter().all(|cp| targets[cp.target].dtype == c.dtype) {
                raw_blocks.push((ci, b, cps));
            } else {
                staged.insert((ci, b), cps);
            }
        }
        let (direct_bytes, direct_requests) = self.read_raw(targets, raw_blocks)?;
        let mut wanted: Vec<(usize, usize)> = staged.keys().copied().collect();
        wanted.sort_unstable();
        let mut raw = Vec::new();
        let (bytes, requests) = self.stream_blocks(&wanted, |ci, b, stored| {
            let stored = stored?;
            let c = &self.chunks[ci];
            let (_, raw_len) = c.block_raw(b);
            let block: &[u8] = match c.codec {
                Codec::Raw => stored,
                _ => {
                    raw.resize(raw_len as usize, 0);
                    codec::decode_block(c.codec, c.dtype.size(), stored, &mut raw).map_err(
                        |e| {
                            Error::Corrupt(format!(
                                "tensor {}: block {b} in {}: {e}",
                                c.fqn, c.file
                            ))
                        },
                    )?;
                    &raw
                }
            };
            for cp in &staged[&(ci, b)] {
                let t = &mut targets[cp.target];
                let (ss, ts) = (c.dtype.size(), t.dtype.size());
                let n = cp.elems as usize;
                for (s, d) in cp.runs() {
                    let d = d as usize;
                    dtype::cast(
                        c.dtype,
                        &block[s..s + n * ss],
                        t.dtype,
                        &mut t.buf[d * ts..(d + n) * ts],
                    );
                }
            }
            Ok(())
        })?;
        report.bytes_read = bytes + direct_bytes;
        report.read_requests = requests + direct_requests;
        report.bytes_out = targets.iter().map(|t| t.buf.len() as u64).sum();
        Ok(report)
    }

    /// Read raw blocks into the targets. Worker threads each take a group of
    /// neighbouring blocks of one file (in file order), read it into their
    /// scratch buffer with one plain read per run of adjacent blocks, then
    /// check every block and copy its runs into the targets while the bytes
    /// are still in the CPU cache. A read into one buffer, not scattered
    /// over many: 2 MiB cold reads split over 16 segments ran at
    /// 0.50-1.06 GB/s against 0.99-1.48 into one buffer (a probe, six
    /// interleaved pairs), and the old scattering workers spent 4.7 s of a
    /// 5.5 s load inside `preadv`.
    fn read_raw(
        &self,
        targets: &mut [Target<'_>],
        mut blocks: Vec<(usize, usize, Vec<Copy>)>,
    ) -> Result<(u64, usize)> {
        if blocks.is_empty() {
            return Ok((0, 0));
        }
        // SAFETY (for the raw writes below): the targets are borrowed
        // exclusively for this call; the plan sends each target element to
        // exactly one run of one block (stored chunks are disjoint, checked
        // by `open`, and a target's runs are disjoint), each block belongs
        // to one group, and each group to one worker. So no two threads
        // touch the same byte, and every copy is bounds-checked first.
        let bufs: Vec<(RawBuf, usize)> = targets
            .iter_mut()
            .map(|t| {
                (
                    RawBuf {
                        ptr: t.buf.as_mut_ptr(),
                        len: t.buf.len(),
                    },
                    t.dtype.size(),
                )
            })
            .collect();
        blocks.sort_by(|a, b| {
            let (ca, cb) = (&self.chunks[a.0], &self.chunks[b.0]);
            (ca.file.as_str(), ca.block_span(a.1).0).cmp(&(cb.file.as_str(), cb.block_span(b.1).0))
        });
        // Groups of neighbouring blocks of one file.
        let mut groups: Vec<Vec<(usize, usize, Vec<Copy>)>> = Vec::new();
        let mut size = 0u64;
        for blk in blocks {
            let c = &self.chunks[blk.0];
            let len = c.block_span(blk.1).1;
            let same_file = groups
                .last()
                .and_then(|g| g.last())
                .is_some_and(|l| self.chunks[l.0].file == c.file);
            if !same_file || size + len > GROUP_BYTES {
                groups.push(Vec::new());
                size = 0;
            }
            size += len;
            groups.last_mut().expect("just pushed").push(blk);
        }
        // Every file opened once and shared by the workers: the kernel then
        // sees one sequential reader per file (its read-ahead state is per
        // open file) rather than one strided reader per worker.
        let mut opened: HashMap<&str, std::io::Result<File>> = HashMap::new();
        for g in &groups {
            let name = self.chunks[g[0].0].file.as_str();
            opened
                .entry(name)
                .or_insert_with(|| File::open(self.root.resolve(name)));
        }
        let opened = &opened;
        let n_workers = workers();
        let queue = std::sync::Mutex::new(groups.into_iter().enumerate());
        let failed = std::sync::atomic::AtomicBool::new(false);
        let requests = std::sync::atomic::AtomicUsize::new(0);
        let bufs = &bufs;
        let worker = || -> std::result::Result<u64, (usize, Error)> {
            let mut scratch: Vec<u8> = Vec::new();
            let mut total = 0u64;
            loop {
                if failed.load(std::sync::atomic::Ordering::Relaxed) {
                    return Ok(total);
                }
                let Some((g, group)) = queue.lock().expect("queue lock").next() else {
                    return Ok(total);
                };
                let fail = |e: Error| {
                    failed.store(true, std::sync::atomic::Ordering::Relaxed);
                    (g, e)
                };
                let c0 = &self.chunks[group[0].0];
                let path = self.root.resolve(&c0.file);
                let file = match &opened[c0.file.as_str()] {
                    Ok(f) => f,
                    Err(e) => {
                        return Err(fail(Error::Corrupt(format!(
                            "tensor {}: {}: {e}",
                            c0.fqn,
                            path.display()
                        ))));
                    }
                };
                // The group's blocks lie one after another in scratch, in
                // file order; blocks adjacent in the file are one read.
                let spans: Vec<(u64, u64)> = group
                    .iter()
                    .map(|(ci, b, _)| self.chunks[*ci].block_span(*b))
                    .collect();
                let size: u64 = spans.iter().map(|s| s.1).sum();
                scratch.resize(size as usize, 0);
                let mut reqs: Vec<(u64, &mut [u8])> = Vec::new();
                let mut req_block: Vec<usize> = Vec::new();
                let mut rest: &mut [u8] = &mut scratch;
                let mut k = 0;
                while k < spans.len() {
                    let (off, mut len) = spans[k];
                    let first = k;
                    k += 1;
                    while k < spans.len() && spans[k].0 == off + len {
                        len += spans[k].1;
                        k += 1;
                    }
                    let (head, tail) = std::mem::take(&mut rest).split_at_mut(len as usize);
                    reqs.push((off, head));
                    req_block.push(first);
                    rest = tail;
                }
                requests.fetch_add(reqs.len(), std::sync::atomic::Ordering::Relaxed);
                if let Err(e) = io::read_at_here(file, &path, &mut reqs) {
                    // Retry one request at a time to name the tensor whose bytes are missing.
                    let mut culprit = req_block[0];
                    for (r, &k) in reqs.chunks_mut(1).zip(&req_block) {
                        if io::read_at_here(file, &path, r).is_err() {
                            culprit = k;
                            break;
                        }
                    }
                    let fqn = &self.chunks[group[culprit].0].fqn;
                    return Err(fail(Error::Corrupt(format!("tensor {fqn}: {e}"))));
                }
                drop(reqs);
                // Check each block while it is still in the CPU cache, then
                // copy its runs out.
                let mut at = 0usize;
                for ((ci, b, cps), &(_, len)) in group.iter().zip(&spans) {
                    let c = &self.chunks[*ci];
                    let block = &scratch[at..at + len as usize];
                    at += len as usize;
                    if codec::checksum(block) != c.checksums[*b] {
                        return Err(fail(checksum_mismatch(c, *b)));
                    }
                    let es = c.dtype.size();
                    for cp in cps {
                        let (buf, ts) = bufs[cp.target];
                        let n = cp.elems as usize * es;
                        for (s, d) in cp.runs() {
                            let to = d as usize * ts;
                            if s + n > block.len() || to + n > buf.len {
                                return Err(fail(Error::Internal(format!(
                                    "tensor {}: a planned copy of block {b} leaves its buffers",
                                    c.fqn
                                ))));
                            }
                            // SAFETY: both ranges are bounds-checked above, and
                            // no other thread writes this target range (see
                            // the SAFETY note at the top).
                            unsafe {
                                std::ptr::copy_nonoverlapping(
                                    block.as_ptr().add(s),
                                    buf.ptr.add(to),
                                    n,
                                )
                            };
                        }
                    }
                    total += c.block_raw(*b).1;
                }
            }
        };
        let results: Vec<_> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..n_workers).map(|_| sc.spawn(worker)).collect();
            hs.into_iter()
                .map(|h| h.join().expect("checkpoint read worker panicked"))
                .collect()
        });
        // Of the groups that failed before the workers stopped, the earliest.
        let mut total = 0u64;
        let mut first: Option<(usize, Error)> = None;
        for r in results {
            match r {
                Ok(n) => total += n,
                Err((g, e)) => {
                    if first.as_ref().is_none_or(|(g0, _)| g < *g0) {
                        first = Some((g, e));
                    }
                }
            }
        }
        match first {
            Some((_, e)) => Err(e),
            None => Ok((total, requests.into_inner())),
        }
    }

    /// Read every block of every chunk and check its checksum.
    pub fn verify(&self) -> Result<VerifyReport> {
        let mut wanted = Vec::new();
        for (ci, c) in self.chunks.iter().enumerate() {
            for b in 0..c.block_lens.len() {
                wanted.push((ci, b));
            }
        }
        let mut failures = Vec::new();
        let (bytes, _) = self.stream_blocks(&wanted, |_, _, r| {
            if let Err(e) = r {
                failures.push(e.to_string());
            }
            Ok(())
        })?;
        // A truncated file fails a whole read request: report each tensor once.
        failures.dedup();
        Ok(VerifyReport {
            chunks: self.chunks.len(),
            blocks: wanted.len(),
            bytes,
            failures,
        })
    }

    /// Read the given (chunk, block) pairs, sorted and coalesced per file,
    /// in bounded batches on a reader thread; call `f` with each block's
    /// verified stored bytes (or the error that block hit) in order.
    fn stream_blocks(
        &self,
        wanted: &[(usize, usize)],
        mut f: impl FnMut(usize, usize, Result<&[u8]>) -> Result<()>,
    ) -> Result<(u64, usize)> {
        // Files, and blocks by file offset.
        let mut files: Vec<&str> = Vec::new();
        let mut file_ix: HashMap<&str, usize> = HashMap::new();
        let mut blocks: Vec<(usize, BlockRef)> = wanted
            .iter()
            .map(|&(ci, b)| {
                let c = &self.chunks[ci];
                let fi = *file_ix.entry(c.file.as_str()).or_insert_with(|| {
                    files.push(c.file.as_str());
                    files.len() - 1
                });
                let (off, len) = c.block_span(b);
                (
                    fi,
                    BlockRef {
                        chunk: ci,
                        block: b,
                        off,
                        len,
                    },
                )
            })
            .collect();
        blocks.sort_by_key(|(fi, b)| (*fi, b.off));
        let mut spans: Vec<Span> = Vec::new();
        for (fi, b) in blocks {
            match spans.last_mut() {
                Some(s)
                    if s.file == fi
                        && b.off >= s.off + s.len
                        && b.off - (s.off + s.len) <= MERGE_GAP
                        && s.len + b.len <= BATCH_BYTES =>
                {
                    s.len = b.off + b.len - s.off;
                    s.blocks.push(b);
                }
                _ => spans.push(Span {
                    file: fi,
                    off: b.off,
                    len: b.len,
                    blocks: vec![b],
                }),
            }
        }
        let requests = spans.len();
        // Batches of spans up to BATCH_BYTES.
        let mut batches: Vec<Vec<Span>> = Vec::new();
        let mut size = 0;
        for s in spans {
            if batches.is_empty() || size + s.len > BATCH_BYTES {
                batches.push(Vec::new());
                size = 0;
            }
            size += s.len;
            batches.last_mut().expect("just pushed").push(s);
        }
        let paths: Vec<std::path::PathBuf> = files.iter().map(|f| self.root.resolve(f)).collect();
        let mut total = 0u64;
        std::thread::scope(|sc| -> Result<()> {
            let (tx, rx) = sync_channel::<(Vec<Span>, Vec<u8>, Vec<Option<String>>)>(1);
            // Buffers come back for reuse, so steady state faults in no new memory.
            let (give_back, recycled) = sync_channel::<Vec<u8>>(3);
            let paths = &paths;
            sc.spawn(move || {
                let mut open: HashMap<usize, std::result::Result<File, String>> = HashMap::new();
                for batch in batches {
                    let mut buf = recycled.try_recv().unwrap_or_default();
                    buf.resize(batch.iter().map(|s| s.len as usize).sum(), 0);
                    let mut errs: Vec<Option<String>> = vec![None; batch.len()];
                    {
                        let mut rest: &mut [u8] = &mut buf;
                        let mut by_file: BTreeMap<usize, Vec<Req<'_>>> = BTreeMap::new();
                        for (k, s) in batch.iter().enumerate() {
                            let (head, tail) = rest.split_at_mut(s.len as usize);
                            rest = tail;
                            by_file.entry(s.file).or_default().push((k, s.off, head));
                        }
                        for (fi, reqs) in by_file {
                            let path = &paths[fi];
                            let file = open.entry(fi).or_insert_with(|| {
                                File::open(path).map_err(|e| format!("{}: {e}", path.display()))
                            });
                            let file = match file {
                                Ok(f) => f,
                                Err(e) => {
                                    for (k, _, _) in &reqs {
                                        errs[*k] = Some(e.clone());
                                    }
                                    continue;
                                }
                            };
                            let ks: Vec<usize> = reqs.iter().map(|r| r.0).collect();
                            let mut segs: Vec<(u64, &mut [u8])> =
                                reqs.into_iter().map(|(_, o, b)| (o, b)).collect();
                            if let Err(e) = io::read_at(file, path, &mut segs) {
                                // Retry one by one so a truncated tail fails only its own spans.
                                for (k, (o, b)) in ks.iter().zip(segs.iter_mut()) {
                                    if let Err(e1) =
                                        io::read_at(file, path, &mut [(*o, &mut b[..])])
                                    {
                                        errs[*k] = Some(e1.to_string());
                                    }
                                }
                                if ks.iter().all(|k| errs[*k].is_none()) {
                                    errs[ks[0]] = Some(e.to_string());
                                }
                            }
                        }
                    }
                    if tx.send((batch, buf, errs)).is_err() {
                        return; // the consumer stopped on an error
                    }
                }
            });
            for (batch, buf, errs) in rx {
                let mut at = 0usize;
                for (s, err) in batch.iter().zip(errs) {
                    let data = &buf[at..at + s.len as usize];
                    at += s.len as usize;
                    for b in &s.blocks {
                        let c = &self.chunks[b.chunk];
                        let res = match &err {
                            Some(e) => Err(Error::Corrupt(format!(
                                "tensor {}: {} ({e})",
                                c.fqn, c.file
                            ))),
                            None => {
                                let st = &data
                                    [(b.off - s.off) as usize..(b.off - s.off + b.len) as usize];
                                let sum = codec::checksum(st);
                                if sum != c.checksums[b.block] {
                                    Err(checksum_mismatch(c, b.block))
                                } else {
                                    total += b.len;
                                    Ok(st)
                                }
                            }
                        };
                        f(b.chunk, b.block, res)?;
                    }
                }
                let _ = give_back.try_send(buf);
            }
            Ok(())
        })?;
        Ok((total, requests))
    }
}
