#!/usr/bin/env bash
# Call A (session 4): staged method after the pipelined packing, priority stream and ring size.
R=$OUT; export OUT=/tmp/o; rm -rf $OUT; mkdir -p $OUT
here=$(cd "$(dirname "$0")" && pwd)
export KVMEM_STEP_TIMEOUT=240
KVMEM_GPU_STEPS='^(copy-stream GPU tests|transfer-engine GPU tests|memcheck: copy-stream tests|memcheck: transfer-engine tests \(forced methods\))$' \
  bash "$here/run.sh" > $OUT/run-stdout.log 2>&1
k="$here/bin/kvmem"
b() { local name="$1"; shift; echo "== $name: kvmem bench $*" >> $OUT/kvbench-a.log; timeout 200 "$k" bench "$@" --out-dir /tmp/kv/$name >> $OUT/kvbench-a.log 2>&1; echo "rc=$?" >> $OUT/kvbench-a.log; }
b vllm-auto --preset vllm --gpu-method auto --iterations 10
b vllm-staged --preset vllm --gpu-method staged --iterations 10
b vllm-staged-256 --preset vllm --gpu-method staged --staging 256M --iterations 10
b vllm-staged-32 --preset vllm --gpu-method staged --staging 32M --iterations 10
b vllm-compute-staged --preset vllm --gpu-method staged --iterations 5 --with-compute
b vllm-compute-staged-256 --preset vllm --gpu-method staged --staging 256M --iterations 5 --with-compute
b vllm-compute-staged-512 --preset vllm --gpu-method staged --staging 512M --iterations 5 --with-compute
b layers-staged --paths layers-d2h --gpu-method staged --sizes 4K,16K,64K --iterations 10
b layers-auto --paths layers-d2h --gpu-method auto --sizes 4K,16K,64K --iterations 10
tar -czf $R/a.tgz -C $OUT .
cp $OUT/kvbench-a.log $R/ 2>/dev/null; cp $OUT/summary.txt $R/ 2>/dev/null
