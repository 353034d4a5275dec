//! Sidecar metadata of a sample: `NAME.txt` (one caption) and `NAME.json`
//! (captions with lang/style, scores, defect boxes, embedding), parsed
//! strictly: a wrong-typed field rejects the sample with a reason.
//!
//! JSON sidecar, every field optional (the wire format, `docs/format.md`):
//! ```json
//! {"captions": [{"text": "…", "lang": "en", "style": "short"}],
//!  "aesthetic": 5.2, "ocr_ratio": 0.01, "motion": 0.3, "source": "laion",
//!  "defects": [{"x0": 10, "y0": 20, "x1": 60, "y1": 40, "kind": "watermark"}],
//!  "embedding": [0.1, 0.2, …]}
//! ```

use serde::Deserialize;

/// One caption of a sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Caption {
    pub text: String,
    pub lang: String,
    pub style: String,
}

/// A defect region in pixel coordinates (`x0 < x1`, `y0 < y1`).
#[derive(Debug, Clone, PartialEq)]
pub struct Defect {
    pub x0: i32,
    pub y0: i32,
    pub x1: i32,
    pub y1: i32,
    pub kind: String,
}

/// Everything the sidecars say about a sample.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sidecar {
    pub captions: Vec<Caption>,
    pub aesthetic: Option<f32>,
    pub ocr_ratio: Option<f32>,
    pub motion: Option<f32>,
    pub source: Option<String>,
    pub defects: Vec<Defect>,
    pub embedding: Option<Vec<f32>>,
}

/// Style given to a caption that comes from a plain `.txt` sidecar or a caption column.
pub const PLAIN_STYLE: &str = "plain";

/// `zh` when the text holds CJK ideographs, else `en`.
pub fn detect_lang(text: &str) -> &'static str {
    if text
        .chars()
        .any(|c| matches!(c as u32, 0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0xF900..=0xFAFF))
    {
        "zh"
    } else {
        "en"
    }
}

#[derive(Deserialize)]
struct JsonCaption {
    text: String,
    lang: Option<String>,
    style: Option<String>,
}

#[derive(Deserialize)]
struct JsonDefect {
    x0: f64,
    y0: f64,
    x1: f64,
    y1: f64,
    kind: Option<String>,
}

#[derive(Deserialize)]
struct JsonSidecar {
    #[serde(default)]
    captions: Vec<JsonCaption>,
    caption: Option<String>,
    aesthetic: Option<f32>,
    ocr_ratio: Option<f32>,
    motion: Option<f32>,
    source: Option<String>,
    #[serde(default)]
    defects: Vec<JsonDefect>,
    embedding: Option<Vec<f32>>,
}

impl Sidecar {
    /// Build from the raw sidecars. `width`/`height` bound the defect boxes,
    /// `embedding_dim` is the granary's fixed dimension.
    pub fn parse(
        txt: Option<&[u8]>,
        json: Option<&[u8]>,
        width: u32,
        height: u32,
        embedding_dim: usize,
    ) -> Result<Sidecar, String> {
        let mut out = Sidecar::default();
        if let Some(json) = json {
            let j: JsonSidecar =
                serde_json::from_slice(json).map_err(|e| format!("json sidecar: {e}"))?;
            for c in j.captions {
                out.push_caption(c.text, c.lang, c.style);
            }
            if let Some(text) = j.caption {
                out.push_caption(text, None, None);
            }
            out.aesthetic = finite("aesthetic", j.aesthetic)?;
            out.ocr_ratio = finite("ocr_ratio", j.ocr_ratio)?;
            out.motion = finite("motion", j.motion)?;
            out.source = j.source;
            for (i, d) in j.defects.into_iter().enumerate() {
                out.defects.push(defect(i, d, width, height)?);
            }
            if let Some(e) = j.embedding {
                if e.len() != embedding_dim {
                    return Err(format!(
                        "json sidecar: embedding has {} values, this granary's dimension is {embedding_dim}",
                        e.len()
                    ));
                }
                if e.iter().any(|v| !v.is_finite()) {
                    return Err("json sidecar: embedding holds a non-finite value".into());
                }
                out.embedding = Some(e);
            }
        }
        if let Some(txt) = txt {
            let text = std::str::from_utf8(txt)
                .map_err(|e| format!("txt sidecar is not UTF-8: {e}"))?
                .trim();
            if !text.is_empty() && !out.captions.iter().any(|c| c.text == text) {
                out.push_caption(text.to_string(), None, None);
            }
        }
        Ok(out)
    }

