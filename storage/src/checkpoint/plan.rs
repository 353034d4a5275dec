//! Resharding plans: for a target region of a tensor, which element ranges
//! of which stored chunks to copy where. Planned from metadata alone; a
//! chunk's bytes are its region's elements in global row-major order.

use super::layout::{Region, Run};

/// Copy `rows` runs of `len` elements from `chunk` to the target buffer:
/// run `r` starts at element `src + r * src_stride` of that chunk's buffer
/// and lands at element `dst + r * dst_stride` of the target. A column
/// shard of a row-major chunk is one strided op, not one op per row, so a
/// plan stays small whatever the tensor's height.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOp {
    pub chunk: usize,
    pub src: u64,
    pub dst: u64,
    pub len: u64,
    pub rows: u64,
    pub src_stride: u64,
    pub dst_stride: u64,
}

impl ReadOp {
    /// A single run.
    pub fn run(chunk: usize, src: u64, dst: u64, len: u64) -> ReadOp {
        ReadOp {
            chunk,
            src,
            dst,
            len,
            rows: 1,
            src_stride: 0,
            dst_stride: 0,
        }
    }

    /// Elements copied.
    pub fn numel(&self) -> u64 {
        self.len * self.rows
    }

    /// Each run as (src, dst, len).
    pub fn runs(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        (0..self.rows).map(|r| {
            (
                self.src + r * self.src_stride,
                self.dst + r * self.dst_stride,
                self.len,
            )
        })
    }

    /// Append run `c` to this op if it continues it: contiguously (one
    /// longer run) or as the next row at the same strides.
    fn extend(&mut self, c: &ReadOp) -> bool {
        if self.chunk != c.chunk {
            return false;
        }
        if self.rows == 1 {
            if self.src + self.len == c.src && self.dst + self.len == c.dst {
                self.len += c.len;
                return true;
            }
            if self.len == c.len && c.src > self.src && c.dst > self.dst {
                self.src_stride = c.src - self.src;
                self.dst_stride = c.dst - self.dst;
                self.rows = 2;
                return true;
            }
            return false;
        }
        if self.len == c.len
            && c.src == self.src + self.rows * self.src_stride
            && c.dst == self.dst + self.rows * self.dst_stride
        {
            self.rows += 1;
            return true;
        }
        false
    }
}

/// Why a target cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("region does not fit the tensor: {0}")]
    BadRegion(String),
    #[error("stored chunks cover {covered} of the {wanted} elements the target needs")]
    NotCovered { covered: u64, wanted: u64 },
}

/// Runs with the element offset at which each starts inside its own buffer.
fn ranked(runs: Vec<Run>) -> Vec<(Run, u64)> {
    let mut at = 0;
    runs.into_iter()
        .map(|r| {
            let out = (r, at);
            at += r.len;
            out
        })
        .collect()
}

/// Plan the copies that fill `target` from `stored` chunks of a tensor of
/// `shape`. Chunks must not overlap each other (the saver dedups replicas).
/// Copies come out sorted by (chunk, src); adjacent runs are merged, and
/// runs repeating at fixed strides become one strided op.
pub fn plan_region(
    shape: &[u64],
    stored: &[Region],
    target: &Region,
) -> Result<Vec<ReadOp>, PlanError> {
    target.validate(shape).map_err(PlanError::BadRegion)?;
    let want = ranked(target.runs(shape));
    let mut copies: Vec<ReadOp> = Vec::new();
    for (chunk, region) in stored.iter().enumerate() {
        region
            .validate(shape)
            .map_err(|e| PlanError::BadRegion(format!("stored chunk {chunk}: {e}")))?;
        let have = ranked(region.runs(shape));
        // Two-pointer intersection of two sorted run lists.
        let (mut i, mut j) = (0, 0);
        while i < want.len() && j < have.len() {
            let (w, w_at) = want[i];
            let (h, h_at) = have[j];
            let lo = w.start.max(h.start);
            let hi = (w.start + w.len).min(h.start + h.len);
            if lo < hi {
                let c = ReadOp::run(chunk, h_at + (lo - h.start), w_at + (lo - w.start), hi - lo);
                if !copies.last_mut().is_some_and(|p| p.extend(&c)) {
                    copies.push(c);
                }
            }
            if w.start + w.len <= h.start + h.len {
                i += 1;
            } else {
                j += 1;
            }
        }
    }
    let covered: u64 = copies.iter().map(ReadOp::numel).sum();
    let wanted = target.numel();
    if covered != wanted {
        return Err(PlanError::NotCovered { covered, wanted });
    }
    Ok(copies)
}

/// Check that no two stored chunks of a tensor of `shape` share an
/// element. Loading writes each target element from exactly one chunk, in
/// parallel, so metadata that claims overlapping chunks is refused.
pub fn check_disjoint(shape: &[u64], stored: &[Region]) -> Result<(), String> {
    let mut boxes = Vec::new();
    let mut flats = Vec::new();
    for (i, r) in stored.iter().enumerate() {
        match r {
            _ if r.numel() == 0 => {}
            Region::Box { offsets, lengths } => boxes.push((i, offsets, lengths)),
            Region::Flat { start, len } => flats.push((*start, *start + *len, i)),
        }
    }
    let overlap = |a: usize, b: usize| {
        Err(format!(
            "stored chunks {} and {} overlap",
            a.min(b),
            a.max(b)
        ))
    };
    for (k, &(i, ao, al)) in boxes.iter().enumerate() {
        for &(j, bo, bl) in &boxes[k + 1..] {
            if (0..ao.len()).all(|d| ao[d] < bo[d] + bl[d] && bo[d] < ao[d] + al[d]) {
                return overlap(i, j);
            }
        }
    }
    flats.sort_unstable();
    for w in flats.windows(2) {
        if w[1].0 < w[0].1 {
            return overlap(w[0].2, w[1].2);
        }
    }
    if !flats.is_empty() {
        for &(i, offsets, lengths) in &boxes {
            let runs = Region::Box {
                offsets: offsets.clone(),
                lengths: lengths.clone(),
            }
            .runs(shape);
            for &(s, e, j) in &flats {
                // The first run ending after `s` overlaps [s, e) iff it starts before `e`.
                let k = runs.partition_point(|r| r.start + r.len <= s);
                if runs.get(k).is_some_and(|r| r.start < e) {
                    return overlap(i, j);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
