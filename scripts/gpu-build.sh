#!/usr/bin/env bash
# Builds the GPU tests, the pinned-allocation and planner benchmarks and the kvmem CLI, packs the
# NIXL runtime from the venv, builds a static fio (from Debian's source package, through apt), here (release mode, line tables only)
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
        --test transfer_remote --test transfer_errors --test cache_gpu --test fault_soak
    cargo bench -p kvmem --locked --no-run --message-format=json --bench cuda_pinned_alloc --bench plan
    cargo build --release -p kvmem-cli --locked --message-format=json --bin kvmem
} 2>"$log" | artifacts) || { cat "$log" >&2; exit 1; }
[ -n "$list" ] || { cat "$log" >&2; echo "gpu-build.sh: no binaries built" >&2; exit 1; }

rm -rf "$stage"
mkdir -p "$stage/bin"
while read -r name exe; do
    # Line tables dropped (symbols kept, so backtraces still name functions): the carry limit
    # is tight, and the binaries with compressed line tables no longer fit in it.
    objcopy --strip-debug "$exe" "$stage/bin/$name"
done <<<"$list"
for want in cuda_gpu cuda_no_driver cuda_batch_gpu cuda_transfer_gpu transfer_remote transfer_errors cache_gpu fault_soak cuda_pinned_alloc plan kvmem; do
    [ -x "$stage/bin/$want" ] || { echo "gpu-build.sh: $want was not built" >&2; exit 1; }
