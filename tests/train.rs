//! The trainer, end to end on a tiny random model: the paper's fixed points reached
//! by real training, accumulation, the KL gradient, exact resume, held-out accuracy.

#![allow(clippy::needless_range_loop)]

mod common;

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Map, Value};
use spo::batch::SequenceBatch;
use spo::loss::token_kl_rows;
use spo::model::load::hf;
use spo::model::{Llama, LlamaConfig};
use spo::theory::objective::Objective;
use spo::theory::solve::{solve, SolveOptions};
use spo::theory::world::PairDistribution;
use spo::tokenizer::build::{sentencepiece_bpe, toy_vocabulary};
use spo::tokenizer::encode_pair;
use spo::train::config::{LossKind, Schedule, TrainConfig, WeightingKind};
use spo::train::{Progress, Trainer};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

struct Quiet;
impl Progress for Quiet {
    fn step(&mut self, _: usize, _: usize, _: &Map<String, Value>) {}
    fn note(&mut self, _: &str) {}
}

/// A tiny random model saved as a Hugging Face directory.
fn tiny_model(dir: &Path, seed: u64) -> PathBuf {
    let config = LlamaConfig::tiny();
    let m = Llama::random(config.clone(), seed, DType::F32, &Device::Cpu).unwrap();
    let tok = sentencepiece_bpe(&toy_vocabulary(config.vocab_size), Some(1), Some(2), true).unwrap();
    let path = dir.join("model");
    hf::save(&m, &tok, &path).unwrap();
    path
}

/// Scales the saved model's output head by 25. The random head (std 0.02) over
/// unit-RMS hidden states bounds every logit to about ±0.6: a full fine-tune grows
/// the head, but LoRA keeps it frozen and could not express the fixed point's
/// log-probability gaps (it stops at the bound, whatever the learning rate).
fn widen_output_head(dir: &Path) {
    let loaded = spo::model::load(dir, DType::F32, &Device::Cpu).unwrap();
    for (name, var) in loaded.model.named_vars() {
        if name == "lm_head.weight" {
            var.set(&(var.as_tensor() * 25.0).unwrap()).unwrap();
        }
    }
    hf::save(&loaded.model, &loaded.tokenizer, dir).unwrap();
}

const PROMPTS: [&str; 2] = ["Q1:", "Q2:"];
const ANSWERS: [&str; 3] = ["no", "maybe", "yes"];
/// BT weights w (rewards ln w): D(i≻j)/D(j≻i) = w_i/w_j exactly with integer counts.
const W: [usize; 3] = [1, 2, 4];

/// Every ordered pair of answers for every prompt, (i ≻ j) repeated w_i times.
fn bt_dataset(dir: &Path) -> (PathBuf, Vec<(usize, usize)>) {
    let mut lines = Vec::new();
    let mut pairs = Vec::new();
    for p in PROMPTS {
        for i in 0..3 {
            for j in 0..3 {
                if i != j {
                    for _ in 0..W[i] {
                        lines.push(json!({"prompt": p, "chosen": ANSWERS[i], "rejected": ANSWERS[j]}).to_string());
                        pairs.push((i, j));
                    }
                }
            }
        }
    }
    let path = dir.join("bt.jsonl");
    std::fs::write(&path, lines.join("\n")).unwrap();
    (path, pairs)
}

fn config(model: &Path, data: &Path, out: &Path) -> TrainConfig {
    TrainConfig {
        model: model.into(),
        data: data.into(),
        out: out.into(),
        eval_fraction: 0.0,
        eval_every: 0,
        save_every: 0,
        max_grad_norm: 0.0,
        ..TrainConfig::default()
    }
}

/// Sequence log-probs of each answer after each prompt under a model.
fn answer_logps(model: &Llama, tok: &spo::tokenizer::Tokenizer) -> Vec<Vec<f64>> {
    PROMPTS
        .iter()
        .map(|p| {
            let enc: Vec<(Vec<u32>, Vec<u32>)> =
                ANSWERS.iter().map(|a| encode_pair(tok, p, a, true).unwrap()).collect();
            let rows: Vec<(&[u32], &[u32])> = enc.iter().map(|(a, b)| (a.as_slice(), b.as_slice())).collect();
            let b = SequenceBatch::new(&rows, 2, model.dtype(), model.device()).unwrap();
            let lp = model.token_logprobs(&b.ids, &b.select, &b.targets, false).unwrap();
            b.per_row(&lp).unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap()
        })
        .collect()
}

