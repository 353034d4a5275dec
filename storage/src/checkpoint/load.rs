//! Loading with online resharding, and verification.
//!
//! A target is any region of a tensor (a box, or a flat range over the
//! row-major order) with a caller-provided buffer. The planner maps it onto
//! the stored chunks from metadata alone; only the blocks holding needed
//! elements are read, in file order, coalesced into large reads, batch by
//! batch (so memory stays at the targets plus a few read batches), on a
//! reader thread while the calling thread verifies every block's checksum
//! and copies (casting dtypes when asked) into the targets.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::Path;
use std::sync::mpsc::sync_channel;

use super::codec::{self, Codec};
use super::dtype::{self, DType};
use super::io;
use super::layout::Region;
use super::meta::ChunkMeta;
use super::plan::plan_region;
use super::store::{CkptRoot, CommittedStep};
use crate::error::{Error, Result};

/// Upper bound on the bytes of one read batch.
const BATCH_BYTES: u64 = 32 << 20;
/// Bytes one read worker takes at a time on the direct path: large enough
/// for deep reads, small enough that the checksum pass after the read
/// still finds the bytes in cache.
const GROUP_BYTES: u64 = 8 << 20;
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

struct Copy {
    target: usize,
    /// Byte offset inside the block's raw bytes.
    src: usize,
    /// Element offset in the target buffer.
    dst: u64,
    elems: u64,
}

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
                let (mut at, end) = (op.src * es, (op.src + op.len) * es);
                while at < end {
                    let b = (at / c.block_bytes) as usize;
                    let (b_start, b_len) = c.block_raw(b);
                    let stop = end.min(b_start + b_len);
                    copies.entry((ci, b)).or_default().push(Copy {
                        target: ti,
                        src: (at - b_start) as usize,
                        dst: op.dst + (at / es - op.src),
                        elems: (stop - at) / es,
                    });
                    at = stop;
                }
            }
        }
        // Whole raw blocks that land unchanged in one target are read straight
        // into it and verified in place: one pass less over memory.
        let mut direct: Vec<(usize, usize, usize, usize)> = Vec::new(); // (target, dst byte, chunk, block)
        copies.retain(|&(ci, b), cps| {
            let c = &self.chunks[ci];
            let whole = match cps.as_slice() {
                [cp] => {
                    cp.src == 0
                        && cp.elems * c.dtype.size() as u64 == c.block_raw(b).1
                        && targets[cp.target].dtype == c.dtype
                }
                _ => false,
            };
            if whole && c.codec == Codec::Raw {
                let cp = &cps[0];
                direct.push((cp.target, cp.dst as usize * c.dtype.size(), ci, b));
            }
            !(whole && c.codec == Codec::Raw)
        });
        let (direct_bytes, direct_requests) = self.read_direct(targets, direct)?;
        let mut wanted: Vec<(usize, usize)> = copies.keys().copied().collect();
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
            for cp in &copies[&(ci, b)] {
                let t = &mut targets[cp.target];
                let (ss, ts) = (c.dtype.size(), t.dtype.size());
                let src = &block[cp.src..cp.src + cp.elems as usize * ss];
                let dst = &mut t.buf[cp.dst as usize * ts..(cp.dst + cp.elems) as usize * ts];
                dtype::cast(c.dtype, src, t.dtype, dst);
            }
            Ok(())
        })?;
        report.bytes_read = bytes + direct_bytes;
        report.read_requests = requests + direct_requests;
        report.bytes_out = targets.iter().map(|t| t.buf.len() as u64).sum();
        Ok(report)
    }

    /// Read whole raw blocks straight into target buffers, coalescing
    /// neighbours (adjacent in the file and in the target) into one request.
    /// Worker threads each take a group of requests in file order, read it
    /// and verify its checksums in place while the bytes are still in cache.
    fn read_direct(
        &self,
        targets: &mut [Target<'_>],
        mut direct: Vec<(usize, usize, usize, usize)>,
    ) -> Result<(u64, usize)> {
        if direct.is_empty() {
            return Ok((0, 0));
        }
        direct.sort_unstable();
        // (chunk file, file offset, destination, [(chunk, block, offset in destination)])
        type Seg<'b> = (&'b str, u64, &'b mut [u8], Vec<(usize, usize, usize)>);
        // (destination offset, length, chunk file, file offset, [(chunk, block, offset in destination)])
        type Planned<'b> = (usize, usize, &'b str, u64, Vec<(usize, usize, usize)>);
        let mut segs: Vec<Seg<'_>> = Vec::new();
        let mut by_target: BTreeMap<usize, Vec<(usize, usize, usize)>> = BTreeMap::new();
        for (t, dst, ci, b) in direct {
            by_target.entry(t).or_default().push((dst, ci, b));
        }
        for (ti, t) in targets.iter_mut().enumerate() {
            let Some(list) = by_target.remove(&ti) else {
                continue;
            };
            // Plan first: (dst, len, file, file offset, blocks) with neighbours merged…
            let mut plan: Vec<Planned<'_>> = Vec::new();
            for (dst, ci, b) in list {
                let c = &self.chunks[ci];
                let (off, len) = c.block_span(b);
                let len = len as usize;
                match plan.last_mut() {
                    Some((d0, l0, f, o, blocks))
                        if *f == c.file.as_str()
                            && *o + *l0 as u64 == off
                            && *d0 + *l0 == dst
                            && *l0 + len <= GROUP_BYTES as usize =>
                    {
                        blocks.push((ci, b, *l0));
                        *l0 += len;
                    }
                    _ => plan.push((dst, len, c.file.as_str(), off, vec![(ci, b, 0)])),
                }
            }
            // …then carve the target buffer into those disjoint pieces.
            let mut rest: &mut [u8] = t.buf;
            let mut consumed = 0usize;
            for (dst, len, f, off, blocks) in plan {
                let (_, tail) = std::mem::take(&mut rest).split_at_mut(dst - consumed);
                let (piece, tail) = tail.split_at_mut(len);
                rest = tail;
                consumed = dst + len;
                segs.push((f, off, piece, blocks));
            }
        }
        segs.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let requests = segs.len();
        // Groups of neighbouring segments, taken in file order by workers
        // that each read a group and verify it while it is still in cache.
        let mut groups: Vec<Vec<Seg<'_>>> = Vec::new();
        let mut size = 0usize;
        for s in segs {
            if groups.is_empty() || size + s.2.len() > GROUP_BYTES as usize {
                groups.push(Vec::new());
                size = 0;
            }
            size += s.2.len();
            groups.last_mut().expect("just pushed").push(s);
        }
        let queue = std::sync::Mutex::new(groups.into_iter().enumerate());
        let failed = std::sync::atomic::AtomicBool::new(false);
        let worker = || -> std::result::Result<u64, (usize, Error)> {
            let mut open: HashMap<&str, File> = HashMap::new();
            let mut total = 0u64;
            loop {
                if failed.load(std::sync::atomic::Ordering::Relaxed) {
                    return Ok(total);
                }
                let Some((g, mut group)) = queue.lock().expect("queue lock").next() else {
                    return Ok(total);
                };
                let fail = |e: Error| {
                    failed.store(true, std::sync::atomic::Ordering::Relaxed);
                    (g, e)
                };
                // One request list per file, in order.
                let mut at = 0;
                while at < group.len() {
                    let f = group[at].0;
                    let end = at + group[at..].iter().take_while(|s| s.0 == f).count();
                    let path = self.root.resolve(f);
                    let first_chunk = group[at].3[0].0;
                    let fqn = || self.chunks[first_chunk].fqn.clone();
                    let file = match open.get(f) {
                        Some(file) => file,
                        None => match File::open(&path) {
                            Ok(file) => open.entry(f).or_insert(file),
                            Err(e) => {
                                return Err(fail(Error::Corrupt(format!(
                                    "tensor {}: {}: {e}",
                                    fqn(),
                                    path.display()
                                ))));
                            }
                        },
                    };
                    let mut reqs: Vec<(u64, &mut [u8])> = group[at..end]
                        .iter_mut()
                        .map(|s| (s.1, &mut s.2[..]))
                        .collect();
                    if let Err(e) = io::read_at(file, &path, &mut reqs) {
                        return Err(fail(Error::Corrupt(format!("tensor {}: {e}", fqn()))));
                    }
                    at = end;
                }
                for (_, _, data, blocks) in &group {
                    for (k, &(ci, b, at)) in blocks.iter().enumerate() {
                        let c = &self.chunks[ci];
                        let end = blocks.get(k + 1).map_or(data.len(), |x| x.2);
                        if codec::checksum(&data[at..end]) != c.checksums[b] {
                            return Err(fail(checksum_mismatch(c, b)));
                        }
                        total += (end - at) as u64;
                    }
                }
            }
        };
        let results: Vec<_> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..workers()).map(|_| sc.spawn(worker)).collect();
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
            None => Ok((total, requests)),
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
