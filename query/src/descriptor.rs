//! The built-in visual-morphology descriptor: a fixed-length vector computed
//! from pixels alone, for datasets that carry no CLIP/SigLIP/DINO embedding.
//!
//! The vector is clustered (k-means) into the *visual* axis of dual-axis
//! sampling, so it is dominated by form: the outline of the main object, not
//! where it sits or what colour it is. Colour and layout are present with
//! small weights, so that they only order images within a shape.
//!
//! Pipeline: decode (with a pixel ceiling) → area-averaged working image,
//! 64 px on the short side → [1 2 1] blur (removes fine texture: stripes,
//! glyphs, JPEG ringing; keeps outlines) → per-pixel gradient of whichever of
//! R, G, B changes most (a hue-only edge counts; luminance is a convex mix of
//! the channels and never changes more) → the main object (below) → blocks:
//!
//! | block | dims | measures | weight |
//! |---|---|---|---|
//! | orientation | 20 | edge orientation over [0, π) | 1.0 |
//! | relative angle | 12 | angle between edge normal and the ray from the centroid, [0, π/2] | 1.2 |
//! | radial | 7 | edge distance from the centroid over the mean distance | 0.6 |
//! | symmetry | 8 | harmonics 1–8 of the signed normal-to-ray angle around the centroid | 1.0 |
//! | colour | 8 | pixel share of the eight RGB octants | 0.08 |
//! | layout | 9 | edge energy on a 3×3 grid | 0.08 |
//!
//! Orientation separates square from diamond (a 45° turn). The centroid
//! blocks separate outlines that share orientations: a triangle and a
//! hexagon both have 0°/60°/120° edges, but a triangle's normals swing up to
//! 60° from the ray and its edges lie at 50–100% of the radius, a hexagon's
//! only 30° and 87–100%; the normal-to-ray angle of an n-gon is a sawtooth
//! of period 2π/n, so its harmonic n stands out. The first four blocks are
//! invariant to position, scale and colour. Each block but symmetry (whose
//! spectrum is pure noise for a circle) is L2-normalised, all are scaled by
//! their weights, and the vector is L2-normalised again.
//!
//! The main object is the best-scoring flat-colour region (area times
//! compactness) whose colour differs from the background (the median frame
//! colour) and which does not run along the frame, plus the compact regions
//! touching it. Overlays live along the frame — watermark blocks, caption
//! bands, letterbox bars — and would otherwise add long straight edges to
//! every image that has them. When no region qualifies (photographs with
//! textured backgrounds, blank images) every edge counts.

use std::f32::consts::{FRAC_PI_2, PI};
use std::io::Cursor;

/// Length of every descriptor (the granary's default embedding width).
pub const DIM: usize = 64;

/// Largest image [`describe_encoded`] will decode, in pixels (64 Mpx).
pub const MAX_PIXELS: u64 = 64 * 1024 * 1024;

/// The working image's short side is scaled to this (never up)…
const WORK_SHORT: f32 = 64.0;
/// …and its long side to at most this.
const WORK_LONG: f32 = 160.0;
/// Gradients this close to the frame are ignored: the frame is not content.
const RING: usize = 2;
/// Gradient magnitude (channels in [0, 1]) below which a pixel is no edge.
const EDGE_MIN: f32 = 0.01;
/// A region is not background when a channel of its mean differs more.
const FG_MIN: f32 = 0.12;
/// A pixel joins a flat region while every channel stays this close to the
/// region's running mean (blurred outlines step by more, shading by less).
const FLAT: f32 = 0.05;
/// A region runs along a frame side where it comes this close to it.
const HUG: usize = 3;

const N_ORI: usize = 20;
const N_REL: usize = 12;
const N_RAD: usize = 7;
const N_SYM: usize = 8;
const N_COL: usize = 8;
const GRID: usize = 3;
/// Radial block range, in units of the mean edge radius.
const RAD_RANGE: (f32, f32) = (0.3, 1.7);
/// (length, weight, normalised) of each block, in output order.
const BLOCKS: [(usize, f32, bool); 6] = [
    (N_ORI, 1.0, true),
    (N_REL, 1.2, true),
    (N_RAD, 0.6, true),
    (N_SYM, 1.0, false),
    (N_COL, 0.08, true),
    (GRID * GRID, 0.08, true),
];
const _: () = assert!(N_ORI + N_REL + N_RAD + N_SYM + N_COL + GRID * GRID == DIM);