/// Answer log-probs per prompt before and after training, and the pairs trained on.
type FullBatchRun = (Vec<Vec<f64>>, Vec<Vec<f64>>, Vec<(usize, usize)>);

fn train_full_batch(loss: LossKind, alpha: f64, beta: f64, lora_r: usize, name: &str) -> FullBatchRun {
    let dir = common::temp_dir(name);
    let model = tiny_model(&dir, 11);
    if lora_r > 0 {
        widen_output_head(&model);
    }
    let (data, pairs) = bt_dataset(&dir);
    let cfg = TrainConfig {
        loss,
        alpha,
        beta,
        steps: 400,
        batch_size: pairs.len() * 2,
        micro_batch_size: pairs.len() * 2,
        lr: 3e-2,
        warmup_steps: Some(10),
        schedule: Schedule::Cosine,
        lora_r,
        ..config(&model, &data, &dir.join("run"))
    };
    let mut t = Trainer::new(cfg, DType::F32, &Device::Cpu, None, &mut Quiet).unwrap();
    let tok = spo::model::load(&model, DType::F32, &Device::Cpu).unwrap();
    let before = answer_logps(&tok.model, &tok.tokenizer);
    for _ in 0..400 {
        t.train_step().unwrap();
    }
    (before, answer_logps(t.policy(), &tok.tokenizer), pairs)
}

/// Theorem 1 on a language model: SPO's preference loss alone (β = 0) drives the
/// answers' log-probability differences to the tabular fixed point (r_i − r_j)/α.
#[test]
fn spo_reaches_the_theorem_1_fixed_point_on_a_language_model() {
    theorem_1_fixed_point(0);
}

/// Theorem 1 with LoRA (rank 4 on every projection, the base frozen): the same
/// fixed point at the same tolerance, so the adapters carry the method.
#[test]
fn spo_reaches_the_theorem_1_fixed_point_with_lora_adapters() {
    theorem_1_fixed_point(4);
}

fn theorem_1_fixed_point(lora_r: usize) {
    for alpha in [0.5, 1.0] {
        let (_, after, pairs) = train_full_batch(LossKind::Spo, alpha, 0.0, lora_r, &format!("thm1-{alpha}-{lora_r}"));
        // the tabular fixed point of the same counts, from the theory engine
        let d = PairDistribution::empirical(3, &pairs[..pairs.len() / 2]);
        let obj = Objective::Spo { alpha, weighting: spo::loss::Weighting::Uniform, kl: None };
        let target = solve(&obj, &d, &[0.0; 3], SolveOptions::default()).theta;
        for lp in &after {
            for (i, j) in [(0, 1), (1, 2), (0, 2)] {
                let got = lp[j] - lp[i];
                let want = target[j] - target[i];
                assert!((want - ((W[j] as f64).ln() - (W[i] as f64).ln()) / alpha).abs() < 1e-6);
                assert!((got - want).abs() < 0.1, "α = {alpha}: Δ({j},{i}) = {got}, fixed point {want}");
            }
        }
    }
}

/// DPO on the same data reaches log π − log π_ref = (r + c)/β.
#[test]
fn dpo_reaches_its_own_fixed_point() {
    let beta = 0.5;
    let (before, after, _) = train_full_batch(LossKind::Dpo, 0.03, beta, 0, "dpo-fixed");
    for (b, a) in before.iter().zip(&after) {
        let h: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
        for (i, j) in [(0, 1), (1, 2), (0, 2)] {
            let want = ((W[j] as f64).ln() - (W[i] as f64).ln()) / beta;
            assert!((h[j] - h[i] - want).abs() < 0.1, "Δh({j},{i}) = {}, want {want}", h[j] - h[i]);
        }
    }
}

