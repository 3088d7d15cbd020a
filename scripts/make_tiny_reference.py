"""Reference logits of spo's tiny random test model, computed by transformers.

    cargo run --release --example save_random_model -- tiny /tmp/tiny
    python scripts/make_tiny_reference.py /tmp/tiny > tests/fixtures/tiny_hf_logits.json

The Rust test rebuilds the same model (seed 7) and compares its logits; this checks
the Hugging Face layout (half-split RoPE, GQA, SwiGLU, RMSNorm) against an
independent implementation, and that transformers loads spo's saved directory as is.
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained(sys.argv[1], torch_dtype=torch.float32).eval()
tok = AutoTokenizer.from_pretrained(sys.argv[1])
ids = [[1, 5, 9, 14, 22, 3, 40, 60, 7, 33, 12, 2]]
with torch.no_grad():
    logits = model(torch.tensor(ids)).logits[0]
print(json.dumps({
    "ids": ids[0],
    "logits": [[round(float(x), 6) for x in row] for row in logits],
    "tokenized": tok("hello world", add_special_tokens=True)["input_ids"],
}))
