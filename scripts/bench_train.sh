#!/usr/bin/env bash
# Training-step benchmark: one step = forward + backward + AdamW on 8 pairs x 128
# tokens per sequence (prompt 32 + response 96), for SmolLM2-135M and a random
# stories15M-shaped model, SPO (preference + KL on 32 cached samples; the sampling
# of a refresh reported separately) and DPO. Prints median step time over steps
# 2..N, tokens/s (16 sequences x 128 tokens per step) and peak RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${STEPS:-4}
work=${WORK:-/tmp/spo-bench-train}
mkdir -p "$work"
cargo build --release -q --example save_random_model
[ -d "$work/stories15m" ] || ./target/release/examples/save_random_model stories15m "$work/stories15m"
cargo build --release -q
smol=$(target/release/spo fetch)
python3 - "$work/data.jsonl" <<'PY'
import json, random, sys
random.seed(0)
words = "the old lighthouse keeper walked slowly along the shore while gulls circled above the grey water and the town slept".split()
text = lambda n: " ".join(random.choice(words) for _ in range(n))
with open(sys.argv[1], "w") as f:
    for _ in range(64):
        f.write(json.dumps({"prompt": text(60), "chosen": " " + text(140), "rejected": " " + text(140)}) + "\n")
PY
for model in "$smol" "$work/stories15m"; do
  for loss in spo dpo; do
    out="$work/run-$loss-$(basename "$model")"
    rm -rf "$out"
    /usr/bin/time -o "$out.rss" -f "%M" ./target/release/spo train --model "$model" --data "$work/data.jsonl" --out "$out" \
        --loss "$loss" --steps "$steps" --batch-size 8 --micro-batch-size 8 --max-length 128 --max-prompt-length 32 \
        --beta 0.01 --kl-samples 32 --kl-max-tokens 96 --kl-micro-batch 8 --eval-fraction 0 --save-every 0 \
        --warmup-steps 0 --overwrite >/dev/null 2>"$out.log"
    rss=$(tail -1 "$out.rss")
    python3 - "$out/metrics.jsonl" "$(basename "$model")" "$loss" "$rss" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
steady = [r["step_seconds"] - r.get("kl_sample_seconds", 0.0) for r in rows[1:]]
t = statistics.median(steady)
sample = [r["kl_sample_seconds"] for r in rows if "kl_sample_seconds" in r]
extra = f", KL refresh sampling {sample[0]:.2f} s (every 8 steps)" if sample else ""
print(f"{sys.argv[2]:<40} {sys.argv[3]}: step {t:.2f} s, {16 * 128 / t:.0f} tokens/s, peak RSS {int(sys.argv[4]) / 1e6:.2f} GB{extra}")
PY
  done
done
