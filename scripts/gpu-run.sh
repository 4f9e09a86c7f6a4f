#!/usr/bin/env bash
# Runs on the GPU machine (staged there as .gpu/run.sh by scripts/gpu-build.sh; needs no Rust):
#   1. the GPU tests (`--ignored`) and the no-driver test (driver present there), the transfer
#      engine's error tests on the GPU, and the NIXL remote-transfer tests with GPU memory (the
#      NIXL runtime is packed into .gpu by gpu-build.sh);
#   2. the GPU tests again under compute-sanitizer memcheck (zero errors required), the transfer
#      sweeps with the auto method and with each forced method included;
#   3. the hugetlb test, with 2 MiB pages reserved for it and released afterwards;
#   4. the pinned-allocation benchmark (with 2 MiB hugetlb pages reserved for its hugetlb row),
#      unless KVMEM_SKIP_ALLOC_BENCH=1;
#   5. `kvmem bench` over every path (GPU ones included) with the default (auto) GPU method, and
#      the GPU paths again with each method forced, for the method comparison; then
#      `kvmem bench --preset vllm` (gather/scatter, 16 and 32 KiB chunks) once per method (also
#      in the quick run), tables in kvbench.log, outputs in kvbench.tgz (kvbench/vllm-METHOD);
#   6. the Python package's GPU tests and bench_gpu.py (kvmem vs torch on the same vllm points)
#      into pybench.json.
# KVMEM_GPU_QUICK=1 keeps to what a transfer-engine change needs: the copy-stream and transfer
# GPU tests, memcheck of the transfer sweeps, the planner benchmark, `kvmem bench` over every
# path once and the GPU paths twice more (run-to-run variance), no per-method runs. The full run
# does those too.
# KVMEM_STEP_TIMEOUT=SECONDS bounds each step (default 1800).
# KVMEM_GPU_STEPS=REGEX runs only the steps whose names match (bash extended regex), the others
# are reported SKIPPED: the whole harness no longer fits one device call, so a session runs it in
# parts, e.g. KVMEM_GPU_STEPS='tests|memcheck|soak' then KVMEM_GPU_STEPS='bench'.
# The device tool brings back at most 8 files: the bench outputs beyond the main JSON, plot and
# table are packed into kvbench.tgz.
# Every test is named exactly and each step checks how many tests passed, so a renamed test fails
# the step; a GPU test that no list names fails the run too (else it would never run). Logs go to $OUT (the device tool's output folder), else to .gpu/out. Exits non-zero
# if any step failed; summary.txt lists each step's outcome (SKIPPED for the steps a quick run
# leaves out, memcheck's error summaries under their step's name) and ends with one result line,
# which says "full run" only when nothing was skipped.
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

# The NIXL runtime packed by gpu-build.sh (the GPU machine has no network to install it): the
# wheel built for the driver's CUDA version (nixl-cu13 on a CUDA 13 driver, nixl-cu12 on CUDA 12;
# KVMEM_NIXL_WHEEL overrides), see nixl-runtime.sh.
nixl_note="NIXL runtime: none staged"
# shellcheck source=nixl-runtime.sh
source "$here/nixl-runtime.sh"
flavor=$(kvmem_nixl_flavor)
if [ ! -f "$here/nixl-$flavor.tar.xz" ]; then
    for f in cu13 cu12; do
        if [ -f "$here/nixl-$f.tar.xz" ]; then
            echo "nixl-$flavor not staged; using nixl-$f" >&2
            flavor=$f
            break
        fi
    done