done
# The NIXL runtimes (UCX and POSIX plugins, the libraries they load, UCX's modules), packed with
# their directory structure (the libraries find each other through $ORIGIN rpaths): nixl-cu13 (or
# the one KVMEM_NIXL_WHEEL names) as nixl-<flavor>.tar.xz; run.sh unpacks the one that fits the
# driver (scripts/nixl-runtime.sh) and points KVMEM_NIXL_LIB_DIR at it. About 9 MiB compressed. A wheel the venv lacks is installed
# (--no-deps) into target/, never into the venv.
pack_nixl() {
    local flavor="$1" site
    site=$(ls -d "$PWD"/.venv/lib/python3*/site-packages | head -n1)
    if [ ! -d "$site/.nixl_$flavor.mesonpy.libs" ]; then
        site="$PWD/target/nixl-$flavor-$KVMEM_NIXL_VERSION"
        [ -d "$site/.nixl_$flavor.mesonpy.libs" ] ||
            .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps \
                --target "$site" "$(kvmem_nixl_requirement "$flavor")"
    fi
    # Resolved: ldd prints resolved paths, and .venv may be a link.
    site=$(realpath "$site")
    (
        cd "$site"
        local meson=".nixl_$flavor.mesonpy.libs" libs="nixl_$flavor.libs"
        local roots=("$meson"/libnixl_capi.so "$meson"/plugins/libplugin_UCX.so "$meson"/plugins/libplugin_POSIX.so "$libs"/ucx/*.so*)
        {
            LD_LIBRARY_PATH="$site/$meson:$site/$libs" ldd "${roots[@]}" 2>/dev/null |
                awk '/=> \// {print $3}' | grep -F "$site/" | xargs -r realpath --relative-to="$site"
            printf '%s\n' "$meson"/*.so* "${roots[@]}"
        } | sort -u >"$log.nixl"
        tar -cJf "$stage/nixl-$flavor.tar.xz" -T "$log.nixl"
        rm -f "$log.nixl"
    )
}
if [ -n "${KVMEM_NIXL_WHEEL:-}" ]; then
    pack_nixl "$(kvmem_nixl_flavor)"
else
    # Both runtimes do not fit the carry limit beside the binaries: stage the one for the GPU
    # machine this harness targets (CUDA 13 driver); KVMEM_NIXL_WHEEL picks the other.
    pack_nixl cu13
fi
cp scripts/nixl-runtime.sh "$stage/nixl-runtime.sh"
# fio, for `kvmem bench`'s disk comparison (the GPU machine has none and no network): built
# here once as a static binary (its io_uring engine needs no library) from the upstream tarball
# of Debian's fio source package, cached under target/. The source package comes through apt
# with this machine's own sources: a private deb-src list derived from them at run time (no host
# is named here, and the system's apt configuration and lists are left as they are).
fio_fetch() {
    local work="$1" opts
    mkdir -p "$work/parts" "$work/lists/partial" "$work/cache/archives/partial"
    shopt -s nullglob
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        sed -n 's/^[[:space:]]*deb[[:space:]]/deb-src /p' "$f"
    done >"$work/parts/src.list"
    for f in /etc/apt/sources.list.d/*.sources; do
        sed 's/^Types:.*/Types: deb-src/' "$f"
        echo
    done >"$work/parts/src.sources"
    shopt -u nullglob
    opts=(-q -o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$work/parts"
        -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o APT::Sandbox::User=root)
    apt-get "${opts[@]}" update >"$work/apt.log" 2>&1 &&
        (cd "$work" && apt-get "${opts[@]}" source --download-only fio >>"$work/apt.log" 2>&1) ||
        { cat "$work/apt.log" >&2; echo "gpu-build.sh: could not get fio's source package through apt" >&2; return 1; }
}
fio_bin=$(ls -d "$PWD"/target/fio-*/fio 2>/dev/null | head -n1 || true)
if [ -z "$fio_bin" ] || [ ! -x "$fio_bin" ]; then
    mkdir -p target
    fio_work=$(mktemp -d)
    fio_fetch "$fio_work" || { rm -rf "$fio_work"; exit 1; }
    orig=$(ls "$fio_work"/fio_*.orig.tar.* | grep -v "\.asc$" | head -n1)
    version=$(basename "$orig" | sed 's/^fio_\(.*\)\.orig\.tar\..*$/\1/')
    tar -xf "$orig" -C target
    rm -rf "$fio_work"
    fio_dir="$PWD/target/fio-$version"
    (cd "$fio_dir" && ./configure --build-static --disable-native >/dev/null && make -j"$(nproc)" fio >/dev/null)
    fio_bin="$fio_dir/fio"
fi
strip -o "$stage/bin/fio" "$fio_bin"
# The Python package: one abi3 wheel (CPython 3.10+, self-contained; NIXL is found at run time),
# its tests and its benchmark, for run.sh's Python step.
rm -rf "$stage/py" && mkdir -p "$stage/py"
.venv/bin/maturin build --release --quiet -m crates/kvmem-py/Cargo.toml -o "$stage/py/wheels"
cp -r crates/kvmem-py/tests crates/kvmem-py/bench crates/kvmem-py/pyproject.toml "$stage/py/"
cp scripts/gpu-run.sh "$stage/run.sh"
chmod +x "$stage/run.sh"
# The commit the binaries were built from; with uncommitted changes (untracked files included:
# a new test file is built too) it is not that commit, and says so.
if commit=$(git rev-parse HEAD 2>/dev/null); then
    [ -z "$(git status --porcelain 2>/dev/null)" ] || commit="$commit-dirty"
    echo "$commit" >"$stage/COMMIT"
fi
size=$(du -sb "$stage" | cut -f1)
if [ "$size" -gt "$limit" ]; then
    echo "gpu-build.sh: $stage is $((size >> 20)) MiB, over the $((limit >> 20)) MiB the device tool carries" >&2
    [ -n "${KVMEM_NIXL_WHEEL:-}" ] || echo "gpu-build.sh: stage one NIXL runtime (about 9 MiB less) with" \
        "KVMEM_NIXL_WHEEL=nixl-cu13==$KVMEM_NIXL_VERSION (CUDA 13 driver) or nixl-cu12==$KVMEM_NIXL_VERSION" >&2
    exit 1
fi
echo "staged in $stage ($((size >> 20)) MiB):"
ls -l "$stage/bin"
echo "run on the GPU machine: bash .gpu/run.sh   (device tool: carry [\".gpu\"])"
