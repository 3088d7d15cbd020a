//! LoRA: gradients against finite differences (f64), the frozen base, and exact
//! resume of an adapter run.

mod common;

use candle_core::{DType, Device, Tensor};
use serde_json::{Map, Value};
use spo::model::lora::{Lora, LoraConfig, ALL_TARGETS};
use spo::model::{Llama, LlamaConfig};
use spo::train::config::TrainConfig;
use spo::train::{Progress, Trainer};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

struct Quiet;
impl Progress for Quiet {
    fn step(&mut self, _: usize, _: usize, _: &Map<String, Value>) {}
    fn note(&mut self, _: &str) {}
}

/// A tiny f64 model with rank-2 adapters whose A and B are both random (B is zero
/// at a fresh start, which would hide A's gradient).
fn adapted_model(targets: &[&str]) -> Llama {
    let config = LlamaConfig::tiny();
    let base = Llama::random(config.clone(), 3, DType::F64, &Device::Cpu).unwrap();
    let shapes = spo::model::lora::modules(&config, &targets.iter().map(|t| t.to_string()).collect::<Vec<_>>());
    let lcfg = LoraConfig { r: 2, alpha: 3.0, dropout: 0.0, targets: targets.iter().map(|t| t.to_string()).collect() };
    let lora = Lora::from_tensors(lcfg, &config, 0, DType::F64, &Device::Cpu, |key| {
        let (module, _) = key.trim_start_matches("base_model.model.").split_once(".lora_").unwrap();
        let (_, din, dout) = shapes.iter().find(|(m, _, _)| m == module).unwrap();
        let shape = if key.ends_with("lora_A.weight") { (2, *din) } else { (*dout, 2) };
        Ok(Tensor::randn(0f64, 0.3, shape, &Device::Cpu)?)
    })
    .unwrap();
    base.with_lora(lora)
}

/// A scalar of the model: a weighted sum of next-token log-probs.
fn objective(m: &Llama) -> Tensor {
    let dev = Device::Cpu;
    let ids = Tensor::new(&[[1u32, 7, 9, 3, 12], [1, 4, 4, 20, 2]], &dev).unwrap();
    let select = Tensor::new(&[0u32, 1, 2, 3, 5, 6, 7], &dev).unwrap();
    let targets = Tensor::new(&[7u32, 9, 3, 12, 4, 4, 20], &dev).unwrap();
    let weights = Tensor::new(&[1.0f64, -0.5, 2.0, 0.3, -1.0, 0.7, 1.5], &dev).unwrap();
    let lp = m.token_logprobs(&ids, &select, &targets, true).unwrap();
    (lp * weights).unwrap().sum_all().unwrap()
}

/// Every adapter matrix's gradient against central differences (f64, h = 1e-6,
/// a few entries of each), and no gradient for any base weight.
#[test]
fn lora_gradients_match_finite_differences_and_the_base_gets_none() {
    let m = adapted_model(&ALL_TARGETS);
    let grads = objective(&m).backward().unwrap();
    for (name, var) in m.named_vars() {
        assert!(grads.get(var.as_tensor()).is_none(), "base weight {name} got a gradient");
    }
    let value = |m: &Llama| objective(m).to_scalar::<f64>().unwrap();
    let mut checked = 0;
    for (name, var) in m.lora().unwrap().named_vars().into_iter().step_by(3) {
        let g = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let x0 = var.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for i in [0, x0.len() / 2, x0.len() - 1] {
            let at = |d: f64| {
                let mut x = x0.clone();
                x[i] += d;
                var.set(&Tensor::from_vec(x, var.shape(), &Device::Cpu).unwrap()).unwrap();
                value(&m)
            };
            let fd = (at(1e-6) - at(-1e-6)) / 2e-6;
            var.set(&Tensor::from_vec(x0.clone(), var.shape(), &Device::Cpu).unwrap()).unwrap();
            assert!((fd - g[i]).abs() < 1e-6 * (1.0 + fd.abs()), "{name}[{i}]: autograd {} vs fd {fd}", g[i]);
            checked += 1;
        }
    }
    assert!(checked >= 30, "{checked} entries checked");
}

