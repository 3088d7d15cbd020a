//! `spo train --config` TOML: a configuration or an error.
#![no_main]
libfuzzer_sys::fuzz_target!(|text: &str| {
    if let Ok(c) = toml::from_str::<spo::train::config::TrainConfig>(text) {
        let _ = c.validate();
    }
});
