#!/usr/bin/env bash
# Runs on the GPU machine (staged there as .gpu/run.sh by scripts/gpu-build.sh; needs no Rust):
#   1. the GPU tests (`--ignored`) and the no-driver test (driver present there), and the NIXL
#      remote-transfer tests with GPU memory (the NIXL runtime is packed into .gpu by gpu-build.sh);
#   2. the GPU tests again under compute-sanitizer memcheck (zero errors required);
#   3. the hugetlb test, with 2 MiB pages reserved for it and released afterwards;
#   4. the pinned-allocation benchmark (with 2 MiB hugetlb pages reserved for its hugetlb row),
#      unless KVMEM_SKIP_ALLOC_BENCH=1;
#   5. `kvmem bench` over every path (GPU ones included) with the default (auto) GPU method, and
#      the GPU paths again with each method forced, for the method comparison.
# KVMEM_GPU_QUICK=1 keeps to what a transfer-engine change needs: the copy-stream and transfer
# GPU tests, memcheck of the transfer tests, the planner benchmark, `kvmem bench` over every
# path once and the GPU paths twice more (run-to-run variance), no per-method runs. The full run
# does those too.
# The device tool brings back at most 8 files: the bench outputs beyond the main JSON, plot and
# table are packed into kvbench.tgz.
# Logs go to $OUT (the device tool's output folder), else to .gpu/out. Exits non-zero if any
# step failed; summary.txt lists each step's outcome.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="$here/bin"
out="${OUT:-$here/out}"
mkdir -p "$out"
export RUST_BACKTRACE=1
# The static fio staged next to kvmem: `kvmem bench` compares its disk points with it.
export PATH="$bin:$PATH"
summary="$out/summary.txt"
: >"$summary"
failed=0

# The NIXL runtime packed by gpu-build.sh (the GPU machine has no network to install it).
if [ -f "$here/nixl.tar.xz" ]; then
    rm -rf "$here/nixl-rt" && mkdir -p "$here/nixl-rt" && tar -xJf "$here/nixl.tar.xz" -C "$here/nixl-rt"
    export KVMEM_NIXL_LIB_DIR="$here/nixl-rt/.nixl_cu12.mesonpy.libs"
    export NIXL_PLUGIN_DIR="$KVMEM_NIXL_LIB_DIR/plugins"
    export UCX_MODULES="${UCX_MODULES-^ib}"
    # No libcudart.so.12 here (CUDA 13): without the cache UCX recognises GPU memory.
    export UCX_MEMTYPE_CACHE="${UCX_MEMTYPE_CACHE-n}"
fi

# step NAME LOG COMMAND...: runs COMMAND with its output appended to LOG, records the outcome.
step() {
    local name="$1" log="$2"
    shift 2
    echo "== $name: $*" | tee -a "$log"
    local t0=$SECONDS
    "$@" >>"$log" 2>&1
    local rc=$?
    local verdict="ok"
    [ "$rc" -eq 0 ] || { verdict="FAILED (exit $rc)"; failed=1; }
    echo "$name: $verdict in $((SECONDS - t0)) s" | tee -a "$summary" "$log"
}

{
    echo "commit: $(cat "$here/COMMIT" 2>/dev/null || echo unknown)"
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    uname -a
    echo "cpus: $(nproc)"
    nvidia-smi --query-gpu=name,memory.total,driver_version,pci.bus_id --format=csv
    nvidia-smi | head -n 4
    echo "THP: $(cat /sys/kernel/mm/transparent_hugepage/enabled)"
    echo "THP defrag: $(cat /sys/kernel/mm/transparent_hugepage/defrag)"
    grep -E 'MemTotal|MemAvailable|HugePages_|Hugepagesize' /proc/meminfo
    echo "NUMA nodes: $(ls -d /sys/devices/system/node/node* 2>/dev/null | xargs -n1 basename | tr '\n' ' ')"
    echo "memlock limit: $(ulimit -l)"
    echo "== kvmem info"
    "$bin/kvmem" info
} >"$out/machine.txt" 2>&1
cat "$out/machine.txt"

