#!/usr/bin/env bash
# Builds the GPU tests, the pinned-allocation and planner benchmarks and the kvmem CLI, packs the
# NIXL runtime from the venv, builds a static fio (Debian's source), here (release mode, line tables only)
# and stages them, with the runner scripts/gpu-run.sh as run.sh, in a git-ignored folder that is
# carried to the GPU machine. There, `bash .gpu/run.sh` runs everything and writes logs to $OUT.
#
# Usage: scripts/gpu-build.sh [STAGE_DIR]      (default: .gpu in this checkout)
# The device tool sends only the checkout a session started in; from another worktree, stage
# into that checkout's .gpu, e.g. scripts/gpu-build.sh /work/main/.gpu
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh >/dev/null
# shellcheck source=env.sh
source scripts/env.sh
stage="${1:-$PWD/.gpu}"
limit=$((60 << 20)) # the device tool carries at most 64 MiB in all

artifacts() {
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["target"]["name"], m["executable"])'
}

log=$(mktemp)
trap 'rm -f "$log"' EXIT
list=$( {
    cargo test --release -p kvmem --locked --no-run --message-format=json \
        --test cuda_gpu --test cuda_no_driver --test cuda_batch_gpu --test cuda_transfer_gpu \
        --test transfer_remote --test cache_gpu
    cargo bench -p kvmem --locked --no-run --message-format=json --bench cuda_pinned_alloc --bench plan
    cargo build --release -p kvmem-cli --locked --message-format=json --bin kvmem
} 2>"$log" | artifacts) || { cat "$log" >&2; exit 1; }
[ -n "$list" ] || { cat "$log" >&2; echo "gpu-build.sh: no binaries built" >&2; exit 1; }

rm -rf "$stage"
mkdir -p "$stage/bin"
while read -r name exe; do
    # Keep the line tables (for backtraces) but compress them: the carry limit is tight.
    case "$name" in
    # Benchmarks need no backtraces: drop their line tables, the carry limit is tight.
    plan | cuda_pinned_alloc) objcopy --strip-debug "$exe" "$stage/bin/$name" ;;
    *) objcopy --compress-debug-sections=zlib "$exe" "$stage/bin/$name" ;;
    esac
done <<<"$list"
for want in cuda_gpu cuda_no_driver cuda_batch_gpu cuda_transfer_gpu transfer_remote cache_gpu cuda_pinned_alloc plan kvmem; do
    [ -x "$stage/bin/$want" ] || { echo "gpu-build.sh: $want was not built" >&2; exit 1; }
done
# The NIXL runtime (UCX and POSIX plugins, the libraries they load, UCX's modules), packed from
# the venv with its directory structure (the libraries find each other through $ORIGIN rpaths);
# run.sh unpacks it and points KVMEM_NIXL_LIB_DIR at it. About 10 MiB compressed.
site=$(ls -d "$PWD"/.venv/lib/python3*/site-packages | head -n1)
(
    cd "$site"
    meson=.nixl_cu12.mesonpy.libs
    roots=("$meson"/libnixl_capi.so "$meson"/plugins/libplugin_UCX.so "$meson"/plugins/libplugin_POSIX.so nixl_cu12.libs/ucx/*.so*)
    {
        LD_LIBRARY_PATH="$site/$meson:$site/nixl_cu12.libs" ldd "${roots[@]}" 2>/dev/null |
            awk '/=> \// {print $3}' | grep -F "$site/" | xargs -r realpath --relative-to="$site"
        printf '%s\n' "$meson"/*.so* "${roots[@]}"
    } | sort -u >"$log.nixl"
    tar -cJf "$stage/nixl.tar.xz" -T "$log.nixl"
    rm -f "$log.nixl"
)
# fio, for `kvmem bench`'s disk comparison (the GPU machine has none and no network): built
# here once from Debian's source tarball as a static binary (its io_uring engine needs no
# library), cached under target/.
fio_version=3.33
fio_dir="$PWD/target/fio-$fio_version"
if [ ! -x "$fio_dir/fio" ]; then
    mkdir -p target
    curl -fsSL "https://deb.debian.org/debian/pool/main/f/fio/fio_$fio_version.orig.tar.gz" |
        tar -xz -C target
    (cd "$fio_dir" && ./configure --build-static --disable-native >/dev/null && make -j"$(nproc)" fio >/dev/null)
fi
strip -o "$stage/bin/fio" "$fio_dir/fio"
# The Python package: one abi3 wheel (CPython 3.10+, self-contained; NIXL is found at run time),
# its tests and its benchmark, for run.sh's Python step.
rm -rf "$stage/py" && mkdir -p "$stage/py"
.venv/bin/maturin build --release --quiet -m crates/kvmem-py/Cargo.toml -o "$stage/py/wheels"
cp -r crates/kvmem-py/tests crates/kvmem-py/bench crates/kvmem-py/pyproject.toml "$stage/py/"
cp scripts/gpu-run.sh "$stage/run.sh"
chmod +x "$stage/run.sh"
git rev-parse HEAD >"$stage/COMMIT" 2>/dev/null || true
size=$(du -sb "$stage" | cut -f1)
if [ "$size" -gt "$limit" ]; then
    echo "gpu-build.sh: $stage is $((size >> 20)) MiB, over the $((limit >> 20)) MiB the device tool carries" >&2
    exit 1
fi
echo "staged in $stage ($((size >> 20)) MiB):"
ls -l "$stage/bin"
echo "run on the GPU machine: bash .gpu/run.sh   (device tool: carry [\".gpu\"])"
