//! What goes into a model pass: a soft prompt as the model reads it ([`PromptRef`]), the
//! sequences of a packed batch (optional soft prompt, then token ids), training examples,
//! and loss targets.
//!
//! A prompt is one of two kinds ([`PromptKind`]): *input* prompts (prompt tuning) are `P`
//! rows prepended to the input embeddings; *prefix* (deep) prompts (prefix tuning, P-tuning
//! v2) are the keys and values of `P` virtual positions at every layer: a ready KV cache that
//! the sequence's text attends to, adding no rows to the packed input.

use crate::{Error, Result, Tensor};

/// What a prompt's values are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptKind {
    /// Input embeddings `[P, D]` (prompt tuning).
    #[default]
    Input,
    /// Per-layer keys and values `[P, L * 2 * Hkv*hd]` in PEFT's prefix-tuning layout: row `p`
    /// holds, for each layer `l`, the key (`2l`) then the value (`2l + 1`) of virtual position
    /// `p`, `Hkv*hd` values each, as the KV cache stores them (keys after RoPE and QK-norm).
    Prefix,
}

/// A soft prompt as the model reads it: `len` virtual tokens of `dim` values each, row-major
/// (`[P, D]` for an input prompt, `[P, L*2*Hkv*hd]` for a prefix). The shape is checked once,
/// when the view is made; everyone after reads [`PromptRef::len`] instead of recomputing it
/// from the data's length.
#[derive(Clone, Copy, Debug)]
pub struct PromptRef<'a> {
    data: &'a [f32], // [P, dim]
    len: usize,      // P
    dim: usize,      // D, or L*2*Hkv*hd for a prefix
    kind: PromptKind,
}

impl<'a> PromptRef<'a> {
    /// `data` as rows of `dim` values (`dim` is the model's hidden size). An empty `data` is a
    /// prompt of 0 virtual tokens.
    pub fn new(data: &'a [f32], dim: usize) -> Result<Self> {
        if dim == 0 || !data.len().is_multiple_of(dim) {
            return Err(Error::Mismatch(format!(
                "soft prompt of {} values is not a multiple of hidden size {dim}",
                data.len()
            )));
        }
        Ok(PromptRef {
            data,
            len: data.len() / dim,
            dim,
            kind: PromptKind::Input,
        })
    }

    /// `data` as a prompt of `kind` with rows of `dim` values (for a prefix, `dim` is
    /// `L * 2 * Hkv*hd`; the model checks it against its own shape).
    pub fn with_kind(data: &'a [f32], dim: usize, kind: PromptKind) -> Result<Self> {
        Ok(PromptRef {
            kind,
            ..Self::new(data, dim)?
        })
    }

    /// A `[P, D]` tensor as a prompt.
    pub fn from_tensor(t: &'a Tensor) -> Result<Self> {
        match t.shape.as_slice() {
            &[p, d] if d > 0 && p * d == t.data.len() => Ok(PromptRef {
                data: &t.data,
                len: p,
                dim: d,
                kind: PromptKind::Input,
            }),
            s => Err(Error::Input(format!(
                "a soft prompt is a [P, D] matrix, got shape {s:?} with {} values",
                t.data.len()
            ))),
        }
    }

    /// The values, `[P, D]` row-major.
    pub fn data(&self) -> &'a [f32] {
        self.data
    }

    /// Virtual tokens P.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Values per virtual token (D for an input prompt).
    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn kind(&self) -> PromptKind {
        self.kind
    }

    /// [`PromptRef::from_tensor`] as a prompt of `kind`.
    pub fn from_tensor_kind(t: &'a Tensor, kind: PromptKind) -> Result<Self> {
        Ok(PromptRef {
            kind,
            ..Self::from_tensor(t)?
        })
    }

    /// Rows the prompt adds to a sequence in the packed input: P for an input prompt, 0 for
    /// a prefix (its positions live in the KV cache).
    pub fn rows(&self) -> usize {
        match self.kind {
            PromptKind::Input => self.len,
            PromptKind::Prefix => 0,
        }
    }
}

/// Rows an optional prompt adds to its sequence in the packed input (0 without one, and 0
/// for a prefix prompt): the offset of the text's first row.
pub fn prompt_len(prompt: Option<PromptRef>) -> usize {
    prompt.map_or(0, |p| p.rows())
}

/// One sequence of a packed batch: optional soft prompt rows, then token ids.
pub struct SeqInput<'a> {
    pub prompt: Option<PromptRef<'a>>, // [P, D]
    pub ids: &'a [u32],
}

/// One training example: token ids and loss terms `(t, weight)`, each
/// `-weight * log p(ids[t] | prompt, ids[<t])`.
#[derive(Clone, Debug)]
pub struct Example {
    pub ids: Vec<u32>,
    pub targets: Vec<(usize, f32)>,
}

/// A loss term: `-weight * log p(token | everything before row)` read at packed row `row`.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub row: usize,
    pub token: u32,
    pub weight: f32,
}
