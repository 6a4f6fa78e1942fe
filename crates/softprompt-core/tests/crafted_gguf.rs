//! Crafted GGUF files, one test per case: each must give one clear `Format` error that
//! names the file and the problem, without a panic and without a large allocation
//! (sizes are checked against the file before anything is allocated). Both entry points
//! are checked: `GgufFile::open` (memory-mapped) and `GgufFile::from_bytes`.

mod crafted_common;

use std::path::{Path, PathBuf};

use crafted_common::expect_err;
use softprompt_core::compute::quant::GgmlType;
use softprompt_core::model::load::gguf::{load_gguf, GgufFile};
use softprompt_core::Error;

const T_U32: u32 = 4;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;

fn u32le(b: &mut Vec<u8>, x: u32) {
    b.extend_from_slice(&x.to_le_bytes());
}
fn u64le(b: &mut Vec<u8>, x: u64) {
    b.extend_from_slice(&x.to_le_bytes());
}
fn string(b: &mut Vec<u8>, s: &str) {
    u64le(b, s.len() as u64);
    b.extend_from_slice(s.as_bytes());
}

/// magic, version 3, tensor count, KV count.
fn header(n_tensors: u64, n_kv: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    u32le(&mut b, 3);
    u64le(&mut b, n_tensors);
    u64le(&mut b, n_kv);
    b
}

/// A tensor directory entry.
fn tensor_info(b: &mut Vec<u8>, name: &str, dims: &[u64], ty: u32, offset: u64) {
    string(b, name);
    u32le(b, dims.len() as u32);
    for &d in dims {
        u64le(b, d);
    }
    u32le(b, ty);
    u64le(b, offset);
}

/// A valid file: one KV (`general.architecture`), one F32 tensor `w` of 8 values.
/// Returns the bytes and the offsets where the KV, the tensor info and the data start.
fn valid() -> (Vec<u8>, [usize; 3]) {
    let mut b = header(1, 1);
    let kv_at = b.len();
    string(&mut b, "general.architecture");
    u32le(&mut b, T_STRING);
    string(&mut b, "llama");
    let info_at = b.len();
    tensor_info(&mut b, "w", &[8], GgmlType::F32.id(), 0);
    b.resize(b.len().next_multiple_of(32), 0);
    let data_at = b.len();
    for i in 0..8 {
        b.extend_from_slice(&(i as f32).to_le_bytes());
    }
    (b, [kv_at, info_at, data_at])
}

/// Pad a crafted file so that "not enough bytes" is never the reason it fails early.
fn padded(mut b: Vec<u8>, len: usize) -> Vec<u8> {
    if b.len() < len {
        b.resize(len, 0);
    }
    b
}

/// Write `bytes` as `name` in a fresh temp dir; `open` and `from_bytes` (and the model
/// loader) must all fail with a `Format` error naming the file and containing `needles`.
#[track_caller]
fn refused(name: &str, bytes: &[u8], needles: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let p: PathBuf = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    let e = expect_err(&p, needles, || GgufFile::open(&p));
    assert!(matches!(e, Error::Format { .. }), "{e:?}");
    let msg = e.to_string();
    let owned = bytes.to_vec();
    let e2 = expect_err(&p, needles, || GgufFile::from_bytes(&p, owned));
    assert_eq!(e2.to_string(), msg, "from_bytes and open disagree");
    let e3 = load_gguf(&p).err().expect("load_gguf must fail too");
    assert_eq!(e3.to_string(), msg);
}

#[test]
fn the_valid_base_file_opens() {
    // The cases below are corruptions of this file or built like it: it must be valid.
    let (b, _) = valid();
    let g = GgufFile::from_bytes(Path::new("valid.gguf"), b).unwrap();
    assert_eq!(g.tensors().len(), 1);
    assert_eq!(g.tensor_f32("w").unwrap().data[7], 7.0);
}

// --- Truncation at several points.

#[test]
fn truncated_inside_the_header() {
    let (b, _) = valid();
    refused(
        "cut_header.gguf",
        &b[..13],
        &["truncated GGUF header", "needs 24"],
    );
}

#[test]
fn truncated_inside_a_metadata_key() {
    // (Cutting the valid file this early is caught by the count check; a file with no
    // tensors gets to the key itself.)
    let mut b = header(0, 1);
    string(&mut b, "general.architecture");
    refused(
        "cut_key.gguf",
        &b[..24 + 8 + 12],
        &["metadata key #0", "claims 20 bytes but only 12 remain"],
    );
}

