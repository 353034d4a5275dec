//! Synthetic H.264 MP4 clips: one shape crossing a plain background.
//! Frames are encoded with OpenH264 (Annex B), converted to
//! length-prefixed NAL units and muxed with the `mp4` crate.

use bytes::Bytes;
use openh264::OpenH264API;
use openh264::encoder::{Encoder, EncoderConfig, FrameRate, IntraFramePeriod, RateControlMode};
use openh264::formats::{RgbSliceU8, YUVBuffer};
use serde_json::json;

use super::draw::{self, Canvas};
use super::{Error, Rng, caption, pick_colours, pick_shape};
use crate::synth::draw::Shape;

const W: usize = 192;
const H: usize = 128;
const FPS: u32 = 12;

const DIRECTIONS: [(&str, &str, f32, f32); 4] = [
    ("left to right", "从左向右", 1.0, 0.0),
    ("right to left", "从右向左", -1.0, 0.0),
    ("top to bottom", "从上往下", 0.0, 1.0),
    ("bottom to top", "从下往上", 0.0, -1.0),
];

fn enc_err(message: impl ToString) -> Error {
    Error::Encode {
        what: "h264".into(),
        message: message.to_string(),
    }
}

/// Split an Annex B stream into NAL units (without start codes).
fn nal_units(stream: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= stream.len() {
        if stream[i] == 0 && stream[i + 1] == 0 && stream[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut out = Vec::new();
    for (k, &s) in starts.iter().enumerate() {
        let mut end = starts.get(k + 1).map_or(stream.len(), |&n| n - 3);
        // A 4-byte start code leaves one zero behind.
        while end > s && stream[end - 1] == 0 && k + 1 < starts.len() {
            end -= 1;
        }
        if end > s {
            out.push(&stream[s..end]);
        }
    }
    out
}

/// One clip: MP4 bytes, JSON sidecar, short caption.
pub(super) fn clip(
    seed: u64,
    index: u64,
    skew: &[(Shape, f64)],
) -> Result<(Vec<u8>, serde_json::Value, String), Error> {
    let mut rng = Rng::new(seed, 2, index);
    let shape = pick_shape(&mut rng, skew);
    let (fg, bg) = pick_colours(&mut rng);
    let frames = 16 + rng.below(33); // 16..=48
    let (dir, dir_zh, dx, dy) = DIRECTIONS[rng.below(DIRECTIONS.len())];
    let r = rng.range(14.0, 26.0);
    let across = rng.range(0.3, 0.7);
    let (x0, y0, x1, y1) = if dx != 0.0 {
        let y = across * H as f32;
        let (a, b) = (r + 2.0, W as f32 - r - 2.0);
        if dx > 0.0 { (a, y, b, y) } else { (b, y, a, y) }
    } else {
        let x = across * W as f32;
        let (a, b) = (r + 2.0, H as f32 - r - 2.0);
        if dy > 0.0 { (x, a, x, b) } else { (x, b, x, a) }
    };

    let config = EncoderConfig::new()
        .max_frame_rate(FrameRate::from_hz(FPS as f32))
        .rate_control_mode(RateControlMode::Off)
        .skip_frames(false)
        .intra_frame_period(IntraFramePeriod::from_num_frames(24));
    let mut encoder =
        Encoder::with_api_config(OpenH264API::from_source(), config).map_err(enc_err)?;
    let mut sps = None;
    let mut pps = None;
    let mut samples: Vec<(Vec<u8>, bool)> = Vec::with_capacity(frames);
    let mut middle = None;
    for f in 0..frames {
        let t = f as f32 / (frames - 1) as f32;
        let mut canvas = Canvas::background(W, H, bg.rgb);
        canvas.shape(shape, x0 + (x1 - x0) * t, y0 + (y1 - y0) * t, r, fg.rgb);
        if f == frames / 2 {
            middle = Some(canvas.descriptor());
        }
        let yuv = YUVBuffer::from_rgb8_source(RgbSliceU8::new(&canvas.rgb, (W, H)));
        let stream = encoder.encode(&yuv).map_err(enc_err)?.to_vec();
        let mut sample = Vec::new();
        let mut sync = false;
        for nal in nal_units(&stream) {
            match nal[0] & 0x1F {
                7 => sps = Some(nal.to_vec()),
                8 => pps = Some(nal.to_vec()),
                9 => {}
                t => {
                    sync |= t == 5;
                    sample.extend_from_slice(&(nal.len() as u32).to_be_bytes());
                    sample.extend_from_slice(nal);
                }
            }
        }
        if sample.is_empty() {
            return Err(enc_err(format!(
                "encoder produced no picture for frame {f}"
            )));
        }
        samples.push((sample, sync));
    }
    let (Some(sps), Some(pps)) = (sps, pps) else {
        return Err(enc_err("encoder produced no SPS/PPS"));
    };

    let mut out = std::io::Cursor::new(Vec::new());
    let config = mp4::Mp4Config {
        major_brand: str::parse("isom").map_err(enc_err)?,
        minor_version: 512,
        compatible_brands: vec![
            str::parse("isom").map_err(enc_err)?,
            str::parse("iso2").map_err(enc_err)?,
            str::parse("avc1").map_err(enc_err)?,
            str::parse("mp41").map_err(enc_err)?,
        ],
        timescale: 1000,
    };
    let mut writer = mp4::Mp4Writer::write_start(&mut out, &config).map_err(enc_err)?;
    writer
        .add_track(&mp4::TrackConfig {
            track_type: mp4::TrackType::Video,
            timescale: FPS * 1000,
            language: "und".into(),
            media_conf: mp4::MediaConfig::AvcConfig(mp4::AvcConfig {
                width: W as u16,
                height: H as u16,
                seq_param_set: sps,
                pic_param_set: pps,
            }),
        })
        .map_err(enc_err)?;
    for (i, (bytes, sync)) in samples.into_iter().enumerate() {
        writer
            .write_sample(
                1,
                &mp4::Mp4Sample {
                    start_time: i as u64 * 1000,
                    duration: 1000,
                    rendering_offset: 0,
                    is_sync: sync,
                    bytes: Bytes::from(bytes),
                },
            )
            .map_err(enc_err)?;
    }
    writer.write_end().map_err(enc_err)?;
    drop(writer);

    let (s, c, b) = (shape.name(), fg.name, bg.name);
    let short = format!("a {c} {s} moving from {dir} on a {b} background");
    let speed = ((x1 - x0).abs() + (y1 - y0).abs()) / frames as f32;
    let meta = json!({
        "captions": [
            caption(short.clone(), "en", "short"),
            caption(format!(
                "A {c} {s} glides steadily from {dir} across a plain {b} background over {:.1} seconds.",
                frames as f32 / FPS as f32
            ), "en", "long"),
            caption(format!("{}背景上，一个{}{}{}移动", bg.zh, fg.zh, shape.zh(), dir_zh), "zh", "short"),
        ],
        "aesthetic": (3.5 + 4.0 * (draw::luminance(fg.rgb) - draw::luminance(bg.rgb)).abs()).clamp(1.0, 10.0),
        "motion": (speed * 100.0).round() / 100.0,
        "source": "synth",
        "embedding": middle.unwrap_or_default(),
        "shape": s, "colour": c, "background": b, "direction": dir,
    });
    Ok((out.into_inner(), meta, short))
}

#[cfg(test)]
mod tests {
    #[test]
    fn annex_b_is_split_on_both_start_code_lengths() {
        let s = [
            0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 9, 9,
        ];
        let n = super::nal_units(&s);
        assert_eq!(
            n,
            vec![&[0x67, 1, 2][..], &[0x68, 3][..], &[0x65, 9, 9][..]]
        );
    }
}
