"""Peer benchmark: Hugging Face transformers `generate` on SmolLM2-135M-Instruct
(the same GGUF, dequantized to f32), 2 threads, sampling at temperature 1,
"Once upon a time", 128 new tokens, batch 1 and batch 8. Prints tokens/s of the
generate call only (load excluded), median of N runs.

    python scripts/bench_hf_generate.py PATH/TO/SmolLM2-135M-Instruct.Q4_1.gguf [RUNS]
"""
import os
import statistics
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

path = sys.argv[1]
runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
torch.set_num_threads(2)
folder, name = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
ids = tok("Once upon a time", return_tensors="pt", add_special_tokens=False)["input_ids"]
for batch in (1, 8):
    rates = []
    for r in range(runs):
        torch.manual_seed(r)
        x = ids.repeat(batch, 1)
        t = time.perf_counter()
        with torch.no_grad():
            out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=128, do_sample=True,
                                 temperature=1.0, top_k=0, top_p=1.0, min_new_tokens=128, pad_token_id=2)
        dt = time.perf_counter() - t
        new = out[:, x.shape[1]:].numel()
        rates.append(new / dt)
    print(f"hf batch {batch}: {statistics.median(rates):.1f} tokens/s (median of {runs}; {[round(r, 1) for r in rates]})")