#[test]
fn truncated_before_the_counts_can_fit() {
    let (b, [kv, _, _]) = valid();
    refused(
        "cut_early.gguf",
        &b[..kv + 12],
        &["metadata count 1 cannot fit in the remaining 12 bytes"],
    );
}

#[test]
fn truncated_inside_a_metadata_value() {
    let (b, [kv, _, _]) = valid();
    // key (8 + 20) + type (4) + half of the value's length field.
    refused(
        "cut_value.gguf",
        &b[..kv + 8 + 20 + 4 + 4],
        &["truncated GGUF: general.architecture needs 8 bytes"],
    );
}

#[test]
fn truncated_inside_the_tensor_directory() {
    let mut b = header(1, 0);
    tensor_info(&mut b, "w", &[8, 1, 1, 1], GgmlType::F32.id(), 0);
    // name (8 + 1) + n_dims (4) + two dims + 3 bytes of the third.
    refused(
        "cut_info.gguf",
        &b[..24 + 9 + 4 + 16 + 3],
        &["truncated GGUF: tensor \"w\" needs 8 bytes at offset 53"],
    );
}

#[test]
fn truncated_before_the_tensor_directory() {
    let (b, [_, info, _]) = valid();
    refused(
        "cut_dir.gguf",
        &b[..info + 16],
        &["tensor count 1 cannot fit in the remaining 16 bytes"],
    );
}

#[test]
fn truncated_inside_the_tensor_data() {
    let (b, _) = valid();
    refused(
        "cut_data.gguf",
        &b[..b.len() - 1],
        &["tensor \"w\"", "runs past the end of the file"],
    );
}

// --- Huge counts and lengths: refused before allocating.

#[test]
fn huge_tensor_count() {
    refused(
        "tensors.gguf",
        &padded(header(u64::MAX, 0), 4096),
        &["tensor count 18446744073709551615 cannot fit"],
    );
}

#[test]
fn huge_kv_count() {
    refused(
        "kvs.gguf",
        &padded(header(0, 1 << 62), 4096),
        &["metadata count 4611686018427387904 cannot fit"],
    );
}

#[test]
fn huge_key_length() {
    let mut b = header(0, 1);
    u64le(&mut b, u64::MAX);
    refused(
        "keylen.gguf",
        &padded(b, 4096),
        &["metadata key #0", "claims 18446744073709551615 bytes"],
    );
}

#[test]
fn huge_string_value_length() {
    let mut b = header(0, 1);
    string(&mut b, "general.name");
    u32le(&mut b, T_STRING);
    u64le(&mut b, 1 << 40);
    refused(
        "strlen.gguf",
        &padded(b, 4096),
        &["general.name", "claims 1099511627776 bytes"],
    );
}

#[test]
fn huge_tensor_name_length() {
    let mut b = header(1, 0);
    u64le(&mut b, 1 << 50);
    refused(
        "namelen.gguf",
        &padded(b, 4096),
        &["tensor name #0", "claims 1125899906842624 bytes"],
    );
}

#[test]
fn huge_array_of_u64() {
    let mut b = header(0, 1);
    string(&mut b, "tokenizer.ggml.scores");
    u32le(&mut b, T_ARRAY);
    u32le(&mut b, 10); // u64 elements
    u64le(&mut b, 1 << 59);
    refused(
        "array.gguf",
        &padded(b, 4096),
        &["tokenizer.ggml.scores", "cannot fit"],
    );
}

#[test]
fn huge_array_of_strings() {
    let mut b = header(0, 1);
    string(&mut b, "tokenizer.ggml.tokens");
    u32le(&mut b, T_ARRAY);
    u32le(&mut b, T_STRING);
    u64le(&mut b, u64::MAX);
    refused(
        "strings.gguf",
        &padded(b, 4096),
        &["tokenizer.ggml.tokens", "cannot fit"],
    );
}

// --- Nested array bombs.

#[test]
fn nested_array_bomb_deep() {
    let mut b = header(0, 1);
    string(&mut b, "deep");
    u32le(&mut b, T_ARRAY);
    for _ in 0..10_000 {
        u32le(&mut b, T_ARRAY);
        u64le(&mut b, 1);
    }
    refused("deep.gguf", &b, &["\"deep\"", "nested deeper than 8"]);
}

