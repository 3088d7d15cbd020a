"""PEFT fixtures for spo's LoRA, both ways, computed by peft + transformers.

    cargo run --release --example save_random_model -- tiny /tmp/tiny
    python3 -c 'import json; [print(json.dumps({"prompt": f"Q{k}:", "chosen": "good", "rejected": "bad"})) for k in range(12)]' > /tmp/tiny-prefs.jsonl
    target/release/spo train --model /tmp/tiny --data /tmp/tiny-prefs.jsonl --out /tmp/tiny-lora --lora-r 4 \
        --lora-alpha 8 --steps 4 --lr 0.05 --beta 0.1 --kl-samples 2 --kl-max-tokens 4 --eval-fraction 0
    python scripts/make_peft_reference.py /tmp/tiny /tmp/tiny-lora/final tests/fixtures/peft

Writes into OUT:
- peft_adapter/: an adapter made by peft (r 4, α 8, all seven projections) whose A
  and B are set to seeded random values, saved with save_pretrained;
- spo_adapter/: the adapter spo trained (copied as spo wrote it);
- reference.json: the logits transformers + peft compute for fixed ids with each
  adapter on the tiny base (spo's Rust test rebuilds the same base, seed 7).
"""
import json
import os
import shutil
import sys

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

base_dir, spo_adapter, out = sys.argv[1:4]
ids = torch.tensor([[1, 5, 9, 14, 22, 3, 40, 60, 7, 33, 12, 2]])


def base():
    return AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()


def logits(model):
    with torch.no_grad():
        return [[round(float(x), 6) for x in row] for row in model(ids).logits[0]]


os.makedirs(out, exist_ok=True)
targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
peft_model = get_peft_model(base(), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets))
g = torch.Generator().manual_seed(0)
for name, p in peft_model.named_parameters():
    if "lora_" in name:
        p.data = torch.randn(p.shape, generator=g) * 0.2
peft_model.eval()
peft_logits = logits(peft_model)
peft_model.save_pretrained(os.path.join(out, "peft_adapter"))

shutil.copytree(spo_adapter, os.path.join(out, "spo_adapter"), dirs_exist_ok=True)
spo_on_peft = PeftModel.from_pretrained(base(), spo_adapter).eval()
plain = logits(base())
spo_logits = logits(spo_on_peft)
assert spo_logits != plain, "spo's adapter changes nothing: train it for a few steps first"
json.dump({"ids": ids[0].tolist(), "peft_adapter_logits": peft_logits, "spo_adapter_logits": spo_logits,
           "base_logits": plain}, open(os.path.join(out, "reference.json"), "w"))
print("wrote", out)
