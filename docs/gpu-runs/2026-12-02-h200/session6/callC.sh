#!/usr/bin/env bash
# Call C (session 6): binaries at 35b0bdf, as call B: more runs of the vLLM preset, the GPU paths
# and the Python bench, for the spread.
R=$OUT; export OUT=/tmp/o; rm -rf $OUT; mkdir -p $OUT
here=$(cd "$(dirname "$0")" && pwd)
k="$here/bin/kvmem"
b() { local name="$1"; shift; echo "== $name: kvmem bench $*" >> $OUT/kvbench-c.log; timeout 100 "$k" bench "$@" --out-dir /tmp/kv/$name >> $OUT/kvbench-c.log 2>&1; echo "rc=$?" >> $OUT/kvbench-c.log; }
for i in 1 2 3; do b vllm-auto-$i --preset vllm --gpu-method auto --iterations 10; done
b gpu-auto-3 --paths h2d,d2h,layers-d2h --sizes 4K,16K,2M --gpu-method auto
rm -rf "$here/pylib"; python3 -m pip install -q --no-deps --no-index --target "$here/pylib" "$here"/py/wheels/kvmem-*.whl > $OUT/python-c.log 2>&1
PYTHONPATH="$here/pylib" timeout 90 python3 "$here/py/bench/bench_gpu.py" --json $OUT/pybench-c.json >> $OUT/python-c.log 2>&1
tar -czf $R/c.tgz -C $OUT .
cp $OUT/kvbench-c.log $OUT/pybench-c.json $R/ 2>/dev/null
