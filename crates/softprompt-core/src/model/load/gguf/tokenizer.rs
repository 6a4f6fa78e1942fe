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
//! | `gpt2`, `default`, missing, anything else | ByteLevel(prefix=false, regex=true) (the GPT-2 split) |
//!
//! Decoder: ByteLevel. Tokens of type 3 (control) become special added tokens and type 4
//! (user-defined) plain added tokens, so neither is ever split by BPE. No special token is
//! added on encode unless `tokenizer.ggml.add_bos_token` / `add_eos_token` say so.

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
            return Err(Error::unsupported(
                path.display().to_string(),
                "SentencePiece tokenizers (tokenizer.ggml.model = llama, e.g. Gemma, Llama 2) are not supported yet",
            ))
        }
        other => {
            return Err(Error::unsupported(
                path.display().to_string(),
                format!("tokenizer.ggml.model = {other:?} is not supported (only byte-level BPE \"gpt2\")"),
            ))
        }
    }
    let pre = gguf.opt_str("tokenizer.ggml.pre")?.unwrap_or("default");
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
