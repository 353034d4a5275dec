//! `granary curate` and `granary plan`: run the query crate's curation and
//! dual-axis sampling, print their reports (text or one JSON object), and
//! draw the plan's marginals.

use std::io::{IsTerminal, Write};
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;

use crate::query::curate::{self, CurateOptions, CurateReport};
use crate::query::plan::{self, AxisReport, PlanOptions, PlanReport};
use crate::query::plot::{self, Panel};
use crate::storage::Granary;

/// Run curation and print its report.
pub async fn curate(g: &Granary, opts: &CurateOptions, as_json: bool) -> Result<CurateReport> {
    let report = curate::curate(g, opts)
        .await
        .with_context(|| format!("while curating {}", g.root().display()))?;
    let mut out = std::io::stdout().lock();
    if as_json {
        let v = json!({
            "total": report.total, "kept_clean": report.kept_clean,
            "kept_masked": report.kept_masked, "dropped": report.dropped,
            "dropped_by": report.dropped_by, "mean_masked_ratio": report.mean_masked_ratio,
            "masking_gain": report.masking_gain(), "version": report.version,
            "max_defect_ratio": opts.max_defect_ratio,
        });
        writeln!(out, "{v}")?;
        return Ok(report);
    }
    let kept = report.kept_clean + report.kept_masked;
    let pct = |n: u64| 100.0 * n as f64 / report.total.max(1) as f64;
    writeln!(
        out,
        "curate: {} samples: kept {} ({:.1}%), of which {} clean and {} with defect boxes masked \
         (mean masked area {:.1}%); dropped {} ({:.1}%)",
        report.total,
        kept,
        pct(kept),
        report.kept_clean,
        report.kept_masked,
        report.mean_masked_ratio * 100.0,
        report.dropped,
        pct(report.dropped)
    )?;
    for (why, n) in &report.dropped_by {
        writeln!(out, "  dropped for {why}: {n}")?;
    }
    writeln!(
        out,
        "  masking instead of dropping keeps {:.1}% more samples than keeping only clean ones",
        report.masking_gain() * 100.0
    )?;
    match report.version {
        Some(v) => writeln!(
            out,
            "  samples is now at version {v} (columns keep, drop_reason, loss_mask); earlier versions stay readable"
        )?,
        None => writeln!(out, "  dry run: nothing written")?,
    }
    Ok(report)
}

/// Run a plan, print its report and draw the plot.
pub async fn plan(
    g: &Granary,
    opts: &PlanOptions,
    plot_path: Option<&Path>,
    as_json: bool,
) -> Result<PlanReport> {
    let show = std::io::stderr().is_terminal();
    let progress = |msg: &str| {
        if show {
            eprintln!("plan: {msg}");
        }
    };
    let report = plan::plan(g, opts, &progress)
        .await
        .with_context(|| format!("while planning {:?}", opts.name))?;
    if let Some(path) = plot_path {
        let chart = plot::marginals_png_bytes(&[panel(&report.visual), panel(&report.semantic)])
            .with_context(|| format!("while drawing {}", path.display()))?;
        std::fs::write(path, chart.image)
            .with_context(|| format!("while writing {}", path.display()))?;
        if chart.labels_without_glyphs > 0 {
            // Said even with --quiet: the picture lacks what the user expects.
            eprintln!(
                "plan: {} has no glyphs for {} cluster label(s), cut before the first character it cannot draw \
                 (set GRANARY_FONT to a font that covers them, e.g. Noto Sans CJK)",
                chart.font.display(),
                chart.labels_without_glyphs
            );
        }
    }
    let mut out = std::io::stdout().lock();
    if as_json {
        writeln!(out, "{}", report_json(&report))?;
        return Ok(report);
    }
    writeln!(
        out,
        "plan {:?}: {} samples, tau {} (visual axis: {}, {} clusters; semantic axis: {} clusters)",
        report.name,
        report.samples,
        report.tau,
        report.visual_source,
        report.visual.clusters.len(),
        report.semantic.clusters.len()
    )?;
    writeln!(
        out,
        "  skipped: {} with NaN/infinite features, {} without features{}",
        report.skipped_nan,
        report.skipped_missing,
        report
            .excluded_by_curation
            .map(|n| format!("; {n} excluded by curation (keep = false)"))
            .unwrap_or_default()
    )?;
    writeln!(
        out,
        "  effective sample size {:.0} ({:.1}% of samples); max weight {:.2}× the mean; \
         IPF {} iterations, {}, max marginal error {:.4}{}",
        report.ess,
        100.0 * report.ess / report.samples.max(1) as f64,
        report.max_weight,
        report.ipf_iterations,
        if report.ipf_converged {
            "converged"
        } else {
            "NOT converged"
        },
        report.ipf_max_error,
        if report.capped {
            " (weight cap / ESS floor bound)"
        } else {
            ""
        }
    )?;
    for axis in [&report.visual, &report.semantic] {
        write_axis(&mut out, axis)?;
    }
    let t: Vec<String> = report
        .timings
        .iter()
        .map(|(k, s)| format!("{k} {s:.1} s"))
        .collect();
    writeln!(out, "\n  time: {}", t.join(", "))?;
    match report.version {
        Some(v) => writeln!(
            out,
            "  wrote {} rows to sampling_plans (version {v}); query them with \
             granary sql ROOT \"SELECT * FROM sampling_plans WHERE plan = '{}'\"",
            report.samples, report.name
        )?,
        None => writeln!(out, "  dry run: nothing written")?,
    }
    if let Some(p) = plot_path {
        writeln!(out, "  plot: {}", p.display())?;
    }
    Ok(report)
}

