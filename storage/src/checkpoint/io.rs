//! Positioned reads and writes for chunk files, and the aligned host buffer
//! pool the saver snapshots into.
//!
//! Every request is one contiguous range of the file served by one or more
//! memory segments (vectored I/O: a column slab is gathered from the rows
//! of a snapshot on save and scattered into the rows of a target on load,
//! with no bounce copy). I/O goes through io_uring (one ring per thread,
//! reused; `readv`/`writev` entries): requests are cut into pieces of at
//! most `PIECE` bytes and `MAX_IOV` segments, kept `QUEUE_DEPTH` deep in
//! flight. Where the kernel refuses io_uring (old kernels, seccomp in
//! containers) or `GRANARY_IO=pread` is set, a small thread pool issues
//! `pwritev`/`preadv` instead; that choice is logged once.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::File;
use std::io::IoSlice;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::{Mutex, OnceLock};

use io_uring::{IoUring, opcode, types};

use crate::error::{Error, Result};

/// Alignment of pool buffers and of chunk offsets in files: the page size
/// and the usual `O_DIRECT`/GPUDirect requirement.
pub const ALIGN: usize = 4096;
const PIECE: usize = 4 << 20;
/// Segments per request: Linux's `IOV_MAX`.
const MAX_IOV: usize = 1024;
const QUEUE_DEPTH: usize = 16;
const FALLBACK_THREADS: usize = 4;

/// Which engine does positioned I/O in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    IoUring,
    Pread,
}

/// The engine, probed once: io_uring unless the kernel refuses a ring or
/// `GRANARY_IO=pread` asks for the fallback.
pub fn engine() -> Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    *ENGINE.get_or_init(|| {
        if std::env::var("GRANARY_IO").is_ok_and(|v| v == "pread" || v == "pwrite") {
            tracing::info!(
                "checkpoint I/O: pread/pwrite thread pool (GRANARY_IO={})",
                std::env::var("GRANARY_IO").unwrap_or_default()
            );
            return Engine::Pread;
        }
        match IoUring::new(QUEUE_DEPTH as u32) {
            Ok(_) => Engine::IoUring,
            Err(e) => {
                tracing::warn!(
                    "checkpoint I/O: io_uring refused ({e}); using a pread/pwrite thread pool"
                );
                Engine::Pread
            }
        }
    })
}

thread_local! {
    static RING: RefCell<Option<IoUring>> = const { RefCell::new(None) };
}

/// One request in flight: a contiguous file range and the memory segments
/// it fills or drains, in order.
struct Piece {
    offset: u64,
    iov: Vec<libc::iovec>,
}

impl Piece {
    fn bytes(&self) -> usize {
        self.iov.iter().map(|v| v.iov_len).sum()
    }

    /// The rest of this piece after `n` bytes were transferred (`n` is less
    /// than its size).
    fn advance(mut self, n: usize) -> Piece {
        let mut left = n;
        let mut skip = 0;
        while skip < self.iov.len() && self.iov[skip].iov_len <= left {
            left -= self.iov[skip].iov_len;
            skip += 1;
        }
        self.iov.drain(..skip);
        if let Some(v) = self.iov.first_mut() {
            // SAFETY: left < v.iov_len, so the pointer stays inside the segment.
            v.iov_base = unsafe { v.iov_base.cast::<u8>().add(left) }.cast();
            v.iov_len -= left;
        }
        self.offset += n as u64;
        self
    }
}

/// Cut requests (file offset, memory segments) into pieces of at most
/// `PIECE` bytes and `MAX_IOV` segments; empty segments are dropped.
fn pieces<'a, S>(reqs: impl Iterator<Item = (u64, S)>) -> VecDeque<Piece>
where
    S: Iterator<Item = (*mut u8, usize)> + 'a,
{
    let mut out = VecDeque::new();
    for (offset, segs) in reqs {
        let mut cur = Piece {
            offset,
            iov: Vec::new(),
        };
        let mut size = 0usize;
        for (ptr, len) in segs {
            let mut at = 0;
            while at < len {
                if size == PIECE || cur.iov.len() == MAX_IOV {
                    let next = Piece {
                        offset: cur.offset + size as u64,
                        iov: Vec::new(),
                    };
                    out.push_back(std::mem::replace(&mut cur, next));
                    size = 0;
                }
                let n = (PIECE - size).min(len - at);
                cur.iov.push(libc::iovec {
                    // SAFETY: at + n <= len: inside the caller's segment.
                    iov_base: unsafe { ptr.add(at) }.cast(),
                    iov_len: n,
                });
                size += n;
                at += n;
            }
        }
        if !cur.iov.is_empty() {
            out.push_back(cur);
        }
    }
    out
}

