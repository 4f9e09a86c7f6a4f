# shellcheck shell=bash
# Sourced by the other scripts: the environment kvmem builds and runs in.
# - LIBCLANG_PATH / CPATH: bindgen (inside nixl-sys) needs libclang and C headers (stdbool.h).
# - KVMEM_NIXL_LIB_DIR: where kvmem finds libnixl_capi.so at run time (the nixl-cu12 wheel).
KVMEM_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export KVMEM_ROOT
KVMEM_VENV="$KVMEM_ROOT/.venv"
export KVMEM_VENV
_site="$(ls -d "$KVMEM_VENV"/lib/python3*/site-packages 2>/dev/null | head -n1)"
if [ -n "$_site" ]; then
    export LIBCLANG_PATH="${LIBCLANG_PATH:-$_site/clang/native}"
    export KVMEM_NIXL_LIB_DIR="${KVMEM_NIXL_LIB_DIR:-$_site/.nixl_cu12.mesonpy.libs}"
fi
_gccinc="$(gcc -print-file-name=include 2>/dev/null)"
if [ -n "$_gccinc" ] && [ -d "$_gccinc" ]; then
    export CPATH="${CPATH:+$CPATH:}$_gccinc"
fi
unset _site _gccinc
# The nixl-cu12 wheel's bundled UCX and a system rdma-core (pulled in by e.g. fio) load two copies
# of libnl-route, which crash at process exit. Without InfiniBand nothing is lost by skipping
# UCX's IB modules; on an InfiniBand machine set UCX_MODULES yourself (see README).
export UCX_MODULES="${UCX_MODULES:-^ib}"
# Without libcudart.so.12 the wheel's UCX cannot hook CUDA allocations, and its memory-type cache
# then takes GPU memory for host memory (NIXL refuses to register it): ask the driver instead.
export UCX_MEMTYPE_CACHE="${UCX_MEMTYPE_CACHE:-n}"
