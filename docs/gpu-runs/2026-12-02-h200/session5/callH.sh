#!/usr/bin/env bash
# Call H (session 5): binaries at bddef02 (pinned_ranges: copies split and joins bounded by the driver's registrations).
R=$OUT; export OUT=/tmp/o; rm -rf $OUT; mkdir -p $OUT
here=$(cd "$(dirname "$0")" && pwd)
export KVMEM_STEP_TIMEOUT=200
KVMEM_GPU_STEPS='^(GPU tests|copy-stream GPU tests|transfer-engine GPU tests|block cache GPU data path|memcheck: transfer-engine tests.*|pip install kvmem wheel|pytest kvmem \(gpu\))$' \
  bash "$here/run.sh" > $OUT/run-stdout.log 2>&1
for i in 1; do
  PYTHONPATH="$here/pylib" timeout 100 python3 "$here/py/bench/bench_gpu.py" --json $OUT/pybench-h.json > $OUT/python-h.log 2>&1
done
tar -czf $R/h.tgz -C $OUT .
cp $OUT/summary.txt $OUT/pybench-h.json $R/ 2>/dev/null
