#!/usr/bin/env bash
# Regenerates crates/kvmem/kernels/copy.ptx from copy.cu with clang (Debian: apt-get install clang).
# Not part of the build: the PTX is committed, so building kvmem needs no CUDA compiler. If ptxas
# is on PATH (PyPI nvidia-cuda-nvcc-cu12 ships one), the PTX is also assembled for sm_90 as a check.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../crates/kvmem/kernels"
clang -x cuda --cuda-device-only -nocudainc -nocudalib --cuda-gpu-arch=sm_80 -O3 -S \
    -Wno-unknown-cuda-version -o copy.ptx copy.cu
if command -v ptxas >/dev/null; then
    ptxas -arch=sm_90 -v -o /dev/null copy.ptx
fi
echo "wrote $(pwd)/copy.ptx"
