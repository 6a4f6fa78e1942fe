//! GGUF loading: crafted malformed files (each must fail cleanly, naming the file), a tiny
//! hand-built Llama GGUF (config, Q/K un-permutation, dequantization, tokenizer), and the
//! real SmolLM2-135M file (config, statistics, fixture token ids, load time).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::fixture_dir;
use half::f16;
use softprompt_core::compute::quant::GgmlType;
use softprompt_core::model::load::gguf::{load_gguf, tokenizer_from_gguf, GgufFile};
use softprompt_core::Error;

// ---------------------------------------------------------------------------------------
// A tiny GGUF writer.

/// GGUF metadata value type ids.
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;

fn put_u32(b: &mut Vec<u8>, x: u32) {
    b.extend_from_slice(&x.to_le_bytes());
}
fn put_u64(b: &mut Vec<u8>, x: u64) {
    b.extend_from_slice(&x.to_le_bytes());
}
fn put_str(b: &mut Vec<u8>, s: &str) {
    put_u64(b, s.len() as u64);
    b.extend_from_slice(s.as_bytes());
}

/// One tensor to write: name, ggml dims (innermost first), type id, raw data, and an
/// optional forced relative offset (for crafted overlap / EOF cases).
struct TensorSpec {
    name: String,
    dims: Vec<u64>,
    ty: u32,
    data: Vec<u8>,
    offset: Option<u64>,
}

#[derive(Default)]
struct Gguf {
    version: Option<u32>,
    /// (key, value type, encoded value)
    kvs: Vec<(String, u32, Vec<u8>)>,
    tensors: Vec<TensorSpec>,
}

impl Gguf {
    fn kv_raw(&mut self, key: &str, ty: u32, val: Vec<u8>) -> &mut Self {
        self.kvs.push((key.into(), ty, val));
        self
    }
    fn kv_u32(&mut self, key: &str, x: u32) -> &mut Self {
        self.kv_raw(key, T_U32, x.to_le_bytes().to_vec())
    }
    fn kv_f32(&mut self, key: &str, x: f32) -> &mut Self {
        self.kv_raw(key, T_F32, x.to_le_bytes().to_vec())
    }
    fn kv_bool(&mut self, key: &str, x: bool) -> &mut Self {
        self.kv_raw(key, T_BOOL, vec![x as u8])
    }
    fn kv_str(&mut self, key: &str, s: &str) -> &mut Self {
        let mut v = Vec::new();
        put_str(&mut v, s);
        self.kv_raw(key, T_STRING, v)
    }
    fn kv_str_array(&mut self, key: &str, items: &[&str]) -> &mut Self {
        let mut v = Vec::new();
        put_u32(&mut v, T_STRING);
        put_u64(&mut v, items.len() as u64);
        for s in items {
            put_str(&mut v, s);
        }
        self.kv_raw(key, T_ARRAY, v)
    }
    fn kv_i32_array(&mut self, key: &str, items: &[i32]) -> &mut Self {
        let mut v = Vec::new();
        put_u32(&mut v, T_I32);
        put_u64(&mut v, items.len() as u64);
        for x in items {
            v.extend_from_slice(&x.to_le_bytes());
        }
        self.kv_raw(key, T_ARRAY, v)
    }
    fn tensor(&mut self, name: &str, dims: &[u64], ty: GgmlType, data: Vec<u8>) -> &mut Self {
        self.tensor_raw(name, dims, ty.id(), data, None)
    }
    fn tensor_raw(
        &mut self,
        name: &str,
        dims: &[u64],
        ty: u32,
        data: Vec<u8>,
        offset: Option<u64>,
    ) -> &mut Self {
        self.tensors.push(TensorSpec {
            name: name.into(),
            dims: dims.to_vec(),
            ty,
            data,
            offset,
        });
        self
    }

    /// Serialize: header, KVs, tensor infos, padding to 32, data (each tensor 32-aligned).
    fn bytes(&self) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        put_u32(&mut b, self.version.unwrap_or(3));
        put_u64(&mut b, self.tensors.len() as u64);
        put_u64(&mut b, self.kvs.len() as u64);
        for (k, ty, v) in &self.kvs {
            put_str(&mut b, k);
            put_u32(&mut b, *ty);
            b.extend_from_slice(v);
        }
        let mut offsets = Vec::new();
        let mut next = 0u64;
        for t in &self.tensors {
            let off = t.offset.unwrap_or(next);
            offsets.push(off);
            next = (off + t.data.len() as u64).next_multiple_of(32);
        }
        for (t, off) in self.tensors.iter().zip(&offsets) {
            put_str(&mut b, &t.name);
            put_u32(&mut b, t.dims.len() as u32);
            for &d in &t.dims {
                put_u64(&mut b, d);
            }
            put_u32(&mut b, t.ty);
            put_u64(&mut b, *off);
        }
        let data_start = b.len().next_multiple_of(32);
        b.resize(data_start, 0);
        for (t, off) in self.tensors.iter().zip(&offsets) {
            if t.data.is_empty() {
                continue; // (crafted huge offsets carry no data)
            }
            let at = data_start + *off as usize;
            if b.len() < at + t.data.len() {
                b.resize(at + t.data.len(), 0);
            }
            b[at..at + t.data.len()].copy_from_slice(&t.data);
        }
        b
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
fn f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| f16::from_f32(x).to_bits().to_le_bytes())
        .collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, bytes).expect("write test gguf");
    p
}

/// Open must fail with an error that names the file and contains `needle`.
fn expect_open_err(bytes: &[u8], name: &str, needle: &str) -> Error {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = write(dir.path(), name, bytes);
    let e = GgufFile::open(&p).expect_err(&format!("{name}: expected an error"));
    let msg = e.to_string();
    assert!(
        msg.contains(&*p.to_string_lossy()),
        "{name}: message does not name the file: {msg}"
    );
    assert!(
        msg.contains(needle),
        "{name}: message {msg:?} lacks {needle:?}"
    );
    assert!(
        !msg.contains('\n'),
        "{name}: message is not one line: {msg:?}"
    );
    // load_gguf must fail the same way.
    let e2 = load_gguf(&p).err().expect("load_gguf error");
    assert_eq!(e2.to_string(), msg);
    e
}

