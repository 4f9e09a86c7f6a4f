#!/usr/bin/env bash
# Call E (session 6): binaries at a7d7180 (large pinned/device transfers: the head's copies start,
# the rest is planned while they run). GPU tests (the new large-request test among the
# transfer-engine ones), memcheck, pytest, the Python bench; vLLM preset twice, GPU paths once,
# then the vLLM preset with debug timings.
R=$OUT; export OUT=/tmp/o; rm -rf $OUT; mkdir -p $OUT
here=$(cd "$(dirname "$0")" && pwd)
export KVMEM_STEP_TIMEOUT=200
KVMEM_GPU_STEPS='^(copy-stream GPU tests|transfer-engine GPU tests|transfer-engine error tests on the GPU|block cache GPU data path|memcheck: copy-stream tests|memcheck: transfer-engine tests.*|pip install kvmem wheel|pytest kvmem \(gpu\)|kvmem python bench)$' \
  bash "$here/run.sh" > $OUT/run-stdout.log 2>&1
k="$here/bin/kvmem"
b() { local name="$1"; shift; echo "== $name: kvmem bench $*" >> $OUT/kvbench-e.log; timeout 100 "$k" bench "$@" --out-dir /tmp/kv/$name >> $OUT/kvbench-e.log 2>$OUT/dbg-$name.log; echo "rc=$?" >> $OUT/kvbench-e.log; }
b vllm-auto-1 --preset vllm --gpu-method auto --iterations 10
b gpu-auto-1 --paths h2d,d2h,layers-d2h --sizes 4K,16K,2M --gpu-method auto
b vllm-auto-2 --preset vllm --gpu-method auto --iterations 10
RUST_LOG=kvmem=debug b vllm-dbg --preset vllm --gpu-method auto --iterations 5
mkdir -p $OUT/dbg; mv $OUT/dbg-*.log $OUT/dbg/
tar -czf $R/e.tgz -C $OUT .
cp $OUT/summary.txt $OUT/kvbench-e.log $R/ 2>/dev/null; cp $OUT/pybench.json $R/pybench-e.json 2>/dev/null
