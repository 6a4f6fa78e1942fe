//! GGUF container reader (versions 2 and 3), memory-mapped.
//!
//! Layout (all little-endian):
//! ```text
//! magic "GGUF" | version u32 | tensor_count u64 | kv_count u64
//! kv_count × { key: string, value_type u32, value }
//! tensor_count × { name: string, n_dims u32, ne[n_dims] u64, ggml_type u32, offset u64 }
//! padding to `general.alignment` (default 32)
//! tensor data; each tensor at data_start + offset
//! ```
//! where `string` = `len u64` + UTF-8 bytes, and an array value = `elem_type u32, count u64,
//! elements`. `ne[0]` is the contiguous (innermost) dimension.
//!
//! The file is untrusted: every read is bounds-checked, every count is capped by what the
//! remaining bytes could hold before anything is allocated, and every problem is a one-line
//! [`Error::Format`] naming the file. Nothing here panics on crafted input.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::compute::quant::{self, GgmlType};
use crate::{Error, Result, Tensor};

/// Default data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// GGML supports at most 4 dimensions.
pub const MAX_DIMS: usize = 4;
/// Arrays of arrays deeper than this are refused (bounds recursion on crafted input).
const MAX_ARRAY_DEPTH: usize = 8;
/// Upfront capacity for lists of variable-size items (strings, nested arrays, tensor
/// infos): counts are already capped by the remaining bytes, this also keeps a count that
/// fails halfway from reserving several times the file size.
const PREALLOC_CAP: usize = 1 << 16;

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
    fn as_i128(&self) -> Option<i128> {
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

/// One tensor's directory entry.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// GGML dims `ne`, innermost (contiguous) first: a linear weight is `[in, out]`.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    /// Byte size of the data.
    pub n_bytes: u64,
}

impl GgufTensorInfo {
    /// Row-major shape (reverse of `dims`): ggml `[in, out]` → `[out, in]`.
    pub fn shape(&self) -> Vec<usize> {
        // Each dim fits in usize and so does their product: checked when the file was opened.
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.dims.iter().map(|&d| d as usize).product()
    }
}

/// The bytes of a GGUF file: memory-mapped ([`GgufFile::open`]) or owned
/// ([`GgufFile::from_bytes`]).
enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// An open, validated GGUF file. The tensor data stays memory-mapped until dequantized.
pub struct GgufFile {
    path: PathBuf,
    mmap: Bytes,
    version: u32,
    metadata: BTreeMap<String, GgufValue>,
    /// In file order.
    tensors: Vec<GgufTensorInfo>,
    by_name: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .finish()
    }
}

