//! What goes into a model pass: a soft prompt as the model reads it ([`PromptRef`]), the
//! sequences of a packed batch (optional soft prompt rows, then token ids), training
//! examples, and loss targets.

use crate::{Error, Result, Tensor};

/// A soft prompt as the model reads it: `len` virtual tokens of `dim` values each, row-major
/// (`[P, D]`). The shape is checked once, when the view is made; everyone after reads
/// [`PromptRef::len`] instead of recomputing it from the data's length.
#[derive(Clone, Copy, Debug)]
pub struct PromptRef<'a> {
    data: &'a [f32], // [P, D]
    len: usize,      // P
    dim: usize,      // D
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
        })
    }

    /// A `[P, D]` tensor as a prompt.
    pub fn from_tensor(t: &'a Tensor) -> Result<Self> {
        match t.shape.as_slice() {
            &[p, d] if d > 0 && p * d == t.data.len() => Ok(PromptRef {
                data: &t.data,
                len: p,
                dim: d,
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

    /// Values per virtual token D.
    pub fn dim(&self) -> usize {
        self.dim
    }
}

/// Virtual tokens of an optional prompt (0 without one).
pub fn prompt_len(prompt: Option<PromptRef>) -> usize {
    prompt.map_or(0, |p| p.len())
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
