//! GGUF metadata values ([`GgufValue`], [`GgufArray`]) and the bounds-checked cursor that
//! reads them (and every other field of the header) from the untrusted bytes.

use std::path::Path;

use crate::{Error, Result};

/// Arrays of arrays deeper than this are refused (bounds recursion on crafted input).
pub(super) const MAX_ARRAY_DEPTH: usize = 8;

/// Upfront capacity for lists of variable-size items (strings, nested arrays, tensor
/// infos): counts are already capped by the remaining bytes, this also keeps a count that
/// fails halfway from reserving several times the file size.
pub(super) const PREALLOC_CAP: usize = 1 << 16;

/// A metadata value. Arrays are typed (one `Vec` per element type), so the 49k-entry
/// token and merge lists load as one `Vec<String>` and the token types as one `Vec<i32>`.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(GgufArray),
}

/// A typed metadata array (GGUF arrays are homogeneous).
#[derive(Clone, Debug, PartialEq)]
pub enum GgufArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    String(Vec<String>),
    /// Array of arrays (each inner array may have its own element type).
    Array(Vec<GgufArray>),
}

impl GgufArray {
    pub fn len(&self) -> usize {
        match self {
            GgufArray::U8(v) => v.len(),
            GgufArray::I8(v) => v.len(),
            GgufArray::U16(v) => v.len(),
            GgufArray::I16(v) => v.len(),
            GgufArray::U32(v) => v.len(),
            GgufArray::I32(v) => v.len(),
            GgufArray::U64(v) => v.len(),
            GgufArray::I64(v) => v.len(),
            GgufArray::F32(v) => v.len(),
            GgufArray::F64(v) => v.len(),
            GgufArray::Bool(v) => v.len(),
            GgufArray::String(v) => v.len(),
            GgufArray::Array(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element type name, for messages.
    pub fn elem_type_name(&self) -> &'static str {
        match self {
            GgufArray::U8(_) => "u8",
            GgufArray::I8(_) => "i8",
            GgufArray::U16(_) => "u16",
            GgufArray::I16(_) => "i16",
            GgufArray::U32(_) => "u32",
            GgufArray::I32(_) => "i32",
            GgufArray::U64(_) => "u64",
            GgufArray::I64(_) => "i64",
            GgufArray::F32(_) => "f32",
            GgufArray::F64(_) => "f64",
            GgufArray::Bool(_) => "bool",
            GgufArray::String(_) => "string",
            GgufArray::Array(_) => "array",
        }
    }

    /// The elements as i64 if this is an integer array (a u64 above i64::MAX gives `None`).
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        Some(match self {
            GgufArray::U8(v) => v.iter().map(|&x| x as i64).collect(),
            GgufArray::I8(v) => v.iter().map(|&x| x as i64).collect(),
            GgufArray::U16(v) => v.iter().map(|&x| x as i64).collect(),
            GgufArray::I16(v) => v.iter().map(|&x| x as i64).collect(),
            GgufArray::U32(v) => v.iter().map(|&x| x as i64).collect(),
            GgufArray::I32(v) => v.iter().map(|&x| x as i64).collect(),
            GgufArray::U64(v) => v
                .iter()
                .map(|&x| i64::try_from(x).ok())
                .collect::<Option<Vec<_>>>()?,
            GgufArray::I64(v) => v.clone(),
            _ => return None,
        })
    }
}

impl GgufValue {
    /// Type name, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            GgufValue::U8(_) => "u8",
            GgufValue::I8(_) => "i8",
            GgufValue::U16(_) => "u16",
            GgufValue::I16(_) => "i16",
            GgufValue::U32(_) => "u32",
            GgufValue::I32(_) => "i32",
            GgufValue::U64(_) => "u64",
            GgufValue::I64(_) => "i64",
            GgufValue::F32(_) => "f32",
            GgufValue::F64(_) => "f64",
            GgufValue::Bool(_) => "bool",
            GgufValue::String(_) => "string",
            GgufValue::Array(_) => "array",
        }
    }

    /// Any integer type as i128 (so u64 and i64 both fit), `None` for other types.
    pub(super) fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            GgufValue::U8(x) => x as i128,
            GgufValue::I8(x) => x as i128,
            GgufValue::U16(x) => x as i128,
            GgufValue::I16(x) => x as i128,
            GgufValue::U32(x) => x as i128,
            GgufValue::I32(x) => x as i128,
            GgufValue::U64(x) => x as i128,
            GgufValue::I64(x) => x as i128,
            _ => return None,
        })
    }
}

