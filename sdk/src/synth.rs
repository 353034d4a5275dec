//! `granary synth`: a deterministic generator of a captioned dataset in the
//! `folder` ingest format. Simple shapes of named colours on named
//! backgrounds, at a few sizes and aspect ratios, saved as JPEG, PNG and
//! WebP, with English and Chinese captions in several styles, some
//! watermark/subtitle defects with their boxes, a cheap visual embedding,
//! and optional short H.264 MP4 clips of a moving shape.
//!
//! Output: `OUT/images/NNNNNN.{jpg,png,webp}` and `OUT/videos/NNNNNN.mp4`,
//! each with `.txt` (short English caption) and `.json` sidecars.
//! Same options, same bytes: every sample draws from its own RNG stream
//! seeded by (seed, kind, index).

mod draw;
mod video;

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::json;

pub use draw::{COLOURS, Canvas, Colour, Shape};

/// Synthetic generation errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{0}")]
    InvalidInput(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("encoding {what}: {message}")]
    Encode { what: String, message: String },
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct SynthOptions {
    /// Number of images.
    pub n: usize,
    /// Number of video clips.
    pub videos: usize,
    pub seed: u64,
    /// Probability of given shapes (the rest share what is left evenly).
    pub skew: Vec<(Shape, f64)>,
    /// Worker threads (output does not depend on it).
    pub threads: usize,
}

impl Default for SynthOptions {
    fn default() -> Self {
        SynthOptions {
            n: 200,
            videos: 4,
            seed: 0,
            skew: Vec::new(),
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

/// What was generated.
#[derive(Debug, Clone, Default)]
pub struct SynthSummary {
    pub images: u64,
    pub videos: u64,
    pub bytes: u64,
    pub with_defects: u64,
}

/// Parse `circle=0.8,star=0.1` into a skew list.
pub fn parse_skew(spec: &str) -> Result<Vec<(Shape, f64)>, Error> {
    let mut out = Vec::new();
    for part in spec.split(',').filter(|p| !p.trim().is_empty()) {
        let (name, p) = part.split_once('=').ok_or_else(|| {
            Error::InvalidInput(format!("--skew: expected SHAPE=PROB, got {part:?}"))
        })?;
        let shape = Shape::parse(name.trim()).ok_or_else(|| {
            let names: Vec<_> = Shape::ALL.iter().map(|s| s.name()).collect();
            Error::InvalidInput(format!(
                "--skew: unknown shape {name:?} (one of {})",
                names.join(", ")
            ))
        })?;
        let p: f64 = p
            .trim()
            .parse()
            .ok()
            .filter(|p: &f64| (0.0..=1.0).contains(p))
            .ok_or_else(|| {
                Error::InvalidInput(format!("--skew: {p:?} is not a probability in [0, 1]"))
            })?;
        out.push((shape, p));
    }
    let total: f64 = out.iter().map(|(_, p)| p).sum();
    if total > 1.0 + 1e-9 {
        return Err(Error::InvalidInput(format!(
            "--skew: probabilities add up to {total}, more than 1"
        )));
    }
    Ok(out)
}

/// SplitMix64: tiny, fast, and a fixed stream for a fixed seed on every platform.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64, kind: u64, index: u64) -> Rng {
        let mut r = Rng(seed ^ kind.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index.rotate_left(29));
        r.next();
        r
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.unit() * n as f64) as usize % n.max(1)
    }
    pub(crate) fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit() as f32
    }
}

fn pick_shape(rng: &mut Rng, skew: &[(Shape, f64)]) -> Shape {
    let rest: Vec<Shape> = Shape::ALL
        .into_iter()
        .filter(|s| !skew.iter().any(|(k, _)| k == s))
        .collect();
    let fixed: f64 = skew.iter().map(|(_, p)| p).sum();
    let mut u = rng.unit();
    for (s, p) in skew {
        if u < *p {
            return *s;
        }
        u -= p;
    }
    if rest.is_empty() {
        return skew.last().map_or(Shape::Circle, |(s, _)| *s);
    }
    let share = (1.0 - fixed) / rest.len() as f64;
    rest[((u / share.max(1e-12)) as usize).min(rest.len() - 1)]
}

fn pick_colours(rng: &mut Rng) -> (Colour, Colour) {
    let fg = COLOURS[rng.below(COLOURS.len())];
    loop {
        let bg = COLOURS[rng.below(COLOURS.len())];
        if bg.name != fg.name && (draw::luminance(bg.rgb) - draw::luminance(fg.rgb)).abs() > 0.08 {
            return (fg, bg);
        }
    }
}

const CANVASES: [(usize, usize, &str, &str); 3] = [
    (256, 256, "square", "方形"),
    (320, 192, "landscape", "横向"),
    (192, 320, "portrait", "竖向"),
];
const SIZES: [(f32, &str, &str); 3] = [
    (0.16, "small", "小"),
    (0.26, "medium-sized", "中等大小的"),
    (0.38, "large", "大"),
];
const PLACES: [(&str, &str); 9] = [
    ("top left", "左上方"),
    ("top", "上方"),
    ("top right", "右上方"),
    ("left", "左侧"),
    ("center", "中央"),
    ("right", "右侧"),
    ("bottom left", "左下方"),
    ("bottom", "下方"),
    ("bottom right", "右下方"),
];

