//! llama2.c checkpoints: a model or an error; no overflow, huge allocation or panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let _ = spo::model::load::llama2c::parse(bytes, candle_core::DType::F32, &candle_core::Device::Cpu);
});