fn write_axis(out: &mut dyn Write, a: &AxisReport) -> std::io::Result<()> {
    writeln!(
        out,
        "\n{} axis: entropy {:.3} -> {:.3} nats (uniform: {:.3})",
        a.name, a.entropy_before, a.entropy_after, a.max_entropy
    )?;
    writeln!(
        out,
        "  {:>7} {:>8} {:>7} {:>7} {:>7}  examples",
        "cluster", "samples", "before", "after", "target"
    )?;
    let n = a.clusters.len();
    // Top clusters and the tail, the whole list when short.
    let shown: Vec<usize> = if n <= 10 {
        (0..n).collect()
    } else {
        (0..6).chain(n - 4..n).collect()
    };
    for (j, &i) in shown.iter().enumerate() {
        if j > 0 && i != shown[j - 1] + 1 {
            writeln!(out, "  {:>7}", "…")?;
        }
        let c = &a.clusters[i];
        let mut what = String::new();
        if !c.terms.is_empty() {
            what.push_str(&format!("[{}] ", c.terms.join(", ")));
        }
        what.push_str(
            &c.examples
                .iter()
                .take(2)
                .cloned()
                .collect::<Vec<_>>()
                .join(" | "),
        );
        writeln!(
            out,
            "  {:>7} {:>8} {:>6.1}% {:>6.1}% {:>6.1}%  {}",
            format!("{}{}", &a.name[..1], c.id),
            c.count,
            c.before * 100.0,
            c.after * 100.0,
            c.target * 100.0,
            what
        )?;
    }
    Ok(())
}

fn panel(a: &AxisReport) -> Panel {
    let mut clusters = a.clusters.clone();
    clusters.sort_by_key(|c| c.id);
    Panel {
        title: format!(
            "{} axis: share of samples per cluster (entropy {:.2} -> {:.2} nats)",
            a.name, a.entropy_before, a.entropy_after
        ),
        labels: clusters
            .iter()
            .map(|c| match c.terms.first() {
                Some(t) => format!("{}{} {t}", &a.name[..1], c.id),
                None => format!("{}{}", &a.name[..1], c.id),
            })
            .collect(),
        before: clusters.iter().map(|c| c.before).collect(),
        after: clusters.iter().map(|c| c.after).collect(),
        target: Some(clusters.iter().map(|c| c.target).collect()),
    }
}

fn report_json(r: &PlanReport) -> serde_json::Value {
    let axis = |a: &AxisReport| {
        json!({
            "entropy_before": a.entropy_before, "entropy_after": a.entropy_after,
            "max_entropy": a.max_entropy,
            "clusters": a.clusters.iter().map(|c| json!({
                "id": c.id, "count": c.count, "before": c.before, "after": c.after,
                "target": c.target, "terms": c.terms, "examples": c.examples,
            })).collect::<Vec<_>>(),
        })
    };
    json!({
        "plan": r.name, "tau": r.tau, "samples": r.samples,
        "skipped_nan": r.skipped_nan, "skipped_missing": r.skipped_missing,
        "excluded_by_curation": r.excluded_by_curation, "visual_source": r.visual_source,
        "ess": r.ess, "ipf_iterations": r.ipf_iterations, "ipf_converged": r.ipf_converged,
        "ipf_max_error": r.ipf_max_error, "capped": r.capped, "max_weight": r.max_weight,
        "visual": axis(&r.visual), "semantic": axis(&r.semantic),
        "timings": r.timings.iter().map(|(k, s)| json!({"phase": k, "seconds": s})).collect::<Vec<_>>(),
        "version": r.version,
    })
}