/// Bounds-checked little-endian reader over the mapped bytes.
pub(super) struct Cursor<'a> {
    pub(super) buf: &'a [u8],
    pub(super) pos: usize,
    pub(super) path: &'a Path,
}

impl<'a> Cursor<'a> {
    pub(super) fn err(&self, msg: impl Into<String>) -> Error {
        Error::format(self.path, msg)
    }

    pub(super) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next `n` bytes, or a truncation error naming `what`.
    pub(super) fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err(format!(
                "truncated GGUF: {what} needs {n} bytes at offset {} but only {} remain",
                self.pos,
                self.remaining()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub(super) fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub(super) fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    pub(super) fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A `len u64` + UTF-8 string; the length is checked against the remaining bytes first.
    pub(super) fn string(&mut self, what: &str) -> Result<String> {
        let at = self.pos;
        let len = self.u64(what)?;
        if len > self.remaining() as u64 {
            return Err(self.err(format!(
                "{what} at offset {at} claims {len} bytes but only {} remain",
                self.remaining()
            )));
        }
        let bytes = self.take(len as usize, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| self.err(format!("{what} at offset {at} is not valid UTF-8")))
    }

    /// A scalar or array value of GGUF value type `ty`.
    pub(super) fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<GgufValue> {
        let what = key;
        Ok(match ty {
            0 => GgufValue::U8(u8::from_le_bytes(self.array(what)?)),
            1 => GgufValue::I8(i8::from_le_bytes(self.array(what)?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(what)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(what)?)),
            4 => GgufValue::U32(u32::from_le_bytes(self.array(what)?)),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(what)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(what)?)),
            7 => GgufValue::Bool(self.array::<1>(what)?[0] != 0),
            8 => GgufValue::String(self.string(what)?),
            9 => GgufValue::Array(self.array_value(key, depth)?),
            10 => GgufValue::U64(u64::from_le_bytes(self.array(what)?)),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(what)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(what)?)),
            other => {
                return Err(self.err(format!(
                    "metadata key {key:?} has unknown value type {other}"
                )))
            }
        })
    }

    /// Array payload: `elem_type u32, count u64, elements`. The count is capped by the
    /// smallest possible encoding of one element before allocating.
    pub(super) fn array_value(&mut self, key: &str, depth: usize) -> Result<GgufArray> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(self.err(format!(
                "metadata key {key:?}: arrays nested deeper than {MAX_ARRAY_DEPTH}"
            )));
        }
        let elem = self.u32(key)?;
        let at = self.pos;
        let count = self.u64(key)?;
        let min_size: u64 = match elem {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 => 8,  // string: at least its length field
            9 => 12, // array: at least elem type + count
            other => {
                return Err(self.err(format!(
                    "metadata key {key:?}: array of unknown value type {other}"
                )));
            }
        };
        if count > self.remaining() as u64 / min_size {
            return Err(self.err(format!(
                "metadata key {key:?}: array of {count} elements at offset {at} cannot fit in the remaining {} bytes",
                self.remaining()
            )));
        }
        let n = count as usize;
        // Fixed-size elements: one bounds-checked slice, then a tight decode loop.
        macro_rules! fixed {
            ($variant:ident, $t:ty) => {{
                const S: usize = std::mem::size_of::<$t>();
                let bytes = self.take(n * S, key)?;
                GgufArray::$variant(
                    bytes
                        .chunks_exact(S)
                        .map(|c| {
                            let mut a = [0u8; S];
                            a.copy_from_slice(c);
                            <$t>::from_le_bytes(a)
                        })
                        .collect(),
                )
            }};
        }
        Ok(match elem {
            0 => fixed!(U8, u8),
            1 => fixed!(I8, i8),
            2 => fixed!(U16, u16),
            3 => fixed!(I16, i16),
            4 => fixed!(U32, u32),
            5 => fixed!(I32, i32),
            6 => fixed!(F32, f32),
            10 => fixed!(U64, u64),
            11 => fixed!(I64, i64),
            12 => fixed!(F64, f64),
            7 => GgufArray::Bool(self.take(n, key)?.iter().map(|&b| b != 0).collect()),
            8 => {
                let mut v = Vec::with_capacity(n.min(PREALLOC_CAP));
                for _ in 0..n {
                    v.push(self.string(key)?);
                }
                GgufArray::String(v)
            }
            _ => {
                // 9: arrays of arrays.
                let mut v = Vec::with_capacity(n.min(PREALLOC_CAP));
                for _ in 0..n {
                    v.push(self.array_value(key, depth + 1)?);
                }
                GgufArray::Array(v)
            }
        })
    }
}
