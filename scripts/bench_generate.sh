#!/usr/bin/env bash
# Side-by-side sampling throughput: spo generate vs Hugging Face generate (PyTorch,
# 2 threads) on SmolLM2-135M-Instruct, 128 new tokens at temperature 1, batch 1 and 8,
# generation time only. Needs a Python with torch + transformers (PYTHON=...).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
model=$(target/release/spo fetch)
runs=${RUNS:-3}
for b in 1 8; do
  rates=()
  for r in $(seq "$runs"); do
    line=$(./target/release/spo generate --model "$model" --prompt "Once upon a time" --max-tokens 128 \
      --temperature 1 --seed "$r" --num-samples "$b" --ignore-eos 2>&1 >/dev/null | grep generated)
    rates+=("$(echo "$line" | sed -E 's/.*\(([0-9.]+) tokens.*/\1/')")
  done
  echo "spo batch $b: $(printf '%s\n' "${rates[@]}" | sort -n | sed -n "$(( (runs + 1) / 2 ))p") tokens/s (median of $runs; ${rates[*]})"
done
"${PYTHON:-python3}" scripts/bench_hf_generate.py "$model" "$runs" 2>/dev/null
