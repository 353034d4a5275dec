//! Resharding plans: for a target region of a tensor, which element ranges
//! of which stored chunks to copy where. Planned from metadata alone; a
//! chunk's bytes are its region's elements in global row-major order.

use super::layout::{Region, Run};

/// Copy `len` elements from `chunk` (starting at element `src` of that
/// chunk's buffer) to element `dst` of the target buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOp {
    pub chunk: usize,
    pub src: u64,
    pub dst: u64,
    pub len: u64,
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
/// Copies come out sorted by (chunk, src), adjacent ones merged, so each
/// chunk is read front to back in as few ranges as possible.
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
                let c = ReadOp {
                    chunk,
                    src: h_at + (lo - h.start),
                    dst: w_at + (lo - w.start),
                    len: hi - lo,
                };
                match copies.last_mut() {
                    Some(p)
                        if p.chunk == c.chunk
                            && p.src + p.len == c.src
                            && p.dst + p.len == c.dst =>
                    {
                        p.len += c.len
                    }
                    _ => copies.push(c),
                }
            }
            if w.start + w.len <= h.start + h.len {
                i += 1;
            } else {
                j += 1;
            }
        }
    }
    let covered: u64 = copies.iter().map(|c| c.len).sum();
    let wanted = target.numel();
    if covered != wanted {
        return Err(PlanError::NotCovered { covered, wanted });
    }
    Ok(copies)
}

#[cfg(test)]
mod tests;