/// Fresh adapters leave the model unchanged (B = 0) and a model with no adapters
/// equals the base: the reference under LoRA is the base itself.
#[test]
fn fresh_adapters_start_at_the_base_model() {
    let config = LlamaConfig::tiny();
    let base = Llama::random(config.clone(), 3, DType::F64, &Device::Cpu).unwrap();
    let lcfg = LoraConfig { r: 4, alpha: 8.0, dropout: 0.0, targets: ALL_TARGETS.map(String::from).to_vec() };
    let lora = Lora::init(lcfg, &config, 1, DType::F64, &Device::Cpu).unwrap();
    let adapted = base.clone().with_lora(lora);
    let (a, b) = (objective(&base).to_scalar::<f64>().unwrap(), objective(&adapted).to_scalar::<f64>().unwrap());
    assert_eq!(a, b);
    assert_eq!(objective(&adapted.without_adapters()).to_scalar::<f64>().unwrap(), a);
    let n = adapted.lora().unwrap().named_vars().len();
    assert_eq!(n, 2 * 7 * config.num_hidden_layers, "A and B for 7 projections per layer");
}

/// A LoRA run with dropout, interrupted after step 2 and resumed: the same metrics
/// bit for bit as one run; the base weights are bit-identical after training and
/// only the adapters have optimiser state.
#[test]
fn lora_runs_resume_exactly_and_leave_the_base_untouched() {
    let (model, data, dir) = common::tiny_run_inputs("lora-resume", 6);
    let cfg = |out: &str| TrainConfig {
        model: model.clone(),
        data: data.clone(),
        out: dir.join(out),
        lora_r: 4,
        lora_dropout: 0.1,
        beta: 0.1,
        steps: 4,
        batch_size: 4,
        micro_batch_size: 2,
        lr: 1e-2,
        kl_refresh: 2,
        kl_samples: 2,
        kl_max_tokens: 4,
        save_every: 2,
        eval_fraction: 0.0,
        eval_every: 0,
        ..TrainConfig::default()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut a = Trainer::new(cfg("a"), DType::F32, &Device::Cpu, None, &mut Quiet).unwrap();
    a.run(&stop, None, &mut Quiet).unwrap();
    let mut b = Trainer::new(cfg("b"), DType::F32, &Device::Cpu, None, &mut Quiet).unwrap();
    b.run(&stop, Some(2), &mut Quiet).unwrap();
    let ckpt = dir.join("b/checkpoint-000002");
    assert!(ckpt.join("adapter_model.safetensors").is_file() && !ckpt.join("model.safetensors").exists());
    let mut b2 = Trainer::new(cfg("b"), DType::F32, &Device::Cpu, Some(&ckpt), &mut Quiet).unwrap();
    b2.run(&stop, None, &mut Quiet).unwrap();
    let lines = |run: &str| std::fs::read_to_string(dir.join(run).join("metrics.jsonl")).unwrap();
    let strip = |text: String| -> Vec<Value> {
        text.lines()
            .map(|l| {
                let mut v: Value = serde_json::from_str(l).unwrap();
                for k in ["step_seconds", "tokens_per_second", "kl_sample_seconds"] {
                    v.as_object_mut().unwrap().remove(k);
                }
                v
            })
            .collect()
    };
    assert_eq!(strip(lines("a")), strip(lines("b")));
    let original = spo::model::load(&model, DType::F32, &Device::Cpu).unwrap().model;
    let trained = spo::model::load(&dir.join("a/final"), DType::F32, &Device::Cpu).unwrap().model;
    assert!(trained.lora().is_some(), "final/ is an adapter on the base");
    for ((n, x), (_, y)) in original.named_vars().iter().zip(trained.named_vars().iter()) {
        let (x, y) = (x.as_tensor().flatten_all().unwrap(), y.as_tensor().flatten_all().unwrap());
        assert_eq!(x.to_vec1::<f32>().unwrap(), y.to_vec1::<f32>().unwrap(), "{n}");
    }
    let opt = candle_core::safetensors::load(ckpt.join("optimizer.safetensors"), &Device::Cpu).unwrap();
    assert!(!opt.is_empty() && opt.keys().all(|k| k.contains(".lora_")), "optimiser state of adapters only");
}

#[derive(serde::Deserialize)]
struct PeftReference {
    ids: Vec<u32>,
    peft_adapter_logits: Vec<Vec<f32>>,
    spo_adapter_logits: Vec<Vec<f32>>,
}

/// PEFT both ways (fixtures from scripts/make_peft_reference.py): an adapter made
/// and saved by peft, applied by spo to the same tiny base, gives transformers +
/// peft's logits within 1e-4; and the adapter spo wrote, loaded by peft, gave the
/// logits spo computes with it; `spo merge` of peft's adapter gives peft's logits
/// with no adapter left. spo writes an adapter back unchanged.
#[test]
fn peft_adapters_load_both_ways() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/peft");
    let reference: PeftReference =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("reference.json")).unwrap()).unwrap();
    let dir = common::temp_dir("lora-peft");
    let base = dir.join("tiny");
    let config = LlamaConfig::tiny();
    let m = Llama::random(config.clone(), 7, DType::F32, &Device::Cpu).unwrap();
    let tok = spo::tokenizer::build::sentencepiece_bpe(
        &spo::tokenizer::build::toy_vocabulary(config.vocab_size),
        Some(1),
        Some(2),
        true,
    )
    .unwrap();
    spo::model::load::hf::save(&m, &tok, &base).unwrap();
    let n = reference.ids.len();
    let ids = Tensor::from_vec(reference.ids.clone(), (1, n), &Device::Cpu).unwrap();
    // `spo merge` folds peft's adapter into the base: a plain model with peft's logits
    let merged = dir.join("merged");
    let peft = fixtures.join("peft_adapter");
    let o = common::spo(&[
        "merge",
        "--model",
        common::s(&base),
        "--adapter",
        common::s(&peft),
        "--out",
        common::s(&merged),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cases = [
        (Some("peft_adapter"), &base, &reference.peft_adapter_logits),
        (Some("spo_adapter"), &base, &reference.spo_adapter_logits),
        (None, &merged, &reference.peft_adapter_logits),
    ];
    for (adapter, model, want) in cases {
        let adapter_dir = adapter.map(|a| fixtures.join(a));
        let loaded =
            spo::model::load::load_with_adapter(model, adapter_dir.as_deref(), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(loaded.model.lora().is_some(), adapter.is_some());
        let adapter = adapter.unwrap_or("merged");
        let got = loaded.model.logits(&ids).unwrap().squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        let worst = got.iter().flatten().zip(want.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-4, "{adapter}: max |spo − peft| = {worst}");
    }
    let spo_dir = fixtures.join("spo_adapter");
    let lora = Lora::read(&spo_dir, &config, DType::F32, &Device::Cpu).unwrap();
    let again = dir.join("rewritten");
    std::fs::create_dir_all(&again).unwrap();
    lora.write(&again, &base).unwrap();
    let tensors = |d: &std::path::Path| {
        candle_core::safetensors::load(d.join("adapter_model.safetensors"), &Device::Cpu).unwrap()
    };
    let (a, b) = (tensors(&spo_dir), tensors(&again));
    assert_eq!(a.len(), b.len());
    for (k, t) in &a {
        let u = &b[k];
        assert_eq!(
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            u.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            "{k}"
        );
    }
    let (c1, _) = spo::model::lora::read_config(&spo_dir).unwrap();
    let (c2, _) = spo::model::lora::read_config(&again).unwrap();
    assert_eq!(c1, c2);
}

/// A LoRA run's adapters, through the CLI: `final/` generates on its own (the base
/// from its config), and `spo eval --reference BASE --adapter DIR` evaluates against
/// the adapted reference, refusing an adapter trained on another base.
#[test]
fn cli_runs_use_adapter_directories() {
    let (model, data, dir) = common::tiny_run_inputs("lora-cli", 8);
    let run = dir.join("run");
    let flags = ["--lora-r", "2", "--steps", "2", "--lr", "0.05", "--eval-fraction", "0"];
    let o = common::spo_train(&model, &data, &run, &flags);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let fin = run.join("final");
    let g = common::spo(&["generate", "--model", common::s(&fin), "--max-tokens", "3", "--prompt", "Q1:"]);
    assert!(g.status.success(), "{}", String::from_utf8_lossy(&g.stderr));
    let eval = |reference: &std::path::Path| {
        common::spo(
            &[
                "eval",
                "--reference",
                common::s(reference),
                "--adapter",
                common::s(&fin),
                "--checkpoints",
                common::s(&fin),
                "--cache",
                common::s(&dir.join("cache")),
                "--json",
            ]
            .into_iter()
            .chain(common::SMALL_EVAL)
            .collect::<Vec<_>>(),
        )
    };
    let ok = eval(&model);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    let bad = eval(&other);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("was trained on"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
