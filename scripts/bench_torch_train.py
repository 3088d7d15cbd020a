"""Peer for scripts/bench_train.sh: a plain PyTorch training step (forward + backward +
AdamW) of DPO's shape — 16 sequences x 128 tokens (8 pairs), response-token
log-probs — on SmolLM2-135M (the same GGUF, dequantized, via transformers) and on a
random stories15M-shaped llama, 2 threads, f32, eager attention. Median of steps 2..N.

    python scripts/bench_torch_train.py PATH/TO/SmolLM2-135M-Instruct.Q4_1.gguf [STEPS]
"""
import os
import resource
import statistics
import sys
import time

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

torch.set_num_threads(2)
path = sys.argv[1]
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 4


def bench(name, model):
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ids = torch.randint(3, model.config.vocab_size, (16, 128))
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        logits = model(ids).logits[:, 31:-1]
        logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 32:, None]).squeeze(-1).sum(-1)
        loss = -torch.nn.functional.logsigmoid(0.1 * (logp[:8] - logp[8:])).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    t = statistics.median(times[1:])
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"torch {name:<30} step {t:.2f} s, {16 * 128 / t:.0f} tokens/s, peak RSS so far {rss:.2f} GB")


cfg = LlamaConfig(vocab_size=32000, hidden_size=288, intermediate_size=768, num_hidden_layers=6,
                  num_attention_heads=6, num_key_value_heads=6, max_position_embeddings=256,
                  tie_word_embeddings=False, attn_implementation="eager")
bench("stories15m", LlamaForCausalLM(cfg))
folder, name = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
smol = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32, attn_implementation="eager")
bench("SmolLM2-135M", smol)