/// Header only: magic, version, tensor count, kv count.
fn header(version: u32, n_tensors: u64, n_kv: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    put_u32(&mut b, version);
    put_u64(&mut b, n_tensors);
    put_u64(&mut b, n_kv);
    b
}

// ---------------------------------------------------------------------------------------
// A tiny valid Llama GGUF.

const HIDDEN: usize = 8;
const FFN: usize = 32;
const HEADS: usize = 2;
const KV_HEADS: usize = 1;
const HEAD_DIM: usize = 4;
const TOKENS: [&str; 8] = ["<|endoftext|>", "a", "b", "ab", "Ġ", "Ġa", "1", "2"];

/// Row r of q / k holds `r * 100 + c` in column c, so rows are recognisable after un-permuting.
fn row_coded(rows: usize, cols: usize) -> Vec<f32> {
    (0..rows)
        .flat_map(|r| (0..cols).map(move |c| (r * 100 + c) as f32))
        .collect()
}

/// ffn_down as Q8_0: 8 rows of 32 (one block each): d = 0.5, q[c] = c - 16 + r.
fn ffn_down_q8_0() -> (Vec<u8>, Vec<f32>) {
    let mut bytes = Vec::new();
    let mut expected = Vec::new();
    for r in 0..HIDDEN {
        bytes.extend_from_slice(&f16::from_f32(0.5).to_bits().to_le_bytes());
        for c in 0..FFN {
            let q = c as i32 - 16 + r as i32;
            bytes.push(q as i8 as u8);
            expected.push(q as f32 * 0.5);
        }
    }
    (bytes, expected)
}

fn tiny_llama(arch: &str) -> Gguf {
    let mut g = Gguf::default();
    let k = |s: &str| format!("{arch}.{s}");
    g.kv_str("general.architecture", arch)
        .kv_u32(&k("embedding_length"), HIDDEN as u32)
        .kv_u32(&k("block_count"), 1)
        .kv_u32(&k("feed_forward_length"), FFN as u32)
        .kv_u32(&k("attention.head_count"), HEADS as u32)
        .kv_u32(&k("attention.head_count_kv"), KV_HEADS as u32)
        .kv_f32(&k("attention.layer_norm_rms_epsilon"), 1e-5)
        .kv_f32(&k("rope.freq_base"), 50000.0)
        .kv_u32(&k("context_length"), 64)
        .kv_str("tokenizer.ggml.model", "gpt2")
        .kv_str("tokenizer.ggml.pre", "smollm")
        .kv_str_array("tokenizer.ggml.tokens", &TOKENS)
        .kv_i32_array("tokenizer.ggml.token_type", &[3, 1, 1, 1, 1, 1, 1, 1])
        .kv_str_array("tokenizer.ggml.merges", &["a b", "Ġ a"])
        .kv_u32("tokenizer.ggml.bos_token_id", 0)
        .kv_u32("tokenizer.ggml.eos_token_id", 0)
        .kv_bool("tokenizer.ggml.add_bos_token", false);
    let vocab = TOKENS.len();
    let (down, _) = ffn_down_q8_0();
    let ramp = |n: usize| (0..n).map(|i| i as f32 * 0.25 - 1.0).collect::<Vec<f32>>();
    let h = HIDDEN as u64;
    g.tensor(
        "token_embd.weight",
        &[h, vocab as u64],
        GgmlType::F32,
        f32_bytes(&row_coded(vocab, HIDDEN)),
    )
    .tensor(
        "output_norm.weight",
        &[h],
        GgmlType::F32,
        f32_bytes(&[1.0; HIDDEN]),
    )
    .tensor(
        "blk.0.attn_norm.weight",
        &[h],
        GgmlType::F16,
        f16_bytes(&[0.5; HIDDEN]),
    )
    .tensor(
        "blk.0.ffn_norm.weight",
        &[h],
        GgmlType::F16,
        f16_bytes(&[2.0; HIDDEN]),
    )
    .tensor(
        "blk.0.attn_q.weight",
        &[h, (HEADS * HEAD_DIM) as u64],
        GgmlType::F32,
        f32_bytes(&row_coded(HEADS * HEAD_DIM, HIDDEN)),
    )
    .tensor(
        "blk.0.attn_k.weight",
        &[h, (KV_HEADS * HEAD_DIM) as u64],
        GgmlType::F32,
        f32_bytes(&row_coded(KV_HEADS * HEAD_DIM, HIDDEN)),
    )
    .tensor(
        "blk.0.attn_v.weight",
        &[h, (KV_HEADS * HEAD_DIM) as u64],
        GgmlType::F16,
        f16_bytes(&ramp(KV_HEADS * HEAD_DIM * HIDDEN)),
    )
    .tensor(
        "blk.0.attn_output.weight",
        &[(HEADS * HEAD_DIM) as u64, h],
        GgmlType::F16,
        f16_bytes(&ramp(HIDDEN * HEADS * HEAD_DIM)),
    )
    .tensor(
        "blk.0.ffn_gate.weight",
        &[h, FFN as u64],
        GgmlType::F16,
        f16_bytes(&ramp(FFN * HIDDEN)),
    )
    .tensor(
        "blk.0.ffn_up.weight",
        &[h, FFN as u64],
        GgmlType::F16,
        f16_bytes(&ramp(FFN * HIDDEN)),
    )
    .tensor(
        "blk.0.ffn_down.weight",
        &[FFN as u64, h],
        GgmlType::Q8_0,
        down,
    );
    g
}

// ---------------------------------------------------------------------------------------
// Crafted malformed files.

#[test]
fn truncated_header() {
    expect_open_err(b"GGUF\x03\x00", "short.gguf", "truncated GGUF header");
    expect_open_err(b"", "empty.gguf", "truncated GGUF header");
    // Valid header, cut inside the first metadata key.
    let mut b = header(3, 0, 1);
    put_u64(&mut b, 20);
    b.extend_from_slice(b"general.arch");
    expect_open_err(&b, "cut_key.gguf", "claims 20 bytes but only 12 remain");
    // Cut inside a u32 value.
    let mut b = header(3, 0, 1);
    put_str(&mut b, "llama.block_count");
    put_u32(&mut b, T_U32);
    b.extend_from_slice(&[30, 0]);
    expect_open_err(
        &b,
        "cut_value.gguf",
        "truncated GGUF: llama.block_count needs 4 bytes",
    );
}

