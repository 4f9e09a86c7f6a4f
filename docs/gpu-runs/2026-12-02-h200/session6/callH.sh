#!/usr/bin/env bash
# Call H (session 6): binaries at the last library commit (the bounce-buffer paths moved, unchanged,
# to transfer/gpu/bounce.rs): the transfer-engine, copy-stream and cache GPU tests, memcheck of the
# transfer-engine tests; the vLLM preset, the GPU paths and the vLLM preset beside compute, their
# JSON, tables and plots kept (kv-*/).
R=$OUT; export OUT=/tmp/o; rm -rf $OUT; mkdir -p $OUT
here=$(cd "$(dirname "$0")" && pwd)
export KVMEM_STEP_TIMEOUT=150
KVMEM_GPU_STEPS='^(copy-stream GPU tests|transfer-engine GPU tests|block cache GPU data path|memcheck: transfer-engine tests.*)$' \
  bash "$here/run.sh" > $OUT/run-stdout.log 2>&1
k="$here/bin/kvmem"
b() { local name="$1"; shift; echo "== $name: kvmem bench $*" >> $OUT/kvbench-h.log; timeout 120 "$k" bench "$@" --out-dir $OUT/kv-$name >> $OUT/kvbench-h.log 2>&1; echo "rc=$?" >> $OUT/kvbench-h.log; }
b vllm --preset vllm --gpu-method auto --iterations 10
b gpu --paths h2d,d2h,layers-d2h --sizes 4K,16K,2M --gpu-method auto
b vllm-compute --preset vllm --gpu-method auto --with-compute --iterations 5
tar -czf $R/h.tgz -C $OUT .
cp $OUT/summary.txt $OUT/kvbench-h.log $R/ 2>/dev/null
