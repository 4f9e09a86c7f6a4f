#!/usr/bin/env bash
# Call E (session 5): binaries at bd46d40 (staged joins in pinned memory kvmem did not pin, when one allocation).
# Transfer-engine GPU tests (the new one included) and memcheck, pytest, the Python bench; vLLM preset.
R=$OUT; export OUT=/tmp/o; rm -rf $OUT; mkdir -p $OUT
here=$(cd "$(dirname "$0")" && pwd)
export KVMEM_STEP_TIMEOUT=200
KVMEM_GPU_STEPS='^(copy-stream GPU tests|transfer-engine GPU tests|block cache GPU data path|memcheck: transfer-engine tests.*|pip install kvmem wheel|pytest kvmem \(gpu\)|kvmem python bench)$' \
  bash "$here/run.sh" > $OUT/run-stdout.log 2>&1
k="$here/bin/kvmem"
b() { local name="$1"; shift; echo "== $name: kvmem bench $*" >> $OUT/kvbench-e.log; timeout 120 "$k" bench "$@" --out-dir /tmp/kv/$name >> $OUT/kvbench-e.log 2>&1; echo "rc=$?" >> $OUT/kvbench-e.log; }
b vllm-auto --preset vllm --gpu-method auto --iterations 10
tar -czf $R/e.tgz -C $OUT .
cp $OUT/summary.txt $OUT/kvbench-e.log $R/ 2>/dev/null; cp $OUT/pybench.json $R/e-pybench.json 2>/dev/null
