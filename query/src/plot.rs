//! PNG charts of cluster marginals before and after re-weighting, one panel per sampling axis.
//!
//! Each [`Panel`] becomes a grouped bar chart: the share of samples in each
//! cluster before re-weighting (grey) and after (blue), clusters sorted by
//! their share before, with an optional target share as a red tick. Panels
//! are stacked vertically, [`WIDTH`] × [`PANEL_HEIGHT`] pixels each.
//!
//! Text is drawn with a TrueType font found at run time (`$GRANARY_FONT`, then
//! common system paths); the bitmap is rendered by plotters and encoded with
//! the `image` crate. A cluster label the font has no glyphs for (Chinese
//! terms with a Latin-only font) is cut before its first such character
//! rather than drawn as boxes, and [`Chart::labels_without_glyphs`] counts
//! them so the caller can say which font to install.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use plotters::backend::DrawingBackend;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Width of the image in pixels.
pub const WIDTH: u32 = 1200;
/// Height of one panel in pixels.
pub const PANEL_HEIGHT: u32 = 420;
/// The most panels one image may hold.
pub const MAX_PANELS: usize = 32;
/// The most clusters one panel may hold.
pub const MAX_CLUSTERS: usize = 1024;

/// The font family name the found font is registered under.
const FAMILY: &str = "sans-serif";
/// Cluster labels longer than this many characters are cut with "…".
const MAX_LABEL_CHARS: usize = 18;

const BEFORE: RGBColor = RGBColor(170, 170, 170);
const AFTER: RGBColor = RGBColor(31, 119, 180);
const TARGET: RGBColor = RGBColor(214, 39, 40);

/// One axis of the sampler: its clusters and their shares of the samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    /// Title drawn above the chart, e.g. "semantic axis (TF-IDF, 32 clusters)".
    pub title: String,
    /// Name of each cluster, e.g. "v3" or "circle, red".
    pub labels: Vec<String>,
    /// Share of samples per cluster before re-weighting (sums to 1).
    pub before: Vec<f64>,
    /// Share of samples per cluster after re-weighting (sums to 1).
    pub after: Vec<f64>,
    /// The share the re-weighting aimed at, if any.
    pub target: Option<Vec<f64>>,
}

type BitmapError = <BitMapBackend<'static> as DrawingBackend>::ErrorType;

/// Why a chart could not be drawn.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Neither `$GRANARY_FONT` nor any of the usual system paths holds a font.
    #[error("--plot needs a TrueType font; set GRANARY_FONT=/path/to/font.ttf")]
    NoFont,
    /// The font file could not be read.
    #[error("cannot read font {path}")]
    FontRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The font file is not a TrueType/OpenType font the rasteriser accepts.
    #[error("{path} is not a usable TrueType/OpenType font; set GRANARY_FONT=/path/to/font.ttf")]
    FontInvalid { path: PathBuf },
    /// The panels were inconsistent (lengths differ, none given, too many).
    #[error("bad plot input: {0}")]
    Input(String),
    /// plotters failed while drawing.
    #[error("drawing the chart failed")]
    Draw(#[source] DrawingAreaErrorKind<BitmapError>),
    /// The PNG could not be encoded or written.
    #[error("cannot write PNG {}", path.display())]
    Encode {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
}

impl From<DrawingAreaErrorKind<BitmapError>> for Error {
    fn from(e: DrawingAreaErrorKind<BitmapError>) -> Self {
        Error::Draw(e)
    }
}

/// Fonts tried in order when `$GRANARY_FONT` is unset. CJK-capable fonts come
/// first so that Chinese cluster names render.
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/System/Library/Fonts/Supplemental/Arial Unicode.ttf",
    "/Library/Fonts/Arial Unicode.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation2/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/noto/NotoSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "/Library/Fonts/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// Folders searched for any `.ttf`/`.otf`/`.ttc` when no listed path exists.
const FONT_DIRS: &[&str] = &[
    "/usr/share/fonts",
    "/usr/local/share/fonts",
    "/System/Library/Fonts",
];

/// Whether `bytes` start like a TrueType, OpenType or collection file.
fn looks_like_font(bytes: &[u8]) -> bool {
    matches!(
        bytes.get(..4),
        Some([0, 1, 0, 0] | b"OTTO" | b"true" | b"ttcf")
    )
}

/// Font files under `dir` (at most 6 levels deep), sorted.
fn walk_fonts(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        if p.is_dir() {
            if depth < 6 {
                walk_fonts(&p, depth + 1, out);
            }
        } else if p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "ttf" | "otf" | "ttc"))
        {
            out.push(p);
        }
    }
}