sanitizer="$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n1)"

# One test at a time: the out-of-memory tests take the whole device for a moment, and free-memory
# figures are only meaningful without neighbours. (Threads are exercised by the tests themselves.)
quick="${KVMEM_GPU_QUICK:-0}"
if [ "$quick" != 1 ]; then
step "GPU tests" "$out/tests.log" "$bin/cuda_gpu" --ignored --skip hugetlb_ --test-threads=1
step "no-driver test (driver present)" "$out/tests.log" "$bin/cuda_no_driver"
fi
step "copy-stream GPU tests" "$out/tests.log" "$bin/cuda_batch_gpu" --ignored --test-threads=1
step "transfer-engine GPU tests" "$out/tests.log" "$bin/cuda_transfer_gpu" --ignored --test-threads=1
# NIXL with GPU memory (UCX's CUDA transport), and the host remote tests, on this machine.
step "remote transfer tests (GPU and host)" "$out/tests.log" "$bin/transfer_remote" --include-ignored --test-threads=1
step "block cache GPU data path" "$out/tests.log" "$bin/cache_gpu" --ignored --nocapture --test-threads=1

if [ -n "$sanitizer" ] && [ "$quick" = 1 ]; then
    step "memcheck: transfer-engine tests" "$out/sanitizer.log" timeout 400 "$sanitizer" --tool memcheck \
        --leak-check full --error-exitcode 99 "$bin/cuda_transfer_gpu" --ignored every_layout_pair_over_gpu_tiers_auto --test-threads=1
    grep -E "ERROR SUMMARY" "$out/sanitizer.log" | tee -a "$summary"
elif [ -n "$sanitizer" ]; then
    step "memcheck: GPU tests" "$out/sanitizer.log" "$sanitizer" --tool memcheck --leak-check full \
        --error-exitcode 99 "$bin/cuda_gpu" --ignored --skip error_ --skip hugetlb_ --test-threads=1
    # These tests provoke driver errors on purpose; memcheck still checks memory, not API errors.
    step "memcheck: error tests" "$out/sanitizer.log" "$sanitizer" --tool memcheck --leak-check full \
        --report-api-errors no --error-exitcode 99 "$bin/cuda_gpu" --ignored error_ --test-threads=1
    step "memcheck: copy-stream tests" "$out/sanitizer.log" timeout 300 "$sanitizer" --tool memcheck \
        --leak-check full --error-exitcode 99 "$bin/cuda_batch_gpu" --ignored --skip error_ --test-threads=1
    step "memcheck: copy-stream error tests" "$out/sanitizer.log" timeout 120 "$sanitizer" --tool memcheck \
        --leak-check full --report-api-errors no --error-exitcode 99 "$bin/cuda_batch_gpu" --ignored error_ --test-threads=1
    step "memcheck: transfer-engine tests" "$out/sanitizer.log" timeout 400 "$sanitizer" --tool memcheck \
        --leak-check full --error-exitcode 99 "$bin/cuda_transfer_gpu" --ignored every_layout_pair_over_gpu_tiers_auto --test-threads=1
    grep -E "ERROR SUMMARY" "$out/sanitizer.log" | tee -a "$summary"
else
    echo "memcheck: NOT RUN (compute-sanitizer not found)" | tee -a "$summary"
    failed=1
fi

pages=/proc/sys/vm/nr_hugepages
before="$(cat "$pages")"
if [ "$quick" = 1 ]; then
    :
elif echo $((before + 32)) >"$pages" 2>/dev/null && [ "$(awk '/HugePages_Free/ {print $2}' /proc/meminfo)" -ge 24 ]; then
    step "hugetlb test" "$out/tests.log" "$bin/cuda_gpu" --ignored hugetlb_
    echo "$before" >"$pages"
else
    echo "hugetlb test: NOT RUN (could not reserve 2 MiB pages)" | tee -a "$summary"
    echo "$before" >"$pages" 2>/dev/null
    failed=1
