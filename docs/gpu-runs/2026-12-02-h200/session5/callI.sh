#!/usr/bin/env bash
# Call I (session 5): binaries at 5521c1b (ExternalHostMemory keeps the driver's registrations).
R=$OUT; export OUT=/tmp/o; rm -rf $OUT; mkdir -p $OUT
here=$(cd "$(dirname "$0")" && pwd)
export KVMEM_STEP_TIMEOUT=150
KVMEM_GPU_STEPS='^(copy-stream GPU tests|transfer-engine GPU tests|block cache GPU data path|pip install kvmem wheel|pytest kvmem \(gpu\))$' \
  bash "$here/run.sh" > $OUT/run-stdout.log 2>&1
PYTHONPATH="$here/pylib" timeout 90 python3 "$here/py/bench/bench_gpu.py" --json $OUT/pybench-i.json > $OUT/python-i.log 2>&1
tar -czf $R/i.tgz -C $OUT .
cp $OUT/summary.txt $OUT/pybench-i.json $R/ 2>/dev/null