#[test]
fn bad_magic() {
    let mut b = tiny_llama("llama").bytes();
    b[..4].copy_from_slice(b"GGML");
    expect_open_err(&b, "magic.gguf", "not a GGUF file");
}

#[test]
fn unsupported_versions() {
    let mut b = header(4, 0, 0);
    b.resize(64, 0);
    expect_open_err(&b, "v4.gguf", "unsupported GGUF version 4");
    let mut b = header(1, 0, 0);
    b.resize(64, 0);
    expect_open_err(&b, "v1.gguf", "version 1 is not supported");
    let mut b = header(3u32.swap_bytes(), 0, 0);
    b.resize(64, 0);
    expect_open_err(&b, "be.gguf", "big-endian");
    // Version 2 is accepted.
    let mut g = tiny_llama("llama");
    g.version = Some(2);
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "v2.gguf", &g.bytes());
    assert_eq!(GgufFile::open(&p).expect("v2 opens").version(), 2);
}

#[test]
fn huge_counts_are_refused_before_allocating() {
    let mut b = header(3, 1 << 60, 0);
    b.resize(4096, 0);
    expect_open_err(
        &b,
        "tensors.gguf",
        "tensor count 1152921504606846976 cannot fit",
    );
    let mut b = header(3, 0, 1 << 60);
    b.resize(4096, 0);
    expect_open_err(
        &b,
        "kvs.gguf",
        "metadata count 1152921504606846976 cannot fit",
    );
    // A metadata key whose length is 2^62.
    let mut b = header(3, 0, 1);
    put_u64(&mut b, 1 << 62);
    b.resize(4096, 0);
    expect_open_err(&b, "keylen.gguf", "claims 4611686018427387904 bytes");
    // A string value of length 2^62.
    let mut b = header(3, 0, 1);
    put_str(&mut b, "general.name");
    put_u32(&mut b, T_STRING);
    put_u64(&mut b, 1 << 62);
    b.resize(4096, 0);
    expect_open_err(&b, "strlen.gguf", "claims 4611686018427387904 bytes");
    // An array of 2^60 strings.
    let mut b = header(3, 0, 1);
    put_str(&mut b, "tokenizer.ggml.tokens");
    put_u32(&mut b, T_ARRAY);
    put_u32(&mut b, T_STRING);
    put_u64(&mut b, 1 << 60);
    b.resize(4096, 0);
    expect_open_err(&b, "array.gguf", "cannot fit");
    // Arrays nested 100 deep.
    let mut b = header(3, 0, 1);
    put_str(&mut b, "deep");
    put_u32(&mut b, T_ARRAY);
    for _ in 0..100 {
        put_u32(&mut b, T_ARRAY);
        put_u64(&mut b, 1);
    }
    b.resize(8192, 0);
    expect_open_err(&b, "deep.gguf", "nested deeper");
}

#[test]
fn bad_alignment() {
    let mut g = tiny_llama("llama");
    g.kv_u32("general.alignment", 0);
    expect_open_err(
        &g.bytes(),
        "align0.gguf",
        "general.alignment 0 is not a non-zero power of two",
    );
    let mut g = tiny_llama("llama");
    g.kv_u32("general.alignment", 48);
    expect_open_err(&g.bytes(), "align48.gguf", "general.alignment 48");
}

#[test]
fn tensor_past_eof() {
    let mut g = Gguf::default();
    g.kv_str("general.architecture", "llama");
    g.tensor_raw(
        "w",
        &[8],
        GgmlType::F32.id(),
        f32_bytes(&[0.0; 8]),
        Some(1 << 20),
    );
    let mut b = g.bytes();
    b.truncate(b.len() - (1 << 20)); // data written at the far offset is dropped again
    expect_open_err(&b, "eof.gguf", "runs past the end of the file");
    // A huge offset that would overflow when added to the data start.
    let mut g = Gguf::default();
    g.tensor_raw("w", &[8], GgmlType::F32.id(), vec![], Some(u64::MAX - 31));
    expect_open_err(
        &g.bytes(),
        "offset_overflow.gguf",
        "runs past the end of the file",
    );
}

#[test]
fn dims_overflow_and_too_many_dims() {
    let mut g = Gguf::default();
    g.tensor_raw(
        "w",
        &[1 << 32, 1 << 32, 1 << 32],
        GgmlType::F32.id(),
        vec![],
        Some(0),
    );
    expect_open_err(&g.bytes(), "overflow.gguf", "element count overflows usize");
    let mut g = Gguf::default();
    g.tensor_raw("w", &[1, 1, 1, 1, 1], GgmlType::F32.id(), vec![], Some(0));
    expect_open_err(&g.bytes(), "dims5.gguf", "has 5 dimensions (at most 4)");
    // Row length not a multiple of the block size.
    let mut g = Gguf::default();
    g.tensor_raw("w", &[33], GgmlType::Q8_0.id(), vec![0; 68], Some(0));
    expect_open_err(
        &g.bytes(),
        "block.gguf",
        "not a multiple of the Q8_0 block size 32",
    );
}

#[test]
fn unknown_and_unsupported_types() {
    let mut g = Gguf::default();
    g.tensor_raw("w", &[32], 999, vec![0; 64], Some(0));
    expect_open_err(&g.bytes(), "type999.gguf", "unknown ggml type 999");
    let mut g = Gguf::default();
    g.tensor_raw("w", &[256], 16, vec![0; 66], Some(0));
    expect_open_err(&g.bytes(), "iq2.gguf", "IQ2_XXS (id 16)");
    let mut g = Gguf::default();
    g.kv_raw("k", 13, vec![0; 8]);
    expect_open_err(&g.bytes(), "kvtype.gguf", "unknown value type 13");
}