fn short_error(write: bool) -> std::io::Error {
    if write {
        std::io::Error::new(std::io::ErrorKind::WriteZero, "write returned 0")
    } else {
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "file ends before the requested range (truncated?)",
        )
    }
}

/// Run `queue` on this thread's ring. Every submitted operation has
/// completed when this returns, error or not, so the buffers behind the
/// pointers are free again.
fn uring_run(file: &File, mut queue: VecDeque<Piece>, write: bool) -> std::io::Result<()> {
    RING.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(IoUring::new(QUEUE_DEPTH as u32)?);
        }
        let ring = slot.as_mut().expect("ring was just created");
        let fd = types::Fd(file.as_raw_fd());
        let mut slots: Vec<Option<Piece>> = (0..QUEUE_DEPTH).map(|_| None).collect();
        let mut inflight = 0usize;
        let mut first_err: Option<std::io::Error> = None;
        loop {
            while first_err.is_none() && inflight < QUEUE_DEPTH {
                let Some(p) = queue.pop_front() else { break };
                let i = slots
                    .iter()
                    .position(Option::is_none)
                    .expect("a free slot below depth");
                let (iov, n) = (p.iov.as_ptr(), p.iov.len() as u32);
                let sqe = if write {
                    opcode::Writev::new(fd, iov, n).offset(p.offset).build()
                } else {
                    opcode::Readv::new(fd, iov, n).offset(p.offset).build()
                }
                .user_data(i as u64);
                // SAFETY: the segments behind the iovecs are borrowed by the
                // caller for the whole call, the iovec array lives in
                // `slots[i]` (its heap storage does not move) until the
                // entry completes, and this loop waits for every submitted
                // entry before returning.
                unsafe { ring.submission().push(&sqe) }
                    .map_err(|_| std::io::Error::other("io_uring submission queue full"))?;
                slots[i] = Some(p);
                inflight += 1;
            }
            if inflight == 0 {
                break;
            }
            match ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => {
                    // Entries may still be in flight; keep waiting for them.
                    first_err.get_or_insert(e);
                    if ring.submit_and_wait(inflight).is_err() {
                        // Cannot wait any more: better to leak than to free buffers the kernel uses.
                        std::process::abort();
                    }
                }
            }
            let done: Vec<(u64, i32)> = ring
                .completion()
                .map(|c| (c.user_data(), c.result()))
                .collect();
            for (ud, res) in done {
                let i = ud as usize;
                let p = slots[i].take().expect("completion for a submitted slot");
                inflight -= 1;
                if res < 0 {
                    let e = std::io::Error::from_raw_os_error(-res);
                    if matches!(-res, libc::EINTR | libc::EAGAIN) && first_err.is_none() {
                        queue.push_front(p);
                    } else {
                        first_err.get_or_insert(e);
                    }
                } else if res == 0 {
                    first_err.get_or_insert(short_error(write));
                } else if (res as usize) < p.bytes() {
                    queue.push_front(p.advance(res as usize));
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    })
}

/// Run `pieces` one after another with `pwritev`/`preadv` on this thread.
fn sync_run(
    fd: libc::c_int,
    pieces: impl IntoIterator<Item = Piece>,
    write: bool,
) -> std::io::Result<()> {
    for mut p in pieces {
        loop {
            let (iov, n) = (p.iov.as_ptr(), p.iov.len() as libc::c_int);
            // SAFETY: the iovecs describe memory the caller lends for this
            // call, valid for their lengths.
            let res = unsafe {
                if write {
                    libc::pwritev(fd, iov, n, p.offset as libc::off_t)
                } else {
                    libc::preadv(fd, iov, n, p.offset as libc::off_t)
                }
            };
            if res < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let res = res as usize;
            if res == 0 {
                return Err(short_error(write));
            }
            if res == p.bytes() {
                break;
            }
            p = p.advance(res);
        }
    }
    Ok(())
}

