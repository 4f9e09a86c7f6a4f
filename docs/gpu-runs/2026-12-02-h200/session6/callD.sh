#!/usr/bin/env bash
# Call D (session 6): binaries at faa2ec4 (the copy kernel's code moved to batch/kernel.rs,
# unchanged): the copy-stream and transfer-engine GPU tests, memcheck of both, the cache GPU
# test, and the vLLM preset once.
R=$OUT; export OUT=/tmp/o; rm -rf $OUT; mkdir -p $OUT
here=$(cd "$(dirname "$0")" && pwd)
export KVMEM_STEP_TIMEOUT=150
KVMEM_GPU_STEPS='^(copy-stream GPU tests|transfer-engine GPU tests|block cache GPU data path|memcheck: copy-stream tests|memcheck: transfer-engine tests.*)$' \
  bash "$here/run.sh" > $OUT/run-stdout.log 2>&1
echo "== vllm-auto: kvmem bench --preset vllm --gpu-method auto --iterations 10" > $OUT/kvbench-d.log
timeout 100 "$here/bin/kvmem" bench --preset vllm --gpu-method auto --iterations 10 --out-dir /tmp/kv/vllm >> $OUT/kvbench-d.log 2>&1
tar -czf $R/d.tgz -C $OUT .
cp $OUT/summary.txt $OUT/kvbench-d.log $R/ 2>/dev/null
