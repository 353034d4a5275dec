//! Chunk encoding. A chunk's raw bytes (its region's elements, row-major,
//! little-endian) are cut into blocks of `block_bytes`; each block is stored
//! either as is (`raw`, the default) or byte-shuffled by element size and
//! zstd-compressed (`shuffle-zstd`). Every stored block carries an xxh3-64
//! checksum of its stored bytes, so a reader that needs a few elements reads
//! and verifies only the blocks that hold them.

use std::fmt;
use std::str::FromStr;

use xxhash_rust::xxh3::{Xxh3, xxh3_64};

/// Default block size: large enough that checksums and per-block overhead
/// vanish against the copy, small enough that a resharding read of a
/// column slice does not read much more than it needs.
pub const DEFAULT_BLOCK_BYTES: u64 = 1 << 20;

/// How a chunk's blocks are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Codec {
    #[default]
    Raw,
    /// Byte shuffle (all first bytes of the elements, then all second bytes,
    /// …) followed by zstd at `level`. Good on bf16/f16 weights, whose
    /// exponent bytes compress well.
    ShuffleZstd { level: i32 },
}

impl Codec {
    pub fn name(self) -> &'static str {
        match self {
            Codec::Raw => "raw",
            Codec::ShuffleZstd { .. } => "shuffle-zstd",
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Codec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "raw" => Ok(Codec::Raw),
            "shuffle-zstd" | "zstd" => Ok(Codec::ShuffleZstd { level: 3 }),
            other => Err(format!(
                "unknown codec {other:?} (known: raw, shuffle-zstd)"
            )),
        }
    }
}

/// The checksum of a stored block.
pub fn checksum(stored: &[u8]) -> u64 {
    xxh3_64(stored)
}

/// The checksum of a stored block held in several pieces, in order: the
/// same value as [`checksum`] of their concatenation.
pub fn checksum_parts<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    let mut it = parts.into_iter();
    let Some(first) = it.next() else {
        return xxh3_64(&[]);
    };
    match it.next() {
        None => xxh3_64(first),
        Some(second) => {
            let mut h = Xxh3::new();
            h.update(first);
            h.update(second);
            it.for_each(|p| h.update(p));
            h.digest()
        }
    }
}

/// Checksums of consecutive `block_bytes` blocks of the concatenation of
/// `parts`, without concatenating them.
pub fn block_checksums<'a>(
    parts: impl IntoIterator<Item = &'a [u8]>,
    block_bytes: u64,
) -> Vec<u64> {
    let bb = block_bytes.max(1) as usize;
    let mut sums = Vec::new();
    let mut h = Xxh3::new();
    let mut fill = 0usize;
    for mut p in parts {
        while !p.is_empty() {
            let n = (bb - fill).min(p.len());
            if fill == 0 && n == bb {
                sums.push(xxh3_64(&p[..n])); // a whole block in one piece
            } else {
                h.update(&p[..n]);
                fill += n;
                if fill == bb {
                    sums.push(h.digest());
                    h = Xxh3::new();
                    fill = 0;
                }
            }
            p = &p[n..];
        }
    }
    if fill > 0 {
        sums.push(h.digest());
    }
    sums
}

/// Number of blocks a chunk of `raw_len` bytes is cut into.
pub fn block_count(raw_len: u64, block_bytes: u64) -> u64 {
    raw_len.div_ceil(block_bytes.max(1))
}

fn shuffle(raw: &[u8], elem: usize, out: &mut Vec<u8>) {
    let n = raw.len() / elem;
    out.clear();
    out.resize(raw.len(), 0);
    for j in 0..elem {
        let plane = &mut out[j * n..(j + 1) * n];
        for (i, b) in plane.iter_mut().enumerate() {
            *b = raw[i * elem + j];
        }
    }
    // A tail shorter than one element (cannot happen for whole elements) is copied as is.
    out[n * elem..].copy_from_slice(&raw[n * elem..]);
}

