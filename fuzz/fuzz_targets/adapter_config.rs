//! `adapter_config.json` parser and validator.
#![no_main]

use libfuzzer_sys::fuzz_target;
use softprompt_core::prompt::peft::parse_adapter_config;
use softprompt_core::prompt::{MAX_TOKEN_DIM, MAX_VIRTUAL_TOKENS};

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("adapter_config.json");
    if let Ok(c) = parse_adapter_config(path, data) {
        // What the loader relies on after a successful parse.
        assert!((1..=MAX_VIRTUAL_TOKENS).contains(&c.num_virtual_tokens));
        assert!(c.token_dim.is_none_or(|d| (1..=MAX_TOKEN_DIM).contains(&d)));
        assert_eq!(c.total_virtual_tokens(), c.num_virtual_tokens);
    }
});
