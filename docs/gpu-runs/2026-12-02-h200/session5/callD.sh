#!/usr/bin/env bash
# Call D (session 5): binaries at 8c5c214. The Python bench twice more; 4 KiB points per method (what limits them).
R=$OUT; export OUT=/tmp/o; rm -rf $OUT; mkdir -p $OUT
here=$(cd "$(dirname "$0")" && pwd)
python3 -m pip install -q --no-deps --no-index --target "$here/pylib" "$here"/py/wheels/*.whl > $OUT/pip.log 2>&1
for i in 1 2; do
  PYTHONPATH="$here/pylib" timeout 150 python3 "$here/py/bench/bench_gpu.py" --json $OUT/pybench-d$i.json > $OUT/python-d$i.log 2>&1; echo "rc=$?" >> $OUT/python-d$i.log
done
k="$here/bin/kvmem"
b() { local name="$1"; shift; echo "== $name: kvmem bench $*" >> $OUT/kvbench-d.log; timeout 120 "$k" bench "$@" --out-dir /tmp/kv/$name >> $OUT/kvbench-d.log 2>&1; echo "rc=$?" >> $OUT/kvbench-d.log; }
for m in kernel batched staged; do
  b gpu-$m-4k --paths h2d,d2h --sizes 4K,2M --gpu-method $m
done
tar -czf $R/d.tgz -C $OUT .
cp $OUT/kvbench-d.log $OUT/pybench-d1.json $OUT/pybench-d2.json $R/ 2>/dev/null
