#!/usr/bin/env bash
# Runs the host-side tests (storages, views, arena, tensor descriptors, the spec) under valgrind
# memcheck: zero errors and zero definite leaks, or a non-zero exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh
# shellcheck source=env.sh
source scripts/env.sh
command -v valgrind >/dev/null || { echo "valgrind not found: apt-get install -y valgrind" >&2; exit 1; }

# The library's unit tests and the host-only integration tests; cuda_no_driver checks that CUDA
# entry points fail cleanly where libcuda is missing. Tests that load NIXL (names containing
# "nixl": the nixl:: unit tests, the NIXL POSIX disk-backend variants) are skipped: under valgrind
# the dynamic loader reports false reads while NIXL's plugins are dlopened, and UCX's threads and
# the deliberate leak after a failed NIXL request are noise. Tests of the quarantine (names
# containing "quarantine") leak a plan on purpose, as a stalled backend's buffers are, and are
# skipped too. They all run in scripts/test.sh.
targets=(--lib --test host_disk --test host_props --test spec_external --test cuda_no_driver
    --test transfer_errors --test transfer_roundtrip)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
bins=$(cargo test -p kvmem --locked --no-run --message-format=json "${targets[@]}" 2>"$log" |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])') || { cat "$log" >&2; exit 1; }
[ -n "$bins" ] || { echo "valgrind.sh: no test binaries found" >&2; exit 1; }
export PROPTEST_CASES="${PROPTEST_CASES:-24}"
status=0
for bin in $bins; do
    echo "== valgrind: $(basename "$bin")"
    if ! valgrind --quiet --error-exitcode=97 --leak-check=full --show-leak-kinds=definite \
        --errors-for-leak-kinds=definite "$bin" --test-threads=2 -q --skip nixl --skip quarantine; then
        echo "valgrind.sh: FAILED: $bin" >&2
        status=1
    fi
done
exit $status
