# shellcheck shell=bash
# Sourced by the other scripts: the environment kvmem builds and runs in.
# - LIBCLANG_PATH / CPATH: bindgen (inside nixl-sys) needs libclang and C headers (stdbool.h).
# - KVMEM_NIXL_LIB_DIR: where kvmem finds libnixl_capi.so at run time (the nixl-cu12 or
#   nixl-cu13 wheel setup.sh installed; with both, the one scripts/nixl-runtime.sh chooses).
KVMEM_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export KVMEM_ROOT
KVMEM_VENV="$KVMEM_ROOT/.venv"
export KVMEM_VENV
# shellcheck source=nixl-runtime.sh
source "$KVMEM_ROOT/scripts/nixl-runtime.sh"
_site="$(ls -d "$KVMEM_VENV"/lib/python3*/site-packages 2>/dev/null | head -n1)"
_flavor=cu12
if [ -n "$_site" ]; then
    export LIBCLANG_PATH="${LIBCLANG_PATH:-$_site/clang/native}"
    if [ -d "$_site/.nixl_cu12.mesonpy.libs" ] && [ -d "$_site/.nixl_cu13.mesonpy.libs" ]; then
        _flavor=$(kvmem_nixl_flavor)
    elif [ -d "$_site/.nixl_cu13.mesonpy.libs" ]; then
        _flavor=cu13
    fi
    export KVMEM_NIXL_LIB_DIR="${KVMEM_NIXL_LIB_DIR:-$_site/.nixl_$_flavor.mesonpy.libs}"
fi
_gccinc="$(gcc -print-file-name=include 2>/dev/null)"
if [ -n "$_gccinc" ] && [ -d "$_gccinc" ]; then
    export CPATH="${CPATH:+$CPATH:}$_gccinc"
fi
unset _site _gccinc
# The NIXL wheel's bundled UCX and a system rdma-core (pulled in by e.g. fio) load two copies
# of libnl-route, which crash at process exit. Without InfiniBand nothing is lost by skipping
# UCX's IB modules; on an InfiniBand machine set UCX_MODULES yourself (see README).
export UCX_MODULES="${UCX_MODULES:-^ib}"
# Without the wheel's libcudart (libcudart.so.12 for nixl-cu12, .13 for nixl-cu13) UCX cannot hook
# CUDA allocations, and its memory-type cache then takes GPU memory for host memory (NIXL refuses
# to register it): there, ask the driver instead. With it (a CUDA 13 machine running nixl-cu13,
# or a CUDA 12 toolkit) the cache stays on.
_major=${_flavor#cu}
if [ -z "${UCX_MEMTYPE_CACHE+x}" ] && ! ldconfig -p 2>/dev/null | grep -q "libcudart\.so\.$_major "; then
    _cudart=$(kvmem_find_cudart "$_major")
    if [ -n "$_cudart" ]; then
        export LD_LIBRARY_PATH="$_cudart${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    else
        export UCX_MEMTYPE_CACHE=n
    fi
fi
unset _flavor _major _cudart
