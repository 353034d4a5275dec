//! The planner against a plain reference: materialise the full tensor
//! (element value = its flat index), slice chunk buffers and target
//! buffers by membership, and check that the planned copies rebuild every
//! target exactly, for random shapes and random layouts on both sides.

use proptest::prelude::*;

use super::*;

fn contains(shape: &[u64], r: &Region, flat: u64) -> bool {
    match r {
        Region::Flat { start, len } => flat >= *start && flat < start + len,
        Region::Box { offsets, lengths } => {
            let mut rest = flat;
            for d in (0..shape.len()).rev() {
                let i = rest % shape[d];
                rest /= shape[d];
                if i < offsets[d] || i >= offsets[d] + lengths[d] {
                    return false;
                }
            }
            true
        }
    }
}

/// The region's elements in row-major order (values = global flat index).
fn slice(shape: &[u64], r: &Region) -> Vec<u64> {
    let total: u64 = shape.iter().product();
    (0..total).filter(|&i| contains(shape, r, i)).collect()
}

/// Contiguous pieces of `0..n` cut at `cuts` (taken modulo n + 1).
fn pieces(n: u64, cuts: &[u64]) -> Vec<(u64, u64)> {
    let mut bounds = vec![0];
    bounds.extend(cuts.iter().map(|c| c % (n + 1)));
    bounds.push(n);
    bounds.sort_unstable();
    bounds.windows(2).map(|w| (w[0], w[1] - w[0])).collect()
}

/// A layout covering the whole tensor exactly once.
#[derive(Debug, Clone)]
enum Layout {
    /// Boxes from cutting dimension `dim` at `cuts`.
    Split { dim: usize, cuts: Vec<u64> },
    /// Boxes from a grid over the first and last dimensions.
    Grid { rows: Vec<u64>, cols: Vec<u64> },
    /// Flat ranges (may start inside one row and end inside another).
    Flat { cuts: Vec<u64> },
}

fn boxed(shape: &[u64], cuts: &[(usize, u64, u64)]) -> Region {
    let mut offsets = vec![0; shape.len()];
    let mut lengths = shape.to_vec();
    for &(d, o, l) in cuts {
        offsets[d] = o;
        lengths[d] = l;
    }
    Region::Box { offsets, lengths }
}

fn regions(shape: &[u64], layout: &Layout) -> Vec<Region> {
    let last = shape.len() - 1;
    match layout {
        Layout::Split { dim, cuts } => {
            let d = dim % shape.len();
            pieces(shape[d], cuts)
                .into_iter()
                .map(|(o, l)| boxed(shape, &[(d, o, l)]))
                .collect()
        }
        Layout::Grid { rows, .. } if last == 0 => regions(
            shape,
            &Layout::Split {
                dim: 0,
                cuts: rows.clone(),
            },
        ),
        Layout::Grid { rows, cols } => {
            let mut out = Vec::new();
            for (ro, rl) in pieces(shape[0], rows) {
                for (co, cl) in pieces(shape[last], cols) {
                    out.push(boxed(shape, &[(0, ro, rl), (last, co, cl)]));
                }
            }
            out
        }
        Layout::Flat { cuts } => pieces(shape.iter().product(), cuts)
            .into_iter()
            .map(|(start, len)| Region::Flat { start, len })
            .collect(),
    }
}

fn layout() -> impl Strategy<Value = Layout> {
    let cuts = || prop::collection::vec(0u64..40, 0..4);
    prop_oneof![
        (0usize..3, cuts()).prop_map(|(dim, cuts)| Layout::Split { dim, cuts }),
        (cuts(), cuts()).prop_map(|(rows, cols)| Layout::Grid { rows, cols }),
        cuts().prop_map(|cuts| Layout::Flat { cuts }),
    ]
}

