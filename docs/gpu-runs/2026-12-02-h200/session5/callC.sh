#!/usr/bin/env bash
# Call C (session 5): binaries at 8c5c214 (planner: buckets read in place, lists sized up front).
# GPU tests, memcheck, pytest, the Python bench; planner bench; kvmem bench GPU paths and vLLM preset, twice each.
R=$OUT; export OUT=/tmp/o; rm -rf $OUT; mkdir -p $OUT
here=$(cd "$(dirname "$0")" && pwd)
export KVMEM_STEP_TIMEOUT=200
KVMEM_GPU_STEPS='^(GPU tests|copy-stream GPU tests|transfer-engine GPU tests|transfer-engine error tests on the GPU|remote transfer tests.*|block cache GPU data path|memcheck: copy-stream tests|memcheck: transfer-engine tests.*|pip install kvmem wheel|pytest kvmem \(gpu\)|kvmem python bench)$' \
  bash "$here/run.sh" > $OUT/run-stdout.log 2>&1
timeout 80 "$here/bin/plan" --bench --measurement-time 1 --warm-up-time 0.3 > $OUT/plan-c.log 2>&1
k="$here/bin/kvmem"
b() { local name="$1"; shift; echo "== $name: kvmem bench $*" >> $OUT/kvbench-c.log; timeout 120 "$k" bench "$@" --out-dir /tmp/kv/$name >> $OUT/kvbench-c.log 2>&1; echo "rc=$?" >> $OUT/kvbench-c.log; }
for i in 1 2; do
  b gpu-auto-$i --paths h2d,d2h,layers-d2h --sizes 4K,16K,2M --gpu-method auto
  b vllm-auto-$i --preset vllm --gpu-method auto --iterations 10
done
tar -czf $R/c.tgz -C $OUT .
cp $OUT/summary.txt $OUT/kvbench-c.log $OUT/plan-c.log $R/ 2>/dev/null; cp $OUT/pybench.json $R/ 2>/dev/null
