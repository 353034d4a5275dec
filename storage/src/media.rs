//! Media probing: recognise an encoded image or video by its magic bytes,
//! check that it is structurally whole (not truncated, chunk lengths and
//! checksums consistent) and read its dimensions from headers, without a
//! full decode.
//!
//! What "structurally whole" means per format:
//! - JPEG: SOI, a well-formed marker chain up to the first SOS with a frame
//!   header (SOF) before it, and an EOI marker at the end of the file.
//! - PNG: signature, every chunk inside the file with a correct CRC-32,
//!   IHDR first, at least one IDAT, and IEND.
//! - WebP: a RIFF container whose declared size fits the file and whose
//!   chunks tie out, with a VP8/VP8L/VP8X chunk.
//! - MP4: the `moov` box parses, there is a video track, and its last
//!   sample lies inside the file.
//!
//! A flipped bit inside JPEG/WebP entropy-coded data is not detectable this
//! way; that needs a decode (a later, optional pass).

use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// The kind of a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    Image,
    Video,
}

impl Media {
    pub fn as_str(self) -> &'static str {
        match self {
            Media::Image => "image",
            Media::Video => "video",
        }
    }
}

/// The container/codec of the stored bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jpeg,
    Png,
    Webp,
    Mp4,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Jpeg => "jpeg",
            Format::Png => "png",
            Format::Webp => "webp",
            Format::Mp4 => "mp4",
        }
    }

    pub fn media(self) -> Media {
        match self {
            Format::Mp4 => Media::Video,
            _ => Media::Image,
        }
    }

    /// The format a file extension names, if it is one granary ingests.
    pub fn from_extension(ext: &str) -> Option<Format> {
        match ext.to_ascii_lowercase().as_str() {
            "jpg" | "jpeg" => Some(Format::Jpeg),
            "png" => Some(Format::Png),
            "webp" => Some(Format::Webp),
            "mp4" => Some(Format::Mp4),
            _ => None,
        }
    }

    /// Recognise the format from the first bytes.
    pub fn sniff(bytes: &[u8]) -> Option<Format> {
        if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(Format::Jpeg)
        } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(Format::Png)
        } else if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
            Some(Format::Webp)
        } else if bytes.len() >= 8 && &bytes[4..8] == b"ftyp" {
            Some(Format::Mp4)
        } else {
            None
        }
    }
}

/// What a probe learns from the headers.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaInfo {
    pub format: Format,
    pub width: u32,
    pub height: u32,
    /// Videos: frame (sample) count of the video track.
    pub frames: Option<u32>,
    pub fps: Option<f32>,
    pub duration_s: Option<f32>,
}

/// Probe encoded bytes. The error is a one-line reason fit for `ingest_errors`.
pub fn probe(bytes: &[u8]) -> Result<MediaInfo, String> {
    if bytes.is_empty() {
        return Err("empty file".into());
    }
    let format = Format::sniff(bytes).ok_or_else(|| {
        "unrecognised content (not JPEG, PNG, WebP or MP4 by its magic bytes)".to_string()
    })?;
    // Third-party parsers see untrusted bytes: a panic in one is a rejected
    // sample, not a dead ingest.
    let run = || match format {
        Format::Jpeg => check_jpeg(bytes).and_then(|()| image_dims(format, bytes)),
        Format::Png => check_png(bytes).and_then(|()| image_dims(format, bytes)),
        Format::Webp => check_webp(bytes).and_then(|()| image_dims(format, bytes)),
        Format::Mp4 => probe_mp4(bytes),
    };
    match catch_unwind(AssertUnwindSafe(run)) {
        Ok(r) => r,
        Err(_) => Err(format!(
            "{} parser failed on malformed data",
            format.as_str()
        )),
    }
}

fn image_dims(format: Format, bytes: &[u8]) -> Result<MediaInfo, String> {
    let size = imagesize::blob_size(bytes)
        .map_err(|e| format!("{}: cannot read dimensions: {e}", format.as_str()))?;
    let (width, height) = (size.width as u32, size.height as u32);
    if width == 0 || height == 0 {
        return Err(format!(
            "{}: zero dimension {width}x{height}",
            format.as_str()
        ));
    }
    Ok(MediaInfo {
        format,
        width,
        height,
        frames: None,
        fps: None,
        duration_s: None,
    })
}

