#!/usr/bin/env bash
# Regenerates crates/kvmem/kernels/*.ptx (the copy kernel, copy.cu, and the compute load of
# `kvmem bench --with-compute`, compute.cu) with clang (Debian: apt-get install clang).
# Not part of the build: the PTX is committed, so building kvmem needs no CUDA compiler. If ptxas
# is on PATH (PyPI nvidia-cuda-nvcc-cu12 ships one), the PTX is also assembled for sm_90 as a check.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../crates/kvmem/kernels"
for kernel in copy compute; do
    clang -x cuda --cuda-device-only -nocudainc -nocudalib --cuda-gpu-arch=sm_80 -O3 -S \
        -Wno-unknown-cuda-version -o "$kernel.ptx" "$kernel.cu"
    if command -v ptxas >/dev/null; then
        ptxas -arch=sm_90 -v -o /dev/null "$kernel.ptx"
    fi
    echo "wrote $(pwd)/$kernel.ptx"
done
