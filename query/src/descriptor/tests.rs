//! Tests of `descriptor`.
use super::*;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Form {
    Circle,
    Square,
    Triangle,
    Hexagon,
    Diamond,
}
use Form::*;

/// A `w`×`h` image of `form` (centre `cx, cy`, radius `r`) in `fg` on `bg`.
fn draw(
    form: Form,
    (w, h): (usize, usize),
    (cx, cy, r): (f32, f32, f32),
    fg: u8,
    bg: u8,
) -> Vec<u8> {
    let inside = |u: f32, v: f32| match form {
        Circle => u * u + v * v <= 1.0,
        Square => u.abs() <= 0.78 && v.abs() <= 0.78,
        Diamond => u.abs() + v.abs() <= 1.0,
        Triangle => v <= 0.5 && 1.732 * u.abs() <= v + 1.0,
        Hexagon => v.abs() <= 0.866 && 1.732 * u.abs() + v.abs() <= 1.732,
    };
    let hit = |i: usize| {
        inside(
            ((i % w) as f32 + 0.5 - cx) / r,
            ((i / w) as f32 + 0.5 - cy) / r,
        )
    };
    (0..w * h)
        .flat_map(|i| PALETTE[usize::from(if hit(i) { fg } else { bg })])
        .collect()
}

/// [`draw`], described.
fn describe(form: Form, size: (usize, usize), at: (f32, f32, f32), fg: u8, bg: u8) -> Vec<f32> {
    let v = describe_rgb(size.0, size.1, &draw(form, size, at, fg, bg));
    assert_unit(&v);
    v
}

/// Red, blue, yellow, black, white, green; then two of equal
/// luminance (0.299R + 0.587G + 0.114B ≈ 120) and different hue.
const PALETTE: [[u8; 3]; 8] = [
    [220, 40, 40],
    [40, 90, 210],
    [240, 210, 40],
    [20, 20, 20],
    [245, 245, 245],
    [50, 170, 70],
    [200, 80, 120],
    [60, 150, 90],
];