fi
if [ -f "$here/nixl-$flavor.tar.xz" ]; then
    rm -rf "$here/nixl-rt" && mkdir -p "$here/nixl-rt" && tar -xJf "$here/nixl-$flavor.tar.xz" -C "$here/nixl-rt"
    export KVMEM_NIXL_LIB_DIR="$here/nixl-rt/.nixl_$flavor.mesonpy.libs"
    export NIXL_PLUGIN_DIR="$KVMEM_NIXL_LIB_DIR/plugins"
    export UCX_MODULES="${UCX_MODULES-^ib}"
    # UCX's CUDA modules need the wheel's libcudart (so.13 for cu13): from the toolkit or torch's
    # runtime wheel. Without it the memory-type cache takes GPU memory for host memory: then ask
    # the driver instead (UCX_MEMTYPE_CACHE=n).
    cudart=$(kvmem_find_cudart "${flavor#cu}")
    if [ -n "$cudart" ]; then
        export LD_LIBRARY_PATH="$cudart${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    else
        export UCX_MEMTYPE_CACHE="${UCX_MEMTYPE_CACHE-n}"
    fi
    nixl_note="NIXL runtime: nixl-$flavor $KVMEM_NIXL_VERSION (driver CUDA $(kvmem_cuda_major)); libcudart.so.${flavor#cu}: ${cudart:-NOT FOUND}; UCX_MEMTYPE_CACHE=${UCX_MEMTYPE_CACHE-unset}"
fi

# step NAME LOG COMMAND...: runs COMMAND with its output appended to LOG, records the outcome;
# compute-sanitizer's "ERROR SUMMARY" lines from the step go to the summary under the step's name.
# With want=N set for the call (`want=N step ...`), the step also fails unless the test binary
# reported at least N passed tests: tests are named exactly (--exact), so a renamed or removed
# test shows up as a shortfall instead of passing as "0 passed".
step() {
    local name="$1" log="$2"
    shift 2
    if [ -n "${KVMEM_GPU_STEPS:-}" ] && ! [[ "$name" =~ $KVMEM_GPU_STEPS ]]; then
        skipped "$name" "not in KVMEM_GPU_STEPS"
        return 0
    fi
    echo "== $name: $*" | tee -a "$log"
    local t0=$SECONDS tmp
    tmp=$(mktemp)
    # Each step is bounded (KVMEM_STEP_TIMEOUT seconds, default 1800): a hung step fails with
    # exit 124 instead of taking the rest of the device call with it.
    timeout -k 10 "${KVMEM_STEP_TIMEOUT:-1800}" "$@" >"$tmp" 2>&1
    local rc=$?
    cat "$tmp" >>"$log"
    local verdict="ok"
    [ "$rc" -eq 0 ] || { verdict="FAILED (exit $rc)"; failed=1; }
    if [ -n "${want:-}" ]; then
        local ran
        ran=$(grep -Eo '^test result: [A-Za-z]+\. [0-9]+ passed' "$tmp" | awk '{n += $4} END {print n + 0}')
        if [ "$ran" -lt "$want" ]; then
            verdict="FAILED ($ran tests passed, $want expected; exit $rc)"
            failed=1
        else
            verdict="$verdict, $ran tests"
        fi
    fi
    grep -h "ERROR SUMMARY" "$tmp" | awk -v step="$name" '{sub(/^=+ */, ""); print step ": " $0}' | tee -a "$summary"
    rm -f "$tmp"
    echo "$name: $verdict in $((SECONDS - t0)) s" | tee -a "$summary" "$log"
}

# skipped NAME [WHY]: records a step that this run leaves out (quick mode, or KVMEM_GPU_STEPS).
skipped() {
    echo "$1: SKIPPED (${2:-KVMEM_GPU_QUICK=1})" | tee -a "$summary"
    skips=$((skips + 1))
}
skips=0

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
    echo "$nixl_note"
    echo "== kvmem info"
    "$bin/kvmem" info
} >"$out/machine.txt" 2>&1
cat "$out/machine.txt"

sanitizer="$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n1)"

# One test at a time: the out-of-memory tests take the whole device for a moment, and free-memory
# figures are only meaningful without neighbours. (Threads are exercised by the tests themselves.)
quick="${KVMEM_GPU_QUICK:-0}"
# The tests each step runs, by exact name (`--exact`); the counts checked are these lists' lengths.
gpu_errors="error_device_index_out_of_range error_device_out_of_memory_names_the_numbers
    error_registering_pinned_memory_twice error_copies_check_the_device_range
    error_one_copy_cannot_span_two_registrations"
