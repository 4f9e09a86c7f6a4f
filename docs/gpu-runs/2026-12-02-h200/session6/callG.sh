#!/usr/bin/env bash
# Call G (session 6): binaries at 20925f6 (two-part planning split as listed only for sources in
# ascending order, else in destination order). GPU tests, memcheck, pytest; vLLM preset once, GPU
# paths twice.
R=$OUT; export OUT=/tmp/o; rm -rf $OUT; mkdir -p $OUT
here=$(cd "$(dirname "$0")" && pwd)
export KVMEM_STEP_TIMEOUT=200
KVMEM_GPU_STEPS='^(copy-stream GPU tests|transfer-engine GPU tests|transfer-engine error tests on the GPU|block cache GPU data path|memcheck: copy-stream tests|memcheck: transfer-engine tests.*|pip install kvmem wheel|pytest kvmem \(gpu\))$' \
  bash "$here/run.sh" > $OUT/run-stdout.log 2>&1
k="$here/bin/kvmem"
b() { local name="$1"; shift; echo "== $name: kvmem bench $*" >> $OUT/kvbench-g.log; timeout 100 "$k" bench "$@" --out-dir /tmp/kv/$name >> $OUT/kvbench-g.log 2>&1; echo "rc=$?" >> $OUT/kvbench-g.log; }
b gpu-auto-1 --paths h2d,d2h,layers-d2h --sizes 4K,16K,2M --gpu-method auto
b vllm-auto-1 --preset vllm --gpu-method auto --iterations 10
b gpu-auto-2 --paths h2d,d2h,layers-d2h --sizes 4K,16K,2M --gpu-method auto
tar -czf $R/g.tgz -C $OUT .
cp $OUT/summary.txt $OUT/kvbench-g.log $R/ 2>/dev/null