/// Candidate font files: the listed paths that exist, then every font under
/// [`FONT_DIRS`], plain sans faces first.
fn font_candidates() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = FONT_PATHS
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .collect();
    let mut found = Vec::new();
    for dir in FONT_DIRS {
        walk_fonts(Path::new(dir), 0, &mut found);
    }
    let rank = |p: &PathBuf| {
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        let styled = [
            "bold",
            "italic",
            "oblique",
            "mono",
            "condensed",
            "light",
            "black",
            "math",
        ]
        .iter()
        .any(|s| name.contains(s));
        (styled, !name.contains("sans"))
    };
    found.sort_by_key(rank); // stable: keeps path order within a rank
    out.extend(found);
    out
}

/// The font registered with plotters: its path and bytes.
type Font = (PathBuf, &'static [u8]);

/// Registers one font with plotters as [`FAMILY`], once per process.
fn ensure_font() -> Result<Font, Error> {
    static FONT: Mutex<Option<Font>> = Mutex::new(None);
    let mut registered = FONT.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(f) = registered.as_ref() {
        return Ok(f.clone());
    }
    let register = |path: &Path| -> Result<&'static [u8], Error> {
        let bytes = std::fs::read(path).map_err(|source| Error::FontRead {
            path: path.to_owned(),
            source,
        })?;
        if !looks_like_font(&bytes) {
            return Err(Error::FontInvalid {
                path: path.to_owned(),
            });
        }
        // plotters keeps `&'static` font bytes; this happens once per process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font(FAMILY, FontStyle::Normal, bytes).map_err(|_| {
            Error::FontInvalid {
                path: path.to_owned(),
            }
        })?;
        Ok(bytes)
    };
    let font = match std::env::var_os("GRANARY_FONT").filter(|p| !p.is_empty()) {
        Some(path) => {
            let path = PathBuf::from(path);
            let bytes = register(&path)?;
            (path, bytes)
        }
        None => font_candidates()
            .into_iter()
            .find_map(|path| register(&path).ok().map(|bytes| (path, bytes)))
            .ok_or(Error::NoFont)?,
    };
    *registered = Some(font.clone());
    Ok(font)
}

/// `label` as the font can draw it: cut before the first character it has
/// no glyph for (spaces and the cut's own trailing space aside), and
/// whether anything was cut. A label that is all undrawable keeps nothing.
fn drawable_label(font: Option<&ab_glyph::FontRef<'_>>, label: &str) -> (String, bool) {
    use ab_glyph::Font as _;
    let Some(font) = font else {
        return (label.to_owned(), false);
    };
    let cut = label
        .char_indices()
        .find(|&(_, c)| !c.is_whitespace() && font.glyph_id(c).0 == 0);
    match cut {
        None => (label.to_owned(), false),
        Some((at, _)) => (label[..at].trim_end().to_owned(), true),
    }
}