#[test]
fn duplicate_and_overlapping_tensors() {
    let mut g = Gguf::default();
    g.tensor("w", &[8], GgmlType::F32, f32_bytes(&[0.0; 8]));
    g.tensor("w", &[8], GgmlType::F32, f32_bytes(&[0.0; 8]));
    expect_open_err(&g.bytes(), "dup.gguf", "duplicate tensor name \"w\"");
    let mut g = Gguf::default();
    g.tensor_raw(
        "a",
        &[32],
        GgmlType::F32.id(),
        f32_bytes(&[0.0; 32]),
        Some(0),
    ); // bytes 0..128
    g.tensor_raw(
        "b",
        &[8],
        GgmlType::F32.id(),
        f32_bytes(&[0.0; 8]),
        Some(64),
    );
    expect_open_err(&g.bytes(), "overlap.gguf", "overlap");
    let mut g = tiny_llama("llama");
    g.kv_u32("general.architecture", 1);
    expect_open_err(
        &g.bytes(),
        "dupkey.gguf",
        "duplicate metadata key \"general.architecture\"",
    );
    let mut g = Gguf::default();
    g.tensor_raw("a", &[8], GgmlType::F32.id(), f32_bytes(&[0.0; 8]), Some(8));
    expect_open_err(
        &g.bytes(),
        "misaligned.gguf",
        "not a multiple of the alignment 32",
    );
}