fn be16(b: &[u8], at: usize) -> Option<usize> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?) as usize)
}

fn be32(b: &[u8], at: usize) -> Option<usize> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize)
}

fn le32(b: &[u8], at: usize) -> Option<usize> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize)
}

fn check_jpeg(b: &[u8]) -> Result<(), String> {
    let mut at = 2;
    let mut seen_frame = false;
    loop {
        if at >= b.len() {
            return Err("jpeg: truncated before image data".into());
        }
        if b[at] != 0xFF {
            return Err(format!("jpeg: expected a marker at byte {at}"));
        }
        while at < b.len() && b[at] == 0xFF {
            at += 1;
        }
        let Some(&marker) = b.get(at) else {
            return Err("jpeg: truncated in a marker".into());
        };
        at += 1;
        match marker {
            0x01 | 0xD0..=0xD7 => continue,
            0xD9 => return Err("jpeg: end of image before any scan".into()),
            _ => {}
        }
        let len = be16(b, at).ok_or("jpeg: truncated segment header")?;
        if len < 2 || at + len > b.len() {
            return Err(format!("jpeg: segment 0x{marker:02X} overruns the file"));
        }
        if matches!(marker, 0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF) {
            seen_frame = true;
        }
        if marker == 0xDA {
            if !seen_frame {
                return Err("jpeg: scan without a frame header".into());
            }
            break;
        }
        at += len;
    }
    // Entropy-coded data runs to the end; a whole file ends with EOI
    // (some writers pad a few bytes after it).
    let tail = &b[b.len().saturating_sub(32)..];
    if tail.windows(2).any(|w| w == [0xFF, 0xD9]) {
        Ok(())
    } else {
        Err("jpeg: truncated (no end-of-image marker)".into())
    }
}

fn check_png(b: &[u8]) -> Result<(), String> {
    let mut at = 8;
    let mut first = true;
    let mut idat = false;
    loop {
        let len = be32(b, at).ok_or("png: truncated (no IEND chunk)")?;
        let kind = b.get(at + 4..at + 8).ok_or("png: truncated chunk header")?;
        let end = at
            .checked_add(12)
            .and_then(|x| x.checked_add(len))
            .filter(|&e| e <= b.len())
            .ok_or_else(|| {
                format!(
                    "png: chunk {} overruns the file (truncated)",
                    String::from_utf8_lossy(kind)
                )
            })?;
        let stored = be32(b, end - 4).ok_or("png: truncated CRC")? as u32;
        if crc32fast::hash(&b[at + 4..end - 4]) != stored {
            return Err(format!(
                "png: CRC mismatch in chunk {} at byte {at}",
                String::from_utf8_lossy(kind)
            ));
        }
        if first && kind != b"IHDR" {
            return Err("png: first chunk is not IHDR".into());
        }
        first = false;
        match kind {
            b"IDAT" => idat = true,
            b"IEND" => {
                return if idat {
                    Ok(())
                } else {
                    Err("png: no image data (IDAT)".into())
                };
            }
            _ => {}
        }
        at = end;
    }
}

fn check_webp(b: &[u8]) -> Result<(), String> {
    let riff = le32(b, 4).ok_or("webp: truncated header")?;
    let end = riff.checked_add(8).ok_or("webp: bad RIFF size")?;
    if end > b.len() {
        return Err(format!(
            "webp: truncated (RIFF declares {end} bytes, file has {})",
            b.len()
        ));
    }
    let mut at = 12;
    let mut image = false;
    while at + 8 <= end {
        let kind = &b[at..at + 4];
        let len = le32(b, at + 4).ok_or("webp: truncated chunk")?;
        let next = (at + 8)
            .checked_add(len + (len & 1))
            .ok_or("webp: bad chunk size")?;
        if next > end + (len & 1) {
            return Err(format!(
                "webp: chunk {} overruns the file",
                String::from_utf8_lossy(kind)
            ));
        }
        if matches!(kind, b"VP8 " | b"VP8L" | b"VP8X") {
            image = true;
        }
        at = next;
    }
    if image {
        Ok(())
    } else {
        Err("webp: no VP8/VP8L/VP8X chunk".into())
    }
}

