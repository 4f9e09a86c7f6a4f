#!/usr/bin/env bash
# Call F (session 4): staged joins kept inside one pinned storage: GPU tests, pytest, vLLM preset.
R=$OUT; export OUT=/tmp/o; rm -rf $OUT; mkdir -p $OUT
here=$(cd "$(dirname "$0")" && pwd)
export KVMEM_STEP_TIMEOUT=200
KVMEM_GPU_STEPS='^(copy-stream GPU tests|transfer-engine GPU tests|block cache GPU data path|memcheck: transfer-engine tests.*|pip install kvmem wheel|pytest kvmem \(gpu\))$' \
  bash "$here/run.sh" > $OUT/run-stdout.log 2>&1
k="$here/bin/kvmem"
b() { local name="$1"; shift; echo "== $name: kvmem bench $*" >> $OUT/kvbench-f.log; timeout 100 "$k" bench "$@" --out-dir /tmp/kv/$name >> $OUT/kvbench-f.log 2>&1; echo "rc=$?" >> $OUT/kvbench-f.log; }
b vllm-auto --preset vllm --gpu-method auto --iterations 10
tar -czf $R/f.tgz -C $OUT .
cp $OUT/kvbench-f.log $R/ 2>/dev/null; cp $OUT/summary.txt $R/ 2>/dev/null