/// The fallback: `pwritev`/`preadv` on a few threads.
fn pool_run(file: &File, queue: VecDeque<Piece>, write: bool) -> std::io::Result<()> {
    struct Sendable(Vec<Piece>);
    // SAFETY: the pointers in the pieces are borrowed by the caller for the
    // whole call and the threads are joined before it returns; pieces are
    // disjoint, so no two threads touch the same memory.
    unsafe impl Send for Sendable {}
    let fd = file.as_raw_fd();
    if queue.len() <= 1 {
        return sync_run(fd, queue, write);
    }
    let all: Vec<Piece> = queue.into();
    let per = all.len().div_ceil(FALLBACK_THREADS).max(1);
    let mut parts: Vec<Sendable> = Vec::new();
    let mut it = all.into_iter().peekable();
    while it.peek().is_some() {
        parts.push(Sendable(it.by_ref().take(per).collect()));
    }
    std::thread::scope(|s| {
        let hs: Vec<_> = parts
            .into_iter()
            .map(|part| {
                s.spawn(move || -> std::io::Result<()> {
                    let part = part;
                    sync_run(fd, part.0, write)
                })
            })
            .collect();
        hs.into_iter()
            .try_for_each(|h| h.join().expect("pread/pwrite thread panicked"))
    })
}

fn run(file: &File, queue: VecDeque<Piece>, write: bool) -> std::io::Result<()> {
    match engine() {
        Engine::IoUring => uring_run(file, queue, write),
        Engine::Pread => pool_run(file, queue, write),
    }
}

fn map_eof(path: &Path, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Error::io(
            path,
            std::io::Error::new(
                e.kind(),
                "file ends before the requested range (truncated?)",
            ),
        )
    } else {
        Error::io(path, e)
    }
}

/// Reserve the first `len` bytes of `file` on disk before it is written,
/// without changing its size. The file system can then place the file in a
/// few long extents even while other ranks write theirs: `O_DIRECT` writes
/// allocate as they land, and two ranks writing at once left each other's
/// files in 8 MiB pieces interleaved on the disk (135 extents for 1.6 GB,
/// 14 when reserved first). A full disk fails here, before anything is
/// written; a file system without `fallocate` is written as before.
pub fn preallocate(file: &File, path: &Path, len: u64) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    let len = libc::off_t::try_from(len).map_err(|_| {
        Error::InvalidInput(format!("{}: {len} bytes is too large", path.display()))
    })?;
    // SAFETY: fallocate on an open descriptor; no memory is passed.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, len) };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => Err(Error::io(path, e)),
        _ => {
            static SAID: OnceLock<()> = OnceLock::new();
            SAID.get_or_init(|| {
                tracing::info!(
                    "checkpoint save: cannot preallocate {} ({e}); writing without",
                    path.display()
                )
            });
            Ok(())
        }
    }
}

/// Write every `(offset, bytes)` segment to `file`.
pub fn write_at(file: &File, path: &Path, segs: &[(u64, &[u8])]) -> Result<()> {
    write_at_raw(file, segs).map_err(|e| Error::io(path, e))
}

/// [`write_at`] without a path: the bare I/O error, for callers that
/// decide on its code (`EINVAL` from a file system refusing `O_DIRECT`).
pub fn write_at_raw(file: &File, segs: &[(u64, &[u8])]) -> std::io::Result<()> {
    let q = pieces(
        segs.iter()
            .map(|(o, b)| (*o, std::iter::once((b.as_ptr() as *mut u8, b.len())))),
    );
    run(file, q, true)
}

