//! `tokenizer_config.json` beside a valid `tokenizer.json`: a tokenizer or an error.
#![no_main]
use std::sync::OnceLock;

fn dir() -> &'static std::path::Path {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("spo-fuzz-tok-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let vocab = spo::tokenizer::build::toy_vocabulary(61);
        spo::tokenizer::build::sentencepiece_bpe(&vocab, Some(1), Some(2), true).unwrap().save(&d).unwrap();
        d
    })
}

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    if std::fs::write(dir().join("tokenizer_config.json"), bytes).is_err() {
        return;
    }
    if let Ok(tok) = spo::tokenizer::Tokenizer::from_hf_dir(dir(), &serde_json::Value::Null) {
        let _ = tok.encode_prompt("hello");
        let _ = tok.apply_chat_template(&[spo::tokenizer::Message::new("user", "hi")], true);
    }
});
