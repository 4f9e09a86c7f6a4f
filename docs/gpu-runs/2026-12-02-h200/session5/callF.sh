#!/usr/bin/env bash
# Call F (session 5): binaries at 5373ab7: transfer-engine GPU tests (9), copy-stream tests.
R=$OUT; export OUT=/tmp/o; rm -rf $OUT; mkdir -p $OUT
here=$(cd "$(dirname "$0")" && pwd)
export KVMEM_STEP_TIMEOUT=200
KVMEM_GPU_STEPS='^(copy-stream GPU tests|transfer-engine GPU tests|memcheck: transfer-engine tests.*)$' \
  bash "$here/run.sh" > $OUT/run-stdout.log 2>&1
tar -czf $R/f.tgz -C $OUT .
cp $OUT/summary.txt $R/ 2>/dev/null
