//! Per-sample weights that move a visual × semantic cluster table to tempered marginals.
//!
//! Dual-axis sampling (Seedream 3.0) clusters every sample twice: along a
//! visual axis (k-means over embeddings) and a semantic axis (text
//! clusters). [`fit`] takes the two-way table of sample counts and finds one
//! weight per cell so that the weighted marginals of both axes match targets,
//! usually [`tempered_targets`] that flatten the raw cluster sizes.
//!
//! The method is iterative proportional fitting (Deming and Stephan 1940) on
//! the cell masses `m_ij = counts_ij × w_ij`, with two guards against a few
//! samples dominating: a cap on any weight relative to the mean weight,
//! enforced inside every row and column step (a bounded projection, solved
//! exactly by water-filling), and a floor on the effective sample size,
//! enforced after the fit by tempering weights toward uniform. Guards can
//! make the targets unreachable; the fit then reports the error it achieved.
//!
//! Deterministic: a fixed sequence of floating-point operations, no threads.

use std::fmt;

/// Input errors are one-line messages naming what was wrong: a bad shape
/// (lengths), a bad value (targets, options, an empty table) or an
/// infeasible target (mass asked of a cluster with no samples).
fn bad_shape(what: impl fmt::Display) -> String {
    format!("ipf: bad shape: {what}")
}

fn bad_value(what: impl fmt::Display) -> String {
    format!("ipf: bad value: {what}")
}

/// Tempered target masses: `t_i ∝ count_i^tau`. `tau = 1` keeps the raw
/// distribution, `tau = 0` is uniform over the non-empty clusters; `tau` is
/// clamped to `[0, 1]` and a NaN `tau` counts as 1. Clusters whose count is
/// not positive (or not finite) get 0. Sums to 1, or is all zeros when no
/// cluster is non-empty.
pub fn tempered_targets(counts: &[f64], tau: f64) -> Vec<f64> {
    let tau = if tau.is_nan() {
        1.0
    } else {
        tau.clamp(0.0, 1.0)
    };
    let raw: Vec<f64> = counts
        .iter()
        .map(|&c| {
            if c > 0.0 && c.is_finite() {
                c.powf(tau)
            } else {
                0.0
            }
        })
        .collect();
    let total: f64 = raw.iter().sum();
    if total > 0.0 {
        raw.iter().map(|r| r / total).collect()
    } else {
        raw
    }
}

/// Options of [`fit`].
#[derive(Debug, Clone, PartialEq)]
pub struct IpfOptions {
    /// Most row-then-column sweeps.
    pub max_iter: usize,
    /// Converged when every marginal mass is within this of its target.
    pub tol: f64,
    /// No sample weighs more than this times the mean weight (at least 1;
    /// `f64::INFINITY` disables the cap).
    pub max_weight_ratio: f64,
    /// Effective sample size floor as a fraction of the sample count, in `[0, 1]`.
    pub min_ess_fraction: f64,
}

impl Default for IpfOptions {
    fn default() -> Self {
        Self {
            max_iter: 200,
            tol: 1e-4,
            max_weight_ratio: 50.0,
            min_ess_fraction: 0.05,
        }
    }
}

/// Result of [`fit`].
#[derive(Debug, Clone, PartialEq)]
pub struct IpfFit {
    /// Visual clusters (rows of the table).
    pub v: usize,
    /// Semantic clusters (columns of the table).
    pub s: usize,
    /// `v * s` row-major: the weight of one sample in cell `(i, j)`; 0 for
    /// empty cells. The mean weight over all samples is 1.
    pub cell_weight: Vec<f64>,
    /// Sweeps run.
    pub iterations: usize,
    /// Whether the final weights meet every target within `tol`.
    pub converged: bool,
    /// Largest `|achieved − target|` over both marginals, in normalised mass,
    /// for the final weights (after the cap and the ESS floor).
    pub max_error: f64,
    /// Effective sample size `(Σw)² / Σw²` over samples.
    pub ess: f64,
    /// Whether the weight cap or the ESS floor changed the weights.
    pub capped: bool,
}