/// Write each request's segments, one after another, to the file range
/// starting at its offset (a gather write).
pub fn write_at_vectored(file: &File, path: &Path, reqs: &[(u64, &[IoSlice<'_>])]) -> Result<()> {
    let q = pieces(
        reqs.iter()
            .map(|(o, segs)| (*o, segs.iter().map(|s| (s.as_ptr() as *mut u8, s.len())))),
    );
    run(file, q, true).map_err(|e| Error::io(path, e))
}

/// Fill every `(offset, buffer)` segment from `file`; a range past the end
/// of the file is an error that says the file looks truncated.
pub fn read_at(file: &File, path: &Path, segs: &mut [(u64, &mut [u8])]) -> Result<()> {
    let q = pieces(
        segs.iter_mut()
            .map(|(o, b)| (*o, std::iter::once((b.as_mut_ptr(), b.len())))),
    );
    run(file, q, false).map_err(|e| map_eof(path, e))
}

/// [`read_at`] with `pread` on the calling thread, for callers that are
/// themselves one of several reader threads (a ring per worker adds
/// nothing when each worker reads one group at a time). Measured once each
/// on the checkpoint bench (rows2 -> 1, 2 cores): warm load over read
/// 1.18-1.20 this way against 1.05 through io_uring; cold, 0.53-0.63
/// against 0.55, no clear difference. `GRANARY_LOAD_IO=uring` uses the
/// ring, for comparison.
pub fn read_at_here(file: &File, path: &Path, segs: &mut [(u64, &mut [u8])]) -> Result<()> {
    static URING: OnceLock<bool> = OnceLock::new();
    let uring = *URING.get_or_init(|| {
        std::env::var("GRANARY_LOAD_IO").is_ok_and(|v| v == "uring") && engine() == Engine::IoUring
    });
    if uring {
        return read_at(file, path, segs);
    }
    let q = pieces(
        segs.iter_mut()
            .map(|(o, b)| (*o, std::iter::once((b.as_mut_ptr(), b.len())))),
    );
    sync_run(file.as_raw_fd(), q, false).map_err(|e| map_eof(path, e))
}

/// A zero-initialised heap buffer aligned to [`ALIGN`], with a length that
/// can shrink and grow within its capacity.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    cap: usize,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only reads through &[u8].
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A buffer of `cap` bytes (rounded up to [`ALIGN`]), all zero, length `cap`.
    pub fn new(cap: usize) -> AlignedBuf {
        let cap = cap.max(1).next_multiple_of(ALIGN);
        let layout = Layout::from_size_align(cap, ALIGN).expect("valid layout");
        // SAFETY: layout has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, cap, len: cap }
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Set the length (≤ capacity). Bytes past the old length keep whatever
    /// an earlier use left there: the buffer is always initialised.
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.cap,
            "AlignedBuf length {len} beyond capacity {}",
            self.cap
        );
        self.len = len;
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for cap ≥ len initialised bytes (alloc_zeroed).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in Deref, and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.cap, ALIGN).expect("valid layout");
        // SAFETY: allocated in `new` with this same layout.
        unsafe { dealloc(self.ptr.as_ptr(), layout) }
    }
}

/// A pool of aligned buffers reused across saves, so steady-state saves
/// snapshot into memory that is already faulted in (and, on a GPU host,
/// would already be pinned).
#[derive(Default)]
pub struct BufferPool {
    free: Mutex<Vec<AlignedBuf>>,
}

impl BufferPool {
    /// A buffer of at least `len` bytes, length set to `len`: the smallest
    /// free one that fits, else a new one.
    pub fn take(&self, len: usize) -> AlignedBuf {
        let mut free = self.free.lock().expect("pool lock");
        let best = free
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        let mut b = match best {
            Some(i) => free.swap_remove(i),
            None => AlignedBuf::new(len),
        };
        b.set_len(len);
        b
    }

    /// Allocate a buffer of `len` bytes now and touch every page, so the
    /// first save's snapshot does not pay for page faults.
    pub fn reserve(&self, len: usize) {
        let mut b = AlignedBuf::new(len);
        for page in b.chunks_mut(ALIGN) {
            page[0] = 0;
            std::hint::black_box(&page[0]);
        }
        self.give(b);
    }

