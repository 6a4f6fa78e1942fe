//! Generated ids to text, piece by piece, for streaming and stop strings.

use softprompt_core::model::FrozenModel;

/// Turns generated ids into text: holds back an incomplete UTF-8 tail, drops the EOS token,
/// and cuts at the first stop string.
pub struct Detok {
    ids: Vec<u32>,
    /// Bytes of text already handed out.
    sent: usize,
    stop: Vec<String>,
    pub stopped: bool,
}

impl Detok {
    pub fn new(stop: Vec<String>) -> Self {
        Detok {
            ids: Vec::new(),
            sent: 0,
            stop,
            stopped: false,
        }
    }

    /// Add a token; returns the new text that is safe to send.
    pub fn push(&mut self, model: &FrozenModel, tok: u32, eos: &[u32]) -> String {
        if self.stopped || eos.contains(&tok) {
            return String::new();
        }
        self.ids.push(tok);
        let text = model.decode(&self.ids).unwrap_or_default();
        // Stop strings: cut at the earliest match not already sent.
        if let Some(cut) = self.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
            self.stopped = true;
            let out = text
                .get(self.sent..cut.max(self.sent))
                .unwrap_or("")
                .to_string();
            self.sent = cut.max(self.sent);
            return out;
        }
        let mut end = text.len();
        if text.ends_with('\u{FFFD}') {
            end -= '\u{FFFD}'.len_utf8();
        }
        // Keep back a tail that could be the start of a stop string.
        let hold = self
            .stop
            .iter()
            .map(|s| {
                (1..s.len())
                    .rev()
                    .find(|&k| s.is_char_boundary(k) && text.ends_with(&s[..k]))
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        end = end.min(text.len() - hold);
        if end <= self.sent || !text.is_char_boundary(end) {
            return String::new();
        }
        let out = text[self.sent..end].to_string();
        self.sent = end;
        out
    }

    /// What is left when the generation ends.
    pub fn finish(&mut self, model: &FrozenModel) -> String {
        if self.stopped {
            return String::new();
        }
        let text = model.decode(&self.ids).unwrap_or_default();
        let out = text.get(self.sent..).unwrap_or("").to_string();
        self.sent = text.len();
        out
    }
}