/// Checks the panel count and that each panel's vectors have one entry per label.
fn validate(panels: &[Panel]) -> Result<(), Error> {
    if panels.is_empty() {
        return Err(Error::Input("no panels to plot".into()));
    }
    if panels.len() > MAX_PANELS {
        return Err(Error::Input(format!(
            "{} panels, at most {MAX_PANELS}",
            panels.len()
        )));
    }
    for (i, p) in panels.iter().enumerate() {
        let n = p.labels.len();
        if n > MAX_CLUSTERS {
            let title = &p.title;
            return Err(Error::Input(format!(
                "panel {i} ({title:?}): {n} clusters, at most {MAX_CLUSTERS}"
            )));
        }
        let target = p.target.as_ref().map_or(n, Vec::len);
        if p.before.len() != n || p.after.len() != n || target != n {
            return Err(Error::Input(format!(
                "panel {i} ({:?}): {n} labels but {} before, {} after, {target} target shares",
                p.title,
                p.before.len(),
                p.after.len()
            )));
        }
    }
    Ok(())
}

/// A share as drawn: non-finite and negative values count as 0.
fn share(x: f64) -> f64 {
    if x.is_finite() { x.max(0.0) } else { 0.0 }
}

/// `label` cut to [`MAX_LABEL_CHARS`] characters.
fn short_label(label: &str) -> String {
    if label.chars().count() <= MAX_LABEL_CHARS {
        return label.to_owned();
    }
    let mut s: String = label.chars().take(MAX_LABEL_CHARS - 1).collect();
    s.push('…');
    s
}

/// Formats a share for the y axis: whole percent, or one decimal below 5%.
fn percent(y: f64, fine: bool) -> String {
    if fine {
        format!("{:.1}%", y * 100.0)
    } else {
        format!("{:.0}%", y * 100.0)
    }
}

/// One bar per cluster in `order`, spanning `offset` from the slot centre.
fn bars<'a>(
    order: &'a [usize],
    values: &'a [f64],
    offset: f64,
    color: RGBColor,
) -> impl Iterator<Item = Rectangle<(f64, f64)>> + 'a {
    order.iter().enumerate().map(move |(x, &i)| {
        let x = x as f64;
        let (x0, x1) = if offset < 0.0 {
            (x + offset, x)
        } else {
            (x, x + offset)
        };
        Rectangle::new([(x0, 0.0), (x1, share(values[i]))], color.filled())
    })
}

