#!/usr/bin/env bash
# Call B (session 6): binaries at 35b0bdf (one pass over a copy list; an onboard's host order in a
# reused index; long kernel lists launch their first eighth first).
R=$OUT; export OUT=/tmp/o; rm -rf $OUT; mkdir -p $OUT
here=$(cd "$(dirname "$0")" && pwd)
export KVMEM_STEP_TIMEOUT=150
KVMEM_GPU_STEPS='^(GPU tests|copy-stream GPU tests|transfer-engine GPU tests|transfer-engine error tests on the GPU|block cache GPU data path|memcheck: copy-stream tests|memcheck: transfer-engine tests.*|pip install kvmem wheel|pytest kvmem \(gpu\)|kvmem python bench)$' \
  bash "$here/run.sh" > $OUT/run-stdout.log 2>&1
k="$here/bin/kvmem"
b() { local name="$1"; shift; echo "== $name: kvmem bench $*" >> $OUT/kvbench-b.log; timeout 100 "$k" bench "$@" --out-dir /tmp/kv/$name >> $OUT/kvbench-b.log 2>$OUT/dbg-$name.log; echo "rc=$?" >> $OUT/kvbench-b.log; }
for i in 1 2; do
  b vllm-auto-$i --preset vllm --gpu-method auto --iterations 10
  b gpu-auto-$i --paths h2d,d2h,layers-d2h --sizes 4K,16K,2M --gpu-method auto
done
RUST_LOG=kvmem=debug,kvmem_cli=debug b vllm-dbg --preset vllm --gpu-method auto --iterations 5
RUST_LOG=kvmem=debug,kvmem_cli=debug b gpu-dbg --paths h2d,d2h,layers-d2h --sizes 4K,16K --gpu-method auto --iterations 5
mkdir -p $OUT/dbg; mv $OUT/dbg-*.log $OUT/dbg/
tar -czf $R/b.tgz -C $OUT .
cp $OUT/summary.txt $OUT/kvbench-b.log $R/ 2>/dev/null; cp $OUT/pybench.json $R/pybench-b.json 2>/dev/null
