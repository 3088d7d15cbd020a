#!/usr/bin/env bash
# Builds `spo` with `--features cuda` on a machine with no GPU and no CUDA toolkit
# (the facts behind each step: ../shared/notes/cuda-build.md).
#
#   scripts/build-cuda.sh            # → target-cuda/release/spo (+ .cuda/stub/libcuda.so.1)
#
# Target: NVIDIA H100/H200 (compute capability 9.0) with a CUDA 13.0 driver (≥ 580).
# Everything goes into git-ignored folders: .cuda/ (the toolkit from PyPI, ~1.2 GB,
# and a generated driver stub) and target-cuda/ (the build, ~17 min from empty on
# 2 cores). Reruns reuse both.
#
# The binary links libcuda.so.1 (candle's cudarc uses dynamic linking). Here it
# starts with the stub on LD_LIBRARY_PATH and says no GPU is present when asked for
# cuda; on the GPU machine put the real driver and the CUDA 13 runtime libraries
# (its Python environment's site-packages/nvidia/cu13/lib) on the path instead,
# never the stub (scripts/gpu-check.sh does this).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD/.cuda"
toolkit="$root/toolkit/nvidia/cu13"
python="${PYTHON:-python3}"

# 1. The CUDA 13.0 compiler, headers and link-time libraries, from PyPI.
if [ ! -x "$toolkit/bin/nvcc" ] || [ ! -e "$toolkit/lib/libcublas.so.13" ]; then
    "$python" -m pip install --quiet --disable-pip-version-check --no-deps --target "$root/toolkit" \
        nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
        nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 \
        nvidia-cuda-nvrtc==13.0.88 nvidia-curand==10.4.0.35 nvidia-cublas==13.0.2.14
fi
# The wheels lack lib64 and the unversioned names the linker looks for.
ln -sfn lib "$toolkit/lib64"
for lib in cudart nvrtc curand cublas cublasLt; do
    versioned=$(find "$toolkit/lib" -maxdepth 1 -name "lib$lib.so.[0-9]*" | sort | head -n1)
    [ -n "$versioned" ] || { echo "build-cuda: lib$lib.so.* missing from $toolkit/lib" >&2; exit 1; }
    ln -sfn "$(basename "$versioned")" "$toolkit/lib/lib$lib.so"
done

# 2. A libcuda.so.1 stub to link against (and to start the binary here): every
#    driver entry point cudarc declares returns CUDA_ERROR_STUB_LIBRARY (34).
cargo fetch --quiet  # downloads the .crate files; cargo unpacks them only when building
cudarc=$(grep -A1 '^name = "cudarc"' Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')
crate=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/cache" -name "cudarc-$cudarc.crate" | head -n1)
[ -n "$crate" ] || { echo "build-cuda: cudarc-$cudarc.crate not found after cargo fetch" >&2; exit 1; }
mkdir -p "$root/stub"
tar -xzf "$crate" -C "$root/stub" "cudarc-$cudarc/src/driver/sys/mod.rs"
grep -ohE '\bcu[A-Z][A-Za-z0-9_]*\b' "$root/stub/cudarc-$cudarc/src/driver/sys/mod.rs" | sort -u |
    awk '{ printf "int %s(void) { return 34; }\n", $1 }' >"$root/stub/libcuda_stub.c"
gcc -shared -fPIC -O0 -Wl,-soname,libcuda.so.1 -o "$root/stub/libcuda.so.1" "$root/stub/libcuda_stub.c"
ln -sfn libcuda.so.1 "$root/stub/libcuda.so"

# 3. The build.
export CUDA_HOME="$toolkit" CUDA_PATH="$toolkit" CUDA_ROOT="$toolkit" CUDA_COMPUTE_CAP=90
export PATH="$toolkit/bin:$PATH"
export LIBRARY_PATH="$toolkit/lib:$root/stub${LIBRARY_PATH:+:$LIBRARY_PATH}"
export LD_LIBRARY_PATH="$toolkit/lib:$root/stub${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export RUSTFLAGS="${RUSTFLAGS:-} -L native=$toolkit/lib -L native=$root/stub"
cargo build --release --features cuda --target-dir target-cuda --bin spo

# 4. It starts here (stub on the loader path) and says plainly that no GPU answers.
echo "built target-cuda/release/spo; here it answers:"
LD_LIBRARY_PATH="$toolkit/lib:$root/stub" target-cuda/release/spo bench parity --device cuda || true

# 5. What travels to the GPU machine (scripts/gpu-check.sh unpacks it there).
mkdir -p dist
strip -o dist/spo-cuda target-cuda/release/spo
xz -1 -f dist/spo-cuda
ls -l dist/spo-cuda.xz
