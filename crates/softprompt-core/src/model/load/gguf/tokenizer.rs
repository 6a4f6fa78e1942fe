//! A `tokenizers::Tokenizer` rebuilt from GGUF `tokenizer.ggml.*` metadata.
//!
//! Only byte-level BPE (`tokenizer.ggml.model = "gpt2"`: GPT-2, SmolLM2, Llama 3, Qwen2)
//! is supported. The pieces are chosen to match the models' Hugging Face `tokenizer.json`:
//!
//! | `tokenizer.ggml.pre` | pre-tokenizer |
//! |---|---|
//! | `smollm`, `starcoder`, `refact` | Sequence[Digits(individual), ByteLevel(prefix=false, regex=true)] |
//! | `qwen2` | Sequence[Split(Qwen2 regex, isolated), ByteLevel(regex=false)] |
//! | `llama-bpe`, `llama3` | Sequence[Split(Llama 3 regex, isolated), ByteLevel(regex=false)], BPE `ignore_merges` |
//! | `gpt-2`, `gpt2` | ByteLevel(prefix=false, regex=true) (the GPT-2 split) |
//!
//! Any other value, `default` or a missing key is refused ([`KNOWN_PRE`]): each llama.cpp
//! pre-tokenizer has its own split (e.g. `tekken`, `deepseek-r1-qwen`), and splitting its text
//! like GPT-2 would give other ids than the model was trained on, silently.
//!
//! Decoder: ByteLevel. Tokens of type 3 (control) become special added tokens and type 4
//! (user-defined) plain added tokens, so neither is ever split by BPE. No special token is
//! added on encode unless `tokenizer.ggml.add_bos_token` / `add_eos_token` say so.
//!
//! SentencePiece vocabularies (`tokenizer.ggml.model = "llama"`) are supported for Gemma
//! (recognised, as transformers does, by whitespace-run tokens written with real spaces):
//! see [`gemma_tokenizer`].

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, PostProcessorWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer,
};

use super::GgufFile;
use crate::{Error, Result};

/// Llama 3 (`tokenizer.ggml.pre = llama-bpe`) pre-tokenizer split, as in its tokenizer.json.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2 pre-tokenizer split (single digits), as in its tokenizer.json.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The `tokenizer.ggml.pre` values of byte-level BPE vocabularies this module rebuilds.
pub const KNOWN_PRE: [&str; 8] = [
    "smollm",
    "starcoder",
    "refact",
    "qwen2",
    "llama-bpe",
    "llama3",
    "gpt-2",
    "gpt2",
];