/// Draws one panel into `area`; the number of labels cut for want of glyphs.
fn draw_panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    panel: &Panel,
    font: Option<&ab_glyph::FontRef<'_>>,
) -> Result<usize, Error> {
    let n = panel.labels.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| {
        share(panel.before[b])
            .total_cmp(&share(panel.before[a]))
            .then(a.cmp(&b))
    });
    let target = panel.target.as_deref();
    let top = panel
        .before
        .iter()
        .chain(&panel.after)
        .chain(target.unwrap_or(&[]))
        .copied()
        .map(share)
        .fold(0.0, f64::max);
    let y_max = if top > 0.0 { top * 1.15 } else { 1.0 };

    // Decide the x labels: horizontal if they all fit, else rotated and thinned.
    let label_font = (FAMILY, 13).into_font();
    let mut cut = 0;
    let labels: Vec<String> = panel
        .labels
        .iter()
        .map(|l| {
            let (l, lacks) = drawable_label(font, l);
            cut += usize::from(lacks);
            short_label(&l)
        })
        .collect();
    let mut widest = 0u32;
    for l in &labels {
        widest = widest.max(area.estimate_text_size(l, &label_font.clone().into())?.0);
    }
    let (y_area, margin) = (80u32, 12u32);
    let slot = f64::from(WIDTH - y_area - 3 * margin) / n.max(1) as f64;
    let rotated = f64::from(widest + 8) > slot;
    let stride = if rotated {
        (16.0 / slot).ceil().max(1.0) as usize
    } else {
        1
    };
    let x_area = if rotated { widest + 14 } else { 28 };

    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FAMILY, 22))
        .margin(margin)
        .x_label_area_size(x_area)
        .y_label_area_size(y_area)
        .build_cartesian_2d(-0.5f64..(n.max(1) as f64 - 0.5), 0f64..y_max)?;
    let fine = y_max < 0.05;
    let y_fmt = |y: &f64| percent(*y, fine);
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .x_label_formatter(&|_| String::new())
        .y_labels(8)
        .y_label_formatter(&y_fmt)
        .y_desc("share of samples")
        .axis_desc_style((FAMILY, 15))
        .label_style((FAMILY, 13))
        .light_line_style(TRANSPARENT)
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()?;

    let half = if n > 60 { 0.45 } else { 0.4 };
    chart
        .draw_series(bars(&order, &panel.before, -half, BEFORE))?
        .label("before")
        .legend(|(x, y)| Rectangle::new([(x, y - 6), (x + 16, y + 6)], BEFORE.filled()));
    chart
        .draw_series(bars(&order, &panel.after, half, AFTER))?
        .label("after")
        .legend(|(x, y)| Rectangle::new([(x, y - 6), (x + 16, y + 6)], AFTER.filled()));
    if let Some(target) = target {
        let ticks = order.iter().enumerate().map(|(x, &i)| {
            let x = x as f64;
            let y = share(target[i]);
            PathElement::new(
                vec![(x - half - 0.05, y), (x + half + 0.05, y)],
                TARGET.stroke_width(3),
            )
        });
        chart
            .draw_series(ticks)?
            .label("target")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], TARGET.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FAMILY, 14))
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(180, 180, 180))
        .draw()?;

    // Cluster names under the axis, in area-relative pixels.
    let base = area.get_base_pixel();
    let style: TextStyle = if rotated {
        label_font
            .transform(FontTransform::Rotate270)
            .color(&BLACK)
            .pos(Pos::new(HPos::Right, VPos::Center))
    } else {
        label_font
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Top))
    };
    for (x, &i) in order.iter().enumerate().step_by(stride) {
        let (px, py) = chart.backend_coord(&(x as f64, 0.0));
        let at = (px - base.0, py - base.1 + 6);
        area.draw(&Text::new(labels[i].as_str(), at, style.clone()))?;
    }
    if stride > 1 {
        let note = format!("{n} clusters; 1 in {stride} named");
        let (px, py) = chart.backend_coord(&(n as f64 - 0.5, y_max));
        let at = (px - base.0, py - base.1 - 4);
        let note_style = (FAMILY, 12).into_font().color(&RGBColor(90, 90, 90));
        area.draw(&Text::new(
            note,
            at,
            note_style.pos(Pos::new(HPos::Right, VPos::Bottom)),
        ))?;
    }
    Ok(cut)
}

/// A drawn chart, with the font it was drawn in.
pub struct Chart<T> {
    /// The picture: an [`image::RgbImage`] or PNG bytes.
    pub image: T,
    /// The font file the text was drawn with.
    pub font: PathBuf,
    /// Cluster labels cut short because the font has no glyphs for some of
    /// their characters (e.g. Chinese terms with a Latin-only font).
    pub labels_without_glyphs: usize,
}

/// Renders the panels stacked vertically into an RGB image
/// [`WIDTH`] × ([`PANEL_HEIGHT`] × panels).
pub fn render_marginals(panels: &[Panel]) -> Result<Chart<image::RgbImage>, Error> {
    validate(panels)?;
    let (font, bytes) = ensure_font()?;
    // A font collection or a face ab_glyph cannot parse: draw labels as given.
    let glyphs = ab_glyph::FontRef::try_from_slice(bytes).ok();
    let height = PANEL_HEIGHT * panels.len() as u32;
    let mut buf = vec![255u8; WIDTH as usize * height as usize * 3];
    let mut cut = 0;
    {
        let root = BitMapBackend::with_buffer(&mut buf, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE)?;
        for (area, panel) in root.split_evenly((panels.len(), 1)).iter().zip(panels) {
            cut += draw_panel(area, panel, glyphs.as_ref())?;
        }
        root.present()?;
    }
    let image = image::RgbImage::from_raw(WIDTH, height, buf)
        .ok_or_else(|| Error::Input("internal: pixel buffer has the wrong size".into()))?;
    Ok(Chart {
        image,
        font,
        labels_without_glyphs: cut,
    })
}

