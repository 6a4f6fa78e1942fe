//! Fingerprints of a base model and of its tokenizer: a soft prompt records both when it
//! is trained, and is refused on a model whose fingerprint differs (the prompt only works
//! with the exact weights it was trained on).

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::compute::weight::Weight;
use crate::model::LlamaConfig;
use crate::Tensor;

/// Bytes of raw embedding data per leaf hash in [`model_fingerprint`] (part of the scheme).
pub const FINGERPRINT_CHUNK_BYTES: usize = 4 << 20;

/// Fingerprint of a base model, to tell whether a prompt was trained on it.
///
/// Scheme `v1` (stable; changing it invalidates stored fingerprints):
/// 1. The token-embedding table `[vocab, hidden]` as little-endian f32 bytes is cut into
///    [`FINGERPRINT_CHUNK_BYTES`] chunks (the last may be shorter); each chunk's SHA-256
///    is a leaf (computed in parallel).
/// 2. The root is SHA-256 of: `"softprompt-model-fingerprint-v1\n"`, then the text
///    `model_type=..;hidden_size=..;num_hidden_layers=..;num_attention_heads=..;
///    num_key_value_heads=..;head_dim=..;intermediate_size=..;vocab_size=..;embed_shape=VxH\n`
///    (resolved head_dim and kv heads, so a GGUF and an HF config of one model agree), then
///    the byte length and the leaf count as u64 LE, then the leaves in order.
/// 3. Result: `"sha256:"` + the first 16 hex digits of the root.
pub fn model_fingerprint(config: &LlamaConfig, embed_tokens: &Tensor) -> String {
    fingerprint_of(
        config,
        &embed_tokens.shape,
        embed_tokens.data.len(),
        |a, b| std::borrow::Cow::Borrowed(&embed_tokens.data[a..b]),
    )
}

/// [`model_fingerprint`] of a table kept as f32 or in GGUF blocks (same result for both:
/// the blocks are hashed as the f32 values they hold).
pub fn model_fingerprint_weight(config: &LlamaConfig, embed: &Weight) -> String {
    match embed.as_f32() {
        Some(t) => model_fingerprint(config, t),
        None => fingerprint_of(
            config,
            &[embed.rows(), embed.cols()],
            embed.numel(),
            |a, b| std::borrow::Cow::Owned(embed.read_flat(a, b)),
        ),
    }
}

/// The fingerprint of a `shape` table of `len` values; `values(a, b)` gives values `a..b`.
fn fingerprint_of<'a>(
    config: &LlamaConfig,
    shape: &[usize],
    len: usize,
    values: impl Fn(usize, usize) -> std::borrow::Cow<'a, [f32]> + Sync,
) -> String {
    let shape = shape
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join("x");
    let desc = format!(
        "model_type={};hidden_size={};num_hidden_layers={};num_attention_heads={};num_key_value_heads={};\
         head_dim={};intermediate_size={};vocab_size={};embed_shape={}\n",
        config.model_type,
        config.hidden_size,
        config.num_hidden_layers,
        config.num_attention_heads,
        config.num_kv_heads(),
        config.head_dim(),
        config.intermediate_size,
        config.vocab_size,
        shape
    );
    const FLOATS_PER_CHUNK: usize = FINGERPRINT_CHUNK_BYTES / 4;
    let leaves: Vec<[u8; 32]> = (0..len.div_ceil(FLOATS_PER_CHUNK))
        .into_par_iter()
        .map(|c| {
            let chunk = values(c * FLOATS_PER_CHUNK, ((c + 1) * FLOATS_PER_CHUNK).min(len));
            let mut h = Sha256::new();
            // Convert through a small stack buffer: no allocation, endian-independent.
            let mut buf = [0u8; 4096];
            for block in chunk.chunks(1024) {
                for (dst, v) in buf.chunks_exact_mut(4).zip(block) {
                    dst.copy_from_slice(&v.to_le_bytes());
                }
                h.update(&buf[..block.len() * 4]);
            }
            h.finalize().into()
        })
        .collect();
    let mut root = Sha256::new();
    root.update(b"softprompt-model-fingerprint-v1\n");
    root.update(desc.as_bytes());
    root.update(((len * 4) as u64).to_le_bytes());
    root.update((leaves.len() as u64).to_le_bytes());
    for l in &leaves {
        root.update(l);
    }
    short_hex(&root.finalize())
}

/// Fingerprint of a tokenizer's vocabulary, added tokens included.
///
/// Scheme `v1`: SHA-256 of `"softprompt-tokenizer-fingerprint-v1\n"` then, for every
/// (token, id) of `get_vocab(true)` in id order (ties by token): id as u32 LE, a kind byte
/// (0 model vocab, 1 added token, 2 added special token), the token's UTF-8 length as u32
/// LE, and its bytes. Result: `"sha256:"` + the first 16 hex digits.
pub fn tokenizer_fingerprint(tok: &tokenizers::Tokenizer) -> String {
    let added = tok.get_added_tokens_decoder();
    let mut vocab: Vec<(u32, String)> = tok
        .get_vocab(true)
        .into_iter()
        .map(|(t, id)| (id, t))
        .collect();
    vocab.sort_unstable();
    let mut h = Sha256::new();
    h.update(b"softprompt-tokenizer-fingerprint-v1\n");
    for (id, token) in &vocab {
        let kind: u8 = match added.get(id) {
            Some(a) if a.content == *token => {
                if a.special {
                    2
                } else {
                    1
                }
            }
            _ => 0,
        };
        h.update(id.to_le_bytes());
        h.update([kind]);
        h.update((token.len() as u32).to_le_bytes());
        h.update(token.as_bytes());
    }
    short_hex(&h.finalize())
}

fn short_hex(digest: &[u8]) -> String {
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}