/// Fits per-cell sample weights to the targets.
///
/// `counts` is the `v * s` row-major table of sample counts. `target_v` and
/// `target_s` are normalised to sum 1 here; a positive target on a cluster
/// with no samples is an error. Targets that the table's
/// zero pattern cannot meet (for example a block structure whose blocks'
/// targets disagree) are not an error: the fit stops at `max_iter` with
/// `converged == false` and the error it reached. An ESS floor above the
/// number of samples with positive weight cannot be met; the weights then
/// end uniform over those samples and `ess` reports what was reached.
pub fn fit(
    counts: &[u64],
    v: usize,
    s: usize,
    target_v: &[f64],
    target_s: &[f64],
    opts: &IpfOptions,
) -> Result<IpfFit, String> {
    if v == 0 || s == 0 {
        return Err(bad_shape(format!("table is {v} × {s}")));
    }
    if v.checked_mul(s) != Some(counts.len()) {
        return Err(bad_shape(format!(
            "{} counts for a {v} × {s} table",
            counts.len()
        )));
    }
    if target_v.len() != v || target_s.len() != s {
        return Err(bad_shape(format!(
            "targets have lengths {} and {}, table is {v} × {s}",
            target_v.len(),
            target_s.len()
        )));
    }
    check_options(opts)?;
    let total = counts
        .iter()
        .try_fold(0u64, |a, &c| a.checked_add(c))
        .ok_or_else(|| bad_value("total count overflows u64"))?;
    if total == 0 {
        return Err(bad_value("the table holds no samples"));
    }
    let n = total as f64;
    let c: Vec<f64> = counts.iter().map(|&x| x as f64).collect();
    let mut row_n = vec![0f64; v];
    let mut col_n = vec![0f64; s];
    for i in 0..v {
        for j in 0..s {
            row_n[i] += c[i * s + j];
            col_n[j] += c[i * s + j];
        }
    }
    let tv = normalise(target_v, &row_n, "visual")?;
    let ts = normalise(target_s, &col_n, "semantic")?;

    // Masses start at the raw shares; the cap is a mass bound per cell.
    let cap = opts.max_weight_ratio;
    let mut m: Vec<f64> = c.iter().map(|x| x / n).collect();
    let upper: Vec<f64> = c
        .iter()
        .map(|&x| if x > 0.0 { cap * x / n } else { 0.0 })
        .collect();
    let mut iterations = 0;
    let (mut col_m, mut col_u) = (vec![0f64; v], vec![0f64; v]);
    while iterations < opts.max_iter {
        iterations += 1;
        for ((row, cap_row), &t) in m.chunks_exact_mut(s).zip(upper.chunks_exact(s)).zip(&tv) {
            scale_capped(row, cap_row, t);
        }
        for j in 0..s {
            for i in 0..v {
                col_m[i] = m[i * s + j];
                col_u[i] = upper[i * s + j];
            }
            scale_capped(&mut col_m, &col_u, ts[j]);
            for i in 0..v {
                m[i * s + j] = col_m[i];
            }
        }
        if marginal_error(&m, v, s, &tv, &ts) <= opts.tol {
            break;
        }
    }

    // Weights with mean 1 over all samples; re-impose the cap, which the
    // normalisation can break when the caps kept the total mass below 1.
    let mass: f64 = m.iter().sum();
    let mut w: Vec<f64> = m
        .iter()
        .zip(&c)
        .map(|(&m, &c)| {
            if c > 0.0 && mass > 0.0 {
                m / c * n / mass
            } else {
                0.0
            }
        })
        .collect();
    if cap.is_finite() {
        let mut cell_mass: Vec<f64> = w.iter().zip(&c).map(|(w, c)| w * c).collect();
        let cell_cap: Vec<f64> = c.iter().map(|c| cap * c).collect();
        scale_capped(&mut cell_mass, &cell_cap, n);
        for ((w, m), &c) in w.iter_mut().zip(&cell_mass).zip(&c) {
            *w = if c > 0.0 { m / c } else { 0.0 };
        }
    }
    let mut capped = w.iter().any(|&x| x >= cap * (1.0 - 1e-9));

    // ESS floor: w ← w^α / mean, the largest α in [0, 1] that meets it.
    // ESS(α) is non-increasing in α (the log of ESS/n is 2K(α) − K(2α) for
    // the convex cumulant function K of ln w), so bisection finds it.
    let floor = opts.min_ess_fraction * n;
    if ess(&w, &c) < floor {
        let (mut lo, mut hi) = (0.0f64, 1.0f64);
        for _ in 0..60 {
            let mid = 0.5 * (lo + hi);
            if ess(&temper(&w, &c, mid), &c) >= floor {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        w = temper(&w, &c, lo);
        capped = true;
    }

    let final_m: Vec<f64> = w.iter().zip(&c).map(|(w, c)| w * c / n).collect();
    let max_error = marginal_error(&final_m, v, s, &tv, &ts);
    Ok(IpfFit {
        v,
        s,
        ess: ess(&w, &c),
        cell_weight: w,
        iterations,
        converged: max_error <= opts.tol,
        max_error,
        capped,
    })
}

fn check_options(opts: &IpfOptions) -> Result<(), String> {
    if opts.tol.is_nan() || opts.tol < 0.0 {
        return Err(bad_value(format!("tol is {}", opts.tol)));
    }
    if opts.max_weight_ratio.is_nan() || opts.max_weight_ratio < 1.0 {
        return Err(bad_value(format!(
            "max_weight_ratio is {}; it must be at least 1",
            opts.max_weight_ratio
        )));
    }
    if !(0.0..=1.0).contains(&opts.min_ess_fraction) {
        return Err(bad_value(format!(
            "min_ess_fraction is {}; it must be in [0, 1]",
            opts.min_ess_fraction
        )));
    }
    Ok(())
}

/// Checks one axis's targets and scales them to sum 1.
fn normalise(target: &[f64], counts: &[f64], axis: &str) -> Result<Vec<f64>, String> {
    if let Some(i) = target.iter().position(|t| !t.is_finite() || *t < 0.0) {
        return Err(bad_value(format!("{axis} target {i} is {}", target[i])));
    }
    let sum: f64 = target.iter().sum();
    if sum <= 0.0 || !sum.is_finite() {
        return Err(bad_value(format!("{axis} targets sum to {sum}")));
    }
    if let Some(i) = (0..target.len()).find(|&i| target[i] > 0.0 && counts[i] == 0.0) {
        return Err(format!(
            "ipf: infeasible target: {axis} cluster {i} has target {} but no samples",
            target[i] / sum
        ));
    }
    Ok(target.iter().map(|t| t / sum).collect())
}

/// Largest |achieved − target| over both marginals of `m`, normalised to
/// total mass 1 (1.0 when the mass vanished).
fn marginal_error(m: &[f64], v: usize, s: usize, tv: &[f64], ts: &[f64]) -> f64 {
    let total: f64 = m.iter().sum();
    if total.is_nan() || total <= 0.0 {
        return 1.0;
    }
    let mut err = 0f64;
    let mut col = vec![0f64; s];
    for i in 0..v {
        let row = &m[i * s..(i + 1) * s];
        err = err.max((row.iter().sum::<f64>() / total - tv[i]).abs());
        for (c, x) in col.iter_mut().zip(row) {
            *c += x;
        }
    }
    for (c, t) in col.iter().zip(ts) {
        err = err.max((c / total - t).abs());
    }
    err
}

/// Bounded scaling step: replaces `x` by `min(λ x_k, u_k)` with λ chosen so
/// that the sum is `target` (water-filling). When even the caps sum to less,
/// every positive entry goes to its cap. Entries at 0 stay 0.
fn scale_capped(x: &mut [f64], u: &[f64], target: f64) {
    let sum: f64 = x.iter().sum();
    if sum.is_nan() || sum <= 0.0 {
        return;
    }
    let plain = target / sum;
    if x.iter().zip(u).all(|(&x, &u)| x == 0.0 || plain * x <= u) {
        for x in x.iter_mut() {
            *x *= plain;
        }
        return;
    }
    // Breakpoints λ_k = u_k / x_k ascending; clamp entries until the
    // remaining linear part can make up the rest. `free[p]` is the sum of
    // the entries from position p on, each summed directly (no cancellation).
    let mut order: Vec<usize> = (0..x.len()).filter(|&k| x[k] > 0.0).collect();
    order.sort_by(|&a, &b| (u[a] / x[a]).total_cmp(&(u[b] / x[b])).then(a.cmp(&b)));
    let mut free = vec![0f64; order.len() + 1];
    for p in (0..order.len()).rev() {
        free[p] = free[p + 1] + x[order[p]];
    }
    let mut clamped = 0f64;
    let mut lambda = f64::INFINITY;
    for (p, &k) in order.iter().enumerate() {
        let candidate = (target - clamped) / free[p];
        if candidate <= u[k] / x[k] {
            lambda = candidate;
            break;
        }
        clamped += u[k];
    }
    for (x, &u) in x.iter_mut().zip(u) {
        if *x > 0.0 {
            *x = (lambda * *x).min(u);
        }
    }
}

/// Effective sample size of per-cell weights `w` over `c` samples per cell.
fn ess(w: &[f64], c: &[f64]) -> f64 {
    let (s1, s2) = w
        .iter()
        .zip(c)
        .fold((0.0, 0.0), |(a, b), (w, c)| (a + c * w, b + c * w * w));
    if s2 > 0.0 { s1 * s1 / s2 } else { 0.0 }
}

/// `w^α` with mean 1 over samples; zero weights stay zero.
fn temper(w: &[f64], c: &[f64], alpha: f64) -> Vec<f64> {
    let t: Vec<f64> = w
        .iter()
        .map(|&w| if w > 0.0 { w.powf(alpha) } else { 0.0 })
        .collect();
    let n: f64 = c.iter().sum();
    let mass: f64 = t.iter().zip(c).map(|(t, c)| t * c).sum();
    if mass > 0.0 {
        t.iter().map(|t| t * n / mass).collect()
    } else {
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One row holds 80% of the samples; rows and columns are correlated.
    const SKEWED: [u64; 30] = [
        6000, 1200, 500, 200, 100, //
        100, 500, 150, 50, 0, //
        50, 100, 350, 40, 10, //
        20, 30, 60, 250, 40, //
        10, 10, 20, 30, 130, //
        5, 10, 10, 5, 20,
    ];

    fn margins(counts: &[u64], v: usize, s: usize) -> (Vec<f64>, Vec<f64>) {
        let mut r = vec![0.0; v];
        let mut c = vec![0.0; s];
        for i in 0..v {
            for j in 0..s {
                r[i] += counts[i * s + j] as f64;
                c[j] += counts[i * s + j] as f64;
            }
        }
        (r, c)
    }

    /// Achieved normalised marginals of a fit, recomputed from its weights.
    fn achieved(f: &IpfFit, counts: &[u64]) -> (Vec<f64>, Vec<f64>) {
        let mut r = vec![0.0; f.v];
        let mut c = vec![0.0; f.s];
        let mut total = 0.0;
        for i in 0..f.v {
            for j in 0..f.s {
                let m = counts[i * f.s + j] as f64 * f.cell_weight[i * f.s + j];
                r[i] += m;
                c[j] += m;
                total += m;
            }
        }
        r.iter_mut().chain(c.iter_mut()).for_each(|x| *x /= total);
        (r, c)
    }

    fn fit_tau(tau: f64, opts: &IpfOptions) -> (IpfFit, Vec<f64>, Vec<f64>) {
        let (r, c) = margins(&SKEWED, 6, 5);
        let (tv, ts) = (tempered_targets(&r, tau), tempered_targets(&c, tau));
        let f = fit(&SKEWED, 6, 5, &tv, &ts, opts).unwrap();
        (f, tv, ts)
    }

    fn close(a: f64, b: f64, eps: f64) -> bool {
        (a - b).abs() <= eps
    }

    #[test]
    fn tempered_targets_known_values() {
        let t = tempered_targets(&[6.0, 3.0, 1.0, 0.0], 1.0);
        assert!(
            t.iter()
                .zip([0.6, 0.3, 0.1, 0.0])
                .all(|(a, b)| close(*a, b, 1e-15))
        );
        let t = tempered_targets(&[6.0, 3.0, 1.0, 0.0], 0.0);
        let third = 1.0 / 3.0;
        assert!(
            t.iter()
                .zip([third, third, third, 0.0])
                .all(|(a, b)| close(*a, b, 1e-15))
        );
        // sqrt(9, 4, 1) = 3, 2, 1 out of 6.
        let t = tempered_targets(&[9.0, 0.0, 4.0, 1.0], 0.5);
        let want = [0.5, 0.0, 1.0 / 3.0, 1.0 / 6.0];
        assert!(
            t.iter().zip(want).all(|(a, b)| close(*a, b, 1e-15)),
            "{t:?}"
        );
        // Out-of-range tau is clamped; nothing non-empty gives zeros.
        assert_eq!(
            tempered_targets(&[4.0, 1.0], 2.0),
            tempered_targets(&[4.0, 1.0], 1.0)
        );
        assert_eq!(tempered_targets(&[0.0, f64::NAN, -1.0], 0.5), [0.0; 3]);
    }

    #[test]
    fn independent_table_known_weights() {
        // A uniform 2×2 table fits to the product of the targets.
        let f = fit(
            &[1, 1, 1, 1],
            2,
            2,
            &[0.7, 0.3],
            &[0.6, 0.4],
            &IpfOptions::default(),
        )
        .unwrap();
        let want = [1.68, 1.12, 0.72, 0.48];
        assert!(
            f.cell_weight
                .iter()
                .zip(want)
                .all(|(a, b)| close(*a, b, 1e-12))
        );
        assert!(close(f.ess, 16.0 / 4.8256, 1e-12));
        assert!(f.converged && !f.capped && f.max_error < 1e-12);
    }

    #[test]
    fn ipf_preserves_the_odds_ratio() {
        // counts [[2,1],[1,2]] to rows (0.6, 0.4), columns (0.5, 0.5): IPF keeps
        // the odds ratio 4, so m11 solves 3a² − 4.3a + 1.2 = 0.
        let f = fit(
            &[2, 1, 1, 2],
            2,
            2,
            &[0.6, 0.4],
            &[0.5, 0.5],
            &IpfOptions {
                tol: 1e-13,
                ..IpfOptions::default()
            },
        )
        .unwrap();
        let a = (4.3 - 4.09f64.sqrt()) / 6.0;
        let m: Vec<f64> = f
            .cell_weight
            .iter()
            .zip([2.0, 1.0, 1.0, 2.0])
            .map(|(w, c)| w * c / 6.0)
            .collect();
        let want = [a, 0.6 - a, 0.5 - a, a - 0.1];
        assert!(
            m.iter().zip(want).all(|(x, y)| close(*x, y, 1e-12)),
            "{m:?}"
        );
        assert!(f.converged);
    }

    #[test]
    fn skewed_table_meets_tempered_targets() {
        let (f, tv, ts) = fit_tau(0.5, &IpfOptions::default());
        assert!(f.converged, "{f:?}");
        let (r, c) = achieved(&f, &SKEWED);
        for (a, t) in r.iter().zip(&tv).chain(c.iter().zip(&ts)) {
            assert!(close(*a, *t, 0.01) && close(*a, *t, 0.01 * t), "{a} vs {t}");
        }
        // The reported error is the real one, and within tol.
        let real = r
            .iter()
            .zip(&tv)
            .chain(c.iter().zip(&ts))
            .map(|(a, t)| (a - t).abs())
            .fold(0.0, f64::max);
        assert!(close(f.max_error, real, 1e-12) && real <= 1e-4);
        // Mean weight 1, the empty cell weighs 0, the 80% row is down-weighted.
        let mass: f64 = f
            .cell_weight
            .iter()
            .zip(&SKEWED)
            .map(|(w, &c)| w * c as f64)
            .sum();
        assert!(close(mass, 10_000.0, 1e-6));
        assert_eq!(f.cell_weight[9], 0.0);
        assert!(f.cell_weight[..5].iter().all(|&w| w < 1.0));
        assert!(f.ess > 0.05 * 10_000.0 && !f.capped);
    }

    #[test]
    fn same_input_gives_identical_output() {
        let a = fit_tau(0.3, &IpfOptions::default()).0;
        let b = fit_tau(0.3, &IpfOptions::default()).0;
        let bits = |f: &IpfFit| {
            f.cell_weight
                .iter()
                .map(|x| x.to_bits())
                .collect::<Vec<_>>()
        };
        assert_eq!(bits(&a), bits(&b));
        assert_eq!(
            (a.max_error.to_bits(), a.ess.to_bits()),
            (b.max_error.to_bits(), b.ess.to_bits())
        );
        assert_eq!(a, b);
    }

    #[test]
    fn lower_tau_lifts_the_tail() {
        let mut last: Option<(f64, f64)> = None;
        for tau in [1.0, 0.7, 0.4, 0.0] {
            let (f, _, _) = fit_tau(tau, &IpfOptions::default());
            let (r, c) = achieved(&f, &SKEWED);
            // Row 5 and column 4 are the smallest clusters.
            let tail = (r[5], c[4]);
            if let Some(prev) = last {
                assert!(
                    tail.0 > prev.0 && tail.1 > prev.1,
                    "tau {tau}: {tail:?} after {prev:?}"
                );
            }
            last = Some(tail);
        }
        // tau 1 keeps the raw distribution: all weights 1.
        let (f, _, _) = fit_tau(1.0, &IpfOptions::default());
        assert!(
            f.cell_weight
                .iter()
                .zip(&SKEWED)
                .all(|(&w, &c)| c == 0 || close(w, 1.0, 1e-9))
        );
    }

    #[test]
    fn weight_cap_binds() {
        let opts = IpfOptions {
            max_weight_ratio: 3.0,
            ..IpfOptions::default()
        };
        let (f, tv, ts) = fit_tau(0.0, &opts);
        assert!(f.capped && !f.converged);
        let max = f.cell_weight.iter().fold(0.0, |a: f64, &b| a.max(b));
        assert!(close(max, 3.0, 3e-9), "{max}");
        let (r, c) = achieved(&f, &SKEWED);
        let real = r
            .iter()
            .zip(&tv)
            .chain(c.iter().zip(&ts))
            .map(|(a, t)| (a - t).abs())
            .fold(0.0, f64::max);
        assert!(close(f.max_error, real, 1e-12) && real > opts.tol);
        // Uncapped, the same targets need a weight far above 3.
        let free = fit_tau(
            0.0,
            &IpfOptions {
                max_weight_ratio: f64::INFINITY,
                min_ess_fraction: 0.0,
                ..opts
            },
        )
        .0;
        assert!(free.converged && free.cell_weight.iter().any(|&w| w > 10.0));
    }

    #[test]
    fn cap_is_reached_exactly_when_feasible() {
        // Rows (0.5, 0.5) from counts 9:1 need the small row at weight 5;
        // the cap 6 allows it, the cap 4 does not.
        let t = [0.5, 0.5];
        let ok = fit(
            &[9, 1],
            2,
            1,
            &t,
            &[1.0],
            &IpfOptions {
                max_weight_ratio: 6.0,
                ..IpfOptions::default()
            },
        )
        .unwrap();
        assert!(ok.converged && !ok.capped && close(ok.cell_weight[1], 5.0, 1e-12));
        let tight = fit(
            &[9, 1],
            2,
            1,
            &t,
            &[1.0],
            &IpfOptions {
                max_weight_ratio: 4.0,
                ..IpfOptions::default()
            },
        )
        .unwrap();
        assert!(tight.capped && !tight.converged);
        // Weight 4 on the small row leaves 6 over 9 samples: 2/3 each.
        assert!(
            close(tight.cell_weight[1], 4.0, 1e-12)
                && close(tight.cell_weight[0], 2.0 / 3.0, 1e-12)
        );
        assert!(close(tight.max_error, 0.1, 1e-12));
    }

    #[test]
    fn ess_floor_holds() {
        let opts = IpfOptions {
            min_ess_fraction: 0.8,
            ..IpfOptions::default()
        };
        let (f, _, _) = fit_tau(0.0, &opts);
        assert!(f.capped);
        assert!(f.ess >= 0.8 * 10_000.0 * (1.0 - 1e-9), "{}", f.ess);
        // Bisection found the largest α: the floor is met nearly with equality.
        assert!(f.ess <= 0.8 * 10_000.0 * (1.0 + 1e-6), "{}", f.ess);
        let recomputed = ess(&f.cell_weight, &SKEWED.map(|c| c as f64));
        assert!(close(f.ess, recomputed, 1e-9));
        let mass: f64 = f
            .cell_weight
            .iter()
            .zip(&SKEWED)
            .map(|(w, &c)| w * c as f64)
            .sum();
        assert!(close(mass, 10_000.0, 1e-6));
    }

    #[test]
    fn scale_capped_water_fills() {
        // Caps 1, 10, 10 on 1, 1, 2 to a total 9: the first entry clamps at
        // 1, the rest share 8 as 1:2.
        let mut x = [1.0, 1.0, 2.0];
        scale_capped(&mut x, &[1.0, 10.0, 10.0], 9.0);
        assert!(
            x.iter()
                .zip([1.0, 8.0 / 3.0, 16.0 / 3.0])
                .all(|(a, b)| close(*a, b, 1e-12)),
            "{x:?}"
        );
        // Caps too small: every entry at its cap.
        let mut x = [1.0, 0.0, 2.0];
        scale_capped(&mut x, &[1.0, 5.0, 2.0], 9.0);
        assert_eq!(x, [1.0, 0.0, 2.0]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let o = IpfOptions::default();
        let c = [1, 2, 3, 4];
        let t = [0.5, 0.5];
        let err = |r: Result<IpfFit, String>| r.err().unwrap_or_default();
        let shape = [
            fit(&c, 0, 2, &[], &t, &o),
            fit(&c, 2, 3, &t, &[0.3; 3], &o),
            fit(&c, 2, 2, &[1.0], &t, &o),
            fit(&c, 2, 2, &t, &[1.0, 0.0, 0.0], &o),
        ];
        for (i, r) in shape.into_iter().enumerate() {
            let e = err(r);
            assert!(e.starts_with("ipf: bad shape"), "case {i}: {e}");
        }
        let mut value = vec![
            fit(&c, 2, 2, &[-0.5, 1.5], &t, &o),
            fit(&c, 2, 2, &[f64::NAN, 1.0], &t, &o),
            fit(&c, 2, 2, &t, &[f64::INFINITY, 1.0], &o),
            fit(&c, 2, 2, &t, &[0.0, 0.0], &o),
            fit(&[0; 4], 2, 2, &t, &t, &o),
            fit(&[u64::MAX, 1, 0, 0], 2, 2, &t, &t, &o),
        ];
        let mut bad = |f: fn(&mut IpfOptions)| {
            let mut b = o.clone();
            f(&mut b);
            value.push(fit(&c, 2, 2, &t, &t, &b));
        };
        bad(|b| b.tol = f64::NAN);
        bad(|b| b.max_weight_ratio = 0.5);
        bad(|b| b.max_weight_ratio = f64::NAN);
        bad(|b| b.min_ess_fraction = 1.5);
        bad(|b| b.min_ess_fraction = f64::NAN);
        for (i, r) in value.into_iter().enumerate() {
            let e = err(r);
            assert!(e.starts_with("ipf: bad value"), "case {i}: {e}");
        }
        // Mass asked of an empty cluster: row 1 has no samples.
        let e = err(fit(&[1, 2, 0, 0], 2, 2, &t, &t, &o));
        assert!(
            e.starts_with("ipf: infeasible target: visual cluster 1"),
            "{e}"
        );
        // Zero target on the empty cluster is fine.
        assert!(fit(&[1, 2, 0, 0], 2, 2, &[1.0, 0.0], &t, &o).is_ok());
    }

    #[test]
    fn unreachable_targets_report_their_error() {
        // Block-diagonal table: rows and columns pair up, so the row targets
        // (0.5, 0.5) and column targets (0.9, 0.1) cannot both hold.
        let o = IpfOptions {
            max_weight_ratio: f64::INFINITY,
            min_ess_fraction: 0.0,
            ..IpfOptions::default()
        };
        let f = fit(&[5, 0, 0, 5], 2, 2, &[0.5, 0.5], &[0.9, 0.1], &o).unwrap();
        assert!(!f.converged && f.iterations == o.max_iter);
        assert!(f.max_error > 0.1 && f.cell_weight.iter().all(|w| w.is_finite()));
    }
}