fi

step "planner benchmark" "$out/plan.log" "$bin/plan" --bench

if [ "${KVMEM_SKIP_ALLOC_BENCH:-0}" != 1 ] && [ "$quick" != 1 ]; then
# The benchmark measures the fast path on THP (the machine as found) and, with 2 MiB hugetlb
# pages reserved for it here (enough for its largest size), on hugetlb too; released afterwards.
reserve="${KVMEM_BENCH_HUGEPAGES:-4200}"
before="$(cat "$pages")"
echo $((before + reserve)) >"$pages" 2>/dev/null ||
    echo "benchmark: could not reserve $reserve hugetlb pages; hugetlb row skipped" | tee -a "$summary"
echo "hugetlb pages for the benchmark: $(awk '/HugePages_Free/ {print $2}' /proc/meminfo) free" >>"$out/bench.log"
step "benchmark" "$out/bench.log" "$bin/cuda_pinned_alloc" --json "$out/bench.json"
echo "$before" >"$pages" 2>/dev/null
sed -n '/^Pinned allocation/,/^goal: fast-path/p' "$out/bench.log"
fi

# kvmem bench: every path this machine has, auto GPU method; then the GPU paths per method.
kv="$here/kvbench"
rm -rf "$kv"
mkdir -p "$kv"
step "kvmem bench (all paths)" "$out/kvbench.log" "$bin/kvmem" bench --out-dir "$kv/auto" --disk-dir /tmp
# The GPU paths twice more with the default method (run-to-run variance); in the full run also
# once per forced method (the method comparison).
runs="auto-2 auto-3"
for r in $runs; do
    step "kvmem bench (gpu, $r)" "$out/kvbench.log" "$bin/kvmem" bench --paths h2d,d2h,d2d,layers-d2h \
        --out-dir "$kv/$r"
done
# The two disk backends at 1 MiB, three more times (each point times both, interleaved).
for r in 1 2 3; do
    step "kvmem bench (disk backends, $r)" "$out/kvbench.log" "$bin/kvmem" bench \
        --paths disk-write,disk-read --sizes 1M --iterations 10 --disk-dir /tmp --out-dir "$kv/disk-$r"
done
runs="$runs disk-1 disk-2 disk-3"
if [ "$quick" != 1 ]; then
    for m in batched kernel per-copy; do
        step "kvmem bench (gpu, $m)" "$out/kvbench.log" "$bin/kvmem" bench --paths h2d,d2h,d2d,layers-d2h \
            --gpu-method "$m" --out-dir "$kv/$m"
    done
    runs="$runs batched kernel per-copy"
fi
cp "$kv/auto/bench.json" "$out/kvbench.json" 2>/dev/null
cp "$kv/auto/bench.svg" "$out/kvbench.svg" 2>/dev/null
cp "$kv/auto/bench.png" "$out/kvbench.png" 2>/dev/null
for m in auto $runs; do
    echo "== $m" >>"$out/kvbench.log"
    cat "$kv/$m/table.txt" >>"$out/kvbench.log" 2>/dev/null
done
tar -czf "$out/kvbench.tgz" -C "$here" kvbench

# The Python package with torch/CuPy: its GPU tests and the side-by-side benchmark.
if [ -d "$here/py/wheels" ]; then
    rm -rf "$here/pylib"
    step "pip install kvmem wheel" "$out/python.log" python3 -m pip install -q --no-deps --no-index \
        --target "$here/pylib" "$here"/py/wheels/kvmem-*.whl
    step "pytest kvmem (gpu)" "$out/python.log" env PYTHONPATH="$here/pylib" KVMEM_GPU_TESTS=1 \
        python3 -m pytest -q -rs -p no:cacheprovider "$here/py/tests"
    step "kvmem python bench" "$out/python.log" env PYTHONPATH="$here/pylib" \
        python3 "$here/py/bench/bench_gpu.py" --json "$out/pybench.json"
fi
echo "== summary"
cat "$summary"
exit "$failed"
