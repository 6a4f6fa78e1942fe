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

use super::value::{Cursor, GgufArray, GgufValue, PREALLOC_CAP};
use crate::compute::quant::{self, GgmlType};
use crate::{Error, Result, Tensor};

/// Default data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// GGML supports at most 4 dimensions.
pub const MAX_DIMS: usize = 4;
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
