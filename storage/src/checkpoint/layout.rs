//! Regions of a tensor: a rectangular box (`offsets`, `lengths` per
//! dimension) or a flat range over the tensor's row-major order (what
//! FSDP/ZeRO flat parameters hold). Both are reduced to sorted runs of
//! contiguous elements in the global row-major order, which is all the
//! planner needs.

/// A part of a tensor of some global shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Region {
    /// A rectangular box: `offsets[d] .. offsets[d] + lengths[d]` in every dimension.
    Box {
        offsets: Vec<u64>,
        lengths: Vec<u64>,
    },
    /// Elements `start .. start + len` of the row-major flattening.
    Flat { start: u64, len: u64 },
}

/// A run of `len` contiguous elements starting at global flat index `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub start: u64,
    pub len: u64,
}

impl Region {
    /// The whole tensor.
    pub fn full(shape: &[u64]) -> Region {
        Region::Box {
            offsets: vec![0; shape.len()],
            lengths: shape.to_vec(),
        }
    }

    /// Part `k` of `n` near-equal boxes cutting dimension `dim` of a tensor
    /// of `shape` (the last dimension when `dim` is past it; some parts may
    /// be empty). A scalar has one part, the whole of it, for `k == 0`.
    pub fn split_dim(shape: &[u64], dim: usize, n: u64, k: u64) -> Region {
        let Some(last) = shape.len().checked_sub(1) else {
            return if k == 0 {
                Region::full(shape)
            } else {
                Region::Flat { start: 0, len: 0 }
            };
        };
        let d = dim.min(last);
        let (a, b) = (shape[d] * k / n, shape[d] * (k + 1) / n);
        let mut offsets = vec![0; shape.len()];
        let mut lengths = shape.to_vec();
        offsets[d] = a;
        lengths[d] = b - a;
        Region::Box { offsets, lengths }
    }

    /// Number of elements in the region.
    pub fn numel(&self) -> u64 {
        match self {
            Region::Box { lengths, .. } => lengths.iter().product(),
            Region::Flat { len, .. } => *len,
        }
    }

    /// Check the region lies inside a tensor of `shape`. The error says why not.
    pub fn validate(&self, shape: &[u64]) -> Result<(), String> {
        let total = shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or("tensor element count overflows u64")?;
        match self {
            Region::Box { offsets, lengths } => {
                if offsets.len() != shape.len() || lengths.len() != shape.len() {
                    return Err(format!(
                        "box has {} offsets and {} lengths for a {}-d tensor",
                        offsets.len(),
                        lengths.len(),
                        shape.len()
                    ));
                }
                for (d, ((&o, &l), &s)) in offsets.iter().zip(lengths).zip(shape).enumerate() {
                    if o.checked_add(l).is_none_or(|end| end > s) {
                        return Err(format!(
                            "box dimension {d}: {o}+{l} exceeds the tensor's extent {s}"
                        ));
                    }
                }
                Ok(())
            }
            Region::Flat { start, len } => match start.checked_add(*len) {
                Some(end) if end <= total => Ok(()),
                _ => Err(format!(
                    "flat range {start}+{len} exceeds the tensor's {total} elements"
                )),
            },
        }
    }

    /// The region as sorted, non-overlapping runs in global row-major order.
    /// Trailing dimensions a box spans completely merge into one run, so a
    /// row-sharded matrix is one run and a column shard is one run per row.
    pub fn runs(&self, shape: &[u64]) -> Vec<Run> {
        match self {
            Region::Flat { start, len } => {
                if *len == 0 {
                    Vec::new()
                } else {
                    vec![Run {
                        start: *start,
                        len: *len,
                    }]
                }
            }
            Region::Box { offsets, lengths } => {
                let n = shape.len();
                if lengths.contains(&0) {
                    return Vec::new();
                }
                if n == 0 {
                    return vec![Run { start: 0, len: 1 }];
                }
                // strides[d] = product of shape[d+1..]
                let mut strides = vec![1u64; n];
                for d in (0..n - 1).rev() {
                    strides[d] = strides[d + 1] * shape[d + 1];
                }
                // k: first dimension from which the box covers everything after it.
                let mut k = n - 1;
                while k > 0 && lengths[k] == shape[k] && offsets[k] == 0 {
                    k -= 1;
                }
                let run_len = lengths[k] * strides[k];
                let outer: u64 = lengths[..k].iter().product();
                let mut runs = Vec::with_capacity(outer as usize);
                let mut idx = vec![0u64; k];
                for _ in 0..outer {
                    let start: u64 = (0..k)
                        .map(|d| (offsets[d] + idx[d]) * strides[d])
                        .sum::<u64>()
                        + offsets[k] * strides[k];
                    runs.push(Run {
                        start,
                        len: run_len,
                    });
                    // odometer over the outer dimensions
                    for d in (0..k).rev() {
                        idx[d] += 1;
                        if idx[d] < lengths[d] {
                            break;
                        }
                        idx[d] = 0;
                    }
                }
                runs
            }
        }
    }
}