hugetlb=hugetlb_pages_are_used_when_reserved
gpu_all="device_info_describes_the_gpu device_storage_round_trips_and_copies_device_to_device
    pinned_storage_round_trips mapped_pinned_storage_round_trips_across_registration_chunks
    external_pinned_memory_round_trips_and_unregisters_on_drop
    external_device_memory_over_another_owners_allocation_round_trips pool_reserve_survives_synchronize
    pool_allocations_are_distinct_and_round_trip storages_move_between_threads
    background_pinned_storage_is_usable_at_once_and_round_trips
    background_pinned_transfers_wait_for_their_chunks
    background_pinning_wait_times_out_with_a_typed_error compute_load_kernel_matches_the_cpu"
batch_all="scattered_copies_host_device_and_back_by_every_method
    auto_picks_the_kernel_for_small_chunks_and_batches_for_large_ones
    staged_gather_and_scatter_through_the_ring_match_byte_for_byte"
batch_errors=error_empty_and_zero_length_copy_lists_are_refused
sweep_auto=every_layout_pair_over_gpu_tiers_auto
sweep_forced="every_layout_pair_over_gpu_tiers_batched every_layout_pair_over_gpu_tiers_kernel
    every_layout_pair_over_gpu_tiers_per_copy every_layout_pair_over_gpu_tiers_staged"
transfer_all="$sweep_auto $sweep_forced every_layout_pair_pinned_and_disk_each_disk_backend
    a_staged_offload_into_pinned_memory_registered_in_pieces_and_back
    auto_falls_back_to_the_kernel_when_the_staging_ring_cannot_be_allocated
    pinned_memory_kvmem_did_not_pin_is_split_and_joined_by_its_registrations
    large_requests_planned_in_two_parts_by_every_method"
remote_all="write_and_read_between_every_layout_pair notification_arrives_after_the_blocks
    bad_requests_fail_before_anything_moves a_dropped_handle_keeps_the_memory_until_the_transfer_ends
    device_layouts_write_to_and_read_from_a_peer"
errors_gpu="device_paths_refuse_bad_requests_before_anything_moves
    a_stalled_cuda_stream_times_out_and_the_next_transfer_runs_on_a_fresh_stream"
cache_all=llama3_8b_blocks_through_host_and_disk_at_engine_speed
count() { set -- $1; echo $#; }
# named BIN NAMES: every GPU (ignored) test of BIN must be in NAMES, or no step would run it.
named() {
    local binary="$1" names t missing=""
    names=" $(echo $2) "
    for t in $("$binary" --list --ignored 2>/dev/null | sed -n 's/: test$//p'); do
        case "$names" in *" $t "*) ;; *) missing="$missing $t" ;; esac
    done
    if [ -n "$missing" ]; then
        echo "test lists: FAILED: $(basename "$binary") has GPU tests that run.sh names nowhere:$missing" | tee -a "$summary"
        failed=1
    fi
}
named "$bin/cuda_gpu" "$gpu_all $gpu_errors $hugetlb"
named "$bin/cuda_batch_gpu" "$batch_all $batch_errors"
named "$bin/cuda_transfer_gpu" "$transfer_all"
named "$bin/transfer_errors" "$errors_gpu"
named "$bin/transfer_remote" "$remote_all"
named "$bin/cache_gpu" "$cache_all"
# shellcheck disable=SC2086 # the name lists are split on purpose
if [ "$quick" != 1 ]; then
want=$(count "$gpu_all $gpu_errors") step "GPU tests" "$out/tests.log" "$bin/cuda_gpu" --ignored --exact $gpu_all $gpu_errors --test-threads=1
want=1 step "no-driver test (driver present)" "$out/tests.log" "$bin/cuda_no_driver" --exact every_entry_point_reports_a_missing_driver
else
    skipped "GPU tests"
    skipped "no-driver test (driver present)"
