#!/usr/bin/env bash
# Call G (session 5): binaries at e559ba3 (the staged pinned-memory GPU tests share Offload::round_trip).
R=$OUT; export OUT=/tmp/o; rm -rf $OUT; mkdir -p $OUT
here=$(cd "$(dirname "$0")" && pwd)
export KVMEM_STEP_TIMEOUT=200
KVMEM_GPU_STEPS='^(copy-stream GPU tests|transfer-engine GPU tests|block cache GPU data path|memcheck: transfer-engine tests.*|pip install kvmem wheel|pytest kvmem \(gpu\))$' \
  bash "$here/run.sh" > $OUT/run-stdout.log 2>&1
tar -czf $R/g.tgz -C $OUT .
cp $OUT/summary.txt $R/ 2>/dev/null
