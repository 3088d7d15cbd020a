//! llama2.c `tokenizer.bin`: a vocabulary or an error.
#![no_main]
libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let _ = spo::model::load::llama2c::parse_tokenizer_bin(bytes);
});
