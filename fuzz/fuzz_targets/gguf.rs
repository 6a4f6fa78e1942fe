//! GGUF reader: parse and validate the container, then everything the model loader
//! reads from it (config, tokenizer, small tensors dequantized). Any panic, overflow,
//! out-of-bounds access or huge allocation is a bug; errors are fine.
#![no_main]

use libfuzzer_sys::fuzz_target;
use softprompt_core::model::load::gguf::{config_from_gguf, tokenizer_from_gguf, GgufFile};

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("fuzz.gguf");
    let Ok(g) = GgufFile::from_bytes(path, data.to_vec()) else {
        return;
    };
    let _ = config_from_gguf(&g);
    let _ = tokenizer_from_gguf(&g);
    for info in g.tensors() {
        // Dequantization allocates numel floats: the directory check bounds the bytes by
        // the file size, so this stays small for fuzz inputs; cap it anyway.
        if info.numel() <= 1 << 20 {
            let t = g.dequantize_info(info);
            assert_eq!(t.data.len(), info.numel());
        }
    }
});