fn unshuffle(shuf: &[u8], elem: usize, out: &mut [u8]) {
    let n = out.len() / elem;
    for j in 0..elem {
        let plane = &shuf[j * n..(j + 1) * n];
        for (i, b) in plane.iter().enumerate() {
            out[i * elem + j] = *b;
        }
    }
    let tail = n * elem;
    out[tail..].copy_from_slice(&shuf[tail..]);
}

/// Encode one block of raw bytes into `out` (cleared first).
pub fn encode_block(
    codec: Codec,
    elem: usize,
    raw: &[u8],
    out: &mut Vec<u8>,
) -> std::io::Result<()> {
    match codec {
        Codec::Raw => {
            out.clear();
            out.extend_from_slice(raw);
        }
        Codec::ShuffleZstd { level } => {
            let mut shuf = Vec::new();
            shuffle(raw, elem, &mut shuf);
            *out = zstd::bulk::compress(&shuf, level)?;
        }
    }
    Ok(())
}

/// Decode one stored block into `out`, whose length is the block's raw length.
pub fn decode_block(
    codec: Codec,
    elem: usize,
    stored: &[u8],
    out: &mut [u8],
) -> Result<(), String> {
    match codec {
        Codec::Raw => {
            if stored.len() != out.len() {
                return Err(format!(
                    "raw block holds {} bytes, expected {}",
                    stored.len(),
                    out.len()
                ));
            }
            out.copy_from_slice(stored);
        }
        Codec::ShuffleZstd { .. } => {
            let shuf =
                zstd::bulk::decompress(stored, out.len()).map_err(|e| format!("zstd: {e}"))?;
            if shuf.len() != out.len() {
                return Err(format!(
                    "zstd block decoded to {} bytes, expected {}",
                    shuf.len(),
                    out.len()
                ));
            }
            unshuffle(&shuf, elem, out);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_zstd_round_trips_and_compresses_bf16_like_data() {
        // bf16-ish: random mantissas, few distinct exponents.
        let raw: Vec<u8> = (0..40_000u32)
            .flat_map(|i| [(i.wrapping_mul(2_654_435_761) >> 7) as u8, 0x3f])
            .collect();
        let codec: Codec = "shuffle-zstd".parse().unwrap();
        let mut enc = Vec::new();
        encode_block(codec, 2, &raw, &mut enc).unwrap();
        assert!(
            enc.len() < raw.len() * 3 / 4,
            "{} of {}",
            enc.len(),
            raw.len()
        );
        let mut back = vec![0u8; raw.len()];
        decode_block(codec, 2, &enc, &mut back).unwrap();
        assert_eq!(back, raw);
        // A wrong length is an error, not a panic.
        let mut short = vec![0u8; raw.len() - 2];
        assert!(decode_block(codec, 2, &enc, &mut short).is_err());
        assert!(decode_block(Codec::Raw, 2, &raw[1..], &mut back).is_err());
    }

    #[test]
    fn checksums_of_pieces_equal_checksums_of_the_whole() {
        let whole: Vec<u8> = (0..10_000u32).map(|i| (i * 31 + 7) as u8).collect();
        for cuts in [vec![], vec![1], vec![100, 101, 5000], vec![4096, 8192]] {
            let mut parts = Vec::new();
            let mut at = 0;
            for c in cuts.iter().copied().chain([whole.len()]) {
                parts.push(&whole[at..c]);
                at = c;
            }
            assert_eq!(checksum_parts(parts.iter().copied()), checksum(&whole));
            for bb in [8u64, 1000, 4096, 20_000] {
                let want: Vec<u64> = whole.chunks(bb as usize).map(checksum).collect();
                assert_eq!(
                    block_checksums(parts.iter().copied(), bb),
                    want,
                    "{cuts:?} {bb}"
                );
            }
        }
        assert_eq!(checksum_parts([]), checksum(&[]));
    }
}