fn dist2(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

fn assert_unit(v: &[f32]) {
    assert_eq!(v.len(), DIM);
    let n: f32 = v.iter().map(|x| x * x).sum();
    assert!(
        v.iter().all(|x| x.is_finite()) && (n - 1.0).abs() < 1e-4,
        "{v:?}"
    );
}

/// A small linear congruential generator: `next(n)` in `0..n`.
fn lcg(mut seed: u32) -> impl FnMut(usize) -> usize {
    move |n| {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (seed >> 8) as usize % n
    }
}

#[test]
fn same_shape_is_nearer_than_same_colour_or_place() {
    // Ten scenes per shape over the synthetic set's canvases, sizes,
    // positions and colours; every scene must be nearest its own
    // shape's centroid, and shapes far apart relative to their spread.
    let (mut next, forms) = (lcg(12345), [Circle, Square, Triangle, Hexagon, Diamond]);
    let mut samples = Vec::new();
    for (fi, &form) in forms.iter().enumerate() {
        for k in 0..10 {
            let (w, h) = [(256, 256), (320, 192), (192, 320)][k % 3];
            let r = [0.16, 0.26, 0.38][next(3)] * w.min(h) as f32;
            let cx = r + 2.0 + next(1000) as f32 / 1000.0 * (w as f32 - 2.0 * r - 4.0);
            let cy = r + 2.0 + next(1000) as f32 / 1000.0 * (h as f32 - 2.0 * r - 4.0);
            let fg = next(6);
            let bg = (fg + 1 + next(5)) % 6;
            samples.push((fi, describe(form, (w, h), (cx, cy, r), fg as u8, bg as u8)));
        }
    }
    let centroids: Vec<Vec<f32>> = (0..forms.len())
        .map(|f| {
            let rows: Vec<&Vec<f32>> = samples.iter().filter(|s| s.0 == f).map(|s| &s.1).collect();
            (0..DIM)
                .map(|d| rows.iter().map(|u| u[d]).sum::<f32>() / rows.len() as f32)
                .collect()
        })
        .collect();
    let mut spread = 0.0;
    for (i, (fi, v)) in samples.iter().enumerate() {
        let own = dist2(v, &centroids[*fi]);
        spread += own / samples.len() as f32;
        for (f, c) in centroids.iter().enumerate().filter(|(f, _)| f != fi) {
            assert!(
                dist2(v, c) > own,
                "sample {i} ({:?}) nearer {:?}",
                forms[*fi],
                forms[f]
            );
        }
    }
    for (i, a) in centroids.iter().enumerate() {
        for b in &centroids[i + 1..] {
            assert!(
                dist2(a, b) > 5.0 * spread,
                "{} vs spread {spread}",
                dist2(a, b)
            );
        }
    }
}

#[test]
fn symmetry_spectrum_peaks_at_the_number_of_sides() {
    let big = |form| describe(form, (256, 256), (128.0, 128.0, 110.0), 3, 4);
    let sym = |v: &[f32]| v[N_ORI + N_REL + N_RAD..][..N_SYM].to_vec();
    for (form, sides) in [(Triangle, 3), (Square, 4), (Hexagon, 6)] {
        let s = sym(&big(form));
        let peak = (0..N_SYM)
            .max_by(|&a, &b| s[a].total_cmp(&s[b]))
            .map(|k| k + 1);
        assert_eq!(peak, Some(sides), "{form:?}: {s:?}");
    }
    assert!(sym(&big(Circle)).iter().all(|&s| s < 0.02));
}

#[test]
fn frame_hugging_blocks_are_ignored() {
    // A striped block in a corner, as a watermark would be, changes a
    // triangle far less than turning it into a hexagon does.
    let (size, at) = ((256, 256), (170.0, 150.0, 60.0));
    let clean = draw(Triangle, size, at, 1, 2);
    let mut marked = clean.clone();
    for (y, x) in (2..90).flat_map(|y| (2..150).map(move |x| (y, x))) {
        marked[(y * 256 + x) * 3..][..3].fill(if (x + y) % 9 < 3 { 70 } else { 250 });
    }
    let (a, b) = (
        describe_rgb(256, 256, &clean),
        describe_rgb(256, 256, &marked),
    );
    let c = describe(Hexagon, size, at, 1, 2);
    assert!(
        dist2(&a, &b) * 5.0 < dist2(&a, &c),
        "{} vs {}",
        dist2(&a, &b),
        dist2(&a, &c)
    );
}

#[test]
fn hue_only_edges_still_count() {
    let at = (64.0, 64.0, 40.0);
    let (square, diamond) = (
        describe(Square, (128, 128), at, 6, 7),
        describe(Diamond, (128, 128), at, 6, 7),
    );
    let plain = describe(Square, (128, 128), (50.0, 70.0, 30.0), 3, 4);
    assert!(
        dist2(&square, &plain) < 0.1 && dist2(&diamond, &plain) > 0.5,
        "hue edges lost"
    );
}

#[test]
fn soft_bins_split_weight_between_neighbours() {
    let mut h = [0f32; 4];
    soft_bin(&mut h, 1.75, 2.0, false);
    assert_eq!(h, [0.0, 1.5, 0.5, 0.0]);
    soft_bin(&mut h, 0.0, 1.0, true);
    assert_eq!(h, [0.5, 1.5, 0.5, 0.5]);
    soft_bin(&mut h, f32::NAN, 1.0, true);
    assert_eq!(h.iter().sum::<f32>(), 3.0);
}

#[test]
fn constant_and_degenerate_images_are_defined() {
    let grey = describe_rgb(50, 40, &[128; 50 * 40 * 3]);
    let red = describe_rgb(50, 40, &[200, 10, 10].repeat(50 * 40));
    assert!(
        grey[..N_ORI + N_REL + N_RAD + N_SYM]
            .iter()
            .all(|&x| x == 0.0)
    );
    assert!(dist2(&grey, &red) > 0.1);
    for (w, h, len) in [
        (50, 40, 6000),
        (0, 0, 0),
        (0, 5, 0),
        (5, 0, 0),
        (3, 3, 5),
        (usize::MAX, 2, 6),
    ] {
        assert_unit(&describe_rgb(w, h, &vec![128; len]));
    }
    // A truncated buffer is described from its complete rows.
    let full = draw(Circle, (64, 64), (32.0, 20.0, 15.0), 3, 4);
    assert_eq!(
        describe_rgb(64, 40, &full[..64 * 40 * 3]),
        describe_rgb(64, 64, &full[..64 * 40 * 3 + 5])
    );
}

fn encode(rgb: &[u8], w: u32, h: u32, format: image::ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    let img = image::RgbImage::from_raw(w, h, rgb.to_vec()).expect("buffer fits");
    img.write_to(&mut out, format).expect("encodes");
    out.into_inner()
}

#[test]
fn encoded_images_describe_like_their_pixels() {
    let rgb = draw(Triangle, (96, 80), (40.0, 44.0, 30.0), 1, 2);
    let direct = describe_rgb(96, 80, &rgb);
    for format in [image::ImageFormat::Png, image::ImageFormat::WebP] {
        assert_eq!(
            describe_encoded(&encode(&rgb, 96, 80, format)).expect("lossless"),
            direct
        );
    }
    let jpeg = describe_encoded(&encode(&rgb, 96, 80, image::ImageFormat::Jpeg)).expect("jpeg");
    assert!(dist2(&jpeg, &direct) < 0.02, "{}", dist2(&jpeg, &direct));
}

#[test]
fn oversized_headers_are_refused_before_decoding() {
    let crc32 = |bytes: &[u8]| {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            (0..8).for_each(|_| crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg()));
        }
        !crc
    };
    // A valid PNG header declaring 20000×20000 RGB8, then an empty IDAT.
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    png.extend([20_000u32.to_be_bytes(), 20_000u32.to_be_bytes()].concat());
    png.extend([8, 2, 0, 0, 0]);
    png.extend(crc32(&png[12..]).to_be_bytes());
    png.extend(b"\0\0\0\0IDAT");
    png.extend(crc32(b"IDAT").to_be_bytes());
    match describe_encoded(&png) {
        Err(Error::TooLarge {
            width: 20_000,
            height: 20_000,
        }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn corrupt_bytes_are_errors_not_panics() {
    assert!(matches!(describe_encoded(b""), Err(Error::UnknownFormat)));
    assert!(matches!(
        describe_encoded(b"GIF89a......"),
        Err(Error::UnknownFormat)
    ));
    let (rgb, mut next) = (draw(Diamond, (40, 30), (20.0, 15.0, 12.0), 3, 4), lcg(99));
    for format in [
        image::ImageFormat::Png,
        image::ImageFormat::Jpeg,
        image::ImageFormat::WebP,
    ] {
        // Every 7th truncation, then 200 copies with four bytes flipped.
        let good = encode(&rgb, 40, 30, format);
        let mut inputs: Vec<Vec<u8>> = (0..good.len())
            .step_by(7)
            .map(|n| good[..n].to_vec())
            .collect();
        for _ in 0..200 {
            let mut bad = good.clone();
            for _ in 0..4 {
                let at = next(bad.len());
                bad[at] ^= next(255) as u8 + 1;
            }
            inputs.push(bad);
        }
        let mut errors = 0;
        for input in &inputs {
            match describe_encoded(input) {
                Ok(v) => assert_unit(&v),
                Err(e) => errors += usize::from(!e.to_string().is_empty()),
            }
        }
        assert!(
            errors > inputs.len() / 10,
            "{format:?}: only {errors} errors"
        );
    }
}
