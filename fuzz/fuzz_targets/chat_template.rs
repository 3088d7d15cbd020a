//! Chat templates: rendered or an error, within the fuel bound.
#![no_main]
libfuzzer_sys::fuzz_target!(|template: &str| {
    let messages = [spo::tokenizer::Message::new("user", "hi")];
    let _ = spo::tokenizer::chat::render(template, &messages, true, "<s>", "</s>");
});