/// Bounds-checked little-endian reader over the mapped bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, msg: impl Into<String>) -> Error {
        Error::format(self.path, msg)
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next `n` bytes, or a truncation error naming `what`.
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
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

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A `len u64` + UTF-8 string; the length is checked against the remaining bytes first.
    fn string(&mut self, what: &str) -> Result<String> {
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
    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<GgufValue> {
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
    fn array_value(&mut self, key: &str, depth: usize) -> Result<GgufArray> {
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

impl GgufFile {
    /// Open, map and validate a GGUF file (header, metadata, tensor directory, data ranges).
    pub fn open(path: &Path) -> Result<GgufFile> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len < 24 {
            return Err(Error::format(
                path,
                format!("truncated GGUF header: the file has {len} bytes, a GGUF header needs 24"),
            ));
        }
        // SAFETY: the map is read-only; like every mmap-based loader we assume the file is not
        // truncated or rewritten by another process while it is open.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Self::parse(path.to_path_buf(), Bytes::Mapped(mmap))
    }

    /// Parse and validate a GGUF image held in memory, with exactly the checks of
    /// [`GgufFile::open`]; `path` is only used to name the file in errors. This is the
    /// bytes-in entry point for fuzzing (`fuzz/fuzz_targets/gguf.rs`) and for callers
    /// that already hold the bytes.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<GgufFile> {
        if bytes.len() < 24 {
            return Err(Error::format(
                path,
                format!(
                    "truncated GGUF header: the file has {} bytes, a GGUF header needs 24",
                    bytes.len()
                ),
            ));
        }
        Self::parse(path.to_path_buf(), Bytes::Owned(bytes))
    }

    fn parse(path: PathBuf, mmap: Bytes) -> Result<GgufFile> {
        let mut c = Cursor {
            buf: &mmap,
            pos: 0,
            path: &path,
        };

        // --- Header.
        let magic: [u8; 4] = c.array("magic")?;
        if &magic != b"GGUF" {
            return Err(c.err(format!(
                "not a GGUF file (magic bytes {:02x} {:02x} {:02x} {:02x}, expected \"GGUF\")",
                magic[0], magic[1], magic[2], magic[3]
            )));
        }
        let version = c.u32("version")?;
        match version {
            2 | 3 => {}
            1 => return Err(c.err("GGUF version 1 is not supported (only versions 2 and 3)")),
            v if matches!(v.swap_bytes(), 2 | 3) => {
                return Err(c.err("big-endian GGUF files are not supported"));
            }
            v => {
                return Err(c.err(format!(
                    "unsupported GGUF version {v} (only versions 2 and 3)"
                )))
            }
        }
        let tensor_count = c.u64("tensor count")?;
        let kv_count = c.u64("metadata count")?;
        // Smallest encodings: a KV is key length (8) + type (4) + a 1-byte value; a tensor
        // info is name length (8) + n_dims (4) + type (4) + offset (8).
        let rem = c.remaining() as u64;
        if kv_count > rem / 13 {
            return Err(c.err(format!(
                "metadata count {kv_count} cannot fit in the remaining {rem} bytes of the file"
            )));
        }
        if tensor_count > rem / 24 {
            return Err(c.err(format!(
                "tensor count {tensor_count} cannot fit in the remaining {rem} bytes of the file"
            )));
        }

        // --- Metadata.
        let mut metadata = BTreeMap::new();
        for i in 0..kv_count {
            let key = c.string(&format!("metadata key #{i}"))?;
            let ty = c.u32(&key)?;
            let value = c.value(ty, &key, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(c.err(format!("duplicate metadata key {key:?}")));
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_i128() {
                Some(a) if a > 0 && (a as u128).is_power_of_two() && a <= u32::MAX as i128 => {
                    a as u64
                }
                Some(a) => {
                    return Err(c.err(format!(
                        "general.alignment {a} is not a non-zero power of two"
                    )));
                }
                None => {
                    return Err(c.err(format!(
                        "general.alignment is a {}, expected an integer",
                        v.type_name()
                    )));
                }
            },
        };

        // --- Tensor directory.
        let rem = c.remaining() as u64;
        if tensor_count > rem / 24 {
            return Err(c.err(format!(
                "tensor count {tensor_count} cannot fit in the remaining {rem} bytes of the file"
            )));
        }
        struct Raw {
            name: String,
            dims: Vec<u64>,
            ty: GgmlType,
            rel_offset: u64,
            n_bytes: u64,
        }
        let cap = (tensor_count as usize).min(PREALLOC_CAP);
        let mut raw: Vec<Raw> = Vec::with_capacity(cap);
        let mut by_name = HashMap::with_capacity(cap);
        for i in 0..tensor_count {
            let name = c.string(&format!("tensor name #{i}"))?;
            let what = format!("tensor {name:?}");
            let n_dims = c.u32(&what)?;
            if n_dims as usize > MAX_DIMS {
                return Err(c.err(format!(
                    "tensor {name:?} has {n_dims} dimensions (at most {MAX_DIMS})"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64(&what)?);
            }
            let type_id = c.u32(&what)?;
            let rel_offset = c.u64(&what)?;
            let ty = match GgmlType::from_id(type_id) {
                Some(t) => t,
                None => {
                    return Err(c.err(match quant::unsupported_type_name(type_id) {
                        Some(n) => format!("tensor {name:?} has ggml type {n} (id {type_id}), which softprompt cannot read"),
                        None => format!("tensor {name:?} has unknown ggml type {type_id}"),
                    }));
                }
            };
            // Element count, checked in usize (what the dequantized Vec will need).
            let mut numel: usize = 1;
            for &d in &dims {
                numel = usize::try_from(d)
                    .ok()
                    .and_then(|d| numel.checked_mul(d))
                    .ok_or_else(|| {
                        c.err(format!(
                            "tensor {name:?} dims {dims:?}: element count overflows usize"
                        ))
                    })?;
            }
            let bs = ty.block_size() as u64;
            let ne0 = dims.first().copied().unwrap_or(1);
            if ne0 % bs != 0 {
                return Err(c.err(format!(
                    "tensor {name:?}: row length {ne0} is not a multiple of the {} block size {bs}",
                    ty.name()
                )));
            }
            // Blocks = numel / block size (exact, since ne0 is a multiple of it).
            let n_bytes = (numel as u64 / bs)
                .checked_mul(ty.type_size() as u64)
                .ok_or_else(|| {
                    c.err(format!(
                        "tensor {name:?} dims {dims:?}: byte size overflows"
                    ))
                })?;
            if rel_offset % alignment != 0 {
                return Err(c.err(format!(
                    "tensor {name:?}: offset {rel_offset} is not a multiple of the alignment {alignment}"
                )));
            }
            if by_name.insert(name.clone(), raw.len()).is_some() {
                return Err(c.err(format!("duplicate tensor name {name:?}")));
            }
            raw.push(Raw {
                name,
                dims,
                ty,
                rel_offset,
                n_bytes,
            });
        }

        // --- Data section: starts at the next multiple of the alignment.
        let file_len = mmap.len() as u64;
        let data_offset = (c.pos as u64)
            .checked_next_multiple_of(alignment)
            .ok_or_else(|| c.err("data offset overflows"))?;
        let mut tensors = Vec::with_capacity(raw.len());
        for r in raw {
            let start = data_offset.checked_add(r.rel_offset);
            let end = start.and_then(|s| s.checked_add(r.n_bytes));
            match (start, end) {
                (Some(s), Some(e)) if e <= file_len => tensors.push(GgufTensorInfo {
                    name: r.name,
                    dims: r.dims,
                    ggml_type: r.ty,
                    offset: s,
                    n_bytes: r.n_bytes,
                }),
                _ => {
                    return Err(c.err(format!(
                        "tensor {:?}: data at offset {} + {} ({} bytes) runs past the end of the file ({file_len} bytes)",
                        r.name, data_offset, r.rel_offset, r.n_bytes
                    )));
                }
            }
        }
        // No two tensors may share bytes.
        let mut order: Vec<usize> = (0..tensors.len()).collect();
        order.sort_by_key(|&i| (tensors[i].offset, tensors[i].n_bytes));
        for w in order.windows(2) {
            let (a, b) = (&tensors[w[0]], &tensors[w[1]]);
            if a.n_bytes > 0 && b.n_bytes > 0 && a.offset + a.n_bytes > b.offset {
                return Err(c.err(format!(
                    "tensors {:?} and {:?} overlap in the file",
                    a.name, b.name
                )));
            }
        }

        Ok(GgufFile {
            path,
            mmap,
            version,
            metadata,
            tensors,
            by_name,
            alignment,
            data_offset,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute offset of the tensor data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    pub fn metadata(&self) -> &BTreeMap<String, GgufValue> {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    fn err(&self, msg: impl Into<String>) -> Error {
        Error::format(&self.path, msg)
    }

    fn missing(&self, key: &str) -> Error {
        self.err(format!("missing metadata key {key}"))
    }

    fn wrong_type(&self, key: &str, v: &GgufValue, expected: &str) -> Error {
        self.err(format!(
            "metadata key {key} is a {}, expected {expected}",
            v.type_name()
        ))
    }

    /// A string value.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.opt_str(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(GgufValue::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.wrong_type(key, v, "a string")),
        }
    }

    /// A non-negative integer of any integer type.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.opt_u64(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_i128() {
                Some(x) if (0..=u64::MAX as i128).contains(&x) => Ok(Some(x as u64)),
                Some(x) => Err(self.err(format!(
                    "metadata key {key} is {x}, expected a non-negative integer"
                ))),
                None => Err(self.wrong_type(key, v, "an integer")),
            },
        }
    }

    /// A non-negative integer that must fit in usize and in `u32` (counts, sizes, token ids).
    pub fn get_usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.opt_u64(key)? {
            None => Ok(None),
            Some(x) if x <= u32::MAX as u64 => Ok(Some(x as usize)),
            Some(x) => Err(self.err(format!("metadata key {key} = {x} is out of range"))),
        }
    }

    /// A float (f32 or f64 stored; integers accepted too).
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        self.opt_f32(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.get(key) {
            None => Ok(None),
            Some(GgufValue::F32(x)) => Ok(Some(*x)),
            Some(GgufValue::F64(x)) => Ok(Some(*x as f32)),
            Some(v) => match v.as_i128() {
                Some(x) => Ok(Some(x as f32)),
                None => Err(self.wrong_type(key, v, "a number")),
            },
        }
    }

    pub fn get_bool(&self, key: &str) -> Result<bool> {
        self.opt_bool(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(GgufValue::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong_type(key, v, "a bool")),
        }
    }

    /// Any array value.
    pub fn get_array(&self, key: &str) -> Result<&GgufArray> {
        match self.get(key) {
            None => Err(self.missing(key)),
            Some(GgufValue::Array(a)) => Ok(a),
            Some(v) => Err(self.wrong_type(key, v, "an array")),
        }
    }

    /// An array of strings (token list, merges).
    pub fn get_str_array(&self, key: &str) -> Result<&[String]> {
        match self.get_array(key)? {
            GgufArray::String(v) => Ok(v),
            a => Err(self.err(format!(
                "metadata key {key} is an array of {}, expected strings",
                a.elem_type_name()
            ))),
        }
    }

    /// An array of integers of any integer type, as i64.
    pub fn get_int_array(&self, key: &str) -> Result<Vec<i64>> {
        let a = self.get_array(key)?;
        a.to_i64_vec().ok_or_else(|| {
            self.err(format!(
                "metadata key {key} is an array of {}, expected integers",
                a.elem_type_name()
            ))
        })
    }

    /// The `general.architecture` string ("llama", "qwen2", "gemma3", ...).
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    /// The tensor directory, in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The raw (still quantized) bytes of a tensor.
    pub fn tensor_bytes(&self, info: &GgufTensorInfo) -> &[u8] {
        // Range validated against the file length in `parse`; `get` keeps this panic-free
        // even for an info that did not come from this file.
        let (s, e) = (
            info.offset as usize,
            info.offset.saturating_add(info.n_bytes) as usize,
        );
        self.mmap.get(s..e).unwrap_or(&[])
    }

    /// Dequantize a tensor to f32 with its row-major shape (`dims` reversed: ggml
    /// `ne = [in, out]` → shape `[out, in]`).
    pub fn tensor_f32(&self, name: &str) -> Result<Tensor> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| self.err(format!("missing tensor {name}")))?;
        Ok(self.dequantize_info(info))
    }

    /// Dequantize a tensor from its directory entry.
    pub fn dequantize_info(&self, info: &GgufTensorInfo) -> Tensor {
        let n = info.numel();
        let data = quant::dequantize(info.ggml_type, self.tensor_bytes(info), n);
        Tensor {
            shape: info.shape(),
            data,
        }
    }
}
