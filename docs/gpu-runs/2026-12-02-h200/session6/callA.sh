#!/usr/bin/env bash
# Call A (session 6): binaries at the session's first commit (debug timings of the GPU submission).
# The fifth session's last two commits on the GPU: copy-stream, transfer-engine (9), cache GPU tests,
# pytest; then vLLM preset and GPU paths with RUST_LOG=kvmem=debug timings; ring sizes.
R=$OUT; export OUT=/tmp/o; rm -rf $OUT; mkdir -p $OUT
here=$(cd "$(dirname "$0")" && pwd)
export KVMEM_STEP_TIMEOUT=150
KVMEM_GPU_STEPS='^(copy-stream GPU tests|transfer-engine GPU tests|block cache GPU data path|pip install kvmem wheel|pytest kvmem \(gpu\))$' \
  bash "$here/run.sh" > $OUT/run-stdout.log 2>&1
k="$here/bin/kvmem"
b() { local name="$1"; shift; echo "== $name: kvmem bench $*" >> $OUT/kvbench-a.log; timeout 100 "$k" bench "$@" --out-dir /tmp/kv/$name >> $OUT/kvbench-a.log 2>$OUT/dbg-$name.log; echo "rc=$?" >> $OUT/kvbench-a.log; }
b vllm-auto --preset vllm --gpu-method auto --iterations 10
RUST_LOG=kvmem=debug b vllm-dbg --preset vllm --gpu-method auto --iterations 5
RUST_LOG=kvmem=debug b gpu-dbg --paths h2d,d2h,layers-d2h --sizes 4K,16K --gpu-method auto --iterations 5
b vllm-ring512 --preset vllm --gpu-method auto --iterations 10 --staging 512M
b vllm-ring1g --preset vllm --gpu-method auto --iterations 10 --staging 1G
b vllm-ring128 --preset vllm --gpu-method auto --iterations 10 --staging 128M
mkdir -p $OUT/dbg; mv $OUT/dbg-*.log $OUT/dbg/
tar -czf $R/a.tgz -C $OUT .
cp $OUT/summary.txt $OUT/kvbench-a.log $R/ 2>/dev/null