#[test]
fn nested_array_bomb_wide() {
    // One outer array claiming 2^40 inner arrays, each claiming 2^40 u8 elements.
    let mut b = header(0, 1);
    string(&mut b, "wide");
    u32le(&mut b, T_ARRAY);
    u32le(&mut b, T_ARRAY);
    u64le(&mut b, 1 << 40);
    for _ in 0..16 {
        u32le(&mut b, 0);
        u64le(&mut b, 1 << 40);
    }
    refused("wide.gguf", &padded(b, 4096), &["\"wide\"", "cannot fit"]);
}

#[test]
fn nested_array_bomb_many_small_arrays() {
    // An outer array of 300 empty arrays is fine to read, but the claimed 2^20 inner
    // arrays do not fit: refused before the loop would run.
    let mut b = header(0, 1);
    string(&mut b, "many");
    u32le(&mut b, T_ARRAY);
    u32le(&mut b, T_ARRAY);
    u64le(&mut b, 1 << 20);
    for _ in 0..300 {
        u32le(&mut b, 0);
        u64le(&mut b, 0);
    }
    refused(
        "many.gguf",
        &b,
        &["\"many\"", "array of 1048576 elements", "cannot fit"],
    );
}

// --- Alignment.

fn with_alignment(value_type: u32, value: &[u8]) -> Vec<u8> {
    let mut b = header(0, 1);
    string(&mut b, "general.alignment");
    u32le(&mut b, value_type);
    b.extend_from_slice(value);
    padded(b, 128)
}

#[test]
fn alignment_zero() {
    refused(
        "align0.gguf",
        &with_alignment(T_U32, &0u32.to_le_bytes()),
        &["general.alignment 0 is not a non-zero power of two"],
    );
}

#[test]
fn alignment_not_a_power_of_two() {
    refused(
        "align24.gguf",
        &with_alignment(T_U32, &24u32.to_le_bytes()),
        &["general.alignment 24 is not a non-zero power of two"],
    );
}

#[test]
fn alignment_negative() {
    refused(
        "align_neg.gguf",
        &with_alignment(5, &(-32i32).to_le_bytes()),
        &["general.alignment -32"],
    );
}

#[test]
fn alignment_not_an_integer() {
    let mut v = Vec::new();
    string(&mut v, "32");
    refused(
        "align_str.gguf",
        &with_alignment(T_STRING, &v),
        &["general.alignment is a string, expected an integer"],
    );
}

// --- Tensor directory.

#[test]
fn tensor_offset_past_eof() {
    let mut b = header(1, 0);
    tensor_info(&mut b, "w", &[8], GgmlType::F32.id(), 1 << 30);
    refused(
        "eof.gguf",
        &padded(b, 256),
        &["tensor \"w\"", "runs past the end of the file"],
    );
}

#[test]
fn tensor_offset_overflows_u64() {
    let mut b = header(1, 0);
    tensor_info(&mut b, "w", &[8], GgmlType::F32.id(), u64::MAX - 31);
    refused(
        "offset_overflow.gguf",
        &padded(b, 256),
        &["runs past the end of the file"],
    );
}

#[test]
fn tensor_offset_misaligned() {
    let mut b = header(1, 0);
    tensor_info(&mut b, "w", &[8], GgmlType::F32.id(), 4);
    refused(
        "misaligned.gguf",
        &padded(b, 256),
        &["offset 4 is not a multiple of the alignment 32"],
    );
}

#[test]
fn dims_product_overflows_usize() {
    let mut b = header(1, 0);
    tensor_info(&mut b, "w", &[1 << 32, 1 << 32], GgmlType::F32.id(), 0);
    refused(
        "overflow.gguf",
        &padded(b, 256),
        &["element count overflows usize"],
    );
}

#[test]
fn dims_byte_size_overflows() {
    // 2^62 elements fit in usize, but 2^62 f32 values do not fit in u64 bytes.
    let mut b = header(1, 0);
    tensor_info(&mut b, "w", &[1 << 31, 1 << 31], GgmlType::F32.id(), 0);
    refused(
        "bytes_overflow.gguf",
        &padded(b, 256),
        &["byte size overflows"],
    );
}

#[test]
fn dims_huge_but_no_data() {
    // The byte size fits in u64 but not in the file.
    let mut b = header(1, 0);
    tensor_info(&mut b, "w", &[1 << 20, 1 << 20], GgmlType::F16.id(), 0);
    refused(
        "bigdims.gguf",
        &padded(b, 256),
        &["runs past the end of the file"],
    );
}

