//! Parquet preference data: rows or an error, never a panic that escapes spo.
#![no_main]
use std::sync::Once;

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    // spo contains the parquet crate's panics on malformed metadata (catch_unwind in
    // data.rs); libfuzzer-sys's hook would abort before that, so restore the default
    // hook: a panic that escapes spo still aborts at libfuzzer-sys's own catch.
    static HOOK: Once = Once::new();
    HOOK.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let path = std::env::temp_dir().join(format!("spo-fuzz-{}.parquet", std::process::id()));
    if std::fs::write(&path, bytes).is_ok() {
        let _ = spo::data::read(&path, None);
    }
});