    /// Give a buffer back for the next save.
    pub fn give(&self, buf: AlignedBuf) {
        let mut free = self.free.lock().expect("pool lock");
        free.push(buf);
        // Keep at most two: the one being written and the next snapshot.
        if free.len() > 2 {
            free.sort_by_key(|b| std::cmp::Reverse(b.capacity()));
            free.truncate(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::IoSliceMut;

    /// A new empty file opened for reading and writing, in its own directory.
    fn scratch_file() -> (tempfile::TempDir, std::path::PathBuf, File) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        (dir, path, f)
    }

    #[test]
    fn writes_and_reads_many_segments_and_reports_truncation() {
        let (_dir, path, f) = scratch_file();
        let a: Vec<u8> = (0..(9 << 20)).map(|i: u32| (i * 7 + 3) as u8).collect();
        let b = vec![0xabu8; 1000];
        write_at(&f, &path, &[(0, &a), (a.len() as u64 + 5000, &b)]).unwrap();
        let mut ra = vec![0u8; a.len() - 100];
        let mut rb = vec![0u8; 1000];
        read_at(
            &f,
            &path,
            &mut [(100, &mut ra[..]), (a.len() as u64 + 5000, &mut rb[..])],
        )
        .unwrap();
        assert_eq!(&ra[..], &a[100..]);
        assert_eq!(rb, b);
        let mut past = [0u8; 10];
        let err = read_at(&f, &path, &mut [(a.len() as u64 + 5995, &mut past[..])]).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn preallocation_reserves_blocks_and_keeps_the_size() {
        use std::os::unix::fs::MetadataExt;
        let (_dir, path, f) = scratch_file();
        preallocate(&f, &path, 8 << 20).unwrap();
        let m = f.metadata().unwrap();
        assert_eq!(m.len(), 0, "preallocation must not change the file's size");
        assert!(
            m.blocks() * 512 >= 8 << 20,
            "{} bytes allocated",
            m.blocks() * 512
        );
        // Writing into the reserved range works as on any file.
        write_at(&f, &path, &[(4096, &[7u8; 100][..])]).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 4196);
        let huge = preallocate(&f, &path, u64::MAX).unwrap_err();
        assert!(huge.to_string().contains("too large"), "{huge}");
    }

    #[test]
    fn gather_writes_and_scatter_reads_on_both_engines() {
        let (_dir, _path, f) = scratch_file();
        // 3000 segments of 700 bytes (more than IOV_MAX per request) plus one
        // larger than a piece: every cut in `pieces` is exercised.
        let src: Vec<u8> = (0..(3000 * 700 + (5 << 20)))
            .map(|i: u32| (i % 251) as u8)
            .collect();
        let mut parts: Vec<&[u8]> = src[..3000 * 700].chunks(700).collect();
        parts.push(&src[3000 * 700..]);
        let slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        for engine in [uring_run, pool_run] {
            let q = pieces(std::iter::once((
                10u64,
                slices.iter().map(|s| (s.as_ptr() as *mut u8, s.len())),
            )));
            assert!(
                q.iter()
                    .all(|p| p.iov.len() <= MAX_IOV && p.bytes() <= PIECE)
            );
            engine(&f, q, true).unwrap();
            let mut back = vec![0u8; src.len()];
            let mut holes: Vec<IoSliceMut<'_>> =
                back.chunks_mut(333).map(IoSliceMut::new).collect();
            let q = pieces(std::iter::once((
                10u64,
                holes.iter_mut().map(|s| (s.as_mut_ptr(), s.len())),
            )));
            engine(&f, q, false).unwrap();
            assert!(back == src);
            // Past the end: the short read is an EOF error, not a hang.
            let mut tail = [0u8; 100];
            let q = pieces(std::iter::once((
                10 + src.len() as u64 - 50,
                std::iter::once((tail.as_mut_ptr(), tail.len())),
            )));
            let err = engine(&f, q, false).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
        }
    }

    #[test]
    fn pool_reuses_buffers_and_keeps_alignment() {
        let pool = BufferPool::default();
        let b = pool.take(10_000);
        assert_eq!(b.len(), 10_000);
        assert_eq!(b.as_ptr() as usize % ALIGN, 0);
        let p = b.as_ptr();
        pool.give(b);
        let c = pool.take(5_000);
        assert_eq!(c.as_ptr(), p, "the freed buffer is reused");
        assert_eq!(c.len(), 5_000);
        let pool = BufferPool::default();
        pool.reserve(1 << 20);
        let r = pool.take(100_000);
        assert_eq!(r.capacity(), 1 << 20, "take() uses the reserved buffer");
    }
}