#[test]
fn more_than_four_dims() {
    let mut b = header(1, 0);
    tensor_info(&mut b, "w", &[1, 1, 1, 1, 1], GgmlType::F32.id(), 0);
    refused(
        "dims5.gguf",
        &padded(b, 256),
        &["has 5 dimensions (at most 4)"],
    );
}

#[test]
fn n_dims_u32_max() {
    let mut b = header(1, 0);
    string(&mut b, "w");
    u32le(&mut b, u32::MAX);
    refused(
        "dims_max.gguf",
        &padded(b, 256),
        &["has 4294967295 dimensions (at most 4)"],
    );
}

#[test]
fn unknown_tensor_type() {
    let mut b = header(1, 0);
    tensor_info(&mut b, "w", &[32], 1000, 0);
    refused(
        "type1000.gguf",
        &padded(b, 512),
        &["unknown ggml type 1000"],
    );
}

#[test]
fn unsupported_quant_type() {
    let mut b = header(1, 0);
    tensor_info(&mut b, "w", &[256], 16, 0);
    refused(
        "iq2.gguf",
        &padded(b, 512),
        &["IQ2_XXS (id 16)", "cannot read"],
    );
}

#[test]
fn row_not_a_multiple_of_the_block_size() {
    let mut b = header(1, 0);
    tensor_info(&mut b, "w", &[33], GgmlType::Q8_0.id(), 0);
    refused(
        "block.gguf",
        &padded(b, 512),
        &["row length 33 is not a multiple of the Q8_0 block size 32"],
    );
}

#[test]
fn duplicate_tensor_names() {
    let mut b = header(2, 0);
    tensor_info(&mut b, "w", &[8], GgmlType::F32.id(), 0);
    tensor_info(&mut b, "w", &[8], GgmlType::F32.id(), 32);
    refused(
        "dup_tensor.gguf",
        &padded(b, 512),
        &["duplicate tensor name \"w\""],
    );
}

#[test]
fn overlapping_tensors() {
    let mut b = header(2, 0);
    tensor_info(&mut b, "a", &[32], GgmlType::F32.id(), 0);
    tensor_info(&mut b, "b", &[8], GgmlType::F32.id(), 64);
    refused(
        "overlap.gguf",
        &padded(b, 512),
        &["tensors \"a\" and \"b\" overlap"],
    );
}

// --- Metadata values.

#[test]
fn unknown_kv_value_type() {
    let mut b = header(0, 1);
    string(&mut b, "general.name");
    u32le(&mut b, 13);
    refused(
        "kvtype.gguf",
        &padded(b, 128),
        &["\"general.name\" has unknown value type 13"],
    );
}

#[test]
fn unknown_array_element_type() {
    let mut b = header(0, 1);
    string(&mut b, "general.tags");
    u32le(&mut b, T_ARRAY);
    u32le(&mut b, 77);
    u64le(&mut b, 1);
    refused(
        "elemtype.gguf",
        &padded(b, 128),
        &["\"general.tags\": array of unknown value type 77"],
    );
}

#[test]
fn key_not_utf8() {
    let mut b = header(0, 1);
    u64le(&mut b, 2);
    b.extend_from_slice(&[0xC3, 0x28]);
    refused(
        "utf8.gguf",
        &padded(b, 128),
        &["metadata key #0", "not valid UTF-8"],
    );
}

#[test]
fn duplicate_metadata_key() {
    let mut b = header(0, 2);
    for _ in 0..2 {
        string(&mut b, "general.name");
        u32le(&mut b, T_U32);
        u32le(&mut b, 1);
    }
    refused(
        "dupkey.gguf",
        &padded(b, 128),
        &["duplicate metadata key \"general.name\""],
    );
}

// --- Not GGUF at all.

#[test]
fn wrong_magic() {
    let (mut b, _) = valid();
    b[..4].copy_from_slice(b"\x89PNG");
    refused("png.gguf", &b, &["not a GGUF file"]);
}

#[test]
fn version_one() {
    let (mut b, _) = valid();
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    refused("v1.gguf", &b, &["GGUF version 1 is not supported"]);
}

#[test]
fn big_endian() {
    let (mut b, _) = valid();
    b[4..8].copy_from_slice(&3u32.to_be_bytes());
    refused("be.gguf", &b, &["big-endian GGUF files are not supported"]);
}