/// GGUF token types (llama.cpp `llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Build the tokenizer described by the file's `tokenizer.ggml.*` metadata.
pub fn tokenizer_from_gguf(gguf: &GgufFile) -> Result<Tokenizer> {
    let path = gguf.path();
    let tk_err = |e: tokenizers::Error| {
        Error::format(
            path,
            format!("building the tokenizer from GGUF metadata: {e}"),
        )
    };
    let model = gguf.get_str("tokenizer.ggml.model")?;
    match model {
        "gpt2" => {}
        "llama" => {
            let tokens = gguf.get_str_array("tokenizer.ggml.tokens")?;
            if tokens.iter().any(|t| is_space_run(t)) {
                return gemma_tokenizer(gguf);
            }
            return Err(Error::unsupported(
                path.display().to_string(),
                "SentencePiece tokenizers other than Gemma's (tokenizer.ggml.model = llama, e.g. Llama 2) are not supported yet",
            ));
        }
        other => {
            return Err(Error::unsupported(
                path.display().to_string(),
                format!(
                "tokenizer.ggml.model = {other:?} is not supported (only byte-level BPE \"gpt2\")"
            ),
            ))
        }
    }
    let pre = gguf.opt_str("tokenizer.ggml.pre")?.unwrap_or("");
    if !KNOWN_PRE.contains(&pre) {
        let what = if pre.is_empty() {
            "no tokenizer.ggml.pre (a GGUF converted before llama.cpp recorded it: convert it again)"
                .to_string()
        } else {
            format!("tokenizer.ggml.pre = {pre:?}")
        };
        return Err(Error::unsupported(
            path.display().to_string(),
            format!(
                "{what}; softprompt knows the byte-level BPE pre-tokenizers {}",
                KNOWN_PRE.join(", ")
            ),
        ));
    }
    let tokens = gguf.get_str_array("tokenizer.ggml.tokens")?;
    let merges = gguf.get_str_array("tokenizer.ggml.merges")?;
    if tokens.len() > u32::MAX as usize {
        return Err(Error::format(
            path,
            "tokenizer.ggml.tokens has more than 2^32 entries",
        ));
    }
    let token_types = match gguf.get("tokenizer.ggml.token_type") {
        None => None,
        Some(_) => {
            let tt = gguf.get_int_array("tokenizer.ggml.token_type")?;
            if tt.len() != tokens.len() {
                return Err(Error::format(
                    path,
                    format!(
                        "tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {}",
                        tt.len(),
                        tokens.len()
                    ),
                ));
            }
            Some(tt)
        }
    };

    // Vocab by index; should a string repeat, its first id wins (later ids have no string).
    let mut vocab = Vocab::with_capacity(tokens.len());
    for (id, tok) in tokens.iter().enumerate() {
        vocab.entry(tok.clone()).or_insert(id as u32);
    }
    // Merges are "left right"; byte-level tokens never contain a real space.
    let mut pairs = Vec::with_capacity(merges.len());
    for (i, m) in merges.iter().enumerate() {
        let (a, b) = m.split_once(' ').ok_or_else(|| {
            Error::format(
                path,
                format!("tokenizer.ggml.merges[{i}] = {m:?} is not \"left right\""),
            )
        })?;
        pairs.push((a.to_string(), b.to_string()));
    }
    let llama3 = matches!(pre, "llama-bpe" | "llama3");
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, pairs)
        .ignore_merges(llama3)
        .build()
        .map_err(tk_err)?;
    let mut tok = Tokenizer::new(bpe);

    let pre_tokenizer: PreTokenizerWrapper = match pre {
        "smollm" | "starcoder" | "refact" => Sequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ])
        .into(),
        "qwen2" => Sequence::new(vec![
            Split::new(
                SplitPattern::Regex(QWEN2_SPLIT.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(tk_err)?
            .into(),
            ByteLevel::new(false, false, false).into(),
        ])
        .into(),
        _ if llama3 => Sequence::new(vec![
            Split::new(
                SplitPattern::Regex(LLAMA3_SPLIT.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(tk_err)?
            .into(),
            ByteLevel::new(false, true, false).into(),
        ])
        .into(),
        _ => ByteLevel::new(false, true, true).into(),
    };
    tok.with_pre_tokenizer(Some(pre_tokenizer));
    tok.with_decoder(Some(ByteLevelDecoder::default()));

    // Special tokens added on encode, only when the file asks for them.
    let token_id = |key: &str| -> Result<Option<(String, u32)>> {
        match gguf.opt_usize(key)? {
            None => Ok(None),
            Some(id) => match tokens.get(id) {
                Some(t) => Ok(Some((t.clone(), id as u32))),
                None => Err(Error::format(
                    path,
                    format!(
                        "{key} = {id} is outside the {}-token vocabulary",
                        tokens.len()
                    ),
                )),
            },
        }
    };
    let bos = if gguf
        .opt_bool("tokenizer.ggml.add_bos_token")?
        .unwrap_or(false)
    {
        token_id("tokenizer.ggml.bos_token_id")?
    } else {
        None
    };
    let eos = if gguf
        .opt_bool("tokenizer.ggml.add_eos_token")?
        .unwrap_or(false)
    {
        token_id("tokenizer.ggml.eos_token_id")?
    } else {
        None
    };
    let post: PostProcessorWrapper = if bos.is_none() && eos.is_none() {
        // As in the HF tokenizer.json of byte-level models: offsets only, adds nothing.
        ByteLevel::new(true, false, true).into()
    } else {
        // Pieces are passed one by one (a token may not contain ':' in a template).
        let seq = |body: &str, type_id: u32| -> Vec<String> {
            let mut v = Vec::new();
            if let Some((t, _)) = &bos {
                v.push(format!("{t}:{type_id}"));
            }
            v.push(body.to_string());
            if let Some((t, _)) = &eos {
                v.push(format!("{t}:{type_id}"));
            }
            v
        };
        let single = seq("$A:0", 0);
        let pair: Vec<String> = seq("$A:0", 0).into_iter().chain(seq("$B:1", 1)).collect();
        let specials: Vec<(String, u32)> = bos.iter().chain(eos.iter()).cloned().collect();
        let tmpl_err =
            |e: String| Error::format(path, format!("building the tokenizer template: {e}"));
        TemplateProcessing::builder()
            .try_single(single)
            .map_err(tmpl_err)?
            .try_pair(pair)
            .map_err(tmpl_err)?
            .special_tokens(specials)
            .build()
            .map_err(|e| tmpl_err(e.to_string()))?
            .into()
    };
    tok.with_post_processor(Some(post));

    // Control and user-defined tokens are matched whole before BPE.
    if let Some(tt) = &token_types {
        let mut special = Vec::new();
        let mut user = Vec::new();
        for (t, &ty) in tokens.iter().zip(tt) {
            match ty {
                TOKEN_TYPE_CONTROL => special.push(AddedToken::from(t.clone(), true)),
                TOKEN_TYPE_USER_DEFINED => user.push(AddedToken::from(t.clone(), false)),
                _ => {}
            }
        }
        tok.add_special_tokens(&special);
        tok.add_tokens(&user);
    }
    Ok(tok)
}

/// A non-empty token made only of whitespace that contains a real space (Gemma writes its
/// whitespace-run tokens this way where SentencePiece would write `▁`).
fn is_space_run(t: &str) -> bool {
    t.contains(' ') && t.trim().is_empty()
}

/// Gemma's SentencePiece BPE vocabulary as a `tokenizers` BPE, built the way transformers
/// builds it from a GGUF (`GGUFGemmaConverter`), so ids match exactly:
///
/// - whitespace-run tokens are respelled with `▁` (`"    "` → `"▁▁▁▁"`);
/// - merges are derived from the vocabulary: every split of a token into two tokens is a merge;
///   the vocabulary is merge-ordered, so a merge's rank is the id of the merged token (lower
///   id first), and the splits of one token are ordered by the scores of (left, right),
///   highest first;
/// - normalizer `" "` → `"▁"` (no dummy prefix), no pre-tokenizer, byte fallback `<0xNN>`;
/// - decoder: `▁` → `" "`, byte fallback, fuse;
/// - control tokens (type 3: `<bos>`, `<start_of_turn>`, ...) are special added tokens matched
///   whole; `<bos>` is added on encode when `tokenizer.ggml.add_bos_token` says so.
pub fn gemma_tokenizer(gguf: &GgufFile) -> Result<Tokenizer> {
    use std::collections::HashMap;
    use tokenizers::decoders::byte_fallback::ByteFallback;
    use tokenizers::decoders::fuse::Fuse;
    use tokenizers::decoders::sequence::Sequence as DecoderSequence;
    use tokenizers::normalizers::replace::Replace;
    use tokenizers::DecoderWrapper;

    let path = gguf.path();
    let tk_err = |e: tokenizers::Error| {
        Error::format(
            path,
            format!("building the tokenizer from GGUF metadata: {e}"),
        )
    };
    let raw = gguf.get_str_array("tokenizer.ggml.tokens")?;
    if raw.len() > u32::MAX as usize {
        return Err(Error::format(
            path,
            "tokenizer.ggml.tokens has more than 2^32 entries",
        ));
    }
    let scores: Vec<f32> = match gguf.get_array("tokenizer.ggml.scores")? {
        super::GgufArray::F32(v) => v.clone(),
        super::GgufArray::F64(v) => v.iter().map(|&x| x as f32).collect(),
        other => {
            return Err(Error::format(
                path,
                format!(
                    "tokenizer.ggml.scores is an array of {}, expected floats",
                    other.elem_type_name()
                ),
            ))
        }
    };
    if scores.len() != raw.len() {
        return Err(Error::format(
            path,
            format!(
                "tokenizer.ggml.scores has {} entries but tokenizer.ggml.tokens has {}",
                scores.len(),
                raw.len()
            ),
        ));
    }
    let token_types = gguf.get_int_array("tokenizer.ggml.token_type")?;
    if token_types.len() != raw.len() {
        return Err(Error::format(
            path,
            format!(
                "tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {}",
                token_types.len(),
                raw.len()
            ),
        ));
    }
    let tokens: Vec<String> = raw
        .iter()
        .map(|t| {
            if is_space_run(t) {
                "\u{2581}".repeat(t.chars().count())
            } else {
                t.clone()
            }
        })
        .collect();
    // Should a string repeat, its last id wins (as a Python dict built in order).
    let mut id_of: HashMap<&str, u32> = HashMap::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        id_of.insert(t.as_str(), i as u32);
    }
    // (merged id, left, right): every split of a token into two vocabulary tokens.
    let mut merges: Vec<(u32, &str, &str)> = Vec::new();
    let mut local: Vec<(&str, &str)> = Vec::new();
    for (t, &id) in &id_of {
        local.clear();
        for (i, _) in t.char_indices().skip(1) {
            let (l, r) = t.split_at(i);
            if id_of.contains_key(l) && id_of.contains_key(r) {
                local.push((l, r));
            }
        }
        // Highest (score(left), score(right)) first; a stable sort keeps split order on ties.
        let score = |x: &str| scores[id_of[x] as usize];
        local.sort_by(|a, b| {
            (score(b.0), score(b.1))
                .partial_cmp(&(score(a.0), score(a.1)))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        merges.extend(local.iter().map(|&(l, r)| (id, l, r)));
    }
    // Lower merged id = higher priority; ids are unique per string, so ties are one token's
    // splits, already ordered.
    merges.sort_by_key(|m| m.0);
    let pairs: Vec<(String, String)> = merges
        .iter()
        .map(|&(_, l, r)| (l.to_string(), r.to_string()))
        .collect();
    let mut vocab = Vocab::with_capacity(tokens.len());
    for (t, &id) in &id_of {
        vocab.insert(t.to_string(), id);
    }
    let unk = match gguf.opt_usize("tokenizer.ggml.unknown_token_id")? {
        Some(id) => Some(tokens.get(id).cloned().ok_or_else(|| {
            Error::format(
                path,
                format!("tokenizer.ggml.unknown_token_id = {id} is outside the vocabulary"),
            )
        })?),
        None => None,
    };
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, pairs)
        .fuse_unk(true)
        .byte_fallback(true);
    if let Some(u) = unk {
        builder = builder.unk_token(u);
    }
    let bpe = builder.build().map_err(tk_err)?;
    let mut tok = Tokenizer::new(bpe);
    tok.with_normalizer(Some(Replace::new(" ", "\u{2581}").map_err(tk_err)?));
    tok.with_pre_tokenizer(None::<PreTokenizerWrapper>);
    let decoder: DecoderWrapper = DecoderSequence::new(vec![
        DecoderWrapper::Replace(Replace::new("\u{2581}", " ").map_err(tk_err)?),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ])
    .into();
    tok.with_decoder(Some(decoder));

    let token_id = |key: &str| -> Result<Option<(String, u32)>> {
        match gguf.opt_usize(key)? {
            None => Ok(None),
            Some(id) => match tokens.get(id) {
                Some(t) => Ok(Some((t.clone(), id as u32))),
                None => Err(Error::format(
                    path,
                    format!(
                        "{key} = {id} is outside the {}-token vocabulary",
                        tokens.len()
                    ),
                )),
            },
        }
    };
    let add = |k: &str| -> Result<bool> { Ok(gguf.opt_bool(k)?.unwrap_or(false)) };
    let bos = if add("tokenizer.ggml.add_bos_token")? {
        token_id("tokenizer.ggml.bos_token_id")?
    } else {
        None
    };
    let eos = if add("tokenizer.ggml.add_eos_token")? {
        token_id("tokenizer.ggml.eos_token_id")?
    } else {
        None
    };
    if bos.is_some() || eos.is_some() {
        let seq = |body: &str, type_id: u32| -> Vec<String> {
            let mut v = Vec::new();
            if let Some((t, _)) = &bos {
                v.push(format!("{t}:{type_id}"));
            }
            v.push(body.to_string());
            if let Some((t, _)) = &eos {
                v.push(format!("{t}:{type_id}"));
            }
            v
        };
        let single = seq("$A:0", 0);
        let pair: Vec<String> = seq("$A:0", 0).into_iter().chain(seq("$B:1", 1)).collect();
        let specials: Vec<(String, u32)> = bos.iter().chain(eos.iter()).cloned().collect();
        let tmpl_err =
            |e: String| Error::format(path, format!("building the tokenizer template: {e}"));
        let post: PostProcessorWrapper = TemplateProcessing::builder()
            .try_single(single)
            .map_err(tmpl_err)?
            .try_pair(pair)
            .map_err(tmpl_err)?
            .special_tokens(specials)
            .build()
            .map_err(|e| tmpl_err(e.to_string()))?
            .into();
        tok.with_post_processor(Some(post));
    }
    let special: Vec<AddedToken> = tokens
        .iter()
        .zip(&token_types)
        .filter(|(_, &ty)| ty == TOKEN_TYPE_CONTROL)
        .map(|(t, _)| AddedToken::from(t.clone(), true).normalized(false))
        .collect();
    tok.add_special_tokens(&special);
    Ok(tok)
}