/// One step with 4 micro-batches equals one step on the whole batch (f64), for
/// uniform μ and SoftImportance (whose normaliser is the whole batch's), with and
/// without the KL term: the micro-batch size is a memory setting only.
#[test]
fn gradient_accumulation_equals_one_big_batch() {
    for (weighting, beta) in
        [(WeightingKind::Uniform, 0.0), (WeightingKind::SoftImportance, 0.0), (WeightingKind::SoftImportance, 0.5)]
    {
        accumulation_equals_one_batch(weighting, beta);
    }
}

fn accumulation_equals_one_batch(weighting: WeightingKind, beta: f64) {
    let dir = common::temp_dir(&format!("accum-{weighting:?}-{beta}"));
    let model = tiny_model(&dir, 5);
    let (data, _) = bt_dataset(&dir);
    let weights = |micro: usize| {
        let cfg = TrainConfig {
            batch_size: 8,
            micro_batch_size: micro,
            steps: 3,
            lr: 1e-2,
            beta,
            weighting,
            gamma: 1.0,
            kl_samples: 3,
            kl_max_tokens: 4,
            ..config(&model, &data, &dir.join(format!("r{micro}")))
        };
        let mut t = Trainer::new(cfg, DType::F64, &Device::Cpu, None, &mut Quiet).unwrap();
        t.train_step().unwrap();
        t.policy()
            .named_vars()
            .into_iter()
            .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap())
            .collect::<Vec<_>>()
    };
    let (one, four) = (weights(8), weights(2));
    let diff = one.iter().flatten().zip(four.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(diff < 1e-12, "{weighting:?}, β = {beta}: max weight difference {diff}");
    let again = weights(8);
    assert!(one.iter().flatten().zip(again.iter().flatten()).all(|(a, b)| a == b), "deterministic");
}

/// The KL term's gradient matches central differences (f64, tiny model).
#[test]
fn kl_gradient_matches_finite_differences() {
    let policy = Llama::random(LlamaConfig::tiny(), 1, DType::F64, &Device::Cpu).unwrap();
    let reference = Llama::random(LlamaConfig::tiny(), 2, DType::F64, &Device::Cpu).unwrap();
    let rows: Vec<(&[u32], &[u32])> = vec![(&[1, 5, 9], &[14, 22, 2]), (&[1], &[7, 33, 12, 40])];
    let b = SequenceBatch::new(&rows, 2, DType::F64, &Device::Cpu).unwrap();
    let q = reference.next_token_logdist(&b.ids, &b.select, false).unwrap();
    let kl = |m: &Llama, track: bool| {
        token_kl_rows(&m.next_token_logdist(&b.ids, &b.select, track).unwrap(), &q, 2).unwrap()
    };
    let grads = kl(&policy, true).backward().unwrap();
    let vars = policy.named_vars();
    for (name, idx) in [
        ("model.layers.0.self_attn.v_proj.weight", 11),
        ("model.layers.1.mlp.up_proj.weight", 40),
        ("lm_head.weight", 77),
    ] {
        let var = &vars.iter().find(|(n, _)| n == name).unwrap().1;
        let g = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()[idx];
        let orig = var.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let shape = var.as_tensor().shape().clone();
        let at = |d: f64| {
            let mut v = orig.clone();
            v[idx] += d;
            var.set(&Tensor::from_vec(v, shape.clone(), &Device::Cpu).unwrap()).unwrap();
            kl(&policy, false).to_scalar::<f64>().unwrap()
        };
        let fd = (at(1e-6) - at(-1e-6)) / 2e-6;
        at(0.0);
        assert!((fd - g).abs() < 1e-7 * (1.0 + g.abs()), "{name}[{idx}]: fd {fd}, autograd {g}");
    }
}

fn metric_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("tokens_per_second");
            o.remove("step_seconds");
            o.remove("kl_sample_seconds");
            v
        })
        .collect()
}