fn check(shape: &[u64], from: &Layout, to: &Layout) -> Result<(), TestCaseError> {
    let stored = regions(shape, from);
    let buffers: Vec<Vec<u64>> = stored.iter().map(|r| slice(shape, r)).collect();
    for target in regions(shape, to) {
        let copies =
            plan_region(shape, &stored, &target).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut out = vec![u64::MAX; target.numel() as usize];
        for c in &copies {
            for (s, d, n) in c.runs() {
                let (s, d, n) = (s as usize, d as usize, n as usize);
                out[d..d + n].copy_from_slice(&buffers[c.chunk][s..s + n]);
            }
        }
        prop_assert_eq!(&out, &slice(shape, &target), "target {:?}", target);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_layout_reshards_exactly_into_any_other(
        shape in prop::collection::vec(1u64..9, 1..4),
        from in layout(),
        to in layout(),
    ) {
        check(&shape, &from, &to)?;
    }
}

#[test]
fn named_reshardings_on_odd_shapes() {
    let split = |dim: usize, n: u64, k: u64| Layout::Split {
        dim,
        cuts: (1..k).map(|i| i * n / k).collect(),
    };
    let shape = [13, 7];
    check(&shape, &split(0, 13, 2), &split(1, 7, 3)).unwrap(); // 2 rows → 3 columns
    check(&shape, &split(0, 13, 3), &split(0, 13, 2)).unwrap(); // 3 → 2
    check(&shape, &split(0, 13, 4), &split(0, 13, 1)).unwrap(); // 4 → 1
    let flat = Layout::Flat {
        cuts: vec![5, 40, 41],
    }; // ranges crossing rows
    check(&shape, &split(1, 7, 2), &flat).unwrap(); // box → flat
    check(&shape, &flat, &split(1, 7, 3)).unwrap(); // flat → box
}

#[test]
fn row_shards_read_in_one_copy_each() {
    let shape = [8, 5];
    let stored = regions(
        &shape,
        &Layout::Split {
            dim: 0,
            cuts: vec![4],
        },
    );
    let copies = plan_region(&shape, &stored, &Region::full(&shape)).unwrap();
    assert_eq!(
        copies,
        vec![ReadOp::run(0, 0, 0, 20), ReadOp::run(1, 0, 20, 20)]
    );
    // A column shard is one run per row, and its plan one strided op per
    // stored chunk, whatever the height.
    let col = boxed(&shape, &[(1, 1, 2)]);
    assert_eq!(col.runs(&shape).len(), 8);
    let copies = plan_region(&shape, &stored, &col).unwrap();
    assert_eq!(
        copies,
        vec![
            ReadOp {
                chunk: 0,
                src: 1,
                dst: 0,
                len: 2,
                rows: 4,
                src_stride: 5,
                dst_stride: 2
            },
            ReadOp {
                chunk: 1,
                src: 1,
                dst: 8,
                len: 2,
                rows: 4,
                src_stride: 5,
                dst_stride: 2
            },
        ]
    );
}

#[test]
fn gaps_and_bad_regions_are_errors() {
    let shape = [4, 4];
    let half = boxed(&shape, &[(0, 0, 2)]);
    assert_eq!(
        plan_region(&shape, std::slice::from_ref(&half), &Region::full(&shape)),
        Err(PlanError::NotCovered {
            covered: 8,
            wanted: 16
        })
    );
    let outside = boxed(&shape, &[(0, 3, 2)]);
    assert!(matches!(
        plan_region(&shape, std::slice::from_ref(&half), &outside),
        Err(PlanError::BadRegion(_))
    ));
    let overflow = Region::Flat {
        start: u64::MAX,
        len: 2,
    };
    assert!(matches!(
        plan_region(&shape, &[overflow], &half),
        Err(PlanError::BadRegion(_))
    ));
}

#[test]
fn overlapping_stored_chunks_are_found() {
    let shape = [6u64, 4];
    let b = |r0, rl, c0, cl| Region::Box {
        offsets: vec![r0, c0],
        lengths: vec![rl, cl],
    };
    let f = |start, len| Region::Flat { start, len };
    // Disjoint: column slabs of two row shards, flat tails, an empty box.
    let ok = [
        b(0, 3, 0, 2),
        b(0, 3, 2, 2),
        b(3, 2, 0, 4),
        f(20, 4),
        b(0, 0, 0, 4),
    ];
    check_disjoint(&shape, &ok).unwrap();
    let err = check_disjoint(&shape, &[b(0, 3, 0, 3), b(2, 2, 2, 2)]).unwrap_err();
    assert!(err.contains("chunks 0 and 1 overlap"), "{err}");
    // A flat range reaching into a box's second row (element 7 = row 1, column 3).
    let err = check_disjoint(&shape, &[b(0, 2, 2, 2), f(5, 3)]).unwrap_err();
    assert!(err.contains("overlap"), "{err}");
    // ... but passing between its rows is fine (elements 4 and 5 are columns 0, 1).
    check_disjoint(&shape, &[b(0, 2, 2, 2), f(4, 2)]).unwrap();
    let err = check_disjoint(&shape, &[f(0, 10), f(9, 2)]).unwrap_err();
    assert!(err.contains("overlap"), "{err}");
}
