//! The built-in `demo` task's data: synthetic movie-review sentences with sentiment labels, so
//! that training can be tried on a fresh clone with no download.
//!
//! Sentences are built from word lists (positive and negative adjectives, nouns, intensifiers)
//! with patterns that make the task learnable but not a bag-of-words lookup: negations ("the plot
//! is not clever" → negative), contrasts where the second clause decides ("the acting is stiff ,
//! but the script is sharp" → positive) and "anything but" / "not a single ... moment" forms. The
//! style follows SST-2 (lower case, tokenised punctuation).
//!
//! The generator is a fixed [`SplitMix64`] stream, so the data never changes: 1,000 training and
//! 200 validation sentences, all distinct, labels drawn by a fair coin.

use std::collections::HashSet;

use serde_json::{Map, Value};

use super::batch::SplitMix64;
use super::read::Record;

/// Which built-in demo split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoSplit {
    Train,
    Validation,
}

/// Number of training sentences of the demo task.
pub const DEMO_TRAIN_SIZE: usize = 1000;
/// Number of validation sentences of the demo task.
pub const DEMO_VALIDATION_SIZE: usize = 200;

const SEED: u64 = 0x50F7_9A0E_DE30_0001;

const POSITIVE: &[&str] = &[
    "good",
    "great",
    "wonderful",
    "charming",
    "moving",
    "brilliant",
    "delightful",
    "funny",
    "gripping",
    "beautiful",
    "clever",
    "heartfelt",
    "memorable",
    "superb",
    "engaging",
    "touching",
    "fresh",
    "sharp",
    "stunning",
    "witty",
    "thoughtful",
    "lively",
];
const NEGATIVE: &[&str] = &[
    "bad",
    "dull",
    "boring",
    "awful",
    "tedious",
    "clumsy",
    "bland",
    "predictable",
    "messy",
    "lifeless",
    "shallow",
    "forgettable",
    "tiresome",
    "terrible",
    "weak",
    "flat",
    "painful",
    "pointless",
    "stale",
    "stiff",
    "lazy",
    "confusing",
];
const NOUNS: &[&str] = &[
    "film",
    "movie",
    "story",
    "plot",
    "acting",
    "script",
    "cast",
    "ending",
    "dialogue",
    "soundtrack",
    "direction",
    "lead performance",
    "pacing",
    "main character",
    "camera work",
    "humor",
    "premise",
    "sequel",
    "final act",
    "editing",
];
const INTENSIFIERS: &[&str] = &[
    "very",
    "really",
    "quite",
    "truly",
    "remarkably",
    "incredibly",
    "rather",
    "thoroughly",
    "pretty",
    "utterly",
];
const VERBS: &[&str] = &["is", "was", "feels", "seems"];

/// The records of a demo split: fields `sentence` (string) and `label` (0 = negative,
/// 1 = positive); `line` is the 1-based position.
pub fn demo_records(split: DemoSplit) -> Vec<Record> {
    let all = generate(DEMO_TRAIN_SIZE + DEMO_VALIDATION_SIZE);
    let range = match split {
        DemoSplit::Train => 0..DEMO_TRAIN_SIZE,
        DemoSplit::Validation => DEMO_TRAIN_SIZE..DEMO_TRAIN_SIZE + DEMO_VALIDATION_SIZE,
    };
    all[range]
        .iter()
        .enumerate()
        .map(|(i, (sentence, label))| {
            let mut fields = Map::new();
            fields.insert("sentence".into(), Value::String(sentence.clone()));
            fields.insert("label".into(), Value::from(*label));
            Record {
                line: i + 1,
                fields,
            }
        })
        .collect()
}

/// `n` distinct (sentence, label) pairs from the fixed stream.
fn generate(n: usize) -> Vec<(String, u8)> {
    let mut rng = SplitMix64::new(SEED);
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let label = (rng.next_u64() >> 63) as u8;
        let s = sentence(&mut rng, label == 1);
        if seen.insert(s.clone()) {
            out.push((s, label));
        }
    }
    out
}

fn pick<'a>(rng: &mut SplitMix64, words: &[&'a str]) -> &'a str {
    words[rng.below(words.len())]
}

fn adj(rng: &mut SplitMix64, positive: bool) -> &'static str {
    pick(rng, if positive { POSITIVE } else { NEGATIVE })
}

/// An optional intensifier followed by a space (half the time nothing).
fn intens(rng: &mut SplitMix64) -> String {
    if rng.below(2) == 0 {
        String::new()
    } else {
        format!("{} ", pick(rng, INTENSIFIERS))
    }
}

/// "a" or "an" before `word`.
fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// One sentence whose sentiment is `pos`.
fn sentence(rng: &mut SplitMix64, pos: bool) -> String {
    let n1 = pick(rng, NOUNS);
    let mut n2 = pick(rng, NOUNS);
    if n2 == n1 {
        n2 = NOUNS[(NOUNS.iter().position(|w| *w == n1).unwrap_or(0) + 1) % NOUNS.len()];
    }
    let verb = pick(rng, VERBS);
    let s = match rng.below(10) {
        // Plain statements.
        0 | 1 => format!("the {n1} {verb} {}{}", intens(rng), adj(rng, pos)),
        2 => {
            let i = intens(rng);
            let a = adj(rng, pos);
            let first = if i.is_empty() { a } else { i.as_str() };
            format!("{} {i}{a} {n1}", article(first))
        }
        3 => {
            let a = adj(rng, pos);
            let mut b = adj(rng, pos);
            if b == a {
                b = adj(rng, pos);
            }
            format!("{a} and {b} {n1}")
        }
        // Negations: the adjective has the opposite polarity.
        4 | 5 => {
            let verb = pick(rng, &["is", "was"]);
            let neg = pick(rng, &["not", "n't", "never", "hardly", "far from"]);
            format!("the {n1} {verb} {neg} {}", adj(rng, !pos))
        }
        6 => format!("this {n1} is anything but {}", adj(rng, !pos)),
        7 => format!("not a single {} moment in the {n1}", adj(rng, !pos)),
        // Contrasts: the second clause decides.
        8 => format!(
            "the {n1} {verb} {} , but the {n2} is {}{}",
            adj(rng, !pos),
            intens(rng),
            adj(rng, pos)
        ),
        _ => format!(
            "although the {n1} is {} , the {n2} is {}{}",
            adj(rng, !pos),
            intens(rng),
            adj(rng, pos)
        ),
    };
    if rng.below(3) == 0 {
        format!("{s} .")
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_disjoint() {
        let t = demo_records(DemoSplit::Train);
        let v = demo_records(DemoSplit::Validation);
        assert_eq!((t.len(), v.len()), (DEMO_TRAIN_SIZE, DEMO_VALIDATION_SIZE));
        let ts: HashSet<_> = t.iter().map(|r| r.fields["sentence"].clone()).collect();
        assert!(v.iter().all(|r| !ts.contains(&r.fields["sentence"])));
    }

    #[test]
    fn articles() {
        assert_eq!(article("awful"), "an");
        assert_eq!(article("good"), "a");
    }
}