/// Interrupted after step 3 and resumed: the same metrics, bit for bit, as one run.
#[test]
fn interrupted_and_resumed_run_equals_an_uninterrupted_one() {
    let dir = common::temp_dir("resume");
    let model = tiny_model(&dir, 3);
    let (data, _) = bt_dataset(&dir);
    let cfg = |out: &str| TrainConfig {
        steps: 6,
        batch_size: 6,
        micro_batch_size: 3,
        lr: 1e-2,
        beta: 0.1,
        kl_refresh: 2,
        kl_samples: 3,
        kl_max_tokens: 6,
        save_every: 3,
        eval_fraction: 0.2,
        eval_every: 2,
        max_grad_norm: 1.0,
        ..config(&model, &data, &dir.join(out))
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut a = Trainer::new(cfg("a"), DType::F32, &Device::Cpu, None, &mut Quiet).unwrap();
    a.run(&stop, None, &mut Quiet).unwrap();
    let mut b = Trainer::new(cfg("b"), DType::F32, &Device::Cpu, None, &mut Quiet).unwrap();
    b.run(&stop, Some(3), &mut Quiet).unwrap();
    assert!(!dir.join("b/final").exists());
    let ckpt = dir.join("b/checkpoint-000003");
    let mut b2 = Trainer::new(cfg("b"), DType::F32, &Device::Cpu, Some(&ckpt), &mut Quiet).unwrap();
    b2.run(&stop, None, &mut Quiet).unwrap();
    let (ma, mb) = (metric_lines(&dir.join("a/metrics.jsonl")), metric_lines(&dir.join("b/metrics.jsonl")));
    assert_eq!(ma.len(), 6);
    assert_eq!(ma, mb);
    assert!(ma[5]["kl"].as_f64().unwrap() > 0.0);
    // the final models are identical too
    let load = |p: PathBuf| spo::model::load(&p, DType::F32, &Device::Cpu).unwrap().model;
    let (fa, fb) = (load(dir.join("a/final")), load(dir.join("b/final")));
    for ((_, x), (_, y)) in fa.named_vars().iter().zip(fb.named_vars().iter()) {
        assert_eq!(
            x.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            y.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
}

/// Chosen responses are "a…", rejected "z…": held-out accuracy must rise to ≥ 0.9.
#[test]
fn held_out_preference_accuracy_rises_on_a_learnable_task() {
    let dir = common::temp_dir("heldout");
    let model = tiny_model(&dir, 9);
    let lines: Vec<String> = (0..60)
        .map(|k| {
            let p = format!("P{}", k % 10);
            let n = 1 + k % 4;
            json!({"prompt": p, "chosen": "a".repeat(n), "rejected": "z".repeat(n)}).to_string()
        })
        .collect();
    std::fs::write(dir.join("ab.jsonl"), lines.join("\n")).unwrap();
    let cfg = TrainConfig {
        steps: 30,
        batch_size: 16,
        micro_batch_size: 16,
        lr: 1e-2,
        beta: 0.0,
        eval_fraction: 0.25,
        eval_every: 30,
        ..config(&model, &dir.join("ab.jsonl"), &dir.join("run"))
    };
    let mut t = Trainer::new(cfg, DType::F32, &Device::Cpu, None, &mut Quiet).unwrap();
    let before = t.evaluate().unwrap()["eval/accuracy"].as_f64().unwrap();
    for _ in 0..30 {
        t.train_step().unwrap();
    }
    let after = t.evaluate().unwrap()["eval/accuracy"].as_f64().unwrap();
    assert!(after >= 0.9 && after > before, "held-out accuracy {before} → {after}");
}

/// With β > 0 the reference is used every step but never changes.
#[test]
fn the_reference_stays_frozen() {
    let dir = common::temp_dir("frozen");
    let model = tiny_model(&dir, 4);
    let (data, _) = bt_dataset(&dir);
    let cfg = TrainConfig {
        steps: 3,
        batch_size: 4,
        micro_batch_size: 4,
        lr: 1e-2,
        beta: 0.5,
        kl_samples: 2,
        kl_max_tokens: 4,
        ..config(&model, &data, &dir.join("run"))
    };
    let mut t = Trainer::new(cfg, DType::F32, &Device::Cpu, None, &mut Quiet).unwrap();
    let snapshot = |m: &Llama| {
        m.named_vars()
            .into_iter()
            .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect::<Vec<_>>()
    };
    let before = snapshot(t.reference().unwrap());
    let mut kl = 0.0;
    for _ in 0..3 {
        kl = t.train_step().unwrap()["kl"].as_f64().unwrap();
    }
    assert_eq!(snapshot(t.reference().unwrap()), before);
    assert_ne!(snapshot(t.policy()), before);
    assert!(kl > 0.0);
}
