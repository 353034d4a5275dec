//! Positioned reads and writes for chunk files, and the aligned host buffer
//! pool the saver snapshots into.
//!
//! I/O goes through io_uring (one ring per thread, reused): large segments
//! are cut into pieces and kept `QUEUE_DEPTH` deep in flight. Where the
//! kernel refuses io_uring (old kernels, seccomp in containers) or
//! `GRANARY_IO=pread` is set, a small thread pool issues `pwrite`/`pread`
//! instead; that choice is logged once.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
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

#[derive(Clone, Copy)]
struct Piece {
    offset: u64,
    ptr: *mut u8,
    len: usize,
}

fn pieces<'a>(segs: impl Iterator<Item = (u64, *mut u8, usize)> + 'a) -> VecDeque<Piece> {
    let mut out = VecDeque::new();
    for (offset, ptr, len) in segs {
        let mut at = 0;
        while at < len {
            let n = PIECE.min(len - at);
            out.push_back(Piece {
                offset: offset + at as u64,
                // SAFETY: `at + n <= len`, so the pointer stays inside the caller's segment.
                ptr: unsafe { ptr.add(at) },
                len: n,
            });
            at += n;
        }
    }
    out
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
        let mut slots: Vec<Option<Piece>> = vec![None; QUEUE_DEPTH];
        let mut inflight = 0usize;
        let mut first_err: Option<std::io::Error> = None;
        loop {
            while first_err.is_none() && inflight < QUEUE_DEPTH {
                let Some(p) = queue.pop_front() else { break };
                let i = slots
                    .iter()
                    .position(Option::is_none)
                    .expect("a free slot below depth");
                let len = p.len as u32;
                let sqe = if write {
                    opcode::Write::new(fd, p.ptr, len).offset(p.offset).build()
                } else {
                    opcode::Read::new(fd, p.ptr, len).offset(p.offset).build()
                }
                .user_data(i as u64);
                // SAFETY: the buffer behind `p.ptr` is borrowed by the caller
                // for the whole call and this loop waits for every
                // submitted entry to complete before returning.
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
                    first_err.get_or_insert(if write {
                        std::io::Error::new(std::io::ErrorKind::WriteZero, "write returned 0")
                    } else {
                        std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "file ends before the requested range (truncated?)",
                        )
                    });
                } else if (res as usize) < p.len {
                    let n = res as usize;
                    // SAFETY: n < p.len, the rest of the same segment.
                    queue.push_front(Piece {
                        offset: p.offset + n as u64,
                        // SAFETY: n < p.len: the rest of the same segment.
                        ptr: unsafe { p.ptr.add(n) },
                        len: p.len - n,
                    });
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    })
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

/// Write every `(offset, bytes)` segment to `file`.
pub fn write_at(file: &File, path: &Path, segs: &[(u64, &[u8])]) -> Result<()> {
    match engine() {
        Engine::IoUring => {
            let q = pieces(
                segs.iter()
                    .map(|(o, b)| (*o, b.as_ptr() as *mut u8, b.len())),
            );
            uring_run(file, q, true).map_err(|e| Error::io(path, e))
        }
        Engine::Pread => {
            let list: Vec<(u64, &[u8])> = segs
                .iter()
                .flat_map(|(o, b)| {
                    b.chunks(PIECE)
                        .enumerate()
                        .map(move |(k, c)| (o + (k * PIECE) as u64, c))
                })
                .collect();
            let per = list.len().div_ceil(FALLBACK_THREADS).max(1);
            std::thread::scope(|s| {
                let hs: Vec<_> = list
                    .chunks(per)
                    .map(|part| {
                        s.spawn(move || part.iter().try_for_each(|(o, b)| file.write_all_at(b, *o)))
                    })
                    .collect();
                hs.into_iter()
                    .try_for_each(|h| h.join().expect("pwrite thread panicked"))
            })
            .map_err(|e| Error::io(path, e))
        }
    }
}

/// Fill every `(offset, buffer)` segment from `file`; a range past the end
/// of the file is an error that says the file looks truncated.
pub fn read_at(file: &File, path: &Path, segs: &mut [(u64, &mut [u8])]) -> Result<()> {
    match engine() {
        Engine::IoUring => {
            let q = pieces(segs.iter_mut().map(|(o, b)| (*o, b.as_mut_ptr(), b.len())));
            uring_run(file, q, false).map_err(|e| map_eof(path, e))
        }
        Engine::Pread => {
            let mut list: Vec<(u64, &mut [u8])> = Vec::new();
            for (o, b) in segs.iter_mut() {
                for (k, c) in b.chunks_mut(PIECE).enumerate() {
                    list.push((*o + (k * PIECE) as u64, c));
                }
            }
            let per = list.len().div_ceil(FALLBACK_THREADS).max(1);
            std::thread::scope(|s| {
                let hs: Vec<_> = list
                    .chunks_mut(per)
                    .map(|part| {
                        s.spawn(move || {
                            part.iter_mut()
                                .try_for_each(|(o, b)| file.read_exact_at(b, *o))
                        })
                    })
                    .collect();
                hs.into_iter()
                    .try_for_each(|h| h.join().expect("pread thread panicked"))
            })
            .map_err(|e| map_eof(path, e))
        }
    }
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

    #[test]
    fn writes_and_reads_many_segments_and_reports_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
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