    fn push_caption(&mut self, text: String, lang: Option<String>, style: Option<String>) {
        let text = text.trim().to_string();
        if text.is_empty() {
            return;
        }
        let lang = lang.unwrap_or_else(|| detect_lang(&text).to_string());
        let style = style.unwrap_or_else(|| PLAIN_STYLE.to_string());
        self.captions.push(Caption { text, lang, style });
    }
}

fn finite(name: &str, v: Option<f32>) -> Result<Option<f32>, String> {
    match v {
        Some(x) if !x.is_finite() => Err(format!("json sidecar: {name} is not finite")),
        _ => Ok(v),
    }
}

fn defect(i: usize, d: JsonDefect, width: u32, height: u32) -> Result<Defect, String> {
    let clamp = |v: f64, max: u32| v.round().clamp(0.0, f64::from(max)) as i32;
    if ![d.x0, d.y0, d.x1, d.y1].iter().all(|v| v.is_finite()) {
        return Err(format!(
            "json sidecar: defect {i} has a non-finite coordinate"
        ));
    }
    let b = Defect {
        x0: clamp(d.x0, width),
        y0: clamp(d.y0, height),
        x1: clamp(d.x1, width),
        y1: clamp(d.y1, height),
        kind: d.kind.unwrap_or_else(|| "unknown".into()),
    };
    if b.x1 <= b.x0 || b.y1 <= b.y0 {
        return Err(format!(
            "json sidecar: defect {i} is empty or inverted inside the {width}x{height} image ({},{})-({},{})",
            d.x0, d.y0, d.x1, d.y1
        ));
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_types_are_rejected_with_the_field() {
        let err = Sidecar::parse(None, Some(br#"{"aesthetic": "high"}"#), 10, 10, 4).unwrap_err();
        assert!(
            err.contains("aesthetic") || err.contains("invalid type"),
            "{err}"
        );
        let err = Sidecar::parse(None, Some(b"{not json"), 10, 10, 4).unwrap_err();
        assert!(err.starts_with("json sidecar"), "{err}");
        let err = Sidecar::parse(None, Some(br#"{"embedding": [1, 2]}"#), 10, 10, 4).unwrap_err();
        assert!(err.contains("dimension is 4"), "{err}");
    }

    #[test]
    fn captions_merge_and_lang_is_detected() {
        let s = Sidecar::parse(
            Some("  蓝色背景上的红色圆形 \n".as_bytes()),
            Some(br#"{"captions": [{"text": "a red circle", "style": "short"}], "defects": [{"x0": -5, "y0": 2, "x1": 50, "y1": 8, "kind": "logo"}]}"#),
            40,
            30,
            4,
        )
        .unwrap();
        assert_eq!(s.captions.len(), 2);
        assert_eq!(s.captions[0].lang, "en");
        assert_eq!(s.captions[0].style, "short");
        assert_eq!(s.captions[1].lang, "zh");
        assert_eq!(s.captions[1].style, PLAIN_STYLE);
        assert_eq!(
            s.defects[0],
            Defect {
                x0: 0,
                y0: 2,
                x1: 40,
                y1: 8,
                kind: "logo".into()
            }
        );
    }

    #[test]
    fn inverted_defect_box_is_an_error() {
        let err = Sidecar::parse(
            None,
            Some(br#"{"defects": [{"x0": 9, "y0": 0, "x1": 3, "y1": 5}]}"#),
            10,
            10,
            4,
        )
        .unwrap_err();
        assert!(err.contains("defect 0"), "{err}");
    }
}