fi
want=$(count "$batch_all $batch_errors") step "copy-stream GPU tests" "$out/tests.log" "$bin/cuda_batch_gpu" --ignored --exact $batch_all $batch_errors --test-threads=1
want=$(count "$transfer_all") step "transfer-engine GPU tests" "$out/tests.log" "$bin/cuda_transfer_gpu" --ignored --exact $transfer_all --test-threads=1
want=$(count "$errors_gpu") step "transfer-engine error tests on the GPU" "$out/tests.log" "$bin/transfer_errors" --ignored --exact $errors_gpu --test-threads=1
# NIXL with GPU memory (UCX's CUDA transport), and the host remote tests, on this machine.
want=$(count "$remote_all") step "remote transfer tests (GPU and host)" "$out/tests.log" "$bin/transfer_remote" --include-ignored --exact $remote_all --test-threads=1
want=$(count "$cache_all") step "block cache GPU data path" "$out/tests.log" "$bin/cache_gpu" --ignored --exact $cache_all --nocapture --test-threads=1
# The fault soak with the GPU tier (host <-> device transfers join the mix): KVMEM_SOAK_SECS
# (default 300 s, 60 s in the quick run); its table and its SOAK-JSON line go to tests.log (no
# file of its own: the device tool brings back at most 8).
soak_secs="${KVMEM_SOAK_SECS:-300}"
[ "$quick" = 1 ] && soak_secs="${KVMEM_SOAK_SECS:-60}"
want=1 step "fault soak (${soak_secs} s)" "$out/tests.log" env KVMEM_SOAK_SECS="$soak_secs" \
    "$bin/fault_soak" --exact fault_soak --nocapture

# memcheck STEP TIMEOUT [--report-api-errors no] BIN TESTS...: the named tests under memcheck.
memcheck() {
    local name="$1" limit="$2"
    shift 2
    local api=()
    [ "$1" = "--report-api-errors" ] && { api=(--report-api-errors "$2"); shift 2; }
    local binary="$1"
    shift
    want=$# step "memcheck: $name" "$out/sanitizer.log" timeout "$limit" "$sanitizer" --tool memcheck \
        --leak-check full "${api[@]}" --error-exitcode 99 "$binary" --ignored --exact "$@" --test-threads=1
}
if [ -n "$sanitizer" ]; then
    if [ "$quick" != 1 ]; then
        memcheck "GPU tests" 900 "$bin/cuda_gpu" $gpu_all
        # These tests provoke driver errors on purpose; memcheck still checks memory, not API errors.
        memcheck "error tests" 600 --report-api-errors no "$bin/cuda_gpu" $gpu_errors
        memcheck "copy-stream tests" 600 "$bin/cuda_batch_gpu" $batch_all
        memcheck "copy-stream error tests" 120 --report-api-errors no "$bin/cuda_batch_gpu" $batch_errors
    else
        skipped "memcheck: GPU tests"
        skipped "memcheck: error tests"
        skipped "memcheck: copy-stream tests"
        skipped "memcheck: copy-stream error tests"
    fi
    memcheck "transfer-engine tests (auto)" 400 "$bin/cuda_transfer_gpu" $sweep_auto
    # The forced methods over every GPU tier pair.
    memcheck "transfer-engine tests (forced methods)" 600 "$bin/cuda_transfer_gpu" $sweep_forced
else
    echo "memcheck: NOT RUN (compute-sanitizer not found)" | tee -a "$summary"
    failed=1
fi

pages=/proc/sys/vm/nr_hugepages
before="$(cat "$pages")"
if [ "$quick" = 1 ]; then
    skipped "hugetlb test"
elif echo $((before + 32)) >"$pages" 2>/dev/null && [ "$(awk '/HugePages_Free/ {print $2}' /proc/meminfo)" -ge 24 ]; then
    want=1 step "hugetlb test" "$out/tests.log" "$bin/cuda_gpu" --ignored --exact "$hugetlb"
    echo "$before" >"$pages"
else
    echo "hugetlb test: NOT RUN (could not reserve 2 MiB pages)" | tee -a "$summary"
    echo "$before" >"$pages" 2>/dev/null
    failed=1
fi