/// Why an encoded image could not be described.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes are not JPEG, PNG or WebP.
    #[error("unrecognised image format (expected JPEG, PNG or WebP)")]
    UnknownFormat,
    /// The header declares more than [`MAX_PIXELS`] pixels (decompression bomb guard).
    #[error("image is {width}x{height}, over the {MAX_PIXELS}-pixel limit")]
    TooLarge {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
    },
    /// The header declares a zero-sized image.
    #[error("image has no pixels")]
    Empty,
    /// The decoder rejected the bytes: truncated, corrupt or unsupported.
    #[error("could not decode image")]
    Decode(#[source] image::ImageError),
}

/// Decode JPEG, PNG or WebP bytes and describe them (see [`describe_rgb`]).
///
/// The size is checked from the header before any pixel is allocated. EXIF
/// orientation is applied; alpha is dropped; grey and 16-bit images are
/// converted to RGB8 first.
pub fn describe_encoded(bytes: &[u8]) -> Result<Vec<f32>, Error> {
    use image::ImageDecoder;
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::Decode(e.into()))?;
    match reader.format() {
        Some(image::ImageFormat::Jpeg | image::ImageFormat::Png | image::ImageFormat::WebP) => {}
        _ => return Err(Error::UnknownFormat),
    }
    // Read the header without an allocation ceiling that would report a
    // bomb as a generic limit error; our pixel check decides, then the
    // decoder gets the default ceiling for its own buffers.
    reader.no_limits();
    let mut decoder = reader.into_decoder().map_err(Error::Decode)?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(Error::TooLarge { width, height });
    }
    if width == 0 || height == 0 {
        return Err(Error::Empty);
    }
    decoder
        .set_limits(image::Limits::default())
        .map_err(Error::Decode)?;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = image::DynamicImage::from_decoder(decoder).map_err(Error::Decode)?;
    img.apply_orientation(orientation);
    let img = img.into_rgb8();
    Ok(describe_rgb(
        img.width() as usize,
        img.height() as usize,
        img.as_raw(),
    ))
}

/// Describe an RGB8 image already in memory (`width * height * 3` bytes,
/// row-major). Returns [`DIM`] finite values with unit L2 norm.
///
/// A buffer shorter than declared is described from its complete rows; an
/// image without one is described as a single black pixel. A constant image
/// has no edges and is described by its colour block alone.
pub fn describe_rgb(width: usize, height: usize, rgb: &[u8]) -> Vec<f32> {
    match (rgb.len() / 3)
        .checked_div(width)
        .map(|rows| rows.min(height))
    {
        Some(rows) if rows > 0 => Working::from_rgb(width, rows, rgb).describe(),
        _ => Working::from_rgb(1, 1, &[0, 0, 0]).describe(),
    }
}

/// The blurred, area-averaged working image as three planes in [0, 1].
struct Working {
    w: usize,
    h: usize,
    planes: [Vec<f32>; 3],
}

/// One edge pixel of the working image.
struct Edge {
    x: f32,
    y: f32,
    /// Gradient magnitude.
    mag: f32,
    /// Weight in the shape blocks: `mag` on the object's outline, else 0.
    weight: f32,
    /// Unit gradient vector.
    gx: f32,
    gy: f32,
}

impl Working {
    /// Area-average `rgb` (at least `width * height` pixels, both non-zero)
    /// down to the working size, then blur it.
    fn from_rgb(width: usize, height: usize, rgb: &[u8]) -> Working {
        let (short, long) = (width.min(height) as f32, width.max(height) as f32);
        let s = (short / WORK_SHORT).max(long / WORK_LONG).max(1.0);
        let w = ((width as f32 / s).round() as usize).clamp(1, width);
        let h = ((height as f32 / s).round() as usize).clamp(1, height);
        // Source columns xr[o]..xr[o + 1] average into working column o.
        // Rows are summed first (a plain vectorisable add), columns once
        // per working row.
        let xr: Vec<usize> = (0..=w).map(|o| o * width / w).collect();
        let mut planes = [vec![0f32; w * h], vec![0f32; w * h], vec![0f32; w * h]];
        let mut acc = vec![0u32; width * 3];
        let mut flush = |oy: usize, acc: &[u32], rows: usize| {
            for (ox, span) in xr.windows(2).enumerate() {
                let k = 1.0 / (255.0 * (rows * (span[1] - span[0])).max(1) as f32);
                let mut sum = [0u32; 3];
                for px in acc[span[0] * 3..span[1] * 3].chunks_exact(3) {
                    (0..3).for_each(|c| sum[c] += px[c]);
                }
                for (plane, s) in planes.iter_mut().zip(sum) {
                    plane[oy * w + ox] = s as f32 * k;
                }
            }
        };
        let (mut current, mut rows) = (0, 0);
        for (y, row) in rgb.chunks_exact(width * 3).take(height).enumerate() {
            let oy = y * h / height;
            if oy != current {
                flush(current, &acc, rows);
                acc.fill(0);
                (current, rows) = (oy, 0);
            }
            acc.iter_mut()
                .zip(row)
                .for_each(|(a, &b)| *a += u32::from(b));
            rows += 1;
        }
        flush(current, &acc, rows);
        planes.iter_mut().for_each(|p| blur121(p, w, h));
        Working { w, h, planes }
    }

