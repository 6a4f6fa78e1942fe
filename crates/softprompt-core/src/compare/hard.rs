//! The hard-prompt baseline's few-shot prefix: `k` demonstrations from the training split.

use crate::data::{self, Items};

/// The `k` demonstrations (fixed seed) rendered with the template `spec` holds, each
/// `text + gold candidate`, joined and followed by a blank line.
pub(super) fn demo_prefix(train: &Items, k: usize, seed: u64) -> String {
    let Items::Class(v) = train else {
        return String::new();
    };
    let labelled: Vec<&data::ClassItem> = v.iter().filter(|i| i.label.is_some()).collect();
    if labelled.is_empty() || k == 0 {
        return String::new();
    }
    let mut idx: Vec<usize> = (0..labelled.len()).collect();
    data::SplitMix64::new(seed ^ 0x5eed_d3e0).shuffle(&mut idx);
    // Balanced over classes when possible: take the first example of each class in turn.
    let classes = labelled[0].candidates.len();
    let mut picked = Vec::new();
    let mut c = 0;
    let mut guard = 0;
    while picked.len() < k.min(labelled.len()) && guard < k * classes + labelled.len() {
        if let Some(&i) = idx
            .iter()
            .find(|&&i| labelled[i].label == Some(c % classes) && !picked.contains(&i))
        {
            picked.push(i);
        }
        c += 1;
        guard += 1;
    }
    let mut s = String::new();
    for i in picked {
        let it = labelled[i];
        s.push_str(&it.text);
        s.push_str(&it.candidates[it.label.unwrap_or(0)]);
        s.push_str("\n\n");
    }
    s
}

pub(super) fn with_prefix(items: &Items, prefix: &str) -> Items {
    match items {
        Items::Class(v) => Items::Class(
            v.iter()
                .map(|i| {
                    let mut i = i.clone();
                    i.text = format!("{prefix}{}", i.text);
                    i
                })
                .collect(),
        ),
        Items::Gen(v) => Items::Gen(
            v.iter()
                .map(|i| {
                    let mut i = i.clone();
                    i.input = format!("{prefix}{}", i.input);
                    i
                })
                .collect(),
        ),
    }
}