fn caption(text: String, lang: &str, style: &str) -> serde_json::Value {
    json!({"text": text, "lang": lang, "style": style})
}

/// One image sample: encoded bytes, extension and JSON sidecar.
fn image_sample(
    seed: u64,
    index: u64,
    skew: &[(Shape, f64)],
) -> Result<(Vec<u8>, &'static str, serde_json::Value, String), Error> {
    let mut rng = Rng::new(seed, 1, index);
    let shape = pick_shape(&mut rng, skew);
    let (fg, bg) = pick_colours(&mut rng);
    let (w, h, aspect, aspect_zh) = CANVASES[rng.below(CANVASES.len())];
    let (scale, size, size_zh) = SIZES[rng.below(SIZES.len())];
    let place = rng.below(PLACES.len());
    let r = scale * w.min(h) as f32;
    let cell = |i: usize, len: usize| {
        let c = (i as f32 + 0.5) / 3.0 * len as f32;
        c.clamp(r + 2.0, len as f32 - r - 2.0)
    };
    let (cx, cy) = (cell(place % 3, w), cell(place / 3, h));
    let mut canvas = Canvas::background(w, h, bg.rgb);
    canvas.shape(shape, cx, cy, r, fg.rgb);

    // Defects: a watermark block on ~18% of images, a subtitle band on ~6%;
    // sizes span both sides of the 20% curation threshold.
    let mut defects = Vec::new();
    let mut ocr = 0.0f32;
    let roll = rng.unit();
    if roll < 0.18 {
        let frac = rng.range(0.02, 0.35);
        let bw = ((w * h) as f32 * frac * rng.range(1.2, 2.4))
            .sqrt()
            .min(w as f32 - 4.0) as usize;
        let bh = (((w * h) as f32 * frac) / bw as f32).min(h as f32 - 4.0) as usize;
        let corner = rng.below(4);
        let x0 = if corner.is_multiple_of(2) {
            2
        } else {
            w - bw - 2
        };
        let y0 = if corner / 2 == 0 { 2 } else { h - bh - 2 };
        let b = [x0, y0, x0 + bw, y0 + bh];
        canvas.watermark(b);
        defects.push(json!({"x0": b[0], "y0": b[1], "x1": b[2], "y1": b[3], "kind": "watermark"}));
    } else if roll < 0.24 {
        let bh = (h as f32 * rng.range(0.08, 0.16)) as usize;
        let b = [w / 10, h - bh - 4, w - w / 10, h - 4];
        canvas.subtitle(b);
        ocr = ((b[2] - b[0]) * (b[3] - b[1])) as f32 / (w * h) as f32;
        defects.push(json!({"x0": b[0], "y0": b[1], "x1": b[2], "y1": b[3], "kind": "subtitle"}));
    }

    let contrast = (draw::luminance(fg.rgb) - draw::luminance(bg.rgb)).abs();
    let aesthetic = (3.5 + 4.0 * contrast + if place == 4 { 0.8 } else { 0.0 }
        - if defects.is_empty() { 0.0 } else { 1.2 }
        + rng.range(-0.4, 0.4))
    .clamp(1.0, 10.0);
    let mood = if contrast > 0.4 {
        "bold high-contrast colours"
    } else {
        "soft muted tones"
    };
    let (s, c, b, p) = (shape.name(), fg.name, bg.name, PLACES[place].0);
    let short = format!("a {c} {s} on a {b} background");
    let mut long =
        format!("A {size} {c} {s} in the {p} of a {aspect} image with a plain {b} background.");
    if let Some(d) = defects.first() {
        long.push_str(if d["kind"] == "watermark" {
            " A translucent striped watermark block covers one corner."
        } else {
            " A dark subtitle band runs along the bottom."
        });
    }
    let captions = vec![
        caption(short.clone(), "en", "short"),
        caption(long, "en", "long"),
        caption(
            format!(
                "minimalist flat illustration of a {c} {s} on a {b} backdrop, {mood}, clean composition"
            ),
            "en",
            "aesthetic",
        ),
        caption(
            format!("{}背景上的{}{}", bg.zh, fg.zh, shape.zh()),
            "zh",
            "short",
        ),
        caption(
            format!(
                "一张{aspect_zh}图片，{}纯色背景，{}有一个{size_zh}{}{}。",
                bg.zh,
                PLACES[place].1,
                fg.zh,
                shape.zh()
            ),
            "zh",
            "long",
        ),
    ];
    let meta = json!({
        "captions": captions,
        "aesthetic": (f64::from(aesthetic) * 100.0).round() / 100.0,
        "ocr_ratio": (f64::from(ocr) * 1000.0).round() / 1000.0,
        "source": "synth",
        "defects": defects,
        "embedding": canvas.descriptor(),
        "shape": s, "colour": c, "background": b,
    });
    let (bytes, ext) = encode_image(&canvas, rng.below(3))?;
    Ok((bytes, ext, meta, short))
}