/// The panels as PNG bytes (see [`render_marginals`]).
pub fn marginals_png_bytes(panels: &[Panel]) -> Result<Chart<Vec<u8>>, Error> {
    let chart = render_marginals(panels)?;
    let mut out = Cursor::new(Vec::new());
    chart
        .image
        .write_to(&mut out, image::ImageFormat::Png)
        .map_err(|source| Error::Encode {
            path: PathBuf::from("<memory>"),
            source,
        })?;
    Ok(Chart {
        image: out.into_inner(),
        font: chart.font,
        labels_without_glyphs: chart.labels_without_glyphs,
    })
}

/// Draws the panels (see [`render_marginals`]) and writes them to `path` as
/// a PNG. Test-only: query writes no files; the CLI writes
/// [`marginals_png_bytes`] where the user asked.
#[cfg(test)]
fn marginals_png(path: &Path, panels: &[Panel]) -> Result<(), Error> {
    let img = render_marginals(panels)?.image;
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(|source| Error::Encode {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Zipf-like shares over `n` clusters, normalised to 1.
    fn zipf(n: usize, s: f64) -> Vec<f64> {
        let raw: Vec<f64> = (1..=n).map(|r| 1.0 / (r as f64).powf(s)).collect();
        let total: f64 = raw.iter().sum();
        raw.into_iter().map(|x| x / total).collect()
    }

    fn sample_panels() -> Vec<Panel> {
        let visual = Panel {
            title: "visual axis (6 clusters)".into(),
            labels: (0..6).map(|i| format!("v{i}")).collect(),
            before: zipf(6, 1.2),
            after: vec![0.2, 0.18, 0.17, 0.16, 0.15, 0.14],
            target: Some(vec![1.0 / 6.0; 6]),
        };
        let names = [
            "circle, red",
            "cat, kitten",
            "汽车, 公路",
            "portrait, woman",
            "landscape",
        ];
        let n = 40;
        let before = zipf(n, 1.0);
        let flat = before.iter().map(|b| b.sqrt()).collect::<Vec<_>>();
        let total: f64 = flat.iter().sum();
        let semantic = Panel {
            title: "semantic axis (TF-IDF, 40 clusters)".into(),
            labels: (0..n)
                .map(|i| format!("{} #{i}", names[i % names.len()]))
                .collect(),
            after: flat.iter().map(|x| x / total).collect(),
            before,
            target: None,
        };
        vec![visual, semantic]
    }

    fn temp_png(tag: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        std::env::temp_dir().join(format!(
            "granary-plot-{tag}-{}-{nanos}.png",
            std::process::id()
        ))
    }

    #[test]
    fn writes_a_decodable_png_of_the_right_size() {
        let path = temp_png("two-panels");
        match marginals_png(&path, &sample_panels()) {
            Err(Error::NoFont) => {
                eprintln!("skipped: no TrueType font on this machine");
                return;
            }
            other => other.expect("plot"),
        }
        let img = image::open(&path).expect("decode").to_rgb8();
        let _ = std::fs::remove_file(&path);
        assert_eq!(img.dimensions(), (WIDTH, 2 * PANEL_HEIGHT));
        let first = *img.get_pixel(0, 0);
        assert!(img.pixels().any(|p| *p != first), "flat image");
        // the blue "after" bars and the red target ticks are there
        assert!(img.pixels().any(|p| p.0 == [AFTER.0, AFTER.1, AFTER.2]));
        assert!(img.pixels().any(|p| p.0 == [TARGET.0, TARGET.1, TARGET.2]));
        assert!(img.pixels().any(|p| p.0 == [BEFORE.0, BEFORE.1, BEFORE.2]));
        if let Ok(keep) = std::env::var("GRANARY_PLOT_SAMPLE") {
            marginals_png(Path::new(&keep), &sample_panels()).expect("sample");
        }
    }

    #[test]
    fn labels_the_font_cannot_draw_are_cut_and_counted() {
        // The sample with Latin labels only (its own include Chinese ones).
        let latin = || {
            let mut p = sample_panels();
            p[1].labels = (0..p[1].labels.len())
                .map(|i| format!("s{i} cat"))
                .collect();
            p
        };
        // U+10FFFD is a private-use code point no font maps to a glyph.
        let mut p = latin();
        p[1].labels[0] = "s0 \u{10FFFD}\u{10FFFD}".into();
        p[1].labels[1] = "\u{10FFFD} only".into();
        let chart = match render_marginals(&p) {
            Err(Error::NoFont) => {
                eprintln!("skipped: no TrueType font on this machine");
                return;
            }
            other => other.expect("plot"),
        };
        assert!(chart.font.is_file());
        let (_, bytes) = ensure_font().expect("registered");
        let font = ab_glyph::FontRef::try_from_slice(bytes).ok();
        if font.is_some() {
            assert_eq!(chart.labels_without_glyphs, 2, "font {:?}", chart.font);
            assert_eq!(
                drawable_label(font.as_ref(), "s0 \u{10FFFD}x"),
                ("s0".to_owned(), true)
            );
            assert_eq!(
                drawable_label(font.as_ref(), "v3 red"),
                ("v3 red".to_owned(), false)
            );
            assert_eq!(
                drawable_label(font.as_ref(), "\u{10FFFD}"),
                (String::new(), true)
            );
        }
        // Latin labels are drawn whole.
        assert_eq!(
            render_marginals(&latin())
                .expect("plot")
                .labels_without_glyphs,
            0
        );
    }

    #[test]
    fn many_clusters_render() {
        let n = 128;
        let panel = Panel {
            title: "128 clusters".into(),
            labels: (0..n)
                .map(|i| format!("cluster number {i} with a long name"))
                .collect(),
            before: zipf(n, 0.8),
            after: vec![1.0 / n as f64; n],
            target: Some(vec![1.0 / n as f64; n]),
        };
        match marginals_png_bytes(&[panel]) {
            Err(Error::NoFont) => eprintln!("skipped: no TrueType font on this machine"),
            other => {
                let bytes = other.expect("plot").image;
                let img = image::load_from_memory(&bytes).expect("decode");
                assert_eq!((img.width(), img.height()), (WIDTH, PANEL_HEIGHT));
                if let Ok(keep) = std::env::var("GRANARY_PLOT_SAMPLE_MANY") {
                    std::fs::write(keep, bytes).expect("sample");
                }
            }
        }
    }

    #[test]
    fn rejects_inconsistent_panels() {
        let mut p = sample_panels();
        p[1].after.pop();
        assert!(matches!(render_marginals(&p), Err(Error::Input(_))));
        assert!(matches!(render_marginals(&[]), Err(Error::Input(_))));
        let mut p = sample_panels();
        p[0].target = Some(vec![0.5]);
        let msg = render_marginals(&p).map(|_| ()).unwrap_err().to_string();
        assert!(msg.contains("visual axis"), "{msg}");
    }

    #[test]
    fn labels_and_shares_are_sanitised() {
        assert_eq!(short_label("short"), "short");
        let long = short_label("abcdefghijklmnopqrstuvwxyz");
        assert_eq!(long.chars().count(), MAX_LABEL_CHARS);
        assert!(long.ends_with('…'));
        assert_eq!(
            short_label("一二三四五六七八九十一二三四五六七八九"),
            "一二三四五六七八九十一二三四五六七…"
        );
        assert_eq!(share(f64::NAN), 0.0);
        assert_eq!(share(-0.5), 0.0);
        assert_eq!(share(0.25), 0.25);
        assert_eq!(percent(0.126, false), "13%");
        assert_eq!(percent(0.0126, true), "1.3%");
        assert!(looks_like_font(b"\0\x01\0\0rest"));
        assert!(looks_like_font(b"ttcf"));
        assert!(!looks_like_font(b"<htm"));
    }
}
