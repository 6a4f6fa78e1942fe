//! `adapter_model.safetensors` reader. The first two bytes choose what the adapter config
//! asks for (rows 1..=8; token_dim none or 1..=255), the rest is the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use softprompt_core::prompt::peft::parse_prompt_safetensors;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let rows = 1 + (data[0] % 8) as usize;
    let token_dim = (data[1] != 0).then_some(data[1] as usize);
    let path = std::path::Path::new("adapter_model.safetensors");
    if let Ok(t) = parse_prompt_safetensors(path, &data[2..], rows, token_dim) {
        assert_eq!(t.shape.len(), 2);
        assert_eq!(t.shape[0], rows);
        assert_eq!(t.data.len(), t.shape[0] * t.shape[1]);
        assert!(t.data.iter().all(|v| v.is_finite()));
    }
});
