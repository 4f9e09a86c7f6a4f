# shellcheck shell=bash
# Sourced by setup.sh, env.sh, gpu-build.sh and (staged beside it) the GPU machine's run.sh:
# which NIXL runtime wheel fits this machine's CUDA driver, and where its CUDA runtime is.
#
# The PyPI wheels nixl-cu12==1.5.1 and nixl-cu13==1.5.1 bundle UCX, whose CUDA modules need the
# matching libcudart.so.12 / libcudart.so.13. Without it UCX cannot hook CUDA allocations and its
# memory-type cache takes GPU memory for host memory (hence UCX_MEMTYPE_CACHE=n as a fallback).

# The version of the NIXL wheels kvmem is built and tested against.
KVMEM_NIXL_VERSION=1.5.1

# Prints the CUDA major version the driver supports (12, 13, ...), or nothing without a driver.
kvmem_cuda_major() {
    local v
    v=$(python3 - 2>/dev/null <<'EOF'
import ctypes
lib = ctypes.CDLL("libcuda.so.1")
v = ctypes.c_int(0)
if lib.cuDriverGetVersion(ctypes.byref(v)) == 0 and v.value > 0:
    print(v.value // 1000)
EOF
    )
    if [ -z "$v" ] && command -v nvidia-smi >/dev/null 2>&1; then
        v=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9]*\)\..*/\1/p' | head -n1)
    fi
    printf '%s' "$v"
}

# Prints the wheel flavour to use, cu12 or cu13: from $KVMEM_NIXL_WHEEL (a requirement such as
# nixl-cu13==1.5.1, or just cu13) when set, otherwise cu13 on a CUDA 13 (or newer) driver and
# cu12 elsewhere (CUDA 12 drivers, and machines without a driver, such as CI).
kvmem_nixl_flavor() {
    case "${KVMEM_NIXL_WHEEL:-}" in
    *cu13*) echo cu13; return ;;
    *cu12*) echo cu12; return ;;
    "") ;;
    *)
        echo "KVMEM_NIXL_WHEEL=$KVMEM_NIXL_WHEEL names neither nixl-cu12 nor nixl-cu13" >&2
        return 1
        ;;
    esac
    local major
    major=$(kvmem_cuda_major)
    if [ -n "$major" ] && [ "$major" -ge 13 ]; then echo cu13; else echo cu12; fi
}

# Prints the pip requirement of a flavour's wheel: nixl-cu13==1.5.1.
kvmem_nixl_requirement() {
    echo "nixl-$1==$KVMEM_NIXL_VERSION"
}

# Prints a directory holding libcudart.so.MAJOR, or nothing: the loader's cache, the CUDA
# toolkit, then the NVIDIA runtime wheels of the python3 on the PATH (torch's).
kvmem_find_cudart() {
    local major="$1" name="libcudart.so.$1" d
    d=$(ldconfig -p 2>/dev/null | awk -v n="$name" '$1 == n {print $NF; exit}')
    if [ -n "$d" ]; then dirname "$d"; return; fi
    for d in ${CUDA_HOME:+"$CUDA_HOME/lib64"} /usr/local/cuda/lib64 /usr/local/cuda-"$major"*/lib64 \
        /usr/local/cuda*/targets/x86_64-linux/lib; do
        if [ -e "$d/$name" ]; then echo "$d"; return; fi
    done
    python3 - "$name" 2>/dev/null <<'EOF'
import glob, os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()]
for root in roots:
    for hit in sorted(glob.glob(os.path.join(root, "nvidia", "**", sys.argv[1]), recursive=True)):
        print(os.path.dirname(hit))
        raise SystemExit
EOF
}
