"""PyTorch peer of `spo bench train` and `spo bench generate`, same shapes, written
the way a PyTorch user would: transformers' LlamaForCausalLM (SDPA attention),
torch.optim.AdamW, bf16 as autocast over f32 master weights, the reference's
log-probs precomputed for DPO, and SPO's KL micro-batched with gradient
accumulation (the reference's distributions recomputed under no_grad each step).

    python bench/torch_train.py train --model smollm2 --loss spo --device cuda --dtype bf16 \
        --batch-size 128 --seq-len 128 --kl-samples 32 --steps 5 --json
    python bench/torch_train.py generate --model smollm2 --device cuda --batch-size 64 --json

--model: stories15m or smollm2 (random weights of that shape, as spo's presets) or a
Hugging Face directory. Prints the keys spo prints: median_step_s, tokens_per_s,
peak_rss_gb (and peak_gpu_gb on a GPU).
"""
import argparse
import json
import resource
import statistics
import time

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

SHAPES = {
    "stories15m": dict(vocab_size=32000, hidden_size=288, intermediate_size=768, num_hidden_layers=6,
                       num_attention_heads=6, num_key_value_heads=6, max_position_embeddings=256,
                       rope_theta=10000.0, tie_word_embeddings=False),
    "smollm2": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                    rope_theta=100000.0, tie_word_embeddings=True),
}


def load(name, device):
    if name in SHAPES:
        torch.manual_seed(7)
        model = LlamaForCausalLM(LlamaConfig(**SHAPES[name], rms_norm_eps=1e-5, attn_implementation="sdpa"))
    else:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32, attn_implementation="sdpa")
    return model.to(device)


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peaks(device):
    out = {"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9}
    if device.startswith("cuda"):
        out["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return out


def response_logps(model, ids, prompt):
    logits = model(ids).logits[:, prompt - 1:-1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[:, prompt:, None]).squeeze(-1).sum(-1)


def train(a):
    model = load(a.model, a.device)
    ref = load(a.model, a.device).eval().requires_grad_(False) if a.loss == "spo" else None
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    vocab, prompt = model.config.vocab_size, a.seq_len // 4
    pairs = torch.randint(3, vocab, (2 * a.batch_size, a.seq_len), device=a.device)
    kl_ids = torch.randint(3, vocab, (a.kl_samples, a.seq_len), device=a.device)
    autocast = torch.autocast(a.device.split(":")[0], dtype=torch.bfloat16, enabled=a.dtype == "bf16")
    micro = a.micro_batch_size
    if a.loss == "dpo":
        with torch.no_grad(), autocast:
            ref_lp = torch.cat([response_logps(model, pairs[i:i + micro], prompt) for i in range(0, len(pairs), micro)])
    times = []
    for _ in range(a.steps):
        sync(a.device)
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast:
            for i in range(0, a.batch_size, micro):
                rows = torch.cat([pairs[i:i + micro], pairs[a.batch_size + i:a.batch_size + i + micro]])
                lp = response_logps(model, rows, prompt)
                n = len(rows) // 2
                delta = lp[:n] - lp[n:]
                if a.loss == "dpo":
                    r = torch.cat([ref_lp[i:i + micro], ref_lp[a.batch_size + i:a.batch_size + i + micro]])
                    loss = -F.logsigmoid(0.1 * (delta - (r[:n] - r[n:]))).sum() / a.batch_size
                else:  # SPO's preference loss, −(1/α) log σ(αΔ)
                    loss = -F.logsigmoid(0.03 * delta).sum() / (0.03 * a.batch_size)
                loss.backward()
            if a.loss == "spo":  # token-wise KL on the response positions of the KL samples
                for j in range(0, a.kl_samples, 8):
                    ids = kl_ids[j:j + 8]
                    logp = torch.log_softmax(model(ids).logits[:, prompt - 1:-1].float(), -1)
                    with torch.no_grad():
                        logq = torch.log_softmax(ref(ids).logits[:, prompt - 1:-1].float(), -1)
                    kl = (logp.exp() * (logp - logq)).sum(-1).sum(-1).mean()
                    (0.01 * kl * len(ids) / a.kl_samples).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sync(a.device)
        times.append(time.perf_counter() - t)
    med = statistics.median(times[1:])
    return {"peer": "pytorch", "model": a.model, "loss": a.loss, "device": a.device, "dtype": a.dtype,
            "batch_size": a.batch_size, "seq_len": a.seq_len, "kl_samples": a.kl_samples, "steps": a.steps,
            "median_step_s": med, "tokens_per_s": 2 * a.batch_size * a.seq_len / med, **peaks(a.device)}


def generate(a):
    model = load(a.model, a.device).eval()
    if a.dtype == "bf16":
        model = model.to(torch.bfloat16)
    ids = torch.full((a.batch_size, 4), 5, device=a.device)
    rates = []
    for run in range(a.runs + 1):
        sync(a.device)
        t = time.perf_counter()
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, max_new_tokens=a.max_tokens,
                                 min_new_tokens=a.max_tokens, pad_token_id=0)
        sync(a.device)
        if run > 0:
            rates.append((out.shape[1] - ids.shape[1]) * a.batch_size / (time.perf_counter() - t))
    return {"peer": "hf-generate", "model": a.model, "device": a.device, "dtype": a.dtype, "batch_size": a.batch_size,
            "max_tokens": a.max_tokens, "tokens_per_s": statistics.median(rates), **peaks(a.device)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["train", "generate"])
    p.add_argument("--model", default="stories15m")
    p.add_argument("--loss", choices=["spo", "dpo"], default="spo")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--kl-samples", type=int, default=32)
    p.add_argument("--micro-batch-size", type=int, default=8, help="pairs per forward/backward")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    r = train(a) if a.what == "train" else generate(a)
    print(json.dumps(r) if a.json else " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))


if __name__ == "__main__":
    main()
