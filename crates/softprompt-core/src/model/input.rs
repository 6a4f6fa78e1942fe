//! What goes into a model pass: the sequences of a packed batch (optional soft prompt rows,
//! then token ids), training examples, and loss targets.

/// One sequence of a packed batch: optional soft prompt rows, then token ids.
pub struct SeqInput<'a> {
    pub prompt: Option<&'a [f32]>, // [P, D]
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
