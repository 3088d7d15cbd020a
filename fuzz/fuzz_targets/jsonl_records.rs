//! JSONL preference data: every line a record or a reason, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    for (_, rec) in spo::data::parse_jsonl(bytes) {
        if let Ok(v) = rec {
            let _ = spo::data::parse_record(&v, None);
        }
    }
});
