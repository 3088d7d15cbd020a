//! Property tests over every parser a user's file reaches: whatever the bytes, the
//! answer is a value or an error, never a panic (`fuzz/` runs the same entry points
//! for longer under libFuzzer).

mod common;

use candle_core::{DType, Device};
use proptest::prelude::*;
use serde_json::{json, Value};
use spo::data::{parse_jsonl, parse_record, PreferencePair};
use spo::judge::openai::parse_scores;
use spo::model::load::llama2c;
use spo::tokenizer::chat::{render, Message};
use spo::train::config::TrainConfig;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// JSON values of any shape, with the field names the record parser looks for.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        let key = prop_oneof![
            Just("prompt".to_string()),
            Just("chosen".to_string()),
            Just("rejected".to_string()),
            Just("role".to_string()),
            Just("content".to_string()),
            "[a-z]{1,6}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key, inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(config(2000))]

    /// Any bytes as a JSONL file: every line is a record or a reason, numbered.
    #[test]
    fn jsonl_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let lines = bytes.split(|&b| b == b'\n').count();
        for (line, rec) in parse_jsonl(&bytes) {
            prop_assert!(line >= 1 && line <= lines);
            if let Ok(v) = rec {
                let _ = parse_record(&v, None);
            }
        }
    }

    /// Any JSON record: a pair or a reason; a standard record keeps its texts.
    #[test]
    fn records_of_any_shape_never_panic(v in json_value()) {
        let _ = parse_record(&v, None);
        let line = format!("{v}\n");
        prop_assert_eq!(parse_jsonl(line.as_bytes()).len(), 1);
    }

    #[test]
    fn standard_records_keep_their_texts(p in ".{0,20}", c in ".{0,20}", r in ".{0,20}") {
        let v = json!({"prompt": p, "chosen": c, "rejected": r});
        prop_assert_eq!(parse_record(&v, None), Ok(PreferencePair { prompt: p, chosen: c, rejected: r }));
    }

    /// Judge answers: any text gives scores in 0–10 or none; a well-formed answer
    /// gives exactly its scores.
    #[test]
    fn judge_answers_never_panic(text in ".{0,200}") {
        if let Some((a, b)) = parse_scores(&text) {
            prop_assert!((0.0..=10.0).contains(&a) && (0.0..=10.0).contains(&b));
        }
    }

    #[test]
    fn well_formed_judge_answers_parse_exactly(a in 0u32..=10, b in 0u32..=10, noise in "[a-z .,\n]{0,40}") {
        let answer = format!("{noise}\nScore of story 1: {a}\n{noise}\nScore of story 2: {b}/10\n");
        prop_assert_eq!(parse_scores(&answer), Some((f64::from(a), f64::from(b))));
    }

    /// `--config` TOML: any text is a configuration or an error; a configuration
    /// that validates has every count at least 1.
    #[test]
    fn config_toml_never_panics(text in "[a-z_]{1,20} = [-0-9.e\"a-z\\[\\]]{1,12}(\n[a-z_]{1,20} = [-0-9.e\"a-z]{1,12}){0,3}") {
        if let Ok(c) = toml::from_str::<TrainConfig>(&text) {
            if c.validate().is_ok() {
                prop_assert!(c.steps >= 1 && c.batch_size >= 1 && c.kl_max_tokens >= 1);
            }
        }
    }

    #[test]
    fn config_toml_of_any_bytes_never_panics(text in ".{0,120}") {
        let _ = toml::from_str::<TrainConfig>(&text).map(|c| c.validate());
    }

    /// Chat templates: any template text renders or is an error (fuel-bounded).
    #[test]
    fn chat_templates_never_panic(template in "[{}%# a-z()'\\[\\]+.=0-9|-]{0,60}", content in ".{0,20}") {
        let _ = render(&template, &[Message::new("user", &content)], true, "<s>", "</s>");
    }
}

proptest! {
    #![proptest_config(config(1000))]

    /// llama2.c headers: any 7 header integers and weight bytes load or fail
    /// cleanly — no overflow, no huge allocation, no panic.
    #[test]
    fn llama2c_headers_never_panic(
        header in prop::array::uniform7(prop_oneof![any::<i32>(), -4i32..70, Just(1 << 30)]),
        v1 in any::<bool>(),
        tail in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        let mut bytes = Vec::new();
        if v1 {
            bytes.extend(0x616b_3432u32.to_le_bytes());
            bytes.extend(1i32.to_le_bytes());
        }
        bytes.extend(header.iter().flat_map(|x| x.to_le_bytes()));
        if v1 {
            bytes.resize(256, 0);
        }
        bytes.extend(tail);
        let _ = llama2c::parse(&bytes, DType::F32, &Device::Cpu);
    }

    #[test]
    fn tokenizer_bin_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = llama2c::parse_tokenizer_bin(&bytes);
    }
}

proptest! {
    #![proptest_config(config(300))]

    /// Parquet: any bytes in a `.parquet` file are rows or an error.
    #[test]
    fn parquet_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300), magic in any::<bool>()) {
        let dir = common::temp_dir("prop-parquet");
        let path = dir.join("x.parquet");
        let mut body = bytes;
        if magic {
            body.splice(0..0, *b"PAR1");
            body.extend(b"PAR1");
        }
        std::fs::write(&path, body).unwrap();
        let _ = spo::data::read(&path, None);
    }

    /// tokenizer_config.json: special tokens, flags and templates of any shape
    /// load or fail cleanly.
    #[test]
    fn tokenizer_configs_never_panic(bos in json_value(), add in json_value(), template in json_value()) {
        let dir = tokenizer_dir();
        let config = json!({"bos_token": bos, "add_bos_token": add, "chat_template": template, "eos_token": bos});
        std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
        if let Ok(tok) = spo::tokenizer::Tokenizer::from_hf_dir(&dir, &json!({"bos_token_id": 1})) {
            let _ = tok.encode_prompt("hello");
            let _ = tok.apply_chat_template(&[Message::new("user", "hi")], true);
        }
    }
}

/// The input on which libFuzzer found the parquet crate panicking: an error now.
#[test]
fn the_parquet_file_the_fuzzer_found_is_an_error() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parquet_reader_panic.parquet");
    let err = format!("{:#}", spo::data::read(&path, None).unwrap_err());
    assert!(err.contains("parquet_reader_panic.parquet: not a readable Parquet file"), "{err}");
}

/// A directory holding the toy tokenizer's `tokenizer.json` (written once).
fn tokenizer_dir() -> std::path::PathBuf {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = common::temp_dir("prop-tokenizer");
        let vocab = spo::tokenizer::build::toy_vocabulary(61);
        let tok = spo::tokenizer::build::sentencepiece_bpe(&vocab, Some(1), Some(2), true).unwrap();
        tok.save(&dir).unwrap();
        dir
    })
    .clone()
}