fn encode_image(c: &Canvas, which: usize) -> Result<(Vec<u8>, &'static str), Error> {
    use image::ImageEncoder;
    let mut out = Vec::new();
    let (w, h) = (c.width as u32, c.height as u32);
    let ty = image::ExtendedColorType::Rgb8;
    let (res, ext) = match which {
        0 => (
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
                .write_image(&c.rgb, w, h, ty),
            "jpg",
        ),
        1 => (
            image::codecs::png::PngEncoder::new(&mut out).write_image(&c.rgb, w, h, ty),
            "png",
        ),
        _ => (
            image::codecs::webp::WebPEncoder::new_lossless(Cursor::new(&mut out))
                .write_image(&c.rgb, w, h, ty),
            "webp",
        ),
    };
    res.map_err(|e| Error::Encode {
        what: ext.into(),
        message: e.to_string(),
    })?;
    Ok((out, ext))
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    std::fs::write(path, bytes).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Generate the dataset under `out` (created; must be new or empty).
/// `progress` is called with the number of samples finished so far.
pub fn synth(
    out: &Path,
    opts: &SynthOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<SynthSummary, Error> {
    if out.exists()
        && std::fs::read_dir(out)
            .map_err(|source| Error::Io {
                path: out.to_path_buf(),
                source,
            })?
            .next()
            .is_some()
    {
        return Err(Error::InvalidInput(format!(
            "{} exists and is not empty; give a new or empty directory",
            out.display()
        )));
    }
    let images_dir = out.join("images");
    let videos_dir = out.join("videos");
    for d in [&images_dir, &videos_dir] {
        std::fs::create_dir_all(d).map_err(|source| Error::Io {
            path: d.clone(),
            source,
        })?;
    }
    let done = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    let defects = AtomicU64::new(0);
    let total = opts.n + opts.videos;
    let threads = opts.threads.clamp(1, 64);
    let results: Vec<Result<(), Error>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (done, bytes, defects, images_dir, videos_dir) =
                    (&done, &bytes, &defects, &images_dir, &videos_dir);
                scope.spawn(move || -> Result<(), Error> {
                    for i in (t..total).step_by(threads) {
                        let (data, ext, meta, txt, dir, name) = if i < opts.n {
                            let (data, ext, meta, txt) =
                                image_sample(opts.seed, i as u64, &opts.skew)?;
                            (data, ext, meta, txt, images_dir, format!("{i:06}"))
                        } else {
                            let v = i - opts.n;
                            let (data, meta, txt) = video::clip(opts.seed, v as u64, &opts.skew)?;
                            (data, "mp4", meta, txt, videos_dir, format!("{v:06}"))
                        };
                        if meta["defects"].as_array().is_some_and(|d| !d.is_empty()) {
                            defects.fetch_add(1, Ordering::Relaxed);
                        }
                        bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                        write(&dir.join(format!("{name}.{ext}")), &data)?;
                        write(&dir.join(format!("{name}.txt")), txt.as_bytes())?;
                        let json = serde_json::to_vec(&meta).map_err(|e| Error::Encode {
                            what: "json".into(),
                            message: e.to_string(),
                        })?;
                        write(&dir.join(format!("{name}.json")), &json)?;
                        progress(done.fetch_add(1, Ordering::Relaxed) + 1);
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(Error::InvalidInput("a generator thread panicked".into()))
                })
            })
            .collect()
    });
    for r in results {
        r?;
    }
    Ok(SynthSummary {
        images: opts.n as u64,
        videos: opts.videos as u64,
        bytes: bytes.into_inner(),
        with_defects: defects.into_inner(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skew_sets_the_class_mix() {
        let skew = parse_skew("circle=0.8").unwrap();
        let mut rng = Rng::new(7, 0, 0);
        let n = 20_000;
        let circles = (0..n)
            .filter(|_| pick_shape(&mut rng, &skew) == Shape::Circle)
            .count();
        let frac = circles as f64 / n as f64;
        assert!((frac - 0.8).abs() < 0.015, "{frac}");
        assert!(parse_skew("blob=0.5").is_err());
        assert!(parse_skew("circle=0.7,star=0.6").is_err());
        assert!(parse_skew("circle=1.5").is_err());
    }

    #[test]
    fn samples_are_deterministic_and_captions_match_the_drawing() {
        let (a, ext_a, meta_a, short_a) = image_sample(3, 11, &[]).unwrap();
        let (b, ext_b, meta_b, _) = image_sample(3, 11, &[]).unwrap();
        assert_eq!(a, b);
        assert_eq!(ext_a, ext_b);
        assert_eq!(meta_a, meta_b);
        let shape = meta_a["shape"].as_str().unwrap();
        let colour = meta_a["colour"].as_str().unwrap();
        assert!(
            short_a.contains(shape) && short_a.contains(colour),
            "{short_a}"
        );
        let zh = meta_a["captions"][3]["text"].as_str().unwrap();
        assert!(zh.contains(Shape::parse(shape).unwrap().zh()), "{zh}");
        let (c, ..) = image_sample(3, 12, &[]).unwrap();
        assert_ne!(a, c);
    }
}
