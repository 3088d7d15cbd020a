//! A judge's free-text answer: two scores in 0–10, or none.
#![no_main]
libfuzzer_sys::fuzz_target!(|text: &str| {
    if let Some((a, b)) = spo::judge::openai::parse_scores(text) {
        assert!((0.0..=10.0).contains(&a) && (0.0..=10.0).contains(&b));
    }
});