step "planner benchmark" "$out/plan.log" "$bin/plan" --bench
# The fixed cost of a small transfer: engine vs CUDA layer vs one bare cuMemcpyDtoDAsync.
step "copy latency" "$out/plan.log" "$bin/copy_latency"

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
# Background pinning (issue 12 item 4): first block usable and fully pinned, per pinning-thread
# count, against cuMemHostAlloc and the fast path of the same size, with a 64 KiB copy's latency
# on another stream meanwhile. THP only (the 64 GiB row is the goal's). About 4-6 minutes.
step "background pinning benchmark" "$out/bench-background.log" "$bin/cuda_pinned_alloc" --background \
    --sizes-gib 8,64 --reps 2 --pin-threads 1,2,4,8 --json "$out/bench-background.json"
sed -n '/^Background pinning/,/^goals (64 GiB)/p' "$out/bench-background.log"
elif [ "$quick" = 1 ]; then
    skipped "benchmark"
else
    echo "benchmark: SKIPPED (KVMEM_SKIP_ALLOC_BENCH=1)" | tee -a "$summary"
    skips=$((skips + 1))
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
    for m in batched kernel per-copy staged; do
        step "kvmem bench (gpu, $m)" "$out/kvbench.log" "$bin/kvmem" bench --paths h2d,d2h,d2d,layers-d2h \
            --gpu-method "$m" --out-dir "$kv/$m"
    done
    runs="$runs batched kernel per-copy staged"
else
    for m in batched kernel per-copy staged; do skipped "kvmem bench (gpu, $m)"; done
fi
# The engines' patterns (issue 12): `--preset vllm` (32 layers x k/v, 16 and 32 KiB chunks,
# layer-separate on the GPU, contiguous pinned on the host, 1 GiB per transfer), gather (the
# offload) and scatter (the onboard), once per GPU method, each point byte-checked and against
# one DMA copy of the same bytes; the tables show submit CPU time per chunk. About 10-20 s each.
for m in auto batched kernel per-copy staged; do
    step "kvmem bench (vllm preset, $m)" "$out/kvbench.log" "$bin/kvmem" bench --preset vllm \
        --gpu-method "$m" --iterations 10 --out-dir "$kv/vllm-$m"
done
runs="$runs vllm-auto vllm-batched vllm-kernel vllm-per-copy vllm-staged"
# Copies beside compute (issue 12 item 3): the same points, and scattered 16 KiB / 2 MiB
# pinned<->device, each block transfer also run beside an SM-saturating FMA kernel on its own
# stream; the tables' last columns: bandwidth beside the kernel and the kernel's slowdown.
for m in auto batched kernel per-copy staged auto-beside-compute; do
    step "kvmem bench (vllm preset with compute, $m)" "$out/kvbench.log" "$bin/kvmem" bench --preset vllm \
        --gpu-method "$m" --iterations 5 --with-compute --out-dir "$kv/vllm-compute-$m"
    step "kvmem bench (gpu with compute, $m)" "$out/kvbench.log" "$bin/kvmem" bench --paths h2d,d2h \
        --patterns scattered --sizes 16K,2M --gpu-method "$m" --iterations 5 --with-compute \
        --out-dir "$kv/compute-$m"
    runs="$runs vllm-compute-$m compute-$m"
done
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
    # kvmem vs plain torch (index_select + copy; copy + index_copy_) on the vllm preset's gather
    # and scatter points (pybench.json: vllm_points), then the older 256-block comparison.
    step "kvmem python bench" "$out/python.log" env PYTHONPATH="$here/pylib" \
        python3 "$here/py/bench/bench_gpu.py" --json "$out/pybench.json"
else
    echo "Python package: NOT RUN (no wheel staged in $here/py/wheels)" | tee -a "$summary"
    skips=$((skips + 1))
fi
commit="$(cat "$here/COMMIT" 2>/dev/null || echo unknown)"
if [ "$failed" -ne 0 ]; then
    echo "result: FAILED (commit $commit): see the FAILED / NOT RUN lines above" >>"$summary"
elif [ "$skips" -gt 0 ]; then
    echo "result: the steps run passed, but $skips steps were SKIPPED (commit $commit): this is not a full GPU run" >>"$summary"
else
    echo "result: full run, every step passed (commit $commit)" >>"$summary"
fi
echo "== summary"
cat "$summary"
exit "$failed"