fn probe_mp4(b: &[u8]) -> Result<MediaInfo, String> {
    let mut reader = mp4::Mp4Reader::read_header(Cursor::new(b), b.len() as u64)
        .map_err(|e| format!("mp4: {e}"))?;
    let (track_id, width, height, frames, duration) = reader
        .tracks()
        .values()
        .filter(|t| matches!(t.track_type(), Ok(mp4::TrackType::Video)))
        .map(|t| {
            (
                t.track_id(),
                u32::from(t.width()),
                u32::from(t.height()),
                t.sample_count(),
                t.duration(),
            )
        })
        .min_by_key(|t| t.0)
        .ok_or("mp4: no video track")?;
    if width == 0 || height == 0 || frames == 0 {
        return Err(format!(
            "mp4: empty video track ({width}x{height}, {frames} frames)"
        ));
    }
    // The last sample must lie inside the file: catches truncated `mdat`.
    match reader.read_sample(track_id, frames) {
        Ok(Some(_)) => {}
        Ok(None) => return Err("mp4: last video sample missing".into()),
        Err(e) => return Err(format!("mp4: truncated or corrupt sample data: {e}")),
    }
    let secs = duration.as_secs_f64();
    let fps = if secs > 0.0 {
        (f64::from(frames) / secs) as f32
    } else {
        0.0
    };
    Ok(MediaInfo {
        format: Format::Mp4,
        width,
        height,
        frames: Some(frames),
        fps: Some(fps),
        duration_s: Some(secs as f32),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        c.extend_from_slice(kind);
        c.extend_from_slice(data);
        let crc = crc32fast::hash(&c[4..]);
        c.extend_from_slice(&crc.to_be_bytes());
        c
    }

    fn png(w: u32, h: u32) -> Vec<u8> {
        let mut ihdr = w.to_be_bytes().to_vec();
        ihdr.extend_from_slice(&h.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        let mut b = b"\x89PNG\r\n\x1a\n".to_vec();
        b.extend(chunk(b"IHDR", &ihdr));
        b.extend(chunk(b"IDAT", &[0x78, 0x9c, 1, 2, 3, 4, 5, 6]));
        b.extend(chunk(b"IEND", &[]));
        b
    }

    fn jpeg(w: u16, h: u16) -> Vec<u8> {
        let mut b = vec![0xFF, 0xD8];
        // SOF0: length 17, precision 8, height, width, 3 components.
        b.extend_from_slice(&[0xFF, 0xC0, 0, 17, 8]);
        b.extend_from_slice(&h.to_be_bytes());
        b.extend_from_slice(&w.to_be_bytes());
        b.extend_from_slice(&[3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
        // SOS: length 12.
        b.extend_from_slice(&[0xFF, 0xDA, 0, 12, 3, 1, 0, 2, 0x11, 3, 0x11, 0, 63, 0]);
        b.extend_from_slice(&[0x12, 0x34, 0x56, 0xFF, 0x00, 0x78]);
        b.extend_from_slice(&[0xFF, 0xD9]);
        b
    }

    #[test]
    fn whole_png_and_jpeg_probe_with_their_dimensions() {
        let p = probe(&png(320, 192)).unwrap();
        assert_eq!(
            (p.format, p.width, p.height, p.frames),
            (Format::Png, 320, 192, None)
        );
        let j = probe(&jpeg(200, 100)).unwrap();
        assert_eq!((j.format, j.width, j.height), (Format::Jpeg, 200, 100));
    }

    #[test]
    fn damage_is_named() {
        let mut p = png(8, 8);
        let idat_data = 8 + 25 + 8; // signature, IHDR chunk, IDAT header
        p[idat_data + 2] ^= 1;
        assert!(
            probe(&p)
                .unwrap_err()
                .contains("CRC mismatch in chunk IDAT")
        );
        let p = png(8, 8);
        assert!(probe(&p[..p.len() - 6]).unwrap_err().contains("truncated"));
        let j = jpeg(8, 8);
        assert!(
            probe(&j[..j.len() - 2])
                .unwrap_err()
                .contains("no end-of-image")
        );
        assert!(probe(&j[..20]).unwrap_err().contains("overruns"));
        assert_eq!(probe(b"").unwrap_err(), "empty file");
        assert!(probe(b"hello world").unwrap_err().contains("unrecognised"));
        assert!(
            probe(b"RIFF\xff\x00\x00\x00WEBPVP8 ")
                .unwrap_err()
                .contains("truncated")
        );
        assert!(
            probe(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2")
                .unwrap_err()
                .starts_with("mp4")
        );
    }
}
