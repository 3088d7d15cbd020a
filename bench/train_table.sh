#!/usr/bin/env bash
# The README's training-speed table, spo and PyTorch side by side in one sitting:
# one step (forward + backward + AdamW) on 8 pairs x 128 tokens, SPO with 32 KL
# samples (their refresh sampling reported apart), f32, this machine's threads.
# spo: full fine-tune and LoRA r 16 (all projections); PyTorch: bench/torch_train.py.
#
#   bench/train_table.sh                     # PYTHON=python with torch + transformers
#   MODELS="stories15m" STEPS=3 bench/train_table.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
models="${MODELS:-stories15m smollm2}"
steps="${STEPS:-3}"
out="${OUT:-/tmp/spo-train-table.jsonl}"
threads=$(nproc)
: >"$out"
cargo build --release -q
shape=(--batch-size 8 --seq-len 128 --kl-samples 32 --micro-batch-size 8 --steps "$steps" --json)
for model in $models; do
    for loss in dpo spo; do
        for r in 0 16; do
            target/release/spo bench train --model "$model" --loss "$loss" --lora-r "$r" "${shape[@]}" >>"$out"
        done
        "$python" bench/torch_train.py train --model "$model" --loss "$loss" --threads "$threads" "${shape[@]}" >>"$out"
    done
done
"$python" - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def find(model, loss, peer, lora=0):
    for r in rows:
        if r["model"] == model and r.get("loss", r.get("shape", {}).get("loss")) == loss:
            is_torch = r.get("peer") == "pytorch"
            if peer == "torch" and is_torch:
                return r
            if peer == "spo" and not is_torch and r["shape"]["lora_r"] == lora:
                return r
cell = lambda r: f"{r['median_step_s']:.2f} s, {r['peak_rss_gb']:.2f} GB" if r else "n/a"
print("| model | step | spo full | spo LoRA r16 | PyTorch full | spo full vs PyTorch (speed, memory) |")
print("|---|---|---|---|---|---|")
for model in dict.fromkeys(r["model"] for r in rows):
    for loss in ("dpo", "spo"):
        full, lora, torch = find(model, loss, "spo"), find(model, loss, "spo", 16), find(model, loss, "torch")
        ratio = (f"{torch['median_step_s'] / full['median_step_s']:.2f}x, {full['peak_rss_gb'] / torch['peak_rss_gb']:.2f}x"
                 if full and torch else "n/a")
        refresh = f" (+{full['kl_refresh_s']:.1f} s sampling per refresh)" if full and full.get("kl_refresh_s") else ""
        print(f"| {model} | {loss.upper()}{refresh} | {cell(full)} | {cell(lora)} | {cell(torch)} | {ratio} |")
PY