/// Every truncation of a valid file fails cleanly, and single-byte corruptions of its
/// header and directory never panic (they may load or fail).
#[test]
fn truncations_and_corruptions_never_panic() {
    let bytes = tiny_llama("llama").bytes();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.gguf");
    let mut data_start = 0;
    for cut in 0..bytes.len() {
        fs::write(&p, &bytes[..cut]).unwrap();
        match GgufFile::open(&p) {
            Ok(g) => {
                // Only possible once the directory is complete and no tensor data is cut.
                assert!(
                    cut >= g.data_offset() as usize || g.tensors().is_empty(),
                    "cut {cut}"
                );
                if data_start == 0 {
                    data_start = cut;
                }
            }
            Err(e) => assert!(e.to_string().contains("t.gguf"), "{e}"),
        }
    }
    assert!(load_gguf(&{
        fs::write(&p, &bytes[..bytes.len() - 1]).unwrap();
        p.clone()
    })
    .is_err());
    // Deterministic corruptions: xor each header/directory byte with a few patterns.
    let header_len = data_start.min(bytes.len());
    for i in (0..header_len).step_by(3) {
        for x in [0x01u8, 0x80, 0xFF] {
            let mut b = bytes.clone();
            b[i] ^= x;
            fs::write(&p, &b).unwrap();
            if let Err(e) = load_gguf(&p) {
                let msg = e.to_string();
                assert!(!msg.contains('\n'), "multi-line error at byte {i}: {msg}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The tiny valid model.

#[test]
fn tiny_llama_loads_with_hf_names_and_unpermuted_qk() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "tiny.gguf", &tiny_llama("llama").bytes());
    let g = GgufFile::open(&p).expect("open");
    assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(g.get_u64("llama.block_count").unwrap(), 1);
    assert_eq!(g.get_f32("llama.rope.freq_base").unwrap(), 50000.0);
    assert_eq!(g.get_str_array("tokenizer.ggml.tokens").unwrap().len(), 8);
    let e = g.get_str("llama.nope").unwrap_err().to_string();
    assert!(
        e.contains("missing metadata key llama.nope") && e.contains("tiny.gguf"),
        "{e}"
    );
    let e = g.get_str("llama.block_count").unwrap_err().to_string();
    assert!(e.contains("is a u32, expected a string"), "{e}");
    let q_raw = g.tensor_f32("blk.0.attn_q.weight").unwrap();
    assert_eq!(q_raw.shape, vec![HEADS * HEAD_DIM, HIDDEN]);
    assert_eq!(q_raw.data, row_coded(HEADS * HEAD_DIM, HIDDEN));

    let lw = load_gguf(&p).expect("load tiny");
    let c = &lw.config;
    assert_eq!(c.model_type, "llama");
    assert_eq!(c.architectures, Some(vec!["LlamaForCausalLM".to_string()]));
    assert_eq!(
        (
            c.hidden_size,
            c.intermediate_size,
            c.num_hidden_layers,
            c.num_attention_heads
        ),
        (HIDDEN, FFN, 1, HEADS)
    );
    assert_eq!(c.num_key_value_heads, Some(KV_HEADS));
    assert_eq!(c.head_dim(), HEAD_DIM);
    assert_eq!(c.vocab_size, TOKENS.len());
    assert_eq!(c.rms_norm_eps, 1e-5);
    assert_eq!(c.rope_theta, 50000.0);
    assert_eq!(c.max_position_embeddings, 64);
    assert!(c.tie_word_embeddings);
    assert!(!c.attention_bias);
    assert_eq!(c.rope_scaling, None);
    assert_eq!((c.bos_token_id, c.eos_ids()), (Some(0), vec![0]));
    assert_eq!(lw.stored_dtype, "GGUF F16+Q8_0+F32, dequantized to f32");

    let mut names: Vec<&str> = lw.weights.keys().map(|s| s.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            "model.embed_tokens.weight",
            "model.layers.0.input_layernorm.weight",
            "model.layers.0.mlp.down_proj.weight",
            "model.layers.0.mlp.gate_proj.weight",
            "model.layers.0.mlp.up_proj.weight",
            "model.layers.0.post_attention_layernorm.weight",
            "model.layers.0.self_attn.k_proj.weight",
            "model.layers.0.self_attn.o_proj.weight",
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.0.self_attn.v_proj.weight",
            "model.norm.weight",
        ]
    );
    let w = |n: &str| &lw.weights[n];
    // Un-permuted: within each head of 4 rows, HF order is GGUF rows 0, 2, 1, 3.
    let q = w("model.layers.0.self_attn.q_proj.weight");
    assert_eq!(q.shape, vec![8, 8]);
    let q_rows: Vec<f32> = (0..8).map(|r| q.row(r)[0] / 100.0).collect();
    assert_eq!(q_rows, vec![0., 2., 1., 3., 4., 6., 5., 7.]);
    assert_eq!(q.row(1), &row_coded(8, 8)[2 * 8..3 * 8]); // whole rows moved
    let k = w("model.layers.0.self_attn.k_proj.weight");
    assert_eq!(k.shape, vec![4, 8]);
    let k_rows: Vec<f32> = (0..4).map(|r| k.row(r)[0] / 100.0).collect();
    assert_eq!(k_rows, vec![0., 2., 1., 3.]);
    // V is not permuted.
    let v = w("model.layers.0.self_attn.v_proj.weight");
    assert_eq!(v.shape, vec![4, 8]);
    assert_eq!(v.data[..3], [-1.0, -0.75, -0.5]);
    // Dequantized Q8_0, [out = hidden, in = ffn].
    let down = w("model.layers.0.mlp.down_proj.weight");
    assert_eq!(down.shape, vec![HIDDEN, FFN]);
    assert_eq!(down.data, ffn_down_q8_0().1);
    assert_eq!(
        w("model.layers.0.mlp.gate_proj.weight").shape,
        vec![FFN, HIDDEN]
    );
    assert_eq!(
        w("model.layers.0.self_attn.o_proj.weight").shape,
        vec![HIDDEN, HEADS * HEAD_DIM]
    );
    assert_eq!(
        w("model.layers.0.input_layernorm.weight").data,
        vec![0.5; HIDDEN]
    );
    assert_eq!(
        w("model.layers.0.post_attention_layernorm.weight").data,
        vec![2.0; HIDDEN]
    );
    let emb = w("model.embed_tokens.weight");
    assert_eq!(emb.shape, vec![TOKENS.len(), HIDDEN]);
    assert_eq!(emb.row(3)[5], 305.0);

    // Tokenizer: merges, byte-level space, special token, single digits.
    let t = &lw.tokenizer;
    let ids = |s: &str| t.encode(s, false).unwrap().get_ids().to_vec();
    assert_eq!(ids("ab"), vec![3]);
    assert_eq!(ids("ab a"), vec![3, 5]);
    assert_eq!(ids("a<|endoftext|>b"), vec![1, 0, 2]);
    assert_eq!(ids("12"), vec![6, 7]);
    assert_eq!(t.decode(&[3, 5], false).unwrap(), "ab a");
    assert_eq!(t.encode("ab", true).unwrap().get_ids(), &[3]); // no BOS added
}

#[test]
fn tiny_variants() {
    let dir = tempfile::tempdir().unwrap();
    // An untied head, add_bos_token, linear RoPE scaling, qwen2 (no permutation, biases).
    let mut g = tiny_llama("qwen2");
    g.kvs
        .retain(|(k, _, _)| k != "tokenizer.ggml.add_bos_token");
    g.kv_bool("tokenizer.ggml.add_bos_token", true);
    g.kv_str("qwen2.rope.scaling.type", "linear")
        .kv_f32("qwen2.rope.scaling.factor", 4.0);
    g.tensor(
        "output.weight",
        &[HIDDEN as u64, TOKENS.len() as u64],
        GgmlType::F32,
        f32_bytes(&vec![0.5; HIDDEN * TOKENS.len()]),
    );
    for (n, rows) in [
        ("attn_q", HEADS * HEAD_DIM),
        ("attn_k", KV_HEADS * HEAD_DIM),
        ("attn_v", KV_HEADS * HEAD_DIM),
    ] {
        let vals: Vec<f32> = (0..rows).map(|r| r as f32).collect();
        g.tensor(
            &format!("blk.0.{n}.bias"),
            &[rows as u64],
            GgmlType::F32,
            f32_bytes(&vals),
        );
    }
    let p = write(dir.path(), "qwen.gguf", &g.bytes());
    let lw = load_gguf(&p).expect("qwen2 tiny");
    let c = &lw.config;
    assert_eq!(c.model_type, "qwen2");
    assert_eq!(c.architectures, Some(vec!["Qwen2ForCausalLM".to_string()]));
    assert!(!c.tie_word_embeddings && c.attention_bias && c.qkv_bias());
    assert_eq!(c.rope_scaling.as_ref().unwrap()["type"], "linear");
    assert_eq!(c.rope_scaling.as_ref().unwrap()["factor"], 4.0);
    assert_eq!(
        lw.weights["lm_head.weight"].shape,
        vec![TOKENS.len(), HIDDEN]
    );
    // Qwen2 is not permuted: rows stay in order.
    let q = &lw.weights["model.layers.0.self_attn.q_proj.weight"];
    assert_eq!(q.data, row_coded(8, 8));
    assert_eq!(
        lw.weights["model.layers.0.self_attn.q_proj.bias"].data,
        (0..8).map(|r| r as f32).collect::<Vec<_>>()
    );
    assert_eq!(lw.tokenizer.encode("ab", true).unwrap().get_ids(), &[0, 3]); // BOS added
    assert_eq!(lw.tokenizer.encode("ab", false).unwrap().get_ids(), &[3]);

    // Llama with a bias: un-permuted like the weight (one head of 4 per block).
    let mut g = tiny_llama("llama");
    for (n, rows) in [
        ("attn_q", HEADS * HEAD_DIM),
        ("attn_k", KV_HEADS * HEAD_DIM),
        ("attn_v", KV_HEADS * HEAD_DIM),
    ] {
        let vals: Vec<f32> = (0..rows).map(|r| r as f32).collect();
        g.tensor(
            &format!("blk.0.{n}.bias"),
            &[rows as u64],
            GgmlType::F32,
            f32_bytes(&vals),
        );
    }
    let p = write(dir.path(), "bias.gguf", &g.bytes());
    let lw = load_gguf(&p).expect("llama with bias");
    assert!(lw.config.attention_bias);
    assert_eq!(
        lw.weights["model.layers.0.self_attn.q_proj.bias"].data,
        vec![0., 2., 1., 3., 4., 6., 5., 7.]
    );
    assert_eq!(
        lw.weights["model.layers.0.self_attn.k_proj.bias"].data,
        vec![0., 2., 1., 3.]
    );
    assert_eq!(
        lw.weights["model.layers.0.self_attn.v_proj.bias"].data,
        vec![0., 1., 2., 3.]
    );
}

#[test]
fn unsupported_architecture_and_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "phi.gguf", &tiny_llama("phi3").bytes());
    let e = load_gguf(&p).err().expect("phi3 refused");
    assert!(matches!(e, Error::Unsupported { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("phi.gguf") && msg.contains("phi3 is not supported yet"),
        "{msg}"
    );
    // A gemma3 file is accepted as an architecture but must carry Gemma's own tensors.
    let p = write(dir.path(), "gemma.gguf", &tiny_llama("gemma3").bytes());
    let e = load_gguf(&p).err().expect("llama-shaped gemma3 refused");
    assert!(
        e.to_string().contains("missing tensor") && e.to_string().contains("gemma.gguf"),
        "{e}"
    );

    let mut g = tiny_llama("llama");
    g.kvs.retain(|(k, _, _)| k != "tokenizer.ggml.model");
    g.kv_str("tokenizer.ggml.model", "llama");
    let p = write(dir.path(), "spm.gguf", &g.bytes());
    let e = tokenizer_from_gguf(&GgufFile::open(&p).unwrap()).expect_err("spm refused");
    assert!(matches!(e, Error::Unsupported { .. }), "{e:?}");
    assert!(
        e.to_string().contains("SentencePiece") && e.to_string().contains("spm.gguf"),
        "{e}"
    );

    // Missing metadata and a missing layer tensor are format errors naming the key/tensor.
    let mut g = tiny_llama("llama");
    g.kvs.retain(|(k, _, _)| k != "llama.block_count");
    let p = write(dir.path(), "nokey.gguf", &g.bytes());
    let e = load_gguf(&p).err().unwrap().to_string();
    assert!(
        e.contains("missing metadata key llama.block_count") && e.contains("nokey.gguf"),
        "{e}"
    );
    let mut g = tiny_llama("llama");
    g.tensors.retain(|t| t.name != "blk.0.ffn_up.weight");
    let p = write(dir.path(), "notensor.gguf", &g.bytes());
    let e = load_gguf(&p).err().unwrap().to_string();
    assert!(e.contains("missing tensor blk.0.ffn_up.weight"), "{e}");
    // A tensor for a block beyond block_count, and a wrongly shaped one.
    let mut g = tiny_llama("llama");
    g.tensor(
        "blk.1.attn_norm.weight",
        &[HIDDEN as u64],
        GgmlType::F32,
        f32_bytes(&[1.0; HIDDEN]),
    );
    let p = write(dir.path(), "extra.gguf", &g.bytes());
    let e = load_gguf(&p).err().unwrap().to_string();
    assert!(e.contains("outside the 1 blocks"), "{e}");
    let mut g = tiny_llama("llama");
    g.tensors.retain(|t| t.name != "output_norm.weight");
    g.tensor(
        "output_norm.weight",
        &[4],
        GgmlType::F32,
        f32_bytes(&[1.0; 4]),
    );
    let p = write(dir.path(), "shape.gguf", &g.bytes());
    let e = load_gguf(&p).err().unwrap().to_string();
    assert!(
        e.contains("output_norm.weight has shape [4], expected [8]"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------
// The real SmolLM2-135M-Instruct GGUF (Q4_1 + Q8_0 embeddings).

/// The cached default model, or `None` (test skipped) when it is not on this machine.
fn smollm_path() -> Option<PathBuf> {
    match softprompt_core::model::load::fetch::fetch_alias("smollm2-135m") {
        Ok(p) if p.is_file() => Some(p),
        _ => {
            eprintln!("SmolLM2 GGUF not in the cache: skipping");
            None
        }
    }
}

fn stats(v: &[f32]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

#[test]
fn smollm_dequantized_tensors_are_plausible() {
    let Some(p) = smollm_path() else { return };
    let g = GgufFile::open(&p).expect("open SmolLM2");
    assert_eq!(g.version(), 3);
    let info = g.tensor_info("token_embd.weight").unwrap();
    assert_eq!(info.ggml_type, GgmlType::Q8_0);
    let emb = g.tensor_f32("token_embd.weight").unwrap();
    assert_eq!(emb.shape, vec![49152, 576]);
    assert!(emb.data.iter().all(|x| x.is_finite()));
    let (mean, std) = stats(&emb.data);
    eprintln!("token_embd Q8_0: mean {mean:.5} std {std:.5}");
    assert!(
        mean.abs() < 0.05 && (0.01..1.0).contains(&std),
        "token_embd mean {mean} std {std}"
    );

    let info = g.tensor_info("blk.0.ffn_down.weight").unwrap();
    assert_eq!(info.ggml_type, GgmlType::Q4_1);
    let down = g.tensor_f32("blk.0.ffn_down.weight").unwrap();
    assert_eq!(down.shape, vec![576, 1536]); // ggml ne [1536, 576]
    assert!(down.data.iter().all(|x| x.is_finite()));
    let (mean, std) = stats(&down.data);
    eprintln!("blk.0.ffn_down Q4_1: mean {mean:.5} std {std:.5}");
    assert!(
        mean.abs() < 0.05 && (0.005..1.0).contains(&std),
        "ffn_down mean {mean} std {std}"
    );
    let norm = g.tensor_f32("blk.0.attn_norm.weight").unwrap();
    assert_eq!(norm.shape, vec![576]);
}

#[test]
fn smollm_loads_with_expected_config() {
    let Some(p) = smollm_path() else { return };
    let t0 = Instant::now();
    let lw = load_gguf(&p).expect("load SmolLM2");
    let dt = t0.elapsed();
    eprintln!("load_gguf(SmolLM2-135M Q4_1): {:.3} s", dt.as_secs_f64());
    let c = &lw.config;
    assert_eq!(c.model_type, "llama");
    assert_eq!(c.hidden_size, 576);
    assert_eq!(c.num_hidden_layers, 30);
    assert_eq!(c.num_attention_heads, 9);
    assert_eq!(c.num_key_value_heads, Some(3));
    assert_eq!(c.intermediate_size, 1536);
    assert_eq!(c.vocab_size, 49152);
    assert_eq!(c.head_dim(), 64);
    assert!(c.tie_word_embeddings);
    assert_eq!(c.rope_theta, 100000.0);
    assert_eq!(c.rms_norm_eps, 1e-5);
    assert_eq!(c.max_position_embeddings, 8192);
    assert_eq!(
        (c.bos_token_id, c.eos_ids(), c.pad_token_id),
        (Some(1), vec![2], Some(2))
    );
    assert_eq!(lw.stored_dtype, "GGUF Q4_1+Q8_0+F32, dequantized to f32");
    // 30 layers × 9 tensors + embeddings + final norm, no lm_head (tied).
    assert_eq!(lw.weights.len(), 30 * 9 + 2);
    assert!(!lw.weights.contains_key("lm_head.weight"));
    let emb = &lw.weights["model.embed_tokens.weight"];
    assert_eq!(emb.shape, vec![49152, 576]);
    assert!(emb.row(504).iter().all(|x| x.is_finite()));
    assert!(emb.row(504).iter().any(|&x| x != 0.0));

    // Q/K are the un-permuted GGUF rows: HF row h·64 + j·32 + i = GGUF row h·64 + 2i + j.
    let g = GgufFile::open(&p).unwrap();
    for (gguf_name, hf_name) in [
        (
            "blk.0.attn_q.weight",
            "model.layers.0.self_attn.q_proj.weight",
        ),
        (
            "blk.0.attn_k.weight",
            "model.layers.0.self_attn.k_proj.weight",
        ),
    ] {
        let raw = g.tensor_f32(gguf_name).unwrap();
        let hf = &lw.weights[hf_name];
        assert_eq!(raw.shape, hf.shape);
        for (h, j, i) in [(0, 0, 0), (0, 1, 0), (0, 0, 5), (1, 1, 31), (2, 0, 17)] {
            assert_eq!(
                hf.row(h * 64 + j * 32 + i),
                raw.row(h * 64 + 2 * i + j),
                "{hf_name} h{h} j{j} i{i}"
            );
        }
        assert_ne!(hf.data, raw.data);
    }
    assert!(dt.as_secs_f64() < 10.0, "loading took {dt:?}");
}

#[test]
fn smollm_tokenizer_matches_fixture_ids() {
    let Some(p) = smollm_path() else { return };
    let tokens_json = fixture_dir("smollm2-135m").join("tokens.json");
    let text = fs::read_to_string(&tokens_json)
        .unwrap_or_else(|e| panic!("{}: {e}", tokens_json.display()));
    let fx: serde_json::Value = serde_json::from_str(&text).unwrap();
    let t0 = Instant::now();
    let g = GgufFile::open(&p).unwrap();
    let tok = tokenizer_from_gguf(&g).expect("tokenizer");
    eprintln!("open + tokenizer: {:.3} s", t0.elapsed().as_secs_f64());
    assert_eq!(tok.get_vocab_size(true), 49152);
    let texts = fx["texts"].as_array().unwrap();
    assert_eq!(texts.len(), 3);
    for t in texts {
        let s = t["text"].as_str().unwrap();
        let want: Vec<u32> = t["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let want_special: Vec<u32> = t["ids_add_special_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let enc = tok.encode(s, false).unwrap();
        assert_eq!(enc.get_ids(), want.as_slice(), "{s:?}");
        assert_eq!(
            tok.encode(s, true).unwrap().get_ids(),
            want_special.as_slice(),
            "{s:?} with specials"
        );
        assert_eq!(tok.decode(&want, false).unwrap(), s);
    }
    // Digits are split one by one (SmolLM2's Digits pre-tokenizer).
    let enc = tok.encode("12345", false).unwrap();
    assert_eq!(enc.get_ids().len(), 5);
    let pieces: Vec<String> = enc
        .get_ids()
        .iter()
        .map(|&i| tok.id_to_token(i).unwrap())
        .collect();
    assert_eq!(pieces, vec!["1", "2", "3", "4", "5"]);
    // Control tokens are never split.
    assert_eq!(tok.encode("<|im_start|>", false).unwrap().get_ids(), &[1]);
    let ids = tok
        .encode("<|im_start|>user\nHi<|im_end|>", false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert_eq!(ids.first(), Some(&1));
    assert_eq!(ids.last(), Some(&2));
    assert_eq!(
        tok.decode(&ids, false).unwrap(),
        "<|im_start|>user\nHi<|im_end|>"
    );
}

/// Gemma 3 and Qwen3 GGUFs: their extra tensors map to HF names, Q/K rows stay as stored (no
/// permutation in llama.cpp's converters for them), Gemma's (1 + w) norms become HF's w, and
/// the config carries Gemma's local/global layout.
#[test]
fn tiny_gemma3_and_qwen3_load_with_hf_conventions() {
    let dir = tempfile::tempdir().unwrap();
    let h = HIDDEN as u64;
    let add = |g: &mut Gguf, gemma: bool| {
        g.tensor(
            "blk.0.attn_q_norm.weight",
            &[HEAD_DIM as u64],
            GgmlType::F32,
            f32_bytes(&[1.25; HEAD_DIM]),
        )
        .tensor(
            "blk.0.attn_k_norm.weight",
            &[HEAD_DIM as u64],
            GgmlType::F32,
            f32_bytes(&[0.75; HEAD_DIM]),
        );
        if gemma {
            g.tensor(
                "blk.0.post_attention_norm.weight",
                &[h],
                GgmlType::F32,
                f32_bytes(&[3.0; HIDDEN]),
            )
            .tensor(
                "blk.0.post_ffw_norm.weight",
                &[h],
                GgmlType::F32,
                f32_bytes(&[4.0; HIDDEN]),
            )
            .kv_u32("gemma3.attention.sliding_window", 16);
        }
    };
    let mut g = tiny_llama("gemma3");
    add(&mut g, true);
    let p = write(dir.path(), "gemma.gguf", &g.bytes());
    let lw = load_gguf(&p).expect("load tiny gemma3");
    let c = &lw.config;
    assert_eq!(c.model_type, "gemma3_text");
    assert_eq!(c.activation(), "gelu_pytorch_tanh");
    assert_eq!(c.sliding_window, Some(16));
    assert_eq!(c.layer_types, Some(vec!["sliding_attention".to_string()]));
    assert_eq!(c.rope_theta_local(), 10000.0);
    assert_eq!(c.rope_theta_global(), 50000.0);
    assert_eq!(c.query_pre_attn_scalar, Some(HEAD_DIM as f64));
    let w = |n: &str| lw.weights[n].data.clone();
    assert_eq!(
        w("model.layers.0.input_layernorm.weight"),
        vec![-0.5; HIDDEN]
    );
    assert_eq!(
        w("model.layers.0.pre_feedforward_layernorm.weight"),
        vec![1.0; HIDDEN]
    );
    assert_eq!(
        w("model.layers.0.post_attention_layernorm.weight"),
        vec![2.0; HIDDEN]
    );
    assert_eq!(
        w("model.layers.0.post_feedforward_layernorm.weight"),
        vec![3.0; HIDDEN]
    );
    assert_eq!(
        w("model.layers.0.self_attn.q_norm.weight"),
        vec![0.25; HEAD_DIM]
    );
    assert_eq!(
        w("model.layers.0.self_attn.k_norm.weight"),
        vec![-0.25; HEAD_DIM]
    );
    assert_eq!(w("model.norm.weight"), vec![0.0; HIDDEN]);
    assert_eq!(
        w("model.layers.0.self_attn.q_proj.weight"),
        row_coded(HEADS * HEAD_DIM, HIDDEN)
    );
    softprompt_core::model::FrozenModel::from_loaded(lw).expect("bind gemma3");

    let mut g = tiny_llama("qwen3");
    add(&mut g, false);
    let p = write(dir.path(), "qwen3.gguf", &g.bytes());
    let lw = load_gguf(&p).expect("load tiny qwen3");
    assert_eq!(lw.config.model_type, "qwen3");
    let w = |n: &str| lw.weights[n].data.clone();
    assert_eq!(
        w("model.layers.0.post_attention_layernorm.weight"),
        vec![2.0; HIDDEN]
    );
    assert_eq!(
        w("model.layers.0.self_attn.q_norm.weight"),
        vec![1.25; HEAD_DIM]
    );
    assert_eq!(
        w("model.layers.0.self_attn.k_proj.weight"),
        row_coded(KV_HEADS * HEAD_DIM, HIDDEN)
    );
    softprompt_core::model::FrozenModel::from_loaded(lw).expect("bind qwen3");
}

/// `{arch}.rope.scaling.*`: yarn becomes transformers' yarn, llama.cpp-only settings and
/// unknown types are refused by name; Gemma 3's `rope.freq_base_swa` and
/// `attention.sliding_window_pattern` are read; an unknown `tokenizer.ggml.pre` is refused.
#[test]
fn rope_scaling_metadata_and_pre_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let load = |g: &Gguf, name: &str| load_gguf(&write(dir.path(), name, &g.bytes()));
    let yarn = || {
        let mut g = tiny_llama("llama");
        g.kv_str("llama.rope.scaling.type", "yarn")
            .kv_f32("llama.rope.scaling.factor", 4.0)
            .kv_u32("llama.rope.scaling.original_context_length", 16);
        g
    };
    let c = load(&yarn(), "yarn.gguf").expect("yarn").config;
    let r = c.describe_rope();
    assert_eq!(r["rope_type"], "yarn");
    assert_eq!(r["factor"], 4.0);
    assert_eq!(r["original_max_position_embeddings"], 16);
    assert_eq!(r["rope_theta"], 50000.0);
    // transformers' default attention_factor: 0.1 ln(factor) + 1.
    assert!((r["attention_factor"].as_f64().unwrap() - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-12);

    let mut bad = yarn();
    bad.kv_f32("llama.rope.scaling.yarn_log_multiplier", 0.1);
    let e = load(&bad, "logmul.gguf")
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("llama.rope.scaling.yarn_log_multiplier = 0.1"),
        "{e}"
    );
    let mut bad = tiny_llama("llama");
    bad.kv_str("llama.rope.scaling.type", "longrope");
    let e = load(&bad, "longrope.gguf")
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("llama.rope.scaling.type = \"longrope\""), "{e}");

    // Gemma 3: a local base of its own, and a pattern that makes the one layer global.
    let mut g = tiny_llama("gemma3");
    g.kv_u32("gemma3.attention.sliding_window", 16)
        .kv_f32("gemma3.rope.freq_base_swa", 20000.0)
        .kv_u32("gemma3.attention.sliding_window_pattern", 1);
    let c = softprompt_core::model::load::gguf::config_from_gguf(
        &GgufFile::open(&write(dir.path(), "g.gguf", &g.bytes())).unwrap(),
    )
    .unwrap();
    assert_eq!(c.layer_types, Some(vec!["full_attention".to_string()]));
    assert_eq!(c.rope_theta_local(), 20000.0);

    for (pre, ok) in [("tekken", false), ("gpt-2", true), ("qwen2", true)] {
        let mut g = tiny_llama("llama");
        g.kvs.retain(|(k, _, _)| k != "tokenizer.ggml.pre");
        g.kv_str("tokenizer.ggml.pre", pre);
        let p = write(dir.path(), "pre.gguf", &g.bytes());
        let r = tokenizer_from_gguf(&GgufFile::open(&p).unwrap());
        match (r, ok) {
            (Ok(_), true) => {}
            (Err(e), false) => {
                let e = e.to_string();
                assert!(
                    e.contains("tokenizer.ggml.pre = \"tekken\"") && e.contains("llama-bpe"),
                    "{e}"
                );
            }
            (r, _) => panic!("pre {pre}: {:?}", r.err()),
        }
    }
    let mut g = tiny_llama("llama");
    g.kvs.retain(|(k, _, _)| k != "tokenizer.ggml.pre");
    let p = write(dir.path(), "nopre.gguf", &g.bytes());
    let e = tokenizer_from_gguf(&GgufFile::open(&p).unwrap()).expect_err("refused");
    assert!(e.to_string().contains("no tokenizer.ggml.pre"), "{e}");
}
