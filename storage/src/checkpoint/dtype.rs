//! Element types of checkpointed tensors and the casts done on load.
//!
//! Names follow safetensors (`F32`, `BF16`, …) in upper case on disk and
//! accept lower case on input. Bytes are always little-endian.

use std::fmt;
use std::str::FromStr;

use half::{bf16, f16};

/// A tensor element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum DType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    pub const ALL: [DType; 10] = [
        DType::F64,
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::I64,
        DType::I32,
        DType::I16,
        DType::I8,
        DType::U8,
        DType::Bool,
    ];

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// The on-disk name (safetensors spelling).
    pub fn name(self) -> &'static str {
        match self {
            DType::F64 => "F64",
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I64 => "I64",
            DType::I32 => "I32",
            DType::I16 => "I16",
            DType::I8 => "I8",
            DType::U8 => "U8",
            DType::Bool => "BOOL",
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F64 | DType::F32 | DType::F16 | DType::BF16)
    }

    /// Read element `i` of a little-endian buffer as f64 (exact for every
    /// type except i64 beyond 2^53). Used by `diff`.
    pub fn get_f64(self, bytes: &[u8], i: usize) -> f64 {
        let s = self.size();
        let b = &bytes[i * s..(i + 1) * s];
        match self {
            DType::F64 => f64::from_le_bytes(b.try_into().expect("8 bytes")),
            DType::F32 => f32::from_le_bytes(b.try_into().expect("4 bytes")) as f64,
            DType::F16 => f16::from_le_bytes([b[0], b[1]]).to_f64(),
            DType::BF16 => bf16::from_le_bytes([b[0], b[1]]).to_f64(),
            DType::I64 => i64::from_le_bytes(b.try_into().expect("8 bytes")) as f64,
            DType::I32 => i32::from_le_bytes(b.try_into().expect("4 bytes")) as f64,
            DType::I16 => i16::from_le_bytes([b[0], b[1]]) as f64,
            DType::I8 => b[0] as i8 as f64,
            DType::U8 | DType::Bool => b[0] as f64,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let up = s.to_ascii_uppercase();
        let alias = match up.as_str() {
            "FLOAT64" | "DOUBLE" => "F64",
            "FLOAT32" | "FLOAT" => "F32",
            "FLOAT16" | "HALF" => "F16",
            "BFLOAT16" => "BF16",
            "INT64" => "I64",
            "INT32" => "I32",
            "INT16" => "I16",
            "INT8" => "I8",
            "UINT8" => "U8",
            "BOOLEAN" => "BOOL",
            other => other,
        };
        DType::ALL
            .into_iter()
            .find(|d| d.name() == alias)
            .ok_or_else(|| {
                format!("unknown dtype {s:?} (known: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL)")
            })
    }
}

impl From<DType> for String {
    fn from(d: DType) -> String {
        d.name().to_string()
    }
}

impl TryFrom<String> for DType {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

/// Whether a cast from `from` to `to` is supported on load: identity, or
/// between the float types (F64, F32, F16, BF16).
pub fn can_cast(from: DType, to: DType) -> bool {
    from == to || (from.is_float() && to.is_float())
}

/// Convert `src` (elements of `from`) into `dst` (elements of `to`), the
/// same element count. Float narrowing rounds to nearest even, as PyTorch does.
pub fn cast(from: DType, src: &[u8], to: DType, dst: &mut [u8]) {
    debug_assert!(can_cast(from, to));
    debug_assert_eq!(src.len() / from.size(), dst.len() / to.size());
    if from == to {
        dst.copy_from_slice(src);
        return;
    }
    // Fast paths for the casts mixed-precision training does all the time.
    match (from, to) {
        (DType::BF16, DType::F32) => {
            for (s, d) in src.chunks_exact(2).zip(dst.chunks_exact_mut(4)) {
                // bf16 is the top half of an f32: exact.
                d.copy_from_slice(&[0, 0, s[0], s[1]]);
            }
        }
        (DType::F32, DType::BF16) => {
            for (s, d) in src.chunks_exact(4).zip(dst.chunks_exact_mut(2)) {
                let v = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
                d.copy_from_slice(&bf16::from_f32(v).to_le_bytes());
            }
        }
        (DType::F16, DType::F32) => {
            for (s, d) in src.chunks_exact(2).zip(dst.chunks_exact_mut(4)) {
                d.copy_from_slice(&f16::from_le_bytes([s[0], s[1]]).to_f32().to_le_bytes());
            }
        }
        (DType::F32, DType::F16) => {
            for (s, d) in src.chunks_exact(4).zip(dst.chunks_exact_mut(2)) {
                let v = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
                d.copy_from_slice(&f16::from_f32(v).to_le_bytes());
            }
        }
        _ => {
            let (fs, ts) = (from.size(), to.size());
            for (s, d) in src.chunks_exact(fs).zip(dst.chunks_exact_mut(ts)) {
                let v = from.get_f64(s, 0);
                match to {
                    DType::F64 => d.copy_from_slice(&v.to_le_bytes()),
                    DType::F32 => d.copy_from_slice(&(v as f32).to_le_bytes()),
                    DType::F16 => d.copy_from_slice(&f16::from_f64(v).to_le_bytes()),
                    DType::BF16 => d.copy_from_slice(&bf16::from_f64(v).to_le_bytes()),
                    _ => unreachable!("can_cast admits float targets only"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_aliases_parse() {
        for d in DType::ALL {
            assert_eq!(d.name().parse::<DType>().unwrap(), d);
            assert_eq!(d.name().to_lowercase().parse::<DType>().unwrap(), d);
        }
        assert_eq!("bfloat16".parse::<DType>().unwrap(), DType::BF16);
        assert!("complex64".parse::<DType>().is_err());
    }

    #[test]
    fn bf16_f32_casts_match_the_half_crate() {
        let vals = [
            0.0f32,
            -0.0,
            1.0,
            -2.5,
            1.2345678,
            1e-20,
            6.5e4,
            f32::INFINITY,
        ];
        let src: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut b = vec![0u8; vals.len() * 2];
        cast(DType::F32, &src, DType::BF16, &mut b);
        let mut back = vec![0u8; vals.len() * 4];
        cast(DType::BF16, &b, DType::F32, &mut back);
        for (i, v) in vals.iter().enumerate() {
            let want = bf16::from_f32(*v).to_f32();
            let got = f32::from_le_bytes(back[i * 4..i * 4 + 4].try_into().unwrap());
            assert_eq!(got.to_bits(), want.to_bits(), "value {v}");
        }
        // f16 through the generic path (f64 -> f16) agrees with the fast one.
        let mut h1 = vec![0u8; vals.len() * 2];
        cast(DType::F32, &src, DType::F16, &mut h1);
        let d64: Vec<u8> = vals
            .iter()
            .flat_map(|v| (*v as f64).to_le_bytes())
            .collect();
        let mut h2 = vec![0u8; vals.len() * 2];
        cast(DType::F64, &d64, DType::F16, &mut h2);
        assert_eq!(h1, h2);
        assert!(!can_cast(DType::I32, DType::F32));
    }
}