    /// Edge pixels away from the frame: central differences of the channel
    /// that changes most.
    fn edges(&self) -> Vec<Edge> {
        let (w, h, mut out) = (self.w, self.h, Vec::new());
        for y in RING..h.saturating_sub(RING) {
            for x in RING..w.saturating_sub(RING) {
                let i = y * w + x;
                let (mut gx, mut gy, mut m2) = (0f32, 0f32, 0f32);
                for p in &self.planes {
                    let (dx, dy) = (0.5 * (p[i + 1] - p[i - 1]), 0.5 * (p[i + w] - p[i - w]));
                    if dx * dx + dy * dy > m2 {
                        (gx, gy, m2) = (dx, dy, dx * dx + dy * dy);
                    }
                }
                if m2 > EDGE_MIN * EDGE_MIN {
                    let mag = m2.sqrt();
                    let (x, y, weight) = (x as f32, y as f32, mag);
                    out.push(Edge {
                        x,
                        y,
                        mag,
                        weight,
                        gx: gx / mag,
                        gy: gy / mag,
                    });
                }
            }
        }
        out
    }

    /// The main object (see the module docs) as a mask dilated by two
    /// pixels to take in its blurred outline, or `None`.
    fn object(&self) -> Option<Vec<bool>> {
        let (w, h, n) = (self.w, self.h, self.w * self.h);
        if w < 8 || h < 8 {
            return None;
        }
        let frame: Vec<usize> = (0..w)
            .flat_map(|x| [x, n - w + x])
            .chain((1..h - 1).flat_map(|y| [y * w, y * w + w - 1]))
            .collect();
        let bg = self.planes.each_ref().map(|p| {
            let mut vals: Vec<f32> = frame.iter().map(|&i| p[i]).collect();
            vals.sort_unstable_by(f32::total_cmp);
            vals[vals.len() / 2]
        });
        let [r, g, b] = &self.planes;
        let min_area = (0.002 * n as f32).max(4.0) as usize;
        // Seed flat pixels first: a region seeded on a blurred outline would
        // take the outline's in-between colour for its own.
        let steep = |i: usize| {
            let (x, y) = (i % w, i / w);
            let (l, rt) = (i - usize::from(x > 0), i + usize::from(x + 1 < w));
            let (u, d) = (
                i - if y > 0 { w } else { 0 },
                i + if y + 1 < h { w } else { 0 },
            );
            [r, g, b]
                .iter()
                .any(|p| (p[rt] - p[l]).abs() > FLAT || (p[d] - p[u]).abs() > FLAT)
        };
        let (mut label, mut joinable) = (vec![u32::MAX; n], Vec::new());
        let (mut best, mut members) = (None::<(f32, u32)>, Vec::new());
        for start in (0..n).filter(|&i| !steep(i)).chain(0..n) {
            if label[start] != u32::MAX {
                continue;
            }
            let id = joinable.len() as u32;
            label[start] = id;
            members.clear();
            members.push(start);
            let mut sum = [r[start], g[start], b[start]];
            let mut head = 0;
            // Breadth-first, so the running mean is that of the core.
            while let Some(&i) = members.get(head) {
                head += 1;
                let (x, y) = (i % w, i / w);
                let near = [
                    (x > 0).then(|| i - 1),
                    (x + 1 < w).then(|| i + 1),
                    (y > 0).then(|| i - w),
                    (y + 1 < h).then(|| i + w),
                ];
                for j in near.into_iter().flatten() {
                    let k = 1.0 / members.len() as f32;
                    let px = [r[j], g[j], b[j]];
                    if label[j] == u32::MAX && (0..3).all(|c| (px[c] - sum[c] * k).abs() < FLAT) {
                        label[j] = id;
                        members.push(j);
                        (0..3).for_each(|c| sum[c] += px[c]);
                    }
                }
            }
            let area = members.len() as f32;
            if members.len() < min_area || (0..3).all(|c| (sum[c] / area - bg[c]).abs() <= FG_MIN) {
                joinable.push(false);
                continue;
            }
            // The longest stretch of one frame side the region runs along,
            // and its bounding box.
            let mut sides = [
                vec![false; w],
                vec![false; w],
                vec![false; h],
                vec![false; h],
            ];
            let (mut x0, mut x1, mut y0, mut y1) = (w, 0, h, 0);
            for &i in &members {
                let (x, y) = (i % w, i / w);
                sides[0][x] |= y < HUG;
                sides[1][x] |= y + HUG >= h;
                sides[2][y] |= x < HUG;
                sides[3][y] |= x + HUG >= w;
                (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
            }
            let hug = sides.iter().map(|s| s.iter().filter(|&&t| t).count()).max();
            let inside = hug.unwrap_or(0) as f32 <= 0.8 * area.sqrt();
            let side = (x1 - x0).max(y1 - y0) as f32 + 1.0;
            let compact = (area / (side * side) / 0.4).min(1.0);
            // Thin strips (a caption band's rim, a rule) never join.
            joinable.push(inside && compact >= 0.5);
            let score = area * compact * compact;
            if inside && best.is_none_or(|(s, _)| score > s) {
                best = Some((score, id));
            }
        }
        let (_, id) = best?;
        let mut chosen = vec![false; joinable.len()];
        chosen[id as usize] = true;
        let mut mask: Vec<bool> = label.iter().map(|&l| l == id).collect();
        for _ in 0..4 {
            let mut grew = false;
            for (&l, _) in label
                .iter()
                .zip(dilate(&mask, w, h))
                .filter(|(_, near)| *near)
            {
                if joinable[l as usize] && !chosen[l as usize] {
                    (chosen[l as usize], grew) = (true, true);
                }
            }
            if !grew {
                break;
            }
            mask = label.iter().map(|&l| chosen[l as usize]).collect();
        }
        Some(dilate(&mask, w, h))
    }

    fn describe(&self) -> Vec<f32> {
        let mut v = vec![0f32; DIM];
        let mut edges = self.edges();
        if let Some(mask) = self.object() {
            for e in edges
                .iter_mut()
                .filter(|e| !mask[e.y as usize * self.w + e.x as usize])
            {
                e.weight = 0.0;
            }
        }
        let (ori, rest) = v.split_at_mut(N_ORI);
        let (rel, rest) = rest.split_at_mut(N_REL);
        let (rad, rest) = rest.split_at_mut(N_RAD);
        let (sym, rest) = rest.split_at_mut(N_SYM);
        let (col, grid) = rest.split_at_mut(N_COL);

        let shape: Vec<&Edge> = edges.iter().filter(|e| e.weight > 0.0).collect();
        for e in &shape {
            let theta = e.gy.atan2(e.gx).rem_euclid(PI);
            soft_bin(ori, theta / PI * N_ORI as f32, e.weight, true);
        }
        let mass: f32 = shape
            .iter()
            .map(|e| e.weight)
            .sum::<f32>()
            .max(f32::MIN_POSITIVE);
        let cx = shape.iter().map(|e| e.x * e.weight).sum::<f32>() / mass;
        let cy = shape.iter().map(|e| e.y * e.weight).sum::<f32>() / mass;
        let dist = |e: &Edge| (e.x - cx).hypot(e.y - cy);
        let mean_r = shape.iter().map(|e| dist(e) * e.weight).sum::<f32>() / mass;
        let mut spectrum = [(0f32, 0f32); N_SYM];
        let mut rel_mass = 0.0;
        for e in shape.iter().filter(|_| mean_r > 0.5) {
            let d = dist(e);
            let pos = (d / mean_r - RAD_RANGE.0) / (RAD_RANGE.1 - RAD_RANGE.0);
            soft_bin(rad, pos * N_RAD as f32, e.weight, false);
            if d > 0.15 * mean_r {
                let (rx, ry) = ((e.x - cx) / d, (e.y - cy) / d);
                // Normal-to-ray angle, folded into [-π/2, π/2] (the sign of
                // a gradient depends on which side is brighter).
                let delta = ((rx * e.gy - ry * e.gx) / (rx * e.gx + ry * e.gy)).atan();
                soft_bin(rel, delta.abs() / FRAC_PI_2 * N_REL as f32, e.weight, false);
                // e^{ikφ} for k = 1, 2, … by repeated multiplication.
                let (mut c, mut s) = (rx, ry);
                for (re, im) in &mut spectrum {
                    *re += e.weight * delta * c;
                    *im += e.weight * delta * s;
                    (c, s) = (c * rx - s * ry, s * rx + c * ry);
                }
                rel_mass += e.weight;
            }
        }
        if rel_mass > 0.0 {
            for (out, (re, im)) in sym.iter_mut().zip(spectrum) {
                *out = re.hypot(im) / rel_mass;
            }
        }
        // A circle's relative-angle histogram is a spike at 0 whose width
        // varies with size; smoothing halves that spread within shapes.
        smooth(rel);
        smooth(rel);
        for e in &edges {
            let gx = (e.x as usize * GRID / self.w).min(GRID - 1);
            let gy = (e.y as usize * GRID / self.h).min(GRID - 1);
            grid[gy * GRID + gx] += e.mag;
        }
        let [r, g, b] = &self.planes;
        for ((r, g), b) in r.iter().zip(g).zip(b) {
            col[usize::from(*r > 0.5) << 2 | usize::from(*g > 0.5) << 1 | usize::from(*b > 0.5)] +=
                1.0;
        }
        let mut start = 0;
        for (len, weight, normalised) in BLOCKS {
            let block = &mut v[start..start + len];
            if normalised {
                normalise(block, weight);
            } else {
                block.iter_mut().for_each(|x| *x *= weight);
            }
            start += len;
        }
        normalise(&mut v, 1.0);
        v
    }
}

/// The mask grown by two pixels in every direction (a 5×5 square).
fn dilate(mask: &[bool], w: usize, h: usize) -> Vec<bool> {
    let mut rows = vec![false; w * h];
    for (i, _) in mask.iter().enumerate().filter(|(_, m)| **m) {
        let (x, row) = (i % w, i - i % w);
        rows[row + x.saturating_sub(2)..row + (x + 3).min(w)].fill(true);
    }
    let mut out = vec![false; w * h];
    for (i, _) in rows.iter().enumerate().filter(|(_, m)| **m) {
        let (x, y) = (i % w, i / w);
        (y.saturating_sub(2)..(y + 3).min(h)).for_each(|yy| out[yy * w + x] = true);
    }
    out
}

/// One pass of [1 2 1]/4 along a histogram, ends clamped.
fn smooth(hist: &mut [f32]) {
    let old = hist.to_vec();
    let n = old.len();
    for (i, h) in hist.iter_mut().enumerate() {
        *h = 0.25 * old[i.saturating_sub(1)] + 0.5 * old[i] + 0.25 * old[(i + 1).min(n - 1)];
    }
}

/// Separable [1 2 1]/4 blur with clamped edges, in place.
fn blur121(p: &mut [f32], w: usize, h: usize) {
    let mut tmp = p.to_vec();
    for (row, out) in p.chunks_exact(w).zip(tmp.chunks_exact_mut(w)) {
        for (x, o) in out.iter_mut().enumerate() {
            *o = 0.25 * (row[x.saturating_sub(1)] + 2.0 * row[x] + row[(x + 1).min(w - 1)]);
        }
    }
    for y in 0..h {
        let (u, d) = (y.saturating_sub(1), (y + 1).min(h - 1));
        for x in 0..w {
            p[y * w + x] = 0.25 * (tmp[u * w + x] + 2.0 * tmp[y * w + x] + tmp[d * w + x]);
        }
    }
}

/// Add `weight` at fractional bin position `pos` (bin centres at i + 0.5),
/// split linearly between the two nearest bins, which wrap if `circular`
/// and are clamped to the ends otherwise.
fn soft_bin(hist: &mut [f32], pos: f32, weight: f32, circular: bool) {
    let n = hist.len();
    if n == 0 || !pos.is_finite() {
        return;
    }
    let lo = (pos - 0.5).floor();
    let frac = pos - 0.5 - lo;
    let idx = |i: f32| match circular {
        true => (i.rem_euclid(n as f32) as usize).min(n - 1),
        false => i.clamp(0.0, (n - 1) as f32) as usize,
    };
    hist[idx(lo)] += weight * (1.0 - frac);
    hist[idx(lo + 1.0)] += weight * frac;
}

/// Scale `v` to L2 norm `target`; an all-zero `v` stays zero.
fn normalise(v: &mut [f32], target: f32) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 1e-12 && norm.is_finite() {
        v.iter_mut().for_each(|x| *x *= target / norm);
    }
}

#[cfg(test)]
mod tests;
